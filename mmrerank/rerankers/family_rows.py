"""Every family's benchmark rows (a `RerankerRows` each), imported so that configs can name them by short
`class_path`."""

from mmrerank.rerankers.edje.benchmark import EDJERows
from mmrerank.rerankers.mllm.benchmark import MLLMRows
from mmrerank.rerankers.presets import PresetRows
from mmrerank.rerankers.superglobal.reranker import SuperGlobalRows

__all__ = ["EDJERows", "MLLMRows", "PresetRows", "SuperGlobalRows"]
