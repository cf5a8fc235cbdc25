"""Benchmark EDJE's online throughput against BLIP ITM itself, BLIP-style online vision and uncompressed stored tokens.

The same (caption, image) pairs, scored four ways:

0. BLIP ITM, the real architecture: transformers `BlipForImageTextRetrieval` at BLIP-base shapes (`BlipConfig()`
   defaults: ViT-B/16 at 384 px, 577 tokens of width 768, and a 12-layer BERT-base text encoder cross-attending to
   them in every layer; random init), run through mmrerank's `BlipITMReranker` (vision tower, then the ITM pass and
   `softmax(ITM)[1]`) on every candidate image, as reranking a caption's candidates needs.

One joint encoder (MiniLM-L12-H384-sized `BertConfig`: 12 layers, width 384, 12 heads, intermediate 1536, random
init) serves the other three:

1. BLIP-style online: a ViT-L/16 at 384 px (timm `vit_large_patch16_384`, `pretrained=False`: 24 layers, width 1024,
   16 heads, 576 patches) encodes every candidate image, a linear projection 1024 -> 384 follows, and the joint
   encoder reads all 576 tokens.
2. Stored uncompressed tokens: 576 x 384 fp16 per image read from a `TokenStore`, then the joint encoder over 576.
3. EDJE: 64 x 384 bf16 compressed tokens per image read from a `TokenStore`, then the joint encoder over 64.

Methods 1 and 2 use the same encoder weights; method 3 shares them too (its position table is the first rows of the
same table). Captions are ~20 word pieces. Each method runs one untimed warm-up batch, then its pairs are timed
(wall clock, including the store reads for 2 and 3; image decoding, resizing and tokenizing for 0 and 1 are not
counted, which only flatters them) in rounds that alternate the methods, keeping each method's fastest round (the
machine is shared with other jobs). Slow methods 0 and 1 are timed on fewer pairs. Weights are random: only speed
is measured. Run from the repo root:

    python scripts/bench_edje_throughput.py                       # fp32, 4 / 4 / 16 / 64 pairs
    python scripts/bench_edje_throughput.py --dtype bfloat16      # bf16 autocast compute

It prints a Markdown table (command, machine, torch version, threads, date) ready to paste into notes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable

import torch
from common import cpu_model  # scripts/common.py (scripts/ is on sys.path)
from torch import Tensor, nn

from mmrerank.rerankers.blip import BlipITMReranker
from mmrerank.rerankers.edje import JointEncoder, TokenStore, TokenStoreWriter, footprint, minilm_config, precompute

WORDS = ("a man woman dog cat red blue green small large old young walks runs sits stands near under over "
         "beside the street park beach table window car bike tree house water snow grass field city road").split()
PATCHES, VIT_WIDTH, WIDTH, M_EDJE, IMAGE_PX = 576, 1024, 384, 64, 384
BLIP_TOKENS, CLS, SEP = 577, 101, 102  # BLIP-base: 576 patches + the class token; bert-base-uncased [CLS], [SEP]


def build_vit() -> nn.Module:
    """ViT-L/16 at 384 px with random weights (no download), from timm."""
    try:
        import timm

        return timm.create_model("vit_large_patch16_384", pretrained=False, num_classes=0)
    except ImportError:
        raise SystemExit("timm is needed for the ViT-L/16-384 tower (pip install timm)") from None


def build_blip() -> BlipITMReranker:
    """BLIP ITM at BLIP-base shapes with random weights (no download): `BlipConfig()`'s defaults are BLIP-base."""
    from transformers import BertTokenizer, BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor, BlipProcessor

    model = BlipForImageTextRetrieval(BlipConfig()).eval()
    # The processor is only there to make a complete reranker; the timed path starts from pixels and word pieces.
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    processor = BlipProcessor(image_processor=BlipImageProcessor(), tokenizer=BertTokenizer(vocab=vocab))
    return BlipITMReranker(model, processor)


def patch_tokens(vit: nn.Module, pixels: Tensor) -> Tensor:
    """`[B, 3, 384, 384]` -> `[B, 576, 1024]` patch tokens (the class token dropped)."""
    feats = vit.forward_features(pixels)
    return feats[:, getattr(vit, "num_prefix_tokens", 1):]


def time_pairs(n: int, batch: int, step: Callable[[int, int], Tensor], autocast: contextlib.AbstractContextManager,
               warm_up: bool) -> float:
    """Seconds to run `step(start, stop)` over `n` pairs in batches (after one untimed batch if `warm_up`)."""
    with torch.inference_mode(), autocast:
        if warm_up:
            step(0, min(batch, n))  # first-call allocations and kernel selection
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            step(start, min(start + batch, n))
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs-blip", type=int, default=4, help="pairs for method 0 (BLIP ITM, BLIP-base shapes)")
    p.add_argument("--pairs-online", type=int, default=4, help="pairs for method 1 (BLIP-style online ViT)")
    p.add_argument("--pairs-stored", type=int, default=16, help="pairs for method 2 (576 stored tokens)")
    p.add_argument("--pairs-edje", type=int, default=64, help="pairs for method 3 (EDJE, 64 stored tokens)")
    p.add_argument("--batch", type=int, default=4, help="pairs per forward pass")
    p.add_argument("--caption-tokens", type=int, default=20)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="compute dtype")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rounds", type=int, default=2, help="alternating timing rounds; the fastest counts")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"  # other jobs share the machine
    torch.manual_seed(args.seed)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if args.dtype == "bfloat16"
                else contextlib.nullcontext())
    n_max = max(args.pairs_blip, args.pairs_online, args.pairs_stored, args.pairs_edje)

    # One joint encoder; the m = 64 view shares its BERT (whose position table covers both layouts) and its head.
    joint576 = JointEncoder(minilm_config(), num_image_tokens=PATCHES, max_text_len=64).eval()
    joint64 = JointEncoder(minilm_config(num_hidden_layers=1), num_image_tokens=M_EDJE, max_text_len=64).eval()
    joint64.bert, joint64.head = joint576.bert, joint576.head
    vit, proj = build_vit().eval(), nn.Linear(VIT_WIDTH, WIDTH).eval()
    blip = build_blip()

    # The same captions for every method: `caption-tokens` word pieces each (ids from the BERT vocabulary range).
    ids = torch.randint(1000, 30000, (n_max, args.caption_tokens))
    mask = torch.ones_like(ids)
    pixels = torch.rand(max(args.pairs_online, args.pairs_blip), 3, IMAGE_PX, IMAGE_PX)
    # BLIP reads them as [CLS] caption [SEP] (bert-base-uncased ids; its vocabulary covers the 1000..30000 range)
    blip_ids = torch.cat([torch.full((n_max, 1), CLS), ids, torch.full((n_max, 1), SEP)], dim=1)
    blip_mask = torch.ones_like(blip_ids)

    with tempfile.TemporaryDirectory() as tmp:
        # Stored tokens (random values; the encoder does not care). fsync off: throwaway stores.
        gen = torch.Generator().manual_seed(args.seed)
        image_ids = [f"img{i:06d}" for i in range(n_max)]
        full = precompute(f"{tmp}/full", image_ids[:args.pairs_stored],
                          lambda i: torch.randn(len(i), PATCHES, WIDTH, generator=gen), m=PATCHES, d=WIDTH,
                          dtype="float16", shard_size=64, progress=False, fsync=False)
        edje = precompute(f"{tmp}/edje", image_ids[:args.pairs_edje],
                          lambda i: torch.randn(len(i), M_EDJE, WIDTH, generator=gen), m=M_EDJE, d=WIDTH,
                          dtype="bfloat16", shard_size=64, progress=False, fsync=False)
        full, edje = TokenStore(full.root), TokenStore(edje.root)  # fresh maps, as a reranking service would open

        def blip_itm(a: int, b: int) -> Tensor:
            rows = torch.arange(b - a)  # one image per pair: a caption's candidates are distinct images
            return blip.pair_scores(blip.encode_images(pixels[a:b]), rows, blip_ids[a:b], blip_mask[a:b], rows)

        def online(a: int, b: int) -> Tensor:
            return joint576(ids[a:b], mask[a:b], proj(patch_tokens(vit, pixels[a:b])))

        def stored(a: int, b: int) -> Tensor:
            return joint576(ids[a:b], mask[a:b], full[image_ids[a:b]].float())

        def compressed(a: int, b: int) -> Tensor:
            return joint64(ids[a:b], mask[a:b], edje[image_ids[a:b]].float())

        # Rounds alternate the methods and each keeps its fastest round: on a machine shared with other jobs, the
        # minimum is the estimate least disturbed by them, and alternation spreads slow spells over all methods.
        times: list[list[float]] = [[], [], [], []]
        for r in range(args.rounds):
            for k, (n, step) in enumerate([(args.pairs_blip, blip_itm), (args.pairs_online, online),
                                           (args.pairs_stored, stored), (args.pairs_edje, compressed)]):
                times[k].append(time_pairs(n, args.batch, step, autocast, warm_up=r == 0))
        t0, t1, t2, t3 = (min(t) for t in times)
        bytes_full, bytes_edje = full.bytes_per_image, edje.bytes_per_image

        # Store overhead (header + ids) for the paper configuration at N = 10,000; the data file is sparse here.
        with TokenStoreWriter(f"{tmp}/paper", [f"coco_{i:012d}" for i in range(10_000)], m=M_EDJE, d=WIDTH,
                              dtype="bfloat16", fsync=False):
            pass
        paper = footprint(f"{tmp}/paper")

    rate0, rate1 = args.pairs_blip / t0, args.pairs_online / t1
    rate2, rate3 = args.pairs_stored / t2, args.pairs_edje / t3
    bytes_pixels = IMAGE_PX * IMAGE_PX * 3
    command = " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable), *sys.argv])
    print(f"### EDJE throughput benchmark ({datetime.date.today().isoformat()})\n")
    print(f"- command: `{command}`")
    print(f"- machine: {os.cpu_count()} CPU cores ({cpu_model()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"- compute: {args.dtype}{' (CPU autocast)' if args.dtype == 'bfloat16' else ''}; batch {args.batch} "
          f"pairs; captions {args.caption_tokens} word pieces; random weights; one warm-up batch per method, untimed; "
          f"{args.rounds} alternating rounds, fastest round reported (load average at start {load})")
    print("- joint encoder: MiniLM-L12-H384-sized BertConfig (12 layers, width 384, 12 heads, intermediate 1536), "
          f"sequence 1 + {args.caption_tokens} + 1 + m + 1")
    print("- BLIP ITM: transformers `BlipForImageTextRetrieval(BlipConfig())` (BLIP-base: ViT-B/16-384, 577 tokens, "
          "BERT-base with cross-attention), random init, via `BlipITMReranker`; captions "
          f"1 + {args.caption_tokens} + 1")
    print("- online vision: timm `vit_large_patch16_384` (pretrained=False), 576 patches -> Linear(1024, 384)\n")
    print("| method | image tokens | pairs timed | seconds | pairs/s | bytes / image | EDJE speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| (0) BLIP ITM: BlipForImageTextRetrieval, BLIP-base shapes | {BLIP_TOKENS} | {args.pairs_blip} | "
          f"{t0:.2f} | {rate0:.2f} | {bytes_pixels:,} (raw RGB pixels) | {rate3 / rate0:.1f}x |")
    print(f"| (1) BLIP-style: ViT-L/16-384 online + joint | {PATCHES} | {args.pairs_online} | {t1:.2f} | "
          f"{rate1:.2f} | {bytes_pixels:,} (raw RGB pixels) | {rate3 / rate1:.1f}x |")
    print(f"| (2) stored 576 x 384 fp16 + joint | {PATCHES} | {args.pairs_stored} | {t2:.2f} | {rate2:.2f} | "
          f"{bytes_full:,} | {rate3 / rate2:.1f}x |")
    print(f"| (3) EDJE: stored 64 x 384 bf16 + joint | {M_EDJE} | {args.pairs_edje} | {t3:.2f} | {rate3:.2f} | "
          f"{bytes_edje:,} | 1.0x |")
    print(f"\nRatios: (3)/(0) = {rate3 / rate0:.1f}x (EDJE over BLIP ITM itself), "
          f"(3)/(1) = {rate3 / rate1:.1f}x (target >= 30), (3)/(2) = {rate3 / rate2:.1f}x (target >= 3); "
          f"storage (2)/(3) = {bytes_full / bytes_edje:.1f}x.")
    print(f"\nToken store, paper configuration (N = 10,000, 64 x 384 bf16): data {paper['data']:,} B "
          f"({paper['data'] // 10_000:,} B / image), header + ids {paper['overhead']:,} B "
          f"= {100 * paper['overhead'] / paper['data']:.3f} % overhead.")


if __name__ == "__main__":
    main()
