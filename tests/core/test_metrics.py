"""Tests for `mmrerank.core.metrics`: against ir-measures on tie-free random runs, and against naive per-query loops
(the reference for tied scores, where trec_eval breaks ties by doc id and we by column)."""

from __future__ import annotations

import math

import pytest
import torch

from mmrerank.core.metrics import evaluate, parse_measure, per_query
from mmrerank.core.run import PAD, Qrels, Run

SHARED = ["nDCG@1", "nDCG@5", "nDCG@10", "nDCG@50", "nDCG", "R@1", "R@5", "R@50", "Success@1", "Success@5",
          "Success@50", "RR@3", "RR@50", "RR", "AP@5", "AP@50", "AP", "P@1", "P@5", "P@50"]
DEPTH = 20  # so the @50 cutoffs exceed every candidate list


def random_case(seed: int, ties: bool = False, n_queries: int = 40, n_docs: int = 120):
    """A random run and graded qrels that exercise every rule about which queries count.

    Rows have 1..DEPTH candidates (the rest PAD; never 0, which crashes pytrec_eval). Every 7th query has no
    judgement, every 5th only grade-0 ones, and three judged queries are absent from the run. Judgements cover
    both retrieved and unretrieved docs. Scores are distinct within a row unless `ties`, then drawn from {0, 1, 2}.

    Returns:
        `(run, qrels_dict)`: a `Run` over the full doc id space, and `{qid: {docid: grade}}`.
    """
    g = torch.Generator().manual_seed(seed)
    doc_ids = [f"doc{i}" for i in range(n_docs)]
    query_ids = [f"q{i}" for i in range(n_queries)]
    indices = torch.full((n_queries, DEPTH), PAD, dtype=torch.long)
    scores = torch.full((n_queries, DEPTH), -math.inf)
    qrels: dict[str, dict[str, int]] = {}
    for q in range(n_queries):
        length = DEPTH if q == 0 else int(torch.randint(1, DEPTH + 1, (1,), generator=g))
        indices[q, :length] = torch.randperm(n_docs, generator=g)[:length]
        if ties:
            scores[q, :length] = torch.randint(0, 3, (length,), generator=g).float()
        else:  # a shuffled ladder with jitter: distinct, and no structure tied to the column
            scores[q, :length] = torch.randperm(length, generator=g).float() + 0.5 * torch.rand(length, generator=g)
        if q % 7 == 3:
            continue
        n_judged = int(torch.randint(0, length + 1, (1,), generator=g))
        retrieved = indices[q, :length][torch.randperm(length, generator=g)[:n_judged]]
        others = torch.randint(0, n_docs, (int(torch.randint(0, 4, (1,), generator=g)),), generator=g)
        judged = torch.cat([retrieved, others]).tolist()
        grades = torch.randint(0, 4, (len(judged),), generator=g).tolist()
        if q % 5 == 1:
            grades = [0] * len(judged)
        if judged:
            qrels[query_ids[q]] = {doc_ids[d]: grade for d, grade in zip(judged, grades, strict=True)}
    for i in range(3):
        qrels[f"absent{i}"] = {doc_ids[i]: 1, doc_ids[i + 1]: 0}
    return Run(indices, scores, query_ids, doc_ids), qrels


# --- naive references -------------------------------------------------------------------------------------------


def naive_ranking(run: Run, row: int) -> list[tuple[str, float]]:
    """(doc id, score) of a row best first; Python's sort is stable, so tied scores keep column order."""
    cands = [(run.doc_ids[d], s) for d, s in zip(run.indices[row].tolist(), run.scores[row].tolist(), strict=True)
             if d != PAD]
    return sorted(cands, key=lambda c: -c[1])


def naive_measure(ranking: list[tuple[str, float]], judged: dict[str, int], family: str, k: int | None) -> float:
    """One measure of one judged query, written from the definitions with plain loops."""
    top = ranking if k is None else ranking[:k]
    grades = [judged.get(doc, 0) for doc, _ in top]
    n_rel = sum(1 for g in judged.values() if g >= 1)
    hits = sum(1 for g in grades if g >= 1)
    if family == "P":
        return hits / k
    if family == "R":
        return hits / n_rel if n_rel else 0.0
    if family == "Success":
        return 1.0 if hits else 0.0
    if family == "RR":
        for i, g in enumerate(grades):
            if g >= 1:
                return 1.0 / (i + 1)
        return 0.0
    if family == "AP":
        total, seen = 0.0, 0
        for i, g in enumerate(grades):
            if g >= 1:
                seen += 1
                total += seen / (i + 1)
        return total / n_rel if n_rel else 0.0
    if family == "nDCG":
        dcg = sum(max(g, 0) / math.log2(i + 2) for i, g in enumerate(grades))
        ideal_grades = sorted((max(g, 0) for g in judged.values()), reverse=True)
        ideal_grades = ideal_grades if k is None else ideal_grades[:k]
        ideal = sum(g / math.log2(i + 2) for i, g in enumerate(ideal_grades))
        return dcg / ideal if ideal else 0.0
    raise AssertionError(family)


def naive_ce(ranking: list[tuple[str, float]], judged: dict[str, int], k: int) -> float:
    top = ranking[:k]
    positives = [s for doc, s in top if judged.get(doc, 0) >= 1]
    negatives = [s for doc, s in top if judged.get(doc, 0) < 1]
    if not positives:
        return math.nan
    losses = [-math.log(math.exp(p) / (math.exp(p) + sum(math.exp(n) for n in negatives))) for p in positives]
    return sum(losses) / len(losses)


def assert_values(got: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(got, torch.tensor(expected, dtype=got.dtype), rtol=0, atol=1e-9, equal_nan=True)


# --- parse_measure ----------------------------------------------------------------------------------------------


def test_parse_measure_names_and_labels():
    assert parse_measure("nDCG@10") == ("nDCG", 10)
    assert parse_measure("nDCG") == ("nDCG", None)
    assert parse_measure("R@100") == ("R", 100)
    assert parse_measure("Success@1") == ("Success", 1)
    assert parse_measure("RR@10") == ("RR", 10)
    assert parse_measure("RR") == ("RR", None)
    assert parse_measure("AP@100") == ("AP", 100)
    assert parse_measure("AP") == ("AP", None)
    assert parse_measure("P@5") == ("P", 5)
    assert parse_measure("CE@32") == ("CE", 32)
    assert parse_measure("t2i/Success@1") == ("Success", 1)
    assert parse_measure("i2t/nDCG") == ("nDCG", None)


@pytest.mark.parametrize("name", ["MRR@10", "ndcg@10", "nDCG@0", "nDCG@-1", "nDCG@x", "nDCG@", "P", "R", "Success",
                                  "CE", "t2i/foo@3", "", "AP@1.5"])
def test_parse_measure_rejects_unknown(name):
    with pytest.raises(ValueError, match="supported") as err:
        parse_measure(name)
    assert "nDCG@k" in str(err.value) and "CE@k" in str(err.value)  # the message lists the supported names


def test_unknown_measure_raises_before_any_work():
    run, qrels = random_case(0)
    with pytest.raises(ValueError, match="Bogus@3"):
        evaluate(run, qrels, ["nDCG@10", "Bogus@3"])
    with pytest.raises(ValueError, match="Bogus"):
        per_query(run, qrels, "Bogus")


# --- against ir-measures ----------------------------------------------------------------------------------------


def input_variants(run: Run, qrels: dict[str, dict[str, int]]):
    """The same data in every accepted form, including qrels whose doc id space is not the run's."""
    run_dict = run.to_dict()
    yield "Run+Qrels(corpus ids)", run, Qrels.from_dict(qrels, doc_ids=run.doc_ids)
    yield "Run+Qrels(own ids)", run, Qrels.from_dict(qrels)
    yield "dict+dict", run_dict, qrels
    yield "Run.from_dict+Qrels", Run.from_dict(run_dict), Qrels.from_dict(qrels)  # judged docs outside run ids
    yield "Run+dict", run, qrels
    yield "dict+Qrels", run_dict, Qrels.from_dict(qrels)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_ir_measures(seed):
    ir_measures = pytest.importorskip("ir_measures")
    run, qrels = random_case(seed)
    run_dict = run.to_dict()
    parsed = [ir_measures.parse_measure(m) for m in SHARED]
    expected = {str(m): v for m, v in ir_measures.calc_aggregate(parsed, qrels, run_dict).items()}
    expected_rows: dict[tuple[str, str], float] = {(str(r.measure), r.query_id): r.value
                                                  for r in ir_measures.iter_calc(parsed, qrels, run_dict)}
    assert set(expected) == set(SHARED)
    for label, r, q in input_variants(run, qrels):
        got = evaluate(r, q, SHARED)
        for name in SHARED:
            assert got[name] == pytest.approx(expected[name], abs=1e-6, rel=0), (label, name)
        rows = per_query(r, q, SHARED)
        for name in SHARED:
            # ir-measures reports no value for a run query without judgements; those must be NaN here
            ref = [expected_rows.get((name, qid), math.nan) for qid in run.query_ids]
            torch.testing.assert_close(rows[name], torch.tensor(ref, dtype=torch.float64), rtol=0, atol=1e-6,
                                       equal_nan=True, msg=f"{label} {name}")


def test_ir_measures_counting_rules_on_a_hand_made_case():
    """The counting rules of the module docstring, checked by hand and (when installed) against ir-measures."""
    qrels = {"a": {"d1": 1, "d2": 0}, "b": {"d1": 0, "d3": 0}, "missing": {"d4": 2}}
    run = {"a": {"d1": 1.0, "d2": 2.0}, "b": {"d1": 1.0, "d3": 0.5}, "unjudged": {"d1": 1.0}}
    rows = per_query(run, qrels, ["RR", "P@2", "CE@2"])
    assert_values(rows["RR"], [0.5, 0.0, math.nan])  # b has judgements but none relevant: 0; unjudged: NaN
    assert_values(rows["P@2"], [0.5, 0.0, math.nan])
    ce_a = -math.log(math.exp(1.0) / (math.exp(1.0) + math.exp(2.0)))
    assert_values(rows["CE@2"], [ce_a, math.nan, math.nan])
    got = evaluate(run, qrels, ["RR", "P@2", "CE@2"])
    # the judged query absent from the run counts as 0 for the shared measures, not for CE
    assert got["RR"] == pytest.approx((0.5 + 0.0 + 0.0) / 3)
    assert got["P@2"] == pytest.approx((0.5 + 0.0 + 0.0) / 3)
    assert got["CE@2"] == pytest.approx(ce_a)
    sharded = evaluate(run, qrels, ["RR"], count_missing=False)
    assert sharded["RR"] == pytest.approx(0.5 / 2)
    ir_measures = pytest.importorskip("ir_measures")
    ref = ir_measures.calc_aggregate([ir_measures.parse_measure("RR"), ir_measures.parse_measure("P@2")], qrels, run)
    assert {str(m): v for m, v in ref.items()} == pytest.approx({"RR": got["RR"], "P@2": got["P@2"]})


def test_negative_grades_gain_nothing_and_are_not_relevant():
    # ranking d2 (grade -1), d1 (1), d5 (3): a negative grade adds no gain (trec_eval clamps it at 0)
    qrels = {"a": {"d1": 1, "d2": -1, "d5": 3}}
    run = {"a": {"d1": 1.0, "d2": 2.0, "d5": 0.5}}
    rows = per_query(run, qrels, ["nDCG", "nDCG@2", "RR", "AP", "R@1"])
    ideal = 3 + 1 / math.log2(3)
    assert_values(rows["nDCG"], [(1 / math.log2(3) + 3 / math.log2(4)) / ideal])
    assert_values(rows["nDCG@2"], [(1 / math.log2(3)) / ideal])
    assert_values(rows["RR"], [1 / 2])
    assert_values(rows["AP"], [(1 / 2 + 2 / 3) / 2])
    assert_values(rows["R@1"], [0.0])
    ir_measures = pytest.importorskip("ir_measures")
    ref = ir_measures.calc_aggregate([ir_measures.parse_measure(m) for m in ["nDCG", "nDCG@2", "AP"]], qrels, run)
    assert {str(m): v for m, v in ref.items()} == pytest.approx(evaluate(run, qrels, ["nDCG", "nDCG@2", "AP"]))


# --- ties, PAD, and the naive reference -------------------------------------------------------------------------


def test_ties_lower_column_wins_by_hand():
    # row 0: b and c tie at 5; b is in the lower column, so it ranks first: b c a d. Only c is relevant.
    # row 1: all tie, so the ranking is the column order a b c; a has grade 2, c grade 3.
    # row 2: two candidates then PAD; the relevant doc ties with a non-relevant one in a higher column.
    run = Run(torch.tensor([[0, 1, 2, 3], [0, 1, 2, PAD], [4, 2, PAD, PAD]]),
              torch.tensor([[2.0, 5.0, 5.0, 1.0], [0.0, 0.0, 0.0, 0.0], [3.0, 3.0, 0.0, 0.0]]),
              ["q0", "q1", "q2"], ["a", "b", "c", "d", "e"])
    qrels = {"q0": {"c": 1}, "q1": {"a": 2, "c": 3}, "q2": {"e": 1}}
    names = ["RR", "Success@1", "P@2", "AP", "nDCG@3", "nDCG@2", "R@2", "CE@2"]
    ideal_q1 = 3 + 2 / math.log2(3)
    expected = {
        "RR": [1 / 2, 1.0, 1.0],
        "Success@1": [0.0, 1.0, 1.0],
        "P@2": [1 / 2, 1 / 2, 1 / 2],
        "AP": [1 / 2, (1 / 1 + 2 / 3) / 2, 1.0],
        "nDCG@3": [(1 / math.log2(3)) / 1, (2 + 3 / math.log2(4)) / ideal_q1, 1.0],
        "nDCG@2": [(1 / math.log2(3)) / 1, 2 / ideal_q1, 1.0],
        "R@2": [1.0, 1 / 2, 1.0],
        # q0 top-2 is b (5, negative) and c (5, relevant): -log(1/2). q1 top-2: a relevant, b negative, equal
        # scores: -log(1/2). q2: e relevant against c, both 3: -log(1/2).
        "CE@2": [math.log(2), math.log(2), math.log(2)],
    }
    for r in (run, run.to_dict()):  # the dict path finds tied columns its own way
        rows = per_query(r, qrels, names)
        for name in names:
            assert_values(rows[name], expected[name])


@pytest.mark.parametrize("ties", [False, True])
def test_matches_naive_loops(ties):
    names = SHARED + ["P@3", "AP@3", "nDCG@3"]
    for seed in range(3):
        run, qrels = random_case(10 + seed, ties=ties)
        for r in (run, run.to_dict()):
            rows = per_query(r, qrels, names)
            for name in names:
                family, k = parse_measure(name)
                ref = [naive_measure(naive_ranking(run, i), qrels[qid], family, k) if qid in qrels else math.nan
                       for i, qid in enumerate(run.query_ids)]
                torch.testing.assert_close(rows[name], torch.tensor(ref, dtype=torch.float64), rtol=0, atol=1e-9,
                                           equal_nan=True, msg=f"ties={ties} seed={seed} {name}")


def test_dict_input_equals_run_input():
    for ties, nan in ((False, False), (True, False), (False, True)):
        run, qrels = random_case(20, ties=ties)
        if nan:  # NaN scores on some judged candidates: the dict path must still find them
            scores = run.scores.clone()
            scores[::3, 0] = math.nan
            run = Run(run.indices, scores, run.query_ids, run.doc_ids)
        names = SHARED + ["CE@5", "t2i/CE@50"]
        from_run = per_query(run, Qrels.from_dict(qrels), names)
        from_dict = per_query(run.to_dict(), qrels, names)
        assert list(from_run) == list(from_dict) == names  # keys keep the names as given, labels included
        for name in names:
            torch.testing.assert_close(from_dict[name], from_run[name], rtol=0, atol=0, equal_nan=True)
        assert evaluate(run.to_dict(), qrels, names) == pytest.approx(evaluate(run, qrels, names), nan_ok=True)


def test_k_beyond_the_candidates_and_pad_never_relevant():
    # one candidate, then PAD slots whose index would be doc 0 if PAD were not masked: doc 0 is relevant
    run = Run(torch.tensor([[1, PAD, PAD]]), torch.tensor([[1.0, 0.0, 0.0]]), ["q"], ["rel", "other"])
    qrels = {"q": {"rel": 1}}
    rows = per_query(run, qrels, ["P@1000", "R@1000", "Success@1000", "RR@1000", "AP@1000", "nDCG@1000", "CE@1000"])
    for name in ["P@1000", "R@1000", "Success@1000", "RR@1000", "AP@1000", "nDCG@1000"]:
        assert_values(rows[name], [0.0])
    assert_values(rows["CE@1000"], [math.nan])
    run = Run(torch.tensor([[0, PAD]]), torch.tensor([[1.0, 0.0]]), ["q"], ["rel", "other"])
    rows = per_query(run, qrels, ["P@4", "R@4", "nDCG@4"])
    assert_values(rows["P@4"], [1 / 4])  # P@k divides by k, not by the number retrieved
    assert_values(rows["R@4"], [1.0])
    assert_values(rows["nDCG@4"], [1.0])


def test_empty_run_and_empty_qrels():
    run = Run(torch.empty(2, 0, dtype=torch.long), torch.empty(2, 0), ["a", "b"], ["x"])
    rows = per_query(run, {"a": {"x": 1}}, ["RR", "P@3", "nDCG@3", "CE@3"])
    assert_values(rows["RR"], [0.0, math.nan])
    assert_values(rows["P@3"], [0.0, math.nan])
    assert_values(rows["CE@3"], [math.nan, math.nan])
    run, _ = random_case(3)
    assert all(math.isnan(v) for v in evaluate(run, {}, ["RR", "nDCG@10", "CE@5"]).values())


# --- contrastive entropy ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
def test_contrastive_entropy_matches_naive_loop(ties):
    names = ["CE@1", "CE@3", "CE@10", "CE@50"]
    for seed in range(3):
        run, qrels = random_case(30 + seed, ties=ties)
        run = Run(run.indices, run.scores * 0.7 - 1.0, run.query_ids, run.doc_ids)  # not just ranks as logits
        rows = per_query(run, qrels, names)
        for name in names:
            k = parse_measure(name)[1]
            ref = [naive_ce(naive_ranking(run, i), qrels.get(qid, {}), k) for i, qid in enumerate(run.query_ids)]
            torch.testing.assert_close(rows[name], torch.tensor(ref, dtype=torch.float64), rtol=1e-9, atol=1e-9,
                                       equal_nan=True, msg=f"seed={seed} {name}")
            assert not torch.isnan(rows[name]).all()  # the case must exercise the computation


def test_contrastive_entropy_of_an_uninformative_model_is_log_k():
    # equal scores: one relevant among k candidates has softmax probability exactly 1/k
    k = 16
    run = Run(torch.arange(k)[None].repeat(4, 1), torch.zeros(4, k), ["a", "b", "c", "d"],
              [f"d{i}" for i in range(k)])
    qrels = {"a": {"d5": 1}, "b": {"d0": 3, "d9": 0}, "c": {"d1": 1, "d2": 2}, "d": {"d0": 1, "d1": 2}}
    rows = per_query(run, qrels, [f"CE@{k}", "CE@2"])
    # c and d: two relevant, each against the 14 negatives: -log(1/15)
    assert_values(rows[f"CE@{k}"], [math.log(k), math.log(k), math.log(k - 1), math.log(k - 1)])
    # the top 2 are d0, d1: a has no relevant there; b has d0 against d1; c has d1 against d0; d has two
    # relevant and no negative, so each is certain: -log(1) = 0
    assert_values(rows["CE@2"], [math.nan, math.log(2), math.log(2), 0.0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_computes_on_the_runs_device():
    run, qrels = random_case(40, ties=True)
    names = SHARED + ["CE@5"]
    on_cpu = per_query(run, Qrels.from_dict(qrels), names)
    on_gpu = per_query(run.to("cuda"), Qrels.from_dict(qrels), names)  # qrels stay on the CPU: moved as needed
    for name in names:
        assert on_gpu[name].device.type == "cuda"
        torch.testing.assert_close(on_gpu[name].cpu(), on_cpu[name], rtol=0, atol=1e-9, equal_nan=True)
