"""Lightning data modules shared by the families: image-caption pairs, and groups of (query, positive, hard
negatives) for rerankers over document pages and over synthetic images."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mmrerank.benchmark import DatasetConfig, FirstStageConfig
from mmrerank.data.dataset import ImageTextDataset
from mmrerank.data.synthetic import SyntheticConfig, ensure_split, load_scenes, load_synthetic
from mmrerank.data.synthetic.pages import PagesConfig, ensure_pages
from mmrerank.data.synthetic.scenes import satisfies, scene_arrays
from mmrerank.io import atomic_write_json, cache_root, key_digest


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


class GroupsDataModule(L.LightningDataModule):
    """Base of the MLLM data modules: `train_set` / `val_set` of (query, [positive, negatives...]) groups, batched
    by `collate_groups` (subclasses set the sets in `setup` and `batch_size` / `num_workers` in `__init__`)."""

    def _loader(self, data: Dataset, shuffle: bool) -> DataLoader:
        from mmrerank.rerankers.mllm.module import collate_groups

        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_groups, drop_last=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)


class PageGroupsDataModule(GroupsDataModule):
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
                 first_stage: FirstStageConfig | None = None, n: int = 7, hard: int = 4, pool: int = 16,
                 mined: int = 32, batch_size: int = 32, num_workers: int = 0, seed: int = 0,
                 curriculum_steps: int = 0, twins: bool = False) -> None:
        super().__init__()
        if curriculum_steps and num_workers:
            raise ValueError("curriculum_steps needs num_workers=0: workers hold their own copy of the groups")
        self.curriculum_steps, self.twins = curriculum_steps, twins
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


def _relevant(folder: Path, captions: np.ndarray, images: np.ndarray) -> np.ndarray:
    """`[C, K]` bool: does image `images[c, k]`'s scene satisfy caption `captions[c]` (synthetic split `folder`)."""
    attrs, rels = scene_arrays(load_scenes(folder))
    specs = np.load(folder / "specs.npy")[captions]
    # Only each caption's own candidates are checked, so the cost is C x K, never C x N.
    return np.stack([satisfies(specs[c:c + 1], attrs[images[c]], rels[images[c]])[0] for c in range(len(captions))])


def mine_image_groups(data: ImageTextDataset, ranked: torch.Tensor, captions: np.ndarray, relevant: np.ndarray,
                      negatives: int) -> list[list[int]]:
    """Groups `[caption, its image, n hard negative images]` from a first-stage ranking.

    Args:
        data: the split (gives each caption's own image).
        ranked: `[C, K]` image rows, the first stage's top K for each caption in `captions`, best first.
        captions: `[C]` caption rows.
        relevant: `[C, K]` bool, True where the ranked image satisfies the caption (excluded as a negative).
        negatives: hard negatives per group: the best-ranked images that are neither the caption's own image
            nor relevant to it. Captions with fewer such images in their top K get no group.
    """
    groups = []
    for c, row, rel in zip(captions.tolist(), ranked.tolist(), relevant):
        own = int(data.caption_image[c])
        hard = [i for i, r in zip(row, rel) if i != own and not r][:negatives]
        if len(hard) == negatives:
            groups.append([c, own, *hard])
    return groups


class ImageGroups(Dataset):
    """Item g: (caption, [its image, n hard negative images]) as a string and PIL images.

    Args:
        data: the synthetic split.
        groups: `[caption row, image rows...]` lists from `mine_image_groups`.
        image_size: resize the images to this side (the tiny VLM turns 56 px into 4 visual tokens, 112 px
            into 16), or None to keep them.
    """

    def __init__(self, data: ImageTextDataset, groups: list[list[int]], image_size: int | None = None) -> None:
        self.data, self.groups, self.image_size = data, groups, image_size

    def __len__(self) -> int:
        return len(self.groups)

    def _image(self, row: int) -> Image.Image:
        image = self.data.images[row]
        return image.resize((self.image_size,) * 2, Image.BICUBIC) if self.image_size else image

    def __getitem__(self, g: int):
        caption, *rows = self.groups[g]
        return self.data.captions[caption], [self._image(r) for r in rows]


class ImageGroupsDataModule(GroupsDataModule):
    """Groups of (caption, its image + first-stage hard negatives) from the built-in synthetic image-text benchmark.

    Hard negatives are the first stage's top images for the caption that do not satisfy it (`scenes.satisfies`:
    a synthetic caption can describe other images too; those are never used as negatives). They are mined once
    per split and cached as JSON (atomically), keyed by the data, the first stage's weights and these settings.

    Args:
        synthetic: the benchmark's size and seed.
        first_stage: the dual encoder that ranks the images (`FirstStageConfig`; it is trained and saved first
            when its checkpoint does not exist, as in `mmrerank benchmark`).
        negatives: hard negatives per caption.
        depth: first-stage candidates the negatives come from.
        train_captions, val_captions: captions drawn (seeded) from each split's captions as queries.
        image_size: see `ImageGroups`.
        batch_size: groups per batch.
        seed: seeds the choice of captions.
        cache_dir: where the mined groups go (default `$MMRERANK_CACHE/image-groups`).
    """

    def __init__(self, synthetic: SyntheticConfig | None = None, first_stage: FirstStageConfig | None = None,
                 negatives: int = 3, depth: int = 16, train_captions: int = 4000, val_captions: int = 400,
                 image_size: int | None = 112, batch_size: int = 4, num_workers: int = 0, seed: int = 0,
                 cache_dir: str | None = None) -> None:
        super().__init__()
        if negatives < 1 or depth <= negatives:
            raise ValueError(f"need 1 <= negatives < depth, got negatives={negatives}, depth={depth}")
        self.synthetic = synthetic or SyntheticConfig()
        self.first_stage = first_stage or FirstStageConfig()
        self.negatives, self.depth, self.image_size, self.seed = negatives, depth, image_size, seed
        self.counts = {"train": train_captions, "val": val_captions}
        self.batch_size, self.num_workers = batch_size, num_workers
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / "image-groups"

    def _cache_file(self, split: str, weights: str) -> Path:
        key = {"synthetic": {k: v for k, v in asdict(self.synthetic).items() if k != "root"}, "split": split,
               "weights": weights, "negatives": self.negatives, "depth": self.depth,
               "captions": self.counts[split], "seed": self.seed, "version": 1}
        return self.cache_dir / f"{split}-{key_digest(key)}.json"

    def _weights_key(self) -> str:
        """What identifies the first stage's weights: a hash of the checkpoint file, or the pretrained tag."""
        fs = self.first_stage
        if fs.pretrained:
            return f"{fs.model_name}:{fs.pretrained}"
        path = Path(fs.checkpoint or "")
        if not path.is_file():
            fs.build(self.synthetic, progress=False)  # trains the first stage and saves it to `checkpoint`
        if not path.is_file():
            raise ValueError("first_stage needs a checkpoint path (or a pretrained tag) to mine negatives with")
        return f"{fs.model_name}:{hashlib.sha1(path.read_bytes()).hexdigest()}"

    def _mine(self, split: str, data: ImageTextDataset) -> list[list[int]]:
        from mmrerank.evaluation import retrieve

        rng = np.random.default_rng([self.seed, ("train", "val").index(split)])
        captions = np.sort(rng.permutation(len(data.captions))[:self.counts[split]])
        encoder = self.first_stage.build(self.synthetic, progress=False)
        image_emb = encoder.encode(data.images, progress=False)
        text_emb = encoder.encode(data.captions.subset(captions.tolist()), progress=False)
        depth = min(self.depth, len(data.images))
        ranked = retrieve(text_emb, image_emb, [str(c) for c in captions], data.images.ids, depth).sorted().indices
        relevant = _relevant(ensure_split(self.synthetic, split, progress=False), captions, ranked.cpu().numpy())
        return mine_image_groups(data, ranked.cpu(), captions, relevant, self.negatives)

    def groups(self, split: str) -> ImageGroups:
        """The split's groups, mined with the first stage on first use and read from the cache afterwards."""
        data = load_synthetic(split, self.synthetic, relevance=False, progress=False)
        path = self._cache_file(split, self._weights_key())
        if path.is_file():
            groups = json.loads(path.read_text())
        else:
            groups = self._mine(split, data)
            atomic_write_json(path, groups)
        return ImageGroups(data, groups, self.image_size)

    def prepare_data(self) -> None:
        for split in ("train", "val"):
            self.groups(split)

    def setup(self, stage: str | None = None) -> None:
        self.train_set, self.val_set = self.groups("train"), self.groups("val")
