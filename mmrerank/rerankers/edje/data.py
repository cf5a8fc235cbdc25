"""EDJE's training data: groups of (query, positive, hard negatives) in both directions, as row indices."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mmrerank.benchmark import DatasetConfig
from mmrerank.datasets.imagetext import ImageTextDataset
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
        seed: sampling seed (a different stream per item and epoch via `set_epoch`).
        twins: put the near-duplicate first among the negatives (above).
    """

    def __init__(self, dataset: ImageTextDataset, negatives, n: int = 7, hard: int = 4, pool: int = 16,
                 seed: int = 0, twins: bool = False) -> None:
        if not 0 <= hard <= n:
            raise ValueError(f"hard={hard} must lie in [0, n={n}]")
        if twins and dataset.near_duplicates is None:
            raise ValueError(f"twins=True, but dataset {dataset.name!r} has no near_duplicates")
        self.dataset, self.negatives, self.n, self.hard, self.pool, self.seed = dataset, negatives, n, hard, pool, seed
        self.twins = twins
        self.epoch = 0
        self.hard_active = True
        # image row -> its caption rows, for the twin's captions
        order = torch.argsort(dataset.caption_image, stable=True)
        self._caption_start = torch.searchsorted(dataset.caption_image[order], torch.arange(len(dataset.images) + 1))
        self._captions_by_image = order

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def use_hard(self, active: bool) -> None:
        """Switch the hard negatives on or off (off: all n negatives are random), for a curriculum."""
        self.hard_active = active

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
        data, twin = self.dataset, int(self.dataset.near_duplicates[image])
        if not (self.twins and self.hard_active) or twin < 0:
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


class EDJEDataModule(L.LightningDataModule):
    """Image-text training groups with first-stage hard negatives (see `RerankGroups`), for `EDJEModule`.

    Batches are dicts of row indices into the split (`caption [B]`, `image [B]`, `t2i_images [B, 1+n]`,
    `i2t_captions [B, 1+n]`) plus `split`; the module turns rows into texts and (cached) patch tokens.

    Args:
        train, val: the splits (`mmrerank.benchmark.DatasetConfig`; default: the synthetic train / val splits).
        first_stage: the retriever whose top candidates are the hard negatives (`FirstStageConfig`).
        n, hard, pool: negatives per group, how many hard, drawn from how many mined.
        mined: hard negatives kept per query when mining (>= pool).
        batch_size: captions per batch (each gives a t2i and an i2t group).
        curriculum_steps: the first this many training steps draw only random negatives; hard ones join after. A
            joint encoder trained from scratch on first-stage hard negatives from the first step collapses to a
            constant score (loss ln(1 + n)); on random negatives it learns, and then profits from hard ones.
            Needs `num_workers=0` (the switch is made in the main process).
        twins: the near-duplicate image / caption as the first negative of each group once hard negatives are on
            (datasets with `near_duplicates`: the synthetic benchmark); see `RerankGroups`.
    """

    def __init__(self, train: DatasetConfig | None = None, val: DatasetConfig | None = None,
                 first_stage: FirstStage | None = None, n: int = 7, hard: int = 4, pool: int = 16,
                 mined: int = 32, batch_size: int = 32, num_workers: int = 0, seed: int = 0,
                 curriculum_steps: int = 0, twins: bool = False) -> None:
        super().__init__()
        if curriculum_steps and num_workers:
            raise ValueError("curriculum_steps needs num_workers=0: workers hold their own copy of the groups")
        self.curriculum_steps, self.twins = curriculum_steps, twins
        self.train_config = train or DatasetConfig(split="train")
        self.val_config = val or DatasetConfig(split="val")
        self.first_stage = (first_stage or FirstStage()).trained_on(self.train_config.synthetic)
        self.n, self.hard, self.pool, self.mined = n, hard, pool, max(mined, pool)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.splits: dict[str, ImageTextDataset] = {}
        self.negatives: dict[str, object] = {}  # split -> HardNegatives

    def _groups(self, config) -> RerankGroups:
        from mmrerank.retrieval.clip import resolve_device
        from mmrerank.retrieval.negatives import cached_hard_negatives, file_stamp

        data = config.load()
        self.splits[config.split] = data
        stage = self.first_stage
        key = {"dataset": repr(config), "first_stage": stage.model_name, "pretrained": stage.pretrained,
               "checkpoint": file_stamp(stage.folder())}

        def encode():
            encoder = stage.build().to(resolve_device("auto"))
            return encoder.encode(data.images, 256), encoder.encode(data.captions, 256)

        negatives = cached_hard_negatives(data, key, encode, k=self.mined, depth=4 * self.mined)
        self.negatives[config.split] = negatives
        return RerankGroups(data, negatives, self.n, self.hard, self.pool, self.seed, self.twins)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and not hasattr(self, "train_set"):
            self.train_set = self._groups(self.train_config)
        if stage in (None, "fit", "validate") and not hasattr(self, "val_set"):
            self.val_set = self._groups(self.val_config)

    def train_texts(self) -> list[str]:
        """The training captions (for building a tokenizer)."""
        return list(self.splits[self.train_config.split].captions.texts)

    def _loader(self, data: RerankGroups, shuffle: bool, split: str) -> DataLoader:
        def collate(rows):
            batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
            batch["split"] = split
            return batch

        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate, drop_last=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, self.train_config.split)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, self.val_config.split)
