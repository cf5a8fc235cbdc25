"""MLLM rerankers: a vision-language model's True/False answer as the relevance score (MonoQwen2-VL style)."""

from mmrerank.rerankers.mllm.reranker import (
    DEFAULT_PROMPT,
    MLLMReranker,
    MLLMRerankerConfig,
    Page,
    PairOutput,
    as_page,
    resolve_label_ids,
)
from mmrerank.rerankers.mllm.tiny import build_tiny_vlm

__all__ = ["DEFAULT_PROMPT", "MLLMReranker", "MLLMRerankerConfig", "Page", "PairOutput", "as_page", "build_tiny_vlm",
           "resolve_label_ids"]
