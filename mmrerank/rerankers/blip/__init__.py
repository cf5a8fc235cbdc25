"""BLIP and BLIP-2 image-text matching rerankers (transformers checkpoints), scored as their cards or as LAVIS do."""

from mmrerank.rerankers.blip.reranker import (
    PROTOCOLS,
    Blip2ITMReranker,
    BlipITMReranker,
    ITMReranker,
    pre_caption,
)

__all__ = ["PROTOCOLS", "Blip2ITMReranker", "BlipITMReranker", "ITMReranker", "pre_caption"]
