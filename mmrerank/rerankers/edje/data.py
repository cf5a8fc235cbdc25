"""EDJE's training data: groups of (query, positive, hard negatives) in both directions.

Batches are self-contained (the pairs' texts, their image rows, the group size, the first stage's caption
embeddings); what the module needs once before training (the images to compute patch tokens for, the captions to
build a tokenizer from) it gets from one call, `EDJEDataModule.edje_inputs()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mmrerank.core.items import Items
from mmrerank.core.validation import batches_per_epoch, fit_val_check_interval
from mmrerank.datasets.imagetext import ImageTextDataset
from mmrerank.datasets.sources import ImageTextSource, Synthetic
from mmrerank.retrieval.first_stage import FirstStage


class RerankGroups(Dataset):
    """Training groups for image-text rerankers, both directions, from first-stage hard negatives.

    Item c (a caption) gives two groups of `1 + n` candidates, the positive first:

    - t2i: caption c against [its image, n negative images];
    - i2t: caption c's image against [caption c, n negative captions].

    Of the n negatives, `hard` are drawn from the first `pool` mined hard negatives (`HardNegatives`), the rest
    uniformly from the split; a random pick that turns out relevant is replaced by the next hard negative.

    With `twins` (and a dataset that knows its `near_duplicates`), while hard negatives are on, the first negative
    of each group is the minimal pair: t2i, the image's near-duplicate; i2t, a caption written for the
    near-duplicate; either only when it is not relevant (a caption the twin also satisfies is no negative).

    Args:
        dataset: the split.
        negatives: the mined hard negatives of that split.
        n: negatives per group.
        hard: how many of them are hard.
        pool: hard negatives are drawn from the first `pool` mined ones.
        seed: sampling seed (a different stream per item and epoch).
        twins: put the near-duplicate first among the negatives (above).
        clock: `() -> (epoch, step)` of the training (the data module passes the trainer's); the epoch picks the
            sampling stream, the step the curriculum. None: epoch 0, hard negatives on (or as `use_hard` says).
        curriculum_steps: with a clock, hard negatives start at this step.
    """

    def __init__(self, dataset: ImageTextDataset, negatives, n: int = 7, hard: int = 4, pool: int = 16,
                 seed: int = 0, twins: bool = False, clock: Callable[[], tuple[int, int]] | None = None,
                 curriculum_steps: int = 0) -> None:
        if not 0 <= hard <= n:
            raise ValueError(f"hard={hard} must lie in [0, n={n}]")
        if twins and dataset.near_duplicates is None:
            raise ValueError(no_twins_message(dataset.name))
        self.dataset, self.negatives, self.n, self.hard, self.pool, self.seed = dataset, negatives, n, hard, pool, seed
        self.twins, self.clock, self.curriculum_steps = twins, clock, curriculum_steps
        self._epoch, self._hard = 0, None
        # image row -> its caption rows, for the twin's captions
        order = torch.argsort(dataset.caption_image, stable=True)
        self._caption_start = torch.searchsorted(dataset.caption_image[order], torch.arange(len(dataset.images) + 1))
        self._captions_by_image = order

    def use_hard(self, active: bool | None) -> None:
        """Force the hard negatives on or off (off: all n negatives are random); None: follow the clock."""
        self._hard = active

    @property
    def epoch(self) -> int:
        return self.clock()[0] if self.clock else self._epoch

    @property
    def hard_active(self) -> bool:
        if self._hard is not None:
            return self._hard
        return self.clock()[1] >= self.curriculum_steps if self.clock else True

    def __len__(self) -> int:
        return len(self.dataset.captions)

    def _pick(self, gen: torch.Generator, mined: torch.Tensor, total: int, is_relevant,
              first: list[int] = ()) -> list[int]:
        """`n` negatives: `first` (already checked), then up to `hard` from the pool, then random ones."""
        hard_pool = mined[:self.pool][mined[:self.pool] >= 0]
        reserve = mined[mined >= 0]
        hard = self.hard if self.hard_active else 0
        picked = list(first)[:self.n]
        for row in hard_pool[torch.randperm(len(hard_pool), generator=gen)[:hard]].tolist():
            if row not in picked and len(picked) < self.n:
                picked.append(row)
        randoms = torch.randint(total, (self.n - len(picked),), generator=gen)
        bad = is_relevant(randoms)
        spare = iter(x for x in reserve.tolist() if x not in picked)
        for r, b in zip(randoms.tolist(), bad.tolist()):
            picked.append(next(spare, r) if b or r in picked else r)
        return picked

    def _twin_negatives(self, gen: torch.Generator, c: int, image: int) -> tuple[list[int], list[int]]:
        """The near-duplicate image (if caption c does not fit it) and one of its captions that does not fit `image`."""
        if not (self.twins and self.hard_active):  # checked first: a dataset without twins has no near_duplicates
            return [], []
        data, twin = self.dataset, int(self.dataset.near_duplicates[image])
        if twin < 0:
            return [], []
        twin_image = [] if data.is_relevant(torch.tensor([c]), torch.tensor([twin])).item() else [twin]
        rows = self._captions_by_image[self._caption_start[twin]:self._caption_start[twin + 1]]
        rows = rows[~data.is_relevant(rows, torch.full_like(rows, image))]
        twin_caption = [int(rows[torch.randint(len(rows), (1,), generator=gen)])] if len(rows) else []
        return twin_image, twin_caption

    def __getitem__(self, c: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(hash((self.seed, self.epoch, c)) & 0x7FFFFFFF)
        data, image = self.dataset, int(self.dataset.caption_image[c])
        twin_image, twin_caption = self._twin_negatives(gen, c, image)
        images = self._pick(gen, self.negatives.t2i[c], len(data.images),
                            lambda rows: data.is_relevant(torch.full_like(rows, c), rows), twin_image)
        captions = self._pick(gen, self.negatives.i2t[image], len(data.captions),
                              lambda rows: data.is_relevant(rows, torch.full_like(rows, image)), twin_caption)
        return {"caption": torch.tensor(c), "image": torch.tensor(image),
                "t2i_images": torch.tensor([image, *images]), "i2t_captions": torch.tensor([c, *captions])}


def no_twins_message(name: str) -> str:
    """The error for `twins=True` on a dataset without near-duplicate twins (every real one), naming the fix."""
    return (f"twins=True, but dataset {name!r} has no near-duplicate twins (`near_duplicates`: only "
            "the built-in synthetic benchmark's splits have them); "
            "turn them off with --data.twins=false (EDJEDataModule(twins=False))")


@dataclass
class EDJEInputs:
    """What `EDJEModule` needs from its data once, before training.

    Attributes:
        images: image set name (the split) -> its images; `batch["images"]` rows index `images[batch["image_set"]]`.
        image_keys: image set name -> what identifies those images (keys of the module's patch-token cache).
        texts: the training captions (a WordPiece vocabulary is built from them).
        text_dim: the width of the first stage's caption embeddings (target of text-embedding recovery).
    """

    images: dict[str, Items]
    image_keys: dict[str, dict[str, Any]]
    texts: list[str]
    text_dim: int


class EDJEDataModule(L.LightningDataModule):
    """Image-text training groups with first-stage hard negatives (see `RerankGroups`), for `EDJEModule`.

    A batch holds `texts` (`2 * B * k` strings: the t2i groups' captions, then the i2t groups'), `images`
    (`[2 * B * k]` image rows of the same pairs), `image_set` (the split whose rows they are), `k` (1 + n, the
    group size, positive first) and `caption_emb` (`[B, e]`, the first stage's embedding of each group's caption).

    Args:
        train, val: the splits (any `ImageTextSource`; default: the synthetic train / val splits).
        first_stage: the retriever whose top candidates are the hard negatives (`FirstStage`).
        n, hard, pool: negatives per group, how many hard, drawn from how many mined.
        mined: hard negatives kept per query when mining (>= pool).
        batch_size: captions per batch (each gives a t2i and an i2t group).
        curriculum_steps: the first this many training steps draw only random negatives; hard ones join after. A
            joint encoder trained from scratch on first-stage hard negatives from the first step collapses to a
            constant score (loss ln(1 + n)); on random negatives it learns, and then profits from hard ones.
            Needs `num_workers=0` (the groups read the trainer's step in the main process).
        twins: the near-duplicate image / caption as the first negative of each group once hard negatives are on
            (datasets with `near_duplicates`: the synthetic benchmark); see `RerankGroups`. Off for any other
            dataset (COCO, Flickr30k, a `CaptionTable`): on, it is refused there before mining.

    An integer `trainer.val_check_interval` larger than an epoch's training batches is lowered to one epoch (with a
    warning), so a config written for a large dataset runs on a small one.
    """

    def __init__(self, train: ImageTextSource | None = None, val: ImageTextSource | None = None,
                 first_stage: FirstStage | None = None, n: int = 7, hard: int = 4, pool: int = 16,
                 mined: int = 32, batch_size: int = 32, num_workers: int = 0, seed: int = 0,
                 curriculum_steps: int = 0, twins: bool = False) -> None:
        super().__init__()
        if curriculum_steps and num_workers:
            raise ValueError("curriculum_steps needs num_workers=0: workers hold their own copy of the groups")
        self.curriculum_steps, self.twins = curriculum_steps, twins
        self.train_config = train or Synthetic("train")
        self.val_config = val or Synthetic("val")
        self.first_stage = (first_stage or FirstStage()).trained_on(getattr(self.train_config, "synthetic", None))
        self.n, self.hard, self.pool, self.mined = n, hard, pool, max(mined, pool)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.splits: dict[str, ImageTextDataset] = {}
        self.negatives: dict[str, object] = {}  # split -> HardNegatives

    def _groups(self, config) -> RerankGroups:
        from mmrerank.core.device import resolve_device
        from mmrerank.retrieval.negatives import cached_hard_negatives

        data = config.load()
        if self.twins and data.near_duplicates is None:  # before mining, which needs the first stage
            raise ValueError(no_twins_message(data.name))
        self.splits[config.split] = data
        stage = self.first_stage
        key = {"dataset": config.describe(), "first_stage": stage.identity()}

        def encode():
            encoder = stage.build().to(resolve_device("auto"))
            return encoder.encode(data.images, 256), encoder.encode(data.captions, 256)

        negatives = cached_hard_negatives(data, key, encode, k=self.mined, depth=4 * self.mined)
        self.negatives[config.split] = negatives
        return RerankGroups(data, negatives, self.n, self.hard, self.pool, self.seed, self.twins, self._clock,
                            self.curriculum_steps)

    def _clock(self) -> tuple[int, int]:
        """The training's (epoch, step); (0, 0) before a trainer is attached."""
        trainer = self.trainer
        return (trainer.current_epoch, trainer.global_step) if trainer is not None else (0, 0)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and not hasattr(self, "train_set"):
            self.train_set = self._groups(self.train_config)
        if stage in (None, "fit", "validate") and not hasattr(self, "val_set"):
            self.val_set = self._groups(self.val_config)

    def edje_inputs(self) -> EDJEInputs:
        """The images of every set batches name, the training captions and the caption-embedding width."""
        configs = {self.train_config.split: self.train_config, self.val_config.split: self.val_config}
        keys = {s: {"dataset": configs[s].describe(), "images": len(d.images)} for s, d in self.splits.items()}
        return EDJEInputs({s: d.images for s, d in self.splits.items()}, keys,
                          list(self.splits[self.train_config.split].captions.texts),
                          self.negatives[self.train_config.split].text_emb.shape[1])

    def _loader(self, data: RerankGroups, shuffle: bool, split: str) -> DataLoader:
        def collate(rows: list[dict[str, Tensor]]) -> dict[str, Any]:
            t2i = torch.stack([r["t2i_images"] for r in rows])  # [B, k]
            i2t = torch.stack([r["i2t_captions"] for r in rows])  # [B, k]
            caption, image = torch.stack([r["caption"] for r in rows]), torch.stack([r["image"] for r in rows])
            b, k = t2i.shape
            captions = torch.cat([caption[:, None].expand(b, k), i2t]).reshape(-1)
            return {"texts": [data.dataset.captions[int(c)] for c in captions],
                    "images": torch.cat([t2i, image[:, None].expand(b, k)]).reshape(-1),
                    "image_set": split, "k": k, "caption_emb": data.negatives.text_emb[caption]}

        # its own seeded generator: the global one has been drawn from by whatever ran before (mining hard negatives
        # on a cold cache does, a warm cache does not), and the order must not depend on that
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        if shuffle and self.trainer is not None:
            fit_val_check_interval(self.trainer, batches_per_epoch(self.trainer, len(data), self.batch_size, True))
        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate, drop_last=shuffle, generator=generator)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, self.train_config.split)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, self.val_config.split)
