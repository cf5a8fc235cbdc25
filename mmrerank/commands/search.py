"""`mmrerank evaluate`, `mmrerank index` and `mmrerank search`: score a run file; encode a folder with a first stage
into a saved index that records its encoder; search that index with new queries into a TREC run.

An index folder holds `index/` (a `RetrievalIndex`) and `encoder.json` (the first stage that built it, its weights
by content digest). `search` encodes the queries with that same first stage, and refuses another one: vectors of
two encoders share no space, and a search across them returns confident nonsense.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path

from mmrerank.commands.rerank import score_table
from mmrerank.core import distributed
from mmrerank.core.device import resolve_device
from mmrerank.core.io import atomic_folder, atomic_write_json
from mmrerank.core.metrics import evaluate as evaluate_run
from mmrerank.core.metrics import parse_measure
from mmrerank.core.run import Qrels, Run
from mmrerank.datasets.files import read_items
from mmrerank.evaluation.loop import DEFAULT_MEASURES
from mmrerank.retrieval.first_stage import FirstStage
from mmrerank.retrieval.index import KINDS, RetrievalIndex

RECORD = "encoder.json"
FORMAT = "mmrerank.index/1"


def evaluate(run: str, qrels: str, measures: list[str] | None = None) -> dict[str, float]:
    """Score a TREC run file against TREC qrels and print the measures.

    Args:
        run: a TREC run file (`qid Q0 docid rank score tag`).
        qrels: a TREC qrels file (`qid 0 docid grade`).
        measures: measure names (default: Success@1, Success@5, Success@10, nDCG@10); judged queries the run
            lacks count 0, as in ir-measures.

    Returns:
        `{measure: value}`.
    """
    measures = list(measures or DEFAULT_MEASURES)
    for measure in measures:
        parse_measure(measure)
    for flag, path in (("--run", run), ("--qrels", qrels)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path}: no such file")
    system, judged = Run.read_trec(run), Qrels.read_trec(qrels)
    shared = set(system.query_ids) & set(judged.query_ids)
    if not shared:
        warnings.warn(f"--run {run} and --qrels {qrels} share no query id (e.g. {system.query_ids[:1]} and "
                      f"{judged.query_ids[:1]}): every measure is 0", stacklevel=2)
    print(score_table(judged, {Path(run).name: system}, measures, f"{run} ({len(shared)} judged queries)/run"))
    return evaluate_run(system, judged, measures)


def _require_encoder(first_stage: FirstStage | None, flag: str) -> FirstStage:
    """A first stage with weights named: no hidden training of the default one here."""
    if first_stage is None or not (first_stage.checkpoint or first_stage.pretrained):
        raise ValueError(f"{flag} needs the encoder's weights: --first_stage.checkpoint FOLDER (a save_pretrained "
                         "folder, e.g. one `mmrerank fit` or `mmrerank benchmark` saved) or --first_stage.pretrained "
                         "TAG with --first_stage.model_name")
    if first_stage.checkpoint and not Path(first_stage.checkpoint).exists():
        raise FileNotFoundError(f"--first_stage.checkpoint {first_stage.checkpoint}: no such file or folder")
    return first_stage


def index(corpus: str, output: str, first_stage: FirstStage | None = None, kind: str = "flat", device: str = "auto",
          batch_size: int = 64, progress: bool = True) -> RetrievalIndex:
    """Encode a folder (or file) of documents with a first-stage encoder and save a searchable index.

    Args:
        corpus: the documents: a folder of images, PDFs or page images, a caption table, or a TSV / JSONL of texts.
        output: the index folder to write (`index/` and `encoder.json`, replaced as a whole).
        first_stage: the encoder (`--first_stage.checkpoint FOLDER`, or `--first_stage.model_name` with
            `--first_stage.pretrained`).
        kind: `flat` (exact), `ivf` or `hnsw`.
        device: where the encoder runs.
        batch_size: items per encoding batch.
        progress: show the encoding progress bar.
    """
    first_stage = _require_encoder(first_stage, "mmrerank index")
    if kind not in KINDS:
        raise ValueError(f"--kind must be one of {KINDS}, got {kind!r}")
    items = read_items(corpus, "corpus")
    encoder = first_stage.build(progress=progress).to(resolve_device(device))
    vectors = encoder.encode(items, batch_size=batch_size, progress=progress)
    built = RetrievalIndex(vectors.shape[1], kind=kind)
    built.add(vectors.cpu(), items.ids)
    record = {"format": FORMAT, "encoder": first_stage.identity(), "first_stage": asdict(first_stage),
              "modality": items.modality, "corpus": str(Path(corpus).resolve()), "count": len(items)}
    if not distributed.is_rank_zero():  # under torchrun every rank encoded a share; one writes
        return built
    with atomic_folder(output) as tmp:
        built.save(tmp / "index")
        atomic_write_json(tmp / RECORD, record)
    print(f"Wrote {output}: {len(items)} {items.modality}s of {corpus}, encoded by {_name(first_stage)}.")
    return built


def search(index: str, queries: str, output: str, depth: int = 100, first_stage: FirstStage | None = None,
           device: str = "auto", batch_size: int = 64, progress: bool = True) -> Run:
    """Search an index `mmrerank index` built with new queries and write the top `depth` per query as a TREC run.

    Args:
        index: the index folder.
        queries: a TSV of `id<TAB>text`, a JSONL, or a folder of query images (ids: file names without extension).
        output: the TREC run file to write.
        depth: candidates per query.
        first_stage: the query encoder; default the one that built the index. Another one is refused.
        device: where the encoder runs.
        batch_size: queries per encoding batch.
        progress: show the encoding progress bar.
    """
    if depth < 1:
        raise ValueError(f"--depth must be >= 1, got {depth}")
    record_path = Path(index) / RECORD
    if not record_path.is_file():
        raise FileNotFoundError(f"--index {index}: no {RECORD} there; build the index with `mmrerank index`")
    record = json.loads(record_path.read_text())
    recorded = FirstStage(**record["first_stage"])
    first_stage = first_stage or recorded
    _require_encoder(first_stage, "mmrerank search")
    identity = first_stage.identity()
    if identity != record["encoder"]:
        raise ValueError(f"--index {index} was built by the encoder {json.dumps(record['encoder'])} "
                         f"({_name(recorded)}), but the queries would be encoded by {json.dumps(identity)} "
                         f"({_name(first_stage)}): their vectors do not share a space. Search with the encoder that "
                         "built the index, or build a new index with this one (`mmrerank index`)")
    items = read_items(queries, "queries")
    encoder = first_stage.build(progress=progress).to(resolve_device(device))
    vectors = encoder.encode(items, batch_size=batch_size, progress=progress)
    found = RetrievalIndex.load(Path(index) / "index", device="cpu").search(vectors.cpu(), depth, items.ids)
    found.write_trec(output, tag="mmrerank-search")
    print(f"Wrote {output}: top {found.depth} of {len(found.doc_ids)} for {len(found)} queries.")
    return found


def _name(first_stage: FirstStage) -> str:
    return f"{first_stage.model_name} " + (f"checkpoint {first_stage.checkpoint}" if first_stage.checkpoint
                                           else f"pretrained {first_stage.pretrained}")
