"""Benchmark: the wall time of whole runs, as the operator gets them (``qtsw --run-now --no-ui``).

(a) a run with nothing to do, on a data root holding two years of history for six instruments;
(b) a run that ingests one new day of bars for those six instruments on top of that history
    (the command starts its warm launcher first thing, before its own imports: the launcher's
    imports, about a quarter of a second, overlap the command's own start);
(c) a stage start: from asking for the stage to its first output line (the merger, in process);
(d) the run of (b) in an engine that is already serving (the scheduler's case: its launcher is
    warm before the run starts), timed in process;
(e) the command of (b), ``qtsw --run-now --no-ui``, on a root whose engine serves (installed as
    a service): the command hands the run to that engine and follows it to its end.

Each figure is measured twice in the same run: with warm starts (stages forked by the warm
launcher, ``engine.warm_start = true``, the default) and plain (each stage a fresh interpreter),
with the ratio plain / warm. The whole-command figures are also given against two baselines
measured in the same run: a bare interpreter start (``python -c pass``) and the start cost of a
stage process (``python -c "import pipeline_core.translator"``: numpy, pyarrow and the stage code).
Targets on 2 cores: (a) under 2 s (warm: under 0.2 s), (b) under 10 s (warm: under 0.8 s),
(c) warm under 30 ms; the run ends with one line per target of issue 13 (warm, plain, the ratio,
met or missed).

The two-year history is built once under ``bench/_work/run/`` (git-ignored) and reused.
``python bench/run.py [--years 2] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "run"
END = date(2025, 11, 26)  # last trade date of the history
INSTRUMENTS = ["ES", "NQ", "YM", "CL", "NG", "GC"]


MODES = (("warm", True), ("plain", False))


def env(warm: bool = True) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}
    e["PYTHONUNBUFFERED"] = "1"
    e["QTSW_ENGINE_WARM_START"] = "true" if warm else "false"
    return e


def timed(argv: list[str], warm: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env=env(warm))
    return time.perf_counter() - t0, out


def ratio(warm: float, plain: float) -> str:
    return f"plain/warm {plain / warm:.1f}x" if warm > 0 else "plain/warm -"


def verdict(value: float, limit: float) -> str:
    return "MET" if value < limit else "MISSED"


def target_line(what: str, warm: float, plain: float, limit: float, unit: str = "s") -> str:
    """One line of the closing summary: warm and plain in this run, their ratio, the target."""
    scale, fmt = (1000, "{:.0f} ms") if unit == "ms" else (1, "{:.2f} s")
    w, p, lim = fmt.format(warm * scale), fmt.format(plain * scale), fmt.format(limit * scale)
    return f"  {what}: warm {w}, plain {p}, {ratio(warm, plain)}; target warm < {lim}: {verdict(warm, limit)}"


async def stage_first_line(root: Path, launcher: object | None) -> tuple[float, float]:
    """(seconds to the stage's first line, seconds to its end) of one merger stage process."""
    from pipeline_core import proc

    first: list[float] = []

    def seen(*_: object) -> None:
        if not first:
            first.append(time.perf_counter())

    argv = proc.python_command("pipeline_core.merger", "--root", str(root), "--run-id", "bench")
    t0 = time.perf_counter()
    out = await proc.run_stage(argv, log_path=WORK / "stage_start.log", timeout=60, grace=5,
                               silence_warning=300, on_output=seen, on_message=seen,
                               launcher=launcher)  # type: ignore[arg-type]
    t1 = time.perf_counter()
    if out.status != "success":
        sys.exit(f"(c) the merger failed: {out.error}")
    return first[0] - t0, t1 - t0


def stage_starts(root: Path, n: int) -> dict[str, tuple[float, float]]:
    import anyio

    from pipeline_core import proc

    async def main() -> dict[str, tuple[float, float]]:
        launcher = proc.WarmLauncher(root=root)
        launcher.start()
        try:
            if not await launcher.wait_ready():
                sys.exit(f"(c) no warm launcher: {launcher.disabled}")
            got = {}
            for name, warm in MODES:
                runs = [await stage_first_line(root, launcher if warm else None) for _ in range(n)]
                got[name] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
            return got
        finally:
            await launcher.aclose()

    return anyio.run(main)


def serving_run(root: Path, warm: bool) -> tuple[float, dict]:
    """One run in an engine that is already serving (its launcher ready): wall time, report."""
    import anyio

    from pipeline_core.engine import Engine
    from pipeline_core.settings import load_settings

    s = load_settings(root=root, env={}, overrides={"engine.warm_start": warm})
    engine = Engine(s)
    out: dict[str, float] = {}

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: engine.serve(schedule=False))
            while engine.launcher is None and warm:
                await anyio.sleep(0.01)
            if engine.launcher is not None and not await engine.launcher.wait_ready():
                sys.exit(f"(d) no warm launcher: {engine.launcher.disabled}")
            await anyio.sleep(0.05)
            t0 = time.perf_counter()
            engine.request_run("manual")
            await anyio.sleep(0)
            while engine.busy:
                await anyio.sleep(0.002)
            out["secs"] = time.perf_counter() - t0
            engine.stop()

    anyio.run(main)
    report = last_report(root)
    if report["status"] != "success":
        sys.exit(f"(d) the run ended {report['status']}: {report.get('error')}")
    return out["secs"], report


def handed_over(root: Path, warm: bool) -> float:
    """``qtsw --run-now --no-ui`` on a root whose engine serves (started, its launcher warmed by
    a handed merger run with nothing to merge): the command's wall time, the run handed over."""
    from pipeline_core.control import Connection, NoEngine, socket_path
    from pipeline_core.settings import load_settings

    s = load_settings(root=root, env={})
    with open(root / "engine.out", "wb") as out:
        # its schedule's first mark about a day away: only the bench's runs happen
        engine = subprocess.Popen(qtsw(root, "--no-ui", "--schedule", _chicago_hhmm(-120)), stdout=out,
                                  stderr=subprocess.STDOUT, env=env(warm))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                Connection(socket_path(s)).close()
                break
            except NoEngine:
                if time.monotonic() > deadline or engine.poll() is not None:
                    sys.exit(f"(e) the engine did not serve: {(root / 'engine.out').read_text()[-2000:]}")
                time.sleep(0.02)
        secs, got = timed(qtsw(root, "--stage", "merger", "--no-ui"), warm)
        if got.returncode != 0:
            sys.exit(f"(e) the warm-up failed ({got.returncode}):\n{got.stdout}\n{got.stderr}")
        secs, got = timed(qtsw(root, "--run-now", "--no-ui"), warm)
        if got.returncode != 0 or "handed to the engine" not in got.stdout:
            sys.exit(f"(e) failed ({got.returncode}):\n{got.stdout}\n{got.stderr}")
        return secs
    finally:
        engine.terminate()
        engine.wait(60)


def _chicago_hhmm(offset_seconds: float) -> str:
    """HH:MM of Chicago time now plus ``offset_seconds``."""
    from pipeline_core import clock

    return (clock.now() + timedelta(seconds=offset_seconds)).strftime("%H:%M")


def qtsw(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "qtsw_tui", "--root", str(root), *args]


def median_time(argv: list[str], n: int) -> float:
    return statistics.median(timed(argv)[0] for _ in range(n))


def build_history(years: int) -> Path:
    from pipeline_core.sample import trading_days

    root = WORK / f"history_{years}y"
    marker = root / "READY"
    if marker.exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    days = len([d for d in trading_days(END, 260 * years + 10) if d.year > END.year - years - 1])
    days = min(days, 252 * years)
    print(f"building {years} years of history ({days} trading days x {len(INSTRUMENTS)} instruments) in {root} …",
          flush=True)
    t0 = time.perf_counter()
    got = subprocess.run(qtsw(root, "sample", "--days", str(days), "--end", END.isoformat(),
                              "--instruments", ",".join(INSTRUMENTS)), capture_output=True, text=True, env=env())
    if got.returncode != 0:
        sys.exit(f"sample failed: {got.stderr}")
    secs, got = timed(qtsw(root, "--run-now", "--no-ui"))
    if got.returncode != 0:
        sys.exit(f"the history run failed ({got.returncode}):\n{got.stdout}\n{got.stderr}")
    print(f"  built in {time.perf_counter() - t0:.1f} s (the initial full run: {secs:.1f} s)", flush=True)
    marker.write_text(json.dumps({"years": years, "days": days, "end": END.isoformat()}))
    return root


def last_report(root: Path) -> dict:
    from pipeline_core import history
    from pipeline_core.settings import load_settings

    s = load_settings(root=root, env={})
    line = history.read_runs(s, limit=1)[-1]
    report = history.find_report(s, line["run_id"])
    assert report is not None
    return report


def breakdown(report: dict) -> str:
    parts = [f"status {report['status']}, engine {report['duration_seconds']:.2f} s"]
    for name, st in report["stages"].items():
        if st["status"] == "skipped":
            parts.append(f"{name} skipped")
            continue
        text = f"{name} {st['duration_seconds']:.2f} s"
        per = st.get("instruments")
        if per:
            text += " (" + ", ".join(
                f"{i} {d.get('duration_seconds') or 0:.2f}" for i, d in sorted(per.items())) + ")"
        parts.append(text)
    return "; ".join(parts)


def fresh_copy(src: Path, name: str) -> Path:
    dest = WORK / name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("qtsw.lock"))
    os.sync()  # the copy's writeback is the set-up's, not charged to the first fsync of the run timed next
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--years", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}")

    bare = median_time([sys.executable, "-c", "pass"], 7)
    stage_start = median_time([sys.executable, "-c", "import pipeline_core.translator"], 5)
    print(f"baseline: bare interpreter start {bare * 1000:.0f} ms; stage process start "
          f"(the translator's imports: numpy, pyarrow, the stage code) {stage_start * 1000:.0f} ms")

    history_root = build_history(args.years)

    # (a) nothing to do
    root_a = fresh_copy(history_root, "a_nothing")
    a: dict[str, float] = {}
    a_engine: dict[str, float] = {}
    for name, warm in MODES:
        times_a = []
        engine_a = []
        for _ in range(args.repeat):
            secs, got = timed(qtsw(root_a, "--run-now", "--no-ui"), warm)
            if got.returncode != 0:
                sys.exit(f"(a) failed: {got.stdout}\n{got.stderr}")
            times_a.append(secs)
            engine_a.append(last_report(root_a)["duration_seconds"])
        a[name] = statistics.median(times_a)
        a_engine[name] = statistics.median(engine_a)
        print(f"(a) nothing to do, {name}: {a[name]:.2f} s wall (median of {args.repeat}; target < 2 s"
              f"{', warm < 0.2 s' if warm else ''}) = {a[name] / bare:.1f}x bare start, "
              f"{a[name] / stage_start:.1f}x a stage start")
        print(f"    {breakdown(last_report(root_a))}")
    print(f"    {ratio(a['warm'], a['plain'])}")

    # (b) one new day for six instruments
    from pipeline_core.sample import trading_days, write_samples
    from pipeline_core.settings import load_settings

    new_day = next(d for d in trading_days(date(END.year + 1, 12, 31), 400) if d > END)

    def with_new_day(name: str) -> Path:
        root = fresh_copy(history_root, name)
        s = load_settings(root=root, env={})
        write_samples(s, days=1, instruments=INSTRUMENTS, seed=11, end=new_day)
        os.sync()
        return root

    def new_day_runs(tag: str, measure: Callable[[Path], float]) -> tuple[list[float], dict]:
        """``measure(root)`` on ``args.repeat`` fresh roots, each with the new day: (the times,
        the last run's report)."""
        times: list[float] = []
        report: dict = {}
        for i in range(args.repeat):
            root = with_new_day(f"{tag}_{i}")
            times.append(measure(root))
            report = last_report(root)
            shutil.rmtree(root)
        return times, report

    def whole_command(root: Path, warm: bool) -> float:
        secs, got = timed(qtsw(root, "--run-now", "--no-ui"), warm)
        if got.returncode != 0:
            sys.exit(f"(b) failed ({got.returncode}):\n{got.stdout}\n{got.stderr}")
        return secs

    b: dict[str, float] = {}
    for name, warm in MODES:
        times_b, report_b = new_day_runs(f"b_new_day_{name}", partial(whole_command, warm=warm))
        b[name] = statistics.median(times_b)
        print(f"(b) one new day x {len(INSTRUMENTS)}, {name}: {b[name]:.2f} s wall (median of {args.repeat}; "
              f"target < 10 s{', warm < 0.8 s' if warm else ''}) = {b[name] / bare:.1f}x bare start, "
              f"{b[name] / stage_start:.1f}x a stage start")
        print(f"    runs {', '.join(f'{t:.2f}' for t in times_b)} s (fastest {min(times_b):.2f} s)")
        print(f"    {breakdown(report_b)}")
    print(f"    {ratio(b['warm'], b['plain'])}")

    # (c) a stage start: asked for -> its first line (the merger on a root with nothing to merge)
    c = stage_starts(root_a, max(5, args.repeat * 3))
    print(f"(c) a stage start, to its first line: warm {c['warm'][0] * 1000:.0f} ms (target < 30 ms), "
          f"plain {c['plain'][0] * 1000:.0f} ms, {ratio(c['warm'][0], c['plain'][0])}; the whole stage: "
          f"warm {c['warm'][1] * 1000:.0f} ms, plain {c['plain'][1] * 1000:.0f} ms, "
          f"{ratio(c['warm'][1], c['plain'][1])}")

    # (d) the run of (b) in an engine already serving (the scheduler's case)
    d: dict[str, float] = {}
    for name, warm in MODES:
        runs = []
        for i in range(args.repeat):
            root_d = with_new_day(f"d_new_day_{name}_{i}")
            runs.append(serving_run(root_d, warm))
            shutil.rmtree(root_d)
        d[name], report_d = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
        print(f"(d) one new day x {len(INSTRUMENTS)} in a serving engine, {name}: {d[name]:.2f} s "
              f"(median of {args.repeat})")
        print(f"    {breakdown(report_d)}")
    print(f"    {ratio(d['warm'], d['plain'])}")

    # (e) the command of (b) on a root whose engine serves (a service): the run is handed over
    e: dict[str, float] = {}
    for name, warm in MODES:
        times_e, report_e = new_day_runs(f"e_new_day_{name}", partial(handed_over, warm=warm))
        e[name] = statistics.median(times_e)
        print(f"(e) one new day x {len(INSTRUMENTS)}, whole command handed to a serving engine, {name}: "
              f"{e[name]:.2f} s wall (median of {args.repeat})")
        print(f"    {breakdown(report_e)}")
    print(f"    {ratio(e['warm'], e['plain'])}")

    print(f"targets (issue 13; medians, warm and plain measured in this run, {os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.1f} at the end):")
    print(target_line(f"one new day x {len(INSTRUMENTS)}, engine serving (d)", d["warm"], d["plain"], 0.8))
    print(target_line(f"one new day x {len(INSTRUMENTS)}, whole command (b)", b["warm"], b["plain"], 0.8))
    print(target_line(f"one new day x {len(INSTRUMENTS)}, whole command, engine serving (e)", e["warm"],
                      e["plain"], 0.8))
    print(target_line("a stage start, to its first line (c)", c["warm"][0], c["plain"][0], 0.030, unit="ms"))
    print(target_line("nothing to do, the engine's run (a)", a_engine["warm"], a_engine["plain"], 0.2))
    print(target_line("nothing to do, whole command (a)", a["warm"], a["plain"], 0.2)
          + f" (the command's own interpreter start and imports: a bare start is {bare:.2f} s)")

if __name__ == "__main__":
    main()
