"""Translator benchmark: a 20-year one-minute ES export (~7 million rows, ~380 MB).

Prints, for the same file in the same run:

* the Translator stage (``python -m pipeline_core.translator`` as a subprocess, as the engine
  runs it, on a fresh data root): MB/s, rows/s, peak memory (the child's max RSS);
* the floor: a bare ``pyarrow.csv.read_csv(path)`` of the file (parse only, nothing written);
* the hand-written baseline: pandas ``read_csv`` → timestamp from Date+Time → ``to_parquet``;

and the ratios against both. Each is run ``--repeat`` times, the best run counts (other
processes on the machine only ever slow a run down). Every figure is end to end, wall clock,
including the interpreter's start-up; the work time measured inside each process is shown too.

    .venv/bin/python bench/translate.py [--years 20] [--repeat 3]

The export is generated once and cached in ``bench/_work/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
PROJECT = HERE.parent
NAME = "DataExport_ES_20251129_023000_UTC.csv"

FLOOR = """
import sys, time
t0 = time.perf_counter()
import pyarrow.csv as pacsv
t = pacsv.read_csv(sys.argv[1])
print(t.num_rows, time.perf_counter() - t0)
"""

PANDAS = """
import sys, time
t0 = time.perf_counter()
import pandas as pd
df = pd.read_csv(sys.argv[1])
df["timestamp"] = pd.to_datetime(
    df["Date"] + " " + df["Time"], format="%Y-%m-%d %H:%M:%S", utc=True
).dt.tz_convert("America/Chicago")
df = df.drop(columns=["Date", "Time"])
df.to_parquet(sys.argv[2], index=False)
print(len(df), time.perf_counter() - t0)
"""


def export_file(years: int) -> Path:
    """The cached export of ``years`` years of ES one-minute bars (generated on first use).

    Generated in a child process: the benchmark's own process must stay small, because a
    child's peak RSS (as ``wait4`` reports it) starts from its parent's size at the fork.
    """
    path = WORK / f"es_{years}y" / NAME
    if not path.exists():
        subprocess.run([sys.executable, __file__, "--generate", "--years", str(years)], check=True, cwd=PROJECT)
    return path


def generate(years: int) -> None:
    folder = WORK / f"es_{years}y"
    path = folder / NAME
    sys.path.insert(0, str(PROJECT))
    from pipeline_core import sample

    print(f"generating {years} years of ES one-minute bars (once; cached in {folder}) …", flush=True)
    t0 = time.perf_counter()
    days = sample.trading_days(date(2025, 11, 28), 252 * years)
    bars = sample.generate_bars("ES", 0.25, days, seed=7)
    folder.mkdir(parents=True, exist_ok=True)
    sample.write_bars_csv(path, bars, "exporter", instrument="ES")
    print(f"  {bars.num_rows:,} rows, {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s")


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str, int, float]:
    """Run a process; returns (wall seconds, peak RSS bytes, stdout, exit code, CPU seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=PROJECT,
    )
    out, err = b"", b""
    # read the pipes fully, then reap the child with wait4 for its own resource usage
    out = proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(err.decode(errors="replace"))
    cpu = usage.ru_utime + usage.ru_stime
    return wall, usage.ru_maxrss * 1024, out.decode(errors="replace"), proc.returncode, cpu


def translator_run(src: Path, n: int) -> dict:
    root = WORK / f"root_{n}"
    shutil.rmtree(root, ignore_errors=True)
    raw = root / "data" / "raw"
    raw.mkdir(parents=True)
    os.link(src, raw / src.name)  # the stage archives (moves) its input: give it a link
    old = time.time() - 3600
    os.utime(raw / src.name, (old, old))
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, "-m", "pipeline_core.translator", "--root", str(root), "--run-id", f"bench-{n}"]
    wall, rss, out, rc, cpu = run_child(cmd, env)
    result, metric = {}, {}
    sys.path.insert(0, str(PROJECT))
    from pipeline_core import protocol

    for line in out.splitlines():
        m = protocol.parse(line)
        if m and m.type == "result":
            result = m.body
        elif m and m.type == "metric":
            metric = m.body.get("data", {})
    store_bytes = sum(p.stat().st_size for p in (root / "data" / "processed").rglob("*.parquet"))
    shutil.rmtree(root, ignore_errors=True)
    if rc != 0 or result.get("status") != "success":
        raise SystemExit(f"translator failed (exit {rc}): {result}")
    return {
        "wall": wall,
        "cpu": cpu,
        "rss": rss,
        "rows": result["counts"]["rows_kept"],
        "inner": metric.get("seconds", float("nan")),
        "store_mb": store_bytes / 1e6,
    }


def script_run(code: str, *args: str) -> dict:
    wall, rss, out, rc, cpu = run_child([sys.executable, "-c", code, *args])
    if rc != 0:
        raise SystemExit(f"baseline failed (exit {rc})")
    rows, inner = out.split()
    return {"wall": wall, "cpu": cpu, "rss": rss, "rows": int(rows), "inner": float(inner)}


def best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["wall"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--years", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    ap.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate:
        generate(args.years)
        return 0
    src = export_file(args.years)
    size = src.stat().st_size
    mb = size / 1e6
    with open(src, "rb") as fh:  # warm the page cache so every run reads from memory
        while fh.read(1 << 20):
            pass
    print(f"file: {src.name}, {mb:.0f} MB; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
    tr, floor, pandas = [], [], []
    out_parquet = WORK / "pandas_out.parquet"
    for i in range(args.repeat):
        tr.append(translator_run(src, i))
        floor.append(script_run(FLOOR, str(src)))
        pandas.append(script_run(PANDAS, str(src), str(out_parquet)))
        print(
            f"  run {i + 1}: translator {tr[-1]['wall']:.2f} s, pyarrow parse {floor[-1]['wall']:.2f} s, "
            f"pandas {pandas[-1]['wall']:.2f} s",
            flush=True,
        )
    out_parquet.unlink(missing_ok=True)
    t, f, p = best(tr), best(floor), best(pandas)
    assert t["rows"] == f["rows"] == p["rows"], (t["rows"], f["rows"], p["rows"])
    rows = t["rows"]
    print()
    print(f"{'':28} {'wall s':>8} {'MB/s':>8} {'rows/s':>12} {'peak RSS':>10} {'in-process s':>13} {'CPU s':>7}")
    for label, r in (
        ("translator (stage)", t),
        ("pyarrow read_csv (floor)", f),
        ("pandas read_csv+to_parquet", p),
    ):
        print(
            f"{label:28} {r['wall']:8.2f} {mb / r['wall']:8.0f} {rows / r['wall']:12,.0f} "
            f"{r['rss'] / 1e6:8.0f} MB {r['inner']:13.2f} {r['cpu']:7.2f}"
        )
    vs_pandas = p["wall"] / t["wall"]
    vs_floor = f["wall"] / t["wall"]
    print()
    print(f"rows: {rows:,}; store written: {t['store_mb']:.0f} MB of Parquet")
    print(f"translator vs pandas: {vs_pandas:.2f}x faster   (target >= 3x)")
    print(f"translator vs floor:  {vs_floor:.0%} of the bare parse's speed   (target >= 35%)")
    print(f"translator peak memory: {t['rss'] / 1e6:.0f} MB   (target < 700 MB)")
    print(
        f"CPU time (user+sys; insensitive to other load): pandas / translator "
        f"{p['cpu'] / t['cpu']:.2f}, floor / translator {f['cpu'] / t['cpu']:.2f}"
    )
    if os.getloadavg()[0] > 1.0:
        print(f"note: load average {os.getloadavg()[0]:.2f} from other processes; wall times are inflated")
    ok = vs_pandas >= 3 and vs_floor >= 0.35 and t["rss"] < 700e6
    print("targets met" if ok else "TARGETS NOT MET")
    if args.json:
        print(
            json.dumps(
                {
                    "mb": mb,
                    "rows": rows,
                    "translator": t,
                    "floor": f,
                    "pandas": p,
                    "vs_pandas": vs_pandas,
                    "vs_floor": vs_floor,
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
