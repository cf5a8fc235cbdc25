"""Cached models are verified on load (checksums written with them), a killed writer's temporary folders are swept,
one process builds a cache entry while a second waits and reuses it, and a full disk is named (and, where the
size is known, found before training)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from mmrerank import fitting
from mmrerank.core import io
from mmrerank.core.io import CHECKSUMS, atomic_write_text, damaged_files, generate_folder_once
from mmrerank.rerankers.edje.benchmark import EDJERows
from mmrerank.rerankers.rows import FitRecipe
from mmrerank.retrieval.first_stage import FirstStage

ROOT = Path(__file__).resolve().parents[2]


def flip_mantissa_byte(path: Path) -> None:
    """XOR the lowest byte of the last float32 (little-endian: its lowest mantissa bits): a value barely changed,
    still finite, which nothing but a checksum notices."""
    data = bytearray(path.read_bytes())
    data[-4] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def tiny_stage(tiny_config, folder: Path, **kwargs) -> FirstStage:
    return FirstStage(save_to=str(folder), train_steps=1, batch_size=8, synthetic=tiny_config, **kwargs)


@pytest.mark.parametrize("damage", [flip_mantissa_byte, truncate])
def test_a_damaged_first_stage_is_trained_again_with_a_warning_naming_it(damage, tiny_config, tmp_path):
    folder = tmp_path / "fs"
    tiny_stage(tiny_config, folder).build(progress=False)
    assert damaged_files(folder) == []
    weights = folder / "model.safetensors"
    original = weights.read_bytes()
    damage(weights)
    assert damaged_files(folder) == ["model.safetensors"]
    with pytest.warns(UserWarning, match=f"{folder}.*model.safetensors.*training it again"):
        tiny_stage(tiny_config, folder).build(progress=False)
    assert damaged_files(folder) == [] and weights.read_bytes() == original  # seeded: the same weights again
    # named by the user as a checkpoint, a damaged folder is refused, not replaced
    damage(weights)
    with pytest.raises(ValueError, match=r"first_stage.checkpoint .*model.safetensors differ"):
        FirstStage(checkpoint=str(folder)).build(progress=False)


class FakeCLI:
    """Stands in for `MMRerankCLI` in `fitting.fit`: writes a small model into the export folder it is given."""

    calls = 0

    def __init__(self, args: list[str], announce_saved: bool = True) -> None:
        type(self).calls += 1
        flags = ("--model.init_args.export_dir=", "--model.init_args.training.export_dir=")
        (export,) = [a.split("=", 1)[1] for a in args if a.startswith(flags)]
        Path(export).mkdir(parents=True)
        import torch

        save_file({"w": torch.arange(16, dtype=torch.float32)}, str(Path(export) / "model.safetensors"))
        (Path(export) / "config.json").write_text("{}")


@pytest.mark.parametrize("damage", [flip_mantissa_byte, truncate])
def test_a_damaged_trained_reranker_is_trained_again_with_a_warning(damage, tmp_path, monkeypatch):
    monkeypatch.setenv("MMRERANK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fitting, "MMRerankCLI", FakeCLI)
    FakeCLI.calls = 0
    config = tmp_path / "edje.yaml"
    config.write_text("trainer: {max_steps: 5}\n")
    stage = FirstStage()

    def spec():
        return EDJERows(fit=FitRecipe(str(config)))

    fitting.train_missing([spec()], stage, progress=False)
    fitting.train_missing([spec()], stage, progress=False)
    assert FakeCLI.calls == 1  # whole: reused
    (folder,) = (p for p in (tmp_path / "cache" / "trained").iterdir() if not p.name.startswith("."))
    assert (folder / CHECKSUMS).is_file()
    damage(folder / "model" / "model.safetensors")
    with pytest.warns(UserWarning, match=f"{folder}.*model.safetensors.*training it again"):
        fitting.train_missing([spec()], stage, progress=False)
    assert FakeCLI.calls == 2 and damaged_files(folder / "model", folder / CHECKSUMS) == []
    assert load_file(str(folder / "model" / "model.safetensors"))["w"].sum() == 120


def test_a_trained_recipe_is_announced_at_its_final_folder_not_the_temporary_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MMRERANK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fitting, "MMRerankCLI", FakeCLI)
    config = tmp_path / "edje.yaml"
    config.write_text("trainer: {max_steps: 5}\n")
    spec = EDJERows(fit=FitRecipe(str(config)))
    fitting.train_missing([spec], FirstStage(), progress=True)
    (folder,) = (p for p in (tmp_path / "cache" / "trained").iterdir() if not p.name.startswith("."))
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("saved:")]
    assert said == [f"saved: {folder / 'model'}"]  # the folder that stays, once, after the swap
    assert spec.model == str(folder / "model")


def python(code: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **env})


GENERATE = """
    import sys, time
    from pathlib import Path
    from mmrerank.core.io import generate_folder_once

    def generate(tmp):
        with open("{log}", "a") as f:
            f.write("x")
        (tmp / "part").write_text("half")
        print("generating", flush=True)
        deadline = time.monotonic() + 60
        while not Path("{release}").exists() and time.monotonic() < deadline:  # until the test lets it finish
            time.sleep(0.05)
        (tmp / "done").write_text("whole")

    generate_folder_once(Path("{final}"), "done", generate)
    print("finished", flush=True)
"""


def test_sigkilled_generators_leftovers_are_swept_on_the_next_run(tmp_path):
    final, log = tmp_path / "entry", tmp_path / "log"
    killed = python(GENERATE.format(final=final, log=log, release=tmp_path / "never"))
    assert killed.stdout.readline().strip() == "generating"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (leftover,) = [p for p in tmp_path.iterdir() if p.name.startswith(".entry.")]
    assert (leftover / "part").is_file()
    # a live writer's folder (this process) is left alone
    alive = tmp_path / f".entry.{io._owner_tag()}.livelive"
    alive.mkdir()
    users = tmp_path / ".entry.bak"  # a name of the user's, however old, is not ours to remove
    users.write_text("mine")
    os.utime(users, (0, 0))
    generate_folder_once(final, "done", lambda tmp: (tmp / "done").write_text("whole"))
    assert not leftover.exists() and alive.is_dir() and users.is_file() and (final / "done").is_file()


def test_one_process_builds_a_cache_entry_the_other_waits_and_reuses_it(tmp_path):
    final, log = tmp_path / "entry", tmp_path / "log"
    release = tmp_path / "release"
    first = python(GENERATE.format(final=final, log=log, release=release))
    assert first.stdout.readline().strip() == "generating"
    second = python(GENERATE.format(final=final, log=log, release=release))
    waiting = second.stdout.readline()  # the second blocks on the lock while the first is still generating
    release.touch()
    out_second, out_first = waiting + second.communicate(timeout=60)[0], first.communicate(timeout=60)[0]
    assert first.returncode == second.returncode == 0, out_first + out_second
    assert log.read_text() == "x"  # generated once
    assert "waiting for pid" in out_second and "finished" in out_second and "generating" not in out_second


def test_a_full_disk_is_named_with_the_path(tmp_path, monkeypatch):
    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "report.md"
    with pytest.raises(OSError, match=f"No space left on device while writing {target}"):
        io.atomic_write(target, full)
    with pytest.raises(OSError, match=f"while writing {tmp_path / 'entry'}"):
        generate_folder_once(tmp_path / "entry", "done", full)
    assert [p.name for p in tmp_path.iterdir() if p.name != ".locks"] == []


def test_too_little_space_stops_the_first_stage_before_training(tiny_config, tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(io.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    monkeypatch.setattr("lightning.Trainer.fit", lambda *a, **k: pytest.fail("trained despite a full disk"))
    with pytest.raises(OSError, match=f"not enough space for the first stage at {tmp_path}"):
        tiny_stage(tiny_config, tmp_path / "fs").build(progress=False)
    assert not (tmp_path / "fs").exists()
    atomic_write_text(tmp_path / "small.txt", "fits")  # writes themselves are not refused
