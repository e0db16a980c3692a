"""``qtsw`` end to end with the real stages, on sample data in fresh data roots."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipeline_core import history
from pipeline_core.events import TERMINAL, read_events, run_event_path
from pipeline_core.lock import lock_holder
from pipeline_core.proc import RUN_ID_VAR, processes_with_env
from pipeline_core.results import monthly_files
from pipeline_core.settings import Settings, load_settings

END = "2025-11-26"  # a fixed last trade date: every root gets the same sample bars


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def qtsw(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qtsw_tui", *args], capture_output=True, text=True,
                          env=clean_env(), timeout=timeout)


def settings_for(root: Path) -> Settings:
    return load_settings(root=root, env={})


def sample(root: Path, days: int = 4, *extra: str) -> None:
    got = qtsw("--root", str(root), "sample", "--days", str(days), "--end", END, *extra)
    assert got.returncode == 0, got.stderr


def store_tables(s: Settings) -> dict[str, object]:
    return {str(p.relative_to(s.processed_dir)): pq.read_table(p) for p in sorted(s.processed_dir.rglob("*.parquet"))}


def monthly_tables(s: Settings) -> dict[str, object]:
    out = {}
    for files in monthly_files(s).values():
        for p in files:
            t = pq.read_table(p)
            out[str(p.relative_to(s.analyzer_runs_dir))] = t.sort_by(
                [("Date", "ascending"), ("Time", "ascending"), ("Session", "ascending")])
    return out


def test_run_now_end_to_end_then_nothing_to_do(tmp_path: Path) -> None:
    root = tmp_path / "root"
    sample(root)
    s = settings_for(root)
    assert len(list(s.raw_dir.glob("*.csv"))) == 6

    got = qtsw("--root", str(root), "--run-now", "--no-ui")
    assert got.returncode == 0, got.stdout + got.stderr
    [line] = history.read_runs(s)
    assert line["status"] == "success"
    assert line["stages"] == {"translator": "success", "analyzer": "success", "merger": "success"}
    assert f"run {line['run_id'][:8]} success" in got.stdout
    streams = monthly_files(s)
    assert {"ES1", "ES2", "NQ1", "GC2"} <= set(streams) and all(streams.values())
    report = history.find_report(s, line["run_id"])
    assert report["stages"]["analyzer"]["counts"]["instruments"] == 6
    assert set(report["stages"]["analyzer"]["instruments"]) == {"ES", "NQ", "YM", "CL", "NG", "GC"}
    events, bad = read_events(run_event_path(s.events_dir, line["run_id"]))
    assert bad == [] and events[0].event == "start" and events[-1].event == "success"
    assert [e.stage for e in events if e.event in TERMINAL] == ["translator", "analyzer", "merger", "pipeline"]
    assert list(s.raw_dir.glob("*.csv")) == []  # archived after translation
    assert set(history.run_logs(s, line["run_id"])) >= {"translator", "analyzer-ES", "merger"}

    # Run again at once: nothing to do. Its speed is measured in bench/run.py; here, the reason
    # it is fast: every stage skipped with its reason, and no stage process started at all.
    again = qtsw("--root", str(root), "--run-now", "--no-ui", "--json")
    assert again.returncode == 0, again.stderr
    events = [json.loads(x) for x in again.stdout.splitlines()]
    assert history.run_logs(s, events[-1]["run_id"]) == {}
    skipped = {e["stage"]: e["data"]["reason"] for e in events if e["event"] == "skipped"}
    assert set(skipped) == {"translator", "analyzer", "merger"} and all(skipped.values())
    assert events[-1]["stage"] == "pipeline" and events[-1]["event"] == "success"

    status = qtsw("--root", str(root), "status", "--json")
    st = json.loads(status.stdout)
    assert st["lock"] is None and len(st["runs"]) == 2 and st["pending"]["merges"] == []
    assert sum(st["monthly"].values()) == sum(len(v) for v in streams.values())
    text = qtsw("--root", str(root), "status").stdout
    assert "not running" in text and line["run_id"][:8] in text


def headless_run(root: Path) -> subprocess.Popen[str]:
    """``qtsw --run-now --no-ui --json`` started in the background, its events on stdout."""
    return subprocess.Popen(
        [sys.executable, "-m", "qtsw_tui", "--root", str(root), "--run-now", "--no-ui", "--json"],
        stdout=subprocess.PIPE, text=True, env=clean_env(),
    )


def read_until(eng: subprocess.Popen[str], stop: Callable[[dict[str, Any]], bool]) -> str:
    """Read the engine's events up to the first one ``stop`` accepts; returns the run id."""
    assert eng.stdout is not None
    for raw in eng.stdout:
        ev = json.loads(raw)
        if stop(ev):
            return str(ev["run_id"])
    raise AssertionError("the engine ended before the awaited event")


def test_engine_killed_mid_run_loses_and_doubles_nothing(tmp_path: Path) -> None:
    ref, root = tmp_path / "reference", tmp_path / "root"
    # three instruments on two workers: at the kill two analyses run and one waits
    sample(ref, 6, "--instruments", "ES,NQ,GC")
    sample(root, 6, "--instruments", "ES,NQ,GC")
    assert qtsw("--root", str(ref), "--run-now", "--no-ui").returncode == 0

    eng = headless_run(root)
    try:
        # the analyzer's processes are running: kill the engine now
        run_id = read_until(eng, lambda ev: ev["stage"] == "analyzer" and ev["event"] == "log"
                            and ev["data"].get("phase") == "start")
        eng.send_signal(signal.SIGKILL)
        eng.wait(10)
    finally:
        if eng.poll() is None:
            eng.kill()
            eng.wait()
    s = settings_for(root)
    assert history.read_runs(s) == []  # the dead engine recorded nothing

    got = qtsw("--root", str(root), "--run-now", "--no-ui")
    assert got.returncode == 0, got.stdout + got.stderr
    runs = history.read_runs(s)
    assert [r["run_id"] for r in runs][0] == run_id and len(runs) == 2
    assert runs[0]["status"] == "failure" and runs[1]["status"] == "success"
    events, _ = read_events(run_event_path(s.events_dir, run_id))
    assert events[-1].msg == "engine stopped during run" and events[-1].event == "failure"
    assert processes_with_env(RUN_ID_VAR, run_id) == []

    ref_s = settings_for(ref)
    assert store_tables(s).keys() == store_tables(ref_s).keys()
    for name, table in store_tables(ref_s).items():
        assert store_tables(s)[name].equals(table), name
    mine, theirs = monthly_tables(s), monthly_tables(ref_s)
    assert mine.keys() == theirs.keys() and mine
    for name in theirs:
        assert mine[name].num_rows == theirs[name].num_rows, name
        assert mine[name].equals(theirs[name]), name
    assert list(s.analyzer_temp_dir.iterdir()) == []


def test_sigterm_cancels_a_headless_run(tmp_path: Path) -> None:
    root = tmp_path / "root"
    sample(root, 40)
    eng = headless_run(root)
    try:
        run_id = read_until(eng, lambda ev: ev["stage"] == "translator" and ev["event"] == "start")
        eng.send_signal(signal.SIGTERM)
        rest = eng.stdout.read()
        eng.wait(60)
    finally:
        if eng.poll() is None:
            eng.kill()
            eng.wait()
    assert eng.returncode == 3, rest
    s = settings_for(root)
    [line] = history.read_runs(s)
    assert line["run_id"] == run_id and line["status"] == "cancelled"
    assert json.loads(rest.splitlines()[-1])["event"] == "cancelled"
    assert history.find_report(s, run_id)["status"] == "cancelled"
    assert lock_holder(s.lock_file) is None
    assert processes_with_env(RUN_ID_VAR, run_id) == []


def test_partial_and_failure_exit_codes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    sample(root, 3, "--instruments", "ES,NQ")
    assert qtsw("--root", str(root), "--stage", "translator", "--no-ui").returncode == 0
    s = settings_for(root)
    [nq_file] = list((s.processed_dir / "NQ").glob("*.parquet"))
    nq_file.write_bytes(b"not parquet")  # NQ's store is broken: its analysis fails
    got = qtsw("--root", str(root), "--stage", "analyzer", "--no-ui")
    assert got.returncode == 1, got.stdout + got.stderr  # partial: ES analysed, NQ failed
    assert "NQ" in got.stdout and "partial" in got.stdout
    # a partial run reads as partial, not under the word failure
    assert re.search(r"pipeline   partial     Run ended partial", got.stdout), got.stdout
    assert re.search(r"analyzer   partial     analyzer partial", got.stdout), got.stdout
    assert not re.search(r"(pipeline|analyzer)   failure", got.stdout)
    [es_file] = list((s.processed_dir / "ES").glob("*.parquet"))
    es_file.write_bytes(b"not parquet")
    got = qtsw("--root", str(root), "--stage", "analyzer", "--no-ui", "--full")
    assert got.returncode == 2, got.stdout + got.stderr


@pytest.mark.parametrize(
    ("args", "toml", "needle"),
    [
        (["--no-ui", "--run-now"], "[engine]\nworkers = -3\n", "engine.workers"),
        (["--no-ui", "--run-now"], "[timeouts]\ntranslator = 'soon'\n", "timeouts.translator"),
        (["--no-ui", "--schedule", "25:00"], "", "HH:MM"),
        (["--no-ui", "--stage", "sorter"], "", "invalid choice"),
        (["--run-now", "--stage", "merger"], "", "not allowed with"),
    ],
)
def test_could_not_start_exits_4(tmp_path: Path, args: list[str], toml: str, needle: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    if toml:
        (root / "qtsw.toml").write_text(toml)
    got = qtsw("--root", str(root), *args)
    assert got.returncode == 4
    assert needle in got.stderr


def test_console_script_and_module_agree(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "qtsw"
    a = subprocess.run([str(script), "--help"], capture_output=True, text=True, env=clean_env(), timeout=60)
    b = qtsw("--help")
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout and "--no-ui" in a.stdout and "exit codes" in a.stdout


def test_headless_printer_plain_json_and_colour() -> None:
    import io

    from pipeline_core.events import Event
    from pipeline_core.runstate import EventMessage, OutputMessage
    from qtsw_tui.headless import HeadlessPrinter

    ev = Event(run_id="0123456789abcdef", stage="analyzer", event="failure", msg="analyzer partial: NQ",
               data={"status": "partial", "error": "NQ: bad store"}, timestamp="2025-11-02T01:30:00-06:00", seq=7)
    plain = io.StringIO()
    HeadlessPrinter(plain)(EventMessage(ev))
    assert plain.getvalue() == (
        "2025-11-02 01:30:00 CST  01234567  analyzer   partial     analyzer partial: NQ: NQ: bad store\n")
    HeadlessPrinter(plain)(OutputMessage("r", "analyzer", "NQ", "free text"))  # not verbose: not printed
    assert "free text" not in plain.getvalue()
    verbose = io.StringIO()
    HeadlessPrinter(verbose, verbose=True)(OutputMessage("r", "analyzer", "NQ", "free text"))
    assert verbose.getvalue() == "    analyzer-NQ | free text\n"
    raw = io.StringIO()
    HeadlessPrinter(raw, json_mode=True)(EventMessage(ev))
    assert raw.getvalue() == ev.to_line() + "\n"
    coloured = io.StringIO()
    HeadlessPrinter(coloured, color=True)(EventMessage(ev))
    assert "\x1b[" in coloured.getvalue() and "analyzer partial" in coloured.getvalue()


def test_large_imports_pause_the_collector_and_restore_it() -> None:
    import gc

    from qtsw_tui.cli import collector_paused

    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled(), "a collector that was off stays off"
    finally:
        gc.enable()
    with pytest.raises(ImportError), collector_paused():
        import qtsw_tui.no_such_module  # noqa: F401
    assert gc.isenabled()
