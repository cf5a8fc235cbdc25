"""The built-in synthetic image-text benchmark: rendered scenes, exact scene graphs, computed relevance.

Images come in pairs: a sampled scene and its near-duplicate (attributes swapped between two objects, their
positions swapped, or one attribute changed), so a dual encoder that blurs binding and relations confuses
them and a joint encoder can separate them. Each image gets five captions; a caption is relevant to every
image whose scene satisfies it (see `scenes.satisfies`). Same seed, same bytes. Each split is generated
once and cached on disk.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mmrerank.core.io import cache_root, generate_folder_once, key_digest
from mmrerank.core.items import ImageArray, Texts
from mmrerank.core.run import Qrels
from mmrerank.datasets.imagetext import ImageTextDataset
from mmrerank.datasets.synthetic.render import render
from mmrerank.datasets.synthetic.scenes import (
    Obj,
    caption_scene,
    near_duplicate,
    sample_scene,
    satisfies,
    satisfies_pairs,
    scene_arrays,
)

SPLITS = ("train", "val", "test")
SPLIT_FILES = ("images.npy", "specs.npy", "captions.json", "scenes.json")  # what `generate_split` writes
MARKER = "captions.json"  # a split folder with it is complete (folders are renamed into place whole)
FORMAT_VERSION = 1  # bump when generation changes, so stale caches are not reused


@dataclass
class SyntheticConfig:
    """Size and seed of the synthetic benchmark.

    Attributes:
        seed: generation seed; each split derives its own stream from it.
        image_size: side of the square images in pixels.
        train_images, val_images, test_images: images per split (rounded up to even: images come in pairs).
        captions_per_image: COCO-like, 5.
        root: cache folder; default `$MMRERANK_CACHE/synthetic` or `~/.cache/mmrerank/synthetic`.
    """

    seed: int = 0
    image_size: int = 64
    train_images: int = 10_000
    val_images: int = 500
    test_images: int = 1_000
    captions_per_image: int = 5
    root: str | None = None

    def num_images(self, split: str) -> int:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return getattr(self, f"{split}_images")

    def split_dir(self, split: str) -> Path:
        root = Path(self.root) if self.root else cache_root() / "synthetic"
        key = {k: v for k, v in asdict(self).items() if k != "root"} | {"version": FORMAT_VERSION}
        return root / f"{key_digest(key, 12)}-{split}-{self.num_images(split)}"


def generate_split(config: SyntheticConfig, split: str, out: Path, progress: bool = True) -> None:
    """Render one split into folder `out`: images.npy `[N, H, W, 3]`, captions.json, specs.npy, scenes.json."""
    rng = np.random.default_rng([config.seed, SPLITS.index(split)])
    n = config.num_images(split)
    scenes: list[list[Obj]] = []
    while len(scenes) < n:
        base = sample_scene(rng)
        scenes += [base, near_duplicate(rng, base)]
    scenes = scenes[:n]
    images = np.stack([render(s, config.image_size, rng) for s in tqdm(
        scenes, desc=f"rendering synthetic/{split}", disable=not progress, leave=False)])
    texts, specs, caption_image = [], [], []
    for i, scene in enumerate(scenes):
        for text, spec in caption_scene(rng, scene, config.captions_per_image):
            texts.append(text)
            specs.append(spec)
            caption_image.append(i)
    np.save(out / "images.npy", images)
    np.save(out / "specs.npy", np.asarray(specs, dtype=np.int64))
    (out / "captions.json").write_text(json.dumps({"texts": texts, "caption_image": caption_image}))
    (out / "scenes.json").write_text(json.dumps([[o.__dict__ for o in s] for s in scenes]))


def ensure_split(config: SyntheticConfig, split: str, progress: bool = True) -> Path:
    """The split's cache folder, generated first if absent (atomically: see `generate_folder_once`).

    Raises:
        FileExistsError: the folder exists, is not empty and lacks some of `SPLIT_FILES` (a leftover of an
            interrupted or foreign copy: a new split cannot be renamed onto it, and it is never silently reused).
    """
    folder = config.split_dir(split)
    _check_split_folder(folder, generated=False)
    folder = generate_folder_once(folder, MARKER, lambda tmp: generate_split(config, split, tmp, progress))
    _check_split_folder(folder, generated=True)
    return folder


def _check_split_folder(folder: Path, generated: bool) -> None:
    """A split folder must be absent or empty (before generating: the new one is renamed onto it) or complete."""
    if not generated and (not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))):
        return
    if not folder.is_dir():
        raise FileExistsError(f"synthetic split cache {folder} is not a folder; delete it to regenerate the split")
    missing = [name for name in SPLIT_FILES if not (folder / name).is_file()]
    if missing:
        found = sorted(p.name for p in folder.iterdir())
        raise FileExistsError(f"synthetic split cache {folder} lacks {', '.join(missing)} (it holds {found[:10]}): a "
                              "leftover of an interrupted or foreign copy; delete it to regenerate the split")


def load_scenes(folder: Path) -> list[list[Obj]]:
    return [[Obj(**o) for o in scene] for scene in json.loads((folder / "scenes.json").read_text())]


def load_synthetic(split: str = "test", config: SyntheticConfig | None = None, relevance: bool | None = None,
                   progress: bool = True) -> ImageTextDataset:
    """One split of the synthetic benchmark as an `ImageTextDataset`.

    Args:
        split: `train`, `val` or `test`.
        config: size and seed; defaults to `SyntheticConfig()`.
        relevance: compute every (caption, image) pair a scene satisfies (default: for val and test, whose
            qrels need it; train uses only each caption's own image).
        progress: show progress bars.
    """
    config = config or SyntheticConfig()
    folder = ensure_split(config, split, progress)
    meta = json.loads((folder / "captions.json").read_text())
    pixels = np.load(folder / "images.npy", mmap_mode="r")
    name = f"synthetic-{split}"
    images = ImageArray([f"{name}-img{i}" for i in range(len(pixels))], pixels)
    captions = Texts([f"{name}-cap{i}" for i in range(len(meta["texts"]))], meta["texts"])
    specs = np.load(folder / "specs.npy")
    attrs, rels = scene_arrays(load_scenes(folder))
    extra = None
    if relevance if relevance is not None else split != "train":
        caption_idx, image_idx = np.nonzero(satisfies(specs, attrs, rels))
        extra = Qrels.from_pairs(captions.ids, images.ids, torch.from_numpy(caption_idx),
                                 torch.from_numpy(image_idx))

    def pair_relevance(caption_rows: torch.Tensor, image_rows: torch.Tensor) -> torch.Tensor:
        c, i = caption_rows.numpy(), image_rows.numpy()
        return torch.from_numpy(satisfies_pairs(specs[c], attrs[i], rels[i]))

    twins = torch.arange(len(pixels)) ^ 1  # rows 2k and 2k + 1 are a scene and its near-duplicate
    return ImageTextDataset("synthetic", images, captions, torch.tensor(meta["caption_image"]), extra, pair_relevance,
                            twins)
