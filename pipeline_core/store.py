"""The bar store: ``data/processed/<INST>/<INST>_<YYYY>.parquet`` (SPEC §3).

One file per instrument and Chicago calendar year. Columns: ``timestamp`` (bar open,
``timestamp[ms, tz=America/Chicago]``), ``open high low close volume`` (float64) and
``instrument`` (string); rows sorted by ``timestamp``, timestamps unique.

Writes go through :func:`pipeline_core.fsutil.write_parquet_atomic` (temporary file, fsync,
rename), so a crash leaves every year file either old or new.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline_core import arrays, catalog
from pipeline_core.arrays import indices, repeat_string, to_arrow, to_numpy
from pipeline_core.catalog import DamageError
from pipeline_core.fsutil import write_parquet_atomic
from pipeline_core.settings import CHICAGO, Settings

TIMESTAMP_TYPE = pa.timestamp("ms", tz="America/Chicago")
PRICE_COLUMNS = ("open", "high", "low", "close", "volume")
# Non-nullable: a bar always has every value, and Parquet then stores no null bitmaps
# (faster to write and read).
SCHEMA = pa.schema(
    [pa.field("timestamp", TIMESTAMP_TYPE, nullable=False)]
    + [pa.field(c, pa.float64(), nullable=False) for c in PRICE_COLUMNS]
    + [pa.field("instrument", pa.string(), nullable=False)]
)

# Parquet options chosen by measurement (20 years of ES minute bars, 7 M rows): sorted
# timestamps delta-encode to a few bits; prices gain nothing from dictionaries, but byte
# stream split lines up their exponent bytes so lz4 (nearly free to encode and decode)
# halves them. Against lz4 with default encodings: 0.47 s instead of 0.89 s CPU to write,
# 0.29 s instead of 0.40 s to read, 52 MB instead of 100 MB. Row groups of 128 Ki rows let
# range reads skip most of a year by statistics.
ROW_GROUP_ROWS = 128 * 1024
WRITE_OPTIONS: dict = {
    "compression": "lz4",
    "use_dictionary": ["instrument"],
    "column_encoding": {
        "timestamp": "DELTA_BINARY_PACKED",
        **{c: "BYTE_STREAM_SPLIT" for c in PRICE_COLUMNS},
    },
    "write_statistics": ["timestamp"],
    "row_group_size": ROW_GROUP_ROWS,
    "write_page_checksum": True,
}

_YEAR_FILE = re.compile(r"^(?P<inst>[A-Z0-9]+)_(?P<year>\d{4})\.parquet$")


def store_dir(settings: Settings, inst: str, base: Path | None = None) -> Path:
    """The instrument's store folder (``base`` replaces ``data/processed/<INST>``: a rebuild)."""
    return base if base is not None else settings.processed_dir / inst


def store_path(settings: Settings, inst: str, year: int, base: Path | None = None) -> Path:
    """The year file of instrument ``inst``."""
    return store_dir(settings, inst, base) / f"{inst}_{year:04d}.parquet"


def store_years(settings: Settings, inst: str) -> list[int]:
    """The Chicago calendar years that have a store file for ``inst``, ascending."""
    d = store_dir(settings, inst)
    if not d.is_dir():
        return []
    years = []
    for name in os.listdir(d):
        m = _YEAR_FILE.match(name)
        if m and m.group("inst") == inst:
            years.append(int(m.group("year")))
    return sorted(years)


def empty_table(columns: Sequence[str] | None = None) -> pa.Table:
    return arrays.empty_table(_schema(_columns(columns)))


def _to_ms(dt: datetime) -> int:
    """A moment as epoch milliseconds (a naive datetime is read as Chicago wall time)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=CHICAGO)
    return int(dt.timestamp() * 1000)


def _ts_ms(table: pa.Table) -> np.ndarray:
    """The ``timestamp`` column as int64 epoch milliseconds."""
    col = table.column("timestamp")
    if col.num_chunks != 1:
        col = col.combine_chunks()
    else:
        col = col.chunk(0)
    return np.frombuffer(col.buffers()[1], dtype=np.int64, count=len(col), offset=col.offset * 8)


def _last_ms(table: pa.Table, first: bool = False) -> int:
    """The last (or first) ``timestamp`` of a non-empty table, as epoch ms, whatever its chunks."""
    chunks = [c for c in table.column("timestamp").chunks if len(c)]
    c = chunks[0] if first else chunks[-1]
    return int(np.frombuffer(c.buffers()[1], dtype=np.int64, count=len(c), offset=c.offset * 8)[0 if first else -1])


def read_year(
    path: Path,
    start_ms: int | None = None,
    end_ms: int | None = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """One year file, restricted to ``start_ms <= timestamp < end_ms`` (epoch ms).

    Row groups wholly outside the range are skipped by their statistics; the rest is cut by
    binary search, which is exact because the file is sorted. ``columns`` (``timestamp``
    always included) reads only those: decoding a column costs as much as reading it.
    """
    try:
        return _read_year(path, start_ms, end_ms, columns)
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException, ValueError) as exc:
        inst = path.parent.name
        raise DamageError(path, f"unreadable ({exc})", catalog.repair_hint(catalog.STORE, inst)) from None


def _read_year(
    path: Path,
    start_ms: int | None,
    end_ms: int | None,
    columns: Sequence[str] | None,
) -> pa.Table:
    columns = _columns(columns)
    pf = pq.ParquetFile(path, page_checksum_verification=True)
    meta = pf.metadata
    if start_ms is None and end_ms is None:
        table = pf.read(columns=columns)
    else:
        ts_idx = pf.schema_arrow.get_field_index("timestamp")
        groups = []
        for i in range(meta.num_row_groups):
            bounds = _stat_bounds_ms(meta.row_group(i).column(ts_idx).statistics)
            if bounds is not None:
                lo, hi = bounds
                if start_ms is not None and hi < start_ms:
                    continue
                if end_ms is not None and lo >= end_ms:
                    continue
            groups.append(i)
        if not groups:
            return empty_table(columns)
        table = pf.read_row_groups(groups, columns=columns)
        ts = _ts_ms(table)
        a = 0 if start_ms is None else int(np.searchsorted(ts, start_ms, "left"))
        b = len(ts) if end_ms is None else int(np.searchsorted(ts, end_ms, "left"))
        table = table.slice(a, b - a)
    return _conform(table, columns)


def _columns(columns: Sequence[str] | None) -> list[str] | None:
    if columns is None:
        return None
    unknown = set(columns) - set(SCHEMA.names)
    if unknown:
        raise ValueError(f"unknown bar column(s): {', '.join(sorted(unknown))}")
    return [c for c in SCHEMA.names if c == "timestamp" or c in columns]


def _stat_ms(value: object) -> int:
    if isinstance(value, datetime):
        return _to_ms(value)
    return int(value)  # type: ignore[call-overload]


_UNIT_DIVISOR = {"milliseconds": 1, "microseconds": 1_000, "nanoseconds": 1_000_000}


def _stat_bounds_ms(stats: pq.Statistics | None) -> tuple[int, int] | None:
    """The min and max of a ``timestamp`` column chunk's statistics as epoch ms (None when it
    has none).

    Read from the raw int64 values and the unit of the column's logical type: ``stats.min`` of
    a tz-aware timestamp is a Python datetime, which pyarrow builds through pandas (importing
    it: 0.2 s at a stage's start). Anything but an int64 UTC-adjusted timestamp (not written
    by the store) takes that slower path.
    """
    if stats is None or not stats.has_min_max:
        return None
    if stats.physical_type == "INT64":
        logical = json.loads(stats.logical_type.to_json())
        div = _UNIT_DIVISOR.get(logical.get("timeUnit"))
        if logical.get("Type") == "Timestamp" and logical.get("isAdjustedToUTC") and div:
            return int(stats.min_raw) // div, int(stats.max_raw) // div
    return _stat_ms(stats.min), _stat_ms(stats.max)


def _schema(columns: list[str] | None) -> pa.Schema:
    return SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])


def _conform(table: pa.Table, columns: list[str] | None = None) -> pa.Table:
    """``table`` with exactly the store schema, or its ``columns`` (order, types, unit, zone)."""
    schema = _schema(columns)
    if table.schema.equals(schema):
        return table
    return table.select(list(schema.names)).cast(schema)


def read_bars(
    settings: Settings,
    inst: str,
    start: datetime | None = None,
    end: datetime | None = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """The bars of ``inst`` with ``start <= timestamp < end`` (either bound optional), sorted.

    Reads only the year files the range touches, and only ``columns`` (with ``timestamp``)
    when given. Returns an empty table with the store schema when there are none.
    """
    start_ms = None if start is None else _to_ms(start)
    end_ms = None if end is None else _to_ms(end)
    years = store_years(settings, inst)
    if start is not None:
        years = [y for y in years if y >= ms_to_datetime(start_ms).year]  # type: ignore[arg-type]
    if end is not None:
        last = ms_to_datetime(end_ms - 1).year  # type: ignore[operator]
        years = [y for y in years if y <= last]
    paths = [store_path(settings, inst, y) for y in years]
    cat = catalog.open_catalog(settings)
    for path in paths:
        cat.check_once(path, catalog.STORE, inst)
    parts = [read_year(path, start_ms, end_ms, columns) for path in paths]
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return empty_table(columns)
    return pa.concat_tables(parts).combine_chunks()


def normalise(table: pa.Table, inst: str) -> pa.Table:
    """Bars in any timestamp unit/zone → the store schema, sorted, unique (last row wins)."""
    ts_type = table.schema.field("timestamp").type
    if not pa.types.is_timestamp(ts_type):
        raise TypeError(f"timestamp column must be a timestamp, not {ts_type}")
    if ts_type.tz is None:
        raise TypeError("timestamp column must be time-zone aware")
    cols = {
        "timestamp": table.column("timestamp").cast(pa.timestamp(ts_type.unit, tz="UTC")).cast(
            TIMESTAMP_TYPE, safe=False
        ),
    }
    for c in PRICE_COLUMNS:
        cols[c] = table.column(c).cast(pa.float64())
    missing = [c for c, col in cols.items() if col.null_count]
    if missing:
        raise ValueError(f"bars with missing values in {', '.join(missing)}")
    cols["instrument"] = pa.chunked_array([repeat_string(inst, table.num_rows)])
    out = pa.table(cols, schema=SCHEMA).combine_chunks()
    ts = _ts_ms(out)
    if len(ts) > 1 and not bool(np.all(ts[1:] > ts[:-1])):
        order = np.argsort(ts, kind="stable")
        ts_sorted = ts[order]
        # keep the last of each run of equal timestamps (the stable sort keeps input order)
        keep = np.ones(len(ts_sorted), dtype=bool)
        keep[:-1] = ts_sorted[1:] != ts_sorted[:-1]
        out = out.take(indices(order[keep]))
    return out


def chicago_years(ts_ms: np.ndarray) -> np.ndarray:
    """The Chicago calendar year of each epoch-millisecond moment."""
    arr = to_arrow(ts_ms, pa.timestamp("ms", tz="America/Chicago"))
    return to_numpy(pc.year(arr), np.int64)


def split_years(table: pa.Table) -> dict[int, pa.Table]:
    """A sorted store-schema table cut into Chicago calendar years."""
    if table.num_rows == 0:
        return {}
    ts = _ts_ms(table)
    years = chicago_years(ts)
    out: dict[int, pa.Table] = {}
    bounds = np.flatnonzero(np.diff(years)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(ts)]))
    for a, b in zip(starts, ends, strict=True):
        out[int(years[a])] = table.slice(int(a), int(b - a))
    return out


def _match(old: pa.Table, new: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For sorted unique ``old`` and ``new``: new timestamps, their position in old, whether a
    bar with that timestamp exists in old, and whether the new bar adds or changes one."""
    new_ts, old_ts = _ts_ms(new), _ts_ms(old)
    pos = np.minimum(np.searchsorted(old_ts, new_ts), len(old_ts) - 1)
    matched = old_ts[pos] == new_ts
    changed = ~matched
    if matched.any():
        old_idx = pos[matched]
        differs = np.zeros(int(matched.sum()), dtype=bool)
        for c in PRICE_COLUMNS:
            differs |= to_numpy(old.column(c), np.float64)[old_idx] != to_numpy(new.column(c), np.float64)[matched]
        changed[matched] = differs
    return new_ts, pos, matched, changed


def last_stored_ms(path: Path) -> int | None:
    """The last bar time of a year file (epoch ms), from its footer statistics: no data read.
    None when the statistics do not say (then the caller reads the file)."""
    meta = pq.ParquetFile(path).metadata
    if meta.num_row_groups == 0:
        return None
    col = meta.schema.to_arrow_schema().get_field_index("timestamp")
    bounds = _stat_bounds_ms(meta.row_group(meta.num_row_groups - 1).column(col).statistics)
    return None if bounds is None else bounds[1]


def changed_range(old: pa.Table | None, new: pa.Table) -> tuple[int, int] | None:
    """First and last epoch ms of a bar that upserting ``new`` into ``old`` adds or changes."""
    if new.num_rows == 0:
        return None
    new_ts = _ts_ms(new)
    if old is None or old.num_rows == 0 or new_ts[0] > _ts_ms(old)[-1]:
        return int(new_ts[0]), int(new_ts[-1])
    new_ts, _, _, changed = _match(old, new)
    if not changed.any():
        return None
    hits = new_ts[changed]
    return int(hits[0]), int(hits[-1])


def merge_year(old: pa.Table | None, new: pa.Table) -> pa.Table:
    """Upsert sorted unique ``new`` bars into sorted unique ``old`` bars (new wins)."""
    if old is None or old.num_rows == 0:
        return new
    if new.num_rows == 0:
        return old
    if _last_ms(new, first=True) > _last_ms(old):  # the common case: bars appended after the last one
        # left in two chunks: the writer takes them as they are (combining would copy the year)
        return pa.concat_tables([old, new])
    _, pos, matched, _ = _match(old, new)
    keep_old = np.ones(old.num_rows, dtype=bool)
    keep_old[pos[matched]] = False
    merged = pa.concat_tables([old.take(indices(np.flatnonzero(keep_old))), new]).combine_chunks()
    return merged.take(indices(np.argsort(_ts_ms(merged), kind="stable")))


def with_instrument(table: pa.Table, inst: str) -> pa.Table:
    """``table`` with its ``instrument`` column (added when missing, as the store writes it)."""
    if "instrument" in table.column_names:
        return table
    return table.append_column(SCHEMA.field("instrument"), [repeat_string(inst, table.num_rows)])


def _write_year(
    settings: Settings, inst: str, path: Path, table: pa.Table, base: Path | None,
    also: Callable[[sqlite3.Connection], None] | None = None, commit: bool = True,
) -> None:
    if base is not None:  # a rebuild's new store: recorded when it replaces the old one
        write_parquet_atomic(path, table, **WRITE_OPTIONS)
        return
    # encoded in memory: hashed as written, not read back from the disk
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **WRITE_OPTIONS)
    catalog.write_recorded(
        settings, path, catalog.STORE, inst,
        sink.getvalue(),
        also=also,
        commit=commit,
        rows=table.num_rows,
        first=ms_to_datetime(_last_ms(table, first=True)).isoformat() if table.num_rows else None,
        last=ms_to_datetime(_last_ms(table)).isoformat() if table.num_rows else None,
        checked=True,
    )


def ms_to_datetime(ms: int) -> datetime:
    """Epoch milliseconds as an aware Chicago datetime (without pyarrow's pandas-backed as_py)."""
    return datetime.fromtimestamp(ms / 1000, CHICAGO)


def upsert_bars(
    settings: Settings,
    inst: str,
    table: pa.Table,
    before_write: Callable[[datetime, datetime], None] | None = None,
) -> tuple[datetime, datetime] | None:
    """Merge bars into the store of ``inst``; on an equal timestamp the new bar wins.

    ``table`` needs a tz-aware ``timestamp`` (bar open) and ``open high low close volume``; it
    need not be sorted (equal timestamps within it: the last row wins). Each touched year file
    is rewritten atomically; an unchanged year is not rewritten. ``before_write`` is called
    with the changed range before the first file is written (so a caller can record pending
    work durably before the store changes). Returns the first and last timestamp (Chicago) of
    a bar that was added or changed, or None when nothing changed.
    """
    return upsert_years(settings, inst, split_years(normalise(table, inst)).items(), before_write)


def upsert_years(
    settings: Settings,
    inst: str,
    years: Iterable[tuple[int, pa.Table]],
    before_write: Callable[[datetime, datetime], None] | None = None,
    base: Path | None = None,
    *,
    record_changes: bool = False,
    uncommitted: list[Path] | None = None,
) -> tuple[datetime, datetime] | None:
    """Like :func:`upsert_bars` for bars already normalised and cut by Chicago year (sorted,
    unique; the ``instrument`` column may be left out: it is added as each year is written).

    Every existing year file it touches is checked against the catalogue first: a damaged one
    raises :class:`~pipeline_core.catalog.DamageError` before anything is written. With
    ``base`` (a rebuild) the files go to that folder and are not recorded.

    ``record_changes`` widens the instrument's changed range in the catalogue (for the
    analyzer) in the same transaction as each year file's intent: durable before any store
    file changes, at no commit of its own. With ``uncommitted`` (a list) the year files'
    records are left as intents and their paths appended: the caller commits them (with the
    raw file's record, say).
    """
    cat = catalog.open_catalog(settings) if base is None else None
    # Two passes so the changed range is known (and handed to ``before_write``) before any
    # file changes, without holding every merged year in memory at once.
    todo: list[tuple[int, pa.Table]] = []
    first: int | None = None
    last: int | None = None
    for year, new in sorted(years, key=lambda kv: kv[0]):
        path = store_path(settings, inst, year, base)
        if cat is not None and path.exists():
            cat.check(path, catalog.STORE, inst)
        try:
            old_last = last_stored_ms(path) if path.exists() else None
        except (OSError, pa.ArrowException) as exc:
            raise DamageError(path, f"unreadable ({exc})", catalog.repair_hint(catalog.STORE, inst)) from None
        if new.num_rows and (old_last is None or int(_ts_ms(new)[0]) > old_last):
            # appended after the year's last bar (the usual run): known from the footer alone
            found = changed_range(None, new)
        else:
            found = changed_range(read_year(path) if path.exists() else None, new)
        if found is None:
            continue
        first = found[0] if first is None else min(first, found[0])
        last = found[1] if last is None else max(last, found[1])
        todo.append((year, new))
    if first is None or last is None:
        return None
    changed = (ms_to_datetime(first), ms_to_datetime(last))
    if before_write is not None:
        before_write(*changed)

    also = None
    if record_changes and base is None:
        def also(c: sqlite3.Connection) -> None:
            catalog.widen_changes(c, inst, *changed)

    lock = threading.Lock()

    def write(item: tuple[int, pa.Table]) -> None:
        year, new = item
        path = store_path(settings, inst, year, base)
        # Every row of the year file holds ``inst`` (its whole file was checked by sha256 above):
        # the column is built, not decoded (a third of the read).
        old = with_instrument(read_year(path, columns=PRICE_COLUMNS), inst) if path.exists() else None
        _write_year(settings, inst, path, merge_year(old, with_instrument(new, inst)), base,
                    also, commit=uncommitted is None)
        if uncommitted is not None:
            with lock:
                uncommitted.append(path)

    # Parquet encoding releases the GIL: write the year files on every core.
    workers = min(len(todo), os.cpu_count() or 1, 4)
    if workers <= 1:
        for item in todo:
            write(item)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="store") as pool:
            list(pool.map(write, todo))
    return changed
