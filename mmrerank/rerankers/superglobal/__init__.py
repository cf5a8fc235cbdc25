"""SuperGlobal (Shao et al., ICCV 2023): GeM+/Regional-GeM/Scale-GeM pooling and training-free reranking."""

from mmrerank.rerankers.superglobal.pooling import gem_plus, regional_gem, scale_gem
from mmrerank.rerankers.superglobal.rerank import reference_rerank, rerank, rerank_candidates

__all__ = ["gem_plus", "reference_rerank", "regional_gem", "rerank", "rerank_candidates", "scale_gem"]
