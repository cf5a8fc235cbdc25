"""Peak resident memory of an EDJE fit whose patch-token cache is many times larger than a batch's reads.

`EDJEModule` keeps the frozen vision source's `[N, P, D]` fp16 patch tokens of every image on disk
(`mmrerank.rerankers.edje.patches`) and reads only each batch's images. This script builds a synthetic training set
whose patch cache is large (a local SigLIP vision tower with random weights at 256 px with 8 px patches and no
transformer layer, so that encoding is cheap: P = 1024 tokens of width D = 256, 512 KiB per image; 3,000 images =
1.5 GiB), then runs a few training steps, each fit in a fresh process,
and records `ru_maxrss` (peak RSS) right before `trainer.fit` and after it:

- `cold`: the cache is written during the fit (encoding, writing, checksums);
- `warm`: the cache is there; the fit checks it and reads it batch by batch (the usual case: a sweep's later points);
- `in-memory`: as `warm`, then the whole cache is loaded into tensors (what the module did before: the control,
  showing the measurement sees a materialised cache).

The data (synthetic scenes, a random first stage, mined hard negatives) is prepared before the first
measurement, so the growth is the fit's. Run from the repo root (about 5 minutes on 2 shared cores):

    OMP_NUM_THREADS=1 python scripts/bench_edje_patch_memory.py            # 3,000 images, 5 steps
    OMP_NUM_THREADS=1 python scripts/bench_edje_patch_memory.py --images 600 --steps 2   # a quick look

It prints a Markdown table (command, machine, date) ready to paste into notes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from common import cpu_model  # scripts/common.py (scripts/ is on sys.path)

PHASES = ("cold", "warm", "in-memory")


def rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_tower(folder: Path, image_size: int, patch: int, width: int) -> None:
    """A SigLIP vision tower with random weights and no layer (patch embedding and final norm) and its processor."""
    import torch
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    config = SiglipVisionConfig(hidden_size=width, intermediate_size=width, num_hidden_layers=0, num_attention_heads=4,
                                image_size=image_size, patch_size=patch, vision_use_head=False)
    SiglipVisionModel(config).save_pretrained(folder)
    SiglipImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(folder)


def run_phase(args: argparse.Namespace) -> dict:
    """One fit in this process; returns its measurements."""
    import lightning as L
    import torch

    from mmrerank.datasets.sources import Synthetic
    from mmrerank.datasets.synthetic import SyntheticConfig
    from mmrerank.rerankers.edje.data import EDJEDataModule
    from mmrerank.rerankers.edje.model import EDJEConfig
    from mmrerank.rerankers.edje.module import EDJEModule, EDJETraining
    from mmrerank.retrieval.first_stage import FirstStage

    work = Path(args.work)
    synthetic = SyntheticConfig(seed=0, train_images=args.images, val_images=32, test_images=2,
                                root=str(work / "synthetic"))
    data = EDJEDataModule(train=Synthetic("train", synthetic), val=Synthetic("val", synthetic),
                          first_stage=FirstStage(checkpoint=str(work / "first_stage")), n=3, hard=2, pool=4,
                          mined=8, batch_size=args.batch_size)
    data.setup("fit")  # scenes, first-stage embeddings, mined negatives: before the first measurement

    class InMemory(EDJEModule):
        def setup(self, stage: str) -> None:
            super().setup(stage)
            self.patches = {name: tokens[:] for name, tokens in self.patches.items()}  # the whole cache as tensors

    module_class = InMemory if args.phase == "in-memory" else EDJEModule
    torch.manual_seed(0)
    config = EDJEConfig(vision=f"hf:{work / 'tower'}", num_image_tokens=16, adapter_heads=4, adapter_mlp_ratio=2,
                        joint={"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                               "intermediate_size": 128})
    module = module_class(config, training=EDJETraining(vocab_size=300, lr=1e-3, warmup_steps=1))
    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, default_root_dir=str(work / "trainer"))
    before = rss_mib()
    trainer.fit(module, datamodule=data)
    after = rss_mib()
    tokens = module.patches["train"]
    cache_bytes = tokens.nelement() * 2 if isinstance(tokens, torch.Tensor) else tokens.nbytes
    k = 1 + data.n
    return {"phase": args.phase, "images": len(tokens), "shape": list(tokens.shape), "cache_mib": cache_bytes / 2**20,
            "batch_read_mib": 2 * args.batch_size * k * tokens.shape[1] * tokens.shape[2] * 2 / 2**20,
            "rss_before_mib": before, "rss_after_mib": after, "growth_mib": after - before, "steps": args.steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=3000, help="training images (512 KiB of patch tokens each)")
    parser.add_argument("--steps", type=int, default=5, help="training steps per fit")
    parser.add_argument("--batch_size", type=int, default=8, help="captions per batch (each: 2 groups of 4 pairs)")
    parser.add_argument("--work", default=None, help="folder for the data and the cache (default: a temp folder)")
    parser.add_argument("--phase", choices=PHASES, default=None, help=argparse.SUPPRESS)  # one fit, JSON out
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args)))
        return

    with tempfile.TemporaryDirectory(prefix="bench_edje_patch_memory-", dir=args.work) as work:
        from mmrerank.retrieval.clip import CLIPEncoder

        CLIPEncoder("mmrerank-tiny-resnet").save_pretrained(Path(work) / "first_stage")
        build_tower(Path(work) / "tower", image_size=256, patch=8, width=256)
        env = dict(os.environ, MMRERANK_CACHE=str(Path(work) / "cache"))
        rows = []
        for phase in PHASES:
            command = [sys.executable, __file__, f"--images={args.images}", f"--steps={args.steps}",
                       f"--batch_size={args.batch_size}", f"--work={work}", f"--phase={phase}"]
            out = subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(f"{phase}: {rows[-1]}", file=sys.stderr)

    print(f"`OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python {shlex.join(sys.argv)}` on "
          f"{cpu_model()} ({os.cpu_count()} CPUs), {datetime.date.today()}; patch cache {rows[0]['shape']} fp16 "
          f"= {rows[0]['cache_mib']:,.0f} MiB, at most {rows[0]['batch_read_mib']:,.1f} MiB read per step\n")
    print("| fit | peak RSS before fit (MiB) | after (MiB) | growth (MiB) | growth / cache |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['phase']} | {r['rss_before_mib']:,.0f} | {r['rss_after_mib']:,.0f} | {r['growth_mib']:,.0f} | "
              f"{r['growth_mib'] / r['cache_mib']:.2f} |")


if __name__ == "__main__":
    main()
