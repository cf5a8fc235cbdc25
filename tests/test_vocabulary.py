"""One name per concept (issue 30): the old names do not come back in packaged configs, CLI flags or public
signatures. Deprecated aliases (`mmrerank.core.deprecation`) are allowed: they hide behind the new signature.

- `depth` is the first stage's K; `rerank_depth` how many candidates a reranker rescores (no `top_m`, and no
  `depth` where a reranker's depth is meant).
- Datasets are chosen by `class_path` (never a plain string).
- A trained model is `model`, a base model `base_model` (no `checkpoint` in a family's rows); `alpha` is a list.
- The token store's dtype is `store_dtype`; one `save_pretrained`; `evaluate` (metrics) vs `evaluate_rows` (loop);
  `RerankerRows`, not "Spec".
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path

import pytest
import yaml

from mmrerank.fitting import CONFIG_DIR

CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
OLD_KEYS = {"top_m"}  # nowhere
OLD_PAGES_KEYS = {"depth", "pages", "annotations", "pages_parquet"}
OLD_INSTANCES_KEYS = {"top_m", "instances", "root"}
OLD_ROWS_KEYS = {"MLLMRows": {"checkpoint"}, "EDJERows": {"dtype"}}


def walk(node, path=()):
    """Every (key path, mapping) of a loaded YAML tree."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, (*path, str(key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, (*path, str(i)))


def old_names(path: Path) -> list[str]:
    """The old names a config file uses, each with where it is."""
    config = yaml.safe_load(path.read_text()) or {}
    problems = []
    for where, mapping in walk(config):
        at = ".".join(where) or "<top>"
        problems += [f"{at}.{key}" for key in OLD_KEYS & set(mapping)]
        class_path = str(mapping.get("class_path", ""))
        if class_path.startswith("mmrerank."):
            problems.append(f"{at}.class_path {class_path}: use the short name")
        family = class_path.rsplit(".", 1)[-1]
        args = mapping.get("init_args") or {}
        problems += [f"{at}.init_args.{key} ({family})" for key in OLD_ROWS_KEYS.get(family, set()) & set(args)]
        if family in ("EDJERows", "MLLMRows") and "alpha" in args and not isinstance(args["alpha"], list):
            problems.append(f"{at}.init_args.alpha: a list")
    pages, instances = config.get("pages") or {}, config.get("instances") or {}
    problems += [f"pages.{key}" for key in OLD_PAGES_KEYS & set(pages)]
    problems += [f"instances.{key}" for key in OLD_INSTANCES_KEYS & set(instances)]
    for section in ("image_text", "pages", "instances"):
        dataset = (config.get(section) or {}).get("dataset")
        if dataset is not None and not (isinstance(dataset, dict) and "class_path" in dataset):
            problems.append(f"{section}.dataset {dataset!r}: choose it by class_path")
    return problems


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_packaged_configs_use_the_one_vocabulary(path: Path):
    assert old_names(path) == []


def test_the_checker_sees_old_names(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("pages: {depth: 3}\ninstances: {dataset: synthetic, top_m: 4}\nimage_text:\n  rerankers:\n"
                   "    - {class_path: MLLMRows, init_args: {checkpoint: x}}\n"
                   "model: {class_path: mmrerank.retrieval.module.CLIPModule}\n")
    found = " | ".join(old_names(old))
    for name in ("pages.depth", "instances.top_m", "checkpoint (MLLMRows)", "short name", "instances.dataset"):
        assert name in found


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def rerankers_signatures():
    from mmrerank.commands import rerank as rerank_command
    from mmrerank.evaluation import loop
    from mmrerank.rerankers.base import Reranker
    from mmrerank.rerankers.superglobal import rerank
    from mmrerank.rerankers.superglobal.reranker import SuperGlobalReranker

    return {"Reranker.rerank": Reranker.rerank, "SuperGlobalReranker.rerank": SuperGlobalReranker.rerank,
            "evaluate_rows": loop.evaluate_rows, "rerank_sharded": loop.rerank_sharded,
            "mmrerank rerank": rerank_command.rerank, "superglobal.rerank": rerank}


@pytest.mark.parametrize("name", sorted(rerankers_signatures()))
def test_what_reranks_takes_rerank_depth(name):
    names = parameters(rerankers_signatures()[name])
    assert "rerank_depth" in names and not {"depth", "top_m"} & set(names)


def test_suites_and_rows_use_the_one_vocabulary():
    from mmrerank.datasets import ImageTextSource, InstanceSource, PageSource
    from mmrerank.evaluation.suites import ImageText, Instances, Pages
    from mmrerank.rerankers import family_rows
    from mmrerank.rerankers.rows import RerankContext, RerankerRows

    def fields(cls) -> dict:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    assert {"depth", "rerank_depth"} <= set(fields(ImageText))
    for suite in (Pages, Instances):  # their first stage ranks everything: no first-stage depth to name
        assert "rerank_depth" in fields(suite) and not {"depth", "top_m"} & set(fields(suite))
    assert "rerank_depth" in fields(RerankContext) and "depth" not in fields(RerankContext)
    for suite, base in ((ImageText, ImageTextSource), (Pages, PageSource), (Instances, InstanceSource)):
        assert typing.get_args(fields(suite)["dataset"])[0] is base  # `<Source> | None`: by class_path
    for name in family_rows.__all__:
        rows = getattr(family_rows, name)
        assert issubclass(rows, RerankerRows)
        hints = fields(rows)
        assert "checkpoint" not in hints and "dtype" not in hints, name
        if "alpha" in hints:
            assert typing.get_origin(hints["alpha"]) is list, name


def test_one_name_for_each_function():
    import mmrerank
    from mmrerank.evaluation import loop
    from mmrerank.rerankers.edje import writer
    from mmrerank.rerankers.edje.benchmark import precompute
    from mmrerank.rerankers.mllm.module import MLLMRerankerModule
    from mmrerank.retrieval.index import RetrievalIndex

    assert mmrerank.evaluate.__module__ == "mmrerank.core.metrics"
    assert "evaluate" not in loop.__dict__.get("__all__", [])
    assert loop.evaluate.__wrapped__ is loop.evaluate_rows  # the old loop name: an alias that warns
    assert writer.precompute.__wrapped__ is writer.write_token_store
    assert "store_dtype" in parameters(precompute) and "dtype" not in parameters(precompute)
    assert "save_pretrained" in vars(MLLMRerankerModule)
    assert parameters(RetrievalIndex.search)[:3] == ["self", "queries", "depth"]
    assert not [name for name in dir(mmrerank.rerankers) if name.endswith("Spec")]


@pytest.mark.parametrize(("command", "new", "old"), [
    ("rerank", "--rerank_depth", "--depth"), ("precompute", "--store_dtype", "--dtype"),
    ("search", "--depth", "--top_m"),
])
def test_cli_flags_use_the_one_vocabulary(command, new, old, capsys):
    from mmrerank.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    shown = capsys.readouterr().out
    assert new in shown and f"{old} " not in shown and f"{old}=" not in shown
