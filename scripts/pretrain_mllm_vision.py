"""Pretrain the tiny Qwen2-VL for the synthetic image-text reranker and save it where the config expects it.

    OMP_NUM_THREADS=1 python scripts/pretrain_mllm_vision.py            # -> checkpoints/tiny-qwen2-vl-pretrained
    mmrerank fit --config configs/mllm/synthetic_images.yaml            # starts from that folder

Stage 1 distils the first stage's image tower into the VLM's vision tower (its merged visual tokens, plus a
CLIP-style caption InfoNCE); stage 2 trains the language model to caption the images in the reranker's prompt.
See `mmrerank.rerankers.mllm.vision_pretrain`.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, fields
from pathlib import Path

from mmrerank.datasets.synthetic import load_synthetic
from mmrerank.rerankers.mllm.vision_pretrain import PretrainConfig, pretrain_vlm


def _flag(value: str) -> bool:
    """`--itm-twins false` must mean False (argparse's `bool` would read any non-empty string as True)."""
    return value.lower() in ("1", "true", "yes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="checkpoints/tiny-qwen2-vl-pretrained")
    parser.add_argument("--first-stage", default="mmrerank-tiny-resnet")
    parser.add_argument("--checkpoint", default="checkpoints/first_stage/mmrerank-tiny-resnet-synthetic.safetensors")
    for f in fields(PretrainConfig):  # every PretrainConfig setting as a flag, e.g. --caption-steps 0
        kind = _flag if isinstance(f.default, bool) else type(f.default)
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    args = parser.parse_args()
    config = PretrainConfig(**{f.name: getattr(args, f.name) for f in fields(PretrainConfig)})
    data = load_synthetic("train", relevance=False, progress=False)
    start = time.perf_counter()
    history = pretrain_vlm(args.output, data, args.first_stage, args.checkpoint, config)
    history["seconds"]["total"] = time.perf_counter() - start
    history["config"] = asdict(config)
    (Path(args.output) / "pretrain_history.json").write_text(json.dumps(history, indent=1))
    print(f"saved {args.output} in {history['seconds']['total']:.0f} s: {history['seconds']}")


if __name__ == "__main__":
    main()
