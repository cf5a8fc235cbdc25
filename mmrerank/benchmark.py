"""`mmrerank benchmark`: compose the suites a config names, run them through the evaluation loop, write the report.

With no arguments it benchmarks the built-in synthetic test split (1,000 images, 5,000 captions) with the tiny
first stage, training that first stage on the synthetic train split the first time (saved under the cache) and
reusing it afterwards.

Under `torchrun --nproc_per_node N` (the process group is the CLI's, `distributed.process_group`) each rank encodes
and reranks a share, caches are filled by rank 0 while the others wait, and rank 0 alone writes the report.
"""

from __future__ import annotations

import time
from dataclasses import fields, is_dataclass
from typing import Any

from mmrerank.core import distributed
from mmrerank.core.device import resolve_device
from mmrerank.evaluation.report import Paper, Report
from mmrerank.evaluation.suites import ImageText, Instances, Pages, ViDoRe, build_first_stage, page_columns, row_over
from mmrerank.fitting import train_missing
from mmrerank.rerankers import family_rows  # noqa: F401  (configs name the families' rows by short class_path)
from mmrerank.retrieval.first_stage import FirstStage


def benchmark(first_stage: FirstStage | None = None, image_text: ImageText | None = None, pages: Pages | None = None,
              instances: Instances | None = None, output_dir: str | None = None, device: str = "auto",
              progress: bool = True, retrain: bool = False, paper: Paper | None = None,
              vidore: ViDoRe | None = None) -> Report:
    """Run the benchmark and write `report.json`, `report.md` and `success_at_k.png` to `output_dir`.

    Args:
        first_stage: the dual encoder of the image-text rows (and SuperGlobal's default backbone).
        image_text: image-text rows (default: the synthetic test split, first stage only; `directions: []` skips).
        pages: document-page rows (off by default).
        instances: image-to-image rows (off by default).
        vidore: visual-document retrieval rows over a whole page corpus (off by default; `ViDoRe`).
        output_dir: where the report goes (default `outputs/benchmark/<dataset name>`).
        device: `auto` (GPU when present), `cpu` or `cuda`.
        retrain: train the cached first stage and every reranker's `fit` recipe again, replacing their folders.
        paper: a paper's numbers for some rows, printed beside the measured ones ("Against the paper"). Its rows
            and columns are checked against the config before any work where the rerankers can name their rows,
            else after the run (the report is written first).

    Raises:
        ValueError: `paper` names a row or column the benchmark does not produce (the message lists the known ones).
    """
    image_text = image_text or ImageText()
    dataset = image_text.dataset
    first_stage = (first_stage or FirstStage()).trained_on(getattr(dataset, "synthetic", None))
    output_dir = output_dir or f"outputs/benchmark/{dataset.name}"
    resolve_device(device)  # an unknown device fails here, before anything is built
    suites = [s for s in (image_text if image_text.directions else None, instances, pages, vidore) if s is not None]
    if paper is not None:
        check_paper(paper, image_text, pages, instances, vidore)
    for suite in {id(s): s for s in (image_text, instances, pages, vidore) if s is not None}.values():
        suite.check()  # every input file and named model, before anything is rendered or trained
    title = ", ".join(s.title() for s in suites)
    if image_text.directions or instances is not None:
        title += f": first stage {first_stage.model_name}"
    report = Report(title, config=describe({"first_stage": first_stage, "image_text": image_text, "pages": pages,
                                            "instances": instances, "vidore": vidore}),
                    paper=None if paper is None else {"source": paper.source, "rows": paper.rows})
    reranker_specs = [spec for suite in suites for spec in suite.rerankers]
    encoder = None
    if image_text.directions or instances is not None or (pages is not None and pages.dual_encoder) \
            or (vidore is not None and "CLIP" in vidore.first_stages) \
            or any(spec.fit and spec.fit_reads_first_stage for spec in reranker_specs):
        start = time.perf_counter()
        encoder = build_first_stage(first_stage, progress, retrain)
        report.timings["first stage ready"] = time.perf_counter() - start
    train_missing(reranker_specs, first_stage, retrain, progress, report.timings)
    if image_text.directions:
        image_text.run(report, encoder.to(resolve_device(device)), device, progress)
    if instances is not None:
        instances.run(report, first_stage, device, progress)
    if pages is not None:
        pages.run(report, device, progress, encoder)
    if vidore is not None:
        vidore.run(report, device, progress, encoder)
    report.config["output_dir"] = output_dir
    if distributed.is_rank_zero():  # every rank holds the same rows; one writes them
        report.save(output_dir)
    missing = [] if paper is None else paper.missing(report.rows)
    if missing:  # only rows no spec could name before the run get here; the report is saved, numbers kept
        raise ValueError(f"paper: {'; '.join(missing)} (the report is written to {output_dir}, its paper table says "
                         "'not measured')")
    return report


FIXED_ROWS = {"t2i": ["first stage"], "i2t": ["first stage"], "pages": ["BM25"],
              "i2i": ["GeM", "SuperGlobal pooling"]}  # the suites' own rows (the first stages; pages: and CLIP)


def check_paper(paper: Paper, image_text: ImageText, pages: Pages | None, instances: Instances | None,
                vidore: ViDoRe | None = None) -> None:
    """Refuse a paper's column whose direction the config does not run or whose measure its rows lack (image-text:
    the config's measures; pages: MMDocIR's `macro/R@k`, `micro/R@k`), and, when every reranker names its rows in
    advance (`RerankerRows.row_names`), a row the config does not produce.

    Raises:
        ValueError: listing the known directions, columns or rows.
    """
    suites = {d: image_text for d in image_text.directions}
    suites.update({"pages": pages} if pages is not None else {})
    suites.update({"i2i": instances} if instances is not None else {})
    suites.update({"vidore": vidore} if vidore is not None else {})
    known_columns = {f"{d}/{m}" for d in image_text.directions for m in image_text.measures}
    known_columns.update(f"pages/{c}" for c in page_columns())
    if vidore is not None:  # the official measure (nDCG@5 or @10, by version) and the configured ones
        known_columns.update(f"vidore/{m}" for m in ("nDCG@5", "nDCG@10", *vidore.measures))
    rows: set[str] = set()
    named = True
    for direction, suite in suites.items():
        rows.update(FIXED_ROWS.get(direction, []) + (["CLIP"] if direction == "pages" and suite.dual_encoder else []))
        stages = getattr(suite, "first_stages", [])
        rows.update(stages)  # each first stage's own row
        plain = "BM25" if direction == "pages" else None
        for family in suite.rerankers:
            names = family.row_names()
            named = named and names is not None
            rows.update(row_over(name, stage, plain) for name in names or [] for stage in stages or [None])
    problems = []
    for row, measures in paper.rows.items():
        for column in measures:
            direction = column.split("/")[0]
            if direction not in suites:
                problems.append(f"row {row!r}: column {column!r}: this config runs the directions {sorted(suites)}")
            elif direction in ("t2i", "i2t", "pages", "vidore") and column not in known_columns:
                suite = ("t2i", "i2t") if direction in ("t2i", "i2t") else (direction,)  # the columns of its table
                known = sorted(c for c in known_columns if c.split("/")[0] in suite)
                problems.append(f"row {row!r}: column {column!r} is not among {known}")
        if named and row not in rows:
            problems.append(f"row {row!r} is not among the rows {sorted(rows)}")
    if problems:
        raise ValueError("paper: " + "; ".join(problems))


def describe(value: Any) -> Any:
    """A JSON-able account of a config: dataclass fields, dataset descriptions, plain values."""
    if is_dataclass(value) and not isinstance(value, type):
        return {"class": type(value).__name__, **{f.name: describe(getattr(value, f.name)) for f in fields(value)}}
    if hasattr(value, "describe"):
        return value.describe()
    if isinstance(value, dict):
        return {k: describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    return value

