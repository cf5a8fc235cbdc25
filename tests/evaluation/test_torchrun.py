"""`mmrerank precompute` and `mmrerank benchmark` under torchrun: two CPU ranks (gloo) write the token store and the
report one process writes, with each rank encoding its share and rank 0 alone training, writing and printing."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmrerank.cli import main
from mmrerank.core import distributed
from mmrerank.evaluation.report import Report
from mmrerank.rerankers.edje import EDJE, EDJEConfig, build_wordpiece_tokenizer
from mmrerank.retrieval.clip import CLIPEncoder
from mmrerank.retrieval.first_stage import FirstStage

pytestmark = pytest.mark.slow  # end to end: several processes

SHARD = 8  # 40 test images: 5 shards, 3 on rank 0 and 2 on rank 1


def torchrun_env(rank: int, size: int, port: int) -> dict[str, str]:
    """What `torchrun --nproc_per_node <size>` sets for a worker on one node."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "TORCHELASTIC_RUN_ID": "test"}
    for name, value in (("RANK", rank), ("LOCAL_RANK", rank), ("GROUP_RANK", 0), ("ROLE_RANK", rank),
                        ("WORLD_SIZE", size), ("LOCAL_WORLD_SIZE", size), ("GROUP_WORLD_SIZE", 1),
                        ("ROLE_WORLD_SIZE", size)):
        env[name] = str(value)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def edje_model(tmp_path_factory) -> Path:
    """A tiny untrained EDJE folder over a saved tiny first stage (weights in files: every process reads the same)."""
    root = tmp_path_factory.mktemp("edje")
    torch.manual_seed(0)
    CLIPEncoder("mmrerank-tiny-resnet").save_pretrained(root / "vision")
    tokenizer = build_wordpiece_tokenizer(["a red circle left of a blue square", "a green star above a box"] * 3,
                                          vocab_size=120)
    config = EDJEConfig(vision="first_stage:mmrerank-tiny-resnet", vision_checkpoint=str(root / "vision"),
                        patch_dim=512, num_patches=4, num_image_tokens=2, adapter_heads=2, adapter_mlp_ratio=2,
                        patch_positions=True, joint={"hidden_size": 16, "num_hidden_layers": 1,
                                                     "num_attention_heads": 2, "intermediate_size": 32},
                        max_text_len=8)
    EDJE(config, tokenizer).eval().save_pretrained(root / "model")
    return root / "model"


def commands(synthetic, model: Path, root: Path) -> list[list[str]]:
    """`precompute` (which renders the test split first), then `benchmark` (which trains the first stage)."""
    def data(prefix: str) -> list[str]:
        return [f"--{prefix}.synthetic.{k}={v}" for k, v in asdict(synthetic).items() if v is not None]

    precompute = ["precompute", f"--model={model}", f"--store={root / 'store'}", f"--shard_size={SHARD}",
                  "--batch_size=3", "--progress=false", "--dataset=Synthetic", *data("dataset.init_args")]
    benchmark = ["benchmark", "--config", "benchmark/first_stage.yaml", "--image_text.dataset=Synthetic",
                 *data("image_text.dataset.init_args"),
                 f"--first_stage.save_to={root / 'fs'}", "--first_stage.train_steps=2",
                 "--first_stage.batch_size=8", "--image_text.depth=20", "--image_text.rerank_depth=5",
                 "--image_text.rerankers+=EDJERows", f"--image_text.rerankers.model={model}",
                 "--image_text.rerankers.alpha=[1.0]", f"--image_text.rerankers.store={root / 'bench-store'}",
                 f"--image_text.rerankers.shard_size={SHARD}", f"--output_dir={root / 'report'}", "--progress=false"]
    return [precompute, benchmark]


def _worker(rank: int, size: int, port: int, argvs: list[list[str]], log: str) -> None:
    if size > 1:
        os.environ.update(torchrun_env(rank, size, port))
    torch.set_num_threads(1)  # the same kernels in every process, so that floats agree bit for bit
    calls = {"train": 0, "train alone": 0, "save": 0, "compressed": 0}

    def counting(name, method, count=lambda *args: 1):
        def wrapper(*args, **kwargs):
            calls[name] += count(*args)
            return method(*args, **kwargs)
        return wrapper

    FirstStage.train = counting("train", FirstStage.train)  # in this process
    distributed.in_fresh_process = counting("train alone", distributed.in_fresh_process)
    Report.save = counting("save", Report.save)
    EDJE.compress = counting("compressed", EDJE.compress, lambda model, patches: len(patches))
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        for argv in argvs:
            main(argv)
    calls["group left"] = dist.is_initialized()
    torch.save({**calls, "stdout": stdout.getvalue()}, f"{log}.{rank}")


def launch(size: int, synthetic, model: Path, root: Path) -> list[dict]:
    mp.spawn(_worker, args=(size, free_port(), commands(synthetic, model, root), str(root / "log")), nprocs=size,
             join=True)
    return [torch.load(root / f"log.{rank}", weights_only=True) for rank in range(size)]


def files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in ("tokens.bin", "ids.json", "header.json")}


def test_two_ranks_write_what_one_writes(tiny_config, edje_model, tmp_path):
    runs = {}
    for size in (1, 2):  # each its own synthetic data folder, so that each renders it (the data are the same)
        root = tmp_path / f"world{size}"
        synthetic = replace(tiny_config, root=str(root / "synthetic"))
        runs[size] = (root, launch(size, synthetic, edje_model, root))
    (one, [single]), (two, ranks) = runs[1], runs[2]

    # One process: everything on rank 0, as before.
    assert single["train"] == 1 and single["train alone"] == 0 and single["save"] == 1
    assert single["compressed"] == 2 * 40
    # Two: rank 0 alone trains (in a process of its own), writes and prints; each rank encodes its shards of both
    # stores (3 and 2 of 5).
    assert [r["train"] for r in ranks] == [0, 0] and [r["train alone"] for r in ranks] == [1, 0]
    assert [r["save"] for r in ranks] == [1, 0]
    assert [r["compressed"] for r in ranks] == [2 * 3 * SHARD, 2 * 2 * SHARD]
    assert "Wrote" in ranks[0]["stdout"] and "B per image" in ranks[0]["stdout"] and ranks[1]["stdout"] == ""
    assert not any(r["group left"] for r in [single, *ranks])  # each command destroys its process group

    for store in ("store", "bench-store"):
        assert files(two / store) == files(one / store), store
    assert (two / "fs" / "model.safetensors").read_bytes() == (one / "fs" / "model.safetensors").read_bytes()
    got, want = (json.loads((root / "report" / "report.json").read_text()) for root in (two, one))
    assert set(want["rows"]) == {"first stage", "edje", "edje + 1 x first stage"}
    assert got["rows"] == want["rows"] and got["curves"] == want["curves"]
