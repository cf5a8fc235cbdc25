"""SIGTERM (what a scheduler sends before SIGKILL) ends a command with status 143 after a clean stop: no cache entry,
no temporary folder and no report survive, so a rerun trusts nothing the stopped run left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def start(args: list[str], cache: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MMRERANK_CACHE": str(cache), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "mmrerank.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for_line(process: subprocess.Popen, text: str, timeout: float = 120) -> list[str]:
    """The lines printed up to the first one holding `text` (the training has started)."""
    seen, deadline = [], time.monotonic() + timeout
    for line in process.stdout:
        seen.append(line)
        if text in line:
            return seen
        assert time.monotonic() < deadline, "".join(seen)
    pytest.fail("exited before training: " + "".join(seen))


def synthetic_args(config, prefix: str) -> list[str]:
    return [f"{prefix}.root={config.root}", f"{prefix}.seed={config.seed}",
            f"{prefix}.train_images={config.train_images}", f"{prefix}.val_images={config.val_images}",
            f"{prefix}.test_images={config.test_images}"]


@pytest.mark.slow
def test_sigterm_during_first_stage_training_exits_143_and_leaves_nothing(tiny_config, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    process = start(["benchmark", "--config", "benchmark/first_stage.yaml", "--image_text.dataset=Synthetic",
                     *synthetic_args(tiny_config, "--image_text.dataset.synthetic"),
                     "--first_stage.train_steps=100000", "--first_stage.batch_size=8", f"--output_dir={out}"], cache)
    wait_for_line(process, "first stage: 100000 steps")
    time.sleep(1.0)  # inside the training loop
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    rest = process.communicate(timeout=60)[0]
    took = time.monotonic() - sent
    assert process.returncode == 143, rest
    assert took < 30
    assert not out.exists()  # no report
    first_stage = cache / "first_stage"
    left = [p for p in first_stage.rglob("*") if p.is_file() and p.parent.name != ".locks"] \
        if first_stage.exists() else []
    assert left == [], left  # no model a rerun would load, no half-written file (a lock file is no data)


@pytest.mark.slow
def test_sigterm_during_fit_exits_143_and_saves_no_checkpoint(tiny_config, tmp_path):
    data = "--data.init_args.config."
    process = start(["fit", "--config", "clip/synthetic.yaml", f"--trainer.default_root_dir={tmp_path / 'fit'}",
                     "--trainer.max_steps=100000", "--trainer.val_check_interval=1000",
                     "--trainer.check_val_every_n_epoch=null",
                     "--data.init_args.batch_size=8", f"{data}root={tiny_config.root}",
                     f"{data}seed={tiny_config.seed}", f"{data}train_images={tiny_config.train_images}",
                     f"{data}val_images={tiny_config.val_images}", f"{data}test_images={tiny_config.test_images}"],
                    tmp_path / "cache")
    wait_for_line(process, "CLIPModule: 100000 steps")
    time.sleep(1.0)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    rest = process.communicate(timeout=60)[0]
    assert process.returncode == 143 and time.monotonic() - sent < 30, rest
    assert list((tmp_path / "fit").rglob("*.ckpt")) == []
