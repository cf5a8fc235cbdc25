"""The first stage: open_clip dual encoders, by name or from local JSON model configs."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from mmrerank.core import distributed
from mmrerank.core.deprecation import migrate_saved_config
from mmrerank.core.items import Items
from mmrerank.retrieval.words import WordTokenizer

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"


@cache
def register_model_configs(folder: str = str(MODEL_CONFIG_DIR)) -> None:
    """Make the JSON model configs in `folder` (tiny offline models) known to open_clip by file name."""
    if Path(folder).is_dir():
        open_clip.add_model_config(folder)


def tokenizer_for(model_name: str):
    """open_clip's tokenizer for `model_name`; for the packaged tiny configs, the synthetic captions' words (their
    `vocab_size` is sized for them)."""
    register_model_configs()
    if not (MODEL_CONFIG_DIR / f"{model_name}.json").is_file():
        return open_clip.get_tokenizer(model_name)
    from mmrerank.datasets.synthetic.scenes import caption_words

    text_cfg = open_clip.get_model_config(model_name)["text_cfg"]
    return WordTokenizer(caption_words(), text_cfg["vocab_size"], text_cfg["context_length"])


def mixed_precision(device: torch.device) -> str:
    """Lightning's precision for training on `device`: bf16 autocast where the hardware computes in bf16 (CUDA with
    bf16, CPUs with AVX-512 BF16 / AMX, where it is about 2x faster than float32), float32 elsewhere."""
    if device.type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() \
        else "32-true"


class CLIPEncoder(nn.Module):
    """An open_clip model with its image transform and tokenizer.

    Args:
        model_name: an open_clip model name (`ViT-B-32`, ...) or a local config in `mmrerank/retrieval/model_configs/`
            (`mmrerank-tiny-resnet`, `mmrerank-tiny-vit`).
        pretrained: open_clip pretrained tag or checkpoint path (needs the network the first time); `None` for
            a random init, to be trained here or loaded with `load_weights` / `from_pretrained`.
    """

    def __init__(self, model_name: str = "mmrerank-tiny-resnet", pretrained: str | None = None) -> None:
        super().__init__()
        register_model_configs()
        if model_name not in open_clip.list_models():
            raise ValueError(f"unknown open_clip model {model_name!r}; local configs live in {MODEL_CONFIG_DIR}")
        self.model_name, self.pretrained = model_name, pretrained
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
        self.tokenizer = tokenizer_for(model_name)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.exp()

    def image_tensor(self, images: Sequence[Image.Image]) -> Tensor:
        """`[B, 3, S, S]` model inputs from PIL images."""
        return torch.stack([self.preprocess(img) for img in images])

    def encode_images(self, pixels: Tensor) -> Tensor:
        """`[B, 3, S, S]` -> `[B, d]`, L2-normalised."""
        # channels-last: oneDNN's convolutions run about 1.3x faster on CPU in that layout (BENCHMARKS.md)
        return F.normalize(self.model.encode_image(pixels.to(self.device, memory_format=torch.channels_last)), dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """`B` strings -> `[B, d]`, L2-normalised."""
        return F.normalize(self.model.encode_text(self.tokenizer(list(texts)).to(self.device)), dim=-1)

    @torch.no_grad()
    def encode(self, items: Items, batch_size: int = 256, progress: bool = True) -> Tensor:
        """Embed every item (texts or images) in batches: `[N, d]` float32 on this encoder's device.

        Under `torch.distributed` each rank embeds every world_size-th batch and the results are gathered, so
        all ranks return the same full matrix.
        """
        was_training = self.training
        self.eval()
        out = []
        for start in tqdm(distributed.shard(range(0, len(items), batch_size)), desc=f"encoding {items.modality}s",
                          disable=not progress, leave=False):
            rows = [items[i] for i in range(start, min(start + batch_size, len(items)))]
            emb = self.encode_texts(rows) if items.modality == "text" else self.encode_images(self.image_tensor(rows))
            out.append(emb.float())
        self.train(was_training)
        return distributed.gather_shards(out, self.device)

    def load_weights(self, path: str | Path) -> None:
        """Load a `save_pretrained` folder's weights, a safetensors state dict, or the encoder of a `CLIPModule`
        Lightning checkpoint (conversion)."""
        self.model.load_state_dict(load_state_dict(path, prefix="encoder.model."))

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write `config.json` (the model name) and `model.safetensors` into `folder`, config last (it marks a
        whole folder)."""
        from safetensors.torch import save_file

        from mmrerank.core.io import atomic_path, atomic_write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file(state, str(tmp), metadata={"model_name": self.model_name})
        # what the folder is (mmrerank.rerankers.folders reads it back; the retrieval layer cannot import it)
        config = {"model_type": "mmrerank-clip", "mmrerank_version": _package_version(), "model_name": self.model_name}
        if isinstance(self.tokenizer, WordTokenizer):  # the ids the weights were trained with, checked on load
            config["words"] = self.tokenizer.words
        atomic_write_json(folder / "config.json", config)
        return folder

    @staticmethod
    def is_saved(path: str | Path) -> bool:
        """Is there an encoder at `path`: a `save_pretrained` folder, or a weights file?"""
        path = Path(path)
        return (path / "config.json").is_file() if path.is_dir() else path.is_file()

    @classmethod
    def from_pretrained(cls, path: str | Path, model_name: str | None = None) -> CLIPEncoder:
        """Load a `save_pretrained` folder, or (with the architecture's `model_name`) a safetensors file or a
        `CLIPModule` Lightning checkpoint."""
        path = Path(path)
        if path.is_dir():
            import json

            config = migrate_saved_config(json.loads((path / "config.json").read_text()), "mmrerank-clip",
                                          str(path / "config.json"))
            encoder = cls(config["model_name"])
            if config.get("words", None) != getattr(encoder.tokenizer, "words", None):
                raise ValueError(f"{path} was trained with a different word vocabulary than {encoder.model_name!r} "
                                 "has now; retrain it (mmrerank benchmark --retrain=true for the cached default)")
            encoder.load_weights(path / "model.safetensors")
            return encoder
        if model_name is None:
            raise ValueError(f"{path} is a weights file: pass the model_name it was saved from")
        encoder = cls(model_name)
        encoder.load_weights(path)
        return encoder


def _package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("mmrerank")
    except metadata.PackageNotFoundError:
        return "unknown"


def load_state_dict(path: str | Path, prefix: str = "") -> dict[str, Tensor]:
    """A state dict from safetensors or a Lightning checkpoint, loaded without unpickling code.

    For a Lightning checkpoint the keys under `prefix` are taken, with the prefix stripped.
    """
    path = Path(path)
    if path.is_dir():  # a `save_pretrained` folder
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
