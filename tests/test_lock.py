"""One engine per data root: the flock, its holder's details, and what happens when it dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline_core.lock import EngineLock, LockHeld, held_by_other, lock_holder, read_lock_info
from pipeline_core.settings import Settings


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_for(cond, seconds: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_second_lock_in_process_is_refused_naming_the_holder(settings: Settings) -> None:
    first = EngineLock.for_settings(settings).acquire()
    try:
        assert first.held
        info = read_lock_info(settings.lock_file)
        assert info is not None and info["pid"] == os.getpid() and info["started"] and info["host"]
        with pytest.raises(LockHeld) as err:
            EngineLock.for_settings(settings).acquire()
        text = str(err.value)
        assert f"pid {os.getpid()}" in text and info["started"] in text
        assert read_lock_info(settings.lock_file) == info  # a refused attempt wipes nothing
        assert lock_holder(settings.lock_file)["self"] is True
        assert held_by_other(settings) is None
    finally:
        first.release()
    assert lock_holder(settings.lock_file) is None
    with EngineLock.for_settings(settings) as again:
        assert again.held


HOLDER = textwrap.dedent(
    """
    import subprocess, sys, time
    from pipeline_core.lock import EngineLock
    lock = EngineLock(sys.argv[1]).acquire()
    # a child that inherits every descriptor it can: the lock must not be one of them
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], close_fds=False)
    print(child.pid, flush=True)
    time.sleep(600)
    """
)


def test_lock_is_freed_when_the_holder_dies(settings: Settings, tmp_path: Path) -> None:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    holder = subprocess.Popen([sys.executable, str(script), str(settings.lock_file)],
                              stdout=subprocess.PIPE, text=True, env=clean_env())
    child_pid = None
    try:
        child_pid = int(holder.stdout.readline())
        wait_for(lambda: (lock_holder(settings.lock_file) or {}).get("pid") == holder.pid, what="the holder")
        assert held_by_other(settings)["pid"] == holder.pid
        with pytest.raises(LockHeld, match=f"pid {holder.pid}"):
            EngineLock.for_settings(settings).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        # the holder's child lives on, yet the kernel has released the lock
        os.kill(child_pid, 0)
        lock = EngineLock.for_settings(settings).acquire()
        assert read_lock_info(settings.lock_file)["pid"] == os.getpid()
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if child_pid:
            os.kill(child_pid, signal.SIGKILL)


def qtsw(*args: str) -> list[str]:
    return [sys.executable, "-m", "qtsw_tui", *args]


def test_second_headless_engine_exits_4_and_a_new_one_starts_after_sigkill(root: Path) -> None:
    first = subprocess.Popen(qtsw("--root", str(root), "--no-ui"), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=clean_env())
    try:
        lock_file = root / "logs" / "qtsw.lock"
        wait_for(lambda: (lock_holder(lock_file) or {}).get("pid") == first.pid, what="the first engine")
        second = subprocess.run(qtsw("--root", str(root), "--no-ui"), capture_output=True, text=True,
                                env=clean_env(), timeout=60)
        assert second.returncode == 4
        assert f"pid {first.pid}" in second.stderr and "started" in second.stderr
        # a console attaches to it instead (tests/test_attach.py); scripts reach it too, once
        # it serves its socket (a moment after it took the lock)
        wait_for(lambda: (root / "logs" / "qtsw.sock").exists(), what="the engine's control socket")
        status = subprocess.run(qtsw("--root", str(root), "ctl", "status", "--json"), capture_output=True,
                                text=True, env=clean_env(), timeout=60)
        assert status.returncode == 0 and json.loads(status.stdout)["engine"]["pid"] == first.pid
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    third = subprocess.run(qtsw("--root", str(root), "--run-now", "--no-ui"), capture_output=True,
                           text=True, env=clean_env(), timeout=120)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "success" in third.stdout
    assert lock_holder(lock_file) is None  # released on exit


def test_sigterm_to_an_idle_headless_engine_exits_0_and_releases(root: Path) -> None:
    eng = subprocess.Popen(qtsw("--root", str(root), "--no-ui"), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=clean_env())
    try:
        lock_file = root / "logs" / "qtsw.lock"
        wait_for(lambda: (lock_holder(lock_file) or {}).get("pid") == eng.pid, what="the engine")
        wait_for(lambda: (root / "logs" / "events" / "scheduler.jsonl").exists(), what="the scheduler")
        eng.send_signal(signal.SIGTERM)
        out, _ = eng.communicate(timeout=30)
    finally:
        if eng.poll() is None:
            eng.kill()
            eng.wait()
    assert eng.returncode == 0, out
    assert "Scheduler started" in out and "Scheduler stopped" in out
    assert lock_holder(lock_file) is None
