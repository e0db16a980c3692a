"""Realistic sample exports for trying the pipeline: ``qtsw sample`` (SPEC §7).

:func:`write_samples` writes, per instrument, one exporter CSV
``data/raw/DataExport_<SYM>_<yyyyMMdd_HHmmss>_UTC.csv`` of one-minute bars (bar-open times in
UTC) and its ``raw/logs/export_complete_<stem>.json`` signal, exactly as the NinjaTrader
exporter does. The bars follow the Globex week (Sunday 17:00 to Friday 16:00 Chicago, daily
break 16:00–17:00, closed on exchange holidays) and are a tick-aligned random walk with each
instrument's tick and a typical daily range. Same seed and end date, same files.

The other input forms of SPEC §2.1 are written by :func:`write_bars_csv` from a *bars table*:
a pyarrow table with ``timestamp`` (tz-aware, bar open) and ``open high low close volume``.
"""

from __future__ import annotations

import io
import sys
import zlib
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pipeline_core import clock
from pipeline_core.fsutil import write_bytes_atomic, write_json_atomic
from pipeline_core.settings import Settings, SettingsError, load_settings
from pipeline_core.usage import (
    EXIT_FAILURE,
    EXIT_USAGE,
    UsageParser,
    describe_os_error,
    root_options,
    root_problem,
)

DEFAULT_INSTRUMENTS = ("ES", "NQ", "YM", "CL", "NG", "GC")

# Typical price level and daily high-low range (points) per base symbol.
PROFILES: dict[str, tuple[float, float]] = {
    "ES": (6000.0, 60.0),
    "NQ": (21000.0, 250.0),
    "YM": (44000.0, 400.0),
    "CL": (70.0, 2.0),
    "NG": (3.5, 0.15),
    "GC": (2600.0, 30.0),
    "RTY": (2300.0, 35.0),
}

FORMS = ("exporter", "ninjatrader", "timestamp_utc")
EXPORTER_HEADER = "Date,Time,Open,High,Low,Close,Volume,Instrument"
UTC_HEADER = "timestamp_utc,open,high,low,close,volume"
BAR_SCHEMA = pa.schema(
    [("timestamp", pa.timestamp("ms", tz="UTC"))]
    + [(c, pa.float64()) for c in ("open", "high", "low", "close", "volume")]
)
_DAY_MS = 86_400_000
_MIN_MS = 60_000


# --- the exchange calendar -----------------------------------------------------------------


def _observed(d: date) -> date:
    """A fixed-date holiday on a weekend is observed on the Friday before or Monday after."""
    if d.weekday() == 5:
        return d - timedelta(days=1)
    if d.weekday() == 6:
        return d + timedelta(days=1)
    return d


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    """The n-th given weekday of a month (n = -1: the last)."""
    if n > 0:
        d = date(year, month, 1)
        d += timedelta(days=(weekday - d.weekday()) % 7)
        return d + timedelta(weeks=n - 1)
    d = date(year + (month == 12), month % 12 + 1, 1) - timedelta(days=1)
    return d - timedelta(days=(d.weekday() - weekday) % 7)


def _easter(year: int) -> date:
    """Gregorian Easter Sunday (anonymous Gregorian algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    ll = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * ll) // 451
    month = (h + ll - 7 * m + 114) // 31
    day = (h + ll - 7 * m + 114) % 31 + 1
    return date(year, month, day)


def exchange_holidays(year: int) -> set[date]:
    """The dates of ``year`` on which the exchange is closed for the day (a full closure)."""
    days = {
        _observed(date(year, 1, 1)),
        _nth_weekday(year, 1, 0, 3),  # Martin Luther King Jr. Day
        _nth_weekday(year, 2, 0, 3),  # Presidents Day
        _easter(year) - timedelta(days=2),  # Good Friday
        _nth_weekday(year, 5, 0, -1),  # Memorial Day
        _observed(date(year, 7, 4)),
        _nth_weekday(year, 9, 0, 1),  # Labor Day
        _nth_weekday(year, 11, 3, 4),  # Thanksgiving
        _observed(date(year, 12, 25)),
    }
    if year >= 2022:
        days.add(_observed(date(year, 6, 19)))  # Juneteenth
    return days


def is_trading_day(d: date) -> bool:
    """A weekday on which the exchange trades (its session ends that day at 16:00 Chicago)."""
    return d.weekday() < 5 and d not in exchange_holidays(d.year)


def trading_days(end: date, count: int) -> list[date]:
    """The last ``count`` trading days up to and including ``end`` (if it trades), ascending."""
    out: list[date] = []
    d = end
    while len(out) < count:
        if is_trading_day(d):
            out.append(d)
        d -= timedelta(days=1)
    return out[::-1]


def last_completed_trading_day(today: date | None = None) -> date:
    """The last trading day before ``today`` (default: today in Chicago)."""
    d = (today or clock.now().date()) - timedelta(days=1)
    while not is_trading_day(d):
        d -= timedelta(days=1)
    return d


# --- bars ---------------------------------------------------------------------------------


def session_bounds_ms(d: date) -> tuple[int, int]:
    """Epoch ms of the Globex session of trade date ``d``: previous day 17:00 to ``d`` 16:00."""
    start = clock.wall(d - timedelta(days=1), time(17, 0))
    end = clock.wall(d, time(16, 0))
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def _activity(minute_of_day: np.ndarray) -> np.ndarray:
    """Relative volatility by Chicago minute of day: quiet overnight, busy at the US open."""
    m = minute_of_day
    out = np.full(m.shape, 0.55)
    out[(m >= 2 * 60) & (m < 8 * 60 + 30)] = 0.9
    out[(m >= 8 * 60 + 30) & (m < 10 * 60)] = 2.2
    out[(m >= 10 * 60) & (m < 14 * 60)] = 1.2
    out[(m >= 14 * 60) & (m < 16 * 60)] = 1.5
    return out


def tick_decimals(tick: float) -> int:
    """Decimal places a price on the tick grid needs (0.25 -> 2, 0.001 -> 3, 1.0 -> 0)."""
    text = f"{tick:.10f}".rstrip("0")
    return len(text.split(".")[1])


def generate_bars(
    symbol: str,
    tick: float,
    days: list[date],
    seed: int = 7,
    *,
    price: float | None = None,
    daily_range: float | None = None,
    gap_fraction: float = 0.003,
) -> pa.Table:
    """One-minute bars of ``symbol`` for the sessions of trade dates ``days`` (a bars table).

    Prices are a random walk in whole ticks with a mean-reverting overnight gap, so a long
    history stays near the instrument's usual level; OHLC are consistent (low <= open, close
    <= high). About ``gap_fraction`` of the quiet overnight minutes have no bar, as in real
    exports. Deterministic for (symbol, days, seed).
    """
    base = symbol if symbol in PROFILES else symbol[1:] if symbol[1:] in PROFILES else "ES"
    level, rng_points = PROFILES[base]
    level = price if price is not None else level
    rng_points = daily_range if daily_range is not None else rng_points
    rng = np.random.default_rng([seed, zlib.crc32(symbol.encode())])
    if not days:
        return BAR_SCHEMA.empty_table()
    bounds = np.array([session_bounds_ms(d) for d in days], dtype=np.int64)
    counts = (bounds[:, 1] - bounds[:, 0]) // _MIN_MS
    n = int(counts.sum())
    first_of_session = np.repeat(np.cumsum(counts) - counts, counts)
    idx = np.arange(n, dtype=np.int64) - first_of_session
    ts = np.repeat(bounds[:, 0], counts) + idx * _MIN_MS
    # A session never spans a DST change (they happen early Sunday), so the wall clock of a
    # bar is the session's 17:00 plus its index.
    minute_of_day = (17 * 60 + idx) % 1440
    act = _activity(minute_of_day)
    # Expected high-low range of a walk of N steps is about 1.6 * sigma * sqrt(N).
    sigma = (rng_points / tick) / (1.6 * np.sqrt(np.mean(act**2) * 1380))
    steps = np.rint(rng.standard_normal(n) * sigma * act).astype(np.int64)
    # The first bar of a session gaps, pulled back towards the usual level.
    starts = np.cumsum(counts) - counts
    level_ticks = round(level / tick)
    walk = np.cumsum(steps)
    session_gap = rng.standard_normal(len(days)) * sigma * 3
    offset = np.zeros(len(days), dtype=np.int64)
    drift = 0
    for i, s in enumerate(starts):
        here = level_ticks + drift + (walk[s - 1] if s else 0)
        gap = int(round(session_gap[i] - 0.02 * (here - level_ticks)))
        drift += gap
        offset[i] = drift
    close = level_ticks + walk + np.repeat(offset, counts)
    open_ = np.empty_like(close)
    open_[1:] = close[:-1]
    open_[0] = close[0] - steps[0]
    open_[starts] = close[starts] - steps[starts]
    wick = np.abs(rng.standard_normal((2, n))) * sigma * act * 0.6
    high = np.maximum(open_, close) + np.rint(wick[0]).astype(np.int64)
    low = np.minimum(open_, close) - np.rint(wick[1]).astype(np.int64)
    volume = np.rint(rng.lognormal(4.0, 0.6, n) * act * 3).astype(np.int64) + 1
    keep = np.ones(n, dtype=bool)
    quiet = (act < 0.6) & (idx > 0) & (idx < np.repeat(counts, counts) - 1)
    keep[quiet & (rng.random(n) < gap_fraction * 2)] = False
    decimals = tick_decimals(tick)

    def prices(t: np.ndarray) -> np.ndarray:
        return np.round(t[keep] * tick, decimals)

    return pa.table(
        {
            "timestamp": pa.array(ts[keep], pa.timestamp("ms", tz="UTC")),
            "open": prices(open_),
            "high": prices(high),
            "low": prices(low),
            "close": prices(close),
            "volume": volume[keep].astype(np.float64),
        },
        schema=BAR_SCHEMA,
    )


# --- writing the input forms ----------------------------------------------------------------


def _local_ms(ts: pa.Array | pa.ChunkedArray, zone: str) -> np.ndarray:
    """Wall-clock milliseconds (as if UTC) of each moment in ``zone``."""
    if isinstance(ts, pa.ChunkedArray):
        ts = ts.combine_chunks()
    aware = ts.cast(pa.timestamp("ms", tz=ts.type.tz or "UTC")).cast(pa.timestamp("ms", tz=zone))
    return pc.local_timestamp(aware).cast(pa.int64()).to_numpy(zero_copy_only=False)


def _date_strings(local_ms: np.ndarray, fmt: str) -> pa.Array:
    days = local_ms // _DAY_MS
    uniq, inverse = np.unique(days, return_inverse=True)
    epoch = date(1970, 1, 1)
    lut = pa.array([(epoch + timedelta(days=int(d))).strftime(fmt) for d in uniq])
    return lut.take(pa.array(inverse))


def _time_strings(local_ms: np.ndarray, fmt: str) -> pa.Array:
    secs = (local_ms % _DAY_MS) // 1000
    uniq, inverse = np.unique(secs, return_inverse=True)
    lut = pa.array([time(int(s) // 3600, int(s) // 60 % 60, int(s) % 60).strftime(fmt) for s in uniq])
    return lut.take(pa.array(inverse))


def _number_strings(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    return pc.cast(values, pa.string())


def write_bars_csv(
    path: Path,
    bars: pa.Table,
    form: str = "exporter",
    *,
    instrument: str = "",
    zone: str = "UTC",
    sep: str = ",",
    bom: bool = False,
    crlf: bool = False,
    header: bool = True,
) -> Path:
    """Write a bars table as one input form of SPEC §2.1; returns ``path``.

    * ``exporter``: header ``Date,Time,Open,High,Low,Close,Volume,Instrument``, bar-open
      times as ``yyyy-MM-dd``/``HH:mm:ss`` wall clock in ``zone`` (UTC by default);
    * ``ninjatrader``: no header, ``yyyyMMdd HHmmss<sep>o<sep>h<sep>l<sep>c<sep>v`` with
      bar-close times (bar open + one minute) in ``zone``;
    * ``timestamp_utc``: header ``timestamp_utc,open,high,low,close,volume``, ISO-8601 UTC
      with ``Z``.

    ``bom`` prefixes a UTF-8 byte-order mark, ``crlf`` uses Windows line ends. The file is
    written atomically.
    """
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; one of {', '.join(FORMS)}")
    ts = bars.column("timestamp")
    nums = [_number_strings(bars.column(c)) for c in ("open", "high", "low", "close", "volume")]
    if form == "exporter":
        local = _local_ms(ts, zone)
        cols = [_date_strings(local, "%Y-%m-%d"), _time_strings(local, "%H:%M:%S"), *nums]
        cols.append(pa.array([instrument] * bars.num_rows, pa.string()))
        head = EXPORTER_HEADER
    elif form == "ninjatrader":
        local = _local_ms(ts, zone) + _MIN_MS
        stamp = pc.binary_join_element_wise(
            _date_strings(local, "%Y%m%d"), _time_strings(local, "%H%M%S"), " "
        )
        cols = [stamp, *nums]
        head = ""
    else:
        local = _local_ms(ts, "UTC")
        stamp = pc.binary_join_element_wise(
            _date_strings(local, "%Y-%m-%d"), _time_strings(local, "%H:%M:%SZ"), "T"
        )
        cols = [stamp, *nums]
        head = UTC_HEADER
    table = pa.table({f"c{i}": c for i, c in enumerate(cols)})
    buf = io.BytesIO()
    if bom:
        buf.write(b"\xef\xbb\xbf")
    if header and head:
        buf.write((head.replace(",", sep) + "\n").encode())
    if table.num_rows:
        pacsv.write_csv(
            table,
            buf,
            write_options=pacsv.WriteOptions(include_header=False, delimiter=sep, quoting_style="none"),
        )
    data = buf.getvalue()
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    path = Path(path)
    write_bytes_atomic(path, data)
    return path


def _iso_z(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def write_export_signal(
    settings: Settings,
    csv_path: Path,
    instrument: str,
    bars: int,
    kind: str = "complete",
    *,
    when: datetime | None = None,
    last_bar: datetime | None = None,
) -> Path:
    """Write the exporter's ``export_complete_<stem>.json`` (or ``export_progress_…``) signal.

    Fields as SPEC §2.2; ``when`` is the completion (or last update) time, ``last_bar`` the
    last bar time for a progress file. Returns the signal's path.
    """
    from pipeline_core.rawfiles import complete_signal, progress_signal

    if kind not in ("complete", "progress"):
        raise ValueError(f"unknown signal kind {kind!r}")
    when = when or datetime.now(UTC)
    size = csv_path.stat().st_size if csv_path.exists() else 0
    body: dict[str, Any] = {
        "status": "complete" if kind == "complete" else "in_progress",
        "filePath": str(csv_path),
        "fileName": csv_path.name,
        "dataType": "Minute",
        "instrument": instrument,
        "totalBarsProcessed": bars,
        "gapsDetected": 0,
        "invalidDataSkipped": 0,
        "fileSizeBytes": size,
        "fileSizeMB": round(size / (1024 * 1024), 2),
    }
    if kind == "complete":
        body["completedAt"] = _iso_z(when)
        dest = complete_signal(settings, csv_path.name)
    else:
        body["lastUpdateTime"] = _iso_z(when)
        body["lastBarTime"] = (last_bar or when).strftime("%Y-%m-%dT%H:%M:%S")
        dest = progress_signal(settings, csv_path.name)
    write_json_atomic(dest, body)
    return dest


def write_samples(
    settings: Settings,
    days: int = 10,
    instruments: list[str] | None = None,
    seed: int = 7,
    end: date | None = None,
) -> list[Path]:
    """Write one exporter CSV (and its complete signal) per instrument into ``data/raw``.

    ``days`` trading days ending at ``end`` (default: the last completed trading day before
    today in Chicago). Returns the CSV paths.
    """
    instruments = list(instruments or DEFAULT_INSTRUMENTS)
    for sym in instruments:
        settings.instrument(sym)  # raises naming the configured symbols
    end = end or last_completed_trading_day()
    sessions = trading_days(end, days)
    settings.raw_dir.mkdir(parents=True, exist_ok=True)
    # The exporter stamps its file names with the PC clock; here: the morning after ``end``.
    stamp0 = datetime.combine(end + timedelta(days=1), time(2, 30), tzinfo=UTC)
    written = []
    for i, sym in enumerate(instruments):
        inst = settings.instrument(sym)
        bars = generate_bars(sym, inst.tick, sessions, seed)
        stamp = stamp0 + timedelta(seconds=17 * i)
        path = settings.raw_dir / f"DataExport_{sym}_{stamp:%Y%m%d_%H%M%S}_UTC.csv"
        write_bars_csv(path, bars, "exporter", instrument=sym)
        write_export_signal(settings, path, sym, bars.num_rows, when=stamp + timedelta(seconds=5))
        written.append(path)
    return written


def _has_files(settings: Settings) -> bool:
    raw = settings.raw_dir
    if raw.is_dir() and any(p.is_file() for p in raw.iterdir()):
        return True
    proc = settings.processed_dir
    return proc.is_dir() and any(p.is_file() for p in proc.rglob("*"))


def main(argv: list[str] | None = None) -> int:
    """``qtsw sample``: write sample exports; returns the exit code (0, or 4 for bad settings)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sample"]:
        argv = argv[1:]
    parser = UsageParser(
        prog="qtsw sample",
        description="Write realistic sample exports to try the pipeline with: per instrument, one "
        "file of one-minute bars in <root>/data/raw and its 'export complete' signal, as the "
        "NinjaTrader exporter writes them. Creates the data root if it does not exist. The same "
        "seed and last date always give the same files.",
    )
    root_options(parser)
    parser.add_argument("--days", type=int, default=10, metavar="N", help="trading days per instrument (default: 10)")
    parser.add_argument(
        "--instruments", default=",".join(DEFAULT_INSTRUMENTS), metavar="LIST",
        help=f"comma-separated symbols (default: {','.join(DEFAULT_INSTRUMENTS)})",
    )
    parser.add_argument("--seed", type=int, default=7, metavar="N", help="random seed (default: 7)")
    parser.add_argument("--end", type=date.fromisoformat, metavar="YYYY-MM-DD",
                        help="last trading day (default: the last completed one, Chicago time)")
    parser.add_argument(
        "--if-empty", action="store_true", help="write nothing if data/raw or data/processed already has files"
    )
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error("--days must be at least 1")
    try:
        settings = load_settings(root=args.root, config=args.config)
    except SettingsError as exc:
        print(f"qtsw sample: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if settings.root.exists() and root_problem(settings.root):
        print(f"qtsw sample: {root_problem(settings.root)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings.ensure_dirs()  # the root too, when it is new
    except OSError as exc:
        print(f"qtsw sample: cannot create the data root's folders: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        symbols = [s.strip().upper() for s in args.instruments.split(",") if s.strip()]
        if args.if_empty and _has_files(settings):
            print(f"sample: {settings.data_dir} already has data; nothing written")
            return 0
        paths = write_samples(settings, args.days, symbols, args.seed, args.end)
    except KeyError as exc:
        print(f"qtsw sample: {exc.args[0]}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        where = settings.raw_dir if str(exc.filename or "").startswith(str(settings.raw_dir)) else exc.filename
        print(f"qtsw sample: cannot write the sample exports into {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    for p in paths:
        print(f"wrote {p}")
    print(f"{len(paths)} sample export(s), {args.days} trading days each, in {settings.raw_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
