"""Loaders for real image-text datasets: COCO and Flickr30k (Karpathy splits), and captioned image tables.

Every loader returns an `ImageTextDataset` whose images are `ImageFiles`: paths on disk, or encoded bytes
held in memory with a name for error messages (parquet and hub rows). Images are decoded only when read.

* `load_karpathy_json`: the Karpathy split files (`dataset_coco.json`, `dataset_flickr30k.json`) with the
  images on disk (COCO: 5,000 test images x 25,000 captions; Flickr30k: 1,000 x 5,000).
* `load_hub_flickr30k`, `load_hub_coco`: the same splits through `datasets.load_dataset` (needs the network
  or a filled Hugging Face cache).
* `load_captions_table`: your own data, as a parquet file, a `datasets.Dataset`, or an imagefolder directory.

All of them go through one conversion (`_table_to_dataset`), so ids, caption order and error handling agree.

Ids are strings. Image ids: the COCO id (`cocoid`) for COCO, the Flickr photo id (the file name's stem, e.g.
`1000092795`) for Flickr30k, an id column or the row number for tables. Caption ids: the Karpathy `sentid`,
a caption-id column, or `"{image_id}#{j}"`. Every image keeps all of its captions, in their stored order,
whitespace-stripped; blank captions are dropped with a warning naming their ids. A null (or NaN, or blank) id is
an error naming the record, never the string `'None'`.

Errors: a missing file -> `FileNotFoundError`; a missing column -> `ValueError` listing the columns there are;
an unknown split, a truncated JSON file or a malformed record (a Karpathy sentence without `raw` / `sentid`, an
image without `cocoid`, a null `filename`) -> `ValueError` naming the file and the record; a missing or
undecodable image -> `ImageLoadError` naming it, unless `skip_corrupt=True`, which warns and drops the image with
its captions. With `verify=True` (the default)
every image is decoded once at load to find the bad ones up front: about 10-20 ms an image, so a minute or
so for the 5,000 COCO test images. `verify=False` skips that; a bad image then raises when it is read.
"""

from mmrerank.datasets.loaders.hub import FLICKR30K_REPO, FLICKR30K_REVISION, load_hub_coco, load_hub_flickr30k
from mmrerank.datasets.loaders.karpathy import load_karpathy_json
from mmrerank.datasets.loaders.tables import load_captions_table

__all__ = ["FLICKR30K_REPO", "FLICKR30K_REVISION", "load_captions_table", "load_hub_coco", "load_hub_flickr30k",
           "load_karpathy_json"]
