"""The synthetic image-to-image benchmark, in the Revisited Oxford / Paris protocol's shape.

Each query is a scene; the database holds, per query, re-renderings of the same scene as positives:

- easy: small jitter of the object positions, a new background and new noise;
- hard: larger jitter, a zoomed crop, and an extra clutter object;
- junk: a tight crop on one object, too little of the scene to tell (ignored by every protocol);

plus the query scene's near-duplicate twin (swapped binding or places: a hard negative) and many distractor
scenes. It is written in the benchmark's own layout (`jpg/<name>.jpg` and `gnd_<name>.pkl`), so
`mmrerank.datasets.revisited.load_revisited` reads it like the real ROxford5k. Same seed, same bytes.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from mmrerank.core.io import cache_root, generate_folder_once
from mmrerank.datasets.revisited import RevisitedDataset, load_revisited
from mmrerank.datasets.synthetic.render import render
from mmrerank.datasets.synthetic.scenes import COLOURS, RADIUS, SHAPES, Obj, _fits, near_duplicate, sample_scene

NAME = "synthetic"


@dataclass
class InstanceConfig:
    """Size and seed of the synthetic image-to-image benchmark.

    Attributes:
        seed: generation seed.
        queries: number of query scenes (ROxford5k has 70).
        easy, hard, junk: database images of each kind per query.
        distractors: unrelated database scenes.
        image_size: side of the rendered images in pixels.
        root: cache folder; default `$MMRERANK_CACHE/synthetic-i2i` or `~/.cache/mmrerank/synthetic-i2i`.
    """

    seed: int = 0
    queries: int = 70
    easy: int = 4
    hard: int = 4
    junk: int = 2
    distractors: int = 1000
    image_size: int = 128
    root: str | None = None

    def folder(self) -> Path:
        root = Path(self.root) if self.root else cache_root() / "synthetic-i2i"
        return root / (f"s{self.seed}-q{self.queries}-e{self.easy}-h{self.hard}-j{self.junk}-d{self.distractors}"
                       f"-px{self.image_size}")


def _jitter(rng: np.random.Generator, scene: list[Obj], amount: float) -> list[Obj]:
    """The scene with every object moved by up to `amount` (fraction of the side), kept inside and apart."""
    for _ in range(50):
        moved = [Obj(o.colour, o.shape, o.size, o.x + rng.uniform(-amount, amount), o.y + rng.uniform(-amount, amount))
                 for o in scene]
        if _fits(moved):
            return moved
    return [Obj(o.colour, o.shape, o.size, o.x, o.y) for o in scene]


def _with_clutter(rng: np.random.Generator, scene: list[Obj]) -> list[Obj]:
    """The scene plus one small extra object where it fits (unchanged if none fits)."""
    for _ in range(50):
        extra = Obj(int(rng.integers(len(COLOURS))), int(rng.integers(len(SHAPES))), 0, *rng.uniform(0.12, 0.88, 2))
        if _fits([*scene, extra]):
            return [*scene, extra]
    return scene


def _crop(rng: np.random.Generator, pixels: np.ndarray, centre: tuple[float, float], frac: float) -> np.ndarray:
    """A square crop of side `frac` around `centre` (fractions), resized back to the full size."""
    size = pixels.shape[0]
    side = max(int(round(frac * size)), 8)
    cx, cy = (int(round(c * size)) for c in centre)
    x0 = int(np.clip(cx - side // 2 + rng.integers(-size // 16, size // 16 + 1), 0, size - side))
    y0 = int(np.clip(cy - side // 2 + rng.integers(-size // 16, size // 16 + 1), 0, size - side))
    crop = Image.fromarray(pixels[y0:y0 + side, x0:x0 + side])
    return np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))


def _views(rng: np.random.Generator, scene: list[Obj], config: InstanceConfig) -> dict[str, list[np.ndarray]]:
    size = config.image_size
    centre = (float(np.mean([o.x for o in scene])), float(np.mean([o.y for o in scene])))
    easy = [render(_jitter(rng, scene, 0.03), size, rng) for _ in range(config.easy)]
    hard = [_crop(rng, render(_with_clutter(rng, _jitter(rng, scene, 0.08)), size, rng), centre, rng.uniform(0.7, 0.85))
            for _ in range(config.hard)]
    junk = []
    for _ in range(config.junk):
        o = scene[int(rng.integers(len(scene)))]
        junk.append(_crop(rng, render(_jitter(rng, scene, 0.03), size, rng), (o.x, o.y), 2.2 * RADIUS[o.size]))
    return {"easy": easy, "hard": hard, "junk": junk}


def query_box(scene: list[Obj], size: int) -> list[float]:
    """The query region: the objects' bounding box with a margin, in pixels `[x1, y1, x2, y2]`."""
    margin = 0.05
    x1 = min(o.x - RADIUS[o.size] for o in scene) - margin
    y1 = min(o.y - RADIUS[o.size] for o in scene) - margin
    x2 = max(o.x + RADIUS[o.size] for o in scene) + margin
    y2 = max(o.y + RADIUS[o.size] for o in scene) + margin
    return [float(np.clip(v, 0, 1) * size) for v in (x1, y1, x2, y2)]


def generate(config: InstanceConfig, out: Path, progress: bool = True) -> None:
    """Render the benchmark into `out` (`jpg/` and `gnd_synthetic.pkl`); database order is shuffled."""
    rng = np.random.default_rng([config.seed, 7])
    (out / "jpg").mkdir(parents=True)
    db: list[tuple[np.ndarray, int, str]] = []  # (pixels, query it belongs to or -1, kind)
    queries, boxes = [], []
    for q in tqdm(range(config.queries), desc="rendering synthetic i2i queries", disable=not progress, leave=False):
        scene = sample_scene(rng)
        while len(scene) < 2:  # landmarks have parts: one-object scenes make junk and positives indistinguishable
            scene = sample_scene(rng)
        queries.append(render(scene, config.image_size, rng))
        boxes.append(query_box(scene, config.image_size))
        for kind, images in _views(rng, scene, config).items():
            db += [(img, q, kind) for img in images]
        db.append((render(_jitter(rng, near_duplicate(rng, scene), 0.03), config.image_size, rng), -1, "twin"))
    for _ in tqdm(range(config.distractors), desc="rendering distractors", disable=not progress, leave=False):
        db.append((render(sample_scene(rng), config.image_size, rng), -1, "distractor"))
    order = rng.permutation(len(db))
    gnd = [{"bbx": box, "easy": [], "hard": [], "junk": []} for box in boxes]
    db_names = []
    for j, i in enumerate(order.tolist()):
        pixels, q, kind = db[i]
        name = f"db{j:06d}"
        db_names.append(name)
        Image.fromarray(pixels).save(out / "jpg" / f"{name}.jpg", quality=95)
        if q >= 0:
            gnd[q][kind].append(j)
    query_names = []
    for q, pixels in enumerate(queries):
        query_names.append(f"query{q:03d}")
        Image.fromarray(pixels).save(out / "jpg" / f"query{q:03d}.jpg", quality=95)
    with open(out / f"gnd_{NAME}.pkl", "wb") as f:  # plain lists and floats: readable by the safe unpickler
        pickle.dump({"imlist": db_names, "qimlist": query_names, "gnd": gnd}, f, protocol=4)


def load_instances(config: InstanceConfig | None = None, progress: bool = True) -> RevisitedDataset:
    """The synthetic image-to-image benchmark, generated once into its cache folder (atomically)."""
    config = config or InstanceConfig()
    return load_revisited(generate_folder_once(config.folder(), f"gnd_{NAME}.pkl",
                                               lambda tmp: generate(config, tmp, progress)), NAME)
