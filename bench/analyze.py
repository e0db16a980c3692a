"""Analyzer stage benchmark: 20 years of one-minute ES bars in a real bar store, all 7 slots.

Prints, with the reference loop (``tests/reference_strategy.py``) measured in the same run as the
baseline:

* a full analysis including the store load and the output write, in process
  (``runner.analyze_instrument(full=True)``) and as the real stage subprocess
  (``python -m pipeline_core.analyzer --instrument ES --full``);
* the reference loop on a one-year slice, the vectorised analysis on the same slice, and the
  speed ratio per instrument-year;
* the incremental run after one new day of bars (translator upsert + change record first, not
  timed): the analysis work in process, and the subprocess wall time;
* the whole analyzer stage of the engine on 6 instruments x 3 months (``--full``), warm (stages
  forked by the warm launcher) and plain (each a fresh interpreter), with the ratio: in an engine
  already serving (its launcher ready, the scheduler's case) and as the whole command
  ``qtsw --stage analyzer --full --no-ui``. Target: warm >= 5x faster than plain.

The bar store (~7M tick-aligned random-walk bars with Globex hours, from
``pipeline_core.sample.generate_bars``) is written once under ``bench/_work/analyze/`` and reused.

    .venv/bin/python bench/analyze.py [--years 20] [--ref-years 1] [--regenerate] [--only-stage]

Targets on 2 cores: full 20-year analysis <= 3 s including load; >= 200x faster per
instrument-year than the reference loop; one new day <= 0.2 s of analysis work.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path

from pipeline_core import catalog, sample, store
from pipeline_core.analyzer import runner
from pipeline_core.analyzer.strategy import Bars, StrategyConfig, analyze
from pipeline_core.protocol import parse
from pipeline_core.settings import CHICAGO, Settings, load_settings

PROJECT = Path(__file__).resolve().parent.parent
WORK = PROJECT / "bench" / "_work" / "analyze"
LAST_DAY = date(2025, 11, 26)  # the store ends here (a Wednesday; Thursday is Thanksgiving)
NEW_DAY = date(2025, 11, 28)  # the "one new day" of the incremental run
SEED = 20


def reference_module():
    spec = importlib.util.spec_from_file_location(
        "reference_strategy", PROJECT / "tests" / "reference_strategy.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["reference_strategy"] = module
    spec.loader.exec_module(module)
    return module


def bench_settings() -> Settings:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}
    s = load_settings(root=WORK / "root", env=env)
    s.ensure_dirs()
    return s


def trading_days(years: int) -> list[date]:
    first = date(LAST_DAY.year - years, LAST_DAY.month, LAST_DAY.day) + timedelta(days=1)
    days, d = [], first
    while d <= NEW_DAY:
        if sample.is_trading_day(d):
            days.append(d)
        d += timedelta(days=1)
    return days


def ensure_store(settings: Settings, years: int, regenerate: bool) -> None:
    """Write the bar store (all days but NEW_DAY) and keep NEW_DAY's bars aside, once."""
    marker = WORK / "store.json"
    want = {"years": years, "seed": SEED, "last_day": LAST_DAY.isoformat()}
    if not regenerate and marker.exists() and json.loads(marker.read_text()) == want:
        return
    shutil.rmtree(WORK, ignore_errors=True)
    settings.ensure_dirs()
    t = time.perf_counter()
    days = trading_days(years)
    bars = sample.generate_bars("ES", settings.instrument("ES").tick, days, seed=SEED)
    cut = int(bars.column("timestamp").cast("int64").to_numpy().searchsorted(
        sample.session_bounds_ms(NEW_DAY)[0]
    ))
    print(f"generated {bars.num_rows:,} bars for {len(days)} trading days in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    store.upsert_bars(settings, "ES", bars.slice(0, cut))
    import pyarrow.parquet as pq

    pq.write_table(bars.slice(cut), WORK / "new_day.parquet")
    print(f"wrote the bar store ({len(store.store_years(settings, 'ES'))} year files) in "
          f"{time.perf_counter() - t:.1f} s")
    marker.write_text(json.dumps(want))


def reset(settings: Settings) -> None:
    """No analyzer state, no pending changes (both in the catalogue), no run output."""
    shutil.rmtree(settings.analyzer_temp_dir, ignore_errors=True)
    settings.ensure_dirs()
    with catalog.open_catalog(settings).tx() as c:
        c.execute("DELETE FROM analyzer")
        c.execute("DELETE FROM changes")


def save_catalog(settings: Settings, dest: Path) -> None:
    """A copy of the catalogue (its records and the analyzer state), by SQLite's backup."""
    dest.unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(dest)) as copy:
        catalog.open_catalog(settings).conn.backup(copy)


def restore_catalog(settings: Settings, src: Path) -> None:
    """The catalogue as :func:`save_catalog` left it."""
    with contextlib.closing(sqlite3.connect(src)) as copy:
        copy.backup(catalog.open_catalog(settings).conn)


def stage(settings: Settings, *args: str) -> tuple[float, dict]:
    """Run the analyzer stage subprocess; its wall time and its result counts."""
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline_core.analyzer", "--root", str(settings.root), *args],
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    wall = time.perf_counter() - t
    msgs = [m for m in map(parse, proc.stdout.splitlines()) if m is not None and m.type == "result"]
    if proc.returncode != 0 or not msgs:
        raise SystemExit(f"analyzer stage failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return wall, msgs[-1].body["counts"]


SIX = ["ES", "NQ", "YM", "CL", "NG", "GC"]
SIX_WORK = PROJECT / "bench" / "_work" / "analyze_six"


def qtsw_env(warm: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}
    env["QTSW_ENGINE_WARM_START"] = "true" if warm else "false"
    return env


def six_instrument_root() -> Path:
    """6 instruments x 3 months of bars in a bar store (the translator's work), built once."""
    root = SIX_WORK / "root"
    if (SIX_WORK / "READY").exists():
        return root
    shutil.rmtree(SIX_WORK, ignore_errors=True)
    root.mkdir(parents=True)
    qtsw = [sys.executable, "-m", "qtsw_tui", "--root", str(root)]
    for args in (["sample", "--days", "63", "--end", LAST_DAY.isoformat(), "--instruments", ",".join(SIX)],
                 ["--stage", "translator", "--no-ui"]):
        got = subprocess.run([*qtsw, *args], capture_output=True, text=True, env=qtsw_env(False))
        if got.returncode != 0:
            raise SystemExit(f"building {root} failed: {got.stdout}\n{got.stderr}")
    (SIX_WORK / "READY").write_text("")
    return root


def analyzer_stage_serving(root: Path, warm: bool) -> tuple[float, float]:
    """The analyzer stage (``full``) in an engine already serving: (stage seconds from the
    report, sum of the instruments' in-process analysis seconds)."""
    import anyio

    from pipeline_core import history
    from pipeline_core.engine import Engine

    s = load_settings(root=root, env=qtsw_env(warm))
    engine = Engine(s)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: engine.serve(schedule=False))
            while warm and engine.launcher is None:
                await anyio.sleep(0.01)
            if engine.launcher is not None and not await engine.launcher.wait_ready():
                raise SystemExit(f"no warm launcher: {engine.launcher.disabled}")
            engine.request_run("stage", stages=["analyzer"], full=True)
            await anyio.sleep(0)
            while engine.busy:
                await anyio.sleep(0.002)
            engine.stop()

    anyio.run(main)
    line = history.read_runs(s, limit=1)[-1]
    report = history.find_report(s, line["run_id"])
    st = report["stages"]["analyzer"]
    if st["status"] != "success":
        raise SystemExit(f"the analyzer stage ended {st['status']}: {st.get('error')}")
    work = sum(float((d.get("counts") or {}).get("analysis_seconds") or 0) for d in st["instruments"].values())
    return st["duration_seconds"], work


def analyzer_stage_command(root: Path, warm: bool) -> tuple[float, float]:
    """``qtsw --stage analyzer --full --no-ui``: (wall seconds, the stage's seconds in its report)."""
    from pipeline_core import history

    t = time.perf_counter()
    got = subprocess.run([sys.executable, "-m", "qtsw_tui", "--root", str(root), "--stage", "analyzer",
                          "--full", "--no-ui"], capture_output=True, text=True, env=qtsw_env(warm))
    wall = time.perf_counter() - t
    if got.returncode != 0:
        raise SystemExit(f"the analyzer stage failed ({got.returncode}):\n{got.stdout}\n{got.stderr}")
    s = load_settings(root=root, env={})
    report = history.find_report(s, history.read_runs(s, limit=1)[-1]["run_id"])
    return wall, report["stages"]["analyzer"]["duration_seconds"]


def bench_analyzer_stage(repeat: int = 3) -> None:
    root = six_instrument_root()
    print(f"\nthe whole analyzer stage, {len(SIX)} instruments x 3 months, --full (median of {repeat}):")
    serving: dict[str, tuple[float, float]] = {}
    command: dict[str, tuple[float, float]] = {}
    for name, warm in (("warm", True), ("plain", False)):
        runs = sorted(analyzer_stage_serving(root, warm) for _ in range(repeat))
        serving[name] = runs[len(runs) // 2]
        runs = sorted(analyzer_stage_command(root, warm) for _ in range(repeat))
        command[name] = runs[len(runs) // 2]
    w, p = serving["warm"][0], serving["plain"][0]
    print(f"  in a serving engine: warm {w:.2f} s, plain {p:.2f} s -> plain/warm {p / w:.1f}x (target >= 5x); "
          f"of which analysis in the stages {serving['warm'][1]:.2f} s")
    w, p = command["warm"][0], command["plain"][0]
    print(f"  whole command qtsw --stage analyzer --full --no-ui: warm {w:.2f} s, plain {p:.2f} s -> "
          f"plain/warm {p / w:.1f}x; the stage itself warm {command['warm'][1]:.2f} s, "
          f"plain {command['plain'][1]:.2f} s -> {command['plain'][1] / command['warm'][1]:.1f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--years", type=int, default=20)
    ap.add_argument("--ref-years", type=int, default=1, help="years of bars for the reference loop")
    ap.add_argument("--regenerate", action="store_true", help="rewrite the bar store")
    ap.add_argument("--only-stage", action="store_true",
                    help="only the whole analyzer stage on six instruments, warm and plain")
    args = ap.parse_args(argv)
    if args.only_stage:
        bench_analyzer_stage()
        return 0

    settings = bench_settings()
    ensure_store(settings, args.years, args.regenerate)
    cfg = StrategyConfig.from_settings(settings, "ES")
    print(f"cores: {os.cpu_count()}; store: {settings.processed_dir / 'ES'}")

    # 1. Full analysis, in process: load + analysis + output write (best of 3; the first one
    #    also pays for cold caches).
    runs = []
    for i in range(3):
        reset(settings)
        t = time.perf_counter()
        out = runner.analyze_instrument(settings, "ES", full=True, run_id=f"full-{i}")
        runs.append((time.perf_counter() - t, out))
    total, out = min(runs, key=lambda r: r[0])
    years = args.years
    print(f"\nfull analysis, in process ({out.bars:,} bars, {out.dates:,} dates, {out.rows:,} rows)")
    print(f"  total {total:6.2f} s   = load {out.load_seconds:.2f} + analysis {out.analysis_seconds:.2f}"
          f" + write {out.write_seconds:.2f} + state {total - out.load_seconds - out.analysis_seconds - out.write_seconds:.2f}"
          f"   (first run {runs[0][0]:.2f} s)   target <= 3 s")

    # 2. Full analysis, the real stage subprocess.
    reset(settings)
    wall, counts = stage(settings, "--instrument", "ES", "--full", "--run-id", "full-sub")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import pipeline_core.analyzer.runner"], check=True)
    startup = time.perf_counter() - t
    print(f"full analysis, subprocess: wall {wall:.2f} s (load {counts['load_seconds']:.2f}, "
          f"analysis {counts['analysis_seconds']:.2f}, write {counts['write_seconds']:.2f}; "
          f"interpreter start + imports alone {startup:.2f} s)")

    # 3. The reference loop on a slice, and the vectorised analysis on the same slice.
    start = datetime(LAST_DAY.year - args.ref_years, 1, 1, tzinfo=CHICAGO)
    end = datetime(LAST_DAY.year, 1, 1, tzinfo=CHICAGO)
    table = store.read_bars(settings, "ES", start, end)
    bars = Bars.from_table(table)
    ref = reference_module()
    t = time.perf_counter()
    ref_rows = ref.analyze(table, cfg).num_rows
    ref_s = time.perf_counter() - t
    t = time.perf_counter()
    vec_rows = analyze(bars, cfg).num_rows
    vec_s = time.perf_counter() - t
    per_year_full = out.analysis_seconds / years
    per_year_total = total / years
    print(f"\nreference loop, {args.ref_years} year ({table.num_rows:,} bars): {ref_s:.2f} s, {ref_rows} rows;"
          f" vectorised on the same slice {vec_s * 1000:.1f} ms, {vec_rows} rows -> {ref_s / vec_s:,.0f}x")
    print(f"per instrument-year: reference {ref_s / args.ref_years:.2f} s; full run analysis "
          f"{per_year_full * 1000:.1f} ms -> {ref_s / args.ref_years / per_year_full:,.0f}x; "
          f"incl. load and write {per_year_total * 1000:.1f} ms -> "
          f"{ref_s / args.ref_years / per_year_total:,.0f}x   target >= 200x")

    # 4. One new day: the translator's upsert and change record (not timed), then the analyzer.
    import pyarrow.parquet as pq

    new_day = pq.read_table(WORK / "new_day.parquet")
    year_file = store.store_path(settings, "ES", NEW_DAY.year)
    backup = WORK / "year_backup.parquet"
    shutil.copy2(year_file, backup)
    reset(settings)
    runner.analyze_instrument(settings, "ES", full=True, run_id="base")
    shutil.rmtree(settings.analyzer_temp_dir)
    saved_catalog = WORK / "catalog_backup.sqlite"
    save_catalog(settings, saved_catalog)

    def add_new_day() -> None:
        shutil.copy2(backup, year_file)
        restore_catalog(settings, saved_catalog)
        shutil.rmtree(settings.analyzer_temp_dir, ignore_errors=True)
        changed = store.upsert_bars(settings, "ES", new_day)
        catalog.open_catalog(settings).record_changes("ES", *changed)

    try:
        incs = []
        for i in range(5):
            add_new_day()
            t = time.perf_counter()
            inc = runner.analyze_instrument(settings, "ES", run_id=f"inc-{i}")
            incs.append((time.perf_counter() - t, inc))
        inc_s, inc = min(incs, key=lambda r: r[0])
        print(f"\none new day, in process: {inc_s * 1000:.0f} ms ({inc.dates} dates, {inc.bars:,} bars read, "
              f"{inc.rows} rows) = load {inc.load_seconds * 1000:.0f} + analysis "
              f"{inc.analysis_seconds * 1000:.0f} + write {inc.write_seconds * 1000:.0f} ms + state"
              f"   target <= 200 ms")
        add_new_day()
        wall, counts = stage(settings, "--instrument", "ES", "--run-id", "inc-sub")
        print(f"one new day, subprocess: wall {wall:.2f} s (of which interpreter start + imports "
              f"~{startup:.2f} s; dates {counts['dates']}, rows {counts['rows']})")
    finally:
        shutil.copy2(backup, year_file)
        restore_catalog(settings, saved_catalog)
        reset(settings)
    bench_analyzer_stage()
    return 0


if __name__ == "__main__":
    sys.exit(main())
