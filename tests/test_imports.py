"""`import mmrerank` stays light: faiss (and transformers) load only when a name that needs them is first read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def loaded_after(code: str) -> dict[str, bool]:
    """Which heavy modules a fresh interpreter has loaded after running `code` (a subprocess: this one has them)."""
    probe = code + "\nimport json, sys\nprint(json.dumps({m: m in sys.modules for m in ('faiss', 'transformers')}))"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_mmrerank_does_not_load_faiss():
    assert loaded_after("import mmrerank; mmrerank.Run; mmrerank.evaluate") == {"faiss": False,
                                                                                "transformers": False}


def test_lazy_names_resolve_and_load_faiss_then():
    """The probe can fail: reading `RetrievalIndex` must load faiss and give the class itself."""
    code = ("import mmrerank\nfrom mmrerank.retrieval.index import RetrievalIndex\n"
            "assert mmrerank.RetrievalIndex is RetrievalIndex\n"
            "from mmrerank.rerankers.presets import load_reranker\nassert mmrerank.load_reranker is load_reranker\n"
            "assert 'RetrievalIndex' in dir(mmrerank)")
    assert loaded_after(code)["faiss"] is True


def test_unknown_name_is_an_attribute_error():
    import mmrerank
    try:
        mmrerank.no_such_name  # noqa: B018
    except AttributeError as error:
        assert "no_such_name" in str(error)
    else:
        raise AssertionError("mmrerank.no_such_name did not raise")


def test_old_metrics_path_warns_and_gives_the_same_function():
    import pytest

    from mmrerank.core.metrics import evaluate
    with pytest.warns(FutureWarning, match=r"mmrerank\.core\.metrics\.evaluate"):
        from mmrerank.metrics import evaluate as old
    assert old is evaluate
