"""Benchmarks: the built-in synthetic ones and loaders of the real ones (with their own metrics).

The image-text sources are exported here by their short `class_path` names (`Synthetic`, `Flickr30k`, `COCO`,
`Karpathy`, `CaptionTable`), the ViDoRe ones likewise (`ViDoReFiles`, `ViDoReHub`, `SyntheticViDoRe`).
"""

from mmrerank.datasets.imagetext import ImageTextDataset
from mmrerank.datasets.sources import COCO, CaptionTable, Flickr30k, ImageTextSource, Karpathy, Synthetic
from mmrerank.datasets.synthetic.vidore import SyntheticViDoRe
from mmrerank.datasets.vidore import ViDoReFiles, ViDoReHub, ViDoReSource

__all__ = ["COCO", "CaptionTable", "Flickr30k", "ImageTextDataset", "ImageTextSource", "Karpathy", "Synthetic",
           "SyntheticViDoRe", "ViDoReFiles", "ViDoReHub", "ViDoReSource"]
