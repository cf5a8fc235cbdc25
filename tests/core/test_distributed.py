"""Evaluation across two processes (gloo) gives the same embeddings, runs and metrics as one process."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmrerank.core import distributed
from mmrerank.datasets.synthetic import SyntheticConfig, load_synthetic
from mmrerank.evaluation import Report, evaluate_rows
from mmrerank.rerankers.base import Reranker
from mmrerank.retrieval.clip import CLIPEncoder
from mmrerank.retrieval.index import retrieve

pytestmark = pytest.mark.slow  # end to end: several processes


class FirstCharReranker(Reranker):
    """A deterministic, content-based score (the caption's first letters), so ranks must agree exactly."""

    def score(self, queries, candidates):
        return torch.tensor([float(sum(map(ord, c[:3]))) for c in candidates])


class PairReranker(Reranker):
    """A deterministic score of the query and the candidate together, so a rank that scored its queries' candidates
    against other queries (a shard's rows taken for the task's rows) would rank them differently."""

    def score(self, queries, candidates):
        return torch.tensor([float((key(q) * 31 + key(c)) % 97) for q, c in zip(queries, candidates)])


def key(item) -> int:
    return sum(map(ord, item)) if isinstance(item, str) else int(np.asarray(item, dtype=np.int64).sum())


def evaluate_once(config: SyntheticConfig) -> dict:
    torch.manual_seed(0)
    encoder = CLIPEncoder("mmrerank-tiny-vit")
    data = load_synthetic("test", config, progress=False)
    image_emb = encoder.encode(data.images, 8, progress=False)  # 8 per batch: several batches per rank
    text_emb = encoder.encode(data.captions, 32, progress=False)
    report = Report("ddp")
    setups = (("t2i", text_emb, image_emb, 10, {"pair": PairReranker()}),
              ("i2t", image_emb, text_emb, 12, {"chars": FirstCharReranker(), "pair": PairReranker()}))
    for direction, queries, corpus, depth, rerankers in setups:
        task = data.task(direction)
        run = retrieve(queries, corpus, task.queries.ids, task.corpus.ids, depth)
        evaluate_rows(report, task, run, rerankers, 6, ["Success@1", "nDCG@10", "AP@12"], progress=False)
    return {"rows": report.rows, "image_emb": image_emb, "text_emb": text_emb}


def _worker(rank: int, port: int, config: SyntheticConfig, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        assert distributed.world() == (rank, 2)
        torch.save(evaluate_once(config), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_equal_one(tiny_config, tmp_path):
    load_synthetic("test", tiny_config, progress=False)  # generate once, before the workers race for it
    single = evaluate_once(tiny_config)
    mp.spawn(_worker, args=(free_port(), tiny_config, str(tmp_path / "rank")), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank.{rank}", weights_only=True)
        assert torch.allclose(got["image_emb"], single["image_emb"], atol=1e-5)
        assert torch.allclose(got["text_emb"], single["text_emb"], atol=1e-5)
        assert got["rows"].keys() == single["rows"].keys()
        for system, row in single["rows"].items():
            for name, value in row.items():
                assert abs(got["rows"][system][name] - value) < 1e-6, (system, name)


def test_shard_and_gather_round_trip():
    assert distributed.shard(list(range(5))) == list(range(5))
    parts = [torch.full((2, 3), float(i)) for i in range(4)]
    assert torch.equal(distributed.gather_shards(parts), torch.cat(parts))
    assert distributed.block(5) == slice(0, 5) and torch.equal(distributed.gather_blocks(parts[1]), parts[1])
