"""Page reranking on the synthetic MMDocIR stand-in: BM25 first stage vs the tiny MLLM yes/no reranker trained
here on CPU with SFT and with contrastive loss. Prints page Recall@1/3/5 (macro and micro), training times, and
the reranker fused with BM25 (`final = reranker score + alpha * min-max normalised BM25`) for each `--alphas`.

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

from mmrerank.datasets.mmdocir import load_mmdocir
from mmrerank.datasets.synthetic.pages import PagesConfig, ensure_pages
from mmrerank.evaluation import Report, evaluate_rows
from mmrerank.evaluation.suites import PageTask
from mmrerank.rerankers.fusion import Fused, Memoized
from mmrerank.rerankers.mllm.data import PageGroupsDataModule
from mmrerank.rerankers.mllm.module import MLLMRerankerModule, MLLMSettings, MLLMTraining, TinyVLM, page_text
from mmrerank.rerankers.mllm.tiny import ensure_tiny_vlm
from mmrerank.retrieval.pages import bm25_page_scores


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps per loss")
    parser.add_argument("--depth", type=int, default=5, help="BM25 pages reranked per question")
    parser.add_argument("--work", default="outputs/bench_mllm_pages", help="folder for the tiny model and logs")
    parser.add_argument("--losses", nargs="+", default=["sft", "contrastive"])
    parser.add_argument("--train-docs", type=int, default=60, help="training documents (seed 0), 4 questions each")
    parser.add_argument("--val-docs", type=int, default=20, help="evaluation documents (seed 1), 4 questions each")
    parser.add_argument("--hidden", type=int, default=64, help="tiny language model width")
    parser.add_argument("--layers", type=int, default=2, help="tiny language model depth")
    parser.add_argument("--negatives", type=int, default=3, help="BM25 hard negatives per training question")
    parser.add_argument("--batch-size", type=int, default=4, help="groups per step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--schedule", default="constant", choices=["constant", "cosine"])
    parser.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    parser.add_argument("--alphas", type=float, nargs="*", default=[], help="BM25 fusion weights to report")
    parser.add_argument("--vocab", type=int, default=0,
                        help="train the tiny tokenizer with this vocabulary size on the training documents' text and "
                             "questions too (0: the generated text only)")
    return parser.parse_args()


def train(args: argparse.Namespace, loss: str, report: Report) -> MLLMRerankerModule:
    """Train one tiny reranker with `loss` on the training documents; log its wall time in `report`."""
    L.seed_everything(0, verbose=False)
    model = Path(args.work) / f"tiny-qwen2-vl-h{args.hidden}-l{args.layers}-v{args.vocab}-d{args.train_docs}"
    if args.vocab:
        ensure_tiny_vlm(model, hidden=args.hidden, layers=args.layers, vocab_size=args.vocab,
                        corpus=page_text(PagesConfig(seed=0, documents=args.train_docs)))
    module = MLLMRerankerModule(str(model), MLLMSettings(use_ocr=True), [(loss, 1.0)],
                                MLLMTraining(lr=args.lr, schedule=args.schedule, warmup_steps=args.warmup),
                                tiny=TinyVLM(build=True, hidden=args.hidden, layers=args.layers))
    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    data = PageGroupsDataModule(PagesConfig(seed=0, documents=args.train_docs),
                                PagesConfig(seed=1, documents=args.val_docs), negatives=args.negatives,
                                batch_size=args.batch_size)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    report.timings[f"train {loss}"] = time.perf_counter() - start
    return module


def main() -> None:
    args = parse_args()
    folder = ensure_pages(PagesConfig(seed=1, documents=args.val_docs))
    data = load_mmdocir(folder / "MMDocIR_annotations.jsonl", folder / "MMDocIR_pages.parquet")
    report = Report(f"synthetic pages (val: {args.val_docs} documents, {len(data.questions)} questions)")
    run, task = data.per_document_run(bm25_page_scores(data)), PageTask(data)
    evaluate_rows(report, task, run, first_stage="BM25")
    for loss in args.losses:
        module = train(args, loss, report)
        reranker = Memoized(module.reranker.eval())  # the fused rows reuse its scores: no second model pass
        rows = {f"BM25 + MLLM ({loss}, top {args.depth})": reranker}
        rows.update({f"BM25 + MLLM ({loss}, top {args.depth}, alpha {alpha:g})": Fused(reranker, alpha, "minmax")
                     for alpha in args.alphas})
        evaluate_rows(report, task, run, rows, args.depth, progress=False, first_stage="BM25")  # timings: pages <row>
        print(report.to_markdown(), file=sys.stderr, flush=True)  # partial results while the next loss trains
    print(f"- command: `python {shlex.join(sys.argv)}`")
    print(f"- machine: 2 CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n")
    print(report.to_markdown())


if __name__ == "__main__":
    main()
