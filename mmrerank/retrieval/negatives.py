"""Hard negatives mined by the first stage, both directions, for training rerankers on an image-text split.

A caption's hard negatives are the images the first stage ranks highest for it that are *not* relevant to it
(its own image and, where the dataset knows more, e.g. the synthetic scene graphs, every image that satisfies it);
an image's hard negatives are the captions it retrieves that are not relevant to it. Mined once per (dataset,
first stage) and cached on disk.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mmrerank.core.io import atomic_write, cache_root, key_digest
from mmrerank.datasets.imagetext import ImageTextDataset


@dataclass
class HardNegatives:
    """First-stage hard negatives of one split.

    Attributes:
        t2i: `[C, k]` long, per caption the non-relevant image rows in first-stage order, -1 where fewer were found.
        i2t: `[N, k]` long, per image the non-relevant caption rows likewise.
        text_emb: `[C, e]` float, the first stage's caption embeddings (target of EDJE's text-embedding recovery).
    """

    t2i: Tensor
    i2t: Tensor
    text_emb: Tensor

    def save(self, path: str | Path) -> None:
        state = {"t2i": self.t2i, "i2t": self.i2t, "text_emb": self.text_emb}
        atomic_write(path, lambda tmp: torch.save(state, tmp))

    @classmethod
    def load(cls, path: str | Path) -> HardNegatives:
        return cls(**torch.load(path, map_location="cpu", weights_only=True))


def first_non_relevant(candidates: Tensor, relevant: Tensor, k: int) -> Tensor:
    """Keep each row's first `k` candidates that are not relevant, in order; pad with -1.

    Args:
        candidates: `[Q, D]` long, first-stage order.
        relevant: `[Q, D]` bool.

    Returns:
        `[Q, k]` long.
    """
    keep = ~relevant
    # Stable sort on "is relevant" moves the kept candidates to the front without reordering them.
    order = torch.sort(relevant.to(torch.int8), dim=1, stable=True).indices[:, :k]
    out = torch.gather(candidates, 1, order)
    valid = torch.gather(keep, 1, order)
    out = out.masked_fill(~valid, -1)
    if out.shape[1] < k:
        out = torch.cat([out, out.new_full((len(out), k - out.shape[1]), -1)], dim=1)
    return out


def caption_hard_negatives(dataset: ImageTextDataset, image_emb: Tensor, text_emb: Tensor, caption_rows: Tensor,
                           k: int = 16, depth: int = 64) -> Tensor:
    """Per caption, the images the first stage ranks highest for it that are not relevant to it, in order.

    Args:
        image_emb: `[N, e]` the split's images; text_emb: `[C', e]` the captions `caption_rows` (`[C']` long).
        k: negatives kept per caption; depth: images retrieved per caption before the relevant ones are removed.

    Returns:
        `[C', k]` long image rows, -1 where fewer than `k` were found.
    """
    from mmrerank.retrieval.index import retrieve

    n = len(dataset.images)
    ranked = retrieve(text_emb, image_emb, [str(int(c)) for c in caption_rows], [str(i) for i in range(n)],
                      min(depth, n)).indices.cpu()  # [C', D]
    captions = caption_rows.cpu()[:, None].expand_as(ranked)
    relevant = dataset.is_relevant(captions.reshape(-1), ranked.reshape(-1)).view_as(ranked)
    return first_non_relevant(ranked, relevant, k)


def mine_hard_negatives(dataset: ImageTextDataset, image_emb: Tensor, text_emb: Tensor, k: int = 16,
                        depth: int = 64) -> HardNegatives:
    """Hard negatives from first-stage embeddings of `dataset`'s images `[N, e]` and captions `[C, e]`, both
    directions (t2i: `caption_hard_negatives` of every caption).

    Args:
        k: negatives kept per query.
        depth: candidates retrieved per query before the relevant ones are removed.
    """
    from mmrerank.retrieval.index import retrieve

    n, c = len(dataset.images), len(dataset.captions)
    t2i = caption_hard_negatives(dataset, image_emb, text_emb, torch.arange(c), k, depth)
    image_ids, caption_ids = [str(i) for i in range(n)], [str(i) for i in range(c)]
    i2t = retrieve(image_emb, text_emb, image_ids, caption_ids, min(depth, c)).indices.cpu()  # [N, D]
    images = torch.arange(n)[:, None].expand_as(i2t)
    i2t_rel = dataset.is_relevant(i2t.reshape(-1), images.reshape(-1)).view_as(i2t)
    return HardNegatives(t2i, first_non_relevant(i2t, i2t_rel, k), text_emb.float().cpu())


def cached_hard_negatives(dataset: ImageTextDataset, key: dict, encode, k: int = 16, depth: int = 64,
                          cache_dir: str | Path | None = None) -> HardNegatives:
    """`mine_hard_negatives`, cached under `cache_dir` (default `<cache>/negatives`) by `key`.

    Args:
        key: whatever identifies the dataset split and the first stage (names, sizes, checkpoint file stamp).
        encode: `() -> (image_emb [N, e], text_emb [C, e])`, called only when the cache misses.
    """
    key = {**key, "k": k, "depth": depth, "images": len(dataset.images), "captions": len(dataset.captions)}
    digest = key_digest(key)
    path = Path(cache_dir) if cache_dir else cache_root() / "negatives"
    path = path / f"{digest}.pt"
    if path.is_file():
        return HardNegatives.load(path)
    image_emb, text_emb = encode()
    negatives = mine_hard_negatives(dataset, image_emb, text_emb, k, depth)
    negatives.save(path)
    return negatives


def file_stamp(path: str | Path | None) -> dict | None:
    """Identity of a checkpoint file (or `save_pretrained` folder, by its `model.safetensors`) for cache keys: the
    sha256 of its bytes, or None when there is no such file.

    By content, not by path, size and modification time: a retrained checkpoint written in place with the same
    size (same architecture) and an equal mtime (coarse file-system clocks, copies that keep mtimes) would
    otherwise keep its old key and silently reuse caches computed from the old weights.
    """
    if path and Path(path).is_dir():
        path = Path(path) / "model.safetensors"
    if not path or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):  # hashlib.file_digest is Python 3.11+
            digest.update(chunk)
    return {"sha256": digest.hexdigest()}
