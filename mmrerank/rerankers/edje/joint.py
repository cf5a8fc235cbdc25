"""EDJE's online joint encoder: a compact BERT reads a caption together with an image's stored tokens.

Input layout per pair (the image tokens enter as input embeddings, not through the vocabulary):

    [CLS] caption (<= max_text_len word pieces) [SEP] <image> x m [SEP]
    type:   0 ... 0 0                                 1 ... 1      1

Position ids count real tokens only, so a caption's padding (needed to batch captions of different lengths) shifts
nothing: a pair's score does not depend on what else is in its batch. The score is the pooled [CLS] state through
`Linear(d, 1)`.

The attention implementation is chosen per call (`attention_for`): `auto` takes eager attention on a CPU under bf16 /
fp16 (autocast or half weights), where PyTorch's fused CPU attention backward is about 5x slower than in float32
(BENCHMARKS.md, "EDJE training step time"), and `sdpa` elsewhere (on a GPU it dispatches to flash / memory-efficient
kernels); `eager`, `sdpa`, `flash_attention_2` (a GPU with the flash-attn package) force one. All compute the same
function: outputs and gradients agree to float32 rounding.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

MINILM = "microsoft/MiniLM-L12-H384-uncased"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ATTENTION = ("auto", "eager", "sdpa", "flash_attention_2")
HALF = (torch.bfloat16, torch.float16)


def attention_for(choice: str, device: torch.device, weight_dtype: torch.dtype = torch.float32) -> str:
    """The transformers attention implementation `choice` means on `device` in the current autocast state: `auto`
    is `eager` on a CPU computing in bf16 / fp16 (autocast or `weight_dtype`), else `sdpa`; others are themselves."""
    if choice not in ATTENTION:
        raise ValueError(f"attn_implementation must be one of {ATTENTION}, got {choice!r}")
    if choice != "auto":
        return choice
    autocast_half = torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) in HALF
    return "eager" if device.type == "cpu" and (autocast_half or weight_dtype in HALF) else "sdpa"


def minilm_config(**overrides: Any) -> BertConfig:
    """A `BertConfig` of MiniLM-L12-H384's size (12 layers, width 384, 12 heads, intermediate 1536, BERT vocab)."""
    kwargs = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2)
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def build_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = 1000, lowercase: bool = True,
                              model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer for `texts`, built offline and deterministically, wrapped for transformers.

    The vocabulary is the special tokens (`[PAD]` = 0, `[UNK]` = 1, `[CLS]` = 2, `[SEP]` = 3, `[MASK]` = 4), then
    every character of the normalised texts, alone and as a `##` continuation (so any word of that alphabet
    tokenizes), then whole words by falling frequency (ties: alphabetical) up to `vocab_size` entries. It depends on
    the texts only: `tokenizers`' own WordPiece trainer breaks ties in hash-map order and gives another vocabulary
    on every run (huggingface/tokenizers#1794), which would make same-seed trainings differ. The result can
    `save_pretrained` and be reloaded with `AutoTokenizer` / `PreTrainedTokenizerFast.from_pretrained`.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=lowercase), pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    alphabet = sorted({c for word in counts for c in word})
    vocab = [*SPECIAL_TOKENS, *alphabet, *(f"##{c}" for c in alphabet)]
    known = set(vocab)
    for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if len(vocab) >= vocab_size:
            break
        if word not in known:
            vocab.append(word)
            known.add(word)
    tok = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    # Only used with add_special_tokens=True; JointEncoder adds its own specials around the image segment.
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=model_max_length)


def tokenize(tokenizer: Any, texts: Sequence[str], max_text_len: int = 64) -> tuple[Tensor, Tensor]:
    """Word pieces of captions, without special tokens, capped at `max_text_len` and right-padded.

    Returns:
        `(input_ids [B, T], attention_mask [B, T])` with `T = min(longest caption, max_text_len)` (at least 1).
    """
    enc = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_text_len,
                    padding="longest", return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if ids.shape[1] == 0:  # all captions empty: keep one (masked) column so shapes stay [B, T >= 1]
        pad = tokenizer.pad_token_id or 0
        ids, mask = torch.full((len(texts), 1), pad, dtype=torch.long), torch.zeros(len(texts), 1, dtype=torch.long)
    return ids, mask


class JointEncoder(nn.Module):
    """BERT over `[CLS] caption [SEP] <image> x m [SEP]` scoring a (caption, image) pair.

    Args:
        config: a `BertConfig` (random init, offline), or a model name/path for `BertModel.from_pretrained`
            (e.g. `microsoft/MiniLM-L12-H384-uncased`).
        num_image_tokens: m, the stored tokens per image.
        max_text_len: caption word pieces kept (64).
        image_dim: width of the stored tokens; they must already be in the encoder's width, so this only checks.
        cls_token_id, sep_token_id: the vocabulary's [CLS] and [SEP] ids (BERT-uncased: 101, 102); or pass
            `tokenizer` to take them from it.
        tokenizer: optional; supplies the special-token ids and is used by `tokenize`.
        text: optional text side (`mmrerank.rerankers.edje.text`): it tokenizes the captions and gives the caption
            slots' input embeddings; None uses the encoder's own word embeddings of `tokenizer`'s word pieces.
            `max_text_len` then counts the text side's tokens.
        num_positions: the position table's size when rebuilding a saved model whose table was kept from a
            pretrained encoder (at least `max_text_len + m + 3`).
        attn_implementation: `auto`, `eager`, `sdpa` or `flash_attention_2` (module docstring); a runtime choice,
            not saved with the model, and it can be changed on the instance.
        length_buckets: `forward` sorts the pairs by caption length and runs this many groups, each cut to its own
            longest caption, so that short captions do not pay for the longest one's padding (about 14 % of the
            positions of a synthetic-benchmark batch); the scores are the same function. Runtime, like attention.

    Position embeddings: a fresh model gets exactly `max_text_len + m + 3` (or `num_positions`); a pretrained one
    keeps its table when that is long enough and is grown otherwise (old rows kept, new rows initialised like
    BERT's).
    """

    def __init__(self, config: BertConfig | str, num_image_tokens: int = 64, max_text_len: int = 64,
                 image_dim: int | None = None, cls_token_id: int = 101, sep_token_id: int = 102,
                 tokenizer: Any = None, text: nn.Module | None = None, num_positions: int | None = None,
                 attn_implementation: str = "auto", length_buckets: int = 1):
        super().__init__()
        attention_for(attn_implementation, torch.device("cpu"))  # checks the name before any building
        self.attn_implementation = attn_implementation
        if length_buckets < 1:
            raise ValueError(f"length_buckets must be >= 1, got {length_buckets}")
        self.length_buckets = length_buckets
        self.num_image_tokens, self.max_text_len = num_image_tokens, max_text_len
        self.max_positions = max_text_len + num_image_tokens + 3
        if tokenizer is not None:
            cls_token_id, sep_token_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.tokenizer = tokenizer
        self.cls_token_id, self.sep_token_id = cls_token_id, sep_token_id
        if isinstance(config, str):
            # from_pretrained returns eval mode; a fresh module trains (dropout on) until the caller says otherwise
            self.bert = BertModel.from_pretrained(config, add_pooling_layer=True).train()
            self._grow_positions(self.max_positions)
        else:
            config = copy.deepcopy(config)
            config.max_position_embeddings = max(num_positions or 0, self.max_positions)
            self.bert = BertModel(config, add_pooling_layer=True)
        self.text = text
        cfg = self.bert.config
        if cfg.type_vocab_size < 2:
            raise ValueError("the joint encoder needs type_vocab_size >= 2 (text segment 0, image segment 1)")
        if image_dim is not None and image_dim != cfg.hidden_size:
            raise ValueError(f"image tokens of width {image_dim} do not fit an encoder of width {cfg.hidden_size}")
        self.hidden_size = cfg.hidden_size
        self.head = nn.Linear(cfg.hidden_size, 1)

    def _grow_positions(self, needed: int) -> None:
        emb = self.bert.embeddings.position_embeddings
        if emb.num_embeddings >= needed:
            return
        grown = nn.Embedding(needed, emb.embedding_dim)
        nn.init.normal_(grown.weight, std=self.bert.config.initializer_range)
        with torch.no_grad():
            grown.weight[: emb.num_embeddings] = emb.weight
        self.bert.embeddings.position_embeddings = grown
        self.bert.embeddings.register_buffer("position_ids", torch.arange(needed).unsqueeze(0), persistent=False)
        self.bert.config.max_position_embeddings = needed

    def _choose_attention(self, device: torch.device) -> None:
        """Point the BERT at `attention_for(self.attn_implementation, ...)` (transformers reads it per call)."""
        chosen = attention_for(self.attn_implementation, device, self.head.weight.dtype)
        if self.bert.config._attn_implementation != chosen:
            self.bert.set_attn_implementation(chosen)

    def tokenize(self, texts: Sequence[str], tokenizer: Any = None) -> tuple[Tensor, Tensor]:
        """The text side's `tokenize(texts)`, or `tokenize(tokenizer or self.tokenizer, texts, self.max_text_len)`."""
        if self.text is not None and tokenizer is None:
            return self.text.tokenize(texts)
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is None:
            raise ValueError("no tokenizer: pass one here or to the constructor")
        return tokenize(tokenizer, texts, self.max_text_len)

    def build_inputs(self, input_ids: Tensor, attention_mask: Tensor, image_tokens: Tensor
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Input embeddings, mask, token types and positions for `[CLS] text [SEP] <image> x m [SEP]`.

        Slots are fixed (`1 + T + 1 + m + 1 = L` wide); padded caption slots are masked and get position 0, and
        positions after the caption continue from its real length.

        Args:
            input_ids: `[B, T]` caption tokens without the encoder's special tokens, right-padded; `T <= max_text_len`.
            attention_mask: `[B, T]`, 1 on real word pieces.
            image_tokens: `[B, m, d]` stored image tokens (any float dtype; cast to the encoder's).

        Returns:
            `(inputs_embeds [B, L, d], attention_mask [B, L], token_type_ids [B, L], position_ids [B, L])`.
        """
        b, t = input_ids.shape
        m = self.num_image_tokens
        if t > self.max_text_len:
            raise ValueError(f"caption of {t} tokens exceeds max_text_len={self.max_text_len}; use tokenize()")
        if image_tokens.shape != (b, m, self.hidden_size):
            raise ValueError(f"image_tokens {tuple(image_tokens.shape)}, expected {(b, m, self.hidden_size)}")
        device = input_ids.device
        word = self.bert.embeddings.word_embeddings
        specials = word(torch.tensor([self.cls_token_id, self.sep_token_id], device=device))  # [2, d]
        cls, sep = specials[0].expand(b, 1, -1), specials[1].expand(b, 1, -1)
        caption = word(input_ids) if self.text is None else self.text(input_ids, attention_mask).to(word.weight.dtype)
        embeds = torch.cat([cls, caption, sep, image_tokens.to(word.weight.dtype), sep], dim=1)

        text_mask = attention_mask.to(torch.long)
        ones = torch.ones(b, 1, dtype=torch.long, device=device)
        mask = torch.cat([ones, text_mask, ones, ones.expand(b, m), ones], dim=1)  # [B, L]
        types = torch.cat([torch.zeros(b, t + 2, dtype=torch.long, device=device), ones.expand(b, m + 1)], dim=1)
        # Positions of real tokens are their rank among real tokens (0 = [CLS]); masked slots get 0.
        positions = (mask.cumsum(dim=1) - 1) * mask
        return embeds, mask, types, positions

    def forward(self, input_ids: Tensor, attention_mask: Tensor, image_tokens: Tensor) -> Tensor:
        """Score pairs.

        Args:
            input_ids: `[B, T]` caption word pieces (no special tokens), right-padded.
            attention_mask: `[B, T]`.
            image_tokens: `[B, m, d]`.

        Returns:
            `[B]` logits (higher = more relevant).
        """
        if self.length_buckets == 1 or len(input_ids) < 2 * self.length_buckets:
            return self.head(self.encode(input_ids, attention_mask, image_tokens).pooler_output).squeeze(-1)
        lengths = attention_mask.sum(1)
        logits = []
        parts = lengths.argsort(stable=True).chunk(self.length_buckets)
        for part in parts:
            t = max(int(lengths[part].max()), 1)
            pooled = self.encode(input_ids[part, :t], attention_mask[part, :t], image_tokens[part]).pooler_output
            logits.append(self.head(pooled).squeeze(-1))
        return torch.cat(logits)[torch.cat(parts).argsort()]  # back in the input order

    def encode(self, input_ids: Tensor, attention_mask: Tensor, image_tokens: Tensor):
        """The BERT output over the pair: `last_hidden_state [B, L, d]` (caption word pieces at slots 1 .. T) and
        `pooler_output [B, d]`."""
        embeds, mask, types, positions = self.build_inputs(input_ids, attention_mask, image_tokens)
        self._choose_attention(embeds.device)
        return self.bert(inputs_embeds=embeds, attention_mask=mask, token_type_ids=types, position_ids=positions)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """`[CLS] caption [SEP]` alone (no image segment) -> `[B, d]` final [CLS] state, for text-embedding
        recovery (word-piece text side only)."""
        if self.text is not None:
            raise ValueError("encode_text reads word pieces; it does not apply to a joint encoder with a text side")
        b = input_ids.shape[0]
        cls = input_ids.new_full((b, 1), self.cls_token_id)
        sep = input_ids.new_full((b, 1), self.sep_token_id)
        ones = attention_mask.new_ones(b, 1)
        # [SEP] goes right after the caption's real tokens; padded slots after it stay masked.
        ids = torch.cat([cls, input_ids, sep], dim=1)
        mask = torch.cat([ones, attention_mask, attention_mask.new_zeros(b, 1)], dim=1)
        lengths = attention_mask.sum(1)
        ids[torch.arange(b), lengths + 1] = self.sep_token_id
        mask[torch.arange(b), lengths + 1] = 1
        self._choose_attention(ids.device)
        return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
