"""Old config keys and CLI flags, moved to their new names (with a `FutureWarning` naming each) before parsing.

One release of grace for the renames of issue 30 ("one vocabulary"): a config or command line written before them
parses to the same settings. Each rename is data below; `migrate_config` rewrites a loaded YAML tree in place and
`migrate_argv` rewrites flags and `--config` files.

- `pages.depth`, `instances.top_m` -> `rerank_depth` (`depth` is the first stage's K wherever it appears).
- `pages.pages` / `pages.annotations` + `pages.pages_parquet` -> `pages.dataset` (`SyntheticPages` / `MMDocIR`);
  `instances.dataset: <name>` (+ `instances.instances`, `instances.root`) -> `instances.dataset`
  (`SyntheticInstances` / `Revisited`): datasets are chosen by `class_path` everywhere.
- `MLLMRows`: `checkpoint` -> `model` (the trained reranker), `model` -> `base_model`; `EDJERows`: `dtype` ->
  `store_dtype`, a number `alpha` -> a list.
- `mmrerank rerank --depth` -> `--rerank_depth`; `mmrerank precompute --dtype` -> `--store_dtype`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mmrerank.core.deprecation import rename_keys, warn_renamed

SECTION_KEYS = {"pages": {"depth": "rerank_depth"}, "instances": {"top_m": "rerank_depth"}}
ROWS_KEYS = {"EDJERows": {"dtype": "store_dtype"}}
FLAGS = {
    "mmrerank benchmark": {"--pages.depth": "--pages.rerank_depth", "--instances.top_m": "--instances.rerank_depth"},
    "mmrerank rerank": {"--depth": "--rerank_depth"},
    "mmrerank precompute": {"--dtype": "--store_dtype"},
}
RERANKER_SECTIONS = ("image_text", "pages", "instances")


def migrate_config(config: dict[str, Any], where: str = "") -> bool:
    """Move every old key of a benchmark config (a loaded YAML mapping) to its new place; True when any moved."""
    before = repr(config)
    for section, renames in SECTION_KEYS.items():
        if isinstance(config.get(section), dict):
            rename_keys(config[section], {old: new for old, new in renames.items()}, f"{where} {section}".strip())
    if isinstance(config.get("pages"), dict):
        _pages_dataset(config["pages"], where)
    if isinstance(config.get("instances"), dict):
        _instances_dataset(config["instances"], where)
    for section in RERANKER_SECTIONS:
        rerankers = config.get(section, {}).get("rerankers") if isinstance(config.get(section), dict) else None
        for entry in rerankers or []:
            if isinstance(entry, dict) and isinstance(entry.get("init_args"), dict):
                _rows_args(str(entry.get("class_path", "")).rsplit(".", 1)[-1], entry["init_args"], where)
    return repr(config) != before


def _pages_dataset(pages: dict[str, Any], where: str) -> None:
    """`pages.pages` (a `PagesConfig`) or `pages.annotations` + `pages.pages_parquet` -> `pages.dataset`."""
    if "annotations" in pages or "pages_parquet" in pages:
        dataset = {"class_path": "MMDocIR", "init_args": {"annotations": pages.pop("annotations", None),
                                                          "pages_parquet": pages.pop("pages_parquet", None)}}
        old = "pages.annotations / pages.pages_parquet"
    elif "pages" in pages:
        dataset, old = {"class_path": "SyntheticPages", "init_args": dict(pages.pop("pages") or {})}, "pages.pages"
    else:
        return
    if "dataset" in pages:
        raise ValueError(f"both '{old}' (deprecated) and 'pages.dataset' are set{_at(where)}: keep only "
                         "'pages.dataset'")
    warn_renamed(old, f"pages.dataset (class_path: {dataset['class_path']})", where)
    pages["dataset"] = dataset


def _instances_dataset(instances: dict[str, Any], where: str) -> None:
    """`instances.dataset: synthetic | roxford5k | rparis6k` (with `instances.instances`, `instances.root`) ->
    `instances.dataset` by class_path."""
    name = instances.get("dataset", "synthetic" if "instances" in instances else None)
    if not isinstance(name, str):
        if "instances" in instances or "root" in instances:
            raise ValueError(f"instances.instances / instances.root (deprecated) beside a class_path "
                             f"instances.dataset{_at(where)}: give them as instances.dataset.init_args")
        return
    if name == "synthetic":
        dataset = {"class_path": "SyntheticInstances", "init_args": dict(instances.pop("instances", None) or {})}
    else:
        dataset = {"class_path": "Revisited", "init_args": {"name": name, "root": instances.pop("root", None)}}
    instances.pop("root", None)
    warn_renamed(f"instances.dataset: {name}", f"instances.dataset (class_path: {dataset['class_path']})", where)
    instances["dataset"] = dataset


def _rows_args(family: str, args: dict[str, Any], where: str) -> None:
    place = f"{where} {family}".strip()
    if family == "MLLMRows" and "checkpoint" in args:
        if "model" in args:  # `model` was the base model: it moves first, then the trained one takes its name
            if "base_model" in args:
                raise ValueError(f"MLLMRows{_at(where)}: 'model' (the old base model) and 'base_model' both set")
            warn_renamed("MLLMRows.model (the base model)", "MLLMRows.base_model", where)
            args["base_model"] = args.pop("model")
        rename_keys(args, {"checkpoint": "model"}, place)
    rename_keys(args, ROWS_KEYS.get(family, {}), place)
    if family == "EDJERows" and isinstance(args.get("alpha"), (int, float)):
        warn_renamed("EDJERows.alpha: <number>", "EDJERows.alpha: [<number>] (a list)", where)
        args["alpha"] = [float(args["alpha"])] if args["alpha"] else []


def _at(where: str) -> str:
    return f" in {where}" if where else ""


def migrate_argv(argv: list[str], prog: str) -> list[str]:
    """`argv` with old flags renamed and each `--config` file holding old keys replaced by its migrated text."""
    out, flags = [], FLAGS.get(prog, {})
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in flags:
            warn_renamed(name, flags[name], prog)
            arg = flags[name] + eq + value
        elif i > 0 and argv[i - 1] == "--config" or name == "--config" and eq:
            arg = ("--config=" if eq else "") + _migrated_file(value if eq else arg, prog)
        out.append(arg)
    return out


def _migrated_file(path: str, prog: str) -> str:
    """The config file's path, or its migrated YAML text (jsonargparse reads either) when it holds old keys."""
    if prog != "mmrerank benchmark" or not Path(path).is_file():
        return path
    config = yaml.safe_load(Path(path).read_text())
    if not isinstance(config, dict) or not migrate_config(config, path):
        return path
    return yaml.safe_dump(config, sort_keys=False)
