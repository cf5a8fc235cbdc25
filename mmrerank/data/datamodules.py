"""Lightning data modules shared by the families: image-caption pairs, and groups of (query, positive, hard
negatives) for rerankers over document pages and over synthetic images."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mmrerank.benchmark import DatasetConfig, FirstStageConfig
from mmrerank.data.dataset import ImageTextDataset
from mmrerank.data.synthetic import SyntheticConfig, load_synthetic
from mmrerank.data.synthetic.pages import PagesConfig, ensure_pages


class CaptionPairs(Dataset):
    """Item c is (the image caption c was written for, caption c): PIL image and string."""

    def __init__(self, dataset: ImageTextDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset.captions)

    def __getitem__(self, c: int):
        return self.dataset.images[int(self.dataset.caption_image[c])], self.dataset.captions[c]


def collate_pairs(rows):
    """Lists stay lists: the model turns images and texts into tensors with its own transform and tokenizer."""
    images, texts = zip(*rows)
    return list(images), list(texts)


class SyntheticDataModule(L.LightningDataModule):
    """(image, caption) pairs of the built-in synthetic benchmark's train, val and test splits.

    Args:
        config: the benchmark's size and seed.
        batch_size: pairs per batch (per device under DDP).
        num_workers: DataLoader workers.
    """

    def __init__(self, config: SyntheticConfig | None = None, batch_size: int = 256, num_workers: int = 0) -> None:
        super().__init__()
        self.config = config or SyntheticConfig()
        self.batch_size, self.num_workers = batch_size, num_workers

    def prepare_data(self) -> None:
        for split in ("train", "val", "test"):
            load_synthetic(split, self.config, relevance=False)

    def setup(self, stage: str | None = None) -> None:
        def pairs(split: str) -> CaptionPairs:
            return CaptionPairs(load_synthetic(split, self.config, relevance=False, progress=False))

        if stage in (None, "fit"):
            self.train_set = pairs("train")
        if stage in (None, "fit", "validate"):
            self.val_set = pairs("val")
        if stage in (None, "test"):
            self.test_set = pairs("test")

    def _loader(self, data: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_pairs, drop_last=shuffle, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


class PageGroups(Dataset):
    """Item q: (question q, [its gold page, n hard negative pages]) as `Page`s (image + OCR text).

    Hard negatives are the non-gold pages of the question's own document that the BM25 first stage ranks highest
    (mined once, when the dataset is built).
    """

    def __init__(self, dataset, negatives: int) -> None:
        from mmrerank.evaluation import bm25_page_scores

        self.dataset = dataset
        self.groups: list[tuple[int, list[int]]] = []  # (question, [page rows]), positive first
        for q, (question, scores) in enumerate(zip(dataset.annotations.questions, bm25_page_scores(dataset))):
            pages = dataset.candidates(q)
            gold = set(question.gold_pages)
            ranked = [int(p) for p in torch.sort(scores, descending=True, stable=True).indices if int(p) not in gold]
            if len(ranked) >= negatives:
                self.groups.append((q, [pages[question.gold_pages[0]], *(pages[p] for p in ranked[:negatives])]))

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int):
        from mmrerank.rerankers.mllm import Page

        q, rows = self.groups[i]
        return self.dataset.questions[q], [Page(self.dataset.images[r], self.dataset.ocr_text[r]) for r in rows]


class PageGroupsDataModule(L.LightningDataModule):
    """Groups of (question, gold page + BM25 hard negatives) from the synthetic document pages (MMDocIR format).

    Args:
        train, val: the synthetic page sets (different seeds give disjoint documents).
        negatives: hard negatives per question.
        batch_size: groups per batch.
    """

    def __init__(self, train: PagesConfig | None = None, val: PagesConfig | None = None, negatives: int = 3,
                 batch_size: int = 4, num_workers: int = 0) -> None:
        super().__init__()
        self.train_config = train or PagesConfig(seed=0)
        self.val_config = val or PagesConfig(seed=1, documents=20)
        self.negatives, self.batch_size, self.num_workers = negatives, batch_size, num_workers

    @staticmethod
    def _load(config: PagesConfig):
        from mmrerank.data.mmdocir import load_mmdocir

        folder = ensure_pages(config)
        return load_mmdocir(folder / "MMDocIR_annotations.jsonl", folder / "MMDocIR_pages.parquet")

    def prepare_data(self) -> None:
        ensure_pages(self.train_config)
        ensure_pages(self.val_config)

    def setup(self, stage: str | None = None) -> None:
        self.train_set = PageGroups(self._load(self.train_config), self.negatives)
        self.val_set = PageGroups(self._load(self.val_config), self.negatives)

    def _loader(self, data: Dataset, shuffle: bool) -> DataLoader:
        from mmrerank.rerankers.mllm.module import collate_groups

        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_groups, drop_last=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)


class RerankGroups(Dataset):
    """Training groups for image-text rerankers, both directions, from first-stage hard negatives.

    Item c (a caption) gives two groups of `1 + n` candidates, the positive first:

    - t2i: caption c against [its image, n negative images];
    - i2t: caption c's image against [caption c, n negative captions].

    Of the n negatives, `hard` are drawn from the first `pool` mined hard negatives (`HardNegatives`), the rest
    uniformly from the split; a random pick that turns out relevant is replaced by the next hard negative.

    Args:
        dataset: the split.
        negatives: the mined hard negatives of that split.
        n: negatives per group.
        hard: how many of them are hard.
        pool: hard negatives are drawn from the first `pool` mined ones.
        seed: sampling seed (a different stream per item and epoch via `set_epoch`).
    """

    def __init__(self, dataset: ImageTextDataset, negatives, n: int = 7, hard: int = 4, pool: int = 16,
                 seed: int = 0) -> None:
        if not 0 <= hard <= n:
            raise ValueError(f"hard={hard} must lie in [0, n={n}]")
        self.dataset, self.negatives, self.n, self.hard, self.pool, self.seed = dataset, negatives, n, hard, pool, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset.captions)

    def _pick(self, gen: torch.Generator, mined: torch.Tensor, total: int, is_relevant) -> list[int]:
        hard_pool = mined[:self.pool][mined[:self.pool] >= 0]
        reserve = mined[mined >= 0]
        picked = hard_pool[torch.randperm(len(hard_pool), generator=gen)[:self.hard]].tolist()
        randoms = torch.randint(total, (self.n - len(picked),), generator=gen)
        bad = is_relevant(randoms)
        spare = iter(x for x in reserve.tolist() if x not in picked)
        for r, b in zip(randoms.tolist(), bad.tolist()):
            picked.append(next(spare, r) if b or r in picked else r)
        return picked

    def __getitem__(self, c: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(hash((self.seed, self.epoch, c)) & 0x7FFFFFFF)
        data, image = self.dataset, int(self.dataset.caption_image[c])
        images = self._pick(gen, self.negatives.t2i[c], len(data.images),
                            lambda rows: data.is_relevant(torch.full_like(rows, c), rows))
        captions = self._pick(gen, self.negatives.i2t[image], len(data.captions),
                              lambda rows: data.is_relevant(rows, torch.full_like(rows, image)))
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
    """

    def __init__(self, train: DatasetConfig | None = None, val: DatasetConfig | None = None,
                 first_stage: FirstStageConfig | None = None, n: int = 7, hard: int = 4, pool: int = 16,
                 mined: int = 32, batch_size: int = 32, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.train_config = train or DatasetConfig(split="train")
        self.val_config = val or DatasetConfig(split="val")
        self.first_stage = first_stage or FirstStageConfig()
        self.n, self.hard, self.pool, self.mined = n, hard, pool, max(mined, pool)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.splits: dict[str, ImageTextDataset] = {}
        self.negatives: dict[str, object] = {}  # split -> HardNegatives

    def _groups(self, config) -> RerankGroups:
        from mmrerank.data.negatives import cached_hard_negatives, file_stamp
        from mmrerank.encoders.clip import resolve_device

        data = config.load()
        self.splits[config.split] = data
        stage = self.first_stage
        key = {"dataset": repr(config), "first_stage": stage.model_name, "pretrained": stage.pretrained,
               "checkpoint": file_stamp(stage.checkpoint)}

        def encode():
            encoder = stage.build(self.train_config.synthetic).to(resolve_device("auto"))
            return encoder.encode(data.images, 256), encoder.encode(data.captions, 256)

        negatives = cached_hard_negatives(data, key, encode, k=self.mined, depth=4 * self.mined)
        self.negatives[config.split] = negatives
        return RerankGroups(data, negatives, self.n, self.hard, self.pool, self.seed)

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
