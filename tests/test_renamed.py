"""Old names keep working for one release: an old config, flag or function parses to what the new one gives, with a
`FutureWarning` that names the new name (issue 30, "one vocabulary")."""

from __future__ import annotations

import textwrap

import pytest
import torch

from mmrerank.benchmark import benchmark
from mmrerank.cli import parse_function_args
from mmrerank.commands.renamed import migrate_argv, migrate_config
from mmrerank.datasets import MMDocIR, Revisited, SyntheticInstances, SyntheticPages

OLD_BENCHMARK = """\
image_text:
  directions: [t2i]
  depth: 30
  rerank_depth: 8
  rerankers:
    - class_path: EDJERows
      init_args: {model: checkpoints/edje/synthetic, alpha: 20.0, dtype: float16}
pages:
  pages: {seed: 3, documents: 7}
  depth: 4
  rerankers:
    - class_path: MLLMRows
      init_args: {checkpoint: checkpoints/mllm/pages, model: Qwen/Qwen2-VL-2B-Instruct, alpha: [1.0]}
instances:
  dataset: synthetic
  instances: {queries: 5, distractors: 20}
  top_m: 50
"""


def parse(tmp_path, text: str, *flags: str):
    path = tmp_path / "old.yaml"
    path.write_text(textwrap.dedent(text))
    return parse_function_args(benchmark, "mmrerank benchmark", ["--config", str(path), *flags])


def messages(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, FutureWarning)]


def test_an_old_benchmark_config_parses_to_the_new_settings_and_names_each_new_key(tmp_path):
    with pytest.warns(FutureWarning) as record:
        kwargs = parse(tmp_path, OLD_BENCHMARK)
    said = " | ".join(messages(record))
    for new in ("'rerank_depth'", "pages.dataset (class_path: SyntheticPages)", "instances.dataset (class_path: "
                "SyntheticInstances)", "'store_dtype'", "EDJERows.alpha: [<number>]", "MLLMRows.base_model",
                "'model'"):
        assert new in said, new
    image_text, pages, instances = kwargs["image_text"], kwargs["pages"], kwargs["instances"]
    assert (image_text.depth, image_text.rerank_depth) == (30, 8)  # image_text's names did not change
    edje, = image_text.rerankers
    assert edje.alpha == [20.0] and edje.store_dtype == "float16" and edje.model == "checkpoints/edje/synthetic"
    assert pages.rerank_depth == 4 and isinstance(pages.dataset, SyntheticPages)
    assert (pages.dataset.config.seed, pages.dataset.config.documents) == (3, 7)
    mllm, = pages.rerankers
    assert (mllm.model, mllm.base_model) == ("checkpoints/mllm/pages", "Qwen/Qwen2-VL-2B-Instruct")
    assert instances.rerank_depth == 50 and isinstance(instances.dataset, SyntheticInstances)
    assert (instances.dataset.config.queries, instances.dataset.config.distractors) == (5, 20)


def test_the_new_config_gives_the_same_settings_without_a_warning(tmp_path):
    new = """\
    pages:
      dataset: {class_path: SyntheticPages, init_args: {seed: 3, documents: 7}}
      rerank_depth: 4
    instances:
      dataset: {class_path: SyntheticInstances, init_args: {queries: 5, distractors: 20}}
      rerank_depth: 50
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        kwargs = parse(tmp_path, new)
    assert kwargs["pages"].rerank_depth == 4 and kwargs["pages"].dataset.config.seed == 3
    assert kwargs["instances"].dataset.config.queries == 5


def test_old_real_benchmark_files_become_mmdocir_and_revisited(tmp_path):
    old = """\
    pages: {annotations: a.jsonl, pages_parquet: p.parquet, depth: 9}
    instances: {dataset: rparis6k, root: /data/rparis6k, top_m: 100}
    """
    with pytest.warns(FutureWarning):
        kwargs = parse(tmp_path, old)
    pages, instances = kwargs["pages"], kwargs["instances"]
    assert isinstance(pages.dataset, MMDocIR) and pages.rerank_depth == 9
    assert (pages.dataset.annotations, pages.dataset.pages_parquet) == ("a.jsonl", "p.parquet")
    assert isinstance(instances.dataset, Revisited) and instances.rerank_depth == 100
    assert (instances.dataset.name, instances.dataset.root) == ("rparis6k", "/data/rparis6k")


def test_old_flags_are_renamed_with_a_warning(tmp_path):
    with pytest.warns(FutureWarning) as record:
        kwargs = parse(tmp_path, "output_dir: out\n", "--pages.depth=7", "--instances.top_m", "60")
    said = " | ".join(messages(record))
    assert "use '--pages.rerank_depth'" in said and "use '--instances.rerank_depth'" in said
    assert kwargs["pages"].rerank_depth == 7 and kwargs["instances"].rerank_depth == 60
    with pytest.warns(FutureWarning, match="--rerank_depth"):
        assert migrate_argv(["--depth=4", "--run=r.trec"], "mmrerank rerank") == ["--rerank_depth=4", "--run=r.trec"]
    with pytest.warns(FutureWarning, match="--store_dtype"):
        assert migrate_argv(["--dtype", "float16"], "mmrerank precompute") == ["--store_dtype", "float16"]
    assert migrate_argv(["--depth=100"], "mmrerank search") == ["--depth=100"]  # search's depth is the first stage's


def test_an_old_and_a_new_key_together_are_an_error():
    with pytest.raises(ValueError, match="both 'top_m' .* and 'rerank_depth'"):
        migrate_config({"instances": {"top_m": 5, "rerank_depth": 6}})
    with pytest.raises(ValueError, match="pages.dataset"):
        migrate_config({"pages": {"pages": {"seed": 1}, "dataset": {"class_path": "SyntheticPages"}}})


def test_old_function_and_argument_names_still_work_and_warn():
    from mmrerank.evaluation import loop
    from mmrerank.rerankers.edje import writer
    from mmrerank.rerankers.superglobal import rerank
    from mmrerank.retrieval.index import RetrievalIndex

    with pytest.warns(FutureWarning, match="evaluate_rows"):
        assert loop.evaluate.__wrapped__ is loop.evaluate_rows
        warn_through(loop.evaluate)
    with pytest.warns(FutureWarning, match="write_token_store"):
        warn_through(writer.precompute)
    queries, database = torch.nn.functional.normalize(torch.randn(3, 8), dim=1), torch.eye(8)
    with pytest.warns(FutureWarning, match="'rerank_depth'"):
        old = rerank(queries, database, top_m=5, k=2)
    assert torch.equal(old, rerank(queries, database, rerank_depth=5, k=2))
    index = RetrievalIndex(8, device="cpu")
    index.add(database)
    with pytest.warns(FutureWarning, match="'depth'"):
        found = index.search(queries, k=3)
    assert torch.equal(found.indices, index.search(queries, depth=3).indices)
    with pytest.warns(FutureWarning, match="RerankerRows"):
        from mmrerank.rerankers.spec import RerankerSpec
    from mmrerank.rerankers import RerankerRows

    assert RerankerSpec is RerankerRows


def warn_through(function) -> None:
    """Call a deprecated alias with arguments its target refuses at once: the warning comes first."""
    with pytest.raises(Exception):  # noqa: B017 (the target's own refusal of these arguments)
        function()
