"""The opening-range breakout strategy (SPEC §4.1–§4.6) as pure, vectorised functions.

In: one instrument's bars (:class:`Bars`) and its :class:`StrategyConfig`.
Out: one row per (trading date, session, slot) whose range window holds bars, in
:data:`RESULT_SCHEMA`, from :func:`analyze`.

How it is computed, and why it can be trusted:

* Every clock time is a Chicago wall-clock time built from a date and a time with zoneinfo, and
  turned once into epoch nanoseconds; window bounds are ``np.searchsorted`` positions in the
  bar timestamps, so DST days and missing bars need no special case.
* All prices are compared in integer ticks (``round(price / tick)``), so float artefacts cannot
  flip a result. Output prices are ticks × tick rounded to the tick's decimals.
* "The first bar in a window whose high reaches a level" and "the highest high in a window" are
  answered for all slots at once by :class:`_BlockMax` (block maxima plus a sparse table).
* A short trade is treated as a long trade on negated prices, so each exit rule is written once:
  :func:`_exits` is the one place that decides Win, BE, Loss and TIME.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline_core import clock
from pipeline_core.arrays import empty_table, indices, string_array, to_arrow, to_numpy
from pipeline_core.settings import CHICAGO, Session, Settings

__all__ = [
    "RESULT_SCHEMA",
    "Bars",
    "StrategyConfig",
    "affected_dates",
    "analyze",
    "candidate_dates",
]

_CHICAGO_TS = pa.timestamp("ms", tz="America/Chicago")

RESULT_SCHEMA = pa.schema(
    [
        pa.field("Date", pa.date32()),
        pa.field("Time", pa.string()),
        pa.field("EntryTime", _CHICAGO_TS),
        pa.field("ExitTime", _CHICAGO_TS),
        pa.field("Target", pa.float64()),
        pa.field("Peak", pa.float64()),
        pa.field("Direction", pa.string()),
        pa.field("Result", pa.string()),
        pa.field("Range", pa.float64()),
        pa.field("Stream", pa.string()),
        pa.field("Instrument", pa.string()),
        pa.field("Session", pa.string()),
        pa.field("Profit", pa.float64()),
        pa.field("RangeHigh", pa.float64()),
        pa.field("RangeLow", pa.float64()),
        pa.field("EntryPrice", pa.float64()),
        pa.field("ExitPrice", pa.float64()),
        pa.field("StopPrice", pa.float64()),
        pa.field("TargetPrice", pa.float64()),
        pa.field("Final", pa.bool_()),
    ]
)
"""SPEC §4.6 result columns, in order. Prices in points; EntryTime/ExitTime and the four trade
prices are null for NoTrade rows."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

# Dates per vectorised batch: bounds memory and gives progress reports a rhythm.
_DATES_PER_BATCH = 256
_BATCH_GAP_DAYS = 10  # dates further apart than this go to separate batches

# Result and direction codes used inside the batch arrays.
_NOTRADE, _WIN, _BE, _LOSS, _TIME = 0, 1, 2, 3, 4
_RESULT_NAMES = ("NoTrade", "Win", "BE", "Loss", "TIME")
_DIRECTION_NAMES = ("NA", "Long", "Short")


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StrategyConfig:
    """Everything that decides one instrument's results (SPEC §4.1–§4.4)."""

    instrument: str  # e.g. "ES"; stream = instrument + session digit (ES1, ES2)
    tick: float
    target: float  # T, in points
    sessions: tuple[Session, ...]
    trade_days: frozenset[int]  # 0 = Monday
    entry_cutoff: time
    break_even_fraction: float
    stop_cap_multiple: float

    def __post_init__(self) -> None:
        if not self.tick > 0:
            raise ValueError(f"{self.instrument}: tick must be positive, got {self.tick!r}")
        if round(self.target / self.tick) < 1:
            raise ValueError(
                f"{self.instrument}: target {self.target!r} must be at least one tick ({self.tick!r})"
            )
        if not 0 < self.break_even_fraction <= 1:
            raise ValueError(
                f"break_even_fraction must be in (0, 1], got {self.break_even_fraction!r}"
            )
        if not self.stop_cap_multiple > 0:
            raise ValueError(f"stop_cap_multiple must be positive, got {self.stop_cap_multiple!r}")
        if not self.sessions:
            raise ValueError("at least one session is needed")
        if not self.trade_days or not set(self.trade_days) <= set(range(7)):
            raise ValueError(f"trade_days must be weekdays 0..6, got {sorted(self.trade_days)}")

    @classmethod
    def from_settings(cls, settings: Settings, instrument: str) -> StrategyConfig:
        """The strategy configuration of ``instrument`` (a symbol in the settings' table)."""
        inst = settings.instrument(instrument)
        return cls(
            instrument=inst.symbol,
            tick=inst.tick,
            target=inst.target,
            sessions=tuple(settings.sessions),
            trade_days=frozenset(settings.trade_days),
            entry_cutoff=settings.entry_cutoff,
            break_even_fraction=settings.break_even_fraction,
            stop_cap_multiple=settings.stop_cap_multiple,
        )


@dataclass(frozen=True)
class _Ticks:
    """The configuration's price quantities in integer ticks."""

    target: int  # T
    break_even: int  # smallest favourable excursion that reaches the break-even fraction of T
    stop_cap: int  # largest allowed distance from entry to the initial stop
    decimals: int  # decimals of the tick, for printing prices without float artefacts

    @classmethod
    def of(cls, cfg: StrategyConfig) -> _Ticks:
        target = round(cfg.target / cfg.tick)
        # Fractions of the decimal text (0.65, 3.0), so "65 % of 40 ticks" is exactly 26.
        frac = Fraction(repr(cfg.break_even_fraction))
        cap = Fraction(repr(cfg.stop_cap_multiple))
        return cls(
            target=target,
            break_even=math.ceil(frac * target),
            stop_cap=math.floor(cap * target),
            decimals=_decimals(cfg.tick),
        )


def _decimals(tick: float) -> int:
    for d in range(13):
        if abs(round(tick, d) - tick) < 1e-12:
            return d
    return 12


# --- bars ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Bars:
    """One instrument's bars, sorted by ``ts`` with unique ``ts``.

    ``ts`` is int64 epoch nanoseconds (UTC) of the bar open; prices are float64 points.
    """

    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.ts)
        if any(len(a) != n for a in (self.open, self.high, self.low, self.close)):
            raise ValueError("Bars: ts, open, high, low and close must have the same length")

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def from_table(cls, table: pa.Table) -> Bars:
        """Bars from a bar-store table (``timestamp`` tz-aware, ``open``/``high``/``low``/``close``).

        Rows are sorted by time if needed. Raises ValueError for a missing column, a naive or
        null timestamp, a null or NaN price, or a duplicated timestamp (naming it).
        """
        missing = [c for c in ("timestamp", "open", "high", "low", "close") if c not in table.column_names]
        if missing:
            raise ValueError(f"bar table lacks column(s) {', '.join(missing)}")
        col = table.column("timestamp")
        if not pa.types.is_timestamp(col.type) or col.type.tz is None:
            raise ValueError(f"bar table column timestamp must be a time-zone-aware timestamp, got {col.type}")
        if col.null_count:
            raise ValueError(f"bar table has {col.null_count} null timestamp(s)")
        ts = to_numpy(pc.cast(col, pa.timestamp("ns", tz="UTC")), np.int64)
        prices = {}
        for name in ("open", "high", "low", "close"):
            c = table.column(name)
            if c.null_count:
                raise ValueError(f"bar table column {name} has {c.null_count} null value(s)")
            arr = to_numpy(c, np.float64) if c.type == pa.float64() else np.asarray(c.to_numpy(), dtype=np.float64)
            bad = np.flatnonzero(np.isnan(arr))
            if len(bad):
                raise ValueError(f"bar table column {name} is NaN at {_fmt_ns(int(ts[bad[0]]))}")
            prices[name] = arr
        if len(ts) > 1 and not (np.diff(ts) > 0).all():
            order = np.argsort(ts, kind="stable")
            ts = ts[order]
            prices = {k: v[order] for k, v in prices.items()}
            dup = np.flatnonzero(np.diff(ts) == 0)
            if len(dup):
                raise ValueError(f"bar table has a duplicated timestamp {_fmt_ns(int(ts[dup[0]]))}")
        return cls(ts=np.ascontiguousarray(ts), **prices)


def _fmt_ns(ns: int) -> str:
    return (_EPOCH + timedelta(microseconds=ns // 1000)).astimezone(CHICAGO).isoformat()


# --- clock -----------------------------------------------------------------------------------


def _wall_ns(d: date, t: time) -> int:
    """Epoch nanoseconds of the Chicago wall-clock time ``t`` on ``d`` (zoneinfo, never +hours)."""
    return (datetime.combine(d, t, tzinfo=CHICAGO) - _EPOCH) // _ONE_US * 1000


_LAST_SECOND = time(23, 59, 59)
_NS_PER_DAY = 86_400 * 10**9


def _wall_table(days: Sequence[date], times: Sequence[time]) -> np.ndarray:
    """Epoch ns of every (day, time) as Chicago wall-clock times, shape (len(days), len(times)).

    Same values as :func:`_wall_ns`, computed faster: on a day whose UTC offset (from zoneinfo)
    is the same at 00:00 and 23:59:59 there is no clock change (Chicago changes at most once a
    day), so every time that day is local midnight + time − offset. Days with a change are
    built time by time with zoneinfo.
    """
    tod = np.array(
        [((t.hour * 60 + t.minute) * 60 + t.second) * 10**9 + t.microsecond * 1000 for t in times],
        dtype=np.int64,
    )
    midnight = np.empty(len(days), dtype=np.int64)  # local midnight, as if it were UTC
    offset = np.empty(len(days), dtype=np.int64)
    changes = []
    for i, d in enumerate(days):
        first = CHICAGO.utcoffset(datetime.combine(d, time(0)))
        if first != CHICAGO.utcoffset(datetime.combine(d, _LAST_SECOND)):
            changes.append(i)
        midnight[i] = (d.toordinal() - _EPOCH_ORDINAL) * _NS_PER_DAY
        offset[i] = first // _ONE_US * 1000
    out = (midnight - offset)[:, None] + tod[None, :]
    for i in changes:
        out[i] = [_wall_ns(days[i], t) for t in times]
    return out


def _chicago_date(ns: int) -> date:
    return (_EPOCH + timedelta(microseconds=ns // 1000)).astimezone(CHICAGO).date()


def _next_trade_day(d: date, trade_days: frozenset[int]) -> date:
    """The next date after ``d`` whose weekday is a trade day (Friday → Monday by default)."""
    nxt = d + timedelta(days=1)
    while nxt.weekday() not in trade_days:
        nxt += timedelta(days=1)
    return nxt


def _slot_order(cfg: StrategyConfig) -> list[tuple[Session, time]]:
    """Every (session, slot end), in output order: by slot time, then session."""
    return sorted(((s, t) for s in cfg.sessions for t in s.slots), key=lambda st: (st[1], st[0].name))


# --- dates -----------------------------------------------------------------------------------


def candidate_dates(bars: Bars, cfg: StrategyConfig) -> list[date]:
    """The Chicago calendar dates holding bars whose weekday is a trade day, ascending.

    A date yields rows only for the slots whose range window holds bars.
    """
    if len(bars) == 0:
        return []
    first, last = _chicago_date(int(bars.ts[0])), _chicago_date(int(bars.ts[-1]))
    days = [first + timedelta(days=i) for i in range((last - first).days + 2)]
    bounds = _wall_table(days, [time(0)])[:, 0]
    counts = np.diff(np.searchsorted(bars.ts, bounds))
    return [d for d, c in zip(days[:-1], counts, strict=True) if c and d.weekday() in cfg.trade_days]


def date_window(d: date, cfg: StrategyConfig) -> tuple[datetime, datetime]:
    """The span of bar times that trade date ``d``'s rows depend on: from its earliest range
    start to its horizon (the latest slot on the next trade day). Its entry windows, which end
    at the cutoff on ``d``, lie inside it."""
    earliest = min(s.range_start for s in cfg.sessions)
    latest = max(t for s in cfg.sessions for t in s.slots)
    return clock.wall(d, earliest), clock.wall(_next_trade_day(d, cfg.trade_days), latest)


def affected_dates(first: datetime, last: datetime, cfg: StrategyConfig) -> list[date]:
    """The trade dates whose range, entry or horizon window overlaps bars in [first, last].

    ``first`` and ``last`` are aware datetimes (the changed bar-open times); a date's windows
    are its :func:`date_window`. Dates holding ``Final = false`` rows are not included here;
    SPEC §4.7 re-analyses them as well.
    """
    if first.tzinfo is None or last.tzinfo is None:
        raise ValueError("affected_dates needs time-zone-aware datetimes")
    if last < first:
        raise ValueError(f"affected_dates: last {last.isoformat()} is before first {first.isoformat()}")
    d = first.astimezone(CHICAGO).date() - timedelta(days=8)  # a horizon reaches ≤ 7 days ahead
    end = last.astimezone(CHICAGO).date()
    out = []
    while d <= end:
        if d.weekday() in cfg.trade_days:
            start, stop = date_window(d, cfg)
            if start <= last and first <= stop:
                out.append(d)
        d += timedelta(days=1)
    return out


# --- window queries --------------------------------------------------------------------------

_SHIFT = 5
_BLOCK = 1 << _SHIFT
_OFFS = np.arange(_BLOCK, dtype=np.int64)
_NEG = -np.inf  # below every price in ticks: padding and "empty window"
_NOT_FOUND = np.int64(2**62)  # index returned by a first-crossing query that found nothing


class _BlockMax:
    """Maxima of an array over blocks of 32, with a sparse table over the blocks.

    The array holds whole numbers of ticks as float64 (exact up to 2**53, and float64 avoids a
    slow integer conversion of millions of prices); padding is -inf.
    Answers, for many windows at once: the first index in [s, e) whose value is ≥ v, and the
    maximum over [s, e). Each query reads two or three 32-element blocks plus O(log n) table
    cells, so the cost does not grow with the window length.
    """

    def __init__(self, z: np.ndarray) -> None:
        assert len(z) % _BLOCK == 0 and len(z) > 0
        self.z = z
        nb = len(z) >> _SHIFT
        self.nb = nb
        levels = nb.bit_length()  # level k covers 2**k blocks; 2**(levels-1) <= nb
        table = np.empty((levels, nb), dtype=np.float64)
        table[0] = z.reshape(nb, _BLOCK).max(axis=1)
        for k in range(1, levels):
            width = nb - (1 << k) + 1
            half = 1 << (k - 1)
            np.maximum(table[k - 1, :width], table[k - 1, half : half + width], out=table[k, :width])
            table[k, width:] = _NEG  # cells whose span would run past the last block
        self.table = table

    def first_ge(self, s: np.ndarray, e: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Per query, the first index i in [s, e) with z[i] >= v, else _NOT_FOUND."""
        out = np.full(len(s), _NOT_FOUND, dtype=np.int64)
        idx = np.flatnonzero(s < e)
        if not len(idx):
            return out
        z = self.z
        s_, e_, v_ = s[idx], e[idx], v[idx]
        # 1. The 32 elements from s (z ends with a spare block, so s + 31 is always readable).
        pos = s_[:, None] + _OFFS
        hit = (z[pos] >= v_[:, None]) & (pos < e_[:, None])
        got = hit.any(axis=1)
        out[idx[got]] = s_[got] + hit[got].argmax(axis=1)
        rest = np.flatnonzero(~got & (s_ + _BLOCK < e_))
        if not len(rest):
            return out
        idx, e_, v_ = idx[rest], e_[rest], v_[rest]
        # 2. The first block whose maximum reaches v, from the block holding s + 32 (its part
        #    before s + 32 is already known to stay below v) to the block holding e − 1.
        #    Binary lifting: jump while every block jumped over stays below v; levels up to the
        #    longest window suffice.
        j = (s_[rest] + _BLOCK) >> _SHIFT
        last = (e_ - 1) >> _SHIFT
        nb = self.nb
        width = int((last - j).max()) + 1
        for k in range(min(len(self.table), width.bit_length()) - 1, -1, -1):
            step = 1 << k
            move = (j + step <= nb) & (self.table[k, np.minimum(j, nb - 1)] < v_)
            j = j + np.where(move, step, 0)
        cand = np.flatnonzero(j <= last)
        if not len(cand):
            return out
        # 3. The first element of that block reaching v (its maximum does), if before e.
        start = j[cand] << _SHIFT
        pos = start[:, None] + _OFFS
        hit = (z[pos] >= v_[cand, None]) & (pos < e_[cand, None])
        got = hit.any(axis=1)
        out[idx[cand[got]]] = start[got] + hit[got].argmax(axis=1)
        return out

    def range_max(self, s: np.ndarray, e: np.ndarray) -> np.ndarray:
        """Per query, max(z[s:e]); the sentinel _NEG for an empty window."""
        out = np.full(len(s), _NEG, dtype=np.float64)
        idx = np.flatnonzero(s < e)
        if not len(idx):
            return out
        z = self.z
        s_, e_ = s[idx], e[idx]
        # The first 32 and the last 32 elements, and the whole blocks between (which need no
        # masks): together they cover [s, e).
        pos = s_[:, None] + _OFFS
        best = np.where(pos < e_[:, None], z[pos], _NEG).max(axis=1)
        wide = np.flatnonzero(e_ - s_ > _BLOCK)
        if len(wide):
            s_, e_ = s_[wide], e_[wide]
            tail = z[(e_ - _BLOCK)[:, None] + _OFFS].max(axis=1)
            lo, hi = (s_ + _BLOCK - 1) >> _SHIFT, (e_ >> _SHIFT) - 1  # blocks inside [s, e)
            mid = np.flatnonzero(lo <= hi)
            if len(mid):
                lo, hi = lo[mid], hi[mid]
                k = np.frexp((hi - lo + 1).astype(np.float64))[1] - 1  # floor(log2(count))
                blocks = np.maximum(self.table[k, lo], self.table[k, hi - (1 << k) + 1])
                tail[mid] = np.maximum(tail[mid], blocks)
            best[wide] = np.maximum(best[wide], tail)
        out[idx] = best
        return out


# --- the analysis ----------------------------------------------------------------------------


def analyze(
    bars: Bars,
    cfg: StrategyConfig,
    dates: Iterable[date] | None = None,
    progress: Callable[[int, int], None] | None = None,
    batch_dates: int = _DATES_PER_BATCH,
) -> pa.Table:
    """The result rows of the given trade dates (None = all candidate dates), SPEC §4.2–§4.6.

    Returns a table in :data:`RESULT_SCHEMA`, sorted by Date, Time, then Session. Dates whose
    weekday is not a trade day, or with no bars in a range window, yield no rows.
    ``progress(done_dates, total_dates)`` is called after each batch of dates (at most
    ``batch_dates`` of them; smaller batches report more often) and at the end.
    """
    if dates is None:
        days = candidate_dates(bars, cfg)
    else:
        days = sorted({d for d in dates if d.weekday() in cfg.trade_days})
    slots = _slot_order(cfg)
    ticks = _Ticks.of(cfg)
    parts: list[dict[str, np.ndarray]] = []
    total = len(days)
    done = 0
    for batch in _batches(days, batch_dates):
        part = _analyze_batch(bars, cfg, ticks, batch, slots)
        if part is not None:
            parts.append(part)
        done += len(batch)
        if progress is not None and done < total:
            progress(done, total)
    if progress is not None:
        progress(total, total)
    return _to_table(parts, cfg, ticks, slots)


def _batches(days: Sequence[date], size: int = _DATES_PER_BATCH) -> Iterable[Sequence[date]]:
    """Sorted dates in batches of at most ``size`` (at most _DATES_PER_BATCH), cut where dates
    lie far apart, so each batch reads only the bars near its own dates (incremental runs ask
    for scattered ones)."""
    size = max(1, min(size, _DATES_PER_BATCH))
    start = 0
    for i in range(1, len(days) + 1):
        if i == len(days) or i - start == size or (days[i] - days[i - 1]).days > _BATCH_GAP_DAYS:
            yield days[start:i]
            start = i


def _analyze_batch(
    bars: Bars,
    cfg: StrategyConfig,
    ticks: _Ticks,
    days: Sequence[date],
    slots: Sequence[tuple[Session, time]],
) -> dict[str, np.ndarray] | None:
    """Rows for a batch of dates as arrays of ticks and codes (None if no slot has a range)."""
    n_slots = len(slots)
    # Every clock time of the batch: range starts, slot ends and the cutoff on each date, and
    # the slot ends on each date's next trade day (the horizon X).
    nexts = [_next_trade_day(d, cfg.trade_days) for d in days]
    clock_days = sorted(set(days) | set(nexts))
    day_row = {d: i for i, d in enumerate(clock_days)}
    times = sorted({s.range_start for s, _ in slots} | {t for _, t in slots} | {cfg.entry_cutoff})
    col = {t: i for i, t in enumerate(times)}
    wall = _wall_table(clock_days, times)
    on_day = wall[[day_row[d] for d in days]]
    on_next = wall[[day_row[d] for d in nexts]]
    slot_cols = [col[t] for _, t in slots]
    range_start = on_day[:, [col[s.range_start] for s, _ in slots]]
    slot_end = on_day[:, slot_cols]
    horizon = on_next[:, slot_cols]
    cutoff = on_day[:, col[cfg.entry_cutoff]]

    # Window bounds as positions in the whole bar array (completeness needs the global view).
    ts = bars.ts
    n = len(ts)
    g_r0 = np.searchsorted(ts, range_start.ravel(), "left")
    g_r1 = np.searchsorted(ts, slot_end.ravel(), "left")  # also: first bar of the entry window
    g_c1 = np.searchsorted(ts, np.repeat(cutoff, n_slots), "right")  # first bar after the cutoff
    g_x1 = np.searchsorted(ts, horizon.ravel(), "left")  # first bar at or after X
    rows = np.flatnonzero(g_r1 > g_r0)  # no bars in the range window → no range → no row
    if not len(rows):
        return None
    g_r0, g_r1, g_c1, g_x1 = g_r0[rows], g_r1[rows], g_c1[rows], g_x1[rows]

    # Work on the slice of bars these windows touch, in ticks. z holds highs, then -lows, so a
    # long trade's favourable side is z[0:m] and a short trade's is z[mp:mp+m] (see _exits).
    lo = int(g_r0.min())
    hi = int(max(g_x1.max(), g_c1.max()))
    m = hi - lo
    mp = m + (-m) % _BLOCK
    z = np.empty(2 * mp + _BLOCK, dtype=np.float64)  # + a spare block: see first_ge
    highs, neg_lows = z[:m], z[mp : mp + m]
    np.divide(bars.high[lo:hi], cfg.tick, out=highs)
    np.rint(highs, out=highs)
    np.divide(bars.low[lo:hi], -cfg.tick, out=neg_lows)  # -(low / tick): exact negation
    np.rint(neg_lows, out=neg_lows)
    z[m:mp] = _NEG
    z[mp + m :] = _NEG
    # Opens and closes are needed only at a few bars per trade: converted where they are read.
    opens, closes = bars.open[lo:hi], bars.close[lo:hi]
    table = _BlockMax(z)
    r0, r1, c1, x1 = g_r0 - lo, g_r1 - lo, g_c1 - lo, g_x1 - lo

    # §4.2 range and §4.3 entry.
    range_high = table.range_max(r0, r1).astype(np.int64)
    range_low = -table.range_max(r0 + mp, r1 + mp).astype(np.int64)
    long_level = range_high + 1
    short_level = range_low - 1
    first_long = table.first_ge(r1, c1, long_level)
    first_short = table.first_ge(r1 + mp, c1 + mp, -short_level)
    first_short = np.where(first_short < _NOT_FOUND, first_short - mp, _NOT_FOUND)
    is_long = first_long < first_short
    is_short = first_short < first_long
    double = (first_long == first_short) & (first_long < _NOT_FOUND)

    count = len(rows)
    out = {
        "direction": np.where(is_long, 1, np.where(is_short, 2, 0)),
        "result": np.full(count, _NOTRADE),
        "range_high": range_high,
        "range_low": range_low,
        "peak": np.zeros(count, dtype=np.int64),
        "profit": np.zeros(count, dtype=np.int64),
        "entry_ns": np.zeros(count, dtype=np.int64),
        "exit_ns": np.zeros(count, dtype=np.int64),
        "entry": np.zeros(count, dtype=np.int64),
        "exit": np.zeros(count, dtype=np.int64),
        "stop": np.zeros(count, dtype=np.int64),
        "target": np.zeros(count, dtype=np.int64),
        # A NoTrade without a breakout is provisional until the data holds a bar at or after
        # the slot end (range window) and a bar later than the cutoff (entry window).
        "final": double | ((g_r1 < n) & (g_c1 < n)),
    }

    trades = np.flatnonzero(is_long | is_short)
    if len(trades):
        t_long = is_long[trades]
        entry_idx = np.where(t_long, first_long[trades], first_short[trades])
        ex = _exits(
            table,
            opens,
            closes,
            mp,
            cfg.tick,
            ticks,
            t_long,
            entry_idx,
            x1[trades],
            long_level[trades],
            short_level[trades],
            range_high[trades],
            range_low[trades],
        )
        sign = np.where(t_long, 1, -1)
        out["result"][trades] = ex["result"]
        out["peak"][trades] = ex["peak"]
        out["profit"][trades] = ex["exit"] - ex["entry"]  # in trade direction: exit − entry
        out["entry_ns"][trades] = ts[entry_idx + lo]
        out["exit_ns"][trades] = ts[ex["exit_idx"] + lo]
        for key in ("entry", "exit", "stop", "target"):
            out[key][trades] = sign * ex[key]
        # A trade that is still open (TIME) is final only once the data reaches X.
        out["final"][trades] = (ex["result"] != _TIME) | (g_x1[trades] < n)

    out["day"] = np.array([d.toordinal() - _EPOCH_ORDINAL for d in days], dtype=np.int32)[
        rows // n_slots
    ]
    out["slot"] = rows % n_slots
    return out


def _exits(
    table: _BlockMax,
    opens: np.ndarray,
    closes: np.ndarray,
    mp: int,
    tick: float,
    ticks: _Ticks,
    is_long: np.ndarray,
    entry_idx: np.ndarray,
    x1: np.ndarray,
    long_level: np.ndarray,
    short_level: np.ndarray,
    range_high: np.ndarray,
    range_low: np.ndarray,
) -> dict[str, np.ndarray]:
    """SPEC §4.4 exits and §4.5 Peak for trades, all at once.

    Prices here are "in the trade's direction": a short trade is a long trade on negated prices
    (its high is the negated low, and so on), so each rule below is written once. Bars from
    the entry bar up to X (exclusive; local index x1) are considered.
    """
    sign = np.where(is_long, 1, -1)
    fav = np.where(is_long, 0, mp)  # offset of the favourable side (high) in table.z
    adv = mp - fav  # offset of the adverse side: -(low) in the trade's direction
    entry = np.where(is_long, long_level, -short_level)
    stop0 = np.where(is_long, range_low, -range_high)  # opposite range edge ...
    stop0 = np.maximum(stop0, entry - ticks.stop_cap)  # ... no further than the cap from entry
    target = entry + ticks.target
    be_stop = entry - 1
    end = x1

    def first(offset: np.ndarray, start: np.ndarray, level: np.ndarray) -> np.ndarray:
        found = table.first_ge(start + offset, end + offset, level)
        return np.where(found < _NOT_FOUND, found - offset, _NOT_FOUND)

    hit_target = first(fav, entry_idx, target)  # first bar whose high reaches TP
    hit_be = first(fav, entry_idx, entry + ticks.break_even)  # break-even fires here
    hit_stop0 = first(adv, entry_idx, -stop0)  # first bar whose low touches the initial stop
    # After break-even the stop is entry − 1 tick; in the break-even bar itself the stop is
    # only consulted when the target is reachable there too (rule 2), so search from the next bar.
    after_be = np.where(hit_be < _NOT_FOUND, hit_be + 1, end)
    hit_be_stop = first(adv, after_be, -be_stop)

    # Before break-even the target cannot be reachable (TP lies beyond the break-even level),
    # so the only possible exit is the initial stop: a Loss.
    loss = hit_stop0 < hit_be
    # From the break-even bar on, the first bar that reaches TP or the moved stop decides.
    decisive = np.minimum(hit_target, hit_be_stop)
    timeout = ~loss & (decisive == _NOT_FOUND)
    on_target_bar = ~loss & ~timeout & (hit_target == decisive)

    # Rule 2 in a bar where the target is reachable (the stop is already entry − 1 tick there).
    j = np.where(on_target_bar, decisive, 0)
    bar_open = sign * _to_ticks(opens[j], tick)
    bar_close = sign * _to_ticks(closes[j], tick)
    bar_low = -table.z[j + adv].astype(np.int64)
    opens_at_target = bar_open >= target
    opens_at_stop = ~opens_at_target & (bar_open <= be_stop)
    stop_inside = ~opens_at_target & ~opens_at_stop & (bar_low <= be_stop)
    nearer_target = np.abs(target - bar_close) <= np.abs(bar_close - be_stop)  # tie → target
    wins = on_target_bar & (opens_at_target | (~opens_at_stop & (~stop_inside | nearer_target)))

    result = np.where(loss, _LOSS, np.where(timeout, _TIME, np.where(wins, _WIN, _BE)))
    last = end - 1  # the last bar before X (the data's last bar if it ends earlier)
    exit_idx = np.where(loss, hit_stop0, np.where(timeout, last, decisive))
    exit_price = np.select(
        [result == _WIN, result == _BE, result == _LOSS],
        [target, be_stop, stop0],
        default=sign * _to_ticks(closes[last], tick),
    )

    # Peak: the best favourable excursion from the entry bar up to (not including) the first bar
    # that touches the initial stop, else up to X; it keeps counting after a Win or BE exit.
    peak_end = np.minimum(hit_stop0, end)
    best = table.range_max(entry_idx + fav, peak_end + fav)
    peak = np.where(peak_end > entry_idx, np.maximum(best - entry, 0), 0).astype(np.int64)

    return {
        "result": result,
        "exit_idx": exit_idx,
        "entry": entry,
        "exit": exit_price,
        "stop": stop0,
        "target": target,
        "peak": peak,
    }


def _to_ticks(prices: np.ndarray, tick: float) -> np.ndarray:
    """Prices in integer ticks: round(price / tick), half to even like Python's round."""
    q = prices / tick
    np.rint(q, out=q)
    return q.astype(np.int64)


def _to_table(
    parts: list[dict[str, np.ndarray]],
    cfg: StrategyConfig,
    ticks: _Ticks,
    slots: Sequence[tuple[Session, time]],
) -> pa.Table:
    if not parts:
        return empty_table(RESULT_SCHEMA)
    col = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    notrade = col["result"] == _NOTRADE

    def price(key: str, *, nullable: bool = False) -> pa.Array:
        values = np.round(col[key] * cfg.tick, ticks.decimals)
        return to_arrow(values, pa.float64(), mask=notrade if nullable else None)

    def stamp(key: str) -> pa.Array:
        return to_arrow(col[key] // 1_000_000, _CHICAGO_TS, mask=notrade)

    def text(values: Sequence[str], codes: np.ndarray) -> pa.Array:
        return string_array(list(values)).take(indices(codes))

    def slot_text(values: list[str]) -> pa.Array:
        return text(values, col["slot"])

    count = len(notrade)
    target = round(ticks.target * cfg.tick, ticks.decimals)
    range_ticks = col["range_high"] - col["range_low"]
    arrays = [
        to_arrow(col["day"].astype(np.int32, copy=False), pa.date32()),
        slot_text([t.strftime("%H:%M") for _, t in slots]),
        stamp("entry_ns"),
        stamp("exit_ns"),
        to_arrow(np.full(count, target, dtype=np.float64), pa.float64()),
        price("peak"),
        text(_DIRECTION_NAMES, col["direction"]),
        text(_RESULT_NAMES, col["result"]),
        to_arrow(np.round(range_ticks * cfg.tick, ticks.decimals).astype(np.float64, copy=False), pa.float64()),
        slot_text([cfg.instrument + s.stream_digit for s, _ in slots]),
        text([cfg.instrument], np.zeros(count, dtype=np.int64)),
        slot_text([s.name for s, _ in slots]),
        price("profit"),
        price("range_high"),
        price("range_low"),
        price("entry", nullable=True),
        price("exit", nullable=True),
        price("stop", nullable=True),
        price("target", nullable=True),
        to_arrow(col["final"], pa.bool_()),
    ]
    return pa.Table.from_arrays(arrays, schema=RESULT_SCHEMA)
