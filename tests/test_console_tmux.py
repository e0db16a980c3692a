"""The console as an operator meets it: ``qtsw`` in a real terminal (tmux, 80x24).

The installed ``qtsw`` command starts in a tmux session on a private tmux server, ``r`` is
sent as a key press, and ``tmux capture-pane`` is polled (with a deadline) until the screen
shows the run progressing and then finished. ``q`` then quits; the session ends and no stage
process is left. A second session loses its terminal mid-run, as when an SSH connection drops.
The private tmux server is killed at the end whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import date, datetime, timedelta
from pathlib import Path

from processes import alive, command_process, lock_free, priorities, processes_naming

from pipeline_core import catalog
from pipeline_core.sample import write_samples
from pipeline_core.settings import CHICAGO, Settings, load_settings

TMUX = shutil.which("tmux") or "tmux"
QTSW = str(Path(sys.executable).with_name("qtsw"))


def tmux(sock: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TMUX, "-L", sock, *args], capture_output=True, text=True, check=check, timeout=20)


def screen(sock: str, session: str) -> str:
    return tmux(sock, "capture-pane", "-p", "-t", session).stdout


def poll(sock: str, session: str, cond, what: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = screen(sock, session)
        if cond(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; the screen shows:\n{text}")
        time.sleep(0.1)


def quiet_root(root: Path, env: dict[str, str]) -> Settings:
    """A data root whose sample data may be old: the stale-data alert is off (its notices,
    raised whenever the tests run while the market is open, would cover the panes the tests
    read for twenty seconds)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "qtsw.toml").write_text("[alerts.rules]\nstale_data = false\n")
    settings = load_settings(root=root, env=env)
    settings.ensure_dirs()
    return settings


def test_console_in_tmux_runs_the_pipeline_at_80x24(tmp_path):
    root = tmp_path / "root"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_") and k != "TMUX"}
    env.update(TERM="xterm-256color", COLORTERM="truecolor", LANG="C.UTF-8", LC_ALL="C.UTF-8")
    settings = quiet_root(root, env)
    write_samples(settings, days=3, instruments=["ES", "NQ", "CL"], end=date(2025, 11, 26))
    sock, session = f"qtsw-test-{uuid.uuid4().hex[:8]}", "console"
    # the schedule runs, but its first mark is hours away: the only run is the one asked for
    later = (datetime.now(CHICAGO) + timedelta(hours=3)).strftime("%H:%M")
    cmd = f"{QTSW} --root {root} --schedule {later}"
    subprocess.run([TMUX, "-L", sock, "-f", "/dev/null", "new-session", "-d", "-s", session,
                    "-x", "80", "-y", "24", cmd], env=env, check=True, timeout=20)
    try:
        first = poll(sock, session, lambda t: "schedule running" in t and " ready" in t, "the console to start")
        lines = first.splitlines()
        assert len(lines) <= 24 and max(len(line) for line in lines) <= 80
        assert "idle" in first and "Translator" in first and "Counters" in first
        assert "3 ready" in first  # the sample exports, counted from data/raw
        # a console hosting the engine keeps its priority (console.attached_nice and
        # attached_idle are for attached ones)
        pane_pid = int(tmux(sock, "display-message", "-p", "-t", session, "#{pane_pid}").stdout)
        assert priorities(command_process(pane_pid, "qtsw")) == {(os.nice(0), os.sched_getscheduler(0))}

        # held in its translator until the header has shown it (a warm run of this size can be
        # over between two of the header's refreshes)
        with catalog.hold_writes(settings):
            tmux(sock, "send-keys", "-t", session, "r")
            poll(sock, session, lambda t: "▶ run" in t and "stage " in t, "the run and its stage to show")
        # the header, the panes' titles, the translator's own output in its pane and the
        # analyzer's instrument bars: each is drawn on its own refresh, so wait for them all
        done = poll(sock, session, lambda t: "last ✓ success" in t and "idle" in t
                    and "Translator ✓ success" in t and "Merger ✓ success" in t
                    and "translated" in t and "CL" in t and "100%" in t, "the run to finish")
        assert "Analyzer ✓ success" in done

        tmux(sock, "send-keys", "-t", session, "q")
        deadline = time.monotonic() + 30
        while tmux(sock, "has-session", "-t", session, check=False).returncode == 0:
            assert time.monotonic() < deadline, "the console did not quit on q"
            time.sleep(0.1)
    finally:
        tmux(sock, "kill-server", check=False)
    assert processes_naming(root) == []
    runs = settings.runs_index.read_text().splitlines()
    assert len(runs) == 1 and '"status":"success"' in runs[0].replace(" ", "")


def test_console_losing_its_terminal_mid_run_records_the_run_and_leaves(tmp_path):
    """The terminal goes away during a run (an SSH drop): the run ends cancelled, recorded, and
    the console exits with no stage process left and the lock free."""
    root = tmp_path / "root"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_") and k != "TMUX"}
    env.update(TERM="xterm-256color", LANG="C.UTF-8", LC_ALL="C.UTF-8", QTSW_ENGINE_WORKERS="1")
    settings = quiet_root(root, env)
    write_samples(settings, days=5, instruments=["ES", "NQ", "CL", "GC"], end=date(2025, 11, 26))
    sock, session = f"qtsw-test-{uuid.uuid4().hex[:8]}", "console"
    subprocess.run([TMUX, "-L", sock, "-f", "/dev/null", "new-session", "-d", "-s", session,
                    "-x", "80", "-y", "24", f"{QTSW} --root {root}"], env=env, check=True, timeout=20)
    try:
        poll(sock, session, lambda t: "schedule running" in t and " ready" in t, "the console to start")
        # Held from before r: the run stays in its translator (at its first catalogue write),
        # so it is certainly still going when the terminal hangs up
        with catalog.hold_writes(settings):
            tmux(sock, "send-keys", "-t", session, "r")
            poll(sock, session, lambda t: "stage translator" in t, "the translator to run")
            pane_pid = int(tmux(sock, "display-message", "-p", "-t", session, "#{pane_pid}").stdout)
            tmux(sock, "kill-session", "-t", session)  # the terminal hangs up
            deadline = time.monotonic() + 60
            while alive(pane_pid):
                assert time.monotonic() < deadline, "the console outlived its terminal"
                time.sleep(0.1)
    finally:
        tmux(sock, "kill-server", check=False)
    # The pane's process is gone; the console and its stages finish exiting (a process that is
    # exiting still holds its files, the lock among them, for a moment): wait for that.
    deadline = time.monotonic() + 30
    while processes_naming(root) or not lock_free(settings.lock_file):
        assert time.monotonic() < deadline, f"left behind: {processes_naming(root)}, lock held"
        time.sleep(0.1)
    runs = [json.loads(line) for line in settings.runs_index.read_text().splitlines()]
    assert len(runs) == 1 and runs[0]["status"] == "cancelled"


def test_cancel_and_quit_says_how_the_run_ended_and_exits_3(tmp_path):
    """q during a run, then "cancel and quit": once the terminal is back, one line says the run
    was cancelled and recorded (naming its report), and the exit status is 3."""
    root = tmp_path / "root"
    status = tmp_path / "status"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_") and k != "TMUX"}
    env.update(TERM="xterm-256color", LANG="C.UTF-8", LC_ALL="C.UTF-8", QTSW_ENGINE_WORKERS="1")
    settings = quiet_root(root, env)
    write_samples(settings, days=5, instruments=["ES", "NQ", "CL"], end=date(2025, 11, 26))
    sock, session = f"qtsw-test-{uuid.uuid4().hex[:8]}", "console"
    subprocess.run([TMUX, "-L", sock, "-f", "/dev/null", "new-session", "-d", "-s", session,
                    "-x", "80", "-y", "24", f"{QTSW} --root {root}; echo $? > {status}; sleep 60"],
                   env=env, check=True, timeout=20)
    try:
        poll(sock, session, lambda t: "schedule running" in t, "the console to start")
        # Held from before r: the run stays in its translator (at its first catalogue write),
        # so it cannot end by itself before q reaches it (a warm run of 3 instruments is over
        # in well under a second: holding it once the analyzer showed lost that race).
        with catalog.hold_writes(settings):
            tmux(sock, "send-keys", "-t", session, "r")
            poll(sock, session, lambda t: "stage translator" in t, "the translator to run")
            tmux(sock, "send-keys", "-t", session, "q")
            poll(sock, session, lambda t: "Cancel it and quit?" in t, "the question")
            tmux(sock, "send-keys", "-t", session, "y")
            said = poll(sock, session, lambda t: "the engine has stopped" in t, "the closing line")
    finally:
        deadline = time.monotonic() + 30
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        tmux(sock, "kill-server", check=False)
    runs = [json.loads(line) for line in settings.runs_index.read_text().splitlines()]
    assert len(runs) == 1 and runs[0]["status"] == "cancelled"
    flat = said.replace("\n", "")
    assert f"qtsw: run {runs[0]['run_id'][:8]} cancelled and recorded (report " in flat
    assert status.read_text().strip() == "3"
