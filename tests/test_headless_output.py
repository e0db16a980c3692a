"""What ``qtsw --no-ui`` prints for a real run: without ``-v`` one line per stage start and end,
per instrument, per problem and per run, each with its figures; the per-file detail is in the
event log and in ``-v``."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

from pipeline_core import history
from pipeline_core.events import read_events, run_event_path
from pipeline_core.runstate import EventMessage
from pipeline_core.settings import load_settings
from qtsw_tui.headless import HeadlessPrinter


def qtsw(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}
    return subprocess.run([sys.executable, "-m", "qtsw_tui", *args], capture_output=True, text=True,
                          env=env, timeout=300, stdin=subprocess.DEVNULL)


def kinds(out: str) -> list[tuple[str, str, str]]:
    """(stage, kind, text) of each event line (date, time, zone, run id, stage, kind, text)."""
    rows = []
    for line in out.splitlines():
        m = re.match(r"\S+ \S+ \S+  \S+  (\S+)\s+(\S+)\s+(.*)$", line)
        if m:
            rows.append((m.group(1), m.group(2), m.group(3)))
    return rows


def test_a_run_without_verbose_prints_stages_instruments_problems_and_the_run(tmp_path: Path) -> None:
    root = tmp_path / "root"
    got = qtsw("--root", str(root), "sample", "--days", "2", "--end", "2025-11-26", "--instruments", "ES,NQ,CL")
    assert got.returncode == 0, got.stderr
    [es] = (root / "data" / "raw").glob("*_ES_*.csv")
    with es.open("a") as fh:
        fh.write("2025-11-25,10:00:00,abc,1,1,1,1,ES\n")  # one malformed row: a problem, not a quarantine
    bad_line = len(es.read_text().splitlines())

    run = qtsw("--root", str(root), "--no-ui", "--run-now")
    assert run.returncode == 0, run.stdout + run.stderr
    rows = kinds(run.stdout)
    assert [k for _, k, _ in rows if k in ("metric", "progress")] == ["metric"]  # only the problem
    [problem] = [t for _, k, t in rows if k == "metric"]
    assert es.name in problem and "bars kept of" in problem and f"dropped 1 non_numeric (first at line {bad_line})" in problem
    assert [(s, k) for s, k, _ in rows if s == "pipeline"] == [("pipeline", "start"), ("pipeline", "success")]
    for stage in ("translator", "analyzer", "merger"):
        assert [k for s, k, _ in rows if s == stage and k in ("start", "success")] == ["start", "success"]
    per_instrument = [t for s, k, t in rows if s == "analyzer" and k == "log"]
    assert sorted(t.split(":")[0] for t in per_instrument) == ["CL", "ES", "NQ"]  # one line each
    for text in per_instrument:
        assert re.search(r"success in [\d.]+ s: full analysis of 3 date\(s\): 14 rows .*\(Win \d+", text), text
    [end] = [t for s, k, t in rows if s == "merger" and k == "success"]
    assert "rows added" in end and "monthly file(s)" in end
    assert len(run.stdout.splitlines()) == len(rows) + 1  # and the run's summary line
    assert "analysis started" not in run.stdout and "merge totals" not in run.stdout

    # the detail was not lost: it is in the event log, and -v prints it
    s = load_settings(root=root, env={})
    [line] = history.read_runs(s)
    events, _ = read_events(run_event_path(s.events_dir, line["run_id"]))
    verbose = io.StringIO()
    printer = HeadlessPrinter(verbose, verbose=True)
    for ev in events:
        printer(EventMessage(ev))
    detail = kinds(verbose.getvalue())
    per_file = [t for st, k, t in detail if st == "translator" and k == "metric"]
    assert len(per_file) == 3 and any("progress" == k for _, k, _ in detail)
    assert any("merge totals" in t for _, _, t in detail)
    assert len(detail) == len(events) > len(rows)
