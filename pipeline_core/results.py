"""The monthly result files (SPEC §5): where they live, and reading and summarising them.

Layout: ``data/analyzer_runs/<STREAM>/<YYYY>/<STREAM>_an_<YYYY>_<MM>.parquet`` with
``STREAM = <INST><session digit>`` (ES1, ES2). The merger writes them; the console and
``qtsw status`` read them through this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline_core.analyzer.strategy import RESULT_SCHEMA
from pipeline_core.fsutil import atomic_path
from pipeline_core.settings import Settings

RESULTS = ("Win", "BE", "Loss", "TIME", "NoTrade")

# Parquet key-value metadata of analyzer output and monthly files.
META_ENGINE_VERSION = "engine_version"
META_ANALYSIS_HASH = "analysis_hash"
META_RUN_ID = "run_id"
META_INSTRUMENT = "instrument"
META_CREATED = "created"  # ISO-8601, Chicago
META_CREATED_NS = "created_ns"  # time.time_ns() when the output was written: orders runs
META_MODE = "mode"  # "full" or "incremental"
META_UPDATED = "updated"  # monthly files: when the merger last wrote it
META_COVERED = "covered_dates"  # full analyzer output: the dates it analysed (encode_dates)
META_REPLACE = "replace"  # "1": output of a settings change: it replaces the instrument's history
META_ANALYSIS_SETTINGS = "analysis_settings"  # JSON: the settings that produced the rows


def encode_dates(days: list[int] | np.ndarray) -> str:
    """Sorted day numbers (days since 1970-01-01, as date32) as compact text: the first, then
    the gaps, comma-separated."""
    days = sorted(int(d) for d in days)
    if not days:
        return ""
    gaps = [days[0]] + [b - a for a, b in zip(days, days[1:], strict=False)]
    return ",".join(map(str, gaps))


def decode_dates(text: str) -> np.ndarray:
    """The day numbers of :func:`encode_dates`, as a sorted int32 array."""
    if not text:
        return np.empty(0, dtype=np.int32)
    return np.cumsum(np.array([int(x) for x in text.split(",")], dtype=np.int64)).astype(np.int32)
_MONTHLY = re.compile(r"^(?P<stream>[A-Z][A-Z0-9]*\d)_an_(?P<year>\d{4})_(?P<month>\d{2})\.parquet$")


def monthly_path(settings: Settings, stream: str, year: int, month: int) -> Path:
    """The monthly file of ``stream`` (e.g. ``ES1``) for a year and month."""
    return (
        settings.analyzer_runs_dir / stream / f"{year:04d}" / f"{stream}_an_{year:04d}_{month:02d}.parquet"
    )


def parse_monthly_name(name: str) -> tuple[str, int, int] | None:
    """``(stream, year, month)`` of a monthly file name, or None for any other name."""
    m = _MONTHLY.match(name)
    if not m:
        return None
    month = int(m.group("month"))
    if not 1 <= month <= 12:
        return None
    return m.group("stream"), int(m.group("year")), month


def stream_instrument(stream: str) -> str:
    """The instrument of a stream: the stream name without its session digit (``M2K1`` → ``M2K``)."""
    return stream[:-1]


def monthly_files(settings: Settings) -> dict[str, list[Path]]:
    """Per stream, its monthly files in date order (streams sorted by name)."""
    out: dict[str, list[Path]] = {}
    base = settings.analyzer_runs_dir
    if not base.is_dir():
        return out
    for stream_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        files: list[tuple[int, int, Path]] = []
        for year_dir in stream_dir.iterdir():
            if not year_dir.is_dir():
                continue
            for f in year_dir.glob(f"{stream_dir.name}_an_*.parquet"):
                parsed = parse_monthly_name(f.name)
                if parsed and parsed[0] == stream_dir.name and f"{parsed[1]:04d}" == year_dir.name:
                    files.append((parsed[1], parsed[2], f))
        if files:
            out[stream_dir.name] = [f for _, _, f in sorted(files)]
    return out


def monthly_counts(settings: Settings) -> dict[str, int]:
    """Monthly result files per stream (streams without files left out)."""
    return {stream: len(files) for stream, files in monthly_files(settings).items()}


def available_months(settings: Settings) -> list[tuple[int, int]]:
    """The (year, month) pairs that have at least one monthly file, oldest first."""
    months: set[tuple[int, int]] = set()
    for files in monthly_files(settings).values():
        for f in files:
            parsed = parse_monthly_name(f.name)
            if parsed:
                months.add((parsed[1], parsed[2]))
    return sorted(months)


def read_monthly_file(path: Path) -> pa.Table:
    """One monthly file, checked against the result columns (ValueError naming the file if not)."""
    return read_result_file(path)[0]


class ResultSchemaError(ValueError):
    """A readable result file whose columns are not the result columns."""

    def __init__(self, path: Path, difference: str) -> None:
        super().__init__(f"{path}: {difference}")
        self.difference = difference


def read_result_file(path: Path) -> tuple[pa.Table, dict[str, str]]:
    """A result file's rows (checked against the result columns) and its qtsw metadata, in one
    read. Raises :class:`ResultSchemaError` for other columns, pyarrow's errors if unreadable."""
    # one file: ParquetFile reads it without the dataset layer (its import and set-up cost a
    # stage more than reading a month)
    with pq.ParquetFile(path, page_checksum_verification=True) as pf:
        table = pf.read()
    if not table.schema.equals(RESULT_SCHEMA, check_metadata=False):
        raise ResultSchemaError(path, schema_difference(table.schema, RESULT_SCHEMA))
    return table.replace_schema_metadata(None), _decode_metadata(table.schema.metadata)


def file_metadata(path: Path) -> dict[str, str]:
    """The qtsw key-value metadata of a result file (engine version, analysis hash, ...)."""
    return _decode_metadata(pq.read_schema(path).metadata)


def _decode_metadata(raw: dict[bytes, bytes] | None) -> dict[str, str]:
    return {
        k.decode(): v.decode()
        for k, v in (raw or {}).items()
        if not k.startswith(b"ARROW:") and k != b"pandas"
    }


def schema_difference(actual: pa.Schema, expected: pa.Schema) -> str:
    """A short description of how ``actual`` differs from the expected result columns."""
    missing = [n for n in expected.names if n not in actual.names]
    if missing:
        return f"missing column(s) {', '.join(missing)}"
    extra = [n for n in actual.names if n not in expected.names]
    if extra:
        return f"unexpected column(s) {', '.join(extra)}"
    for f in expected:
        got = actual.field(f.name).type
        if got != f.type:
            return f"column {f.name} has type {got}, expected {f.type}"
    if actual.names != expected.names:
        return f"columns out of order: {', '.join(actual.names)}"
    return "schema differs"


def read_month(
    settings: Settings, year: int, month: int, streams: list[str] | None = None
) -> pa.Table:
    """All rows of one month, for every stream (or only ``streams``), sorted by Date, Time, Stream."""
    tables = []
    for stream, files in monthly_files(settings).items():
        if streams is not None and stream not in streams:
            continue
        path = monthly_path(settings, stream, year, month)
        if path in files:
            tables.append(read_monthly_file(path))
    if not tables:
        return RESULT_SCHEMA.empty_table()
    table = pa.concat_tables(tables)
    return table.sort_by([("Date", "ascending"), ("Time", "ascending"), ("Stream", "ascending")])


@dataclass(frozen=True)
class StreamSummary:
    """One stream's month: counts by Result, trades, win rate and profit in points."""

    stream: str
    counts: dict[str, int] = field(default_factory=dict)  # Win, BE, Loss, TIME, NoTrade
    trades: int = 0  # rows with a trade (everything but NoTrade)
    win_rate: float | None = None  # Win / (Win + BE + Loss); None without such trades
    profit: float = 0.0  # total, points
    provisional: int = 0  # rows with Final = false
    rows: int = 0


def summarize_month(settings: Settings, year: int, month: int) -> list[StreamSummary]:
    """Per stream with a file for the month (sorted by stream): its counts, win rate and profit."""
    table = read_month(settings, year, month)
    out = []
    streams = pc.unique(table.column("Stream")).to_pylist() if table.num_rows else []
    for stream in sorted(streams):
        part = table.filter(pc.equal(table.column("Stream"), stream))
        results = part.column("Result").to_pylist()
        counts = {r: results.count(r) for r in RESULTS}
        decided = counts["Win"] + counts["BE"] + counts["Loss"]
        profit = pc.sum(part.column("Profit")).as_py() or 0.0
        provisional = pc.sum(pc.invert(part.column("Final")).cast(pa.int64())).as_py() or 0
        out.append(
            StreamSummary(
                stream=stream,
                counts=counts,
                trades=part.num_rows - counts["NoTrade"],
                win_rate=counts["Win"] / decided if decided else None,
                profit=round(profit, 10),
                provisional=provisional,
                rows=part.num_rows,
            )
        )
    return out


# --- statistics for a trader: money, matrix, equity (SPEC §11.4) -------------------------------

STAT_COLUMNS = ("Date", "Time", "Stream", "Session", "Result", "Profit", "Final")
"""The columns the statistics read from a monthly file (nothing else is read)."""
_DICT_COLUMNS = ("Time", "Stream", "Session", "Result")
_CACHE_KEY = b"qtsw_results_cache"
_CACHE_VERSION = 1
_WIN, _BE, _LOSS, _TIME, _NOTRADE = range(5)
ALL = "ALL"  # the row/curve of all streams together


@dataclass(frozen=True)
class Period:
    """A month (year and month), a year (month None) or all time (both None)."""

    year: int | None = None
    month: int | None = None

    @property
    def label(self) -> str:
        if self.year is None:
            return "all"
        return f"{self.year:04d}" if self.month is None else f"{self.year:04d}-{self.month:02d}"


ALL_TIME = Period()


@dataclass(frozen=True)
class ResultFilter:
    """Which rows count: streams, sessions (``S1``) and slots (``07:30``); None = all. Rows with
    ``Final = false`` (provisional) count only when ``provisional`` is true."""

    streams: frozenset[str] | None = None
    sessions: frozenset[str] | None = None
    slots: frozenset[str] | None = None
    provisional: bool = False


@dataclass(frozen=True)
class Stats:
    """One stream's (or all streams') figures for a period. Money is per contract; dollars are
    None for an instrument without a point value, points None for several instruments at once."""

    rows: int = 0
    trades: int = 0  # every row but NoTrade
    wins: int = 0
    losses: int = 0
    be: int = 0
    time: int = 0
    no_trade: int = 0
    provisional: int = 0  # rows with Final = false among those counted
    win_rate: float | None = None  # Win / (Win + BE + Loss)
    profit_factor: float | None = None  # gross profit / gross loss; None without losses
    profit_points: float | None = None
    profit_dollars: float | None = None
    average_trade: float | None = None  # dollars per trade
    max_drawdown: float | None = None  # dollars, peak to trough of the equity over trade dates (>= 0)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Curve:
    """Cumulative dollars per trade date (``days``: numpy datetime64[D]) and the drawdown under
    the running peak (<= 0) on the same dates."""

    days: np.ndarray
    equity: np.ndarray
    drawdown: np.ndarray


@dataclass(frozen=True)
class Matrix:
    """Dollars per stream and month of one year: ``cells[stream][month-1]`` (None without rows),
    row totals, column totals, the grand total, and the cells holding provisional rows."""

    year: int
    streams: list[str]
    cells: dict[str, list[float | None]]
    row_totals: dict[str, float | None]
    column_totals: list[float | None]
    total: float | None
    provisional: set[tuple[str, int]]


def _remember(store: dict[Any, Any], limit: int, key: Any, make: Callable[[], Any]) -> Any:
    """``store[key]``, made by ``make()`` the first time; past ``limit`` entries the store starts over."""
    found = store.get(key)
    if found is None:
        if len(store) > limit:
            store.clear()
        found = store[key] = make()
    return found


class ResultSet:
    """Every row of the monthly files (only :data:`STAT_COLUMNS`), as arrays, with the dollar
    value of each row from the settings' point values. Build it with :func:`load_results`."""

    def __init__(self, settings: Settings, table: pa.Table, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        n = table.num_rows
        self.day = table.column("Date").cast(pa.int32()).to_numpy(zero_copy_only=False).astype(np.int32) if n else np.empty(0, np.int32)
        self.profit = table.column("Profit").fill_null(0.0).to_numpy(zero_copy_only=False).astype(np.float64) if n else np.empty(0)
        self.final = table.column("Final").fill_null(False).to_numpy(zero_copy_only=False).astype(bool) if n else np.empty(0, bool)
        self.stream_names, stream = _codes(table, "Stream")
        order = _stream_order(settings, self.stream_names)
        rank = np.empty(len(self.stream_names), np.int32)
        rank[order] = np.arange(len(order))
        self.streams = [self.stream_names[i] for i in order]  # ES1, ES2, NQ1, ... (table order)
        self.stream = rank[stream] if n else np.empty(0, np.int32)
        self.session_names, self.session = _codes(table, "Session")
        self.slot_names, self.slot = _codes(table, "Time")
        names, codes = _codes(table, "Result")
        known = np.array([RESULTS.index(r) if r in RESULTS else -1 for r in names] + [-1], np.int8)
        self.result = known[codes] if n else np.empty(0, np.int8)
        self.point_values = np.array(
            [_point_value(settings, s) for s in self.streams] or [np.nan], dtype=np.float64
        )[: len(self.streams)]
        self.no_point_value = [s for s, v in zip(self.streams, self.point_values, strict=True) if np.isnan(v)]
        self.dollars = self.profit * self.point_values[self.stream] if n else np.empty(0)
        dd = self.day.astype("datetime64[D]")
        self.year = dd.astype("datetime64[Y]").astype(np.int32) + 1970
        self.month = (dd.astype("datetime64[M]").astype(np.int32) % 12 + 1).astype(np.int8)
        self._masks: dict[Any, np.ndarray] = {}
        self._figures: dict[Any, Any] = {}  # stats, curves and matrices already computed

    # --- what there is -----------------------------------------------------------------
    @property
    def years(self) -> list[int]:
        return sorted(int(y) for y in np.unique(self.year))

    def months(self, year: int) -> list[int]:
        return sorted(int(m) for m in np.unique(self.month[self.year == year]))

    @property
    def sessions(self) -> list[str]:
        return sorted(self.session_names[i] for i in np.unique(self.session))

    @property
    def slots(self) -> list[str]:
        return sorted(self.slot_names[i] for i in np.unique(self.slot))

    def latest_month(self, year: int | None = None) -> Period | None:
        """The newest month with rows (in ``year`` if given)."""
        sel = self.year == year if year is not None else slice(None)
        if not len(self.day[sel]):
            return None
        last = int(self.day[sel].max())
        d = np.datetime64(last, "D")
        return Period(int(d.astype("datetime64[Y]").astype(int)) + 1970, int(d.astype("datetime64[M]").astype(int)) % 12 + 1)

    # --- selections -----------------------------------------------------------------------
    def mask(self, flt: ResultFilter, period: Period = ALL_TIME, stream: str | None = None) -> np.ndarray:
        """The rows a filter, a period and (optionally) one stream select."""
        m = self._filter_mask(flt)
        if period.year is not None:
            m = m & self._memo(("period", period), lambda: self._period_mask(period))
        if stream is not None:
            code = self.streams.index(stream) if stream in self.streams else -1
            m = m & self._memo(("stream", code), lambda: self.stream == code)
        return m

    def _memo(self, key: Any, make: Callable[[], np.ndarray]) -> np.ndarray:
        return _remember(self._masks, 256, key, make)  # a mask is a bool per row: keep few

    def _period_mask(self, period: Period) -> np.ndarray:
        m = self.year == period.year
        return m & (self.month == period.month) if period.month is not None else m

    def _filter_mask(self, flt: ResultFilter) -> np.ndarray:
        def make() -> np.ndarray:
            m = np.ones(len(self.day), bool) if flt.provisional else self.final.copy()
            for names, codes, wanted in (
                (self.streams, self.stream, flt.streams),
                (self.session_names, self.session, flt.sessions),
                (self.slot_names, self.slot, flt.slots),
            ):
                if wanted is not None:
                    m &= np.isin(codes, [i for i, x in enumerate(names) if x in wanted])
            return m

        return self._memo(("filter", flt), make)

    def shown_streams(self, flt: ResultFilter) -> list[str]:
        """The streams with rows under a filter (any period), in table order."""
        present = np.unique(self.stream[self.mask(flt)])
        return [self.streams[i] for i in present]

    def _remembered(self, key: Any, make: Callable[[], Any]) -> Any:
        """A figure computed once per result set (its rows never change: a changed file makes a
        new set), so a screen opened again, or a step back, shows at once."""
        return _remember(self._figures, 4096, key, make)

    def stats(self, flt: ResultFilter, period: Period = ALL_TIME, stream: str | None = None) -> Stats:
        """The figures of one stream (or of all streams: ``stream=None``) for a period."""
        return self._remembered(("stats", flt, period, stream), lambda: self._stats(flt, period, stream))

    def _stats(self, flt: ResultFilter, period: Period, stream: str | None) -> Stats:
        m = self.mask(flt, period, stream)
        res = self.result[m]
        counts = np.bincount(res[res >= 0], minlength=5)
        trade = (res != _NOTRADE) & (res >= 0)
        decided = int(counts[_WIN] + counts[_BE] + counts[_LOSS])
        trades = int(trade.sum())
        single = stream is not None
        points = float(self.profit[m].sum()) if single else None
        dollars_ok = not (single and stream in self.no_point_value)
        dollars = np.nan_to_num(self.dollars[m]) if dollars_ok else None
        money = dollars if dollars is not None else self.profit[m]  # PF is a ratio: points do
        gross_win = float(money[trade & (money > 0)].sum())
        gross_loss = float(-money[trade & (money < 0)].sum())
        curve = self._curve(m) if dollars is not None else None
        return Stats(
            rows=int(m.sum()),
            trades=trades,
            wins=int(counts[_WIN]),
            losses=int(counts[_LOSS]),
            be=int(counts[_BE]),
            time=int(counts[_TIME]),
            no_trade=int(counts[_NOTRADE]),
            provisional=int((~self.final[m]).sum()),
            win_rate=int(counts[_WIN]) / decided if decided else None,
            profit_factor=gross_win / gross_loss if gross_loss > 0 else None,
            profit_points=None if points is None else round(points, 10),
            profit_dollars=None if dollars is None else round(float(dollars.sum()), 6),
            average_trade=None if dollars is None or not trades else round(float(dollars.sum()) / trades, 6),
            max_drawdown=None if curve is None else round(float(-curve.drawdown.min(initial=0.0)), 6),
        )

    def _curve(self, m: np.ndarray) -> Curve:
        res = self.result[m]
        trade = (res != _NOTRADE) & (res >= 0)
        days = self.day[m][trade]
        money = np.nan_to_num(self.dollars[m][trade])
        if not len(days):
            empty = np.empty(0)
            return Curve(np.empty(0, "datetime64[D]"), empty, empty)
        uniq, inv = np.unique(days, return_inverse=True)
        equity = np.cumsum(np.bincount(inv, weights=money))
        peak = np.maximum.accumulate(np.maximum(equity, 0.0))  # equity starts at 0
        return Curve(uniq.astype("datetime64[D]"), equity, equity - peak)

    def equity(self, flt: ResultFilter, period: Period = ALL_TIME, stream: str | None = None) -> Curve:
        """Cumulative dollars per trade date of one stream, or of all streams (``None``)."""
        return self._remembered(("equity", flt, period, stream), lambda: self._curve(self.mask(flt, period, stream)))

    def matrix(self, flt: ResultFilter, year: int) -> Matrix:
        """The stream × month dollars of ``year`` (streams: those with rows under the filter)."""
        return self._remembered(("matrix", flt, year), lambda: self._matrix(flt, year))

    def _matrix(self, flt: ResultFilter, year: int) -> Matrix:
        streams = self.shown_streams(flt)
        m = self.mask(flt, Period(year))
        idx = self.stream[m].astype(np.int64) * 12 + (self.month[m].astype(np.int64) - 1)
        size = len(self.streams) * 12
        n = np.bincount(idx, minlength=size).reshape(-1, 12)
        total = np.bincount(idx, weights=np.nan_to_num(self.dollars[m]), minlength=size).reshape(-1, 12)
        prov = np.bincount(idx, weights=(~self.final[m]).astype(float), minlength=size).reshape(-1, 12)
        cells: dict[str, list[float | None]] = {}
        row_totals: dict[str, float | None] = {}
        provisional: set[tuple[str, int]] = set()
        for s in streams:
            i = self.streams.index(s)
            money = s not in self.no_point_value
            cells[s] = [round(float(total[i, k]), 6) if n[i, k] and money else None for k in range(12)]
            row_totals[s] = round(float(total[i].sum()), 6) if n[i].any() and money else None
            provisional |= {(s, k + 1) for k in range(12) if prov[i, k]}
        col: list[float | None] = []
        for k in range(12):
            vals = [cells[s][k] for s in streams if cells[s][k] is not None]
            col.append(round(sum(vals), 6) if vals else None)
        vals = [v for v in row_totals.values() if v is not None]
        return Matrix(year, streams, cells, row_totals, col, round(sum(vals), 6) if vals else None, provisional)

    def table_rows(self, flt: ResultFilter, year: int) -> list[dict[str, Any]]:
        """What the results show, as flat rows (one per stream, or ALL, and period: each month
        of ``year`` with rows, the year, all time) for CSV: the matrix cells are the month rows'
        ``profit_dollars``."""
        out = []
        months = [Period(year, mo) for mo in range(1, 13)]
        for s in [*self.shown_streams(flt), None]:
            for period in [*months, Period(year), ALL_TIME]:
                st = self.stats(flt, period, s)
                if period.month is not None and not st.rows:
                    continue
                out.append({"stream": s or ALL, "period": period.label, **st.as_dict()})
        return out


def _codes(table: pa.Table, column: str) -> tuple[list[str], np.ndarray]:
    """The distinct values of a string column and each row's index into them."""
    if not table.num_rows:
        return [], np.empty(0, np.int32)
    col = table.column(column)
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    col = col.unify_dictionaries() if isinstance(col, pa.ChunkedArray) else col
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    names = [str(v) if v is not None else "" for v in chunks[0].dictionary.to_pylist()] if chunks else []
    codes = np.concatenate(
        [c.indices.fill_null(len(names)).to_numpy(zero_copy_only=False) for c in chunks]
    ).astype(np.int32)
    if (codes == len(names)).any():  # a null: one more name
        names.append("")
    return names, codes


def _stream_order(settings: Settings, names: list[str]) -> list[int]:
    """Streams in the order of the instrument table, then by session (ES1, ES2, NQ1, ...);
    instruments the table does not know come last, by name."""
    known = {sym: i for i, sym in enumerate(settings.instruments)}
    return sorted(
        range(len(names)),
        key=lambda i: (known.get(stream_instrument(names[i]), len(known)), names[i]),
    )


def _point_value(settings: Settings, stream: str) -> float:
    inst = settings.instruments.get(stream_instrument(stream))
    return float(inst.point_value) if inst and inst.point_value else np.nan


# --- reading, with a cache per monthly file ------------------------------------------------

_FileKey = tuple[int, int, int]  # (mtime_ns, size, inode): a rewritten file has a new one
_memory: dict[str, tuple[dict[str, _FileKey], pa.Table, list[str]]] = {}
_built: dict[str, tuple[pa.Table, tuple[Any, ...], ResultSet]] = {}
_failed: dict[str, dict[str, tuple[_FileKey, str]]] = {}  # unreadable files, by key
_memory_lock = threading.Lock()


def _scan(settings: Settings) -> dict[str, tuple[_FileKey, str]]:
    """Every monthly file, by path relative to the results folder, with its key."""
    out: dict[str, tuple[_FileKey, str]] = {}
    base = settings.analyzer_runs_dir
    try:
        streams = list(os.scandir(base))
    except OSError:
        return out
    for sd in streams:
        if not sd.is_dir(follow_symlinks=False):
            continue
        for yd in os.scandir(sd.path):
            if not yd.is_dir(follow_symlinks=False):
                continue
            for f in os.scandir(yd.path):
                parsed = parse_monthly_name(f.name)
                if not parsed or parsed[0] != sd.name or f"{parsed[1]:04d}" != yd.name:
                    continue
                try:
                    st = f.stat(follow_symlinks=False)
                except OSError:
                    continue
                if f.is_file(follow_symlinks=False):
                    out[f"{sd.name}/{yd.name}/{f.name}"] = ((st.st_mtime_ns, st.st_size, st.st_ino), f.path)
    return out


def _read_stat_columns(path: str) -> pa.Table:
    table = pq.read_table(path, columns=list(STAT_COLUMNS), read_dictionary=list(_DICT_COLUMNS))
    for name in STAT_COLUMNS:
        want = RESULT_SCHEMA.field(name).type
        got = table.schema.field(name).type
        if got != want and not (pa.types.is_dictionary(got) and got.value_type == want):
            raise ResultSchemaError(Path(path), f"column {name} has type {got}, expected {want}")
    return table.select(list(STAT_COLUMNS))


def _normalise(table: pa.Table) -> pa.Table:
    """Dictionary columns as plain strings (tables from files and the cache concatenate)."""
    cols = []
    for name in table.column_names:
        col = table.column(name)
        cols.append(col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col)
    return pa.table(cols, names=table.column_names)


def _read_disk_cache(settings: Settings) -> tuple[dict[str, _FileKey], pa.Table, list[str]] | None:
    path = settings.results_cache_path
    try:
        with pa.OSFile(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
        meta = json.loads((table.schema.metadata or {})[_CACHE_KEY])
        if meta.get("version") != _CACHE_VERSION or table.column_names != [*STAT_COLUMNS, "File"]:
            return None
        order = [f[0] for f in meta["files"]]
        keys = {f[0]: (int(f[1]), int(f[2]), int(f[3])) for f in meta["files"]}
        return keys, table.replace_schema_metadata(None), order
    except Exception:  # no cache, an old or damaged one: read the files
        return None


def _write_disk_cache(settings: Settings, keys: dict[str, _FileKey], table: pa.Table, order: list[str]) -> None:
    meta = {"version": _CACHE_VERSION, "files": [[rel, *keys[rel]] for rel in order]}
    table = table.replace_schema_metadata({_CACHE_KEY: json.dumps(meta).encode()})
    with contextlib.suppress(OSError):  # a read-only data root: no cache, only slower
        with atomic_path(settings.results_cache_path) as tmp, pa.OSFile(str(tmp), "wb") as sink:
            with pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)


def load_results(settings: Settings, *, disk_cache: bool = True) -> ResultSet:
    """Every monthly file's rows (only the columns the statistics need) as a :class:`ResultSet`.

    A file is read again only when its (mtime, size, inode) changed since it was last read by
    this process, or since the cache under ``data/cache`` was written; a file that cannot be
    read is left out and named in ``problems``."""
    scanned = _scan(settings)
    root = str(settings.root)
    with _memory_lock:
        base = _memory.get(root)
    if base is None and disk_cache:
        base = _read_disk_cache(settings)
    keys, table, order = base if base is not None else ({}, None, [])
    fresh = {rel: key for rel, (key, _) in scanned.items() if keys.get(rel) == key}
    with _memory_lock:
        failed = {rel: v for rel, v in _failed.get(root, {}).items() if rel in scanned and scanned[rel][0] == v[0]}
    # a file that could not be read is tried again only once it changed
    problems = [f"{scanned[rel][1]}: {msg}" for rel, (_, msg) in sorted(failed.items())]
    to_read = sorted(rel for rel in scanned if rel not in fresh and rel not in failed)
    changed = base is None or bool(to_read) or len(fresh) != len(keys)
    got: list[tuple[str, pa.Table | Exception]] = []
    if to_read:
        def read(rel: str) -> tuple[str, pa.Table | Exception]:
            try:
                return rel, _normalise(_read_stat_columns(scanned[rel][1]))
            except Exception as exc:  # named in problems; the other files still count
                return rel, exc

        if len(to_read) > 8:
            with ThreadPoolExecutor(max(2, min(8, os.cpu_count() or 2))) as pool:
                got = list(pool.map(read, to_read))
        else:
            got = [read(rel) for rel in to_read]
    if changed:
        new_keys = dict(fresh)
        for rel, part in got:
            if isinstance(part, Exception):
                problems.append(f"{scanned[rel][1]}: {part}")
                failed[rel] = (scanned[rel][0], str(part))
            else:
                new_keys[rel] = scanned[rel][0]
        new_order = sorted(new_keys)
        pos = {rel: i for i, rel in enumerate(new_order)}
        parts = []
        if table is not None and table.num_rows:
            remap = np.array([pos.get(rel, -1) if rel in fresh else -1 for rel in order] + [-1], np.int32)
            codes = remap[table.column("File").to_numpy(zero_copy_only=False)]
            keep = codes >= 0
            table = table.filter(pa.array(keep))
            parts.append(table.set_column(table.num_columns - 1, "File", pa.array(codes[keep])))
        for rel, part in got:
            if not isinstance(part, Exception):
                parts.append(part.append_column("File", pa.array(np.full(part.num_rows, pos[rel], np.int32))))
        table = pa.concat_tables(parts).combine_chunks() if parts else _empty_cache_table()
        keys, order = new_keys, new_order
        with _memory_lock:
            _memory[root] = (keys, table, order)
        # never creates a data root; an empty one gets no cache either
        if disk_cache and settings.data_dir.is_dir() and (keys or settings.results_cache_path.exists()):
            _write_disk_cache(settings, keys, table, order)
    elif base is not None and _memory.get(root) is not base:
        with _memory_lock:
            _memory[root] = (keys, table, order)
    with _memory_lock:
        _failed[root] = failed
    assert table is not None
    # The arrays of an unchanged table are kept too, while the point values are the same.
    values = tuple((sym, i.point_value) for sym, i in settings.instruments.items())
    with _memory_lock:
        known = _built.get(root)
        if known is not None and known[0] is table and known[1] == values and known[2].problems == problems:
            return known[2]
    rs = ResultSet(settings, table, problems)
    with _memory_lock:
        _built[root] = (table, values, rs)
    return rs


def _empty_cache_table() -> pa.Table:
    return pa.table(
        {**{n: pa.array([], RESULT_SCHEMA.field(n).type) for n in STAT_COLUMNS}, "File": pa.array([], pa.int32())}
    )


def read_ahead(settings: Settings) -> ResultSet | None:
    """Load the results and compute what the results screen shows first (the newest month's
    year matrix, all streams' figures for the month, its year and all time, the all-time curve)
    so that the screen opens at once. Only when the disk cache exists: a first reading of every
    monthly file is left to the operator's first look. Returns the result set read, if any."""
    if not settings.results_cache_path.exists():
        return None
    rs = load_results(settings)
    month = rs.latest_month()
    if month is not None and month.year is not None:
        flt = ResultFilter()
        rs.matrix(flt, month.year)
        for period in (month, Period(month.year), ALL_TIME):
            rs.stats(flt, period, None)
        rs.equity(flt, ALL_TIME, None)
    return rs


def remembered(settings: Settings) -> bool:
    """Whether this process has read the results of ``settings``' root before (then
    :func:`load_results` only checks the files' keys, unless some changed)."""
    with _memory_lock:
        return str(settings.root) in _built


def forget_cache() -> None:
    """Drop what this process remembers of the monthly files (the next load reads the disk
    cache, or the files)."""
    with _memory_lock:
        _memory.clear()
        _built.clear()
        _failed.clear()
