"""Page reranking on the synthetic MMDocIR stand-in: BM25 first stage vs the tiny MLLM yes/no reranker trained
here on CPU with SFT and with contrastive loss. Prints page Recall@1/3/5 (macro and micro) and training times.

    python scripts/bench_mllm_pages.py --steps 150
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import torch

from mmrerank.data.datamodules import PageGroupsDataModule
from mmrerank.data.mmdocir import load_mmdocir
from mmrerank.data.synthetic.pages import PagesConfig, ensure_pages
from mmrerank.evaluation import Report, bm25_page_scores, evaluate_pages, rerank_pages
from mmrerank.rerankers.mllm.module import MLLMRerankerModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps per loss")
    parser.add_argument("--depth", type=int, default=5, help="BM25 pages reranked per question")
    parser.add_argument("--work", default="outputs/bench_mllm_pages", help="folder for the tiny model and logs")
    parser.add_argument("--losses", nargs="+", default=["sft", "contrastive"])
    args = parser.parse_args()
    work = Path(args.work)
    train, val = PagesConfig(seed=0, documents=60), PagesConfig(seed=1, documents=20)
    folder = ensure_pages(val)
    data = load_mmdocir(folder / "MMDocIR_annotations.jsonl", folder / "MMDocIR_pages.parquet")
    report = Report("synthetic pages (val: 20 documents, 80 questions)")
    bm25 = bm25_page_scores(data)
    evaluate_pages(report, data, bm25, "BM25")
    for loss in args.losses:
        L.seed_everything(0, verbose=False)
        module = MLLMRerankerModule(str(work / "tiny-qwen2-vl"), build_tiny=True, loss=loss, use_ocr=True, lr=1e-3)
        trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            limit_val_batches=0)
        start = time.perf_counter()
        trainer.fit(module, datamodule=PageGroupsDataModule(train, val, negatives=3, batch_size=4))
        report.timings[f"train {loss}"] = time.perf_counter() - start
        module.reranker.eval()
        start = time.perf_counter()
        scores = rerank_pages(module.reranker, data, bm25, args.depth, progress=False)
        report.timings[f"rerank {loss}"] = time.perf_counter() - start
        evaluate_pages(report, data, scores, f"BM25 + MLLM ({loss}, top {args.depth})")
    print(f"- command: `python {shlex.join(sys.argv)}`")
    print(f"- machine: 2 CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n")
    print(report.to_markdown())


if __name__ == "__main__":
    main()
