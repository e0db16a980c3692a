"""Timing of the pure strategy function on synthetic one-minute ES bars.

Generates tick-aligned random-walk bars with Globex hours (Sunday 17:00 to Friday 16:00 Chicago,
daily break 16:00-17:00), runs ``analyze`` on all of them (all 7 slots), and runs the plain
reference loop (``tests/reference_strategy.py``) on a one-year slice as the baseline, then prints
seconds and the speed ratio per instrument-year. Nothing is written to disk. Both wall time and
CPU time of this process are printed: on a shared machine the CPU time is the steadier figure.

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


def _timed(fn, repeat: int):
    """Best wall and CPU seconds of ``repeat`` calls, and the last result."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        w, c = clock.perf_counter(), clock.process_time()
        result = fn()
        wall = min(wall, clock.perf_counter() - w)
        cpu = min(cpu, clock.process_time() - c)
    return wall, cpu, result


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

    wall, cpu, table = _timed(lambda: analyze(bars, cfg), args.repeat)
    print(f"analyze, {args.years} years, all slots: wall {wall:.3f} s, cpu {cpu:.3f} s "
          f"(best of {args.repeat}), {table.num_rows:,} rows")

    one = _slice(bars, args.ref_years)
    one_wall, one_cpu, fast_one = _timed(lambda: analyze(one, cfg), args.repeat)
    ref = _reference()
    ref_wall, ref_cpu, ref_table = _timed(lambda: ref.analyze(one, cfg), 1)
    same = ref_table.equals(fast_one)
    print(f"reference loop, {args.ref_years} year(s): wall {ref_wall:.2f} s, cpu {ref_cpu:.2f} s "
          f"({ref_table.num_rows:,} rows, identical to analyze: {same})")
    print(f"analyze on the same {args.ref_years}-year slice: wall {one_wall * 1000:.1f} ms, "
          f"cpu {one_cpu * 1000:.1f} ms -> {ref_cpu / one_cpu:.0f}x (cpu)")
    per_year = cpu / args.years
    per_year_ref = ref_cpu / args.ref_years
    print(f"per instrument-year (cpu): analyze {per_year * 1000:.1f} ms over {args.years} years, "
          f"reference {per_year_ref * 1000:.0f} ms -> {per_year_ref / per_year:.0f}x   (target >= 200x)")


if __name__ == "__main__":
    main()
