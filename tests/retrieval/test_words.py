"""The tiny first stages' word tokenizer: open_clip's output contract over a vocabulary of the synthetic captions."""

from __future__ import annotations

import json

import pytest
import torch

from mmrerank.datasets.synthetic import load_synthetic
from mmrerank.datasets.synthetic.scenes import caption_words
from mmrerank.retrieval.clip import CLIPEncoder
from mmrerank.retrieval.words import WordTokenizer


def test_ids_by_hand():
    tok = WordTokenizer(["a", "red", "circle", ","], vocab_size=10, context_length=6)
    ids = tok(["A red circle, a disc", "red"])
    # start = 8, end = 9 (the largest: open_clip pools the argmax position), unknown = 5, padding 0; cut at 6
    assert ids.tolist() == [[8, 1, 2, 3, 4, 9], [8, 2, 9, 0, 0, 0]]
    assert tok(["red"], context_length=4).tolist() == [[8, 2, 9, 0]]
    with pytest.raises(ValueError, match="do not fit"):
        WordTokenizer([f"w{i}" for i in range(7)], vocab_size=10, context_length=6)  # 7 + 4 special > 10


def test_every_synthetic_caption_word_is_known(tiny_config):
    tok = CLIPEncoder("mmrerank-tiny-resnet").tokenizer
    data = load_synthetic("train", tiny_config, progress=False, relevance=False)
    ids = tok(list(data.captions))
    assert not (ids == tok.unknown_token_id).any()
    assert (ids.argmax(dim=1) == (ids != 0).sum(dim=1) - 1).all()  # end-of-text is each row's largest id, last
    assert set(caption_words()) >= {w for c in data.captions for w in tok.split(c)}


def test_tiny_text_tower_is_sized_for_the_words_and_checks_them_on_load(tmp_path):
    encoder = CLIPEncoder("mmrerank-tiny-resnet")
    rows = encoder.model.token_embedding.num_embeddings
    assert rows == 128 and encoder.tokenizer.eot_token_id == rows - 1
    encoder.save_pretrained(tmp_path / "fs")
    again = CLIPEncoder.from_pretrained(tmp_path / "fs")
    torch.testing.assert_close(again.encode_texts(["a red circle"]), encoder.encode_texts(["a red circle"]))
    config = json.loads((tmp_path / "fs" / "config.json").read_text())
    config["words"] = config["words"][::-1]  # trained with other ids for the same words
    (tmp_path / "fs" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="different word vocabulary"):
        CLIPEncoder.from_pretrained(tmp_path / "fs")
