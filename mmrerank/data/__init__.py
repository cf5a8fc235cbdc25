"""Data model, the built-in synthetic benchmark and real-dataset loaders."""

from mmrerank.data.dataset import ImageArray, ImageFiles, ImageTextDataset, RetrievalTask, Texts
from mmrerank.data.run import PAD, Qrels, Run

__all__ = ["PAD", "ImageArray", "ImageFiles", "ImageTextDataset", "Qrels", "RetrievalTask", "Run", "Texts"]
