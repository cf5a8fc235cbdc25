"""Image-text datasets: images with captions, COCO-like, giving the t2i and i2t retrieval tasks.

One set of judgements (caption -> image) serves both directions.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mmrerank.core.items import ImageArray, ImageFiles, RetrievalTask, Texts
from mmrerank.core.run import Qrels


@dataclass
class ImageTextDataset:
    """Images with captions, COCO-like: several captions per image.

    Attributes:
        name: the dataset's name (`synthetic`, `coco`, `flickr30k`).
        images: the image items `[N]`.
        captions: the caption items `[C]`.
        caption_image: `[C]` long, the image each caption was written for.
        extra_relevant: more (caption, image) pairs that are relevant, beyond `caption_image` (the synthetic
            benchmark's captions that other images satisfy too); `None` when captions match only their image.
        pair_relevance: optional check of arbitrary pairs, `(caption rows [P], image rows [P]) -> [P] bool`, for
            data whose relevance is known beyond the listed pairs (the synthetic benchmark's scene graphs); hard
            negative mining uses it so that a caption's negatives never include an image that satisfies it.
        near_duplicates: optional `[N]` long, each image's near-duplicate row (-1: none); the synthetic benchmark's
            minimal pairs (colours, shapes or places swapped), the hardest negatives a reranker can train on.
    """

    name: str
    images: ImageArray | ImageFiles
    captions: Texts
    caption_image: Tensor
    extra_relevant: Qrels | None = None
    pair_relevance: Callable[[Tensor, Tensor], Tensor] | None = None
    near_duplicates: Tensor | None = None

    def __post_init__(self) -> None:
        self.caption_image = torch.as_tensor(self.caption_image, dtype=torch.long)
        if self.near_duplicates is not None and tuple(self.near_duplicates.shape) != (len(self.images),):
            raise ValueError(f"near_duplicates must be [{len(self.images)}], got {tuple(self.near_duplicates.shape)}")
        if self.caption_image.shape != (len(self.captions),):
            raise ValueError(f"caption_image must be [{len(self.captions)}], got {tuple(self.caption_image.shape)}")
        if len(self.captions) and not 0 <= int(self.caption_image.min()) <= int(self.caption_image.max()) < len(
                self.images):
            raise ValueError("caption_image points outside the images")

    def qrels(self) -> Qrels:
        """t2i judgements (caption -> image), grade 1."""
        own = Qrels.from_pairs(self.captions.ids, self.images.ids, torch.arange(len(self.captions)),
                               self.caption_image)
        if self.extra_relevant is None:
            return own
        extra = self.extra_relevant.reindex(self.captions.ids, self.images.ids)
        pairs = torch.cat([torch.stack([own.query_index, own.doc_index]),
                           torch.stack([extra.query_index, extra.doc_index])], dim=1).unique(dim=1)
        return Qrels.from_pairs(self.captions.ids, self.images.ids, pairs[0], pairs[1])

    def task(self, direction: str) -> RetrievalTask:
        """The `t2i` or `i2t` retrieval task."""
        if direction == "t2i":
            return RetrievalTask(f"{self.name}/t2i", self.captions, self.images, self.qrels())
        if direction == "i2t":
            return RetrievalTask(f"{self.name}/i2t", self.images, self.captions, self.qrels().transpose())
        raise ValueError(f"direction must be 't2i' or 'i2t', got {direction!r}")

    def subset_images(self, rows: Sequence[int]) -> ImageTextDataset:
        """The dataset restricted to some images and the captions written for them."""
        rows = list(rows)
        new_row = torch.full((len(self.images),), -1, dtype=torch.long)
        new_row[rows] = torch.arange(len(rows))
        keep = (new_row[self.caption_image] >= 0).nonzero().flatten().tolist()
        relevance = None
        if self.pair_relevance is not None:
            old = self.pair_relevance
            keep_t, rows_t = torch.tensor(keep, dtype=torch.long), torch.tensor(rows, dtype=torch.long)

            def relevance(c: Tensor, i: Tensor) -> Tensor:
                return old(keep_t[c], rows_t[i])
        twins = None
        if self.near_duplicates is not None:  # a twin left out of the subset becomes -1
            old_twin = self.near_duplicates[rows]
            twins = torch.where(old_twin >= 0, new_row[old_twin.clamp_min(0)], -1)
        return ImageTextDataset(self.name, self.images.subset(rows), self.captions.subset(keep),
                                new_row[self.caption_image[keep]], self.extra_relevant, relevance, twins)

    def is_relevant(self, caption_rows: Tensor, image_rows: Tensor) -> Tensor:
        """`[P]` bool: is caption `caption_rows[p]` relevant to image `image_rows[p]` (its own image, or any pair
        `pair_relevance` accepts)?"""
        caption_rows, image_rows = caption_rows.long().cpu(), image_rows.long().cpu()
        own = self.caption_image[caption_rows] == image_rows
        if self.pair_relevance is None or len(caption_rows) == 0:
            return own
        return own | self.pair_relevance(caption_rows, image_rows)

    def drop_unreadable(self, skip: bool) -> ImageTextDataset:
        """Check every image file; raise on the first bad one, or (`skip=True`) warn and drop the bad ones."""
        if not isinstance(self.images, ImageFiles):
            return self
        if not skip:
            for i in range(len(self.images)):
                self.images[i]  # raises ImageLoadError naming the file
            return self
        bad = set(self.images.unreadable())
        if not bad:
            return self
        names = [str(self.images.sources[i] if not isinstance(self.images.sources[i], tuple)
                     else self.images.sources[i][0]) for i in sorted(bad)]
        warnings.warn(f"skipping {len(bad)} unreadable image(s) and their captions: {', '.join(names[:10])}"
                      + (" ..." if len(names) > 10 else ""), stacklevel=2)
        return self.subset_images([i for i in range(len(self.images)) if i not in bad])
