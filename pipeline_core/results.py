"""The monthly result files (SPEC §5): where they live, and reading and summarising them.

Layout: ``data/analyzer_runs/<STREAM>/<YYYY>/<STREAM>_an_<YYYY>_<MM>.parquet`` with
``STREAM = <INST><session digit>`` (ES1, ES2). The merger writes them; the console and
``qtsw status`` read them through this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline_core.analyzer.strategy import RESULT_SCHEMA
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
    table = pq.read_table(path, page_checksum_verification=True)
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
