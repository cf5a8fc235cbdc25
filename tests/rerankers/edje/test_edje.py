"""EDJE: the token-compression adapter, the memory-mapped token store and the joint encoder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import BertConfig, PreTrainedTokenizerFast

from mmrerank.losses import listwise_softmax
from mmrerank.rerankers.edje import (
    IncompleteTokenStoreError,
    JointEncoder,
    TokenCompressionAdapter,
    TokenStore,
    TokenStoreError,
    TokenStoreWriter,
    build_wordpiece_tokenizer,
    footprint,
    write_token_store,
)

CAPTIONS = ["a red cat sleeps on a mat", "two dogs run in the green park", "a bird sits on a wire",
            "people walk along the beach at sunset", "a bowl of fruit on a wooden table", "a train leaves the station"]


def tiny_config(vocab_size: int, width: int = 32) -> BertConfig:
    # Dropout off so that forward passes are deterministic and comparable.
    return BertConfig(vocab_size=vocab_size, hidden_size=width, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=2 * width, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_wordpiece_tokenizer(CAPTIONS * 5, vocab_size=200)


@pytest.fixture(scope="module")
def encoder(tokenizer) -> JointEncoder:
    torch.manual_seed(0)
    return JointEncoder(tiny_config(len(tokenizer)), num_image_tokens=4, max_text_len=16, tokenizer=tokenizer).eval()


# --- adapter ---------------------------------------------------------------------------------------------------------

def test_adapter_shapes_small_and_paper():
    small = TokenCompressionAdapter(in_dim=48, num_queries=5, out_dim=16, num_heads=4, mlp_ratio=2)
    assert small(torch.randn(3, 11, 48)).shape == (3, 5, 16)
    torch.manual_seed(0)
    paper = TokenCompressionAdapter(in_dim=1024, num_queries=64, out_dim=384, num_heads=16)  # mlp 1024->8192->1024
    assert paper.mlp[0].out_features == 8192
    with torch.no_grad():
        assert paper(torch.randn(2, 576, 1024)).shape == (2, 64, 384)


def test_adapter_ignores_patch_order_and_padding():
    torch.manual_seed(1)
    adapter = TokenCompressionAdapter(in_dim=16, num_queries=3, out_dim=8, num_heads=2, mlp_ratio=2).eval()
    patches = torch.randn(2, 7, 16)
    out = adapter(patches)
    # Cross-attention without positions is a set function of the patches: a permutation changes nothing.
    assert torch.allclose(adapter(patches[:, torch.randperm(7)]), out, atol=1e-5)
    # Padded (masked) extra patches change nothing either, whatever their values.
    padded = torch.cat([patches, 100 * torch.randn(2, 4, 16)], dim=1)
    mask = torch.zeros(2, 11, dtype=torch.bool)
    mask[:, 7:] = True
    assert torch.allclose(adapter(padded, padding_mask=mask), out, atol=1e-5)
    # ...while unmasked they do: the check above is not vacuous.
    assert not torch.allclose(adapter(padded), out, atol=1e-3)


# --- joint encoder ---------------------------------------------------------------------------------------------------

def test_joint_positions_and_layout_by_hand(encoder):
    assert encoder.bert.embeddings.position_embeddings.num_embeddings == 16 + 4 + 3
    paper = JointEncoder(tiny_config(50), num_image_tokens=64, max_text_len=64)
    assert paper.bert.embeddings.position_embeddings.num_embeddings == 131
    ids = torch.tensor([[7, 8, 0], [7, 8, 9]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    _, full_mask, types, positions = encoder.build_inputs(ids, mask, torch.zeros(2, 4, 32))
    # slots: [CLS] t t t [SEP] i i i i [SEP]  (1 + 3 + 1 + 4 + 1 = 10)
    assert full_mask.tolist() == [[1, 1, 1, 0, 1, 1, 1, 1, 1, 1], [1] * 10]
    assert types.tolist() == [[0] * 5 + [1] * 5] * 2
    assert positions.tolist() == [[0, 1, 2, 0, 3, 4, 5, 6, 7, 8], list(range(10))]


def test_joint_matches_plain_bert_when_image_tokens_are_word_embeddings(encoder, tokenizer):
    # Independent route: if the image tokens are word embeddings of some ids, the whole input is a token sequence
    # that BertModel can embed itself, with its default positions.
    ids, mask = encoder.tokenize(["a red cat"])
    assert mask.all()
    image_ids = torch.tensor([[10, 11, 12, 13]])
    image_tokens = encoder.bert.embeddings.word_embeddings(image_ids)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    full = torch.cat([torch.tensor([[cls]]), ids, torch.tensor([[sep]]), image_ids, torch.tensor([[sep]])], dim=1)
    types = torch.tensor([[0] * (ids.shape[1] + 2) + [1] * 5])
    with torch.no_grad():
        expected = encoder.head(encoder.bert(input_ids=full, token_type_ids=types).pooler_output).squeeze(-1)
        got = encoder(ids, mask, image_tokens)
    assert got.shape == (1,)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_joint_image_tokens_matter_and_padding_does_not(encoder):
    torch.manual_seed(2)
    images = torch.randn(3, 4, 32)
    texts = ["a cat", "two dogs run in the green park near a bird on a wire", "a bowl of fruit"]
    with torch.no_grad():
        batch = encoder(*encoder.tokenize(texts), images)
        alone = encoder(*encoder.tokenize(texts[:1]), images[:1])
        other_image = encoder(*encoder.tokenize(texts[:1]), images[1:2])
    assert batch.shape == (3,)
    ids, mask = encoder.tokenize(texts)
    assert (mask[0] == 0).any()  # the first caption really is padded in the batch
    torch.testing.assert_close(alone, batch[:1], atol=1e-5, rtol=0)
    assert (other_image - alone).abs().item() > 1e-4


def test_tokenize_caps_and_round_trips(tokenizer, tmp_path):
    ids, mask = JointEncoder(tiny_config(len(tokenizer)), num_image_tokens=2, max_text_len=5,
                             tokenizer=tokenizer).tokenize(["a red cat sleeps on a mat", "a bird"])
    assert ids.shape == (2, 5) and mask.tolist() == [[1] * 5, [1, 1, 0, 0, 0]]
    assert tokenizer.cls_token_id not in ids[0].tolist()  # no specials: the encoder adds them itself
    tokenizer.save_pretrained(tmp_path)
    again = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert again("a red cat")["input_ids"] == tokenizer("a red cat")["input_ids"]


def test_listwise_training_separates_positives(tokenizer):
    torch.manual_seed(3)
    model = JointEncoder(tiny_config(len(tokenizer)), num_image_tokens=4, max_text_len=16, tokenizer=tokenizer)
    queries = ["a red cat sleeps on a mat", "a train leaves the station"]
    images = torch.randn(2, 4, 4, 32)  # [query, candidate, m, d]; candidate 0 is the positive
    labels = torch.tensor([[1.0, 0, 0, 0]] * 2)
    ids, mask = model.tokenize([q for q in queries for _ in range(4)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        scores = model(ids, mask, images.flatten(0, 1)).view(2, 4)
        loss = listwise_softmax(scores, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 1.0  # about log 4 at the start
    assert losses[-1] < 0.3 * losses[0]
    with torch.no_grad():
        scores = model(ids, mask, images.flatten(0, 1)).view(2, 4)
    assert (scores[:, :1] > scores[:, 1:]).all()


# --- token store -----------------------------------------------------------------------------------------------------

def rows_of(indices: torch.Tensor, m: int = 3, d: int = 5) -> torch.Tensor:
    """A deterministic `encode_fn`: row r is r + (0, 0.25, 0.5, ...) (exact in fp16 and bf16 for small r)."""
    base = torch.arange(m * d, dtype=torch.float32).view(m, d) * 0.25
    return indices.float().view(-1, 1, 1) * 4 + base


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_store_round_trip(tmp_path, dtype):
    ids = [f"img{i}" for i in range(7)]
    data = torch.randn(7, 3, 5).to(dtype)
    with TokenStoreWriter(tmp_path / "s", ids, m=3, d=5, dtype=dtype, shard_size=3) as w:
        assert w.num_shards == 3 and w.shard_bounds(2) == (6, 7)
        for k in (2, 0, 1):  # any order
            a, b = w.shard_bounds(k)
            w.write_shard(k, data[a:b])
        store = w.finalize()
    assert store.shape == (7, 3, 5) and store.dtype == dtype and len(store) == 7
    assert torch.equal(store.tensor, data)
    assert torch.equal(store["img4"], data[4])
    assert torch.equal(store[["img6", "img0", "img6"]], data[[6, 0, 6]])
    assert torch.equal(store.rows([1, 5]), data[[1, 5]])
    assert torch.equal(store.rows(slice(2, 4)), data[2:4])
    assert footprint(tmp_path / "s")["data"] == 7 * 3 * 5 * 2
    reopened = TokenStore(tmp_path / "s")
    assert torch.equal(reopened.tensor, data) and reopened.ids == ids
    with pytest.raises(KeyError, match="img99"):
        reopened[["img99"]]


def test_store_reads_are_zero_copy(tmp_path):
    store = write_token_store(tmp_path / "s", list(range(6)), rows_of, m=3, d=5, dtype="bfloat16", shard_size=4,
                       progress=False)
    assert isinstance(store.array, np.memmap)
    # The tensor's memory is the map's memory: same address, and numpy agrees they overlap.
    assert store.tensor.data_ptr() == store.array.ctypes.data
    assert store.rows(slice(1, 3)).data_ptr() == store.array.ctypes.data + 1 * 3 * 5 * 2
    assert store.rows(4).data_ptr() == store.array.ctypes.data + 4 * 3 * 5 * 2
    assert np.shares_memory(store.tensor.view(torch.int16).numpy(), store.array)
    # Copy-on-write map: an in-place edit is seen through the map but never reaches the file.
    store.tensor[0, 0, 0] = 42.0
    assert store.array[0, 0, 0] == torch.tensor(42.0, dtype=torch.bfloat16).view(torch.int16).item()
    assert torch.equal(TokenStore(tmp_path / "s").rows(0), rows_of(torch.tensor([0]))[0].bfloat16())


def test_bytes_per_image_and_overhead(tmp_path):
    store = write_token_store(tmp_path / "s", ["a", "b"], lambda i: rows_of(i, 4, 6), m=4, d=6, progress=False)
    assert store.bytes_per_image == 4 * 6 * 2 == 48
    assert os.path.getsize(tmp_path / "s" / "tokens.bin") == 2 * 48
    # The paper's configuration; the data file is created sparse, so nothing needs writing to measure it.
    ids = [f"coco_{i:012d}" for i in range(10_000)]
    with TokenStoreWriter(tmp_path / "paper", ids, m=64, d=384, dtype="bfloat16", fsync=False):
        pass
    sizes = footprint(tmp_path / "paper")
    assert sizes["data"] == 10_000 * 49_152
    assert sizes["overhead"] <= 0.01 * sizes["data"]


def test_write_rejects_wrong_dtype_and_shape(tmp_path):
    with TokenStoreWriter(tmp_path / "s", ["a", "b"], m=2, d=3, dtype="float16", shard_size=2) as w:
        with pytest.raises(TypeError, match="tokens.bin.*float32"):
            w.write_shard(0, torch.zeros(2, 2, 3))
        with pytest.raises(TypeError, match="tokens.bin"):
            w.write_shard(0, torch.zeros(2, 2, 3, dtype=torch.bfloat16))
        with pytest.raises(ValueError, match=r"tokens.bin.*\(2, 3, 2\)"):
            w.write_shard(0, torch.zeros(2, 3, 2, dtype=torch.float16))
        with pytest.raises(IncompleteTokenStoreError):
            w.finalize()


def test_incomplete_store_cannot_be_read(tmp_path):
    with TokenStoreWriter(tmp_path / "s", list(range(5)), m=3, d=5, shard_size=2) as w:
        w.write_shard(0, rows_of(torch.arange(2)).half())
    with pytest.raises(IncompleteTokenStoreError, match=r"header.json.*1 of 3 shards"):
        TokenStore(tmp_path / "s")
    with pytest.raises(TokenStoreError, match="header.json.*missing"):
        TokenStore(tmp_path / "nothing")


def test_resume_after_exception_skips_finished_shards(tmp_path):
    calls: list[list[int]] = []

    def failing(indices):
        if indices[0] >= 6:  # shards 0 (rows 0-2) and 1 (rows 3-5) finish, shard 2 dies
            raise RuntimeError("killed")
        calls.append(indices.tolist())
        return rows_of(indices)

    ids = [f"x{i}" for i in range(10)]
    with pytest.raises(RuntimeError, match="killed"):
        write_token_store(tmp_path / "s", ids, failing, m=3, d=5, shard_size=3, batch_size=2, progress=False)
    header = json.loads((tmp_path / "s" / "header.json").read_text())
    assert header["shards_done"] == [0, 1] and header["complete"] is False
    with pytest.raises(IncompleteTokenStoreError):
        TokenStore(tmp_path / "s")

    calls.clear()

    def recording(indices):
        calls.append(indices.tolist())
        return rows_of(indices)

    store = write_token_store(tmp_path / "s", ids, recording, m=3, d=5, shard_size=3, batch_size=2, progress=False)
    assert calls == [[6, 7], [8], [9]]  # only shards 2 and 3, in batches that never cross a shard
    assert torch.equal(store.tensor, rows_of(torch.arange(10)).half())


def test_resume_after_hard_kill_in_subprocess(tmp_path):
    # os._exit mid-shard: no exception handling, no cleanup, like a SIGKILL, after some bytes of shard 1 went out.
    script = textwrap.dedent(f"""
        import os, torch
        from mmrerank.rerankers.edje import TokenStoreWriter
        def rows(i):
            return (i.float().view(-1, 1, 1) * 4 + torch.arange(15.).view(3, 5) * 0.25).half()
        w = TokenStoreWriter({str(tmp_path / "s")!r}, list(range(8)), m=3, d=5, shard_size=4)
        w.write_shard(0, rows(torch.arange(4)))
        os.pwrite(w._fd, b"garbage", 4 * 30)
        os._exit(3)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    seen: list[int] = []

    def recording(indices):
        seen.extend(indices.tolist())
        return rows_of(indices)

    store = write_token_store(tmp_path / "s", list(range(8)), recording, m=3, d=5, shard_size=4, progress=False)
    assert seen == [4, 5, 6, 7]
    assert torch.equal(store.tensor, rows_of(torch.arange(8)).half())


def test_resume_refuses_a_different_request(tmp_path):
    with TokenStoreWriter(tmp_path / "s", ["a", "b"], m=2, d=3):
        pass
    with pytest.raises(TokenStoreError, match="header.json.*overwrite"):
        TokenStoreWriter(tmp_path / "s", ["a", "b"], m=2, d=4)
    with pytest.raises(TokenStoreError, match="ids.json"):
        TokenStoreWriter(tmp_path / "s", ["a", "c"], m=2, d=3)
    TokenStoreWriter(tmp_path / "s", ["a", "c"], m=2, d=4, overwrite=True).close()
    assert json.loads((tmp_path / "s" / "header.json").read_text())["shape"] == [2, 2, 4]


def test_corrupt_store_errors_name_the_file(tmp_path):
    root = tmp_path / "s"
    write_token_store(root, list(range(4)), rows_of, m=3, d=5, progress=False)
    data = root / "tokens.bin"
    size = data.stat().st_size
    os.truncate(data, size - 1)
    with pytest.raises(TokenStoreError, match=r"tokens.bin.*truncated"):
        TokenStore(root)
    os.truncate(data, size + 2)
    with pytest.raises(TokenStoreError, match=r"tokens.bin.*size mismatch"):
        TokenStore(root)
    os.truncate(data, size)
    TokenStore(root)  # intact again
    (root / "ids.json").write_text(json.dumps([0, 1, 2]))
    with pytest.raises(TokenStoreError, match=r"ids.json.*3 ids.*4 rows"):
        TokenStore(root)
    (root / "header.json").write_text("{not json")
    with pytest.raises(TokenStoreError, match="header.json.*not valid JSON"):
        TokenStore(root)


def test_wordpiece_vocabulary_is_deterministic_and_covers_its_alphabet():
    texts = ["a red circle left of a blue square", "A green star above a box", "a red star"] * 2
    vocabs = [build_wordpiece_tokenizer(texts, vocab_size=60).get_vocab() for _ in range(4)]
    assert all(v == vocabs[0] for v in vocabs)  # the same texts, the same ids, call after call
    vocab = vocabs[0]
    assert [vocab[s] for s in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    alphabet = sorted(set("".join(texts).lower()) - {" "})
    assert [vocab[c] for c in alphabet] == list(range(5, 5 + len(alphabet)))  # characters, then ## pieces
    assert vocab["a"] < vocab["##a"] and "red" in vocab and "star" in vocab  # "a" counted 7 times, "red" 4
    words = sorted(vocab, key=vocab.get)[5 + 2 * len(alphabet):]
    assert words[:3] == ["red", "star", "above"]  # by count (a: already a character), ties alphabetical
    tokenizer = build_wordpiece_tokenizer(texts, vocab_size=60)
    assert tokenizer.tokenize("a crab") == ["a", "c", "##r", "##a", "##b"]  # unseen words fall back to characters
