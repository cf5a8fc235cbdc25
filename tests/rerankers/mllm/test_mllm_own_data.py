"""The MLLM reranker trains on a user's own image-text data (issue 26 item 3): `ImageGroupsDataModule` with a
CaptionTable or a Karpathy-format dataset as `train` / `val` (before: the synthetic benchmark only), a config's
`val_check_interval` larger than the data's epoch, and the export loads with `load_reranker(folder)` and ranks
image paths."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from mmrerank.datasets import CaptionTable, Karpathy
from mmrerank.rerankers.mllm import MLLMReranker, build_tiny_vlm
from mmrerank.rerankers.mllm.data import ImageGroupsDataModule
from mmrerank.rerankers.mllm.module import MLLMRerankerModule, MLLMTraining
from mmrerank.rerankers.presets import load_reranker
from mmrerank.retrieval.clip import CLIPEncoder
from mmrerank.retrieval.first_stage import FirstStage

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 20),
           "purple": (140, 30, 160), "orange": (250, 140, 10)}


def images(root: Path) -> list[tuple[str, str, str]]:
    """12 images `<colour><k>.png`, 8 train and 4 val -> (file name, caption, split)."""
    rows = []
    for i, (colour, rgb) in enumerate(list(COLOURS.items()) * 2):
        name = f"{colour}{i // len(COLOURS)}.png"
        Image.new("RGB", (32, 32), rgb).save(root / name)
        rows.append((name, f"a {colour} picture", "train" if i < 8 else "val"))
    return rows


def caption_table(root: Path):
    rows = images(root)
    pq.write_table(pa.table({"image": [n for n, _, _ in rows], "captions": [[c] for _, c, _ in rows],
                             "split": [s for _, _, s in rows]}), root / "mine.parquet")
    return {split: CaptionTable(str(root / "mine.parquet"), split=split) for split in ("train", "val")}


def karpathy(root: Path):
    rows = images(root)
    records = [{"filename": n, "split": s, "sentences": [{"raw": c, "sentid": i}]} for i, (n, c, s) in enumerate(rows)]
    (root / "dataset_mine.json").write_text(json.dumps({"dataset": "mine", "images": records}))
    return {split: Karpathy(str(root / "dataset_mine.json"), str(root), split=split) for split in ("train", "val")}


@pytest.mark.slow
@pytest.mark.parametrize("layout", [caption_table, karpathy])
def test_mllm_fits_on_own_data_and_loads(layout, tmp_path):
    sources = layout(tmp_path)
    torch.manual_seed(0)
    CLIPEncoder("mmrerank-tiny-resnet").save_pretrained(tmp_path / "fs")
    data = ImageGroupsDataModule(first_stage=FirstStage(checkpoint=str(tmp_path / "fs")), negatives=1, depth=4,
                                 image_size=56, batch_size=2, cache_dir=str(tmp_path / "groups"), **sources)
    groups = data.groups("train")
    assert groups.data.images.ids[:2] == ["red0", "green0"] and len(groups) == 8  # the table's images, by file name
    module = MLLMRerankerModule(str(build_tiny_vlm(tmp_path / "tiny", seed=0)), loss_functions=[("sft", 1.0)],
                                training=MLLMTraining(export_dir=str(tmp_path / "export")))
    trainer = L.Trainer(max_steps=2, val_check_interval=500, limit_val_batches=1, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.warns(UserWarning, match="val_check_interval=500 is more than the 4 training batches"):
        trainer.fit(module, datamodule=data)
    reranker = load_reranker(tmp_path / "export", device="cpu")
    assert isinstance(reranker, MLLMReranker)
    ranked = reranker.rank("a blue picture", [str(tmp_path / "blue1.png"), tmp_path / "red1.png"], ids=["b", "r"])
    pictures = [Image.open(tmp_path / name).convert("RGB") for name in ("blue1.png", "red1.png")]
    expected = reranker.score(["a blue picture"] * 2, pictures)  # a path is the image, not the text of the path
    assert dict(zip(ranked.ids, ranked.scores)) == pytest.approx({"b": float(expected[0]), "r": float(expected[1])})
    with pytest.raises(ValueError, match="give both train and val"):
        ImageGroupsDataModule(train=sources["train"])
