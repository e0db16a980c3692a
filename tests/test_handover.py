"""``qtsw --run-now --no-ui`` (and ``--stage``) on a data root whose engine is serving: the run is
handed to that engine through its control socket, and the command follows it to its end — real
engine process, real socket, real runs."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from processes import alive, terminate, wait_until
from test_control import clean_env, connect_when_up, start_engine, stop_engine

from pipeline_core import catalog, history, warmstart
from pipeline_core.control import Connection, socket_path
from pipeline_core.lock import EngineLock
from pipeline_core.sample import write_samples
from pipeline_core.settings import Settings, load_settings
from qtsw_tui import cli

END = date(2025, 11, 26)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, subprocess.Popen[str]]]:
    root = tmp_path_factory.mktemp("handover") / "root"
    settings = load_settings(root=root, env={})
    settings.ensure_dirs()
    write_samples(settings, days=20, instruments=["ES", "CL"], end=END)
    proc = start_engine(root)
    try:
        connect_when_up(socket_path(settings), proc).close()
        yield settings, proc
    finally:
        out = stop_engine(proc)
        assert proc.returncode == 0, out


def qtsw(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qtsw_tui", "--root", str(root), *args],
                          capture_output=True, text=True, env=clean_env(), timeout=120)


def idle(settings: Settings) -> None:
    with Connection(socket_path(settings)) as conn:
        wait_until(lambda: conn.snapshot()["current"] is None, "the engine to be idle", 60)


def test_a_run_asked_of_a_served_root_is_run_by_its_engine_and_followed(engine) -> None:
    settings, proc = engine
    idle(settings)
    got = qtsw(settings.root, "--run-now", "--no-ui")
    assert got.returncode == 0, got.stdout + got.stderr
    lines = got.stdout.splitlines()
    assert lines[0].startswith("qtsw: run ") and f"(pid {proc.pid}); following it here" in lines[0]
    run_id = history.read_runs(settings)[-1]["run_id"]
    assert history.read_runs(settings)[-1]["trigger"] == "manual"
    assert lines[0].startswith(f"qtsw: run {run_id[:8]} handed to the engine")
    # the run's own lines, as a headless run prints them, then its summary
    assert any("translator start" in ln and run_id[:8] in ln for ln in lines)
    assert any("pipeline   success" in ln for ln in lines)
    assert lines[-1].startswith(f"run {run_id[:8]} success: translator success, analyzer success, merger success")
    assert "(report " in lines[-1]
    # the engine goes on serving, with its lock
    assert proc.poll() is None
    with Connection(socket_path(settings)) as conn:
        assert conn.hello["pid"] == proc.pid

    got = qtsw(settings.root, "--stage", "merger", "--no-ui", "--json")
    assert got.returncode == 0, got.stderr
    events = [json.loads(ln) for ln in got.stdout.splitlines()]  # JSONL only: no note, no summary
    assert {e["run_id"] for e in events} == {history.read_runs(settings)[-1]["run_id"]}
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert (events[-1]["stage"], events[-1]["event"]) == ("pipeline", "success")
    assert history.read_runs(settings)[-1]["trigger"] == "stage"


def test_a_run_refused_by_the_serving_engine_says_why(engine) -> None:
    settings, _ = engine
    idle(settings)
    with contextlib.ExitStack() as hold, Connection(socket_path(settings)) as conn:
        hold.enter_context(catalog.hold_writes(settings))  # the active run stays in the analyzer
        reply = conn.command("run_now", full=True)
        assert reply["type"] == "accepted"
        got = qtsw(settings.root, "--run-now", "--no-ui")
        assert got.returncode == 4
        assert f"refused the run: a run is active: {reply['run_id'][:8]}" in got.stderr
        assert conn.command("cancel")["type"] == "accepted"
    idle(settings)


def test_a_stop_signal_cancels_the_handed_run_and_leaves_the_engine(engine, tmp_path: Path) -> None:
    settings, proc = engine
    idle(settings)
    out = tmp_path / "follow.out"
    with contextlib.ExitStack() as hold, Connection(socket_path(settings)) as conn, open(out, "w") as sink:
        hold.enter_context(catalog.hold_writes(settings))
        follow = subprocess.Popen([sys.executable, "-m", "qtsw_tui", "--root", str(settings.root),
                                   "--run-now", "--full", "--no-ui"],
                                  stdout=sink, stderr=subprocess.STDOUT, text=True, env=clean_env())
        try:
            current = wait_until(lambda: conn.snapshot()["current"], "the handed run to start", 60)
            wait_until(lambda: "following it here" in out.read_text(), "the command to follow the run", 60)
            follow.send_signal(signal.SIGTERM)
            assert follow.wait(timeout=60) == 3  # cancelled
        finally:
            terminate(follow)
    text = out.read_text()
    assert f"SIGTERM: asking the engine to cancel run {current['run_id'][:8]}" in text
    assert text.splitlines()[-1].startswith(f"run {current['run_id'][:8]} cancelled")
    last = history.read_runs(settings)[-1]
    assert (last["run_id"], last["status"]) == (current["run_id"], "cancelled")
    assert alive(proc.pid) and proc.poll() is None  # only the run was cancelled


def test_a_root_locked_by_an_engine_without_a_socket_is_refused_as_before(tmp_path: Path) -> None:
    settings = load_settings(root=tmp_path / "root", env={})
    settings.ensure_dirs()
    with EngineLock.for_settings(settings):  # an engine that serves no socket (say, an old one)
        got = qtsw(settings.root, "--run-now", "--no-ui")
    assert got.returncode == 4
    assert "its control socket does not answer" in got.stderr and "cannot be handed to it" in got.stderr


def test_the_early_launcher_of_a_handed_over_run_is_ended_at_once(engine) -> None:
    # the command started its warm launcher before it knew the root's engine serves: it ends it
    # as soon as it finds the lock held (the command line itself, without the entry's last
    # sweep; this process, its parent, lives on: not the kernel's parent-death signal)
    settings, proc = engine
    idle(settings)
    early = warmstart.start_early(env={})
    assert early is not None
    assert cli.main(["--root", str(settings.root), "--run-now", "--no-ui"], early=early) == 0
    assert early.proc.returncode == -signal.SIGKILL and not alive(early.pid)
    assert history.read_runs(settings)[-1]["status"] == "success" and proc.poll() is None
