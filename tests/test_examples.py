"""The docstring `Examples` of the public entry points run as written (offline: toy rerankers, a tiny untrained
first stage, hand-made runs), so the documentation cannot drift from the code."""

from __future__ import annotations

import doctest
import importlib

import pytest

# module: the objects whose docstrings must hold an example (each is run, with the whole module's other examples)
DOCUMENTED = {
    "mmrerank.rerankers.presets": ["load_reranker", "list_presets"],
    "mmrerank.rerankers.base": ["Reranker.rank", "Reranker.rerank"],
    "mmrerank.retrieval.index": ["RetrievalIndex"],
    "mmrerank.core.metrics": ["evaluate"],
    "mmrerank.core.deprecation": ["rename_keys", "renamed_arguments"],
    "mmrerank.datasets.page_sources": ["SyntheticPages"],
    "mmrerank.datasets.instance_sources": ["SyntheticInstances"],
    "mmrerank.evaluation.suites": ["row_over"],
}


def _object(module, dotted: str):
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return getattr(obj, "__wrapped__", obj)


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.setenv("MMRERANK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    module = importlib.import_module(name)
    for dotted in DOCUMENTED[name]:
        assert ">>>" in (_object(module, dotted).__doc__ or ""), f"{name}.{dotted} has no example"
    finder = doctest.DocTestFinder()
    tests = [t for t in finder.find(module, name) if t.examples]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0, f"{result.failed} of {result.attempted} examples failed"


def test_a_wrong_example_fails():
    """The runner sees a failing example (the check can fail)."""

    def wrong():
        """
        >>> 1 + 1
        3
        """

    test = doctest.DocTestFinder().find(wrong, "wrong")[0]
    runner = doctest.DocTestRunner()
    runner.run(test, out=lambda _: None)
    assert runner.summarize(verbose=False).failed == 1
