"""Every path a user names and every input file of a benchmark is checked before anything is rendered, trained or
written: the error names the argument, the path and the fix."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmrerank.cli import main
from mmrerank.core.io import looks_local
from mmrerank.retrieval.first_stage import FirstStage


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMRERANK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def benchmark(tmp_path, *args: str) -> None:
    main(["benchmark", "--config", "benchmark/first_stage.yaml", "--first_stage.train_steps=1",
          "--first_stage.batch_size=8", f"--output_dir={tmp_path / 'out'}", "--progress=false", *args])


def test_hub_ids_and_local_paths_are_told_apart():
    for hub in ("bert-base-uncased", "lightonai/MonoQwen2-VL-v0.1", "org/name"):
        assert not looks_local(hub)
    for local in ("/data/model", "./model", "../m", "~/m", "a/b/c", "model.ckpt", "weights.safetensors", "a\\b"):
        assert looks_local(local)


def test_a_mistyped_first_stage_checkpoint_is_refused_and_nothing_written(cache, tmp_path, capsys):
    typo = tmp_path / "models" / "frist_stage"
    with pytest.raises(SystemExit) as stop:
        benchmark(tmp_path, f"--first_stage.checkpoint={typo}")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "first_stage.checkpoint" in err and str(typo) in err and "save_to" in err
    assert not typo.exists() and not typo.parent.exists() and not cache.exists()
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="first_stage.checkpoint"):
        FirstStage(checkpoint=str(typo))


@pytest.mark.parametrize("spec, key", [
    (["--image_text.rerankers+=EDJERows", "--image_text.rerankers.model={missing}"], "EDJERows.model"),
    (["--image_text.rerankers+=MLLMRows", "--image_text.rerankers.model={missing}",
      "--image_text.rerankers.directions=[t2i]"], "MLLMRows.model"),
    (["--image_text.rerankers+=MLLMRows", "--image_text.rerankers.base_model={missing}",
      "--image_text.rerankers.directions=[t2i]"], "MLLMRows.base_model"),
    (["--image_text.rerankers+=MLLMRows", "--image_text.rerankers.base_model={missing}/base",
      "--image_text.rerankers.adapter={missing}", "--image_text.rerankers.directions=[t2i]"], "MLLMRows.base_model"),
])
def test_missing_model_paths_are_refused_before_training(spec, key, cache, tmp_path):
    missing = str(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match=key):
        benchmark(tmp_path, *(s.format(missing=missing) for s in spec))
    assert not cache.exists() and not (tmp_path / "nothing").exists()


def test_missing_mmdocir_files_are_refused_before_any_model_is_trained(cache, tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=r"pages.dataset.init_args.annotations: no file at .*MMDocIR_annotations.jsonl"):
        benchmark(tmp_path, "--pages.dataset=MMDocIR",
                  f"--pages.dataset.annotations={tmp_path / 'MMDocIR_annotations.jsonl'}",
                  f"--pages.dataset.pages_parquet={tmp_path / 'MMDocIR_pages.parquet'}")
    assert not cache.exists()  # no first stage trained, no page rendered


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(out, format="PNG")
    return out.getvalue()


def table(path, images: list[bytes]) -> str:
    pq.write_table(pa.table({"image": [{"bytes": b, "path": None} for b in images],
                             "captions": [["a red square"] for _ in images]}), path)
    return str(path)


@pytest.mark.parametrize("images, error, says", [
    ([png(), b"not an image"], OSError, "skip_corrupt=true"),
    ([], ValueError, "has no images"),
])
def test_bad_caption_tables_are_refused_before_any_model_is_trained(images, error, says, cache, tmp_path):
    path = table(tmp_path / "captions.parquet", images)
    with pytest.raises(error, match=says) as err:
        benchmark(tmp_path, "--image_text.dataset=CaptionTable", f"--image_text.dataset.path={path}")
    assert "image_text.dataset" in str(err.value) and not cache.exists()


def test_a_missing_dataset_path_is_refused_before_any_model_is_trained(cache, tmp_path):
    with pytest.raises(FileNotFoundError, match="image_text.dataset.init_args.path"):
        benchmark(tmp_path, "--image_text.dataset=CaptionTable", f"--image_text.dataset.path={tmp_path / 'no.parquet'}")
    assert not cache.exists()


def test_an_unknown_class_path_lists_the_known_names(cache, tmp_path, capsys):
    with pytest.raises(SystemExit):
        benchmark(tmp_path, '--image_text.rerankers=[{"class_path": "EDJERowz"}]')
    err = capsys.readouterr().err
    assert "EDJERows" in err and "MLLMRows" in err and "CaptionTable" in err
