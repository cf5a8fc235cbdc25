"""File helpers: atomic writes and safe loading of files from outside."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename, on error it vanishes.

    Readers therefore see either the old file or the complete new one, never a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp_path)` and move the result onto `path` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# --- pickles from outside -------------------------------------------------------------------------------------------

class _NdarrayMark:
    """Stands in for the `numpy.ndarray` global, so that a pickle can name it only as `_reconstruct`'s argument.

    Handing out the real class would let a pickle call `ndarray(shape)` itself and allocate whatever it likes.
    """

    def __repr__(self) -> str:
        return "<numpy.ndarray, admitted only as the subtype argument of _reconstruct>"


_NDARRAY_MARK = _NdarrayMark()


def _checked_reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
    """numpy's `_reconstruct`, only in the form numpy's own pickles use: an empty base-class array.

    numpy writes `_reconstruct(ndarray, (0,), b"b")` and fills the array in the following BUILD (`__setstate__`),
    which checks that the raw data matches shape and dtype; so no subclass and no allocation from the pickle.
    """
    import numpy as np

    if subtype is not _NDARRAY_MARK or not (isinstance(shape, tuple) and shape == (0,)):
        raise pickle.UnpicklingError(f"refusing _reconstruct({subtype!r}, {shape!r}, ...): only the empty "
                                     "numpy.ndarray that numpy's own pickles start from is admitted")
    return _numpy_reconstruct()(np.ndarray, (0,), dtype)


def _numpy_reconstruct() -> Any:
    import numpy as np

    # the function numpy itself pickles arrays with, whatever its module is called in this numpy version
    # (numpy.core.multiarray before 2.0, numpy._core.multiarray since)
    return np.empty(0).__reduce__()[0]


class SafeUnpickler(pickle.Unpickler):
    """An unpickler for files from outside: plain containers, numbers and numpy arrays, nothing else.

    Containers, strings, bytes and numbers need no global at protocol 3 and above. The only globals admitted are
    what numpy arrays pickle through (Python 3 at protocols 3 and 4; Python 2 pickles with `encoding="latin1"`):
    `numpy.core.multiarray._reconstruct` / `numpy._core.multiarray._reconstruct` (checked to build only an empty
    `ndarray`, see `_checked_reconstruct`), `numpy.ndarray` (only as that argument) and `numpy.dtype`.
    Every other global (`os.system`, `collections.OrderedDict`, `builtins.set`, numpy scalars via
    `numpy._core.multiarray.scalar`, protocol-5 arrays via `numpy._core.numeric._frombuffer`, protocol 0-2 bytes
    via `_codecs.encode`, ...) raises `pickle.UnpicklingError` naming it.
    Persistent ids are refused too (the base class's default).
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            return _checked_reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return _NDARRAY_MARK
        if (module, name) == ("numpy", "dtype"):
            import numpy as np

            return np.dtype
        raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}: only plain containers, "
                                     "numbers and numpy arrays are admitted")


def safe_unpickle(path_or_bytes: str | os.PathLike | bytes | bytearray | memoryview, *,
                  encoding: str = "ASCII") -> Any:
    """Load a pickle from outside through `SafeUnpickler` (plain containers, numbers, numpy arrays).

    Args:
        path_or_bytes: a file path, or the pickle's bytes.
        encoding: how to decode Python 2 `str` objects, as in `pickle.load` ("latin1" for Python 2 numpy arrays).

    Raises:
        FileNotFoundError: the path does not exist.
        pickle.UnpicklingError: the pickle names a global that is not admitted (the message names it). Truncated
            or corrupt data raises what `pickle` raises for it (`UnpicklingError`, `EOFError`, ...).
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return SafeUnpickler(BytesIO(path_or_bytes), encoding=encoding).load()
    with open(path_or_bytes, "rb") as f:
        return SafeUnpickler(f, encoding=encoding).load()


def load_pickle(path: str | os.PathLike) -> Any:
    """`safe_unpickle` of a file path."""
    return safe_unpickle(Path(path))


def cache_root() -> Path:
    """Where generated data is cached: `$MMRERANK_CACHE`, or `~/.cache/mmrerank`."""
    return Path(os.environ.get("MMRERANK_CACHE", Path.home() / ".cache" / "mmrerank"))


def key_digest(key: Any, length: int = 16) -> str:
    """A short hex digest of a JSON-able cache key (dict order does not matter), for cache file names."""
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:length]


def generate_folder_once(final: Path, marker: str, generate: Callable[[Path], None]) -> Path:
    """Return `final`, first filling it with `generate(tmp_folder)` unless `final / marker` exists.

    The folder is generated beside its final place and renamed into it in one step, so a reader never sees a
    half-written folder; if another process finished the same folder first, its (identical) copy is kept.
    """
    final = Path(final)
    if (final / marker).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        generate(tmp)
        try:
            tmp.rename(final)
        except OSError:  # `final` appeared meanwhile
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
