"""Benchmark: what stepping back costs an attached console while every core is busy.

An attached console steps back once it shows the engine (:func:`pipeline_core.remote.step_back`:
``console.attached_nice`` and ``console.attached_idle``), so that watching a run never slows it.
The price is paid when the machine has no free core: the console then waits for CPU time to
draw or to take a key. Measured here, on this machine: as many processes spinning at the
engine's priority as there are cores (what a full re-analysis does: one analyzer process per
core), and a process that steps back as a console would, then, ``--rounds`` times, sleeps
(waiting for a key) and does ``--work`` milliseconds of CPU work (handling the key, drawing):
the time from waking to the work done. Three ways: not stepped back (the baseline: a console
that hosts the engine), as by default (a lowered priority) and as an idle task too
(``attached_idle = true``). Printed: the median and the worst, and the ratio of
medians to the baseline's.

    .venv/bin/python bench/stepback.py [--work 20] [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT_DIR))

WAYS = (  # (label, settings overrides; None: not stepped back)
    ("not stepped back (a console hosting the engine)", None),
    ("stepped back as by default (attached_nice 19)",
     {"console.attached_nice": 19, "console.attached_idle": False}),
    ("an idle task too (attached_nice 19, attached_idle true)",
     {"console.attached_nice": 19, "console.attached_idle": True}),
)


def measure_main(root: str, overrides: str, work_ms: float, rounds: int) -> None:
    """The console's part: step back (unless told not to), then wake, work, sleep, ``rounds`` times."""
    how = json.loads(overrides)
    if how is not None:
        from pipeline_core.remote import step_back
        from pipeline_core.settings import load_settings

        step_back(load_settings(root=Path(root), env={}, overrides=how))
    took = []
    for _ in range(rounds):
        time.sleep(0.3)  # waiting for a key
        start = time.perf_counter()
        cpu = time.thread_time()
        while time.thread_time() - cpu < work_ms / 1000:
            pass
        took.append(time.perf_counter() - start)
    print(json.dumps(took), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=float, default=20.0, help="milliseconds of CPU work per wake-up")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}
    results: list[tuple[str, list[float]]] = []
    with tempfile.TemporaryDirectory(prefix="qtsw-bench-stepback-") as work:
        for label, how in WAYS:
            spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
            try:
                time.sleep(0.5)  # the cores busy
                got = subprocess.run([sys.executable, __file__, "measure", work, json.dumps(how), str(args.work),
                                      str(args.rounds)], capture_output=True, text=True, env=env, check=True,
                                     timeout=600)
            finally:
                for s in spinners:
                    s.kill()
                    s.wait()
            results.append((label, json.loads(got.stdout.strip().splitlines()[-1])))
    print(f"{args.work:g} ms of a console's CPU work after each wake-up, while {cores} processes keep "
          f"all {cores} cores busy at the engine's priority; {args.rounds} rounds each")
    base = statistics.median(results[0][1])
    for label, took in results:
        med = statistics.median(took)
        print(f"  {label}: median {med:.3f} s, worst {max(took):.3f} s; ratio {med / base:.1f} (medians)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "measure":
        measure_main(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
    else:
        raise SystemExit(main())
