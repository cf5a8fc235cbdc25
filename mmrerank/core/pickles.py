"""Pickles from outside, read without running code: `safe_unpickle` admits plain containers, numbers, strings and
numeric numpy arrays / scalars, and refuses everything else.

What the real files hold: the Revisited Oxford / Paris ground truth (`gnd_roxford5k.pkl`, `gnd_rparis6k.pkl`) is a
dict of lists, strings and numbers with numpy int arrays (`easy`, `hard`, `junk`) and numpy scalars. numpy pickles
an array as `_reconstruct(ndarray, (0,), b"b")` followed by a BUILD with `(1, shape, dtype, fortran, raw bytes)`,
a dtype as `dtype("i8", False, True)` followed by a BUILD with `(3, "<", None, None, None, -1, -1, 0)`, and a
scalar as `scalar(dtype, raw bytes)`. At protocol 2 Python 3 writes every bytes object as
`_codecs.encode(text, "latin1")` (and `b""` as `__builtin__.bytes()`), since protocol 2 has no bytes opcode.
"""

from __future__ import annotations

import math
import os
import pickle
from io import BytesIO
from typing import Any

_PLAIN_KINDS = "biufc"  # bool, signed and unsigned integers, floats, complex: raw bytes and nothing else
_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_SCALAR = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}
_BYTES = {("__builtin__", "bytes"), ("builtins", "bytes")}


class _NdarrayMark:
    """Stands in for the `numpy.ndarray` global, so that a pickle can name it only as `_reconstruct`'s argument.

    Handing out the real class would let a pickle call `ndarray(shape)` itself and allocate whatever it likes.
    """

    def __repr__(self) -> str:
        return "<numpy.ndarray, admitted only as the subtype argument of _reconstruct>"


_NDARRAY_MARK = _NdarrayMark()


def _refuse(message: str) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(f"refusing {message}")


def _raw(data: Any, what: str) -> bytes:
    """Raw array / scalar data as bytes: bytes, or a Python 2 `str` decoded with `encoding="latin1"`."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        try:
            return data.encode("latin1")
        except UnicodeEncodeError:
            pass
    raise _refuse(f"{what} whose data is a {type(data).__name__}, not raw bytes (an object array?)")


def _is_plain(dtype: Any) -> bool:
    import numpy as np

    return (isinstance(dtype, np.dtype) and dtype.kind in _PLAIN_KINDS and not dtype.hasobject
            and dtype.fields is None and dtype.subdtype is None)


def _checked_dtype(spec: Any, align: Any = False, copy: Any = True) -> Any:
    """`numpy.dtype(spec, align, copy)` for a plain numeric type code such as `"i8"` or `"f4"` only.

    Object (`"O8"`), structured (`"V16"`), string and datetime codes are refused: an object dtype would turn the raw
    bytes that follow into Python object pointers.
    """
    import numpy as np

    spec = spec.decode("latin1") if isinstance(spec, bytes) else spec
    ok = isinstance(spec, str) and len(spec) >= 2 and spec[0] in _PLAIN_KINDS and spec[1:].isdecimal() \
        and spec.isascii() and isinstance(align, (bool, int)) and isinstance(copy, (bool, int))
    if not ok:
        raise _refuse(f"numpy.dtype({spec!r:.40}, ...): only the codes of bool, integer, float and complex types")
    try:
        # always a copy, as numpy's own pickles ask: the BUILD that follows must never reach numpy's shared dtypes
        dtype = np.dtype(spec, bool(align), True)
    except TypeError as err:
        raise _refuse(f"numpy.dtype({spec!r}): {err}") from None
    if not _is_plain(dtype):
        raise _refuse(f"numpy.dtype({spec!r}), which is not a plain numeric dtype")
    return dtype


def _checked_reconstruct(subtype: Any, shape: Any, typecode: Any) -> Any:
    """numpy's `_reconstruct`, only in the form numpy's own pickles use: an empty base-class array.

    numpy writes `_reconstruct(ndarray, (0,), b"b")` and fills the array in the following BUILD, which
    `SafeUnpickler` checks; so no subclass and no allocation from the pickle.
    """
    import numpy as np

    if subtype is not _NDARRAY_MARK or not (isinstance(shape, tuple) and shape == (0,)) \
            or typecode not in (b"b", "b"):
        raise _refuse(f"_reconstruct({subtype!r}, {shape!r:.40}, {typecode!r:.20}): only the empty numpy.ndarray "
                      "that numpy's own pickles start from")
    return _numpy_function(np.empty(0))(np.ndarray, (0,), b"b")


def _checked_scalar(dtype: Any, data: Any) -> Any:
    """numpy's `scalar(dtype, raw)`, for a plain numeric dtype and exactly one item of raw data."""
    import numpy as np

    if not _is_plain(dtype):
        raise _refuse(f"numpy scalar of dtype {dtype!r:.40}")
    raw = _raw(data, "a numpy scalar")
    if len(raw) != dtype.itemsize:
        raise _refuse(f"numpy scalar of dtype {dtype} with {len(raw)} bytes of data (it takes {dtype.itemsize})")
    return _numpy_function(np.float64(0))(dtype, raw)


def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """`_codecs.encode(text, "latin1")`, which is how Python 3 writes bytes at protocol 2, and nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _refuse(f"_codecs.encode({text!r:.40}, {encoding!r:.20}): only text to latin1 bytes")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """`bytes()`, how Python 3 writes `b""` at protocol 2; with arguments it is refused."""
    if args:
        raise _refuse(f"bytes{args!r:.40}: only bytes() with no argument")
    return b""


def _numpy_function(example: Any) -> Any:
    # the function numpy itself pickles with, whatever its module is called in this numpy version
    # (numpy.core.multiarray before 2.0, numpy._core.multiarray since)
    return example.__reduce__()[0]


def _build_dtype(dtype: Any, state: Any) -> None:
    # numpy's own state for a plain dtype; only the byte order may differ ('|' for one-byte types)
    if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[1] in ("<", ">", "|", "=")
            and state[2:] == (None, None, None, -1, -1, 0)):
        raise _refuse(f"the state {state!r:.80} for numpy dtype {dtype}: only a byte order may be set")
    dtype.__setstate__(state)
    if not _is_plain(dtype):
        raise _refuse(f"the state {state!r:.80}, which makes {dtype!r} more than a plain numeric dtype")


def _build_array(array: Any, state: Any) -> None:
    import numpy as np

    ok = isinstance(state, tuple) and len(state) == 5 and state[0] == 1 and isinstance(state[1], tuple) \
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in state[1])
    if not ok:
        raise _refuse(f"the state {state!r:.80} for a numpy array: expected (1, shape, dtype, fortran, data)")
    _, shape, dtype, fortran, data = state
    if not _is_plain(dtype):
        raise _refuse(f"a numpy array of dtype {dtype!r:.40}: only bool, integer, float and complex arrays")
    raw = _raw(data, "a numpy array")
    if len(raw) != math.prod(shape) * dtype.itemsize:
        raise _refuse(f"a numpy array of shape {shape} and dtype {dtype} with {len(raw)} bytes of data")
    if type(array) is not np.ndarray:  # only _checked_reconstruct makes arrays
        raise _refuse(f"BUILD on a {type(array).__name__}")
    array.__setstate__((1, shape, dtype, bool(fortran), raw))


class SafeUnpickler(pickle._Unpickler):
    """An unpickler for files from outside: plain containers, numbers and numeric numpy arrays, nothing else.

    Containers, strings, bytes and numbers need no global at protocols 3 and above. The only globals admitted are
    what numpy arrays and scalars pickle through (Python 3 at protocols 2 to 4; Python 2 pickles with
    `encoding="latin1"`), each replaced by a checked stand-in:

    - `numpy.core.multiarray._reconstruct` / `numpy._core.multiarray._reconstruct`: only the empty `ndarray`
      numpy starts an array from; `numpy.ndarray` only as its argument;
    - `numpy.dtype`: only bool, integer, float and complex codes (`"b1"`, `"i8"`, `"f4"`, `"c16"`, ...), never
      object, structured, string or datetime dtypes;
    - `numpy.core.multiarray.scalar` / `numpy._core.multiarray.scalar`: one item of such a dtype;
    - `_codecs.encode(text, "latin1")` and `bytes()` with no argument: how protocol 2 writes bytes.

    The BUILD opcode, which runs `__setstate__`, is admitted only on those dtypes (which may set nothing but a
    byte order) and arrays (a state whose raw bytes fill exactly the shape and dtype), once each. Every other
    global (`os.system`, `collections.OrderedDict`, `builtins.set`, protocol-5 arrays via
    `numpy._core.numeric._frombuffer`, ...) raises `pickle.UnpicklingError` naming it; so do object arrays.
    Persistent ids are refused too (the base class's default). This is the pure-Python unpickler, the one whose
    BUILD can be checked: slower than the C one, which is fine for annotation files of a few megabytes.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, *, encoding: str = "ASCII") -> None:
        super().__init__(file, encoding=encoding)
        # objects already given a state, by id; held here so that no id is reused by a new object during the load
        self._built: dict[int, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _RECONSTRUCT:
            return _checked_reconstruct
        if key == ("numpy", "ndarray"):
            return _NDARRAY_MARK
        if key == ("numpy", "dtype"):
            return _checked_dtype
        if key in _SCALAR:
            return _checked_scalar
        if key == ("_codecs", "encode"):
            return _latin1_encode
        if key in _BYTES:
            return _empty_bytes
        raise _refuse(f"to unpickle global {module}.{name}: only plain containers, numbers and numeric numpy arrays "
                      "are admitted")

    def load_build(self) -> None:
        import numpy as np

        state = self.stack.pop()
        target = self.stack[-1]
        if id(target) in self._built:
            raise _refuse(f"a second BUILD on the same {type(target).__name__}")
        if isinstance(target, np.dtype):
            _build_dtype(target, state)
        elif isinstance(target, np.ndarray):
            _build_array(target, state)
        else:
            raise _refuse(f"BUILD (__setstate__) on a {type(target).__name__}")
        self._built[id(target)] = target

    dispatch[pickle.BUILD[0]] = load_build


def safe_unpickle(path_or_bytes: str | os.PathLike | bytes | bytearray | memoryview, *,
                  encoding: str = "ASCII") -> Any:
    """Load a pickle from outside through `SafeUnpickler` (plain containers, numbers, numeric numpy arrays).

    Args:
        path_or_bytes: a file path, or the pickle's bytes.
        encoding: how to decode Python 2 `str` objects, as in `pickle.load` ("latin1" for Python 2 numpy arrays).

    Raises:
        FileNotFoundError: the path does not exist.
        pickle.UnpicklingError: the pickle names a global that is not admitted, or an object / structured numpy
            array (the message names it). Truncated or corrupt data raises what `pickle` raises for it
            (`UnpicklingError`, `EOFError`, ...).
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return SafeUnpickler(BytesIO(path_or_bytes), encoding=encoding).load()
    with open(path_or_bytes, "rb") as f:
        return SafeUnpickler(f, encoding=encoding).load()


