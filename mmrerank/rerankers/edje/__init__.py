"""EDJE (Taraday et al. 2025): offline token compression, a memory-mapped token store, an online joint encoder.

- `TokenCompressionAdapter`: patch tokens `[B, P, D_v]` -> m compressed tokens `[B, m, d]` (offline, once per image).
- `TokenStore` / `TokenStoreWriter` / `write_token_store`: the compressed tokens on disk, `m * d * 2` bytes per image.
- `JointEncoder`: a compact BERT over `[CLS] caption [SEP] <image> x m [SEP]` -> one logit per pair (online).
- `VisionTokenSource`: the frozen vision tower giving patch tokens; `EDJE`: adapter + joint encoder + tokenizer, saved
  as a folder; `EDJEModule` (in `module.py`): its Lightning training; `EDJEReranker`: reranking from a token store.
"""

from mmrerank.rerankers.edje.adapter import OfficialCompressionAdapter, TokenCompressionAdapter
from mmrerank.rerankers.edje.joint import (
    MINILM,
    JointEncoder,
    build_wordpiece_tokenizer,
    minilm_config,
    tokenize,
)
from mmrerank.rerankers.edje.model import EDJE, EDJEConfig
from mmrerank.rerankers.edje.reranker import EDJEReranker, precompute_images
from mmrerank.rerankers.edje.store import (
    CorruptTokenStoreError,
    IncompleteTokenStoreError,
    StaleTokenStoreError,
    TokenStore,
    TokenStoreError,
    TokenStoreLockedError,
    canonical_dtype,
    footprint,
)
from mmrerank.rerankers.edje.vision import VisionTokenSource
from mmrerank.rerankers.edje.writer import TokenStoreWriter, write_token_store

__all__ = [
    "EDJE",
    "EDJEConfig",
    "EDJEReranker",
    "VisionTokenSource",
    "precompute_images",
    "MINILM",
    "CorruptTokenStoreError",
    "IncompleteTokenStoreError",
    "StaleTokenStoreError",
    "TokenStoreLockedError",
    "JointEncoder",
    "OfficialCompressionAdapter",
    "TokenCompressionAdapter",
    "TokenStore",
    "TokenStoreError",
    "TokenStoreWriter",
    "build_wordpiece_tokenizer",
    "canonical_dtype",
    "footprint",
    "minilm_config",
    "write_token_store",
    "tokenize",
]
