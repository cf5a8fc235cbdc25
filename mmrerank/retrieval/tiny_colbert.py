"""A tiny ColBERT-style late-interaction encoder over page text, trained here in seconds on the synthetic pages.

Tokens are lower-cased words hashed into a fixed vocabulary (no tokenizer file: unseen words still get a stable
row, so an entity name of a test document matches itself); each token's vector is its embedding plus a width-3
convolution over its neighbours (a little context, as ColBERT's encoder gives), projected and L2-normalised. Queries
and pages share the encoder; relevance is MaxSim. Training: each synthetic question against every page of the
documents in its batch (its gold page the positive), cross-entropy over MaxSim scores.

It reads the pages' OCR text, not their pixels: the ColPali-style route (image patch tokens) needs a vision model
that reads 9-px text, which the tiny CLIP cannot (see BENCHMARKS.md).
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmrerank.core.io import cache_root, generate_folder_once, key_digest
from mmrerank.retrieval.pages import page_training_data

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
WORD = re.compile(r"[a-z0-9]+")


@dataclass
class TinyColBERTConfig:
    """Architecture and training recipe (the cache key).

    Attributes:
        vocab: hash buckets for words; hidden: embedding width; dim: output token width.
        steps, batch_size, lr, temperature: the training run (questions per batch; logits = MaxSim / temperature).
        train_seed, train_documents: the synthetic pages it trains on (seed 0: never the benchmark's seed 1).
        seed: initialisation seed.
    """

    vocab: int = 32768
    hidden: int = 64
    dim: int = 32
    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-3
    temperature: float = 0.1
    train_seed: int = 0
    train_documents: int = 600
    seed: int = 0


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class TinyColBERT(nn.Module):
    """Hashed-word embeddings + a width-3 convolution + a projection: `[n_tokens, dim]` unit vectors per text."""

    def __init__(self, config: TinyColBERTConfig | None = None) -> None:
        super().__init__()
        self.multi_vector = True  # the embedder protocol: lists of [n_i, dim] token vectors
        self.config = config or TinyColBERTConfig()
        torch.manual_seed(self.config.seed)
        c = self.config
        self.embed = nn.Embedding(c.vocab + 1, c.hidden, padding_idx=0)
        self.context = nn.Conv1d(c.hidden, c.hidden, 3, padding=1)
        self.project = nn.Linear(c.hidden, c.dim)

    def token_ids(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """`[B, L]` hashed ids (0 = padding) and `[B, L]` mask; an empty text gets one padding token."""
        rows = [[zlib.crc32(w.encode()) % self.config.vocab + 1 for w in words(t)] or [0] for t in texts]
        longest = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), longest, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids, ids != 0

    def forward(self, ids: Tensor) -> Tensor:
        """`[B, L]` ids -> `[B, L]` x `dim` unit vectors (padding rows are meaningless; mask them)."""
        x = self.embed(ids)  # [B, L, h]
        x = x + self.context(x.transpose(1, 2)).transpose(1, 2)
        return F.normalize(self.project(x), dim=-1)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 256) -> list[Tensor]:
        """Each text's `[n_i, dim]` token vectors (a text with no word: one zero vector, which scores 0)."""
        out = []
        for s in range(0, len(texts), batch_size):
            ids, mask = self.token_ids(texts[s:s + batch_size])
            vectors = self(ids)
            for row, m in zip(vectors, mask):
                out.append(row[m] if m.any() else torch.zeros(1, self.config.dim))
        return out

    def encode_queries(self, texts: Sequence[str]) -> list[Tensor]:
        return self.encode(list(texts))

    def encode_documents(self, images, texts: Sequence[str] | None = None) -> list[Tensor]:
        """The pages' token vectors from their `texts` (the images are not read: this model reads OCR text)."""
        if texts is None:
            raise ValueError("the tiny ColBERT reads page text: give encode_documents the pages' texts")
        return self.encode(list(texts))

    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.state_dict(), folder / WEIGHTS_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps({"model_type": "tiny-colbert", **asdict(self.config)}))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> TinyColBERT:
        from safetensors.torch import load_file

        folder = Path(folder)
        config = json.loads((folder / CONFIG_FILE).read_text())
        if config.pop("model_type", None) != "tiny-colbert":
            raise ValueError(f"{folder / CONFIG_FILE}: not a tiny-colbert model")
        model = cls(TinyColBERTConfig(**config))
        model.load_state_dict(load_file(folder / WEIGHTS_FILE))
        return model.eval()


def batch_maxsim(q: Tensor, q_mask: Tensor, d: Tensor, d_mask: Tensor) -> Tensor:
    """`[B, P]` MaxSim of `[B, m, e]` queries against `[P, L, e]` pages (masks `[B, m]`, `[P, L]`)."""
    sim = torch.einsum("bme,ple->bpml", q, d).masked_fill(~d_mask[None, :, None, :], -1e4)
    return (sim.amax(-1) * q_mask[:, None, :]).sum(-1)


def train_tiny_colbert(config: TinyColBERTConfig, progress: bool = False) -> TinyColBERT:
    """Train on the synthetic pages of `config.train_seed` (see the module)."""
    data, gold, doc_pages = page_training_data(config.train_seed, config.train_documents)
    questions, texts = data.questions.texts, data.ocr_text.texts
    model = TinyColBERT(config)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    for step in range(config.steps):
        batch = torch.randperm(len(questions), generator=gen)[: config.batch_size].tolist()
        pages = sorted({p for i in batch for p in doc_pages[i]})  # the batch's documents: hard and in-batch negatives
        q_ids, q_mask = model.token_ids([questions[i] for i in batch])
        d_ids, d_mask = model.token_ids([texts[p] for p in pages])
        logits = batch_maxsim(model(q_ids), q_mask, model(d_ids), d_mask) / config.temperature
        target = torch.tensor([pages.index(gold[i]) for i in batch])
        loss = F.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress and step % 50 == 0:
            print(f"tiny-colbert step {step}: loss {loss.item():.3f}")
    return model.eval()


def ensure_tiny_colbert(config: TinyColBERTConfig | None = None, root: str | Path | None = None,
                        progress: bool = False) -> TinyColBERT:
    """The trained model for `config`, trained once into `<cache>/tiny-colbert/<digest>` and loaded after."""
    config = config or TinyColBERTConfig()
    folder = Path(root or cache_root() / "tiny-colbert") / key_digest(asdict(config))
    generate_folder_once(folder, CONFIG_FILE, lambda tmp: train_tiny_colbert(config, progress).save_pretrained(tmp))
    return TinyColBERT.from_pretrained(folder)
