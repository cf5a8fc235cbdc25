"""EDJE's patch-token cache is read a batch at a time: a fit never holds every image's patch tokens in memory.

The tokens live in part token stores on disk (`mmrerank.rerankers.edje.patches`); these tests check the reader
against the in-memory tensor, the split of the encoding between ranks, resumption and repair, the streamed
standardisation statistics, and a real fit whose every read is at most its batch's images.
"""

from __future__ import annotations

import pickle
import threading

import lightning as L
import numpy as np
import pytest
import torch

from mmrerank.datasets.sources import Synthetic
from mmrerank.rerankers.edje import EDJE, EDJEConfig, build_wordpiece_tokenizer
from mmrerank.rerankers.edje import patches as P
from mmrerank.rerankers.edje.data import EDJEDataModule
from mmrerank.rerankers.edje.module import EDJEModule, EDJETraining
from mmrerank.rerankers.edje.vision import VisionTokenSource
from mmrerank.rerankers.edje.writer import TokenStoreWriter
from mmrerank.retrieval.clip import CLIPEncoder
from mmrerank.retrieval.first_stage import FirstStage


def encode_patches(source, images, batch_size: int = 256) -> torch.Tensor:
    """`[N, P, D]` fp16 patch tokens of every image, in memory: the reference the on-disk cache is checked against
    (the naive path a fit does not take)."""
    rows = range(len(images))
    return torch.cat([source.encode([images[i] for i in rows[s:s + batch_size]]).half().cpu()
                      for s in range(0, len(images), batch_size)])

TINY_JOINT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMRERANK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def small_parts(monkeypatch):
    """Parts of 10 rows in shards of 4, so that a set of 23 rows spans 3 parts of 3, 3 and 1 shards."""
    monkeypatch.setattr(P, "PART_ROWS", 10)
    monkeypatch.setattr(P, "SHARD_ROWS", 4)


def reference(n: int = 23, p: int = 3, d: int = 5) -> torch.Tensor:
    torch.manual_seed(0)
    return (torch.randn(n, p, d) * 3).half()


def encoder(full: torch.Tensor, log: list[list[int]] | None = None):
    def encode(rows: torch.Tensor) -> torch.Tensor:
        if log is not None:
            log.append(rows.tolist())
        return full[rows].float()
    return encode


# --- the reader ------------------------------------------------------------------------------------------------------

def test_rows_read_from_disk_equal_the_tensor_across_parts(cache, small_parts):
    full = reference()
    tokens = P.cached_patch_tokens({"set": "toy"}, tuple(full.shape), encoder(full), progress=False)
    assert isinstance(tokens, P.PatchTokens) and tokens.shape == full.shape and len(tokens.paths) == 3
    rows = torch.tensor([3, 4, 5, 9, 10, 11, 0, 22, 22, 7, 19, 20])  # runs inside and across parts, repeats
    assert torch.equal(tokens[rows], full[rows]) and tokens[rows].dtype == torch.float16
    assert torch.equal(tokens[[1, 2]], full[[1, 2]]) and torch.equal(tokens[np.array([21])], full[[21]])
    assert torch.equal(tokens[5], full[5]) and torch.equal(tokens[:4096], full)  # slices clip like a tensor's
    assert torch.equal(tokens[2:20:3], full[2:20:3]) and tokens[30:].shape == (0, 3, 5)
    for bad in (torch.tensor([0, -1]), [23], 23):
        with pytest.raises(IndexError, match="outside"):
            tokens[bad]
    assert torch.equal(pickle.loads(pickle.dumps(tokens))[rows], full[rows])  # reopened by path


def test_a_cached_set_is_reused_and_never_answers_for_another_key(cache, small_parts):
    full, log = reference(), []
    P.cached_patch_tokens({"set": "toy"}, tuple(full.shape), encoder(full, log), progress=False)
    assert sorted(r for call in log for r in call) == list(range(23))
    log.clear()
    again = P.cached_patch_tokens({"set": "toy"}, tuple(full.shape), encoder(full, log), progress=False)
    assert log == [] and torch.equal(again[:], full)  # checked against its checksums, not encoded again
    other = P.cached_patch_tokens({"set": "other"}, tuple(full.shape), encoder(-full, log), progress=False)
    assert len(log) > 0 and torch.equal(other[:], -full)


def test_ranks_split_the_parts_and_wait_for_each_other(cache, small_parts):
    """Two ranks (threads with a barrier) each encode only their parts, then both read the whole set."""
    full, logs, out = reference(), {0: [], 1: []}, {}
    barrier = threading.Barrier(2)

    def rank(r: int) -> None:
        out[r] = P.cached_patch_tokens({"set": "toy"}, tuple(full.shape), encoder(full, logs[r]), rank=r, world=2,
                                       barrier=barrier.wait, progress=False)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = {r: sorted(x for call in logs[r] for x in call) for r in (0, 1)}
    assert rows[0] == list(range(0, 10)) + list(range(20, 23)) and rows[1] == list(range(10, 20))  # parts 0, 2 | 1
    for r in (0, 1):
        assert torch.equal(out[r][:], full)
    with pytest.raises(ValueError, match="barrier"):
        P.cached_patch_tokens({"set": "toy"}, tuple(full.shape), encoder(full), rank=0, world=2)


def test_an_interrupted_fill_resumes_with_its_missing_shards(cache, small_parts):
    full, log = reference(), []

    def dies_on_row_13(rows: torch.Tensor) -> torch.Tensor:
        if 13 in rows.tolist():
            raise KeyboardInterrupt  # killed while encoding part 1's first shard (rows 10-13)
        log.append(rows.tolist())
        return full[rows].float()

    with pytest.raises(KeyboardInterrupt):
        P.cached_patch_tokens({"set": "toy"}, tuple(full.shape), dies_on_row_13, progress=False)
    log.clear()
    tokens = P.cached_patch_tokens({"set": "toy"}, tuple(full.shape), encoder(full, log), progress=False)
    assert sorted(r for call in log for r in call) == list(range(10, 23)) and torch.equal(tokens[:], full)


def test_a_changed_shard_is_encoded_again(cache, small_parts):
    full, log = reference(), []
    tokens = P.cached_patch_tokens({"set": "toy"}, tuple(full.shape), encoder(full), progress=False)
    data = tokens.paths[1]  # part 1: rows 10-19; its shard 1 holds rows 14-17
    with open(data, "r+b") as f:
        f.seek(5 * 3 * 5 * 2)  # row 15
        f.write(b"\x00\x7c" * 15)  # +inf in float16
    with pytest.warns(UserWarning, match=r"shards \[1\] fail their crc32"):
        again = P.cached_patch_tokens({"set": "toy"}, tuple(full.shape), encoder(full, log), progress=False)
    assert log == [[14, 15, 16, 17]] and torch.equal(again[:], full)


def test_a_fit_waits_for_another_writer_of_the_same_part(cache, small_parts, monkeypatch):
    monkeypatch.setattr(P, "LOCK_POLL_S", 0.02)
    full, key, done = reference(), {"set": "toy"}, {}
    from mmrerank.core.io import key_digest

    root = cache / "patches" / key_digest(key)
    provenance = P._part_provenance(P._as_json(key), tuple(full.shape), 0, 10)
    holder = TokenStoreWriter(root / "part-00000", list(range(10)), 3, 5, shard_size=4, provenance=provenance)
    holder.write_shard(0, full[:4])
    waiter = threading.Thread(target=lambda: done.setdefault("tokens", P.cached_patch_tokens(
        key, tuple(full.shape), encoder(full), progress=False)))
    with pytest.warns(UserWarning, match="waiting for another writer"):
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive()  # it cannot finish while the lock is held
        holder.close()
        waiter.join()
    assert torch.equal(done["tokens"][:], full)


def test_random_weights_write_a_scratch_set_that_leaves_nothing_behind(cache, small_parts):
    full = reference()
    tokens = P.scratch_patch_tokens(tuple(full.shape), encoder(full), progress=False)
    assert torch.equal(tokens[:], full)
    assert list((cache / "patches" / "scratch").iterdir()) == []  # unlinked at once; the open files hold the data


# --- statistics ------------------------------------------------------------------------------------------------------

def test_streamed_statistics_equal_set_patch_statistics(cache, small_parts, monkeypatch):
    monkeypatch.setattr(P, "STATISTICS_ELEMENTS", 3 * 5 * 2)  # 2 images per read: 12 reads for 23 images
    full = (reference() * torch.linspace(0.1, 4, 5) + torch.linspace(-30, 30, 5)).half()  # big offsets
    tokens = P.cached_patch_tokens({"set": "toy"}, tuple(full.shape), encoder(full), progress=False)
    reads = []
    monkeypatch.setattr(P.PatchTokens, "read", _recording(P.PatchTokens.read, reads))
    model = tiny_edje(patches=3, width=5)
    for limit in (23, 7):
        mean, std = P.patch_statistics(tokens, limit=limit)
        model.set_patch_statistics(full[:limit])
        torch.testing.assert_close(mean, model.patch_mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(std, model.patch_std, rtol=1e-5, atol=1e-5)
    assert max(reads) == 2


def tiny_edje(patches: int, width: int) -> EDJE:
    tokenizer = build_wordpiece_tokenizer(["a red circle", "a blue square"], vocab_size=60)
    config = EDJEConfig(vision="open_clip:mmrerank-tiny-resnet", patch_dim=width, num_patches=patches,
                        num_image_tokens=2, adapter_heads=1, adapter_mlp_ratio=1, joint=TINY_JOINT, max_text_len=8)
    return EDJE(config, tokenizer)


def _recording(read, sizes: list[int]):
    def wrapped(self, rows):
        sizes.append(len(rows))
        return read(self, rows)
    return wrapped


# --- a fit -----------------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("weights", ["first stage", "random"])
def test_a_fit_reads_at_most_its_batch_and_scores_as_in_memory(weights, tiny_config, cache, tmp_path, monkeypatch):
    """A few training steps on the tiny synthetic set, every read of the patch tokens recorded: none holds all N
    images (encoding and writing go by shards, statistics by a few images, a step by its batch's unique images),
    and the tokens, statistics and losses equal those of the in-memory path (`encode_patches`) on the same rows."""
    monkeypatch.setattr(P, "SHARD_ROWS", 16)
    monkeypatch.setattr(P, "STATISTICS_ELEMENTS", 64 * 128 * 8)  # 8 images per read
    first_stage = tmp_path / "fs"
    CLIPEncoder("mmrerank-tiny-resnet").save_pretrained(first_stage)
    vision = {"vision": "first_stage:mmrerank-tiny-resnet", "vision_checkpoint": str(first_stage)} \
        if weights == "first stage" else {"vision": "open_clip:mmrerank-tiny-resnet"}
    reads, in_step, encoded = [], [], []  # sizes of every read; (batch's unique images, its reads) per step
    monkeypatch.setattr(P.PatchTokens, "read", _recording(P.PatchTokens.read, reads))
    encode = VisionTokenSource.encode
    monkeypatch.setattr(VisionTokenSource, "encode", lambda self, images: encoded.append(len(images)) or
                        encode(self, images))
    losses = EDJEModule._losses

    def step(self, batch):
        before = len(reads)
        out = losses(self, batch)
        in_step.append((batch["images"].unique().numel(), reads[before:]))
        del reads[before:]  # what is left in `reads` was read outside the steps
        return out

    monkeypatch.setattr(EDJEModule, "_losses", step)
    data = EDJEDataModule(train=Synthetic("train", tiny_config), val=Synthetic("val", tiny_config),
                          first_stage=FirstStage(checkpoint=str(first_stage)), n=3, hard=2, pool=4, mined=8,
                          batch_size=4)
    torch.manual_seed(0)
    module = EDJEModule(EDJEConfig(**vision, feature_index=2, num_image_tokens=4, joint=TINY_JOINT),
                        training=EDJETraining(vocab_size=200))
    trainer = L.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                        val_check_interval=2, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)

    n_train = len(data.splits["train"].images)
    assert n_train == 64 and all(isinstance(p, P.PatchTokens) for p in module.patches.values())
    assert len(in_step) >= 4 and all(sizes == [unique] for unique, sizes in in_step)  # one read of its images
    assert reads == [8] * 8 and max(encoded) <= 16 < n_train  # statistics, encoding: a few images at a time
    if weights == "random":
        assert list((cache / "patches" / "scratch").iterdir()) == []

    # the in-memory path on the same rows: equal tokens, statistics and losses
    source = module._vision_source()
    memory = {name: encode_patches(source, images) for name, images in data.edje_inputs().images.items()}
    for name, tokens in module.patches.items():
        assert torch.equal(tokens[torch.arange(len(tokens))], memory[name])
    stats = module.model.patch_mean.clone(), module.model.patch_std.clone()
    module.model.set_patch_statistics(memory["train"][:4096])
    torch.testing.assert_close(stats, (module.model.patch_mean, module.model.patch_std), rtol=1e-5, atol=1e-5)
    batch = next(iter(data.train_dataloader()))
    module.eval()
    with torch.no_grad():
        from_disk = losses(module, batch)
        module.patches = memory
        in_memory = losses(module, batch)
    for name in ("itm", "accuracy", "loss"):
        assert torch.equal(from_disk[name], in_memory[name])
