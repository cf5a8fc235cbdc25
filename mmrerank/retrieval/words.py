"""`WordTokenizer`: the tiny first stages' tokenizer, one id per word of the synthetic captions.

open_clip's BPE vocabulary has 49,408 rows, of which the synthetic captions use about fifty; a text tower over it
spends most of its parameters (6.3 M of the tiny ResNet model's) and optimiser time on rows that never receive a
gradient. This tokenizer keeps open_clip's output contract instead -- `[B, context_length]` int64 ids, start-of-text
first, end-of-text last, 0-padded -- with end-of-text as the largest id, because open_clip's text tower pools the
position of the largest id (`text_pool_type="argmax"`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

PAD, UNKNOWN = "<pad>", "<unk>"
START, END = "<start_of_text>", "<end_of_text>"
WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


class WordTokenizer:
    """Lower-cased words and punctuation marks, each one id; words outside the vocabulary share `<unk>`.

    Args:
        words: the vocabulary, ids 1.. in this order (0 is padding).
        vocab_size: the text tower's embedding rows; start- and end-of-text take the last two.
        context_length: tokens per caption, start and end included (a longer caption is cut, keeping its end).
    """

    def __init__(self, words: Sequence[str], vocab_size: int, context_length: int) -> None:
        self.words = list(words)
        if len(set(self.words)) != len(self.words) or {PAD, UNKNOWN, START, END} & set(self.words):
            raise ValueError("vocabulary words must be distinct and not special tokens")
        if len(self.words) + 4 > vocab_size:
            raise ValueError(f"{len(self.words)} words + 4 special tokens do not fit in vocab_size {vocab_size}")
        self.ids = {w: i + 1 for i, w in enumerate(self.words)}
        self.unknown_token_id = len(self.words) + 1
        self.sot_token_id, self.eot_token_id = vocab_size - 2, vocab_size - 1
        self.context_length = context_length

    def split(self, text: str) -> list[str]:
        return WORD.findall(text.lower())

    def encode(self, text: str) -> list[int]:
        """Word ids of `text`, without start / end."""
        return [self.ids.get(w, self.unknown_token_id) for w in self.split(text)]

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Tensor:
        """`B` strings -> `[B, context_length]` int64."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text)[:length - 2], self.eot_token_id]
            out[row, :len(ids)] = torch.tensor(ids)
        return out
