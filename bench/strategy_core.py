"""Timing of the pure strategy function on synthetic one-minute ES bars.

Generates tick-aligned random-walk bars with Globex hours (Sunday 17:00 to Friday 16:00 Chicago,
daily break 16:00-17:00), runs ``analyze`` on all of them (all 7 slots), and runs the plain
reference loop (``tests/reference_strategy.py``) on a one-year slice as the baseline, then prints
seconds and the speed ratio per instrument-year. Nothing is written to disk.

    .venv/bin/python bench/strategy_core.py [--years 20] [--ref-years 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time as clock
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np

from pipeline_core.analyzer.strategy import Bars, StrategyConfig, analyze
from pipeline_core.settings import CHICAGO, load_settings

ROOT = Path(__file__).resolve().parent.parent


def _reference():
    spec = importlib.util.spec_from_file_location("reference_strategy", ROOT / "tests" / "reference_strategy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reference_strategy"] = module
    spec.loader.exec_module(module)
    return module


def globex_bars(first: date, years: int, seed: int = 7) -> Bars:
    """One-minute ES bars, Mon-Fri sessions from the previous day's 17:00 to 16:00 Chicago."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    day_minutes = np.arange(23 * 60, dtype=np.int64) * 60_000_000_000
    starts = []
    d = first
    end = date(first.year + years, first.month, first.day)
    while d < end:
        if d.weekday() < 5:
            open_ = datetime.combine(d - timedelta(days=1), time(17), tzinfo=CHICAGO)
            starts.append((open_ - epoch) // timedelta(microseconds=1) * 1000)
        d += timedelta(days=1)
    ts = (np.array(starts, dtype=np.int64)[:, None] + day_minutes).ravel()
    rng = np.random.default_rng(seed)
    n = len(ts)
    steps = rng.choice(np.array([-2, -1, -1, 0, 0, 0, 1, 1, 2]), size=n)
    close = 16_000 + np.cumsum(steps)
    close = close - min(0, close.min()) + 400  # stays positive
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) + rng.integers(0, 3, n)
    low = np.minimum(open_, close) - rng.integers(0, 3, n)
    tick = 0.25
    return Bars(ts, open_ * tick, high * tick, low * tick, close * tick)


def _slice(bars: Bars, years: int) -> Bars:
    end = bars.ts[0] + int(years * 365.25 * 86400e9)
    k = int(np.searchsorted(bars.ts, end))
    return Bars(bars.ts[:k], bars.open[:k], bars.high[:k], bars.low[:k], bars.close[:k])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--years", type=int, default=20)
    ap.add_argument("--ref-years", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    settings = load_settings(root=ROOT / "bench" / "_work", env={})
    cfg = StrategyConfig.from_settings(settings, "ES")
    t0 = clock.perf_counter()
    bars = globex_bars(date(2005, 1, 3), args.years)
    print(f"generated {len(bars):,} bars ({args.years} years) in {clock.perf_counter() - t0:.2f} s")

    best = float("inf")
    for _ in range(args.repeat):
        t0 = clock.perf_counter()
        table = analyze(bars, cfg)
        best = min(best, clock.perf_counter() - t0)
    print(f"analyze, {args.years} years, all slots: {best:.3f} s (best of {args.repeat}), {table.num_rows:,} rows")

    one = _slice(bars, args.ref_years)
    t0 = clock.perf_counter()
    fast_one = analyze(one, cfg)
    fast_one_s = clock.perf_counter() - t0
    ref = _reference()
    t0 = clock.perf_counter()
    ref_table = ref.analyze(one, cfg)
    ref_s = clock.perf_counter() - t0
    same = ref_table.equals(fast_one)
    print(f"reference loop, {args.ref_years} year(s): {ref_s:.2f} s ({ref_table.num_rows:,} rows, identical: {same})")
    per_year_fast = best / args.years
    per_year_ref = ref_s / args.ref_years
    print(f"per instrument-year: analyze {per_year_fast * 1000:.1f} ms, reference {per_year_ref * 1000:.0f} ms")
    print(f"speed-up per instrument-year: {per_year_ref / per_year_fast:.0f}x")
    print(f"(analyze on the {args.ref_years}-year slice alone: {fast_one_s:.3f} s)")


if __name__ == "__main__":
    main()
