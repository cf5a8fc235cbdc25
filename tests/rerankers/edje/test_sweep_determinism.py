"""A sweep point's numbers depend on its seed only, not on which caches are already on disk."""

from __future__ import annotations

from typing import Any

from mmrerank.rerankers.edje import build_wordpiece_tokenizer, sweep
from mmrerank.retrieval.clip import CLIPEncoder
from mmrerank.scaling.grid import ModelSize, SweepConfig, grid_points


class Recorder:
    """Stands in for the sweep's `EvalRecorder`: keeps every evaluation in memory."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **evaluation: Any) -> None:
        self.calls.append(evaluation)


def train_once(point, cache, monkeypatch) -> list[dict[str, Any]]:
    """Train `point` with `$MMRERANK_CACHE=cache`, as a fresh process would (no in-memory eval task)."""
    monkeypatch.setenv("MMRERANK_CACHE", str(cache))
    monkeypatch.setattr(sweep, "_TASKS", {})
    recorder = Recorder()
    sweep.train_point(point, recorder)
    return recorder.calls


def test_same_seed_same_metrics_with_a_cold_or_a_warm_cache(tmp_path, monkeypatch):
    first_stage = tmp_path / "fs"
    CLIPEncoder("mmrerank-tiny-resnet").save_pretrained(first_stage)
    # A saved tokenizer: a WordPiece vocabulary trained by `tokenizers` differs from one call to the next (hash-map
    # order, huggingface/tokenizers#1794), which would hide what this test is about.
    tokenizer = tmp_path / "tokenizer"
    build_wordpiece_tokenizer(["a red circle left of a blue square", "a green star above a box"],
                              vocab_size=60).save_pretrained(tokenizer)
    # root None: the synthetic splits too are generated under the (cold) cache
    synthetic = {"seed": 5, "train_images": 32, "val_images": 16, "test_images": 16}
    config = SweepConfig(
        sizes=[ModelSize("s1", 1, {"hidden": 16, "layers": 1, "heads": 2})], budgets=[16], losses=["listwise"],
        eval_fractions=[0.5, 1.0],
        trainer_args={"candidates": 8, "batch_size": 4, "negatives": 3, "hard": 2, "eval_queries": 12,
                      "warmup_steps": 1, "synthetic": synthetic, "first_stage": {"checkpoint": str(first_stage)},
                      "module": {"feature_index": 2, "num_image_tokens": 4, "adapter_heads": 2,
                                 "adapter_mlp_ratio": 1, "max_text_len": 16, "tokenizer": str(tokenizer)}})
    # and the default sweep's recipe: twins, a curriculum, the first stage's text side, fusion, bf16
    recipe = SweepConfig(**{**config.__dict__, "trainer_args": {
        **config.trainer_args, "twins": True, "curriculum_steps": 2, "alpha": 5.0, "precision": "bf16-mixed",
        "module": {**config.trainer_args["module"], "tokenizer": None, "text": "first_stage:mmrerank-tiny-resnet"}}})
    for cfg in (config, recipe):
        same_numbers_cold_or_warm(cfg, tmp_path / f"cache-{len(cfg.trainer_args)}", monkeypatch)


def same_numbers_cold_or_warm(config, cache, monkeypatch):
    [point] = grid_points(config)
    cold = train_once(point, cache, monkeypatch)
    assert (cache / "negatives").is_dir() and (cache / "patches").is_dir()  # the caches the second run reads
    warm = train_once(point, cache, monkeypatch)
    assert [c["examples"] for c in cold] == [8, 16]
    for a, b in zip(cold, warm, strict=True):
        assert a["metrics"] == b["metrics"], (a["examples"], a["metrics"], b["metrics"])  # exactly, not approx
        assert a["references"] == b["references"]
    # and the training does learn something the seed decides: a different seed gives other numbers
    other = train_once(grid_points(SweepConfig(**{**config.__dict__, "seeds": [1]}))[0], cache, monkeypatch)
    assert other[-1]["metrics"]["CE@8"] != cold[-1]["metrics"]["CE@8"]
