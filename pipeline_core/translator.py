"""Translator stage: raw bar exports in ``data/raw`` → the Parquet bar store (SPEC §2, §3).

Run as ``python -m pipeline_core.translator [--root R] [--config C] [--run-id ID]``. It takes
the files :func:`pipeline_core.rawfiles.scan_raw` calls ready (oldest first, so on an equal
timestamp the newer file wins) and for each:

1. rejects a zero-byte file, a name no parser accepts and an unconfigured symbol;
2. hashes it (while it is parsed; first, when its size matches an ingested file); a file
   whose sha256 is already in the catalogue (``data/catalog.sqlite``) is not translated again, only
   archived (the stage says when it was ingested);
3. parses it with pyarrow's streaming CSV reader (explicit column types; the file is cut at
   line boundaries into pieces parsed on all cores; no Python loop over rows). Bad rows are
   dropped and counted per rule (:data:`RULES`; a row whose ``Instrument`` column names another
   configured instrument than the file name is one); duplicates within the file: the last row
   wins;
4. rejects the whole file when more than ``max_bad_row_fraction`` of its rows are bad, or when
   its bar times are implausible in Chicago (a bar in the future, or more than 1 % of the bars
   in the 16:00–16:59 break or on a Saturday: the input time zone is probably wrong);
5. upserts the bars into the store (each year file replaced atomically); the changed bar range
   is recorded in the catalogue in the same transaction as each year file's intent, before the
   file is renamed into place;
6. only then records the file in the catalogue (in one transaction with the year files' records)
   and archives (or deletes, or keeps) the raw file and its export signal files.

A rejected file is moved unchanged to ``data/raw/quarantine/`` with ``<name>.error.txt``
beside it (file, line, rule); the others go on and the stage ends ``partial``. A crash at any
point leaves each store file old or new; the raw file is still in place and a rerun completes
the work without losing or doubling a bar.

Stage protocol (:mod:`pipeline_core.protocol`): free-text lines for the operator; a
``progress`` message in bytes of the input files read (``unit`` ``bytes``: at each file's start
and within a file every 2 % of the total or every second; :class:`ByteProgress`);
a ``metric`` per file (``data``: file, instrument, rows_in, rows_kept, dropped {rule: n},
duplicates, first_bar, last_bar, seconds, mb_per_s, status); a ``warning`` per quarantined
file, stale export and already-ingested file; and the ``result`` with ``counts``: files,
translated, already_ingested, quarantined, errors, waiting, stale, rows_in, rows_kept,
rows_dropped, duplicates, dropped_by_rule {rule: n}, instruments {symbol: rows_kept},
bytes, seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import stat
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pipeline_core import catalog, clock, store
from pipeline_core.arrays import scalar, to_arrow, to_numpy
from pipeline_core.catalog import Catalog, CatalogError, DamageError
from pipeline_core.fsutil import (
    fsync_dir,
    remove_stale_temp_files,
    write_bytes_atomic,
)
from pipeline_core.protocol import Reporter, os_error_text, stage_main
from pipeline_core.rawfiles import (
    SYMLINK_REASON,
    RawFileError,
    parse_instrument,
    scan_raw,
    signal_files,
)
from pipeline_core.safetext import name_problem, safe, safe_filename
from pipeline_core.settings import CHICAGO, Settings

STAGE = "translator"

# Bad-row rules, in the order a row is judged (a row counts once, under its first rule).
RULES: dict[str, str] = {
    "malformed": "wrong number of fields",
    "time": "unparseable time",
    "out_of_range": "bar time before input.min_date or after now + 1 day",
    "non_numeric": "non-numeric price or volume",
    "nan": "NaN or infinite price or volume",
    "high_low": "high < low",
    "open_close": "open or close outside [low, high]",
    "volume": "negative volume",
    # the file name says which instrument a file holds (SPEC §2.1); a row whose Instrument column
    # names another configured one belongs elsewhere (a misnamed export, or a mixed file): it
    # is not stored under the file's name. Other values (the exporter's "DATAEXPORT", a
    # contract "ES 03-26" of the file's own instrument) are not judged.
    "instrument": "Instrument column names another instrument",
}
_RULE_CODE = {rule: i + 1 for i, rule in enumerate(RULES)}  # 0 = a good row

PIECE_BYTES = 24 << 20  # a file is parsed in pieces of about this size, one per worker
# Tests set smaller pieces to exercise the cutting on small files.
PIECE_BYTES_ENV = "QTSW_TRANSLATOR_PIECE_BYTES"
BLOCK_BYTES = 1 << 20  # pyarrow's block size within a piece (bounded memory per worker)
FUTURE_SLACK_MS = 5 * 60_000
SUSPECT_FRACTION = 0.01
_DAY_MS = 86_400_000
_MIN_MS = 60_000
_PRICES = ("open", "high", "low", "close", "volume")
QUARANTINE_LISTED = 100  # quarantined files named in the stage result (the quarantine holds them all)
_BOM = b"\xef\xbb\xbf"
_BARS_SCHEMA = pa.schema([f for f in store.SCHEMA if f.name != "instrument"])


class FileChanged(Exception):
    """The file changed while it was read (size, mtime or inode): nothing of it is stored or
    archived; it is taken again by the next run."""

    def __init__(self, name: str, what: str) -> None:
        self.what = what
        super().__init__(
            f"{safe(name)}: changed while it was read ({what}); not stored, taken again next run "
            "(an exporter should write elsewhere or as .part and rename when done)"
        )


# For the test of a file that changes while it is read: with QTSW_PAUSE_AFTER_READ=DIR the
# translator, once it has read a file, creates DIR/read and waits (at most a minute) for DIR/go.
PAUSE_AFTER_READ_ENV = "QTSW_PAUSE_AFTER_READ"


def _pause_point(path: Path) -> None:
    folder = os.environ.get(PAUSE_AFTER_READ_ENV)
    if not folder:
        return
    Path(folder, "read").write_text(path.name)
    deadline = time.monotonic() + 60
    while not Path(folder, "go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev


def _changed(path: Path, before: os.stat_result) -> str | None:
    """What changed about ``path`` since ``before`` (None: nothing)."""
    try:
        now = path.lstat()
    except FileNotFoundError:
        return "it was removed"
    if _identity(now) == _identity(before):
        return None
    if (now.st_ino, now.st_dev) != (before.st_ino, before.st_dev):
        return "it was replaced by another file"
    if now.st_size != before.st_size:
        return f"size {before.st_size:,} → {now.st_size:,} bytes"
    return "modified time changed"


class FileRejected(Exception):
    """A whole file refused: ``rule`` names the check, ``line`` the first offending line."""

    def __init__(self, reason: str, rule: str, line: int | None = None) -> None:
        self.reason, self.rule, self.line = reason, rule, line
        super().__init__(reason)


# --- the layout of a file ---------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How to read one raw file: its form, separator, column names and time handling."""

    form: str  # "exporter" (Date,Time header), "timestamp_utc", "ninjatrader" (no header)
    delimiter: str
    columns: tuple[str, ...]  # every field of a line, lower-case
    header_lines: int
    start: int  # byte offset of the first line (after a byte-order mark)
    zone: str  # the zone of naive wall-clock times; "UTC" means none to convert
    shift_ms: int  # added to parsed times: -60 s for bar-close stamps
    # bars (UTC ms) outside [min_ms, max_ms] are bad rows, rule out_of_range
    min_ms: int = -(1 << 62)
    max_ms: int = 1 << 62
    # the configured instruments other than the file's: a row whose Instrument column names
    # one of them is a bad row, rule instrument (empty: the column is not read)
    foreign: frozenset[str] = frozenset()

    @property
    def fields(self) -> int:
        return len(self.columns)


def sniff(path: Path, name: str, settings: Settings) -> Layout:
    """Decide the form of ``path`` from its first line (SPEC §2.1); FileRejected if none fits."""
    with open(path, "rb") as fh:
        head = fh.read(64 * 1024)
    start = len(_BOM) if head.startswith(_BOM) else 0
    first = head[start:].split(b"\n", 1)[0].rstrip(b"\r")
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError:
        raise FileRejected(f"{name} line 1: not UTF-8 text", "format", 1) from None
    zone = settings.timezone_for(name).key
    lower = text.strip().lower()
    sep = "," if "," in text or ";" not in text else ";"
    if lower.startswith("timestamp_utc"):
        cols = tuple(c.strip().lower() for c in text.split(sep))
        _require(name, cols, ("timestamp_utc", *_PRICES))
        return Layout("timestamp_utc", sep, cols, 1, start, "UTC", 0)
    if lower.startswith("date"):
        cols = tuple(c.strip().lower() for c in text.split(sep))
        _require(name, cols, ("date", "time", *_PRICES))
        return Layout("exporter", sep, cols, 1, start, zone, 0)
    if len(text) > 16 and text[:8].isdigit() and text[8] == " " and text[9:15].isdigit():
        sep = text[15]
        if sep in ";,":
            cols = ("stamp", *_PRICES)
            # NinjaTrader stamps a bar with its close; the store keys bars by their open.
            return Layout("ninjatrader", sep, cols, 0, start, zone, -_MIN_MS)
    shown = text[:60] + ("…" if len(text) > 60 else "")
    raise FileRejected(
        f"{name} line 1: unrecognised first line {shown!r} (expected a Date,Time,… or "
        "timestamp_utc,… header, or a NinjaTrader 'yyyyMMdd HHmmss;…' line)",
        "format",
        1,
    )


def _require(name: str, cols: tuple[str, ...], needed: tuple[str, ...]) -> None:
    missing = [c for c in needed if c not in cols]
    if missing:
        raise FileRejected(f"{name} line 1: header lacks column(s) {', '.join(missing)}", "format", 1)


# --- parsing one piece of a file ----------------------------------------------------------


@dataclass
class Piece:
    """What the parse of one byte range of a file produced."""

    rows_in: int = 0
    malformed: int = 0
    bad: dict[str, int] = field(default_factory=dict)
    first_bad: dict[str, int] = field(default_factory=dict)  # rule -> row index within piece
    # per Chicago year: list of good-row column chunks (ts_ms, open, high, low, close, volume)
    years: dict[int, list[tuple[np.ndarray, ...]]] = field(default_factory=dict)
    suspect: int = 0  # good bars in the daily break or on a Saturday
    max_ts: int | None = None
    ambiguous: int = 0
    foreign: set[str] = field(default_factory=set)  # other instruments its Instrument column names


_buffers = threading.local()


def _read_range(path: Path, start: int, end: int) -> memoryview:
    """Bytes ``[start, end)`` of ``path``, read into this thread's reusable buffer.

    Reusing one buffer per worker spares the kernel from mapping and zeroing fresh pages for
    every piece. The view is valid until this thread reads its next piece.
    """
    size = end - start
    buf: bytearray | None = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < size:
        buf = bytearray(size)
        _buffers.buf = buf
    view = memoryview(buf)[:size]
    with open(path, "rb", buffering=0) as fh:
        fh.seek(start)
        got = 0
        while got < size:
            n = fh.readinto(view[got:])
            if not n:
                break
            got += n
    return view[:got]


def split_points(path: Path, start: int, size: int, piece_bytes: int = PIECE_BYTES) -> list[int]:
    """Byte offsets cutting ``[start, size)`` into pieces that each begin at a line start."""
    points = [start]
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = start + piece_bytes
        while pos < size:
            window = os.pread(fd, 1 << 16, pos)
            nl = window.find(b"\n")
            if nl < 0:
                break  # a line longer than the window: let the piece run on
            cut = pos + nl + 1
            if cut >= size:
                break
            points.append(cut)
            pos = cut + piece_bytes
    finally:
        os.close(fd)
    points.append(size)
    return points


def _column_types(layout: Layout, tolerant: bool) -> dict[str, pa.DataType]:
    if tolerant:
        # (bytes for the Instrument column: this path reads stray bytes too)
        return {c: pa.binary() if c == "instrument" else pa.string() for c in _used_columns(layout)}
    types: dict[str, pa.DataType] = {c: pa.float64() for c in _PRICES}
    if layout.form == "exporter":
        types["date"] = pa.date32()
        types["time"] = pa.time32("ms")
    elif layout.form == "timestamp_utc":
        types["timestamp_utc"] = pa.timestamp("ms", tz="UTC")
    else:
        types["stamp"] = pa.string()  # parsed with strptime below (faster than the CSV parser's)
    if layout.foreign:
        types["instrument"] = pa.dictionary(pa.int32(), pa.string())  # a few values, many rows
    return types


def _used_columns(layout: Layout) -> list[str]:
    times = {"exporter": ["date", "time"], "timestamp_utc": ["timestamp_utc"], "ninjatrader": ["stamp"]}
    return times[layout.form] + list(_PRICES) + (["instrument"] if layout.foreign else [])


_NUMBER_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_NANLIKE_RE = r"(?i)^[+-]?(nan|inf|infinity)$"
_DATE_RE = r"^\d{4}-\d{2}-\d{2}$"
_TIME_RE = r"^\d{2}:\d{2}:\d{2}(\.\d{1,9})?$"
_STAMP_RE = r"^\d{8} \d{6}$"
_ISO_RE = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,3})?(Z|[+-]\d{2}:?\d{2})$"


def _np(arr: pa.Array, dtype: type) -> np.ndarray:
    """The values buffer of a null-free fixed-width arrow array as a numpy view (no copy)."""
    width = np.dtype(dtype).itemsize
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * width)


def _numbers(col: pa.Array, tolerant: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """A price column as float64 (and, in tolerant mode, the mask of non-numeric cells)."""
    if not tolerant:
        return _np(col, np.float64), None
    s = pc.utf8_trim_whitespace(col)
    ok = pc.or_(pc.match_substring_regex(s, _NUMBER_RE), pc.match_substring_regex(s, _NANLIKE_RE))
    vals = pc.cast(pc.if_else(ok, s, scalar("0", s.type)), pa.float64())
    return to_numpy(vals, np.float64), ~to_numpy(ok, bool)


def _strict(text: pa.Array, well_formed: pa.Array, fmt: str, day_at: int, sec_at: int) -> pa.Array:
    """Seconds since the epoch of each well-formed ``text`` (null where it is not a real time).

    ``strptime`` rolls an impossible date over (30 February becomes 2 March) and accepts a
    leap second: a time only counts when its day and second read back unchanged.
    """
    safe = pc.if_else(well_formed, text, scalar(None, text.type))
    secs = pc.strptime(safe, format=fmt, unit="s", error_is_null=True)
    day = pc.cast(pc.utf8_slice_codeunits(safe, day_at, day_at + 2), pa.int64())
    sec = pc.cast(pc.utf8_slice_codeunits(safe, sec_at, sec_at + 2), pa.int64())
    real = pc.and_(pc.equal(pc.day(secs), day), pc.equal(pc.second(secs), sec))
    return pc.if_else(real, secs, scalar(None, secs.type))


def _seconds(secs: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Epoch seconds of a timestamp[s] array with nulls (0 there), and where it has a value."""
    good = to_numpy(pc.is_valid(secs), bool)
    return to_numpy(pc.fill_null(secs.cast(pa.int64()), scalar(0, pa.int64())), np.int64), good


def _times(batch: pa.RecordBatch, layout: Layout, tolerant: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The bar-open epoch ms of each row (before any zone conversion) and a mask of bad times
    (None: every time converted)."""
    if layout.form == "exporter":
        d, t = batch.column("date"), batch.column("time")
        if not tolerant:
            ts = _np(d, np.int32).astype(np.int64)
            ts *= _DAY_MS
            ts += _np(t, np.int32)
            return ts, None
        d, t = pc.utf8_trim_whitespace(d), pc.utf8_trim_whitespace(t)
        ok = pc.and_(pc.match_substring_regex(d, _DATE_RE), pc.match_substring_regex(t, _TIME_RE))
        text = pc.binary_join_element_wise(d, pc.utf8_slice_codeunits(t, 0, 8), scalar(" ", t.type))
        secs = _strict(text, ok, "%Y-%m-%d %H:%M:%S", 8, 17)
        frac = pc.utf8_slice_codeunits(pc.if_else(ok, t, scalar("00:00:00", t.type)), 9, 12)
        frac_ms = pc.cast(pc.if_else(pc.equal(frac, scalar("", frac.type)), scalar("0", frac.type),
                                     pc.utf8_rpad(frac, 3, "0")), pa.int64())
        base, good = _seconds(secs)
        return base * 1000 + to_numpy(frac_ms, np.int64), ~good
    if layout.form == "ninjatrader":
        s = batch.column("stamp")
        if tolerant:
            s = pc.utf8_trim_whitespace(s)
        secs = _strict(s, pc.match_substring_regex(s, _STAMP_RE), "%Y%m%d %H%M%S", 6, 13)
        base, good = _seconds(secs)
        return base * 1000, ~good
    col = batch.column("timestamp_utc")
    if not tolerant:
        return _np(col, np.int64), None
    s = pc.utf8_trim_whitespace(col)
    ok = pc.match_substring_regex(s, _ISO_RE)
    # a well-formed string can still name an impossible date or time: check them too
    core = pc.replace_substring(pc.utf8_slice_codeunits(s, 0, 19), " ", "T")
    ok = pc.is_valid(_strict(core, ok, "%Y-%m-%dT%H:%M:%S", 8, 17))
    safe = pc.if_else(ok, s, scalar("1970-01-01T00:00:00Z", s.type))
    ts = pc.cast(safe, pa.timestamp("ms", tz="UTC")).cast(pa.int64())
    return to_numpy(ts, np.int64), ~to_numpy(ok, bool)


def _to_utc(local_ms: np.ndarray, zone: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Wall-clock ms in ``zone`` → epoch ms; also the mask of times that do not exist there.

    A wall time that occurs twice (the autumn change) is read as the first occurrence; CME
    markets are closed at those hours, so real bars never hit it (counted for the log).
    """
    naive = to_arrow(local_ms, pa.timestamp("ms"))
    early = pc.assume_timezone(naive, zone, ambiguous="earliest", nonexistent="earliest")
    late = pc.assume_timezone(naive, zone, ambiguous="latest", nonexistent="latest")
    e = to_numpy(early.cast(pa.int64()), np.int64)
    diff = to_numpy(late.cast(pa.int64()), np.int64) - e
    missing = (diff > 0) & (diff < 60_000)  # a skipped wall time: 'earliest' is 1 ms before
    ambiguous = int(np.count_nonzero(diff >= 60_000))
    return e, missing, ambiguous


def _offset_ms(utc_ms: int) -> int:
    return int(datetime.fromtimestamp(utc_ms / 1000, CHICAGO).utcoffset().total_seconds()) * 1000  # type: ignore[union-attr]


def chicago_local(utc_ms: np.ndarray) -> np.ndarray:
    """Chicago wall-clock ms (as if UTC) of each epoch-ms moment."""
    lo, hi = int(utc_ms.min()), int(utc_ms.max())
    # DST changes are months apart: a batch spanning under 30 days with the same offset at
    # both ends has that offset throughout (the common case, and far cheaper).
    if hi - lo < 30 * _DAY_MS:
        off = _offset_ms(lo)
        if off == _offset_ms(hi):
            return utc_ms + off
    arr = to_arrow(utc_ms, pa.timestamp("ms", tz="America/Chicago"))
    return _np(pc.local_timestamp(arr), np.int64)


# Minute of the week (Monday 00:00 = 0) → is a bar then suspect (in the 16:00-16:59 break, or on
# a Saturday)? A table lookup is cheaper than the divisions that would work it out per bar.
_WEEK_MINUTES = 7 * 1440
_MONDAY_MINUTE = 4 * 1440  # 1970-01-05, the first Monday of the epoch
_SUSPECT_MINUTE = np.zeros(_WEEK_MINUTES, dtype=bool)
for _day in range(7):
    _SUSPECT_MINUTE[_day * 1440 + 16 * 60 : _day * 1440 + 17 * 60] = True
_SUSPECT_MINUTE[5 * 1440 : 6 * 1440] = True  # Saturday


def _year_of_days(days: np.ndarray) -> np.ndarray:
    return days.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970


def _judge(
    batch: pa.RecordBatch, layout: Layout, tolerant: bool, piece: Piece, row0: int
) -> None:
    """Check and convert one record batch; good rows go into ``piece.years``."""
    n = batch.num_rows
    ts, bad_time = _times(batch, layout, tolerant)
    cols, non_numeric = [], np.zeros(n, dtype=bool)
    for c in _PRICES:
        vals, nn = _numbers(batch.column(c), tolerant)
        cols.append(vals)
        if nn is not None:
            non_numeric |= nn
    o, h, lo, c_, v = cols
    if layout.zone != "UTC":
        ts, missing, amb = _to_utc(ts, layout.zone)
        bad_time = missing if bad_time is None else bad_time | missing
        piece.ambiguous += amb
    if layout.shift_ms:
        ts = ts + layout.shift_ms
    foreign = _foreign_rows(batch.column("instrument"), layout.foreign, piece) if layout.foreign else None
    piece.rows_in += n
    # One pass for the common all-good batch: a NaN fails every comparison, and finite
    # high, low and volume bound open and close.
    good = h >= lo
    in_range = (ts >= layout.min_ms) & (ts <= layout.max_ms)
    for ok in (o >= lo, o <= h, c_ >= lo, c_ <= h, v >= 0, h < np.inf, lo > -np.inf, v < np.inf, in_range):
        good &= ok
    if bad_time is not None:
        good &= ~bad_time
    if tolerant:
        good &= ~non_numeric
    if foreign is not None:
        good &= ~foreign
    if not good.all():
        if bad_time is None:
            bad_time = np.zeros(n, dtype=bool)
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c_) & np.isfinite(v)
            checks = [
                ("time", bad_time),
                ("out_of_range", ~in_range & ~bad_time),
                ("non_numeric", non_numeric),
                ("nan", ~finite),
                ("high_low", h < lo),
                ("open_close", (o < lo) | (o > h) | (c_ < lo) | (c_ > h)),
                ("volume", v < 0),
            ]
            if foreign is not None:
                checks.append(("instrument", foreign))
        code = np.zeros(n, dtype=np.uint8)
        for rule, mask in reversed(checks):  # the first rule in order wins
            if mask.any():
                code[mask] = _RULE_CODE[rule]
        for rule, k in _RULE_CODE.items():
            hits = np.flatnonzero(code == k)
            if len(hits):
                piece.bad[rule] = piece.bad.get(rule, 0) + len(hits)
                piece.first_bad.setdefault(rule, row0 + int(hits[0]))
        ts, o, h, lo, c_, v = (a[good] for a in (ts, o, h, lo, c_, v))
    if len(ts) == 0:
        return
    local = chicago_local(ts)
    minute = local // _MIN_MS
    minute -= _MONDAY_MINUTE
    minute %= _WEEK_MINUTES
    piece.suspect += int(np.count_nonzero(_SUSPECT_MINUTE[minute]))
    top = int(ts.max())
    piece.max_ts = top if piece.max_ts is None else max(piece.max_ts, top)
    y_first, y_last = _year_of_days(np.array([local.min(), local.max()]) // _DAY_MS)
    if y_first == y_last:
        piece.years.setdefault(int(y_first), []).append((ts, o, h, lo, c_, v))
        return
    years = _year_of_days(local // _DAY_MS)
    for y in np.unique(years):
        sel = years == y
        piece.years.setdefault(int(y), []).append(tuple(a[sel] for a in (ts, o, h, lo, c_, v)))


def _symbol(value: str | bytes) -> str:
    """The instrument an Instrument cell names: its first word, upper case, without quotes
    (the file is read with no quoting): ``es 03-26`` and ``"ES"`` name ES."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    words = value.strip().strip("\"'").split(None, 1)
    return words[0].upper() if words else ""


def _foreign_rows(col: pa.Array, foreign: frozenset[str], piece: Piece) -> np.ndarray | None:
    """The rows whose Instrument cell names one of ``foreign`` (None: none does); the names
    seen go into ``piece.foreign``. Judged once per distinct value, not once per row."""
    if not pa.types.is_dictionary(col.type):
        col = col.dictionary_encode()
    hits = []
    for i, value in enumerate(col.dictionary.to_pylist()):
        name = _symbol(value)
        if name in foreign:
            hits.append(i)
            piece.foreign.add(name)
    if not hits:
        return None
    return np.isin(col.indices.to_numpy(zero_copy_only=False), hits)


class _ConversionFailed(Exception):
    """A cell the typed fast path could not convert: parse this piece tolerantly."""


def parse_piece(
    path: Path, layout: Layout, index: int, start: int, end: int, tolerant: bool = False
) -> Piece:
    """Parse bytes ``[start, end)`` of ``path`` (whole lines) with the streaming CSV reader.

    The fast path converts with explicit column types; if any cell does not convert, the piece
    is parsed again with string columns and checked cell by cell (vectorised), so every bad row
    is found and counted by its rule.
    """
    if not tolerant:
        try:
            return _parse_piece(path, layout, index, start, end, tolerant=False)
        except _ConversionFailed:
            pass
    return _parse_piece(path, layout, index, start, end, tolerant=True)


def _parse_piece(
    path: Path, layout: Layout, index: int, start: int, end: int, tolerant: bool
) -> Piece:
    piece = Piece()
    data = _read_range(path, start, end)
    skip = layout.header_lines if index == 0 else 0

    def on_invalid(row: Any) -> str:
        piece.malformed += 1
        return "skip"

    # The fast path has no handler: a Python callback makes pyarrow hold the GIL and would
    # serialise the pieces. A line with a wrong field count fails it like a bad cell does.
    parse_extra = {"invalid_row_handler": on_invalid} if tolerant else {}

    try:
        _read_batches(data, layout, tolerant, piece, skip, parse_extra)
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            return piece  # a header and nothing else
        if not tolerant:
            raise _ConversionFailed(str(exc)) from None
        raise FileRejected(f"{path.name}: cannot be read as CSV ({exc})", "format") from None
    piece.rows_in += piece.malformed
    if piece.malformed:
        piece.bad["malformed"] = piece.bad.get("malformed", 0) + piece.malformed
    return piece


def _read_batches(
    data: memoryview, layout: Layout, tolerant: bool, piece: Piece, skip: int, parse_extra: dict
) -> None:
    reader = pacsv.open_csv(
        pa.BufferReader(pa.py_buffer(data)),
        read_options=pacsv.ReadOptions(
            column_names=list(layout.columns),
            skip_rows=skip,
            block_size=BLOCK_BYTES,
            use_threads=False,  # the pieces already run on every core
        ),
        parse_options=pacsv.ParseOptions(
            delimiter=layout.delimiter, quote_char=False, **parse_extra
        ),
        convert_options=pacsv.ConvertOptions(
            column_types=_column_types(layout, tolerant),
            include_columns=_used_columns(layout),
            null_values=[],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
            check_utf8=not tolerant,  # stray bytes make a bad row, not an unreadable file
        ),
    )
    row = 0
    for batch in reader:
        _judge(batch, layout, tolerant, piece, row)
        row += batch.num_rows


# --- locating rows in the file -------------------------------------------------------------


def locate_lines(
    path: Path, layout: Layout, data_rows: list[int], want_malformed: bool
) -> tuple[dict[int, int], int | None]:
    """Physical line numbers (1-based) of the given data-row indices, and of the first line
    with a wrong field count.

    Counts lines as pyarrow does: the header and blank lines are not data rows, a line with a
    wrong number of fields was skipped. Vectorised over the bytes; reads only as far as needed.
    """
    want = sorted(set(data_rows))
    found: dict[int, int] = {}
    first_malformed: int | None = None
    delim = ord(layout.delimiter)
    line_no = 0  # lines completed so far
    data_row = 0
    pending = b""
    with open(path, "rb") as fh:
        fh.seek(layout.start)
        while True:
            chunk = fh.read(8 << 20)
            buf = pending + chunk
            if not chunk:
                if not buf:
                    break
                buf += b"\n"
            last_nl = buf.rfind(b"\n")
            if last_nl < 0:
                pending = buf
                continue
            body, pending = buf[: last_nl + 1], buf[last_nl + 1 :]
            arr = np.frombuffer(body, dtype=np.uint8)
            nl = np.flatnonzero(arr == 10)
            starts = np.concatenate(([0], nl[:-1] + 1))
            lengths = nl - starts
            cr = (lengths > 0) & (arr[np.maximum(nl - 1, 0)] == 13)
            lengths = lengths - cr
            dcum = np.concatenate(([0], np.cumsum(arr == delim)))
            fields = dcum[nl] - dcum[starts] + 1
            numbers = line_no + 1 + np.arange(len(nl))
            is_header = numbers <= layout.header_lines
            blank = lengths == 0
            malformed = ~blank & ~is_header & (fields != layout.fields)
            is_data = ~blank & ~is_header & ~malformed
            if want_malformed and first_malformed is None and malformed.any():
                first_malformed = int(numbers[np.argmax(malformed)])
            data_numbers = numbers[is_data]
            lo, hi = data_row, data_row + len(data_numbers)
            for r in want:
                if lo <= r < hi and r not in found:
                    found[r] = int(data_numbers[r - lo])
            data_row = hi
            line_no += len(nl)
            done_rows = all(r in found for r in want)
            if done_rows and (not want_malformed or first_malformed is not None):
                break
            if not chunk:
                break
    return found, first_malformed


# --- translating one file --------------------------------------------------------------------


@dataclass
class FileResult:
    name: str
    instrument: str
    size: int
    sha256: str
    rows_in: int = 0
    rows_kept: int = 0
    duplicates: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    first_lines: dict[str, int | None] = field(default_factory=dict)  # rule -> first bad line
    first_bar: datetime | None = None
    last_bar: datetime | None = None
    changed: tuple[datetime, datetime] | None = None
    form: str = ""
    ambiguous: int = 0  # bars at a wall time that occurs twice in the input zone
    seconds: float = 0.0
    foreign: tuple[str, ...] = ()  # the other instruments its Instrument column names (rule instrument)

    def rule_text(self, rule: str) -> str:
        """What a bad-row rule says of this file (rule instrument: which instruments)."""
        if rule == "instrument" and self.foreign:
            return f"{RULES[rule]} ({', '.join(self.foreign)}; the file name says {self.instrument})"
        return RULES[rule]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(8 << 20)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def time_bounds(settings: Settings, now_ms: int | None = None) -> dict[str, int]:
    """The bar times (UTC ms) a file may hold: from ``input.min_date`` (Chicago midnight) to now
    plus one day. Outside: bad rows (rule ``out_of_range``)."""
    start = datetime.combine(settings.min_date, datetime.min.time(), CHICAGO)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return {"min_ms": int(start.timestamp() * 1000), "max_ms": now_ms + _DAY_MS}


def parse_file(
    path: Path,
    settings: Settings,
    *,
    workers: int | None = None,
    tolerant: bool = False,
    piece_bytes: int | None = None,
    on_piece: Callable[[int, int], None] | None = None,
    instrument: str | None = None,
) -> tuple[Layout, list[Piece]]:
    """Parse a raw file into pieces (no store access). Raises FileRejected for a refused file.
    With ``instrument`` (the file's, from its name), rows whose Instrument column names another
    configured instrument are bad rows (rule ``instrument``)."""
    name = path.name
    size = path.stat().st_size
    if size == 0:
        raise FileRejected(f"{name}: zero-byte file (an export that wrote nothing)", "empty")
    layout = replace(sniff(path, name, settings), **time_bounds(settings))
    if instrument is not None and "instrument" in layout.columns:
        layout = replace(layout, foreign=frozenset(settings.instruments) - {instrument})
    piece_bytes = piece_bytes or int(os.environ.get(PIECE_BYTES_ENV) or PIECE_BYTES)
    points = split_points(path, layout.start, size, piece_bytes)
    ranges = list(zip(points[:-1], points[1:], strict=True))
    workers = workers or min(len(ranges), settings.effective_workers, 8)
    done_bytes = 0

    def run(i: int) -> Piece:
        return parse_piece(path, layout, i, ranges[i][0], ranges[i][1], tolerant)

    pieces: list[Piece] = []
    if workers <= 1 or len(ranges) == 1:
        for i in range(len(ranges)):
            pieces.append(run(i))
            done_bytes += ranges[i][1] - ranges[i][0]
            if on_piece:
                on_piece(done_bytes, size)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="translate") as pool:
            for i, piece in enumerate(pool.map(run, range(len(ranges)))):
                pieces.append(piece)
                done_bytes += ranges[i][1] - ranges[i][0]
                if on_piece:
                    on_piece(done_bytes, size)
    return layout, pieces


def assemble(
    path: Path,
    settings: Settings,
    instrument: str,
    layout: Layout,
    pieces: list[Piece],
    result: FileResult,
    now_ms: int,
) -> dict[int, pa.Table]:
    """Judge the parsed pieces as a whole; the bars per Chicago year, sorted and unique.

    Fills ``result`` (counts, first bad line per rule, first/last bar); raises FileRejected
    when the file has too many bad rows or implausible times.
    """
    name = path.name
    rows_in = sum(p.rows_in for p in pieces)
    dropped: dict[str, int] = {}
    offsets = np.cumsum([0] + [p.rows_in - p.malformed for p in pieces])
    first_rows: dict[str, int] = {}
    for p, off in zip(pieces, offsets, strict=False):
        for rule, n in p.bad.items():
            dropped[rule] = dropped.get(rule, 0) + n
        for rule, r in p.first_bad.items():
            first_rows.setdefault(rule, int(off) + r)
    result.rows_in = rows_in
    result.ambiguous = sum(p.ambiguous for p in pieces)
    result.dropped = {r: dropped[r] for r in RULES if r in dropped}
    result.foreign = tuple(sorted({x for p in pieces for x in p.foreign}))
    result.form = layout.form
    bad = sum(dropped.values())
    if bad:
        lines, first_malformed = locate_lines(
            path, layout, list(first_rows.values()), "malformed" in dropped
        )
        result.first_lines = {rule: lines.get(r) for rule, r in first_rows.items()}
        if "malformed" in dropped:
            result.first_lines["malformed"] = first_malformed
        result.first_lines = {r: result.first_lines.get(r) for r in RULES if r in dropped}
    if rows_in and bad / rows_in > settings.max_bad_row_fraction:
        # name the first bad line of the file
        first_rule = min(result.first_lines, key=lambda r: result.first_lines[r] or 1 << 62)
        line = result.first_lines[first_rule]
        detail = "; ".join(
            f"{result.rule_text(r)}: {n} row(s), first at line {result.first_lines.get(r)}"
            for r, n in result.dropped.items()
        )
        raise FileRejected(
            f"{name} line {line}: {result.rule_text(first_rule)} — {bad} of {rows_in} rows are bad "
            f"({bad / rows_in:.2%}, more than max_bad_row_fraction "
            f"{settings.max_bad_row_fraction:.2%}); {detail}",
            first_rule,
            line,
        )
    good = rows_in - bad
    suspect = sum(p.suspect for p in pieces)
    max_ts = max((p.max_ts for p in pieces if p.max_ts is not None), default=None)
    zone_note = f"input time zone {layout.zone}" if layout.form != "timestamp_utc" else "UTC stamps"
    if max_ts is not None and max_ts > now_ms + FUTURE_SLACK_MS:
        when = datetime.fromtimestamp(max_ts / 1000, CHICAGO)
        raise FileRejected(
            f"{name}: implausible times — a bar at {when:%Y-%m-%d %H:%M %Z} is in the future "
            f"({zone_note}; is the time zone setting right?)",
            "future_bar",
        )
    if good and suspect / good > SUSPECT_FRACTION:
        raise FileRejected(
            f"{name}: implausible times — {suspect} of {good} bars ({suspect / good:.1%}) fall "
            f"in the 16:00–16:59 Chicago break or on a Saturday ({zone_note}; is the time "
            "zone setting right?)",
            "suspect_times",
        )
    years: dict[int, pa.Table] = {}
    duplicates = 0
    all_years = sorted({y for p in pieces for y in p.years})
    for y in all_years:
        chunks = [c for p in pieces for c in p.years.pop(y, [])]
        table, dups = _year_table(chunks)
        duplicates += dups
        years[y] = table
    result.duplicates = duplicates
    result.rows_kept = sum(t.num_rows for t in years.values())
    if years:
        first_t, last_t = years[all_years[0]], years[all_years[-1]]
        # from the epoch values: a tz-aware scalar's as_py() would import pandas
        result.first_bar = store.ms_to_datetime(first_t.column("timestamp")[0].cast(pa.int64()).as_py())
        result.last_bar = store.ms_to_datetime(last_t.column("timestamp")[-1].cast(pa.int64()).as_py())
    return years


def _increasing(chunks: list[tuple[np.ndarray, ...]]) -> bool:
    """Whether the timestamps of the chunks, in order, strictly increase (checked chunk by
    chunk: no copy of the whole year)."""
    last = None
    for c in chunks:
        ts = c[0]
        if not len(ts):
            continue
        if last is not None and ts[0] <= last:
            return False
        if len(ts) > 1 and not bool(np.all(ts[1:] > ts[:-1])):
            return False
        last = ts[-1]
    return True


def _year_table(chunks: list[tuple[np.ndarray, ...]]) -> tuple[pa.Table, int]:
    """One year's bars as a store table, sorted, one bar per timestamp (the last one in the
    file wins); also the number of duplicates dropped."""
    order = None
    dups = 0
    if not _increasing(chunks):
        ts = np.concatenate([c[0] for c in chunks]) if len(chunks) > 1 else chunks[0][0]
        n = len(ts)
        order = np.argsort(ts, kind="stable")
        s = ts[order]
        keep = np.ones(n, dtype=bool)
        keep[:-1] = s[1:] != s[:-1]  # the stable sort keeps file order: keep the last of a run
        order = order[keep]
        dups = n - len(order)
    cols: dict[str, Any] = {}
    if order is None:
        cols["timestamp"] = pa.chunked_array(
            [to_arrow(c[0], store.TIMESTAMP_TYPE) for c in chunks], store.TIMESTAMP_TYPE
        )
        for i, name in enumerate(_PRICES, start=1):
            cols[name] = pa.chunked_array([to_arrow(c[i], pa.float64()) for c in chunks], pa.float64())
    else:
        cols["timestamp"] = to_arrow(ts[order], store.TIMESTAMP_TYPE)
        for i, name in enumerate(_PRICES, start=1):
            full = np.concatenate([c[i] for c in chunks]) if len(chunks) > 1 else chunks[0][i]
            cols[name] = to_arrow(full[order], pa.float64())
    # the instrument column is added per year as the store writes it (less memory held)
    return pa.table(cols, schema=_BARS_SCHEMA), dups


# --- moving raw files -------------------------------------------------------------------------


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/<stem>-N<suffix>`` if that is taken."""
    dest = folder / name
    if not dest.exists() and not (folder / f"{name}.error.txt").exists():
        return dest
    stem, dot, suffix = name.partition(".")
    n = 2
    while True:
        cand = folder / f"{stem}-{n}{dot}{suffix}"
        if not cand.exists() and not (folder / f"{cand.name}.error.txt").exists():
            return cand
        n += 1


def _move(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dest)
    fsync_dir(dest.parent)


def quarantine(settings: Settings, path: Path, exc: FileRejected, run_id: str | None) -> Path:
    """Move a rejected file unchanged to ``data/raw/quarantine`` with ``<name>.error.txt``.

    A name that is not fit to show or too long for the note's suffix is stored under a safe
    name (escaped, cut and hashed if need be); the note records the original name, escaped and
    as its bytes in hex. A symbolic link is moved as the link, never followed."""
    qdir = settings.quarantine_dir
    qdir.mkdir(parents=True, exist_ok=True)
    name = path.name
    dest = _free_name(qdir, safe_filename(name, ".error.txt-99"))
    lines = [
        f"file: {safe(name)}",
        f"rejected_at: {clock.iso_now()}",
        f"run_id: {run_id or '-'}",
        f"rule: {exc.rule}",
        f"line: {exc.line if exc.line is not None else '-'}",
        f"reason: {safe(exc.reason)}",
    ]
    if dest.name != name:
        lines += [f"stored_as: {dest.name}", f"name_bytes_hex: {os.fsencode(name).hex()}"]
    write_bytes_atomic(qdir / f"{dest.name}.error.txt", ("\n".join(lines) + "\n").encode("utf-8"))
    _move_with_signals(settings, path, dest)
    return dest


def _move_with_signals(settings: Settings, path: Path, dest: Path, signals: list[Path] | None = None) -> None:
    """Move a raw file to ``dest`` and its signal files to ``dest``'s ``logs/``, never over an
    earlier file's (a second ``ES.csv`` becomes ``ES-2.csv``; its signals keep their names
    unless those are taken too)."""
    _move(path, dest)
    for sig in signal_files(settings, path.name) if signals is None else signals:
        _move(sig, _free_name(dest.parent / "logs", sig.name))


def archive_dest(settings: Settings, path: Path) -> Path | None:
    """Where :func:`dispose` will archive ``path`` (None unless ``raw_policy`` is archive)."""
    if settings.raw_policy != "archive":
        return None
    return _free_name(settings.archive_dir / clock.now().strftime("%Y-%m-%d"), path.name)


def dispose(settings: Settings, path: Path, dest: Path | None = None) -> Path | None:
    """Archive (to ``dest``, else a free name), delete or keep a translated raw file
    (``raw_policy``), with its signal files. Returns the archive path (None when deleted or kept).
    """
    policy = settings.raw_policy
    if policy == "keep":
        return None
    signals = signal_files(settings, path.name)
    if policy == "delete":
        for p in (path, *signals):
            p.unlink(missing_ok=True)
        fsync_dir(path.parent)
        return None
    dest = dest or archive_dest(settings, path)
    assert dest is not None
    _move_with_signals(settings, path, dest, signals)
    return dest


# --- the stage --------------------------------------------------------------------------------


def _iso(dt: datetime | None) -> str | None:
    return dt.astimezone(CHICAGO).isoformat() if dt is not None else None


def translate_file(
    path: Path,
    settings: Settings,
    rep: Reporter,
    cat: Catalog,
    run_id: str | None,
    sizes: set[int] | None = None,
    progress: FileReading | None = None,
) -> tuple[str, FileResult | None, Any]:
    """Translate one ready raw file. Returns ``(outcome, result, extra)`` with outcome
    ``translated``, ``already_ingested`` (extra: the earlier catalogue record) or
    ``quarantined`` (extra: the FileRejected). A translated file is recorded in the catalogue
    ``cat`` (its size added to ``sizes``, the sizes of files ingested so far), so a copy later in
    the same run is recognised. A damaged store file raises
    :class:`~pipeline_core.catalog.DamageError`; the raw file then stays where it is."""
    if sizes is None:
        sizes = cat.ingested_sizes()
    name = path.name
    t0 = time.perf_counter()
    st = path.lstat()
    try:
        if stat.S_ISLNK(st.st_mode):
            raise FileRejected(
                f"{safe(name)}: {SYMLINK_REASON} (it points to {safe(os.readlink(path))}); "
                "put the file itself in data/raw", "symlink")
        problem = name_problem(name)
        if problem is not None:
            raise FileRejected(
                f"{safe(name)}: {problem}; rename it (letters, digits, '_', '-', '.') and drop it again",
                "file_name")
        if st.st_size == 0:
            raise FileRejected(f"{name}: zero-byte file (an export that wrote nothing)", "empty")
        try:
            instrument = parse_instrument(name, settings)
        except RawFileError as exc:
            raise FileRejected(f"{name}: {exc.reason}", "file_name") from None
        hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        try:
            # Only a file of a size already in the catalogue can be a copy of an ingested one:
            # hash it before parsing. Any other file is hashed while it is parsed.
            pending = hasher.submit(sha256_file, path)
            if st.st_size in sizes:
                layout_pieces = None
            else:
                layout_pieces = _parse(path, settings, rep, name, instrument, progress)
            digest = pending.result()
        finally:
            hasher.shutdown(wait=True)
        earlier = cat.ingested(digest)
        if earlier is not None:
            what = _changed(path, st)
            if what is not None:
                raise FileChanged(name, what)
            # Recorded before the move, as a translated file is (a crash in between leaves the
            # copy in data/raw for the next run): the archive holds no file the catalogue does
            # not know, and `qtsw verify` finds nothing to say about a copy handled as it should.
            dest = archive_dest(settings, path)
            if dest is not None and (
                not earlier.get("archived_path") or not cat.abs(earlier["archived_path"]).exists()
            ):
                # the earlier copy never reached the archive (a crash between record and move)
                cat.set_archived(int(earlier["id"]), dest)
            elif dest is not None or settings.raw_policy == "keep":
                cat.add_raw(
                    {
                        "name": name,
                        "size": st.st_size,
                        "mtime_ns": st.st_mtime_ns,
                        "sha256": digest,
                        "status": "already_ingested",
                        "instrument": instrument,
                        "ingested_at": clock.iso_now(),
                        "run_id": run_id,
                        "archived_path": cat.rel(dest) if dest is not None else None,
                    },
                )
            dispose(settings, path, dest)
            return "already_ingested", None, earlier
        result = FileResult(name, instrument, st.st_size, digest)
        layout, pieces = layout_pieces or _parse(path, settings, rep, name, instrument, progress)
        _pause_point(path)
        what = _changed(path, st)
        if what is not None:  # what was parsed and hashed may not be one version of the file
            raise FileChanged(name, what)
        years = assemble(path, settings, instrument, layout, pieces, result, int(time.time() * 1000))
    except FileRejected as exc:
        quarantine(settings, path, exc, run_id)
        return "quarantined", None, exc
    del pieces

    # The changed range goes into the catalogue with each year file's intent: durable before the
    # store changes, so a crash cannot lose the analyzer's pending work. The year files' records
    # are committed with the raw file's record below (one transaction, not two).
    written: list[Path] = []
    try:
        with catalog.instrument_lock(settings, instrument):
            result.changed = store.upsert_years(
                settings, instrument, list(years.items()), record_changes=True, uncommitted=written)
        years.clear()
        return _record_translated(settings, rep, cat, path, st, result, run_id, sizes, written, t0)
    finally:
        if written:  # not committed with a raw record (an error on the way): committed alone
            cat.commit_intents(written)


def _record_translated(
    settings: Settings, rep: Reporter, cat: Catalog, path: Path, st: os.stat_result,
    result: FileResult, run_id: str | None, sizes: set[int], written: list[Path], t0: float,
) -> tuple[str, FileResult | None, Any]:
    """Record a translated raw file (with the year files ``written`` from it: their records
    commit in the same transaction, and the list is emptied) and archive it."""
    name, digest, instrument = path.name, result.sha256, result.instrument
    result.seconds = time.perf_counter() - t0
    dest = archive_dest(settings, path)
    entry = {
        "name": name,
        "size": st.st_size,
        "mtime": datetime.fromtimestamp(st.st_mtime, CHICAGO).isoformat(),
        "mtime_ns": st.st_mtime_ns,
        "sha256": digest,
        "status": "ingested",
        "form": result.form,
        "instrument": instrument,
        "rows_in": result.rows_in,
        "rows_kept": result.rows_kept,
        "dropped": result.dropped,
        "duplicates": result.duplicates,
        "first_bar": _iso(result.first_bar),
        "last_bar": _iso(result.last_bar),
        "changed_first": _iso(result.changed[0]) if result.changed else None,
        "changed_last": _iso(result.changed[1]) if result.changed else None,
        "ingested_at": clock.iso_now(),
        "run_id": run_id,
        "archived_path": cat.rel(dest) if dest is not None else None,
    }
    what = _changed(path, st)
    if what is not None:
        # Changed after its bars were read and stored: the bars stored are those of the version
        # read (hash above); that version is gone, so it is recorded as such and not archived,
        # and the file as it is now is taken by the next run.
        entry.update(status="changed_after_store", archived_path=None)
        cat.add_raw(entry, commit=written)
        written.clear()
        rep.warning(
            f"{safe(name)}: changed while it was stored ({what}); the bars read are stored, the "
            "file stays in data/raw and is taken again next run", file=name)
        return "translated", result, None
    # Recorded before the move: a crash in between leaves the file in data/raw, where the next
    # run finds its sha256 in the catalogue and archives it as already ingested.
    cat.add_raw(entry, commit=written)
    written.clear()
    sizes.add(st.st_size)
    dispose(settings, path, dest)
    return "translated", result, None


class ByteProgress:
    """The stage's progress in bytes of its input files read (``unit`` ``bytes``): a message at
    each file's start, then within a file every 2 % of all the bytes or every second, whichever
    comes first, and one at the end. Files read side by side (one thread per instrument) add
    up: each has its own :class:`FileReading`."""

    STEP = 0.02
    EVERY = 1.0  # seconds

    def __init__(self, rep: Reporter, sizes: list[int]) -> None:
        self.rep = rep
        self.sizes = sizes
        self.total = sum(sizes)
        self.files = len(sizes)
        self._done = [0] * len(sizes)  # bytes read of each file
        self._lock = threading.Lock()
        self._last_done = -1
        self._last_time = 0.0

    def start_file(self, index: int, name: str) -> FileReading:
        reading = FileReading(self, index, name)
        self._send(index, name, 0, force=True)
        return reading

    def finish(self) -> None:
        self.rep.progress(self.total, self.total, f"{self.total / 1e6:.1f} MB read, {self.files} file(s)",
                          unit="bytes", files=self.files)

    def _send(self, index: int, name: str, done_in_file: int, *, force: bool = False) -> None:
        with self._lock:
            self._done[index] = max(self._done[index], min(done_in_file, self.sizes[index]))
            done = min(sum(self._done), self.total)
            now = time.monotonic()
            if not force and (done - self._last_done < self.STEP * self.total and now - self._last_time < self.EVERY):
                return
            if done >= self.total > 0 and not force:
                return  # the last one is finish()'s
            self._last_done, self._last_time = done, now
            self.rep.progress(
                done, self.total,
                f"{done / 1e6:.1f} of {self.total / 1e6:.1f} MB read (file {index + 1}/{self.files}: {name})",
                unit="bytes", file=name, files=self.files,
            )


class FileReading:
    """One file's share of :class:`ByteProgress`: how much of it has been read."""

    def __init__(self, progress: ByteProgress, index: int, name: str) -> None:
        self.progress, self.index, self.name = progress, index, name

    def within(self, done_in_file: int) -> None:
        self.progress._send(self.index, self.name, done_in_file)

    def end(self) -> None:
        """The file is done (translated, rejected or failed): all its bytes count as read."""
        p = self.progress
        with p._lock:
            p._done[self.index] = p.sizes[self.index]


def _parse(
    path: Path, settings: Settings, rep: Reporter, name: str, instrument: str,
    progress: FileReading | None = None,
) -> tuple[Layout, list[Piece]]:
    """parse_file, reporting the bytes parsed as it goes."""

    def on_piece(done: int, total: int) -> None:
        if progress is not None and done < total:
            progress.within(done)

    return parse_file(path, settings, on_piece=on_piece, instrument=instrument)


def concurrent_groups(files: list[Path], settings: Settings) -> list[list[Path]] | None:
    """The ready files cut by instrument (each group in file order) when they may be translated
    concurrently, one group per worker; None when they go one after another.

    A quarter-hour's exports are small files, one per instrument, each parsed on one core and
    most of its time spent rewriting its own year file: the instruments share nothing but the
    catalogue, so they run side by side. They go one after another when a file is big enough to
    be parsed in pieces (it uses every core by itself), or when two files have the same size
    (one may be a copy of the other: the later one must find the earlier's hash recorded).
    """
    if len(files) < 2 or settings.effective_workers < 2:
        return None
    piece_bytes = int(os.environ.get(PIECE_BYTES_ENV) or PIECE_BYTES)
    groups: dict[str, list[Path]] = {}
    sizes: set[int] = set()
    for path in files:
        try:
            size = path.lstat().st_size
        except FileNotFoundError:
            continue
        if size >= piece_bytes or size in sizes:
            return None
        sizes.add(size)
        try:
            key = parse_instrument(path.name, settings)
        except RawFileError:
            key = f"\0{path.name}"  # rejected on its own
        groups.setdefault(key, []).append(path)
    return list(groups.values()) if len(groups) > 1 else None


def run(args: argparse.Namespace, settings: Settings, rep: Reporter) -> str:
    """The translator stage: translate every ready raw file; report and return the status."""
    t_start = time.perf_counter()
    settings.ensure_dirs()
    cleaned = remove_stale_temp_files(settings.processed_dir)
    if cleaned:
        rep.say(f"removed {cleaned} temporary file(s) left in the store by an interrupted write")
    scan = scan_raw(settings)
    files = scan.ready
    counts: dict[str, Any] = {
        "files": len(files),
        "translated": 0,
        "already_ingested": 0,
        "quarantined": 0,
        "quarantined_files": [],  # which, by which rule at which line (the run detail names them)
        "changed": 0,
        "errors": 0,
        "waiting": len(scan.waiting),
        "stale": len(scan.stale),
        "rows_in": 0,
        "rows_kept": 0,
        "rows_dropped": 0,
        "duplicates": 0,
        "dropped_by_rule": {},
        "instruments": {},
        "bytes": 0,
        "seconds": 0.0,
    }
    for p in scan.waiting:
        rep.say(f"waiting: {p.name} is still being written")
    for p, why in scan.ignored:
        rep.warning(f"{p.parent.name}/{p.name}: ignored: {why}", file=p.name, reason="ignored")
    for p in scan.stale:
        rep.warning(
            f"{p.name}: its export never completed (progress file older than "
            f"{settings.export_stale_seconds:g} s); translating it as it is",
            file=p.name,
        )
    if not files:
        msg = "no raw files ready" + (f" ({len(scan.waiting)} still being written)" if scan.waiting else "")
        rep.say(msg)
        rep.result("success", msg, counts)
        return "success"
    cat = catalog.open_catalog(settings)
    sizes = cat.ingested_sizes()
    rep.say(f"translating {len(files)} raw file(s) into {settings.processed_dir}")
    errors: list[str] = []
    damaged = 0
    file_sizes = []
    for path in files:
        try:
            file_sizes.append(path.lstat().st_size)
        except OSError:
            file_sizes.append(0)
    progress = ByteProgress(rep, file_sizes)
    lock = threading.Lock()  # the counts and the messages of files translated concurrently
    index = {path: i for i, path in enumerate(files)}

    def one(path: Path) -> None:
        nonlocal damaged
        try:
            size = path.lstat().st_size
        except FileNotFoundError:
            rep.say(f"{path.name}: gone before it was translated; skipped")
            return
        reading = progress.start_file(index[path], path.name)
        try:
            outcome, res, extra = translate_file(path, settings, rep, cat, args.run_id, sizes, reading)
        except FileChanged as exc:  # taken again next run; the run is not the worse for it
            with lock:
                counts["changed"] += 1
                rep.warning(str(exc), file=path.name, reason="changed_while_read")
                rep.metric(f"{path.name}: changed while read", file=path.name, status="changed", what=exc.what)
            return
        except (DamageError, CatalogError) as exc:  # named, with its repair; blocks this file only
            with lock:
                counts["errors"] += 1
                damaged += isinstance(exc, DamageError)
                errors.append(str(exc))
                rep.warning(f"{path.name}: not translated: {exc}; the file stays in data/raw", file=path.name)
                rep.metric(f"{path.name}: failed", file=path.name, status="error", error=str(exc))
            return
        except OSError as exc:  # a full disk, a permission: named, no traceback; the others go on
            with lock:
                counts["errors"] += 1
                text = os_error_text(exc)
                errors.append(f"{safe(path.name)}: {text}")
                rep.warning(f"{path.name}: not translated: {text}; the file stays in data/raw", file=path.name)
                rep.metric(f"{path.name}: failed", file=path.name, status="error", error=text)
            return
        except Exception as exc:  # one file's unexpected failure must not stop the others
            with lock:
                counts["errors"] += 1
                errors.append(f"{path.name}: {type(exc).__name__}: {exc}")
                rep.say(traceback.format_exc())
                rep.warning(f"{path.name}: translation failed: {exc}; the file stays in data/raw", file=path.name)
                rep.metric(f"{path.name}: failed", file=path.name, status="error", error=str(exc))
            return
        finally:
            reading.end()
        with lock:
            _report_file(rep, counts, path, size, outcome, res, extra)

    groups = concurrent_groups(files, settings)
    if groups is None:
        for path in files:
            one(path)
    else:
        def group(paths: list[Path]) -> None:
            for path in paths:
                one(path)

        with ThreadPoolExecutor(max_workers=min(len(groups), settings.effective_workers),
                                thread_name_prefix="instrument") as pool:
            list(pool.map(group, groups))
    progress.finish()
    counts["seconds"] = round(time.perf_counter() - t_start, 3)
    summary = (
        f"{counts['translated']} file(s) translated, {counts['rows_kept']} bars kept"
        + (f", {counts['rows_dropped']} bad rows dropped" if counts["rows_dropped"] else "")
        + (f", {counts['already_ingested']} already ingested" if counts["already_ingested"] else "")
        + (f", {counts['quarantined']} quarantined ({_names(counts['quarantined_files'], counts['quarantined'])})"
           if counts["quarantined"] else "")
        + (f", {counts['changed']} changed while read (next run)" if counts["changed"] else "")
        + (f", {counts['errors']} failed" if counts["errors"] else "")
    )
    rep.say(summary)
    counts["catalog_seconds"] = round(cat.seconds, 4)
    if counts["errors"]:
        # Damaged store files block their own instrument; the others went on: partial.
        status = "partial" if damaged == counts["errors"] else "failure"
        rep.result(status, summary, counts, error="; ".join(errors))
        return status
    status = "partial" if counts["quarantined"] else "success"
    rep.result(status, summary, counts)
    return status


def _names(files: list[dict[str, Any]], count: int, shown: int = 3) -> str:
    """``a.csv, b.csv and 4 more`` — the first few of ``count`` files."""
    names = [str(f["file"]) for f in files[:shown]]
    more = count - len(names)
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


def _report_file(
    rep: Reporter, counts: dict[str, Any], path: Path, size: int, outcome: str,
    res: FileResult | None, extra: Any,
) -> None:
    """Count one file's outcome and report it (a line, a warning, a metric)."""
    counts["bytes"] += size
    if outcome == "quarantined":
        counts["quarantined"] += 1
        if len(counts["quarantined_files"]) < QUARANTINE_LISTED:
            counts["quarantined_files"].append(
                {"file": safe(path.name), "rule": extra.rule, "line": extra.line, "reason": safe(str(extra.reason))}
            )
        rep.warning(f"quarantined {path.name}: {extra.reason}", file=path.name, rule=extra.rule, line=extra.line)
        rep.metric(
            f"{path.name}: quarantined ({extra.rule})",
            file=path.name,
            status="quarantined",
            rule=extra.rule,
            line=extra.line,
            reason=extra.reason,
        )
    elif outcome == "already_ingested":
        counts["already_ingested"] += 1
        when = extra.get("ingested_at", "?")
        rep.warning(f"{path.name}: already ingested at {when} (same sha256); not translated again", file=path.name, ingested_at=when)
        rep.metric(f"{path.name}: already ingested at {when}", file=path.name, status="already_ingested", ingested_at=when)
    else:
        assert res is not None
        counts["translated"] += 1
        _count_file(counts, res)
        mb_s = res.size / 1e6 / res.seconds if res.seconds > 0 else 0.0
        dropped = ", ".join(f"{res.rule_text(r)} {n} (first at line {res.first_lines.get(r)})"
                            for r, n in res.dropped.items())
        rep.say(
            f"{res.name}: {res.instrument} {res.rows_kept} bars kept of {res.rows_in} rows"
            + (f"; dropped {dropped}" if dropped else "")
            + (f"; {res.duplicates} duplicate timestamp(s), last kept" if res.duplicates else "")
            + (f"; {res.first_bar:%Y-%m-%d %H:%M} to {res.last_bar:%Y-%m-%d %H:%M} Chicago" if res.first_bar and res.last_bar else "")
            + f"; {res.size / 1e6:.1f} MB in {res.seconds:.2f} s ({mb_s:.0f} MB/s)"
        )
        if res.ambiguous:
            rep.warning(
                f"{res.name}: {res.ambiguous} bar(s) at a wall time that occurs twice in its "
                "time zone (the autumn clock change) were read as the first occurrence",
                file=res.name,
            )
        rep.metric(
            f"{res.name}: {res.rows_kept} bars kept",
            file=res.name,
            status="translated",
            instrument=res.instrument,
            form=res.form,
            rows_in=res.rows_in,
            rows_kept=res.rows_kept,
            dropped=res.dropped,
            first_bad_line=res.first_lines,
            duplicates=res.duplicates,
            ambiguous=res.ambiguous,
            first_bar=_iso(res.first_bar),
            last_bar=_iso(res.last_bar),
            changed_first=_iso(res.changed[0]) if res.changed else None,
            changed_last=_iso(res.changed[1]) if res.changed else None,
            seconds=round(res.seconds, 3),
            mb_per_s=round(mb_s, 1),
        )


def _count_file(counts: dict[str, Any], res: FileResult) -> None:
    counts["rows_in"] += res.rows_in
    counts["rows_kept"] += res.rows_kept
    counts["rows_dropped"] += sum(res.dropped.values())
    counts["duplicates"] += res.duplicates
    for rule, n in res.dropped.items():
        counts["dropped_by_rule"][rule] = counts["dropped_by_rule"].get(rule, 0) + n
    inst = counts["instruments"]
    inst[res.instrument] = inst.get(res.instrument, 0) + res.rows_kept


def _build_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = "Translate ready raw exports in data/raw into the Parquet bar store."


def main(argv: list[str] | None = None) -> int:
    # glibc's allocator keeps freed memory for reuse; arrow's default pool hands it back to
    # the kernel and faults it in again, which costs this stage about a third more system time.
    pa.set_memory_pool(pa.system_memory_pool())
    return stage_main(STAGE, _build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
