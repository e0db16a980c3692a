"""Benchmark: the results screen on 20 years × 12 streams. Target: figures on screen within
300 ms of opening it.

The monthly files (ES, NQ, YM, CL, NG, GC × S1/S2; every weekday of 20 years; every slot a
row with all result columns; 2,880 files) are written once under ``bench/_work/results/`` and
reused. The console (the real App with a fixed clock, headless, 160×48) opens the results
screen with ``s``; timed from the key press to the *first paint* showing the matrix and
statistics of the newest month: the frame that a terminal would be sent (headless, Textual
composes the frame and writes nothing). Printed beside it, *harness idle*: until Textual's
test pilot finds the app idle, which adds its own waits (``wait_for_idle`` sleeps in steps of
20 ms until a step passes with no work) and counts the CPU of every thread of the process:

* *cold*: no cache at all (the first open after the files were written, or a cleared cache);
* *cache*: what a fresh start sees: this process remembers nothing, ``data/cache`` holds the
  figures' columns of every file (the file's (mtime, size, inode) unchanged);
* *warm*: a second open in the same console;
* *start*: the first open in a console started a few seconds before with only the disk cache
  (the console reads the results ahead after drawing its first screen: this is what an
  operator who starts ``qtsw`` and presses ``s`` sees).

Baselines measured in the same run: reading the same 2,880 files' result columns with plain
``pyarrow.parquet.read_table`` (one after the other), and ``load_results`` alone per case.

    .venv/bin/python bench/results.py [--years 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from calendar import monthrange
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pipeline_core import results  # noqa: E402
from pipeline_core.analyzer.strategy import RESULT_SCHEMA  # noqa: E402
from pipeline_core.engine import Engine  # noqa: E402
from pipeline_core.settings import CHICAGO, Settings, load_settings  # noqa: E402
from qtsw_tui.app import build_app  # noqa: E402
from qtsw_tui.screens.results import ResultsScreen  # noqa: E402

WORK = HERE / "_work" / "results"
INSTRUMENTS = ("ES", "NQ", "YM", "CL", "NG", "GC")
OUTCOMES = np.array(["Win", "Loss", "BE", "TIME", "NoTrade"])
FIXED_NOW = datetime(2025, 12, 1, 10, 7, 30, tzinfo=CHICAGO)


def write_history(s: Settings, years: int) -> int:
    """Monthly files for ``years`` years up to 2025, every stream; returns the file count."""
    rng = np.random.default_rng(7)
    n = 0
    for inst in INSTRUMENTS:
        spec = s.instrument(inst)
        for sess in s.sessions:
            stream = inst + sess.stream_digit
            slots = [t.strftime("%H:%M") for t in sess.slots]
            for year in range(2026 - years, 2026):
                for month in range(1, 13):
                    days = [date(year, month, d) for d in range(1, monthrange(year, month)[1] + 1)]
                    days = [d for d in days if d.weekday() < 5]
                    k = len(days) * len(slots)
                    outcome = OUTCOMES[rng.choice(5, size=k, p=[0.35, 0.3, 0.15, 0.1, 0.1])]
                    profit = np.select(
                        [outcome == "Win", outcome == "Loss", outcome == "BE", outcome == "TIME"],
                        [spec.target, -spec.target * rng.uniform(0.2, 1.0, k), -spec.tick,
                         spec.target * rng.uniform(-0.5, 0.5, k)], 0.0)
                    price = rng.uniform(100, 5000, k)
                    trade = outcome != "NoTrade"
                    cols = {f.name: pa.nulls(k, f.type) for f in RESULT_SCHEMA}
                    cols.update(
                        Date=pa.array(np.repeat(days, len(slots)), pa.date32()),
                        Time=pa.array(slots * len(days)),
                        Target=pa.array(np.full(k, spec.target)), Peak=pa.array(np.abs(profit)),
                        Direction=pa.array(np.where(trade, "Long", "NA")), Result=pa.array(outcome),
                        Range=pa.array(rng.uniform(1, 20, k)), Stream=pa.array([stream] * k),
                        Instrument=pa.array([inst] * k), Session=pa.array([sess.name] * k),
                        Profit=pa.array(profit), RangeHigh=pa.array(price + 5), RangeLow=pa.array(price - 5),
                        EntryPrice=pa.array(np.where(trade, price, np.nan)),
                        ExitPrice=pa.array(np.where(trade, price + profit, np.nan)),
                        StopPrice=pa.array(np.where(trade, price - 5, np.nan)),
                        TargetPrice=pa.array(np.where(trade, price + spec.target, np.nan)),
                        Final=pa.array(np.ones(k, bool)),
                    )
                    path = results.monthly_path(s, stream, year, month)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    pq.write_table(pa.table(cols, schema=RESULT_SCHEMA), path)
                    n += 1
    return n


def prepare(years: int) -> Settings:
    root = WORK / f"{years}y"
    s = load_settings(root=root, env={})
    marker = root / "complete"
    if not marker.exists():
        s.ensure_dirs()
        t = time.perf_counter()
        n = write_history(s, years)
        marker.write_text(str(n))
        print(f"wrote {n} monthly files in {time.perf_counter() - t:.1f} s (kept under {root})")
    return s


def baseline_pyarrow(s: Settings) -> tuple[float, int]:
    files = [f for fs in results.monthly_files(s).values() for f in fs]
    t = time.perf_counter()
    rows = sum(pq.read_table(f, columns=list(results.STAT_COLUMNS)).num_rows for f in files)
    return time.perf_counter() - t, rows


def load_alone(s: Settings, case: str) -> float:
    if case != "warm":
        results.forget_cache()
    if case == "cold":
        s.results_cache_path.unlink(missing_ok=True)
    t = time.perf_counter()
    results.load_results(s)
    return time.perf_counter() - t


async def open_screen(s: Settings, cases: list[str]) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds from the key press to the figures painted, per case, in one console;
    case ``help`` opens the help screen instead (the cost of opening any screen)."""
    if "start" in cases:
        results.forget_cache()  # a console process just started: only the disk cache
    app = build_app(s, Engine(s, now=lambda: FIXED_NOW), {}, clock=lambda: FIXED_NOW)
    out: dict[str, tuple[float, float, float]] = {}
    painted: list[float] = []
    case = ""
    display = app._display

    def watch_display(screen: object, renderable: object) -> None:
        # the frame a terminal would be sent (headless, Textual renders it and writes nothing)
        display(screen, renderable)
        if renderable is not None and not painted and not app._batch_count and (
            isinstance(screen, ResultsScreen) and screen.view is not None
            or case == "help" and type(screen).__name__ == "HelpScreen"
        ):
            painted.append(time.perf_counter())

    app._display = watch_display  # type: ignore[method-assign]
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(0.5)
        if "start" in cases:
            # the operator presses s a few seconds after the console appeared: by then it has
            # read the results ahead (from the disk cache) in its counters' thread
            deadline = time.monotonic() + 30
            while str(s.root) not in results._built and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        for case in cases:
            if case not in ("warm", "help", "start"):
                results.forget_cache()
            if case == "cold":
                s.results_cache_path.unlink(missing_ok=True)
            painted.clear()
            t, c = time.perf_counter(), time.process_time()
            if case == "help":
                await pilot.press("question_mark")
            else:
                await pilot.press("s")
                while not (isinstance(app.screen, ResultsScreen) and app.screen.view is not None):
                    await asyncio.sleep(0.002)
            await pilot.pause()  # the paint that shows them
            done = time.perf_counter()
            out[case] = ((painted[0] if painted else done) - t, done - t, time.process_time() - c)
            await pilot.press("escape")
            await pilot.pause()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--years", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    s = prepare(args.years)
    files = sum(len(v) for v in results.monthly_files(s).values())
    base, rows = baseline_pyarrow(s)
    print(f"{files} monthly files, {rows:,} rows, 12 streams, {args.years} years")
    print(f"baseline: plain pyarrow reads the result columns of every file: {base * 1000:8.0f} ms")
    loads = {c: [] for c in ("cold", "cache", "warm")}
    for _ in range(args.repeat):
        for case in loads:
            loads[case].append(load_alone(s, case))
    for case, times in loads.items():
        print(f"load_results alone, {case:5s}: {statistics.median(times) * 1000:8.0f} ms (median of {len(times)})")
    cases = ["start", "help", "cold", "cache", "warm"]
    screen: dict[str, list[tuple[float, float, float]]] = {c: [] for c in cases}
    for _ in range(args.repeat):
        for case, v in asyncio.run(open_screen(s, cases)).items():
            screen[case].append(v)

    def med(case: str, i: int) -> float:
        return statistics.median(v[i] for v in screen[case])

    help_paint, help_idle, help_cpu = med("help", 0), med("help", 1), med("help", 2)
    print(f"baseline: the help screen, first paint {help_paint * 1000:5.0f} ms; harness idle "
          f"{help_idle * 1000:5.0f} ms wall, {help_cpu * 1000:5.0f} ms CPU")
    for case in [c for c in cases if c != "help"]:
        paint, idle, cpu = med(case, 0), med(case, 1), med(case, 2)
        verdict = "" if case == "cold" else ("  target < 300 ms: met" if paint < 0.3 else "  target < 300 ms: NOT met")
        print(f"results screen, {case:5s}: first paint {paint * 1000:5.0f} ms; harness idle {idle * 1000:5.0f} ms "
              f"wall, {cpu * 1000:5.0f} ms CPU; first paint = {paint / base:5.2f} x the pyarrow baseline, "
              f"{paint / help_paint:5.2f} x the help screen{verdict}")
    print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs while measuring)")


if __name__ == "__main__":
    main()
