"""The Revisited Oxford and Paris landmark benchmarks (ROxford5k, RParis6k; Radenović et al., CVPR 2018).

Files, as the benchmark distributes them::

    <root>/gnd_roxford5k.pkl    (or gnd_rparis6k.pkl)
    <root>/jpg/<name>.jpg       every database and query image

The ground-truth pickle is a dict: `imlist` (the N database image names, no extension), `qimlist` (the Q = 70
query image names) and `gnd`, one dict per query with `bbx` (the query region `[x1, y1, x2, y2]` in pixels) and
the database indices labelled `easy`, `hard` and `junk` for that query. It is read with
`mmrerank.core.pickles.safe_unpickle` (plain containers, numbers and numpy arrays only), so a crafted file cannot
run code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mmrerank.core.items import ImageLoadError, to_rgb
from mmrerank.core.pickles import safe_unpickle

DATASETS = ("roxford5k", "rparis6k")
PROTOCOLS = ("easy", "medium", "hard")
_GND_KEYS = ("bbx", "easy", "hard", "junk")


@dataclass
class RevisitedDataset:
    """A Revisited Oxford / Paris benchmark: names, query boxes and per-query labels.

    Attributes:
        name: the benchmark, e.g. "roxford5k".
        root: the folder holding `gnd_<name>.pkl` and `jpg/`.
        db_names: the N database image names (no extension).
        query_names: the Q query image names.
        boxes: `[Q, 4]` float64, each query's region `[x1, y1, x2, y2]` in pixels.
        easy, hard, junk: Q `[n]` long tensors each, indices into `db_names`.
    """

    name: str
    root: Path
    db_names: list[str]
    query_names: list[str]
    boxes: Tensor
    easy: list[Tensor]
    hard: list[Tensor]
    junk: list[Tensor]

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.boxes = torch.as_tensor(self.boxes, dtype=torch.float64)
        q, n = len(self.query_names), len(self.db_names)
        if self.boxes.shape != (q, 4):
            raise ValueError(f"boxes must be [{q}, 4] (one per query); got {tuple(self.boxes.shape)}")
        for label in ("easy", "hard", "junk"):
            lists = getattr(self, label)
            if len(lists) != q:
                raise ValueError(f"{label} has {len(lists)} entries for {q} queries")
            lists = [torch.as_tensor(x, dtype=torch.long).reshape(-1) for x in lists]
            for i, x in enumerate(lists):
                if x.numel() and (int(x.min()) < 0 or int(x.max()) >= n):
                    raise ValueError(f"query {i} ({self.query_names[i]}): {label} index out of range "
                                     f"[0, {n}): {x[(x < 0) | (x >= n)].tolist()[:5]}")
            setattr(self, label, lists)

    @property
    def num_queries(self) -> int:
        return len(self.query_names)

    @property
    def num_db(self) -> int:
        return len(self.db_names)

    def image_path(self, name: str) -> Path:
        """Where the image `name` lives: `<root>/jpg/<name>.jpg`."""
        return self.root / "jpg" / f"{name}.jpg"

    def query_image(self, i: int) -> Image.Image:
        """Query `i`'s image cropped to its box (`pixel_box`), as RGB.

        Raises:
            ImageLoadError: the image is missing or cannot be decoded (the message names the file).
            ValueError: the box lies outside the image.
        """
        path = self.image_path(self.query_names[i])
        image = _read_rgb(path)
        x1, y1, x2, y2 = pixel_box(self.boxes[i].tolist(), image.size)
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"query {i} ({path}): box {self.boxes[i].tolist()} is empty inside the "
                             f"{image.width}x{image.height} image")
        return image.crop((x1, y1, x2, y2))

    def db_image(self, j: int) -> Image.Image:
        """Database image `j`, whole, as RGB.

        Raises:
            ImageLoadError: the image is missing or cannot be decoded (the message names the file).
        """
        return _read_rgb(self.image_path(self.db_names[j]))


def pixel_box(box: Sequence[float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The pixels a float box covers: floor x1, y1 and ceil x2, y2, clipped to the image.

    Args:
        box: `[x1, y1, x2, y2]` in pixel coordinates (x2, y2 exclusive, as PIL's `crop` takes them).
        size: the image's `(width, height)`.

    Returns:
        `(x1, y1, x2, y2)` ints with 0 <= x1, x2 <= width and 0 <= y1, y2 <= height; x2 <= x1 (or y2 <= y1) when
        the box misses the image.
    """
    width, height = size
    x1, y1, x2, y2 = (float(v) for v in box)
    # floor/ceil keeps every pixel the box touches, so the crop never loses part of the annotated object
    return (min(max(math.floor(x1), 0), width), min(max(math.floor(y1), 0), height),
            min(max(math.ceil(x2), 0), width), min(max(math.ceil(y2), 0), height))


def _read_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return to_rgb(image)  # converting decodes, so a truncated file fails here and not later
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageLoadError(f"cannot read image {path}: {err}") from err


# --- loading ----------------------------------------------------------------------------------------------------------

def load_revisited(root: str | Path, name: str = "roxford5k") -> RevisitedDataset:
    """Read `<root>/gnd_<name>.pkl` (through the safe unpickler) into a `RevisitedDataset`.

    Images are not opened here; `query_image` / `db_image` read them when asked.

    Args:
        root: the folder holding the ground-truth pickle and `jpg/`.
        name: the benchmark, "roxford5k" or "rparis6k" (any other name reads `gnd_<name>.pkl` the same way).

    Raises:
        FileNotFoundError: the ground-truth file is missing (the message names it).
        ValueError: the file is not in the benchmark's format (the message says what is missing or wrong).
        pickle.UnpicklingError: the pickle names a global other than plain containers and numpy arrays.
    """
    if not name or PurePath(name).name != name:
        raise ValueError(f"benchmark name {name!r} must be a plain file-name part, such as 'roxford5k'")
    root = Path(root)
    path = root / f"gnd_{name}.pkl"
    if not path.is_file():
        raise FileNotFoundError(f"ground truth file {path} not found (expected gnd_{name}.pkl beside jpg/ in {root})")
    raw = safe_unpickle(path)
    return _parse_gnd(raw, name, root, path)


def _parse_gnd(raw: Any, name: str, root: Path, path: Path) -> RevisitedDataset:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a dict with 'imlist', 'qimlist' and 'gnd'; got {type(raw).__name__}")
    missing = [k for k in ("imlist", "qimlist", "gnd") if k not in raw]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; a ground-truth dict has 'imlist', 'qimlist' and 'gnd'")
    db_names = _names(raw["imlist"], f"{path}: imlist")
    query_names = _names(raw["qimlist"], f"{path}: qimlist")
    gnd = raw["gnd"]
    if not isinstance(gnd, (list, tuple)) or len(gnd) != len(query_names):
        length = len(gnd) if isinstance(gnd, (list, tuple)) else type(gnd).__name__
        raise ValueError(f"{path}: gnd must be a list with one dict per query ({len(query_names)}); got {length}")
    boxes, labels = [], {"easy": [], "hard": [], "junk": []}
    for i, entry in enumerate(gnd):
        where = f"{path}: gnd[{i}] ({query_names[i]})"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: expected a dict, got {type(entry).__name__}")
        missing = [k for k in _GND_KEYS if k not in entry]
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing}; each gnd entry has {list(_GND_KEYS)}")
        boxes.append(_box(entry["bbx"], f"{where}: bbx"))
        for label in labels:
            labels[label].append(_indices(entry[label], f"{where}: {label}"))
    return RevisitedDataset(name=name, root=root, db_names=db_names, query_names=query_names,
                            boxes=torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4), **labels)


def _as_list(value: Any, where: str) -> list:
    if isinstance(value, np.ndarray):
        return value.reshape(-1).tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError(f"{where}: expected a list or array, got {type(value).__name__}")


def _names(value: Any, where: str) -> list[str]:
    names = _as_list(value, where)
    for k, name in enumerate(names):
        # a name becomes part of a path under <root>/jpg: refuse ones that would leave that folder
        if not isinstance(name, str) or not name or PurePath(name).is_absolute() or ".." in PurePath(name).parts:
            raise ValueError(f"{where}[{k}]: {name!r} is not an image name")
    return names


def _box(value: Any, where: str) -> list[float]:
    box = _as_list(value, where)
    if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                for v in box):
        raise ValueError(f"{where}: expected 4 finite numbers [x1, y1, x2, y2], got {box!r}")
    return [float(v) for v in box]


def _indices(value: Any, where: str) -> list[int]:
    out = []
    for v in _as_list(value, where):
        # integral floats are accepted: index lists converted from MATLAB arrive as doubles
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
            raise ValueError(f"{where}: expected database indices (integers), got {v!r}")
        out.append(int(v))
    return out
