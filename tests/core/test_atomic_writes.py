"""Atomic writes: file modes follow the umask, data is fsynced before the rename, folders are swapped in whole
(an interrupted save leaves the old folder intact), and a half-built tiny VLM folder is rebuilt."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmrerank.core.io import atomic_folder, atomic_path, atomic_write_json, atomic_write_text, generate_folder_once
from mmrerank.rerankers.edje import EDJE, EDJEConfig, build_wordpiece_tokenizer
from mmrerank.rerankers.mllm import MLLMReranker
from mmrerank.rerankers.mllm import tiny as tiny_module
from mmrerank.rerankers.mllm.module import MLLMRerankerModule, MLLMSettings, TinyVLM
from mmrerank.rerankers.mllm.tiny import TINY_MARKER, build_tiny_vlm, ensure_tiny_vlm


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _siblings(folder: Path) -> list[str]:
    """Hidden leftovers (temporary or backup folders) beside `folder`."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class Crash(RuntimeError):
    pass


def _crash(*args, **kwargs):
    raise Crash("simulated crash in the middle of a save")


# --- files -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_file_mode_follows_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "hello")
    with open(tmp_path / "plain.txt", "w") as f:  # what a plain open gives, the independent expectation
        f.write("hello")
    assert _mode(tmp_path / "a.txt") == expected == _mode(tmp_path / "plain.txt")
    atomic_write_json(tmp_path / "a.txt", {"again": 1})  # replacing keeps to the umask too
    assert _mode(tmp_path / "a.txt") == expected


def test_atomic_path_fsyncs_file_before_rename_and_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"data")
    [rename] = [i for i, e in enumerate(events) if e[0] == "replace"]
    assert events[rename][2] == str(target)
    tmp_name = events[rename][1]
    assert ("fsync", tmp_name) in events[:rename]  # the data is on disk before the rename publishes it
    assert ("fsync", str(tmp_path)) in events[rename + 1:]  # and the rename itself after
    assert target.read_bytes() == b"data"


def test_atomic_path_error_keeps_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(Crash):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            _crash()
    assert target.read_text() == "old" and _siblings(target) == []


# --- folders ---------------------------------------------------------------------------------------------------------

def test_atomic_folder_replaces_whole_and_keeps_old_on_error(tmp_path, umask):
    umask(0o022)
    final = tmp_path / "model"
    final.mkdir()
    (final / "stale.txt").write_text("old model's file")
    (final / "weights").write_text("old")
    with pytest.raises(Crash):
        with atomic_folder(final) as tmp:
            (tmp / "weights").write_text("new")
            _crash()
    assert (final / "weights").read_text() == "old" and (final / "stale.txt").exists()
    assert _siblings(final) == []
    with atomic_folder(final) as tmp:
        (tmp / "weights").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["weights"]  # nothing of the old folder survives
    assert (final / "weights").read_text() == "new"
    assert _mode(final) == 0o755 and _siblings(final) == []


def test_atomic_folder_refuses_to_replace_a_file(tmp_path):
    (tmp_path / "model").write_text("a file")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        with atomic_folder(tmp_path / "model") as tmp:
            (tmp / "x").write_text("x")
    assert (tmp_path / "model").read_text() == "a file" and _siblings(tmp_path / "model") == []


def test_generate_folder_once_replaces_a_half_written_folder(tmp_path):
    final = tmp_path / "split"
    final.mkdir()
    (final / "images.npy").write_text("half")  # written by something else, without the marker

    def generate(folder: Path) -> None:
        (folder / "images.npy").write_text("whole")
        (folder / "done.json").write_text("{}")

    assert generate_folder_once(final, "done.json", generate) == final
    assert (final / "images.npy").read_text() == "whole" and (final / "done.json").exists()
    assert generate_folder_once(final, "done.json", _crash) == final  # complete: not generated again


# --- EDJE ------------------------------------------------------------------------------------------------------------

def _edje(seed: int) -> EDJE:
    torch.manual_seed(seed)
    tokenizer = build_wordpiece_tokenizer(["a red circle left of a blue square", "a green star above a box"] * 3,
                                          vocab_size=120)
    config = EDJEConfig(vision="open_clip:mmrerank-tiny-resnet", patch_dim=24, num_patches=9, num_image_tokens=4,
                        adapter_heads=2, adapter_mlp_ratio=2,
                        joint={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                               "intermediate_size": 64}, max_text_len=12)
    return EDJE(config, tokenizer).eval()


def test_interrupted_edje_reexport_keeps_the_old_model(tmp_path, monkeypatch):
    patches = torch.randn(2, 9, 24, generator=torch.Generator().manual_seed(0))
    old, new = _edje(0), _edje(1)
    folder = old.save_pretrained(tmp_path / "edje")
    (folder / "tokens" / "synthetic-test").mkdir(parents=True)  # the old model's token store
    before = _digests(folder)
    with torch.no_grad():
        expected = old.compress(patches)
        assert not torch.allclose(new.compress(patches), expected)
    # crash after model.safetensors is written: the old code had then replaced the weights, not the tokenizer
    monkeypatch.setattr(type(new.tokenizer), "save_pretrained", _crash)
    with pytest.raises(Crash):
        new.save_pretrained(folder)
    assert _digests(folder) == before and (folder / "tokens" / "synthetic-test").is_dir()
    with torch.no_grad():
        torch.testing.assert_close(EDJE.from_pretrained(folder).compress(patches), expected)
    assert _siblings(folder) == []
    monkeypatch.undo()
    new.save_pretrained(folder)  # a finished re-export: the new model, and the old token stores are gone
    assert not (folder / "tokens").exists()
    with torch.no_grad():
        torch.testing.assert_close(EDJE.from_pretrained(folder).compress(patches), new.compress(patches))


def test_edje_save_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        _edje(0).save_pretrained(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# --- the tiny VLM and MLLM saves -------------------------------------------------------------------------------------

QUERIES = ["red cat", "blue tower"]


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (60, 70), (200, 30, 30)), Image.new("RGB", (70, 60), (30, 30, 200))]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def _half_built(tiny: Path, where: Path) -> Path:
    """What the old build left when killed between the model's save and the processor's: model files only."""
    where.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(tiny / name, where / name)
    return where


def test_a_half_built_tiny_folder_is_rebuilt(tiny, tmp_path):
    folder = _half_built(tiny, tmp_path / "tiny")
    # the old code took the folder as built, then failed
    module = MLLMRerankerModule(str(folder), tiny=TinyVLM(build=True))
    assert (folder / TINY_MARKER).is_file()
    fresh = MLLMReranker(tiny, device="cpu")
    torch.testing.assert_close(module.reranker.score(QUERIES, _images()), fresh.score(QUERIES, _images()))


def test_a_whole_tiny_folder_is_reused_not_rebuilt(tiny, tmp_path, monkeypatch):
    legacy = shutil.copytree(tiny, tmp_path / "legacy")
    (legacy / TINY_MARKER).unlink()  # built before the marker existed: whole, so kept as it is
    monkeypatch.setattr(tiny_module, "_write_tiny", _crash)
    assert ensure_tiny_vlm(legacy) == legacy and ensure_tiny_vlm(tiny) == tiny


def test_tiny_build_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for build in (build_tiny_vlm, ensure_tiny_vlm):
        with pytest.raises(FileExistsError, match="notes.txt"):
            build(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_interrupted_tiny_rebuild_keeps_the_old_folder(tiny, tmp_path, monkeypatch):
    from transformers import Qwen2VLProcessor

    folder = shutil.copytree(tiny, tmp_path / "tiny")
    before = _digests(folder)
    monkeypatch.setattr(Qwen2VLProcessor, "save_pretrained", _crash)  # after the model's weights are written
    with pytest.raises(Crash):
        build_tiny_vlm(folder, seed=1)
    assert _digests(folder) == before and _siblings(folder) == []
    assert MLLMReranker(folder, device="cpu").score(QUERIES, _images()).isfinite().all()


def test_interrupted_save_pretrained_keeps_the_previous_save(tiny, tmp_path, monkeypatch):
    module = MLLMRerankerModule(str(tiny), MLLMSettings(head="mlp"))
    saved = module.save_pretrained(tmp_path / "saved")
    expected = MLLMReranker.from_pretrained(saved, device="cpu").score(QUERIES, _images())
    before = _digests(saved)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1)
    monkeypatch.setattr(type(module.reranker.processor), "save_pretrained", _crash)
    with pytest.raises(Crash):
        module.save_pretrained(saved)
    assert _digests(saved) == before and _siblings(saved) == []
    again = MLLMReranker.from_pretrained(saved, device="cpu")
    torch.testing.assert_close(again.score(QUERIES, _images()), expected)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="no saved reranker"):
        module.save_pretrained(tmp_path / "other")
