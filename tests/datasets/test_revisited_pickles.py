"""The safe unpickler on Revisited Oxford / Paris ground truth in the form of the real `gnd_*.pkl` files.

The real files are dicts with `imlist`, `qimlist` and `gnd`, whose entries hold `easy` / `hard` / `junk` numpy int
arrays and `bbx` boxes; numpy writes arrays through `_reconstruct`, `ndarray` and `dtype`, scalars through
`multiarray.scalar`, and at protocol 2 every bytes object through `_codecs.encode(text, "latin1")`.
"""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest

from mmrerank.core.pickles import safe_unpickle
from mmrerank.datasets.revisited import load_revisited

DB = ["all_souls_000000", "ashmolean_000001", "balliol_000002", "christ_church_000003", "radcliffe_000004"]
QUERIES = ["all_souls_000013", "ashmolean_000058"]


def real_form_gnd() -> dict:
    """Ground truth as the benchmark ships it: int64 arrays (one empty), boxes with numpy float scalars."""
    return {
        "imlist": list(DB),
        "qimlist": list(QUERIES),
        "gnd": [
            {"bbx": [np.float64(136.5), np.float64(34.0), np.float64(648.25), np.float64(955.0)],
             "easy": np.array([0, 3], dtype=np.int64), "hard": np.array([4], dtype=np.int64),
             "junk": np.array([], dtype=np.int64)},
            {"bbx": [25.0, 11.5, np.float64(300.0), 400.75],
             "easy": np.array([1], dtype=np.int64), "hard": np.array([2, 3], dtype=np.int64),
             "junk": np.array([0], dtype=np.int64)},
        ],
    }


def assert_same(loaded, expected) -> None:
    """Equal values, and the same numpy types and dtypes, all the way down."""
    assert type(loaded) is type(expected), (type(loaded), type(expected))
    if isinstance(expected, np.ndarray):
        assert loaded.dtype == expected.dtype and loaded.shape == expected.shape
        assert np.array_equal(loaded, expected)
    elif isinstance(expected, dict):
        assert list(loaded) == list(expected)
        for key in expected:
            assert_same(loaded[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert len(loaded) == len(expected)
        for a, b in zip(loaded, expected):
            assert_same(a, b)
    else:
        assert loaded == expected


@pytest.mark.parametrize("protocol", [2, 4])
def test_ground_truth_in_the_real_form_loads_with_equal_values(protocol, tmp_path):
    gnd = real_form_gnd()
    data = pickle.dumps(gnd, protocol=protocol)
    # what the stream holds: the numpy globals, and at protocol 2 bytes written through _codecs.encode
    for name in (b"_reconstruct", b"ndarray", b"dtype", b"scalar"):
        assert name in data
    assert (b"_codecs" in data) == (protocol == 2)
    assert_same(safe_unpickle(data), pickle.loads(data))
    assert_same(safe_unpickle(data), gnd)

    (tmp_path / "gnd_roxford5k.pkl").write_bytes(data)
    ds = load_revisited(tmp_path)
    assert ds.db_names == DB and ds.query_names == QUERIES
    assert ds.boxes.tolist() == [[136.5, 34.0, 648.25, 955.0], [25.0, 11.5, 300.0, 400.75]]
    assert [x.tolist() for x in ds.easy] == [[0, 3], [1]]
    assert [x.tolist() for x in ds.hard] == [[4], [2, 3]]
    assert [x.tolist() for x in ds.junk] == [[], [0]]


def test_numpy_1_names_load_too():
    # numpy < 2 writes numpy.core.multiarray; protocol 2 spells globals out as text lines, so the name can be swapped
    data = pickle.dumps(real_form_gnd(), protocol=2)
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in old and b"cnumpy.core.multiarray\nscalar\n" in old
    assert_same(safe_unpickle(old), real_form_gnd())


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_every_plain_numeric_dtype_round_trips(protocol):
    arrays = [np.array([True, False]), np.arange(5, dtype=np.uint8), np.arange(-3, 3, dtype=">i4"),
              np.array([0.5, -1.25], dtype=np.float16), np.arange(4.0).reshape(2, 2).T,  # not C-contiguous
              np.array([1 + 2j], dtype=np.complex128), np.zeros((0, 3), dtype=np.float32)]
    scalars = [np.int32(-7), np.uint64(2**63), np.bool_(True), np.float32(0.1), np.complex64(1j)]
    data = pickle.dumps([arrays, scalars], protocol=protocol)
    # the reference is the stock unpickler (numpy itself turns the big-endian array native on loading)
    assert_same(safe_unpickle(data), pickle.loads(data))
    loaded_arrays, loaded_scalars = safe_unpickle(data)
    assert all(np.array_equal(a, b) and a.dtype.kind == b.dtype.kind for a, b in zip(loaded_arrays, arrays))
    assert loaded_scalars == scalars


class Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 wrote its `str`: SHORT_BINSTRING / BINSTRING, no `_codecs` call."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def test_python_2_pickles_load_with_latin1():
    import io

    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(real_form_gnd())
    data = buffer.getvalue()
    assert b"_codecs" not in data and pickle.SHORT_BINSTRING in data
    assert_same(safe_unpickle(data, encoding="latin1"), real_form_gnd())


# --- what stays refused -------------------------------------------------------------------------------------------


class RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [2, 4])
def test_os_system_inside_the_ground_truth_is_refused(protocol, tmp_path):
    marker = tmp_path / "pwned"
    gnd = real_form_gnd()
    gnd["gnd"][1]["bbx"] = RunsACommand(marker)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle global \w+\.system"):
        safe_unpickle(pickle.dumps(gnd, protocol=protocol))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("array", [
    np.array([1, "two", None], dtype=object),
    np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),  # structured
    np.array(["ab", "c"]),  # unicode strings
    np.array(["2020-01-01"], dtype="datetime64[D]"),
], ids=["object", "structured", "unicode", "datetime"])
def test_non_numeric_arrays_are_refused(protocol, array):
    gnd = real_form_gnd()
    gnd["gnd"][0]["junk"] = array
    with pytest.raises(pickle.UnpicklingError, match=r"refusing numpy\.dtype\("):
        safe_unpickle(pickle.dumps(gnd, protocol=protocol))


def test_an_object_array_cannot_reach_its_globals():
    # the objects of an object array are pickled in a list after the dtype; the dtype is refused before them
    class Inner:
        def __reduce__(self):
            return os.system, ("true",)

    with pytest.raises(pickle.UnpicklingError, match=r"'O8'"):
        safe_unpickle(pickle.dumps(np.array([Inner()], dtype=object), protocol=2))


def _swap_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, data.count(old)
    return data.replace(old, new)


def test_a_dtype_state_that_sets_more_than_byte_order_is_refused():
    data = pickle.dumps(np.arange(3, dtype=np.int64), protocol=2)
    # the dtype state (3, '<', None, None, None, -1, -1, 0) ends in the flags 0; 63 would claim Python objects
    flags = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"
    with pytest.raises(pickle.UnpicklingError, match="only a byte order may be set"):
        safe_unpickle(_swap_once(data, flags, flags.replace(b"K\x00", b"K\x3f")))


def test_array_and_scalar_data_must_fill_exactly():
    data = pickle.dumps(np.arange(3, dtype=np.int64), protocol=4)  # raw data: 24 bytes after SHORT_BINBYTES 0x18
    short = _swap_once(data, b"C\x18" + np.arange(3, dtype=np.int64).tobytes(),
                       b"C\x10" + np.arange(2, dtype=np.int64).tobytes())
    with pytest.raises(pickle.UnpicklingError, match=r"shape \(3,\).*16 bytes"):
        safe_unpickle(short)
    scalar = pickle.dumps(np.int64(5), protocol=4)
    with pytest.raises(pickle.UnpicklingError, match="4 bytes of data"):
        safe_unpickle(_swap_once(scalar, b"C\x08" + np.int64(5).tobytes(), b"C\x04" + np.int32(5).tobytes()))


def test_protocol_2_helpers_admit_only_their_own_use():
    # _codecs.encode to anything but latin1, bytes(n) (an allocation of n bytes), BUILD on a plain container
    with pytest.raises(pickle.UnpicklingError, match=r"_codecs\.encode"):
        safe_unpickle(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(pickle.UnpicklingError, match=r"bytes\(1000000000,\)"):
        safe_unpickle(b"\x80\x02c__builtin__\nbytes\nJ\x00\xca\x9a;\x85R.")
    with pytest.raises(pickle.UnpicklingError, match="BUILD"):
        safe_unpickle(b"\x80\x02}}b.")
