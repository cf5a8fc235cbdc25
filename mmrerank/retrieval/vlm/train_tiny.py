"""A tiny dense (single-vector) Qwen3-VL-Embedding trained here in minutes on the synthetic pages.

The model is `build_tiny_qwen3_vl_embedding`'s (the real `Qwen3VLConfig`, processor and chat template, scaled down),
with its byte-level BPE tokenizer trained on the training pages' text. Each page goes in as the
authors' `Qwen3VLEmbedder` takes an image with its text: the page image (shrunk to `max_pixels`: a random tiny vision
tower cannot read rendered text in minutes, so pixels stay cheap) followed by its OCR text, which the language model
learns from. Training: each synthetic question against every page of the documents in its batch (its gold page the
positive; a document's other pages are the hard negatives), cross-entropy over cosine similarities / temperature,
with inputs built by the embedder itself, so training and encoding see the same tokens.

The result is saved in the hub format and loaded back through `load_embedder(folder, preset=PRESET)`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mmrerank.core.io import cache_root, generate_folder_once, key_digest
from mmrerank.retrieval.pages import page_training_data

PRESET = "Qwen/Qwen3-VL-Embedding-2B"
TRAINING_FILE = "training.json"


@dataclass
class TinyDenseVLMConfig:
    """Architecture and training recipe (the cache key).

    Attributes:
        hidden, layers: the language model's width and depth; vocab_size: the tokenizer's, small on purpose: 4,000
            tokens make the training documents' invented names whole tokens, which the model memorises and the
            benchmark's unseen names do not share; fewer leave names as shared pieces (synthetic ViDoRe nDCG@10:
            4,000 tokens / 200 documents / 400 steps 0.24, 1,000 / 200 / 400 0.53, 500 / 400 / 600 0.68, 500 / 600 /
            800 0.73).
        max_pixels: the page image's pixel budget (4096: 64x64, 4 visual tokens after merging).
        steps, batch_size, lr, temperature: the training run (questions per batch; logits = cosine / temperature).
        train_seed, train_documents: the synthetic pages it trains on (seed 0: never the benchmark's seed 1).
        seed: initialisation and batch-order seed.
    """

    hidden: int = 64
    layers: int = 2
    vocab_size: int = 500
    max_pixels: int = 64 * 64
    steps: int = 800
    batch_size: int = 16
    lr: float = 3e-3
    temperature: float = 0.05
    train_seed: int = 0
    train_documents: int = 600
    seed: int = 0


def load_tiny_dense_vlm(folder: str | Path, config: TinyDenseVLMConfig, device: str = "cpu", **options):
    """The embedder saved in `folder`, through the user's path (`load_embedder` with the Qwen3-VL preset)."""
    from mmrerank.retrieval.vlm.presets import load_embedder

    return load_embedder(folder, preset=PRESET, device=device, max_pixels=config.max_pixels, **options)


def _encode_batch(embedder, items: list[dict]) -> torch.Tensor:
    """`[B, hidden]` unit vectors of processed inputs, with gradients (the embedder's own collation and pooling)."""
    from mmrerank.retrieval.vlm.base import collate

    left = embedder.tokenizer.padding_side == "left"
    return embedder._embed(collate(items, embedder.tokenizer.pad_token_id, left))


def train_tiny_dense_vlm(folder: Path, config: TinyDenseVLMConfig, progress: bool = False) -> None:
    """Build the untrained model into `folder`, train it (see the module) and save it back there with its log."""
    from mmrerank.retrieval.vlm.tiny import _save, build_tiny_qwen3_vl_embedding

    start = time.perf_counter()
    data, gold, doc_pages = page_training_data(config.train_seed, config.train_documents)
    texts = data.ocr_text.texts
    build_tiny_qwen3_vl_embedding(folder, config.seed, config.hidden, config.layers, texts, config.vocab_size)
    embedder = load_tiny_dense_vlm(folder, config)
    queries = [embedder._query_inputs(q) for q in data.questions.texts]  # processed once: the processor is slow
    pages = [embedder._document_inputs(data.images[i], text) for i, text in enumerate(texts)]
    model = embedder.model.train()
    torch.manual_seed(config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    losses = []
    for step in range(config.steps):
        batch = torch.randperm(len(queries), generator=gen)[: config.batch_size].tolist()
        rows = sorted({p for i in batch for p in doc_pages[i]})
        q = _encode_batch(embedder, [queries[i] for i in batch])  # [B, h]
        d = _encode_batch(embedder, [pages[p] for p in rows])  # [P, h]
        target = torch.tensor([rows.index(gold[i]) for i in batch])
        loss = F.cross_entropy(q @ d.T / config.temperature, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if progress and step % 25 == 0:
            print(f"tiny dense VLM step {step}: loss {loss.item():.3f}", flush=True)
    _save(folder, model.eval(), embedder.processor)
    log = {"config": asdict(config), "train_seconds": time.perf_counter() - start, "losses": losses}
    (folder / TRAINING_FILE).write_text(json.dumps(log))


def ensure_tiny_dense_vlm(config: TinyDenseVLMConfig | None = None, root: str | Path | None = None,
                          progress: bool = False, device: str = "cpu", **options):
    """The trained embedder for `config`: trained once into `<cache>/tiny-dense-vlm/<digest>`, loaded after
    through `load_embedder` (`options`: its batch sizes)."""
    config = config or TinyDenseVLMConfig()
    folder = Path(root or cache_root() / "tiny-dense-vlm") / key_digest(asdict(config))
    generate_folder_once(folder, TRAINING_FILE, lambda tmp: train_tiny_dense_vlm(tmp, config, progress))
    return load_tiny_dense_vlm(folder, config, device, **options)
