"""EDJE trains on a user's own data (issue 26 items 3-4): a CaptionTable and a Karpathy-format dataset, neither with
near-duplicate twins, through `mmrerank fit` with the shipped synthetic config (whose `val_check_interval: 500` is
more than these datasets' epochs); the exported folder loads with `load_reranker(folder)` and reranks a TREC run
named by the images' file names, in Python and through `mmrerank rerank --reranker <folder>` alike.

Before: `twins=false` crashed with `TypeError: 'NoneType' object is not subscriptable` (rerankers/edje/data.py:108),
`twins=true` failed without naming the option, Lightning refused the interval, and `load_reranker(folder)` answered
"unknown reranker".
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from mmrerank.cli import main
from mmrerank.core.items import ImageFiles, Texts
from mmrerank.core.run import Run
from mmrerank.datasets import CaptionTable, Karpathy
from mmrerank.datasets.imagetext import ImageTextDataset
from mmrerank.rerankers.edje import EDJEReranker
from mmrerank.rerankers.edje.data import RerankGroups
from mmrerank.rerankers.presets import load_reranker
from mmrerank.retrieval.clip import CLIPEncoder

CONFIG = "configs/edje/synthetic.yaml"
TINY_JOINT = '{"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}'
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 20),
           "purple": (140, 30, 160), "orange": (250, 140, 10)}
SPLITS = ["train"] * 8 + ["val"] * 4


def test_groups_without_twins_draw_negatives():
    """The unit of the crash: a dataset with no `near_duplicates` and `twins=False`."""
    data = ImageTextDataset("mine", ImageFiles(["a", "b", "c"], ["a.png", "b.png", "c.png"]),
                            Texts(["a#0", "b#0", "c#0"], ["x", "y", "z"]), torch.tensor([0, 1, 2]))
    mined = SimpleNamespace(t2i=torch.tensor([[1, 2], [2, 0], [0, 1]]), i2t=torch.tensor([[1, 2], [2, 0], [0, 1]]))
    group = RerankGroups(data, mined, n=2, hard=2, pool=2, twins=False)[0]
    assert group["t2i_images"][0] == 0 and sorted(group["t2i_images"][1:].tolist()) == [1, 2]
    with pytest.raises(ValueError, match="--data.twins=false"):
        RerankGroups(data, mined, n=2, hard=2, pool=2, twins=True)


def images(root: Path) -> list[tuple[str, str, str]]:
    """12 images `<colour><k>.png` (two sizes of square per colour) -> (file name, caption, split)."""
    rows = []
    for i, (colour, rgb) in enumerate(list(COLOURS.items()) * 2):
        name, size = f"{colour}{i // len(COLOURS)}.png", 8 + 12 * (i // len(COLOURS))
        image = Image.new("RGB", (32, 32), (245, 245, 245))
        image.paste(Image.new("RGB", (size, size), rgb), (4, 4))
        image.save(root / name)
        rows.append((name, f"a {'small' if size == 8 else 'big'} {colour} square", SPLITS[i]))
    return rows


def caption_table(root: Path) -> tuple[str, list[str]]:
    rows = images(root)
    pq.write_table(pa.table({"image": [n for n, _, _ in rows], "caption": [c for _, c, _ in rows],
                             "split": [s for _, _, s in rows]}), root / "mine.parquet")
    return "CaptionTable", [f"--data.init_args.{split}.init_args.path={root / 'mine.parquet'}"
                            for split in ("train", "val")]


def karpathy(root: Path) -> tuple[str, list[str]]:
    rows = images(root)
    records = [{"filename": n, "split": s, "imgid": i, "sentences": [{"raw": c, "sentid": 100 + i}]}
               for i, (n, c, s) in enumerate(rows)]
    (root / "dataset_mine.json").write_text(json.dumps({"dataset": "mine", "images": records}))
    return "Karpathy", [arg for split in ("train", "val") for arg in (
        f"--data.init_args.{split}.init_args.karpathy_json={root / 'dataset_mine.json'}",
        f"--data.init_args.{split}.init_args.image_root={root}")]


def fit_args(root: Path, source: str, source_args: list[str], twins: bool = False) -> list[str]:
    first_stage = root / "fs"
    if not first_stage.exists():
        torch.manual_seed(0)
        CLIPEncoder("mmrerank-tiny-resnet").save_pretrained(first_stage)
    data = [arg for split in ("train", "val") for arg in
            (f"--data.init_args.{split}={source}", f"--data.init_args.{split}.init_args.split={split}")]
    return ["fit", "--config", CONFIG, f"--trainer.default_root_dir={root}", "--trainer.max_steps=3",
            "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
            f"--model.init_args.vision_checkpoint={first_stage}", f"--model.init_args.text_checkpoint={first_stage}",
            f"--model.init_args.joint={TINY_JOINT}", "--model.init_args.num_image_tokens=4",
            f"--model.init_args.export_dir={root / 'model'}", "--data.init_args.batch_size=4",
            "--data.init_args.n=3", "--data.init_args.hard=2", "--data.init_args.pool=4", "--data.init_args.mined=4",
            "--data.init_args.curriculum_steps=1", f"--data.init_args.twins={str(twins).lower()}",
            f"--data.init_args.first_stage.checkpoint={first_stage}", *data, *source_args]


@pytest.mark.slow
@pytest.mark.parametrize("layout", [caption_table, karpathy])
def test_fit_on_own_data_then_load_and_rerank_a_run(layout, tmp_path, monkeypatch):
    monkeypatch.setenv("MMRERANK_CACHE", str(tmp_path / "cache"))
    source, source_args = layout(tmp_path)
    with pytest.raises(ValueError, match=r"has no near-duplicate twins.*--data.twins=false"):
        main(fit_args(tmp_path, source, source_args, twins=True))
    assert not (tmp_path / "cache").exists()  # refused before mining hard negatives
    # 8 training captions, batches of 4: the config's val_check_interval of 500 becomes 2
    with pytest.warns(UserWarning, match="val_check_interval=500 is more than the 2 training batches"):
        main(fit_args(tmp_path, source, source_args))

    reranker = load_reranker(tmp_path / "model", device="cpu")
    assert isinstance(reranker, EDJEReranker)
    if source == "CaptionTable":
        val = CaptionTable(str(tmp_path / "mine.parquet"), split="val").load()
    else:
        val = Karpathy(str(tmp_path / "dataset_mine.json"), str(tmp_path), split="val").load()
    task = val.task("t2i")
    assert sorted(task.corpus.ids) == ["blue1", "orange1", "purple1", "yellow1"]  # file names, not row numbers
    rng = random.Random(0)
    lines = []
    for q in rng.sample(task.queries.ids, len(task.queries.ids)):
        lines += [f"{q} Q0 {d} {r + 1} {4 - r} mine\n" for r, d in enumerate(rng.sample(task.corpus.ids, 4))]
    (tmp_path / "run.trec").write_text("".join(lines))
    run = Run.read_trec(tmp_path / "run.trec", task=task)
    out = reranker.rerank(run, task, rerank_depth=4, progress=False).to_dict()
    assert set(out) == set(task.queries.ids)
    for q, ranked in out.items():
        text = task.queries[task.queries.ids.index(q)]
        pictures = [task.corpus[task.corpus.ids.index(d)] for d in ranked]
        expected = reranker.score([text] * len(pictures), pictures)
        torch.testing.assert_close(torch.tensor(list(ranked.values())), expected, atol=1e-4, rtol=1e-4)
        assert list(ranked.values()) == sorted(ranked.values(), reverse=True)

    # the same folder through the command, over the user's files (every split of them: the run's ids pick)
    if source == "CaptionTable":
        queries = corpus = tmp_path / "mine.parquet"
    else:  # a Karpathy file is no command input: its captions as a TSV, its images as the folder they are in
        queries, corpus = tmp_path / "captions.tsv", tmp_path
        queries.write_text("".join(f"{i}\t{t}\n" for i, t in zip(task.queries.ids, task.queries)))
    main(["rerank", f"--run={tmp_path / 'run.trec'}", f"--queries={queries}", f"--corpus={corpus}",
          f"--reranker={tmp_path / 'model'}", "--device=cpu", "--rerank_depth=4", f"--output={tmp_path / 'cli.trec'}",
          "--progress=false"])
    cli = Run.read_trec(tmp_path / "cli.trec").to_dict()
    assert list(cli) == list(Run.read_trec(tmp_path / "run.trec").query_ids)  # the run file's order
    for q, ranked in out.items():
        assert list(cli[q]) == list(ranked)
        torch.testing.assert_close(torch.tensor(list(cli[q].values())), torch.tensor(list(ranked.values())),
                                   atol=1e-4, rtol=1e-4)
