"""COCO and Flickr30k Karpathy splits through `datasets.load_dataset` (the network once, or a filled cache)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets

from mmrerank.datasets.imagetext import ImageTextDataset
from mmrerank.datasets.loaders.karpathy import _karpathy_table_to_dataset
from mmrerank.datasets.loaders.tables import (
    _check_skip,
    _column_image,
    _normalize_split,
    _require_columns,
    _require_dir,
    _table_to_dataset,
)

# Where Flickr30k's Karpathy splits come from, and what was checked (no network here: the hub pages and code):
# - nlphuji/flickr30k is a script dataset (`flickr30k.py`, hub commit 2b239be): one config `TEST`, one split `test`,
#   features `image` (Image), `caption` (list of str), `sentids` (list of str), `split`, `img_id`, `filename`, read
#   from `flickr_annotations_30k.csv`. `datasets` >= 4 (5.2 here) refuses the script on `main`
#   ("Dataset scripts are no longer supported", datasets/load.py).
# - Its dataset viewer lists subset `TEST`, split `test`, "31k rows": the viewer reads the hub's auto-converted
#   parquet export, branch `refs/convert/parquet`, laid out `TEST/test/NNNN.parquet` with the same columns (the
#   features kept in the parquet schema). For a revision other than `main`, `dataset_module_factory` (load.py) finds
#   no script on that branch and reads its parquet files; the folder `test/` resolves to the split `test` by the
#   default data-file patterns (`**/test/**`, datasets/data_files.py).
# - Parquet copies with the same columns (umaru97/flickr30k_train_val_test, AnyModal/flickr30k) split on that `split`
#   column into 29,000 / 1,014 / 1,000 images, 5 captions each: the Karpathy train / val / test, 31,014 rows.
# - lmms-lab/flickr30k (parquet, 31,783 rows in one `test` split) has no `split` column, so its Karpathy test images
#   cannot be told apart: not a usable default.
_HUB_COCO_SPLITS = {"train": "train+restval", "val": "validation", "test": "test", "restval": "restval"}
FLICKR30K_REPO = "nlphuji/flickr30k"
FLICKR30K_REVISION = "refs/convert/parquet"


def load_hub_flickr30k(split: str = "test", repo: str = FLICKR30K_REPO, skip_corrupt: bool = False,
                       verify: bool = True, *, revision: str | None = FLICKR30K_REVISION,
                       **load_kwargs: Any) -> ImageTextDataset:
    """Load a Flickr30k Karpathy split from the Hugging Face hub (images included).

    By default the parquet export of `nlphuji/flickr30k` (branch `refs/convert/parquet`), which current `datasets`
    reads without running the repository's loading script. It has one hub split, `test`, holding the 31,014 images
    of the Karpathy splits; each image's Karpathy split is in its `split` column, which is what `split` filters on.
    Its columns: `image` (an Image feature), `caption` (5 strings), `sentids`, `split`, `img_id`, `filename`.
    Images stay encoded until read.

    Args:
        split: `"train"`, `"val"` (or `"validation"`) or `"test"`.
        repo: the hub repository (any with those columns and a `test` hub split).
        skip_corrupt: warn and drop unreadable images (with their captions) instead of raising.
        verify: decode every image once at load.
        revision: the branch, tag or commit of `repo`; `None` for its default branch.
        **load_kwargs: passed to `datasets.load_dataset` (e.g. `cache_dir`).

    Returns:
        The split's images and captions; image ids are the Flickr photo ids, caption ids the `sentids`.

    Raises:
        RuntimeError: `datasets` refuses the repository's loading script (the message says which revision to use).
        ValueError: an unknown split, a missing column, or no rows in the split.
        ImageLoadError: a missing or corrupt image (unless `skip_corrupt`).
    """
    wanted = _normalize_split(split, {"train", "val", "test"})
    _check_skip(skip_corrupt, verify)
    origin = repo if revision is None else f"{repo}@{revision}"
    try:
        table = datasets.load_dataset(repo, split="test", revision=revision, **load_kwargs)
    except RuntimeError as err:
        if "scripts are no longer supported" not in str(err):
            raise
        raise RuntimeError(f"{origin}: {err}. The installed datasets {datasets.__version__} runs no loading script; "
                           f"load the hub's parquet export with revision={FLICKR30K_REVISION!r}") from err
    _require_columns(table.column_names, ["image", "caption", "sentids", "split", "filename"], origin)
    row_splits = list(table["split"])
    rows = [i for i, s in enumerate(row_splits) if s == wanted]
    if not rows:
        raise ValueError(f"{origin} has no rows with split {wanted!r} (splits there: {sorted(set(row_splits))})")
    # select before reading any image, so only the split's image bytes are ever loaded
    table = table.select(rows)
    return _table_to_dataset(
        table, "flickr30k", origin=origin, columns=["image", "caption", "sentids", "filename"],
        image_source=_column_image("image", None, origin), image_id=lambda row, _: Path(row["filename"]).stem,
        captions_column="caption", caption_ids_column="sentids", skip_corrupt=skip_corrupt, verify=verify)


def load_hub_coco(image_root: str | Path, split: str = "test", name: str = "yerevann/coco-karpathy",
                  skip_corrupt: bool = False, verify: bool = True, **load_kwargs: Any) -> ImageTextDataset:
    """Load a COCO Karpathy split's captions from the Hugging Face hub, with the images from disk.

    `yerevann/coco-karpathy` has hub splits train/validation/test/restval with columns `filepath`, `filename`,
    `sentences` (strings), `sentids`, `cocoid`, `url`, and no images: those are read from
    `image_root / filepath / filename` (e.g. `coco/val2014/COCO_val2014_000000391895.jpg`).
    `split="train"` loads `train+restval` (see `load_karpathy_json`).

    Args:
        image_root: the directory holding `train2014/` and `val2014/`.
        split: `"train"`, `"val"` (or `"validation"`), `"test"` or `"restval"`.
        name: the hub repository.
        skip_corrupt: warn and drop unreadable images (with their captions) instead of raising.
        verify: decode every image once at load.
        **load_kwargs: passed to `datasets.load_dataset`.

    Returns:
        The split's images and captions; image ids are the `cocoid`s, caption ids the `sentids`.

    Raises:
        FileNotFoundError: `image_root` does not exist.
        ValueError: an unknown split, a missing column, or an empty split.
        ImageLoadError: a missing or corrupt image (unless `skip_corrupt`).
    """
    image_root = Path(image_root)
    _require_dir(image_root)
    hub_split = _HUB_COCO_SPLITS[_normalize_split(split, _HUB_COCO_SPLITS)]
    _check_skip(skip_corrupt, verify)
    table = datasets.load_dataset(name, split=hub_split, **load_kwargs)
    return _karpathy_table_to_dataset(table, image_root, "coco", origin=name, skip_corrupt=skip_corrupt,
                                      verify=verify)
