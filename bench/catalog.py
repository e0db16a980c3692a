"""Benchmark: what the catalogue (``data/catalog.sqlite``: records, intents, hashes, checks)
costs the stages. Target: under 5 % of (a) a run that ingests one new day for six instruments on
two years of history and (b) the translation of a 20-year export.

Every stage reports ``catalog_seconds``: the time its process spent in the catalogue, hashing
included. The ratio is that time against the stage processes' own durations measured in the
same run (and, for (a), against the run's wall time too).

``python bench/catalog.py [--years 2] [--translate-years 20] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import run as runbench  # noqa: E402  (bench/run.py: the shared two-year history)
import translate as translatebench  # noqa: E402  (bench/translate.py: the cached 20-year export)


def stage_costs(report: dict) -> tuple[float, float]:
    """(catalogue seconds, stage process seconds) summed over the run's stage processes."""
    cat = work = 0.0
    for st in report["stages"].values():
        if st["status"] == "skipped":
            continue
        per = st.get("instruments")
        if per:
            for d in per.values():
                work += d.get("duration_seconds") or 0.0
                cat += (d.get("counts") or {}).get("catalog_seconds", 0.0)
        else:
            work += st.get("duration_seconds") or 0.0
            cat += (st.get("counts") or {}).get("catalog_seconds", 0.0)
    return cat, work


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--years", type=int, default=2)
    ap.add_argument("--translate-years", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    runbench.WORK.mkdir(parents=True, exist_ok=True)
    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}")

    from pipeline_core.sample import trading_days, write_samples
    from pipeline_core.settings import load_settings

    history = runbench.build_history(args.years)
    new_day = next(d for d in trading_days(date(runbench.END.year + 1, 12, 31), 400) if d > runbench.END)
    shares, wall_shares = [], []
    for i in range(args.repeat):
        root = runbench.fresh_copy(history, f"catalog_new_day_{i}")
        write_samples(load_settings(root=root, env={}), days=1, instruments=runbench.INSTRUMENTS,
                      seed=11, end=new_day)
        os.sync()  # the set-up's writes are not the run's
        secs, got = runbench.timed(runbench.qtsw(root, "--run-now", "--no-ui"))
        if got.returncode != 0:
            sys.exit(f"(a) failed ({got.returncode}):\n{got.stdout}\n{got.stderr}")
        cat, work = stage_costs(runbench.last_report(root))
        shares.append(cat / work)
        wall_shares.append(cat / secs)
        print(f"(a) run {i + 1}: {secs:.2f} s wall; stage processes {work:.2f} s, of which the "
              f"catalogue {cat * 1000:.0f} ms = {cat / work:.1%} (of the wall time {cat / secs:.1%})")
        shutil.rmtree(root)
    print(f"(a) one new day x {len(runbench.INSTRUMENTS)}: catalogue share median "
          f"{statistics.median(shares):.1%} of the stage processes, {statistics.median(wall_shares):.1%} "
          "of the run's wall time (target < 5 %)")

    export = translatebench.export_file(args.translate_years)
    shares = []
    for i in range(args.repeat):
        root = runbench.WORK / f"catalog_translate_{i}"
        shutil.rmtree(root, ignore_errors=True)
        s = load_settings(root=root, env={})
        s.ensure_dirs()
        shutil.copy(export, s.raw_dir / export.name)
        os.utime(s.raw_dir / export.name, (0, 0))  # long stable: ready at once
        secs, got = runbench.timed(runbench.qtsw(root, "--stage", "translator", "--no-ui"))
        if got.returncode != 0:
            sys.exit(f"(b) failed ({got.returncode}):\n{got.stdout}\n{got.stderr}")
        cat, work = stage_costs(runbench.last_report(root))
        shares.append(cat / work)
        print(f"(b) run {i + 1}: translator {work:.2f} s for {export.stat().st_size / 1e6:.0f} MB, "
              f"of which the catalogue {cat * 1000:.0f} ms = {cat / work:.1%}")
        shutil.rmtree(root)
    print(f"(b) {args.translate_years}-year translation: catalogue share median "
          f"{statistics.median(shares):.1%} (target < 5 %)")


if __name__ == "__main__":
    main()
