"""No constructor in `mmrerank/` takes more than 12 parameters: settings that grow come as config objects
(dataclasses, which are exempt: they are the config objects), as `EDJEModule(config, loss_functions, training)`."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import pytest

import mmrerank

MAX_PARAMS = 12


def all_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(mmrerank.__path__, "mmrerank."))


def too_many(module_name: str) -> list[str]:
    """`Class(n params)` for each class defined in the module whose own `__init__` takes more than `MAX_PARAMS`."""
    module = importlib.import_module(module_name)
    found = []
    for name, cls in vars(module).items():
        if not inspect.isclass(cls) or cls.__module__ != module_name or dataclasses.is_dataclass(cls):
            continue
        init = cls.__dict__.get("__init__")
        if init is None or not inspect.isfunction(init):
            continue
        params = [p for p in inspect.signature(init).parameters.values() if p.name != "self"
                  and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if len(params) > MAX_PARAMS:
            found.append(f"{module_name}.{name} ({len(params)} params)")
    return found


def test_every_module_is_checked():
    assert "mmrerank.rerankers.edje.module" in all_modules() and len(all_modules()) > 50


def test_no_constructor_takes_more_than_12_parameters():
    assert [entry for module in all_modules() for entry in too_many(module)] == []


def test_the_check_catches_a_wide_constructor(monkeypatch):
    import sys
    import types

    fake = types.ModuleType("fake_wide")
    monkeypatch.setitem(sys.modules, "fake_wide", fake)
    exec("class Wide:\n    def __init__(self, " + ", ".join(f"a{i}=0" for i in range(13)) + "):\n        pass\n"
         "import dataclasses\n@dataclasses.dataclass\nclass Config:\n" +
         "".join(f"    f{i}: int = 0\n" for i in range(20)), fake.__dict__)
    assert too_many("fake_wide") == ["fake_wide.Wide (13 params)"]


@pytest.mark.parametrize("name", ["mmrerank.rerankers.edje.module.EDJEModule",
                                  "mmrerank.rerankers.mllm.module.MLLMRerankerModule",
                                  "mmrerank.rerankers.mllm.reranker.MLLMReranker"])
def test_the_three_wide_constructors_take_config_objects(name):
    module, _, cls = name.rpartition(".")
    params = inspect.signature(getattr(importlib.import_module(module), cls)).parameters
    assert len([p for p in params.values() if p.kind is not p.VAR_KEYWORD]) <= 6
