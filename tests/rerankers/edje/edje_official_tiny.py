"""A tiny stand-in for the released EDJE checkpoint (`shahafw/edje-vl-image-retrieval-reranker`), in its authors'
format, with the same weights under transformers 4.x and 5.x.

Three parts, as the release builds on them:

- `minilm/`: a MiniLM-like BERT saved as `microsoft/MiniLM-L12-H384-uncased` ships (`config.json`, weights,
  `vocab.txt`; no tokenizer config).
- `siglip/`: a SigLIP dual model with `preprocessor_config.json` written in the hub's layout (a
  `SiglipImageProcessor`, bilinear, mean and std 0.5; `google/siglip2-large-patch16-384`'s file could not be read
  offline, so its resample filter is assumed).
- the state dict of the authors' `MultimodalPretrainModel` (github.com/shahafwa/EDJE at 56c0c23, `pretrain_model.py`)
  over them: the language model with `<image>` added and its position table grown to 64 + m, the
  `TokenCompressionAdapter` (`vision_projection.*`), the `BertPooler` + `Linear` head, `text_projection`, and the
  frozen `vision_encoder.*` / `clip.*` copies of the SigLIP model.

Every weight comes from `fill`: a seeded generator walks the tensors in sorted key order, so the values depend on
the keys and shapes only, never on how a transformers version initialises a model. `fill_trained` applied to the
authors' own model (built by their constructor, under transformers 4.x) and to `authors_state_dict` (built here,
without their code) gives the same tensors; `checksum` says so (`tests/fixtures/parity/edje_official/cases.json`
records it). This module imports only torch, transformers and PIL, so the authors' environment can import it too.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from PIL import Image

M = 4  # compressed tokens (64 in the release)
WIDTH, HEADS, MLP = 48, 4, 96  # the vision tower's width and heads, the adapter's MLP (1024, 16, 8192)
TEXT_WIDTH = 16  # SigLIP's text tower; it projects to WIDTH, as SigLIP's towers meet in one space
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Word pieces of the tiny vocabulary: the parity captions' words, some punctuation (so that raw and cleaned captions
# tokenize differently) and a few continuations.
WORDS = """a an the two red green blue black big small old happy busy sunny dog dogs cat cats man woman child
children people house tree grass sky river beach park bench sofa ball bike street city night day cars car lights
buildings newspaper dress cafe image sep mask on in near under with by at down and of is yes while runs run running
sits sitting sleeps sleeping plays playing walk walking rides reads drive talking many outside full width text
accents nino sun shining another . , ! ? ' " - & ; : ( ) < > [ ] _ ##s ##ing ##ed ##ly""".split()
TRAINED = ("vision_projection.", "language_model.", "classification_head.", "text_projection.")
USED = ("vision_projection.", "language_model.bert.", "classification_head.")  # what scoring reads
SIGLIP_PROCESSOR = {"do_convert_rgb": None, "do_normalize": True, "do_rescale": True, "do_resize": True,
                    "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "SiglipImageProcessor",
                    "image_std": [0.5, 0.5, 0.5], "processor_class": "SiglipProcessor", "resample": 2,
                    "rescale_factor": 1 / 255, "size": {"height": 32, "width": 32}}


def fill(state: dict[str, torch.Tensor], seed: int, prefixes: tuple[str, ...] = ("",)) -> None:
    """Overwrite, in place, the floating tensors of `state` under `prefixes` with seeded values: N(0, 0.2^2), norm
    weights 1 + N(0, 0.2^2). Tied tensors (one storage under several keys) get the values of their first key."""
    generator = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    with torch.no_grad():
        for key in sorted(state):
            tensor = state[key]
            if not key.startswith(prefixes) or not tensor.is_floating_point() or tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            values = torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * 0.2
            if "norm" in key.lower() and key.endswith("weight"):
                values += 1
            tensor.copy_(values)


def fill_trained(state: dict[str, torch.Tensor]) -> None:
    """What training changed in the authors' model: the adapter, the language model, the head, text_projection."""
    fill(state, seed=3, prefixes=TRAINED)


def checksum(state: dict[str, torch.Tensor], prefixes: tuple[str, ...] = USED) -> str:
    """sha256 over the keys, shapes and float32 values of the tensors under `prefixes` (buffers of integer type
    and `position_ids` excluded)."""
    digest = hashlib.sha256()
    for key in sorted(k for k in state if k.startswith(prefixes) and state[k].is_floating_point()):
        digest.update(f"{key}{tuple(state[key].shape)}".encode())
        digest.update(state[key].detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def build_minilm(folder: Path) -> Path:
    """The BERT: `vocab.txt`, `config.json` and weights, as the MiniLM repository ships them. Its position table is
    shorter than 64 + m, so the authors' extension (last row repeated) is exercised."""
    from transformers import BertConfig, BertForMaskedLM

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(SPECIALS + WORDS) + "\n")
    config = BertConfig(vocab_size=len(SPECIALS) + len(WORDS), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=48)
    model = BertForMaskedLM(config)
    fill(model.state_dict(), seed=0)
    model.save_pretrained(folder)
    return folder


def build_siglip(folder: Path) -> Path:
    """The SigLIP dual model (32 px, 8 px patches: 16 patches of width 48) and its processor file."""
    from transformers import SiglipConfig, SiglipModel

    folder.mkdir(parents=True, exist_ok=True)
    text = dict(hidden_size=TEXT_WIDTH, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=50, max_position_embeddings=64, projection_size=WIDTH, bos_token_id=0, eos_token_id=1,
                pad_token_id=1)
    vision = dict(hidden_size=WIDTH, intermediate_size=96, num_hidden_layers=2, num_attention_heads=HEADS,
                  image_size=32, patch_size=8)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    fill(model.state_dict(), seed=1)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(SIGLIP_PROCESSOR, indent=2))
    return folder


def authors_state_dict(minilm: Path, siglip: Path) -> dict[str, torch.Tensor]:
    """`MultimodalPretrainModel(...).state_dict()` as their constructor lays it out, built without their code,
    with `fill_trained`'s weights."""
    from transformers import AutoTokenizer, BertForMaskedLM, SiglipModel

    tokenizer = AutoTokenizer.from_pretrained(minilm, extra_special_tokens={"image_token": "<image>"})
    lm = BertForMaskedLM.from_pretrained(minilm)
    lm.resize_token_embeddings(len(tokenizer))
    table = lm.bert.embeddings.position_embeddings.weight.data  # their _maybe_extend_position_embeddings
    grown = torch.cat([table, table[-1:].repeat(64 + M - len(table), 1)])
    lm.bert.embeddings.position_embeddings = torch.nn.Embedding.from_pretrained(grown, freeze=False)
    d = lm.config.hidden_size
    attention = torch.nn.MultiheadAttention(WIDTH, HEADS, batch_first=True).state_dict()
    state = {f"language_model.{k}": v for k, v in lm.state_dict().items()}
    state |= {f"vision_projection.attention.{k}": v for k, v in attention.items()}
    state |= {"vision_projection.query": torch.empty(1, M, WIDTH),
              "classification_head.0.dense.weight": torch.empty(d, d),
              "classification_head.0.dense.bias": torch.empty(d),
              "classification_head.1.weight": torch.empty(1, d), "classification_head.1.bias": torch.empty(1),
              "text_projection.weight": torch.empty(WIDTH, d), "text_projection.bias": torch.empty(WIDTH)}
    for name, (rows, cols) in {"key": (WIDTH, WIDTH), "value": (WIDTH, WIDTH), "mlp.fc1": (MLP, WIDTH),
                               "mlp.fc2": (WIDTH, MLP), "projection": (d, WIDTH)}.items():
        state |= {f"vision_projection.{name}.weight": torch.empty(rows, cols),
                  f"vision_projection.{name}.bias": torch.empty(rows)}
    state |= {f"vision_projection.layernorm.{p}": torch.empty(WIDTH) for p in ("weight", "bias")}
    state["text_embeddings.weight"] = state["language_model.bert.embeddings.word_embeddings.weight"]  # one module
    fill_trained(state)
    # Frozen parts, as loaded: the vision encoder and the SigLIP model of the first stage. Their checkpoints were
    # written under transformers 4.x, whose SiglipVisionModel keeps its tower under `vision_model.`.
    clip = SiglipModel.from_pretrained(siglip).state_dict()
    state |= {f"vision_encoder.{k}": v for k, v in clip.items() if k.startswith("vision_model.")}
    state |= {f"clip.{k}": v for k, v in clip.items()}
    return state


def save_release(state: dict[str, torch.Tensor], folder: Path, kind: str = "pth") -> Path:
    """The state dict as their `train.py` saves it (`checkpoint_XX.pth`), or as one flat safetensors file."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if kind in ("pth", "legacy-pth"):
        torch.save({"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 2e-5, "params": [0, 1]}]},
                    "config": {"num_compressed_tokens": M, "siglip_path": "google/siglip2-large-patch16-384"},
                    "epoch": 3, "global_step": 1200}, folder / "checkpoint_03.pth",
                   _use_new_zipfile_serialization=kind == "pth")
    else:
        save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder


def make_image(seed: int, width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A deterministic image: seeded colour blocks (a sixth of the short side) plus seeded noise, integers only, so
    that every platform draws the same pixels."""
    generator = torch.Generator().manual_seed(seed)
    cell = max(1, min(width, height) // 6)
    coarse = torch.randint(0, 256, (math.ceil(height / cell), math.ceil(width / cell), 3), generator=generator)
    blocks = coarse.repeat_interleave(cell, 0).repeat_interleave(cell, 1)[:height, :width]
    noise = torch.randint(-24, 25, (height, width, 3), generator=generator)
    pixels = (blocks + noise).clamp(0, 255).to(torch.uint8)
    image = Image.fromarray(pixels.numpy(), "RGB")
    return image.convert(mode) if mode != "RGB" else image


def image_digest(image: Image.Image) -> str:
    return hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()
