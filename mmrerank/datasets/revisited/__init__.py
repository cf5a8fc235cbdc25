"""The Revisited Oxford and Paris landmark benchmarks (ROxford5k, RParis6k): their files (`dataset`) and their
protocol's scores (`metrics`)."""

from mmrerank.datasets.revisited.dataset import DATASETS, PROTOCOLS, RevisitedDataset, load_revisited, pixel_box
from mmrerank.datasets.revisited.metrics import (
    RevisitedTask,
    protocol_relevance,
    revisited_map,
    revisited_per_query,
    revisited_qrels,
)

__all__ = ["DATASETS", "PROTOCOLS", "RevisitedDataset", "RevisitedTask", "load_revisited", "pixel_box",
           "protocol_relevance", "revisited_map", "revisited_per_query", "revisited_qrels"]
