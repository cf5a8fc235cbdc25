"""The EDJE sweep trainer: exact parameter counts, metrics of the fixed candidates, and a smoke sweep with a report."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
import torch

from mmrerank.core.metrics import evaluate
from mmrerank.rerankers.edje import EDJE, EDJEConfig, build_wordpiece_tokenizer
from mmrerank.rerankers.edje.sweep import (
    EvalTask,
    evaluate_point,
    image_side_params,
    joint_config,
    non_embedding_params,
)
from mmrerank.retrieval.clip import CLIPEncoder
from mmrerank.scaling.cli import main as scaling_main
from mmrerank.scaling.grid import ModelSize, SweepConfig, run_sweep
from mmrerank.scaling.results import read_evaluations
from mmrerank.scaling.runner import trainer_for

pytestmark = pytest.mark.slow  # end to end: trains models


def test_non_embedding_params_count_the_joint_encoder_but_its_embedding_tables(tmp_path):
    tok = build_wordpiece_tokenizer(["a red circle", "a blue square"], vocab_size=60)
    config = EDJEConfig(vision="timm:none", patch_dim=24, num_patches=9, num_image_tokens=4, adapter_heads=2,
                        joint=joint_config({"hidden": 32, "layers": 2, "heads": 2}), max_text_len=8)
    model = EDJE(config, tok)
    d, layers, inter = 32, 2, 128
    per_layer = 4 * (d * d + d) + 2 * d + (d * inter + inter) + (inter * d + d) + 2 * d  # attention, MLP, 2 norms
    joint = layers * per_layer + (d * d + d) + (d + 1) + 2 * d  # layers, pooler, score head, embedding LayerNorm
    assert non_embedding_params(model) == joint
    embeddings = model.joint.bert.embeddings
    tables = sum(t.weight.numel() for t in (embeddings.word_embeddings, embeddings.position_embeddings,
                                            embeddings.token_type_embeddings))
    total = sum(p.numel() for p in model.parameters())
    assert image_side_params(model) == sum(p.numel() for p in model.adapter.parameters())
    assert non_embedding_params(model) + tables + image_side_params(model) == total
    # a first-stage text side (frozen tower + projection) stands for the word embeddings: not counted either
    CLIPEncoder("mmrerank-tiny-resnet").save_pretrained(tmp_path / "fs")
    with_tower = EDJE(replace(config, text="first_stage:mmrerank-tiny-resnet", text_checkpoint=str(tmp_path / "fs")),
                      tok)
    text_side = sum(p.numel() for p in with_tower.joint.text.parameters())
    assert text_side > 10 * joint and non_embedding_params(with_tower) == joint


def test_joint_config_needs_the_shape():
    assert joint_config({"hidden": 64, "layers": 2, "heads": 4})["intermediate_size"] == 256
    with pytest.raises(ValueError, match="heads"):
        joint_config({"hidden": 64, "layers": 2})


def test_evaluate_point_equals_the_metrics_of_the_pairs_scored_one_by_one_alone_fused_and_first_stage():
    from mmrerank.core.items import RetrievalTask, Texts
    from mmrerank.core.run import Qrels, Run

    torch.manual_seed(0)
    q, n, k = 6, 20, 5
    tok = build_wordpiece_tokenizer(["caption one two three four five"], vocab_size=60)
    config = EDJEConfig(vision="timm:none", patch_dim=24, num_patches=9, num_image_tokens=4, adapter_heads=2,
                        joint=joint_config({"hidden": 32, "layers": 1, "heads": 2}), max_text_len=8)
    model = EDJE(config, tok).train()
    patches = torch.randn(n, 9, 24)
    candidates = torch.stack([torch.randperm(n)[:k] for _ in range(q)])
    query_ids, image_ids = [f"q{i}" for i in range(q)], [f"d{i}" for i in range(n)]
    captions = [f"caption {['one', 'two', 'three', 'four', 'five', 'one two'][i]}" for i in range(q)]
    relevant = [(i, int(candidates[i, i % k])) for i in range(q)] + [(0, int(candidates[0, 4]))]
    qrels = Qrels.from_pairs(query_ids, image_ids, torch.tensor([r[0] for r in relevant]),
                             torch.tensor([r[1] for r in relevant]))
    task = EvalTask(RetrievalTask("toy/t2i", Texts(query_ids, captions), Texts(image_ids, image_ids), qrels),
                    Run(candidates, torch.linspace(1, 0, k).expand(q, k).clone(), query_ids, image_ids))
    alpha = 0.7
    got, references = evaluate_point(model, task, patches, alpha)
    assert set(references) == {"first stage", "alone"}
    assert model.training  # put back in training mode
    # independent expectation: each pair scored alone, a naive per-query dict run, scored by the same metric code
    model.eval()
    with torch.no_grad():
        scores = torch.tensor([[float(model.score([captions[i]], model.compress(patches[int(d)][None].float())))
                                for d in candidates[i]] for i in range(q)])
    naive = {qid: {did: 1 for did in docs} for qid, docs in
             ((query_ids[a], [image_ids[b] for c, b in relevant if c == a]) for a in range(q))}
    first_stage = task.run.scores
    for measured, pair_scores in ((references["alone"], scores), (got, scores + alpha * first_stage),
                                  (references["first stage"], first_stage)):
        run = {query_ids[i]: {image_ids[int(d)]: float(s) for d, s in zip(candidates[i], pair_scores[i])}
               for i in range(q)}
        expected = evaluate(run, naive, ["nDCG@10", "AP", "RR", "R@1", f"CE@{k}"])
        for name, value in expected.items():
            assert measured[name] == pytest.approx(value, abs=1e-4), name
        # RR by hand: the best rank of a query's relevant candidates under the scores
        ranks = []
        for i in range(q):
            rel = [j for j in range(k) if (i, int(candidates[i, j])) in relevant]
            ranks.append(min(int((pair_scores[i] > pair_scores[i, j]).sum()) + 1 for j in rel))
        assert measured["RR"] == pytest.approx(sum(1 / r for r in ranks) / q, abs=1e-4)
    assert got != references["alone"]  # the fusion moved something, so the three checks are three
    assert evaluate_point(model, task, patches)[0] == references["alone"]  # alpha 0: the logit alone


def test_smoke_sweep_trains_evaluates_resumes_and_reports(tiny_config, tmp_path):
    """Two sizes x two budgets x one loss on the tiny benchmark with a random first stage, then the report."""
    first_stage = tmp_path / "fs"
    CLIPEncoder("mmrerank-tiny-resnet").save_pretrained(first_stage)
    synthetic = {k: getattr(tiny_config, k) for k in ("root", "seed", "train_images", "val_images", "test_images")}
    config = SweepConfig(
        sizes=[ModelSize("s1", 1, {"hidden": 16, "layers": 1, "heads": 2}),
               ModelSize("s2", 1, {"hidden": 32, "layers": 2, "heads": 2})],
        budgets=[16, 32], losses=["listwise"], eval_fractions=[0.5, 1.0],
        trainer="edje",
        trainer_args={"candidates": 8, "batch_size": 4, "negatives": 3, "hard": 2, "eval_queries": 12,
                      "synthetic": synthetic, "first_stage": {"checkpoint": str(first_stage)},
                      "module": {"config": {"feature_index": 2, "num_image_tokens": 4, "patch_positions": True,
                                            "adapter_heads": 2, "adapter_mlp_ratio": 1, "max_text_len": 16},
                                 "training": {"vocab_size": 200}}})
    results = tmp_path / "sweep.jsonl"
    ran = run_sweep(config, results, trainer_for(config.trainer))
    assert len(ran) == 4
    lines = read_evaluations(results)
    assert len(lines) == 2 * 2 * 2  # sizes x budgets x checkpoints (half the budget, all of it)
    assert {(e.size, e.examples) for e in lines if e.final} == {("s1", 16), ("s1", 32), ("s2", 16), ("s2", 32)}
    small, large = ({e.params for e in lines if e.size == s} for s in ("s1", "s2"))
    assert len(small) == len(large) == 1 and large.pop() > 5 * small.pop()
    for e in lines:
        assert e.steps * 4 == e.examples and e.examples in (e.budget // 2, e.budget)
        assert 0 <= e.metrics["nDCG@10"] <= 1 and e.metrics["CE@8"] > 0
        assert set(e.metrics) >= {"nDCG@1", "nDCG@5", "nDCG@10", "AP", "RR", "R@5", "CE@8"}
    # every evaluation is compared with the first stage on the same fixed candidates: one set of numbers for all
    assert all(set(e.references) == {"first stage", "alone"} for e in lines)
    assert len({json.dumps(e.references["first stage"], sort_keys=True) for e in lines}) == 1
    assert all(e.metrics == e.references["alone"] for e in lines)  # alpha 0: the recorded metrics are the logit's
    assert run_sweep(config, results, trainer_for(config.trainer)) == []  # resume: every point is finished

    out = tmp_path / "report"
    scaling_main(["fit", "--results", str(results), "--output-dir", str(out), "--resamples", "20",
                  "--data-resamples", "10", "--metrics", "nDCG@10"])
    report = json.loads((out / "report.json").read_text())
    assert "nDCG@10" in json.dumps(report) and (out / "report.md").is_file()
    assert [(r["size"], r["examples"]) for r in report["references"]] == [("s1", 32), ("s2", 32)]  # largest budget
    assert "## Every point against the first stage" in (out / "report.md").read_text()
    assert asdict(config.sizes[0])["dims"]["hidden"] == 16
