"""Token-store reliability: one writer at a time, provenance (no stale reuse), no overflow, checksums, row bounds."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
import torch

from mmrerank.core.items import ImageArray, ImageFiles
from mmrerank.rerankers.edje import EDJE, EDJEConfig, build_wordpiece_tokenizer, precompute_images
from mmrerank.rerankers.edje.provenance import images_digest, state_digest
from mmrerank.rerankers.edje.store import (
    CorruptTokenStoreError,
    StaleTokenStoreError,
    TokenStore,
    TokenStoreError,
    TokenStoreLockedError,
)
from mmrerank.rerankers.edje.writer import TokenStoreWriter, write_token_store
from mmrerank.retrieval.negatives import file_stamp


def rows_of(indices: torch.Tensor, m: int = 3, d: int = 5) -> torch.Tensor:
    """A deterministic `encode_fn`: row r is 4 r + (0, 0.25, 0.5, ...) (exact in fp16 for small r)."""
    return indices.float().view(-1, 1, 1) * 4 + torch.arange(m * d, dtype=torch.float32).view(m, d) * 0.25


# --- one writer at a time --------------------------------------------------------------------------------------------

# A writer in its own process: resumes (or creates) the store, writes shard 0, says "locked", waits for a line on
# stdin, then writes the rest and finalises.
HOLDER = textwrap.dedent("""
    import sys, torch
    from mmrerank.rerankers.edje.writer import TokenStoreWriter
    def rows(i):
        return (i.float().view(-1, 1, 1) * 4 + torch.arange(15.).view(3, 5) * 0.25).half()
    w = TokenStoreWriter(sys.argv[1], list(range(8)), m=3, d=5, shard_size=4)
    w.write_shard(0, rows(torch.arange(4)))
    print("locked", flush=True)
    sys.stdin.readline()
    w.write_shard(1, rows(torch.arange(4, 8)))
    w.finalize()
    print("done", flush=True)
""")

# A second writer in its own process that starts afresh (overwrite=True); prints what happened.
INTRUDER = textwrap.dedent("""
    import sys
    from mmrerank.rerankers.edje.store import TokenStoreLockedError
    from mmrerank.rerankers.edje.writer import TokenStoreWriter
    try:
        TokenStoreWriter(sys.argv[1], list(range(8)), m=3, d=5, shard_size=4, overwrite=True).close()
    except TokenStoreLockedError as e:
        print("refused:", e)
    else:
        print("opened")
""")


def start_holder(store) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(store)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "locked":
        proc.kill()
        raise AssertionError(f"holder did not start: {line!r} {proc.stderr.read()}")
    return proc


def test_a_second_writer_is_refused_while_the_first_holds_the_store(tmp_path):
    store = tmp_path / "s"
    with TokenStoreWriter(store, list(range(8)), m=3, d=5, shard_size=4):
        pass  # an unfinished store, so that the holder resumes it
    holder = start_holder(store)
    try:
        intruder = subprocess.run([sys.executable, "-c", INTRUDER, str(store)], capture_output=True, text=True)
        assert intruder.stdout.startswith("refused:"), intruder.stdout + intruder.stderr
        assert str(store) in intruder.stdout and f"pid {holder.pid}" in intruder.stdout
        with pytest.raises(TokenStoreLockedError, match=f"pid {holder.pid}"):  # and from this process too
            TokenStoreWriter(store, list(range(8)), m=3, d=5, shard_size=4, overwrite=True)
        out, err = holder.communicate("go\n", timeout=120)
    finally:
        holder.kill()
    assert holder.returncode == 0 and out.strip() == "done", err
    # The holder's rows survived the attempt: the store is complete, intact and holds what it wrote.
    finished = TokenStore(store)
    finished.verify()
    assert torch.equal(finished.tensor, rows_of(torch.arange(8)).half())
    # Released on close: a new writer gets the store.
    TokenStoreWriter(store, list(range(8)), m=3, d=5, shard_size=4, overwrite=True).close()


def test_a_killed_writer_frees_the_lock(tmp_path):
    store = tmp_path / "s"
    holder = start_holder(store)
    with pytest.raises(TokenStoreLockedError, match=str(store)):
        TokenStoreWriter(store, list(range(8)), m=3, d=5, shard_size=4)
    holder.kill()  # SIGKILL: no cleanup in the holder; the kernel drops its lock
    holder.wait(timeout=60)
    seen: list[int] = []

    def recording(indices):
        seen.extend(indices.tolist())
        return rows_of(indices)

    resumed = write_token_store(store, list(range(8)), recording, m=3, d=5, shard_size=4, progress=False)
    assert seen == [4, 5, 6, 7]  # the killed writer's shard 0 was kept
    assert torch.equal(resumed.tensor, rows_of(torch.arange(8)).half())


def test_two_writer_objects_conflict_and_a_refused_resume_keeps_no_lock(tmp_path):
    store = tmp_path / "s"
    first = TokenStoreWriter(store, ["a", "b"], m=2, d=3)
    with pytest.raises(TokenStoreLockedError, match=f"pid {os.getpid()}"):
        TokenStoreWriter(store, ["a", "b"], m=2, d=3)
    first.close()
    with pytest.raises(StaleTokenStoreError, match="shape"):
        TokenStoreWriter(store, ["a", "b"], m=2, d=4)
    TokenStoreWriter(store, ["a", "b"], m=2, d=3).close()  # the refused one let go of the lock


# --- provenance ------------------------------------------------------------------------------------------------------

def test_precompute_with_other_provenance_is_refused_or_rebuilt(tmp_path):
    store, ids = tmp_path / "s", [f"x{i}" for i in range(6)]
    calls: list[list[int]] = []

    def recording(indices):
        calls.append(indices.tolist())
        return rows_of(indices)

    write_token_store(store, ids, rows_of, m=3, d=5, shard_size=4, progress=False,
                      provenance={"model": "a", "images": "i"})
    reused = write_token_store(store, ids, recording, m=3, d=5, shard_size=4, progress=False,
                        provenance={"model": "a", "images": "i"})
    assert calls == [] and reused.provenance == {"model": "a", "images": "i"}
    with pytest.raises(StaleTokenStoreError, match=r"provenance\.model: has 'a', asked for 'b'.*overwrite=True"):
        write_token_store(store, ids, recording, m=3, d=5, shard_size=4, progress=False,
                   provenance={"model": "b", "images": "i"})
    assert calls == []

    def other(indices):
        return rows_of(indices) + 1

    with pytest.warns(UserWarning, match="rebuilding token store"):
        rebuilt = write_token_store(store, ids, other, m=3, d=5, shard_size=4, progress=False,
                             provenance={"model": "b", "images": "i"}, on_mismatch="rebuild")
    assert torch.equal(rebuilt.tensor, (rows_of(torch.arange(6)) + 1).half())
    assert TokenStore(store).provenance == {"model": "b", "images": "i"}


def test_a_format_1_store_is_readable_but_stale(tmp_path):
    store, ids = tmp_path / "s", list(range(4))
    write_token_store(store, ids, rows_of, m=3, d=5, progress=False)
    header = json.loads((store / "header.json").read_text())
    header["version"] = 1
    del header["shard_crc32"], header["provenance"]  # what the format-1 writer wrote
    (store / "header.json").write_text(json.dumps(header))
    old = TokenStore(store)
    assert torch.equal(old.tensor, rows_of(torch.arange(4)).half()) and old.provenance is None
    with pytest.raises(TokenStoreError, match="version 1 has no checksums"):
        old.verify()
    with pytest.raises(StaleTokenStoreError, match="format version 1.*overwrite=True"):
        write_token_store(store, ids, rows_of, m=3, d=5, progress=False)
    with pytest.warns(UserWarning, match="rebuilding"):
        write_token_store(store, ids, rows_of, m=3, d=5, progress=False, on_mismatch="rebuild")
    TokenStore(store).verify()


def test_state_digest_by_hand():
    w = torch.arange(6, dtype=torch.float32).view(2, 3)
    b = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
    by_hand = hashlib.sha256()
    for key, t in (("b", b), ("w", w)):  # sorted key order
        by_hand.update(json.dumps([key, str(t.dtype), list(t.shape)]).encode())
        by_hand.update(t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes())
    assert state_digest({"w": w, "b": b}) == by_hand.hexdigest()
    assert state_digest({"w": w.t().contiguous().t(), "b": b}) == by_hand.hexdigest()  # layout does not matter
    assert state_digest({"w": w + 1e-3, "b": b}) != by_hand.hexdigest()


def test_images_digest_follows_the_images(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    base = images_digest(ImageArray(["0", "1", "2"], pixels))
    assert images_digest(ImageArray(["0", "1", "2"], pixels.copy())) == base
    changed = pixels.copy()
    changed[2, 7, 7, 2] ^= 1
    assert images_digest(ImageArray(["0", "1", "2"], changed)) != base
    assert images_digest(ImageArray(["0", "2", "1"], pixels)) != base
    # Files: by path, size and mtime; in memory: by bytes.
    path = tmp_path / "a.png"
    path.write_bytes(b"x" * 10)
    os.utime(path, ns=(10**18, 10**18))
    files = images_digest(ImageFiles(["a"], [path]))
    path.write_bytes(b"x" * 11)
    os.utime(path, ns=(10**18, 10**18))
    assert images_digest(ImageFiles(["a"], [path])) != files
    path.write_bytes(b"x" * 10)
    os.utime(path, ns=(10**18 + 1, 10**18 + 1))
    assert images_digest(ImageFiles(["a"], [path])) != files
    one, two = ImageFiles(["a"], [("a.png", b"one")]), ImageFiles(["a"], [("a.png", b"two")])
    assert images_digest(one) != images_digest(two)


def test_file_stamp_tells_apart_checkpoints_of_equal_size_and_mtime(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    ckpt = folder / "model.safetensors"
    ckpt.write_bytes(b"\x00" * 64)
    os.utime(ckpt, ns=(1_700_000_000_000_000_000,) * 2)
    before = file_stamp(ckpt)
    ckpt.write_bytes(b"\x01" * 64)  # retrained in place: same path, same size, same mtime
    os.utime(ckpt, ns=(1_700_000_000_000_000_000,) * 2)
    after = file_stamp(ckpt)
    assert before != after
    assert after == {"sha256": hashlib.sha256(b"\x01" * 64).hexdigest()}
    assert file_stamp(folder) == after  # a save_pretrained folder is identified by its model.safetensors
    assert file_stamp(tmp_path / "missing") is None and file_stamp(None) is None


def tiny_edje() -> EDJE:
    """An EDJE over the tiny open_clip ResNet (random weights: seed before building its vision source)."""
    tokenizer = build_wordpiece_tokenizer(["a red circle left of a blue square", "a green star"] * 3, vocab_size=120)
    config = EDJEConfig(vision="open_clip:mmrerank-tiny-resnet", patch_dim=512, num_patches=4, num_image_tokens=2,
                        adapter_heads=2, adapter_mlp_ratio=2, patch_positions=True,
                        joint={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                               "intermediate_size": 32}, max_text_len=8)
    torch.manual_seed(0)
    return EDJE(config, tokenizer).eval()


def tokens_by_hand(model: EDJE, images: ImageArray) -> torch.Tensor:
    """`[N, m, d]` bf16: the vision source (seeded as in `precompute_seeded`) and the adapter, two images at a time
    (the batches `precompute_images` makes with shard_size=2, so that the float results match bit for bit)."""
    torch.manual_seed(1)
    source = model.config.vision_source()
    with torch.no_grad():
        return torch.cat([model.compress(source.encode([images[i] for i in range(s, min(s + 2, len(images)))]))
                          for s in range(0, len(images), 2)]).bfloat16()


def precompute_seeded(model: EDJE, images: ImageArray, store) -> TokenStore:
    torch.manual_seed(1)  # the same random vision source as tokens_by_hand
    return precompute_images(model, images, store, shard_size=2, device="cpu", progress=False)


def synthetic_like(seed: int) -> ImageArray:
    """Five images with the same ids whatever the seed (as the synthetic benchmark's splits)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    return ImageArray([str(i) for i in range(5)], pixels)


def test_precompute_images_rebuilds_for_other_images_or_weights_and_reuses_otherwise(tmp_path):
    model, store = tiny_edje(), tmp_path / "tokens" / "synthetic-test"
    seed0, seed1 = synthetic_like(0), synthetic_like(1)
    first = precompute_seeded(model, seed0, store)
    assert torch.equal(first.tensor, tokens_by_hand(model, seed0))
    inode = os.stat(store / "tokens.bin").st_ino
    again = precompute_seeded(model, seed0, store)  # same model, same images: reused, not rewritten
    assert os.stat(store / "tokens.bin").st_ino == inode and torch.equal(again.tensor, first.tensor)

    with pytest.warns(UserWarning, match="provenance.images"):
        other_images = precompute_seeded(model, seed1, store)
    assert torch.equal(other_images.tensor, tokens_by_hand(model, seed1))
    assert not torch.equal(other_images.tensor, first.tensor)

    with torch.no_grad():  # "retrained": same shapes, other weights
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    with pytest.warns(UserWarning, match="provenance.model"):
        retrained = precompute_seeded(model, seed1, store)
    assert torch.equal(retrained.tensor, tokens_by_hand(model, seed1))
    assert not torch.equal(retrained.tensor, other_images.tensor)
    with pytest.raises(StaleTokenStoreError, match="provenance.images.*overwrite=True"):
        torch.manual_seed(1)
        precompute_images(model, seed0, store, shard_size=2, device="cpu", progress=False, on_mismatch="error")


# --- overflow --------------------------------------------------------------------------------------------------------

def test_precompute_refuses_overflow_and_nan_before_writing_the_shard(tmp_path):
    ids = [f"x{i}" for i in range(6)]

    def spiking(value, row):
        def encode(indices):
            out = rows_of(indices)
            out[indices == row] = value
            return out
        return encode

    store = tmp_path / "s"
    with pytest.raises(ValueError, match=r"float16's range.*70000.*'x3'"):
        write_token_store(store, ids, spiking(70000.0, 3), m=3, d=5, shard_size=2, progress=False)
    header = json.loads((store / "header.json").read_text())
    assert header["shards_done"] == [0]  # shard 1 (x2, x3) was never written
    assert not np.fromfile(store / "tokens.bin", dtype=np.uint8)[2 * 30:4 * 30].any()
    with pytest.raises(ValueError, match=r"NaN.*'x4'"):
        write_token_store(store, ids, spiking(float("nan"), 4), m=3, d=5, shard_size=2, progress=False)
    with pytest.raises(ValueError, match=r"'x5'"):
        write_token_store(store, ids, spiking(float("-inf"), 5), m=3, d=5, shard_size=2, progress=False)
    # The largest float16 is stored as it is; bfloat16 holds 70000 (float32's range, coarser steps).
    fine = write_token_store(store, ids, spiking(65504.0, 3), m=3, d=5, shard_size=2, progress=False, overwrite=True)
    assert fine["x3"].max().item() == 65504.0
    wide = write_token_store(tmp_path / "bf", ids, spiking(70000.0, 3), m=3, d=5, dtype="bfloat16", progress=False)
    assert torch.isfinite(wide.tensor).all()
    with TokenStoreWriter(tmp_path / "w", ["a", "b"], m=3, d=5, shard_size=2) as w:  # the writer refuses too
        bad = rows_of(torch.arange(2)).half()
        bad[1, 0, 0] = float("inf")
        with pytest.raises(ValueError, match=r"tokens.bin.*'b'"):
            w.write_shard(0, bad)


# --- integrity -------------------------------------------------------------------------------------------------------

def test_checksums_catch_a_flipped_byte_and_a_resume_rewrites_the_shard(tmp_path):
    store, ids = tmp_path / "s", [f"x{i}" for i in range(10)]
    written = write_token_store(store, ids, rows_of, m=3, d=5, shard_size=4, progress=False)
    written.verify()
    raw = (store / "tokens.bin").read_bytes()
    header = json.loads((store / "header.json").read_text())
    assert header["shard_crc32"] == [zlib.crc32(raw[0:120]), zlib.crc32(raw[120:240]), zlib.crc32(raw[240:300])]
    written.tensor[0, 0, 0] = 99.0  # a private edit of the copy-on-write map is not corruption
    written.verify()

    with open(store / "tokens.bin", "r+b") as f:  # flip one bit of row 5 (shard 1)
        f.seek(5 * 30 + 7)
        byte = f.read(1)[0]
        f.seek(5 * 30 + 7)
        f.write(bytes([byte ^ 0x10]))
    with pytest.raises(CorruptTokenStoreError, match=r"tokens.bin: shard 1 \(rows 4-7, image ids 'x4' to 'x7'\)"):
        TokenStore(store).verify()

    seen: list[int] = []

    def recording(indices):
        seen.extend(indices.tolist())
        return rows_of(indices)

    with pytest.warns(UserWarning, match=r"shards \[1\] fail"):
        healed = write_token_store(store, ids, recording, m=3, d=5, shard_size=4, progress=False)
    assert seen == [4, 5, 6, 7]
    healed.verify()
    assert torch.equal(healed.tensor, rows_of(torch.arange(10)).half())


def test_rows_refuses_negative_and_out_of_range_rows(tmp_path):
    store = write_token_store(tmp_path / "s", list(range(4)), rows_of, m=3, d=5, progress=False)
    expected = rows_of(torch.arange(4)).half()
    assert torch.equal(store.rows(3), expected[3])
    assert torch.equal(store.rows([3, 0]), expected[[3, 0]])
    assert torch.equal(store.rows(slice(1, 4)), expected[1:4])
    assert store.rows([]).shape == (0, 3, 5)
    for bad, row in ((-1, "-1"), (4, "4"), ([0, -1], "-1"), (torch.tensor([2, 7]), "7"), (np.array([-4]), "-4")):
        with pytest.raises(IndexError, match=f"row {row} outside"):
            store.rows(bad)
    with pytest.raises(IndexError, match="slice start -2"):
        store.rows(slice(-2, None))
    with pytest.raises(IndexError, match="slice stop 9"):
        store.rows(slice(0, 9))
