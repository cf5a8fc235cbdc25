"""Benchmarks: the built-in synthetic ones and loaders of the real ones (with their own metrics).

The image-text sources are exported here by their short `class_path` names (`Synthetic`, `Flickr30k`, `COCO`,
`Karpathy`, `CaptionTable`), the document-page ones (`SyntheticPages`, `MMDocIR`), the image-to-image ones
(`SyntheticInstances`, `Revisited`) and the ViDoRe ones (`ViDoReFiles`, `ViDoReHub`, `SyntheticViDoRe`).
"""

from mmrerank.datasets.imagetext import ImageTextDataset
from mmrerank.datasets.instance_sources import InstanceSource, Revisited, SyntheticInstances
from mmrerank.datasets.page_sources import MMDocIR, PageSource, SyntheticPages
from mmrerank.datasets.sources import COCO, CaptionTable, Flickr30k, ImageTextSource, Karpathy, Synthetic
from mmrerank.datasets.synthetic.vidore import SyntheticViDoRe
from mmrerank.datasets.vidore import ViDoReFiles, ViDoReHub, ViDoReSource

__all__ = ["COCO", "CaptionTable", "Flickr30k", "ImageTextDataset", "ImageTextSource", "InstanceSource", "Karpathy",
           "MMDocIR", "PageSource", "Revisited", "Synthetic", "SyntheticInstances", "SyntheticPages", "SyntheticViDoRe",
           "ViDoReFiles", "ViDoReHub", "ViDoReSource"]
