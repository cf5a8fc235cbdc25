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
