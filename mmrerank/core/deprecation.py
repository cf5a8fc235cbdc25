"""Renamed settings keep working for one release, with a warning that names the new key.

One function, so every renamed config key, argument or CLI flag says the same thing the same way, and a test can
collect them all (`FutureWarning`, which Python shows to users by default, unlike `DeprecationWarning`).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, MutableMapping
from typing import Any

REMOVED_IN = "0.2"


def warn_renamed(old: str, new: str, where: str = "", stacklevel: int = 3) -> None:
    """Warn that `old` is now `new` (`where`: the config file, class or command it was found in)."""
    place = f" in {where}" if where else ""
    warnings.warn(f"'{old}'{place} is deprecated and will be removed in mmrerank {REMOVED_IN}: use '{new}'",
                  FutureWarning, stacklevel=stacklevel)


def rename_keys(settings: MutableMapping[str, Any], renames: dict[str, str],
                where: str = "") -> MutableMapping[str, Any]:
    """Move each old key of `settings` to its new name in place, warning once per key; both given is an error.

    >>> s = {"top_m": 10}
    >>> import warnings
    >>> with warnings.catch_warnings(record=True):
    ...     rename_keys(s, {"top_m": "rerank_depth"})
    {'rerank_depth': 10}
    """
    for old, new in renames.items():
        if old not in settings:
            continue
        if new in settings:
            place = f" in {where}" if where else ""
            raise ValueError(f"both '{old}' (deprecated) and '{new}' are set{place}: keep only '{new}'")
        warn_renamed(old, new, where, stacklevel=4)
        settings[new] = settings.pop(old)
    return settings


def renamed_arguments(**renames: str) -> Callable:
    """Decorate a function whose keyword arguments were renamed (`old="new"`): a call with an old name warns and
    passes the value under the new one. The signature `inspect` shows is the function's own (new names only).

    >>> @renamed_arguments(top_m="rerank_depth")
    ... def shortlist(rerank_depth: int = 4) -> int:
    ...     return rerank_depth
    >>> with warnings.catch_warnings(record=True):
    ...     shortlist(top_m=9)
    9
    """

    def decorate(function: Callable) -> Callable:
        where = function.__qualname__

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{where}: both '{old}' (deprecated) and '{new}' given: keep only '{new}'")
                    warn_renamed(old, new, where)
                    kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        wrapper.renamed_arguments = dict(renames)  # read by tests/test_vocabulary.py
        return wrapper

    return decorate


def renamed_function(function: Callable, old: str) -> Callable:
    """`function` under its old name `old`: the same call, with a warning naming the new name."""
    new = f"{function.__module__}.{function.__qualname__}"

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        warn_renamed(old, new)
        return function(*args, **kwargs)

    wrapper.__name__ = wrapper.__qualname__ = old.rsplit(".", 1)[-1]
    wrapper.__doc__ = f"Deprecated name of `{new}` (removed in mmrerank {REMOVED_IN})."
    return wrapper
def nest_renamed(flat: MutableMapping[str, Any], paths: dict[str, str], where: str = "") -> dict[str, Any]:
    """Flat settings of an older release moved to their nested places: `paths` maps an old key to a dotted path
    (`lr` -> `training.lr`); each old key found warns once (`warn_renamed`). Keys not in `paths` are kept as they
    are; a group already given as a dict (or a dataclass, read with `asdict`) receives the moved keys.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True):
    ...     nest_renamed({"lr": 0.1, "name": "x"}, {"lr": "training.lr"})
    {'name': 'x', 'training': {'lr': 0.1}}
    """
    from dataclasses import asdict, is_dataclass

    out = {k: v for k, v in flat.items() if k not in paths}
    for key, path in paths.items():
        if key not in flat:
            continue
        warn_renamed(key, path, where, stacklevel=4)
        group, name = path.split(".", 1)
        section = out.get(group) or {}
        section = asdict(section) if is_dataclass(section) else dict(section)
        section[name] = flat[key]
        out[group] = section
    return out


# Fields of a saved model's config file renamed since an earlier release, by the folder's `model_type`
# (`rerankers.folders`): old name -> new name. A folder saved before the rename still loads: `migrate_saved_config`
# moves the field and warns (naming the file), instead of the loader failing on a key it does not know. Each rename
# of a saved field adds its entry here in the release that makes it, and the entry goes with `REMOVED_IN`.
SAVED_RENAMES: dict[str, dict[str, str]] = {"mmrerank-edje": {}, "mmrerank-mllm": {}, "mmrerank-clip": {}}


def migrate_saved_config(config: MutableMapping[str, Any], model_type: str, where: str) -> dict[str, Any]:
    """A saved model's config (`config.json` / `reranker.json` as read) with renamed fields under their new names.

    Raises:
        ValueError: an old and a new name both present (`rename_keys`).
    """
    return dict(rename_keys(dict(config), SAVED_RENAMES.get(model_type, {}), where))
