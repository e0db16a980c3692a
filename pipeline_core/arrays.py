"""Arrow arrays to and from numpy without pandas.

pyarrow imports pandas (0.2–0.3 s, more than the whole of a small stage run) the first time
it converts Python or numpy objects through its generic paths: ``pa.array``, ``pa.scalar``, a
Python value given to a compute function (``pc.equal(col, "ES")``), any ``to_numpy`` (its
converter is pandas'), ``as_py`` of a tz-aware timestamp or of parquet statistics of one. The
stages build their arrays here instead, from buffers, and read them back as views of their
buffers (or through ``to_pylist`` of types that need no pandas: numbers, strings, dates).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def to_arrow(values: np.ndarray, type_: pa.DataType, mask: np.ndarray | None = None) -> pa.Array:
    """A numpy array as an arrow array of fixed-width ``type_`` (zero-copy when contiguous and
    no mask is given); ``mask`` (True: null) as for ``pa.array``.

    The numpy values must already have the width of ``type_`` (int64 for a timestamp in its
    unit, int32 for date32, …): nothing is converted. Booleans are packed to bits.
    """
    values = np.asarray(values)
    n = len(values)
    if pa.types.is_boolean(type_):
        data = pa.py_buffer(np.packbits(values.astype(bool, copy=False), bitorder="little"))
    else:
        if values.dtype.itemsize * 8 != type_.bit_width or (values.dtype.kind == "f") != pa.types.is_floating(type_):
            raise TypeError(f"{values.dtype} values for an arrow {type_}: convert them first")
        data = pa.py_buffer(np.ascontiguousarray(values))
    validity = None
    nulls = 0
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        nulls = int(np.count_nonzero(mask))
        if nulls:
            validity = pa.py_buffer(np.packbits(~mask, bitorder="little"))
    return pa.Array.from_buffers(type_, n, [validity, data], null_count=nulls)


def to_numpy(values: pa.Array | pa.ChunkedArray, dtype: type | np.dtype) -> np.ndarray:
    """The values of a null-free fixed-width (or boolean) arrow array as numpy ``dtype``, a
    view of its buffer when it has one chunk (``values.to_numpy()`` without pandas).

    ``dtype`` must have the width of the arrow type (int64 for a timestamp, int32 for date32,
    …): the bytes are read as they are. Booleans are unpacked from bits (a copy).
    """
    if isinstance(values, pa.ChunkedArray):
        if values.num_chunks == 1:
            return to_numpy(values.chunk(0), dtype)
        return np.concatenate([np.empty(0, dtype)] + [to_numpy(c, dtype) for c in values.chunks])
    if values.null_count:
        raise ValueError(f"{values.null_count} null(s) in a {values.type} array read as numpy values")
    n, off = len(values), values.offset
    if pa.types.is_boolean(values.type):
        if n == 0:
            return np.empty(0, dtype=bool)
        bits = np.frombuffer(values.buffers()[1], dtype=np.uint8)
        return np.unpackbits(bits, count=off + n, bitorder="little")[off:].astype(bool)
    width = np.dtype(dtype).itemsize
    if width * 8 != values.type.bit_width or (np.dtype(dtype).kind == "f") != pa.types.is_floating(values.type):
        raise TypeError(f"a {values.type} array read as {np.dtype(dtype)}")
    if n == 0:
        return np.empty(0, dtype=dtype)
    return np.frombuffer(values.buffers()[1], dtype=dtype, count=n, offset=off * width)


def empty_table(schema: pa.Schema) -> pa.Table:
    """``schema.empty_table()`` (which builds its columns through pandas)."""
    return pa.Table.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)


def string_array(values: Sequence[str]) -> pa.StringArray:
    """Python strings as an arrow string array (``pa.array(values, pa.string())``)."""
    raw = [v.encode() for v in values]
    offsets = np.zeros(len(raw) + 1, dtype=np.int32)
    np.cumsum([len(b) for b in raw], out=offsets[1:])
    return pa.StringArray.from_buffers(len(raw), pa.py_buffer(offsets), pa.py_buffer(b"".join(raw)))


def repeat_string(value: str, n: int) -> pa.StringArray:
    """``value`` repeated ``n`` times."""
    raw = value.encode()
    offsets = np.arange(0, (n + 1) * len(raw), len(raw), dtype=np.int32) if raw else np.zeros(n + 1, np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(raw * n))


_NUMPY_TYPES = {pa.int32(): np.int32, pa.int64(): np.int64, pa.float64(): np.float64}


def scalar(value: str | float | None, type_: pa.DataType) -> pa.Scalar:
    """``pa.scalar(value, type_)`` for a compute function's argument: a string, a null, a
    boolean or a number of an int32, int64 or float64 type (a Python value given there is
    converted by pandas)."""
    if value is None:
        return pa.nulls(1, type_)[0]
    if pa.types.is_string(type_):
        return repeat_string(str(value), 1)[0]
    if pa.types.is_boolean(type_):
        return to_arrow(np.array([bool(value)]), type_)[0]
    return to_arrow(np.array([value], dtype=_NUMPY_TYPES[type_]), type_)[0]


def indices(idx: np.ndarray) -> pa.Array:
    """Row positions for ``take`` (any integer numpy array)."""
    return to_arrow(np.asarray(idx).astype(np.int64, copy=False), pa.int64())


def date_numbers(dates: Sequence[date]) -> np.ndarray:
    """Dates as int32 days since 1970-01-01 (the values of a date32 array)."""
    return np.array([d.toordinal() - _EPOCH_ORDINAL for d in dates], dtype=np.int32)


def dates_array(dates: Sequence[date]) -> pa.Array:
    """``pa.array(dates, pa.date32())``."""
    return to_arrow(date_numbers(dates), pa.date32())


def unique_codes(column: pa.Array | pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """``np.unique(values, return_inverse=True)`` of a string column without nulls: its sorted
    distinct values and, per row, the position of its value among them (int64).

    Arrow sorts strings by their UTF-8 bytes, which is the order of Python's ``str``
    comparison (code points): the same values and codes as numpy gives.
    """
    distinct = pc.unique(column)
    distinct = distinct.take(pc.array_sort_indices(distinct))
    codes = pc.index_in(column, value_set=distinct)
    return distinct.to_pylist(), to_numpy(codes, np.int32).astype(np.int64)
