"""Runs and qrels: string ids at the edges, integer tensors inside.

A `Run` holds each query's candidate list as rows of `[Q, K]` tensors; a `Qrels` holds graded judgements
in coordinate form. Both read and write the TREC formats that ir-measures, ranx and trec_eval use.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mmrerank.core.io import atomic_write_text

PAD = -1  # candidate index of an empty slot (a query with fewer than K candidates)


def _index_of(ids: Sequence[str]) -> dict[str, int]:
    index = {doc_id: i for i, doc_id in enumerate(ids)}
    if len(index) != len(ids):
        raise ValueError("ids must be unique")
    return index


@dataclass
class Run:
    """Top-K candidates per query.

    Attributes:
        indices: `[Q, K]` long, rows into `doc_ids`; `PAD` (-1) marks an empty slot.
        scores: `[Q, K]` float; empty slots hold `-inf`.
        query_ids: `Q` query ids, one per row.
        doc_ids: the `N` corpus ids that `indices` point into.

    The ranking of a row is by score, descending; equal scores keep their column order (lower column wins).
    """

    indices: Tensor
    scores: Tensor
    query_ids: list[str]
    doc_ids: list[str]

    def __post_init__(self) -> None:
        if self.indices.dim() != 2 or self.indices.shape != self.scores.shape:
            raise ValueError(f"indices and scores must both be [Q, K]; got {tuple(self.indices.shape)} "
                             f"and {tuple(self.scores.shape)}")
        if self.indices.shape[0] != len(self.query_ids):
            raise ValueError(f"{self.indices.shape[0]} rows but {len(self.query_ids)} query ids")
        if self.indices.numel() and int(self.indices.max()) >= len(self.doc_ids):
            raise ValueError(f"candidate index {int(self.indices.max())} out of range for {len(self.doc_ids)} docs")
        self.indices = self.indices.long()
        self.scores = self.scores.float().masked_fill(self.indices == PAD, -math.inf)

    @property
    def depth(self) -> int:
        return self.indices.shape[1]

    def __len__(self) -> int:
        return self.indices.shape[0]

    def to(self, device: torch.device | str) -> Run:
        return Run(self.indices.to(device), self.scores.to(device), self.query_ids, self.doc_ids)

    def sorted(self) -> Run:
        """Each row ordered by score, descending; ties keep their column order; empty slots last."""
        order = torch.sort(self.scores, dim=1, descending=True, stable=True).indices
        return Run(self.indices.gather(1, order), self.scores.gather(1, order), self.query_ids, self.doc_ids)

    def top(self, k: int) -> Run:
        """The first `k` ranked candidates of each row (all of them when a row has fewer)."""
        run = self.sorted()
        return Run(run.indices[:, :k], run.scores[:, :k], self.query_ids, self.doc_ids)

    def select(self, rows: Tensor | Sequence[int]) -> Run:
        rows = torch.as_tensor(rows, dtype=torch.long)
        return Run(self.indices[rows.to(self.indices.device)], self.scores[rows.to(self.scores.device)],
                   [self.query_ids[i] for i in rows.tolist()], self.doc_ids)

    def align(self, query_ids: Sequence[str] | None = None, doc_ids: Sequence[str] | None = None,
              name: str = "the run", queries: str = "the queries", corpus: str = "the corpus") -> Run:
        """This run in other id spaces (a task's), matched by id: rows in `query_ids` order, `indices` into `doc_ids`.

        Args:
            query_ids: the query id space; rows are reordered to follow it (queries it has but the run lacks get no
                row). None: rows as they are.
            doc_ids: the doc id space `indices` will point into. None: the run's own.
            name: what the run is, for messages (a file name).
            queries, corpus: what the two id spaces are, for messages (e.g. `--queries captions.tsv`).

        Raises:
            ValueError: a query or candidate id of the run that the id space does not have, naming the first ones.
        """
        run = self
        if query_ids is not None and list(query_ids) != self.query_ids:
            query_ids = list(query_ids)
            id_rows(self.query_ids, query_ids, f"{name}'s query ids", queries)  # refuse unknown ids first
            present = _index_of(self.query_ids)
            run = self.select([present[q] for q in query_ids if q in present])
        if doc_ids is not None and list(doc_ids) != self.doc_ids:
            used = torch.unique(run.indices[run.indices != PAD]).cpu()
            new_rows = torch.full((len(run.doc_ids),), PAD, dtype=torch.long)
            new_rows[used] = id_rows([run.doc_ids[d] for d in used.tolist()], doc_ids,
                                      f"{name}'s candidate ids", corpus)
            indices = torch.where(run.indices == PAD, PAD, new_rows.to(run.indices.device)[run.indices.clamp(min=0)])
            run = Run(indices, run.scores, run.query_ids, list(doc_ids))
        return run

    # --- edges: nested dicts and TREC files -------------------------------------------------------------------

    def to_dict(self) -> dict[str, dict[str, float]]:
        """`{query_id: {doc_id: score}}`, the ir-measures / pytrec_eval run format."""
        out: dict[str, dict[str, float]] = {}
        for qid, row, scores in zip(self.query_ids, self.indices.tolist(), self.scores.tolist()):
            out[qid] = {self.doc_ids[d]: s for d, s in zip(row, scores) if d != PAD}
        return out

    @classmethod
    def from_dict(cls, run: Mapping[str, Mapping[str, float]], doc_ids: Sequence[str] | None = None) -> Run:
        """Build a run from `{query_id: {doc_id: score}}`; candidate order within a query is the dict's order.

        Args:
            run: the nested dict.
            doc_ids: the corpus ids to index into; by default every doc id in `run`, in order of appearance.
        """
        if doc_ids is None:
            doc_ids = list(dict.fromkeys(d for cands in run.values() for d in cands))
        doc_index = _index_of(doc_ids)
        depth = max((len(c) for c in run.values()), default=0)
        indices = torch.full((len(run), depth), PAD, dtype=torch.long)
        scores = torch.full((len(run), depth), -math.inf)
        for row, cands in enumerate(run.values()):
            try:
                idx = [doc_index[d] for d in cands]
            except KeyError as err:
                raise KeyError(f"run names doc {err.args[0]!r}, which is not in doc_ids") from None
            indices[row, : len(idx)] = torch.tensor(idx, dtype=torch.long)
            scores[row, : len(idx)] = torch.tensor(list(cands.values()), dtype=torch.float)
        return cls(indices, scores, list(run), list(doc_ids))

    def write_trec(self, path: str | Path, tag: str = "mmrerank") -> None:
        """Write the 6-column TREC run format (`qid Q0 docid rank score tag`), ranks from 1, atomically."""
        run = self.sorted()
        lines = []
        # str() of a float32 is its shortest exact decimal: files round-trip without noise digits
        for qid, row, scores in zip(run.query_ids, run.indices.tolist(), run.scores.cpu().numpy()):
            rank = 0
            for d, s in zip(row, scores):
                if d != PAD:
                    rank += 1
                    lines.append(f"{qid} Q0 {run.doc_ids[d]} {rank} {str(s)} {tag}\n")
        atomic_write_text(path, "".join(lines))

    @classmethod
    def read_trec(cls, path: str | Path, doc_ids: Sequence[str] | None = None, *,
                  query_ids: Sequence[str] | None = None, task=None) -> Run:
        """Read a 6-column TREC run file; rows are queries in order of first appearance.

        Args:
            path: the run file.
            doc_ids: the doc id space `indices` point into (default: the file's doc ids in order of appearance).
            query_ids: order the rows as these query ids (`Run.align`; every query of the file must be among them).
            task: align to a `RetrievalTask`'s id spaces: `query_ids=task.queries.ids`, `doc_ids=task.corpus.ids`,
                so that row `i`, candidate `j` means what the task means by those ids (what `Reranker.rerank` and
                `task.measure` need). Excludes `query_ids` and `doc_ids`.

        Raises:
            ValueError: a line without 6 columns or whose score is not a number or is NaN (naming `file:line`); with
                `task`, `query_ids` or `doc_ids`, an id of the file that they do not have (naming the first ones).
        """
        if task is not None:
            if query_ids is not None or doc_ids is not None:
                raise ValueError("give either task= or query_ids= / doc_ids=, not both")
            query_ids, doc_ids = task.queries.ids, task.corpus.ids
        run: dict[str, dict[str, float]] = {}
        for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 6:
                raise ValueError(f"{path}:{lineno}: a TREC run line has 6 columns, got {len(parts)}: {line!r}")
            qid, _, docid, _, score, _ = parts
            run.setdefault(qid, {})[docid] = _parse_score(score, f"{path}:{lineno}", line)
        return cls.from_dict(run).align(query_ids, doc_ids, name=str(path))


@dataclass
class Qrels:
    """Graded relevance judgements in coordinate form.

    Attributes:
        query_ids: the query id space; doc_ids: the doc id space.
        query_index, doc_index, grade: `[R]` long each, one entry per judged (query, doc) pair (a pair given twice
            is merged into one with its highest grade, with a warning).
    """

    query_ids: list[str]
    doc_ids: list[str]
    query_index: Tensor
    doc_index: Tensor
    grade: Tensor

    def __post_init__(self) -> None:
        self.query_index, self.doc_index = self.query_index.long(), self.doc_index.long()
        self.grade = self.grade.long()
        if not (self.query_index.shape == self.doc_index.shape == self.grade.shape) or self.grade.dim() != 1:
            raise ValueError("query_index, doc_index and grade must be 1-D tensors of one length")
        self._merge_duplicates()

    def _merge_duplicates(self) -> None:
        """Keep one judgement per (query, doc) pair, the highest grade, with a warning.

        A repeated pair would count twice in the ideal DCG and in recall's denominator, silently lowering both.
        """
        n_docs = max(len(self.doc_ids), 1)
        keys = self.query_index * n_docs + self.doc_index  # [R]
        unique, inverse = torch.unique(keys, return_inverse=True)
        if unique.numel() == keys.numel():
            return
        lowest = torch.iinfo(torch.long).min
        grade = torch.full(unique.shape, lowest, dtype=torch.long, device=keys.device)
        grade = grade.scatter_reduce(0, inverse, self.grade, reduce="amax")
        counts = torch.bincount(inverse)
        q, d = divmod(int(unique[int(torch.argmax(counts))]), n_docs)  # the most repeated pair, for the message
        warnings.warn(f"{keys.numel() - unique.numel()} duplicate judgement(s) of the same (query, doc) pair, e.g. "
                      f"({self.query_ids[q]!r}, {self.doc_ids[d]!r}); kept the highest grade of each pair",
                      stacklevel=3)
        self.query_index, self.doc_index, self.grade = unique // n_docs, unique % n_docs, grade

    def __len__(self) -> int:
        return self.grade.numel()

    @classmethod
    def from_pairs(cls, query_ids: Sequence[str], doc_ids: Sequence[str], query_index: Tensor,
                   doc_index: Tensor, grade: Tensor | None = None) -> Qrels:
        """Judgements from index pairs (grade 1 each unless given)."""
        grade = torch.ones_like(torch.as_tensor(query_index)) if grade is None else grade
        return cls(list(query_ids), list(doc_ids), torch.as_tensor(query_index), torch.as_tensor(doc_index),
                   torch.as_tensor(grade))

    @classmethod
    def from_dict(cls, qrels: Mapping[str, Mapping[str, int]], query_ids: Sequence[str] | None = None,
                  doc_ids: Sequence[str] | None = None) -> Qrels:
        """From `{query_id: {doc_id: grade}}`; pairs naming ids outside given id spaces are dropped."""
        query_ids = list(qrels) if query_ids is None else list(query_ids)
        if doc_ids is None:
            doc_ids = list(dict.fromkeys(d for judged in qrels.values() for d in judged))
        q_index, d_index = _index_of(query_ids), _index_of(doc_ids)
        triples = [(q_index[q], d_index[d], int(g)) for q, judged in qrels.items() if q in q_index
                   for d, g in judged.items() if d in d_index]
        q, d, g = (torch.tensor(col, dtype=torch.long) for col in zip(*triples)) if triples else (
            torch.empty(0, dtype=torch.long),) * 3
        return cls(query_ids, list(doc_ids), q, d, g)

    def to_dict(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for q, d, g in zip(self.query_index.tolist(), self.doc_index.tolist(), self.grade.tolist()):
            out.setdefault(self.query_ids[q], {})[self.doc_ids[d]] = g
        return out

    def write_trec(self, path: str | Path) -> None:
        """Write the 4-column TREC qrels format (`qid 0 docid grade`), atomically."""
        lines = [f"{self.query_ids[q]} 0 {self.doc_ids[d]} {g}\n"
                 for q, d, g in zip(self.query_index.tolist(), self.doc_index.tolist(), self.grade.tolist())]
        atomic_write_text(path, "".join(lines))

    @classmethod
    def read_trec(cls, path: str | Path, query_ids: Sequence[str] | None = None,
                  doc_ids: Sequence[str] | None = None) -> Qrels:
        """Read a 4-column TREC qrels file (`qid 0 docid grade`, integer grades).

        A pair judged on several lines keeps its highest grade, with a warning naming the lines.

        Raises:
            ValueError: a line without 4 columns or with a grade that is not an integer (naming `file:line`).
        """
        qrels: dict[str, dict[str, int]] = {}
        repeated: list[str] = []
        for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 4:
                raise ValueError(f"{path}:{lineno}: a TREC qrels line has 4 columns, got {len(parts)}: {line!r}")
            qid, _, docid, grade_text = parts
            grade = _parse_grade(grade_text, f"{path}:{lineno}", line)
            judged = qrels.setdefault(qid, {})
            if docid in judged:
                repeated.append(f"{path}:{lineno}")
                grade = max(grade, judged[docid])
            judged[docid] = grade
        if repeated:
            warnings.warn(f"{len(repeated)} repeated (query, doc) judgement(s) at {', '.join(repeated[:5])}"
                          + (" ..." if len(repeated) > 5 else "") + "; kept the highest grade of each pair",
                          stacklevel=2)
        return cls.from_dict(qrels, query_ids, doc_ids)

    def transpose(self) -> Qrels:
        """The same judgements with queries and docs swapped (t2i qrels -> i2t qrels)."""
        return Qrels(self.doc_ids, self.query_ids, self.doc_index, self.query_index, self.grade)

    def reindex(self, query_ids: Sequence[str], doc_ids: Sequence[str]) -> Qrels:
        """These judgements in other id spaces (a run's); pairs whose ids are missing there are dropped."""
        if list(query_ids) == self.query_ids and list(doc_ids) == self.doc_ids:
            return self
        q_map = _remap(self.query_ids, query_ids)
        d_map = _remap(self.doc_ids, doc_ids)
        q, d = q_map[self.query_index], d_map[self.doc_index]
        keep = (q >= 0) & (d >= 0)
        return Qrels(list(query_ids), list(doc_ids), q[keep], d[keep], self.grade[keep])


def _parse_score(text: str, where: str, line: str) -> float:
    """A run line's score column as a float; `where` is `file:line` for the message."""
    try:
        score = float(text)
    except ValueError:
        raise ValueError(f"{where}: the score (5th column) must be a number, got {text!r}: {line!r}") from None
    if math.isnan(score):
        raise ValueError(f"{where}: the score (5th column) is NaN, which has no rank: {line!r}")
    return score


def _parse_grade(text: str, where: str, line: str) -> int:
    """A qrels line's grade column as an int (TREC grades are integers; `1.5` or `rel` is refused)."""
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{where}: the grade (4th column) must be an integer, got {text!r}: {line!r}") from None


def id_rows(ids: Sequence[str], space: Sequence[str], what: str, where: str) -> Tensor:
    """`[len(ids)]` long: each id's row in `space`.

    Raises:
        ValueError: ids that `space` lacks, naming the first five and how many there are (`what` are the ids, e.g.
            "the run's query ids"; `where` the id space, e.g. "the queries").
    """
    index = _index_of(space)
    rows = [index.get(i, -1) for i in ids]
    missing = [i for i, r in zip(ids, rows) if r < 0]
    if missing:
        shown = ", ".join(repr(i) for i in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        example = ", ".join(repr(i) for i in list(space)[:3])
        raise ValueError(f"{len(missing)} of {len(ids)} of {what} are not in {where} ({len(space)} ids, e.g. "
                         f"{example}): {shown}. {_id_hint(missing, index)}")
    return torch.tensor(rows, dtype=torch.long)


def _id_hint(missing: Sequence[str], index: Mapping[str, int]) -> str:
    """How to make the ids match: the commonest slip (file names with their extension) named when it is the one."""
    stems = [Path(i).stem for i in missing[:100]]
    if all(Path(i).suffix and s in index for i, s in zip(missing, stems)):
        return (f"They are file names with their extension ({missing[0]!r} is {stems[0]!r} here): an image's id is its "
                "file name without extension; drop the extensions from the run's ids")
    return ("Ids are matched as strings; give the run and the task the same ids (e.g. image file names without "
            "extension)")


def _remap(old_ids: Sequence[str], new_ids: Sequence[str]) -> Tensor:
    """`[len(old_ids)]` long: each old id's row in `new_ids`, or -1."""
    new_index = _index_of(new_ids)
    return torch.tensor([new_index.get(i, -1) for i in old_ids], dtype=torch.long)
