"""A deliberately plain reference implementation of SPEC §4.2–§4.6, for checking the real one.

Written straight from the SPEC text: Python loops over dates, slots and bars, aware datetime
objects, integer ticks. It shares nothing with ``pipeline_core.analyzer.strategy`` but the
configuration dataclass and the output schema, so a disagreement points at a bug in one of them.

``analyze(bars, cfg, dates=None)`` takes a bar-store table (``timestamp`` tz-aware, ``open``,
``high``, ``low``, ``close``) or any object with the arrays ``ts`` (epoch ns), ``open``,
``high``, ``low``, ``close``, and returns a table in ``RESULT_SCHEMA``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pyarrow as pa

from pipeline_core.analyzer.strategy import RESULT_SCHEMA, StrategyConfig
from pipeline_core.settings import CHICAGO


@dataclass
class Bar:
    ts: datetime  # bar open, aware
    open: int  # ticks
    high: int
    low: int
    close: int


def _bars(bars: Any, tick: float) -> list[Bar]:
    def ticks(price: float) -> int:
        return round(price / tick)

    if isinstance(bars, pa.Table):
        times = bars.column("timestamp").to_pylist()
        o, h, lo, c = (bars.column(k).to_pylist() for k in ("open", "high", "low", "close"))
    else:
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        times = [epoch + timedelta(microseconds=int(ns) // 1000) for ns in bars.ts]
        o, h, lo, c = (list(map(float, getattr(bars, k))) for k in ("open", "high", "low", "close"))
    out = [
        Bar(t.astimezone(CHICAGO), ticks(o[i]), ticks(h[i]), ticks(lo[i]), ticks(c[i]))
        for i, t in enumerate(times)
    ]
    out.sort(key=lambda b: b.ts)
    return out


def _next_trade_day(d: date, cfg: StrategyConfig) -> date:
    d = d + timedelta(days=1)
    while d.weekday() not in cfg.trade_days:
        d = d + timedelta(days=1)
    return d


def _price(ticks: int, tick: float) -> float:
    # The exact decimal value of ticks × tick, as the nearest float (50.12, not 50.120000000000005).
    return float(Decimal(ticks) * Decimal(repr(tick)))


def analyze(bars: Any, cfg: StrategyConfig, dates: Iterable[date] | None = None) -> pa.Table:
    """Result rows for the given trade dates (None = every Chicago date with bars)."""
    bar_list = _bars(bars, cfg.tick)
    times = [b.ts for b in bar_list]
    if dates is None:
        dates = {b.ts.date() for b in bar_list}
    dates = sorted(d for d in set(dates) if d.weekday() in cfg.trade_days)
    rows = []
    for d in dates:
        for session in cfg.sessions:
            for slot in session.slots:
                row = _slot_row(bar_list, times, cfg, d, session, slot)
                if row is not None:
                    rows.append(row)
    rows.sort(key=lambda r: (r["Date"], r["Time"], r["Session"]))
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


def _slot_row(bars, times, cfg, d, session, slot) -> dict | None:
    tick = cfg.tick
    T = round(cfg.target / tick)
    be_fraction = Fraction(repr(cfg.break_even_fraction))
    cap = Fraction(repr(cfg.stop_cap_multiple))

    range_start = datetime.combine(d, session.range_start, tzinfo=CHICAGO)
    slot_end = datetime.combine(d, slot, tzinfo=CHICAGO)
    cutoff = datetime.combine(d, cfg.entry_cutoff, tzinfo=CHICAGO)
    horizon = datetime.combine(_next_trade_day(d, cfg), slot, tzinfo=CHICAGO)
    last_bar_time = times[-1] if times else None

    # §4.2 range: bars with start <= ts < slot end.
    range_bars = []
    i = bisect.bisect_left(times, range_start)
    while i < len(bars) and bars[i].ts < slot_end:
        range_bars.append(bars[i])
        i += 1
    if not range_bars:
        return None
    high = max(b.high for b in range_bars)
    low = min(b.low for b in range_bars)

    row = {
        "Date": d,
        "Time": slot.strftime("%H:%M"),
        "EntryTime": None,
        "ExitTime": None,
        "Target": _price(T, tick),
        "Peak": 0.0,
        "Direction": "NA",
        "Result": "NoTrade",
        "Range": _price(high - low, tick),
        "Stream": cfg.instrument + session.name[1:],
        "Instrument": cfg.instrument,
        "Session": session.name,
        "Profit": 0.0,
        "RangeHigh": _price(high, tick),
        "RangeLow": _price(low, tick),
        "EntryPrice": None,
        "ExitPrice": None,
        "StopPrice": None,
        "TargetPrice": None,
        "Final": True,
    }

    # §4.3 entry: bars with slot end <= ts <= cutoff; the earlier side wins, same bar → NoTrade.
    long_level, short_level = high + 1, low - 1
    direction = None
    entry_i = None
    i = bisect.bisect_left(times, slot_end)
    while i < len(bars) and bars[i].ts <= cutoff:
        up = bars[i].high >= long_level
        down = bars[i].low <= short_level
        if up and down:
            return row  # same-bar double breakout: NoTrade, final
        if up or down:
            direction = "Long" if up else "Short"
            entry_i = i
            break
        i += 1
    if direction is None:
        range_complete = last_bar_time is not None and last_bar_time >= slot_end
        entry_complete = last_bar_time is not None and last_bar_time > cutoff
        row["Final"] = range_complete and entry_complete
        return row

    # §4.4 exit, written separately for each direction as the SPEC words it.
    long = direction == "Long"
    entry = long_level if long else short_level
    target = entry + T if long else entry - T
    if long:
        stop0 = low
        if (entry - stop0) > cap * T:
            stop0 = entry - math.floor(cap * T)
    else:
        stop0 = high
        if (stop0 - entry) > cap * T:
            stop0 = entry + math.floor(cap * T)
    stop = stop0
    break_even = False
    outcome = None
    exit_bar = None
    last_in_window = None
    i = entry_i
    while i < len(bars) and bars[i].ts < horizon:
        bar = bars[i]
        last_in_window = bar
        excursion = bar.high - entry if long else entry - bar.low
        fired_here = False
        if not break_even and excursion >= be_fraction * T:
            break_even = True
            fired_here = True
            stop = entry - 1 if long else entry + 1
        target_reachable = bar.high >= target if long else bar.low <= target
        stop_reachable = bar.low <= stop if long else bar.high >= stop
        if target_reachable:
            opens_beyond_target = bar.open >= target if long else bar.open <= target
            opens_beyond_stop = bar.open <= stop if long else bar.open >= stop
            if opens_beyond_target:
                outcome = "target"
            elif opens_beyond_stop:
                outcome = "stop"
            elif stop_reachable:
                to_target = abs(target - bar.close)
                to_stop = abs(bar.close - stop)
                outcome = "target" if to_target <= to_stop else "stop"
            else:
                outcome = "target"
        elif stop_reachable and not fired_here:
            outcome = "stop"
        if outcome is not None:
            exit_bar = bar
            break
        i += 1

    if outcome == "target":
        result, exit_price = "Win", target
    elif outcome == "stop":
        result, exit_price = ("BE" if break_even else "Loss"), stop
    else:
        result, exit_bar = "TIME", last_in_window
        exit_price = exit_bar.close
    if result == "Win":
        profit = T
    elif result == "BE":
        profit = -1
    elif result == "Loss":
        profit = -abs(entry - stop0)
    else:
        profit = exit_price - entry if long else entry - exit_price

    # §4.5 Peak: from the entry bar up to (excluding) the first bar touching the initial stop.
    peak = 0
    i = entry_i
    while i < len(bars) and bars[i].ts < horizon:
        bar = bars[i]
        touches = bar.low <= stop0 if long else bar.high >= stop0
        if touches:
            break
        peak = max(peak, bar.high - entry if long else entry - bar.low)
        i += 1

    row.update(
        {
            "EntryTime": bars[entry_i].ts,
            "ExitTime": exit_bar.ts,
            "Peak": _price(peak, tick),
            "Direction": direction,
            "Result": result,
            "Profit": _price(profit, tick),
            "EntryPrice": _price(entry, tick),
            "ExitPrice": _price(exit_price, tick),
            "StopPrice": _price(stop0, tick),
            "TargetPrice": _price(target, tick),
            # Still open at the end of the data before X: provisional.
            "Final": result != "TIME" or last_bar_time >= horizon,
        }
    )
    return row
