"""The Revisited Oxford and Paris landmark benchmarks (ROxford5k, RParis6k; Radenović et al., CVPR 2018).

Files, as the benchmark distributes them::

    <root>/gnd_roxford5k.pkl    (or gnd_rparis6k.pkl)
    <root>/jpg/<name>.jpg       every database and query image

The ground-truth pickle is a dict: `imlist` (the N database image names, no extension), `qimlist` (the Q = 70
query image names) and `gnd`, one dict per query with `bbx` (the query region `[x1, y1, x2, y2]` in pixels) and
the database indices labelled `easy`, `hard` and `junk` for that query. It is read with `mmrerank.core.io.safe_unpickle`
(plain containers, numbers and numpy arrays only), so a crafted file cannot run code.

Protocols (`protocol_relevance`): each query's positives and the images ignored when scoring it.

=========  =====================  =====================
protocol   positives              ignored
=========  =====================  =====================
easy       easy                   junk + hard
medium     easy + hard            junk
hard       hard                   junk + easy
=========  =====================  =====================

Scores (`revisited_map`), in percent, as follows:

* Ignored images are removed from each query's ranking first; every position below is counted after that removal.
* AP uses the benchmark's trapezoidal rule: for the j-th positive found (j = 0, 1, ...) at 0-based position r,
  precision_0 = j / r (1 when r = 0) and precision_1 = (j + 1) / (r + 1); AP = sum over the positives found of
  (precision_0 + precision_1) / 2 / n_pos, with n_pos the query's positives under the protocol. Positives that
  the ranking does not contain (a truncated run) add nothing, as if ranked beyond the end.
* P@k = (positives among the first k positions) / k, also when fewer than k images are left. This is the plain
  definition. The revisitop evaluation code differs here: it divides by min(k, 1-based position of the query's
  last positive) and counts positives up to that position, so its mP@k is >= this one whenever a query's
  positives all lie above position k.
* mAP and mP@k are means over the queries that have at least one positive under the protocol; the others are
  left out (NaN per query). In ROxford5k and RParis6k every query has positives under medium and hard, but under
  easy some may have none, so the easy means can be over fewer than 70 queries (`num_queries` says how many).

`revisited_qrels` gives the positives as `Qrels` for the generic metrics of `mmrerank.metrics`, which have no
notion of an ignored image: there junk counts as non-relevant, so those numbers are not the benchmark's. Report
`revisited_map`.
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

from mmrerank.core.io import safe_unpickle
from mmrerank.core.items import ImageLoadError
from mmrerank.core.run import PAD, Qrels, Run

__all__ = ["DATASETS", "PROTOCOLS", "RevisitedDataset", "load_revisited", "pixel_box", "protocol_relevance",
           "revisited_map", "revisited_per_query", "revisited_qrels"]

DATASETS = ("roxford5k", "rparis6k")
PROTOCOLS = ("easy", "medium", "hard")
_OUTSIDE = -2  # ranking entry for an image outside the database (a distractor): a negative, never ignored
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
            return image.convert("RGB")  # convert() decodes, so a truncated file fails here and not later
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


# --- protocols --------------------------------------------------------------------------------------------------------

def protocol_relevance(dataset: RevisitedDataset, protocol: str) -> tuple[list[Tensor], list[Tensor]]:
    """Each query's positives and ignored images under `protocol` (see the module table).

    Args:
        dataset: the benchmark.
        protocol: "easy", "medium" or "hard".

    Returns:
        `(positives, ignored)`: Q sorted, duplicate-free `[n]` long tensors each, indices into `dataset.db_names`.
        Should a file list one image under two labels of a query, so that it is both a positive and ignored, it
        counts as a positive: the two sets are always disjoint.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    positives, ignored = [], []
    for easy, hard, junk in zip(dataset.easy, dataset.hard, dataset.junk):
        if protocol == "easy":
            pos, ign = easy, torch.cat([junk, hard])
        elif protocol == "medium":
            pos, ign = torch.cat([easy, hard]), junk
        else:
            pos, ign = hard, torch.cat([junk, easy])
        pos, ign = torch.unique(pos), torch.unique(ign)
        positives.append(pos)
        ignored.append(ign[~torch.isin(ign, pos)])
    return positives, ignored


def revisited_qrels(dataset: RevisitedDataset, protocol: str) -> Qrels:
    """The positives of `protocol` as `Qrels` (grade 1), query ids = query names, doc ids = database names.

    Ignored images cannot be expressed in `Qrels`: generic metrics count them as non-relevant instead of removing
    them, so their numbers are not the benchmark's. Use `revisited_map` for reported results.
    """
    positives, _ = protocol_relevance(dataset, protocol)
    counts = torch.tensor([p.numel() for p in positives], dtype=torch.long)
    query_index = torch.repeat_interleave(torch.arange(dataset.num_queries), counts)
    doc_index = torch.cat(positives) if positives else torch.empty(0, dtype=torch.long)
    return Qrels.from_pairs(dataset.query_names, dataset.db_names, query_index, doc_index)


# --- scoring ----------------------------------------------------------------------------------------------------------

def revisited_per_query(ranks: Tensor | Run, dataset: RevisitedDataset, protocol: str,
                        kappas: Sequence[int] = (1, 5, 10)) -> dict[str, Tensor]:
    """Per-query AP and P@k (fractions in [0, 1]) under one protocol, as the module docstring defines them.

    Args:
        ranks: `[Q, K]` long, each query's ranking of the database, best first, as indices into `dataset.db_names`
            (K = N for a full ranking; `PAD` = -1 marks empty slots; an index may appear once per row). Rows are
            queries in `dataset.query_names` order. Note that revisitop's own `ranks` are `[N, Q]`: pass them
            transposed. Or a `Run`: rows are matched to queries by id, its candidates ranked by score
            (`Run.sorted()`), and candidates whose id is not a database name (distractors) count as negatives.
        dataset: the benchmark.
        protocol: "easy", "medium" or "hard".
        kappas: the cut-offs k of P@k.

    Returns:
        `{"AP": [Q], "P@k": [Q] for each k}`, float64 on the ranking's device; NaN for a query without positives.
    """
    return _per_query(_ranking(ranks, dataset), dataset, protocol, kappas)


def _per_query(ranking: Tensor, dataset: RevisitedDataset, protocol: str, kappas: Sequence[int]) -> dict[str, Tensor]:
    """`revisited_per_query` of a ranking `_ranking` has already checked."""
    if any(k < 1 for k in kappas):
        raise ValueError(f"P@k needs every k >= 1, got {list(kappas)}")
    positives, ignored = protocol_relevance(dataset, protocol)
    q, n = dataset.num_queries, dataset.num_db
    device = ranking.device

    # membership tables [Q, N + 2]: column N is where PAD slots look (ignored), column N + 1 where images outside
    # the database look (neither positive nor ignored)
    is_pos = _membership(positives, q, n + 2, device)
    is_ign = _membership(ignored, q, n + 2, device)
    is_ign[:, n] = True
    column = torch.where(ranking == PAD, n, torch.where(ranking == _OUTSIDE, n + 1, ranking))
    kept = ~is_ign.gather(1, column)  # [Q, K]
    hit = is_pos.gather(1, column) & kept
    # 0-based position among the kept images, and the number of positives found before; read only where hit
    position = (kept.cumsum(1) - 1).to(torch.float64)
    found = (hit.cumsum(1) - 1).to(torch.float64)
    precision_0 = torch.where(position > 0, found / position.clamp(min=1), torch.ones_like(position))
    precision_1 = (found + 1) / (position + 1)
    n_pos = torch.tensor([p.numel() for p in positives], dtype=torch.float64, device=device)
    has_pos = n_pos > 0
    nan = torch.tensor(math.nan, dtype=torch.float64, device=device)

    # where(), not a product with `hit`: off the hits, precision_1 can be 0 / 0 (an ignored first slot)
    gain = torch.where(hit, (precision_0 + precision_1) / 2, torch.zeros_like(position)).sum(1)
    out = {"AP": torch.where(has_pos, gain / n_pos.clamp(min=1), nan)}
    for k in kappas:
        in_top = (hit & (position < k)).sum(1).to(torch.float64)
        out[f"P@{k}"] = torch.where(has_pos, in_top / k, nan)
    return out


def revisited_map(ranks: Tensor | Run, dataset: RevisitedDataset, protocols: Sequence[str] = PROTOCOLS,
                  kappas: Sequence[int] = (1, 5, 10)) -> dict[str, dict[str, float]]:
    """The benchmark's scores: mAP and mP@k in percent per protocol (definitions in the module docstring).

    Args:
        ranks: `[Q, K]` long rankings of the database or a `Run` (see `revisited_per_query`).
        dataset: the benchmark.
        protocols: any of "easy", "medium", "hard".
        kappas: the cut-offs k of mP@k.

    Returns:
        `{protocol: {"mAP": float, "mP@k": float for each k, "num_queries": int}}`; `num_queries` counts the
        queries with positives under the protocol, the ones averaged over (all NaN when there are none).
    """
    ranking = _ranking(ranks, dataset)  # once, not per protocol
    results: dict[str, dict[str, float]] = {}
    for protocol in protocols:
        per_query = _per_query(ranking, dataset, protocol, kappas)
        counted = ~torch.isnan(per_query["AP"])
        scores: dict[str, float] = {}
        for key, values in per_query.items():
            mean = values[counted].mean().item() if bool(counted.any()) else math.nan
            scores[f"m{key}"] = 100.0 * mean
        scores["num_queries"] = int(counted.sum())
        results[protocol] = scores
    return results


def _membership(lists: list[Tensor], rows: int, columns: int, device: torch.device) -> Tensor:
    """`[rows, columns]` bool with True at (i, j) for every j in `lists[i]`."""
    table = torch.zeros(rows, columns, dtype=torch.bool, device=device)
    counts = torch.tensor([x.numel() for x in lists], dtype=torch.long)
    if int(counts.sum()):
        row = torch.repeat_interleave(torch.arange(rows), counts).to(device)
        table[row, torch.cat(lists).to(device)] = True
    return table


def _ranking(ranks: Tensor | Run, dataset: RevisitedDataset) -> Tensor:
    """Validate a ranking and bring it to `[Q, K]` long into `db_names` (PAD empty, `_OUTSIDE` for distractors)."""
    if isinstance(ranks, Run):
        return _ranking_from_run(ranks, dataset)
    ranks = torch.as_tensor(ranks)
    if ranks.dtype.is_floating_point or ranks.dtype.is_complex or ranks.dtype == torch.bool:
        raise TypeError(f"ranks must be an integer tensor of database indices, got {ranks.dtype}")
    q, n = dataset.num_queries, dataset.num_db
    if ranks.dim() != 2 or ranks.shape[0] != q:
        raise ValueError(f"ranks must be [Q={q}, K] (one row per query, best first); got {tuple(ranks.shape)}. "
                         "revisitop's ranks are [N, Q]: pass them transposed")
    ranks = ranks.long()
    if ranks.numel() and (int(ranks.min()) < PAD or int(ranks.max()) >= n):
        raise ValueError(f"ranks hold indices outside [0, {n}) (and -1 for empty slots)")
    _check_unique(ranks)
    return ranks


def _ranking_from_run(run: Run, dataset: RevisitedDataset) -> Tensor:
    row_of = {qid: row for row, qid in enumerate(run.query_ids)}
    if len(row_of) != len(run.query_ids):
        raise ValueError("the run's query ids are not unique")
    missing = [name for name in dataset.query_names if name not in row_of]
    if missing:
        raise ValueError(f"the run has no row for {len(missing)} of the {dataset.num_queries} queries, "
                         f"e.g. {missing[:3]}")
    run = run.sorted()
    rows = torch.tensor([row_of[name] for name in dataset.query_names], dtype=torch.long)
    indices = run.indices[rows.to(run.indices.device)]
    _check_unique(indices)
    if run.doc_ids == dataset.db_names:
        return indices
    db_index = {name: j for j, name in enumerate(dataset.db_names)}
    # the trailing PAD entry is where index -1 (PAD) lands
    remap = torch.tensor([db_index.get(d, _OUTSIDE) for d in run.doc_ids] + [PAD], dtype=torch.long,
                         device=indices.device)
    return remap[indices]


def _check_unique(ranks: Tensor) -> None:
    """Refuse rows that rank an image twice: a repeated positive would be counted twice."""
    if ranks.shape[1] < 2:
        return
    ordered = ranks.sort(dim=1).values
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != PAD)
    if bool(repeated.any()):
        row = int(repeated.any(1).nonzero()[0])
        raise ValueError(f"row {row} of the ranking lists an image more than once")
