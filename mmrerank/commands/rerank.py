"""`mmrerank rerank`: rerank a user's own first-stage run file with any reranker, resumably.

The run, queries and corpus are paired by id, never by position: every query and document id the run names must be
in the queries and corpus files, or the command stops before the reranker is built, naming the first missing ids
and the file they were looked for in. The queries are then reranked in shards of `shard_size`; each finished
shard's run is written (atomically) under a work folder beside the output, so a rerun after an interruption
scores only the shards that are missing. Under torchrun each rank reranks a share of the shards and rank 0 joins
them into the output.
"""

from __future__ import annotations

import importlib
import json
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmrerank.core import distributed
from mmrerank.core.deprecation import renamed_arguments
from mmrerank.core.io import atomic_write_json
from mmrerank.core.items import Items, RetrievalTask
from mmrerank.core.metrics import evaluate, parse_measure
from mmrerank.core.progress import format_seconds, on_terminal
from mmrerank.core.run import Qrels, Run, id_rows
from mmrerank.datasets.files import read_items
from mmrerank.evaluation.loop import DEFAULT_MEASURES, FIRST_STAGE
from mmrerank.evaluation.report import Report
from mmrerank.rerankers.base import Reranker
from mmrerank.rerankers.fusion import NORMALIZATIONS, Fused

WORK_SUFFIX = ".work"  # OUT.trec -> OUT.trec.work/, the finished shards of an interrupted rerank
MANIFEST = "manifest.json"


@renamed_arguments(depth="rerank_depth")
def rerank(run: str, queries: str, corpus: str, reranker: str | Reranker, output: str, rerank_depth: int = 20,
           qrels: str | None = None, measures: list[str] | None = None, alpha: float = 0.0,
           normalize: str = "none", device: str = "auto", batch_size: int = 64, shard_size: int = 1000,
           progress: bool = True) -> Run:
    """Rerank the top `rerank_depth` candidates of each query of a TREC run file and write the reranked run.

    Args:
        run: the first stage's run: a TREC run file (`qid Q0 docid rank score tag`) or a JSONL file of
            `{"query_id", "doc_id", "score"}` lines.
        queries: the queries: a TSV of `id<TAB>text`, a JSONL, a folder of query images (ids: file names without
            extension) or a caption table (its captions).
        corpus: the documents: a folder of images, a caption table (its images), a TSV of `id<TAB>text`, a JSONL,
            or a folder of PDFs (pages `<file>#<page>`, from 0) and page images.
        reranker: a preset's hub id, a folder mmrerank saved a reranker to, or a `Reranker` subclass by import
            path with its init args (`--reranker my.module.MyReranker --reranker.init_args.x 1`).
        output: the reranked TREC run to write; finished shards wait in `<output>.work/` until it is written.
        rerank_depth: candidates reranked per query (the others keep their first-stage order below them); `--depth`
            is its deprecated name.
        qrels: TREC qrels: then the first stage and the reranked run are scored and both rows printed.
        measures: what to score with `qrels` (default: Success@1, Success@5, Success@10, nDCG@10).
        alpha: fuse `reranker score + alpha * first-stage score` (0: the reranker alone).
        normalize: `none` or `minmax` (per query) for the first-stage scores fused with `alpha`.
        device: where a preset or saved reranker runs (`auto`, `cpu`, `cuda`, `cuda:1`); a class given by import
            path takes its own device among its init args.
        batch_size: (query, document) pairs per scoring call.
        shard_size: queries per shard of work (each finished shard is kept on disk until the output is written).
        progress: print progress lines with an ETA.

    Returns:
        The reranked run (on every rank).
    """
    measures = list(measures or DEFAULT_MEASURES)
    _check_arguments(rerank_depth, batch_size, shard_size, measures, normalize, output)
    task, first = load_task(run, queries, corpus, qrels)
    work = Path(str(output) + WORK_SUFFIX)
    _claim_work_folder(work, _manifest(run, queries, corpus, reranker, rerank_depth, alpha, normalize, shard_size))
    model = build_reranker(reranker, device)
    if alpha:
        model = Fused(model, alpha, normalize)
    shards = [list(range(s, min(s + shard_size, len(first)))) for s in range(0, len(first), shard_size)]
    pending = distributed.from_rank_zero(lambda: [i for i in range(len(shards)) if not _shard_path(work, i).is_file()])
    error = None
    try:
        _rerank_shards(model, first, task, rerank_depth, batch_size, shards, distributed.shard(pending), work, progress)
    except Exception as err:  # every rank stops together: see fail_together
        error = err
    distributed.fail_together(error)
    reranked = distributed.from_rank_zero(lambda: _join_shards(first, work, len(shards)))
    if distributed.is_rank_zero():
        reranked.write_trec(output)
        shutil.rmtree(work, ignore_errors=True)
        print(f"Wrote {output} ({len(reranked)} queries, top {rerank_depth} reranked by "
              f"{describe_reranker(reranker)}).")
        if qrels:
            print(score_table(Qrels.read_trec(qrels), {FIRST_STAGE: first, describe_reranker(reranker): reranked},
                              measures, f"rerank {task.name}"))
    return reranked


def _check_arguments(rerank_depth: int, batch_size: int, shard_size: int, measures: Sequence[str], normalize: str,
                     output: str) -> None:
    for name, value in (("rerank_depth", rerank_depth), ("batch_size", batch_size), ("shard_size", shard_size)):
        if value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    for measure in measures:
        parse_measure(measure)
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"--normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if Path(output).is_dir():
        raise ValueError(f"--output {output} is a folder; give the run file to write (e.g. {output}/reranked.trec)")


# --- reading and aligning the inputs ------------------------------------------------------------------------------


def read_run(path: str | Path) -> Run:
    """A TREC run file or a JSONL file of `{query_id, doc_id, score}` lines, queries and candidates in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--run {path}: no such file")
    if path.suffix.lower() != ".jsonl":
        return Run.read_trec(path)
    out: dict[str, dict[str, float]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            qid = record.get("query_id", record.get("qid"))
            docid = record.get("doc_id", record.get("docid"))
            score = float(record["score"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise ValueError(f"{path}:{lineno}: expected {{\"query_id\": ..., \"doc_id\": ..., \"score\": number}}, "
                             f"got {line[:120]!r}") from None
        if qid is None or docid is None or score != score:
            raise ValueError(f"{path}:{lineno}: a query_id, a doc_id and a score that is a number are needed")
        out.setdefault(str(qid), {})[str(docid)] = score
    return Run.from_dict(out)


def load_task(run: str, queries: str, corpus: str, qrels: str | None = None) -> tuple[RetrievalTask, Run]:
    """The task of the queries and corpus files, and the run matched to it by id (`Run.align`): rows in the run
    file's order, candidates indexing the task's corpus. `Reranker.rerank` pairs the rows with the task's queries by
    id; the ids are checked here so that a mismatch stops before the reranker is built.

    Raises:
        ValueError: a run id that the queries or the corpus file does not have (the first few are named, with both
            files), an empty run, or a bad line in any file.
    """
    first = read_run(run)
    if not len(first):
        raise ValueError(f"--run {run}: no lines")
    query_items, corpus_items = read_items(queries, "queries"), read_items(corpus, "corpus")
    id_rows(first.query_ids, query_items.ids, f"--run {run}'s query ids", f"--queries {queries}")
    first = first.align(doc_ids=corpus_items.ids, name=f"--run {run}", corpus=f"--corpus {corpus}")
    judged = Qrels.read_trec(qrels) if qrels else Qrels.from_dict({})
    if qrels and not set(judged.query_ids) & set(first.query_ids):
        warnings.warn(f"--qrels {qrels} judges none of the run's queries (e.g. the run has {first.query_ids[0]!r}, "
                      f"the qrels {judged.query_ids[:1]}): every measure will be 0", stacklevel=2)
    name = f"{Path(corpus).name}/{direction(query_items, corpus_items)}"
    return RetrievalTask(name, query_items, corpus_items, judged), first


def direction(queries: Items, corpus: Items) -> str:
    """`t2i`, `i2t`, `i2i` or `t2t`, from the two sides' modalities."""
    return f"{queries.modality[0]}2{corpus.modality[0]}"


# --- the reranker -------------------------------------------------------------------------------------------------


def build_reranker(spec: str | Reranker | Mapping[str, Any], device: str = "auto") -> Reranker:
    """A reranker from a preset's hub id or a saved folder (`load_reranker`), or from a `class_path` / init args
    mapping (as jsonargparse parses `--reranker my.module.Class --reranker.init_args.x 1`); an instance is kept."""
    if isinstance(spec, Reranker):
        return spec
    if isinstance(spec, str) and _is_reranker_class(spec):  # a class path without init args parses as a string
        spec = {"class_path": spec}
    if isinstance(spec, Mapping):
        from jsonargparse import ArgumentParser

        parser = ArgumentParser()
        parser.add_argument("--reranker", type=Reranker)
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # the new name since 4.49
        return instantiate(parser.parse_object({"reranker": dict(spec)})).reranker
    from mmrerank.rerankers.presets import load_reranker

    return load_reranker(spec, device=device)


def _is_reranker_class(spec: str) -> bool:
    """Does `spec` (not a folder) name a `Reranker` subclass as `package.module.Class`?"""
    module, _, name = spec.rpartition(".")
    if not module or Path(spec).exists():
        return False
    try:
        found = getattr(importlib.import_module(module), name, None)
    except (ImportError, ValueError, TypeError):  # a hub id such as `org/model.v2` is no module
        return False
    return isinstance(found, type) and issubclass(found, Reranker)


def describe_reranker(spec: str | Reranker | Mapping[str, Any]) -> str:
    """A reranker's row name: the preset's id, the folder's name, or the class name."""
    if isinstance(spec, str) and _is_reranker_class(spec):
        return spec.rsplit(".", 1)[-1]
    if isinstance(spec, Reranker):
        return type(spec).__name__
    if isinstance(spec, Mapping):
        return str(spec.get("class_path", "reranker")).rsplit(".", 1)[-1]
    return Path(spec).name if Path(spec).is_dir() else str(spec)  # a saved folder by its name, a preset by its id


# --- shards: the resumable part -------------------------------------------------------------------------------------


def _manifest(run: str, queries: str, corpus: str, reranker: Any, rerank_depth: int, alpha: float, normalize: str,
              shard_size: int) -> dict:
    """What the shards in a work folder were computed from (a work folder of other inputs is never reused)."""
    stat = Path(run).stat()
    spec = describe_reranker(reranker) if isinstance(reranker, Reranker) else reranker
    return {"run": str(Path(run).resolve()), "run_size": stat.st_size, "run_mtime_ns": stat.st_mtime_ns,
            "queries": str(Path(queries).resolve()), "corpus": str(Path(corpus).resolve()),
            "reranker": json.loads(json.dumps(spec, default=str)), "rerank_depth": rerank_depth, "alpha": alpha,
            "normalize": normalize, "shard_size": shard_size}


def _claim_work_folder(work: Path, manifest: dict) -> None:
    """Start `work` with this manifest, or resume it if it holds the same one.

    Raises:
        ValueError: `work` holds shards of other inputs or settings (naming what differs).
    """
    def claim() -> None:
        path = work / MANIFEST
        done = len(list(work.glob("shard-*.trec")))
        if path.is_file() and done:  # a work folder without shards (a reranker that failed to load) is reused
            old = json.loads(path.read_text())
            changed = [k for k in manifest if old.get(k) != manifest[k]]
            if changed:
                raise ValueError(f"{work} holds the finished shards of an earlier rerank with another "
                                 f"{', '.join(changed)}; delete {work} to start over, or write to another --output")
            print(f"Resuming from {work}: {done} finished shard(s) are kept.", flush=True)
            return
        atomic_write_json(path, manifest)
    distributed.from_rank_zero(claim)


def _shard_path(work: Path, i: int) -> Path:
    return work / f"shard-{i:05d}.trec"


def _rerank_shards(model: Reranker, first: Run, task: RetrievalTask, rerank_depth: int, batch_size: int,
                   shards: Sequence[list[int]], mine: Sequence[int], work: Path, progress: bool) -> None:
    """Rerank this rank's pending shards, writing each one's run to its file when it is done."""
    rank, size = distributed.world()
    who = f"rank {rank}: " if size > 1 else ""
    total = sum(len(shards[i]) for i in mine)
    done, start = 0, time.perf_counter()
    for n, i in enumerate(mine, 1):
        rows = shards[i]
        reranked = model.rerank(first.select(rows), task, rerank_depth, batch_size, progress=progress and on_terminal())
        reranked.write_trec(_shard_path(work, i))
        done += len(rows)
        if progress:
            elapsed = time.perf_counter() - start
            print(f"{who}reranked shard {n}/{len(mine)} ({done}/{total} queries, {100 * done / total:.0f} %), "
                  f"{format_seconds(elapsed)} elapsed, ETA {format_seconds(elapsed / done * (total - done))}",
                  flush=True)


def _join_shards(first: Run, work: Path, n_shards: int) -> Run:
    """The reranked run from every shard file, rows in the first stage's order."""
    found: dict[str, dict[str, float]] = {}
    for i in range(n_shards):
        found.update(Run.read_trec(_shard_path(work, i)).to_dict())
    ordered = {q: found.get(q, {}) for q in first.query_ids}
    return Run.from_dict(ordered, doc_ids=first.doc_ids)


# --- scores ---------------------------------------------------------------------------------------------------------


def score_table(qrels: Qrels, runs: Mapping[str, Run], measures: Sequence[str], title: str) -> str:
    """The Markdown table of each run's measures, one row per system (the first the baseline of the others), as the
    benchmark prints them. Judged queries a run lacks count 0, as in ir-measures and `mmrerank evaluate`."""
    report = Report(title=title)
    names = list(runs)
    for name, system_run in runs.items():
        report.add(name, title.rsplit("/", 1)[-1], evaluate(system_run, qrels, measures))
        if name != names[0]:
            report.baselines[name] = names[0]
    return report.to_markdown()
