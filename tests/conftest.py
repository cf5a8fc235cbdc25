"""Shared fixtures: tiny synthetic data and a tiny untrained first stage, built once per session."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from mmrerank.datasets.synthetic import SyntheticConfig, load_synthetic
from mmrerank.rerankers.edje.joint import SPECIAL_TOKENS

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> SyntheticConfig:
    """A small synthetic benchmark (cached in a session temp folder, so tests never touch ~/.cache)."""
    root = tmp_path_factory.mktemp("synthetic")
    return SyntheticConfig(seed=3, train_images=64, val_images=16, test_images=40, root=str(root))


@pytest.fixture(scope="session")
def tiny_test_split(tiny_config):
    return load_synthetic("test", tiny_config, progress=False)


@pytest.fixture(scope="session")
def bert_folder(tmp_path_factory):
    """A tiny BERT in the hub's format: `BertModel.save_pretrained` (position table of 512) and a WordPiece vocab.txt
    through `BertTokenizerFast`, as `microsoft/MiniLM-L12-H384-uncased` or all-MiniLM-L6-v2 ship."""
    folder = tmp_path_factory.mktemp("bert")
    texts = ["a red circle left of a blue square", "a green star above a box", "a small yellow triangle"]
    words = sorted({w for t in texts for w in t.split()} | {"big", "right", "below", "purple", "orange"})
    (folder / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS + words) + "\n")
    # from_pretrained reads vocab.txt as a hub download would (transformers 5's `vocab_file=` keyword is ignored
    # and gives a vocabulary of the specials alone)
    tokenizer = BertTokenizerFast.from_pretrained(str(folder), do_lower_case=True)
    assert tokenizer.tokenize("a red circle") == ["a", "red", "circle"]
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    BertModel(config).save_pretrained(folder)
    return folder
