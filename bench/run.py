"""Benchmark: the wall time of whole runs, as the operator gets them (``qtsw --run-now --no-ui``).

(a) a run with nothing to do, on a data root holding two years of history for six instruments;
(b) a run that ingests one new day of bars for those six instruments on top of that history.

Each figure is the wall time of the real command (interpreter start included), with the stage
breakdown from the run's audit report, and its ratio to two baselines measured in the same
run: a bare interpreter start (``python -c pass``) and the start cost of a stage process
(``python -c "import pipeline_core.protocol, pandas, pyarrow.parquet"``).
Targets on 2 cores: (a) under 2 s, (b) under 10 s.

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
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "run"
END = date(2025, 11, 26)  # last trade date of the history
INSTRUMENTS = ["ES", "NQ", "YM", "CL", "NG", "GC"]


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}
    e["PYTHONUNBUFFERED"] = "1"
    return e


def timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env=env())
    return time.perf_counter() - t0, out


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
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--years", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}")

    bare = median_time([sys.executable, "-c", "pass"], 7)
    stage_start = median_time([sys.executable, "-c", "import pipeline_core.protocol, pandas, pyarrow.parquet"], 5)
    print(f"baseline: bare interpreter start {bare * 1000:.0f} ms; stage process start "
          f"(pipeline_core + pandas + pyarrow) {stage_start * 1000:.0f} ms")

    history_root = build_history(args.years)

    # (a) nothing to do
    root_a = fresh_copy(history_root, "a_nothing")
    times_a = []
    for _ in range(args.repeat):
        secs, got = timed(qtsw(root_a, "--run-now", "--no-ui"))
        if got.returncode != 0:
            sys.exit(f"(a) failed: {got.stdout}\n{got.stderr}")
        times_a.append(secs)
    a = statistics.median(times_a)
    print(f"(a) nothing to do:   {a:.2f} s wall (median of {args.repeat}; target < 2 s) = "
          f"{a / bare:.1f}x bare start, {a / stage_start:.1f}x a stage start")
    print(f"    {breakdown(last_report(root_a))}")

    # (b) one new day for six instruments
    from pipeline_core.sample import trading_days, write_samples
    from pipeline_core.settings import load_settings

    new_day = next(d for d in trading_days(date(END.year + 1, 12, 31), 400) if d > END)
    times_b = []
    report_b = None
    for i in range(args.repeat):
        root_b = fresh_copy(history_root, f"b_new_day_{i}")
        s = load_settings(root=root_b, env={})
        write_samples(s, days=1, instruments=INSTRUMENTS, seed=11, end=new_day)
        secs, got = timed(qtsw(root_b, "--run-now", "--no-ui"))
        if got.returncode != 0:
            sys.exit(f"(b) failed ({got.returncode}):\n{got.stdout}\n{got.stderr}")
        times_b.append(secs)
        report_b = last_report(root_b)
        shutil.rmtree(root_b) if i < args.repeat - 1 else None
    b = statistics.median(times_b)
    print(f"(b) one new day x {len(INSTRUMENTS)}: {b:.2f} s wall (median of {args.repeat}; target < 10 s) = "
          f"{b / bare:.1f}x bare start, {b / stage_start:.1f}x a stage start")
    assert report_b is not None
    print(f"    {breakdown(report_b)}")


if __name__ == "__main__":
    main()
