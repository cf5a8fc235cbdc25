"""The published BLIP / BLIP-2 ITM checkpoints, by hub id (`load_reranker("Salesforce/blip-itm-base-coco")`).

Licences from each model card's metadata (huggingface.co/Salesforce/<name>): `bsd-3-clause` for the BLIP ITM
uploads, `mit` for blip2-itm-vit-g. The Flickr30k uploads were pushed with only `config.json` and the weights
(blip-itm-base-flickr at 97a67e7 has no tokenizer or preprocessor files), so when a checkpoint has no processor it is
read from the COCO upload of the same size (the same bert-base-uncased tokenizer and 384 px `BlipImageProcessor`).
"""

from __future__ import annotations

from typing import Any

from mmrerank.rerankers.base import Reranker
from mmrerank.rerankers.preset import Preset


def build_blip(name_or_path: str, **options: Any) -> Reranker:
    from mmrerank.rerankers.blip.reranker import BlipITMReranker

    return BlipITMReranker.from_pretrained(name_or_path, **options)


def build_blip2(name_or_path: str, **options: Any) -> Reranker:
    from mmrerank.rerankers.blip.reranker import Blip2ITMReranker

    return Blip2ITMReranker.from_pretrained(name_or_path, **options)


RERANKS = "images for a caption (t2i), captions for an image (i2t)"
BLIP_SCORE = ("softmax(ITM logits)[1] at the [CLS] output (protocol='lavis': ITM logit 1 with [ENC] at position 0 "
              "+ ITC cosine)")
BLIP2_SCORE = ("softmax(ITM logits averaged over the 32 query outputs)[1] (protocol='lavis': the averaged logit 1 "
               "+ the best query's ITC cosine)")


def blip_preset(size: str, data: str) -> Preset:
    name = f"Salesforce/blip-itm-{size}-{data}"
    options = {"processor_path": f"Salesforce/blip-itm-{size}-coco"} if data == "flickr" else {}
    return Preset(name=name, family="blip", reranks=RERANKS, score=BLIP_SCORE, licence="bsd-3-clause",
                  build=build_blip, tasks=("t2i", "i2t"), options=options)


PRESETS: dict[str, Preset] = {
    p.name: p for p in [
        *(blip_preset(size, data) for data in ("coco", "flickr") for size in ("base", "large")),
        Preset(name="Salesforce/blip2-itm-vit-g", family="blip", reranks=RERANKS, score=BLIP2_SCORE, licence="mit",
               build=build_blip2, tasks=("t2i", "i2t")),
    ]
}
