"""Stopping ``qtsw`` with a signal, whatever its output is connected to.

Headless output into a pipe whose reader has gone (``qtsw --no-ui | head``), the console asked
to draw into something that is not a terminal, and the console in a real terminal (tmux) or in
one that no longer takes output: every stop signal ends the process promptly, with the lock free
and no traceback.
"""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from processes import alive, lock_free

QTSW = [sys.executable, "-m", "qtsw_tui"]
STOP_WITHIN = 5.0  # seconds from the signal to the process's end


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_") and k != "TMUX"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_exit(proc: subprocess.Popen[bytes], within: float) -> int | None:
    try:
        return proc.wait(within)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return None


def headless_into_head(root: Path, sig: signal.Signals, json_mode: bool) -> str:
    """``qtsw --no-ui [--json] --root R | head -n 1``, then ``sig`` once head has gone.

    Returns what went wrong, or "" when the engine stopped promptly and cleanly.
    """
    engine = subprocess.Popen(
        [*QTSW, "--no-ui", *(["--json"] if json_mode else []), "--root", str(root)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(),
    )
    head = subprocess.Popen(["head", "-n", "1"], stdin=engine.stdout, stdout=subprocess.PIPE)
    assert engine.stdout is not None and engine.stderr is not None
    engine.stdout.close()  # only head reads the engine's output now
    first, _ = head.communicate(timeout=30)  # head has its line and has exited: the pipe is closed
    if b"Scheduler started" not in first:
        engine.kill()
        return f"first line {first!r}"
    engine.send_signal(sig)
    code = wait_exit(engine, STOP_WITHIN)
    err = engine.stderr.read().decode(errors="replace")
    engine.stderr.close()
    if code is None:
        return f"{sig.name}: still running {STOP_WITHIN} s after the signal"
    if code != 0 or "Traceback" in err or "Exception" in err:
        return f"{sig.name}: exit {code}, stderr {err!r}"
    settings_lock = root / "logs" / "qtsw.lock"
    if not lock_free(settings_lock):
        return f"{sig.name}: the lock is still held after the exit"
    return ""


def test_headless_output_into_a_closed_pipe_then_a_signal_20_times(tmp_path: Path) -> None:
    """The reader of the output has gone (head took its line) when the signal comes: the engine's
    last lines go nowhere, without a traceback, and it stops at once with the lock free. 20 times,
    4 data roots side by side; each root's next engine starts only if the lock was freed."""
    roots = []
    for i in range(4):
        root = tmp_path / f"root{i}"
        (root / "logs").mkdir(parents=True)
        roots.append(root)
    sigs = [signal.SIGTERM, signal.SIGTERM, signal.SIGINT, signal.SIGTERM, signal.SIGHUP]

    def five(i: int) -> list[str]:
        out = []
        for j, sig in enumerate(sigs):
            problem = headless_into_head(roots[i], sig, json_mode=(i + j) % 2 == 0)
            if problem:
                out.append(f"root{i} try {j}: {problem}")
        return out

    with ThreadPoolExecutor(4) as pool:
        problems = [p for batch in pool.map(five, range(4)) for p in batch]
    assert problems == []


def test_console_refuses_output_that_is_not_a_terminal(tmp_path: Path) -> None:
    """``qtsw --json`` (the console, not --no-ui) into a pipe: one line saying what to use, exit 4,
    nothing drawn, no lock taken; also as the operator typed it, through ``head``."""
    root = tmp_path / "root"
    (root / "logs").mkdir(parents=True)
    got = subprocess.run([*QTSW, "--json", "--root", str(root)], capture_output=True, text=True,
                         env=clean_env(), timeout=60, stdin=subprocess.DEVNULL)
    assert got.returncode == 4
    assert got.stdout == ""
    [line] = got.stderr.splitlines()
    assert "terminal" in line and "--no-ui" in line
    t0 = time.monotonic()
    shell = subprocess.run(
        ["bash", "-c", f"timeout 30 {' '.join(QTSW)} --json --root {root} 2>&1 | head -6; exit ${{PIPESTATUS[0]}}"],
        capture_output=True, text=True, env=clean_env(), timeout=60,
    )
    assert shell.returncode == 4 and time.monotonic() - t0 < 20
    assert "--no-ui" in shell.stdout and len(shell.stdout.splitlines()) == 1
    assert not (root / "logs" / "qtsw.lock").exists() or lock_free(root / "logs" / "qtsw.lock")


# --- the console in a terminal --------------------------------------------------------------------

TMUX = "tmux"
QTSW_SCRIPT = str(Path(sys.executable).with_name("qtsw"))


def holder_pid(lock: Path, within: float = 30.0) -> int:
    """The pid the engine wrote into the lock file once it holds the lock."""
    deadline = time.monotonic() + within
    while True:
        try:
            text = lock.read_text().strip()
        except FileNotFoundError:
            text = ""
        if text and not lock_free(lock):
            import json

            return int(json.loads(text)["pid"])
        assert time.monotonic() < deadline, "the console did not take the lock"
        time.sleep(0.05)


def wait_gone(pid: int, within: float) -> float:
    t0 = time.monotonic()
    while alive(pid):
        assert time.monotonic() - t0 < within, f"pid {pid} still running {within} s after the signal"
        time.sleep(0.05)
    return time.monotonic() - t0


@pytest.mark.skipif(not __import__("shutil").which(TMUX), reason="tmux is not installed")
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 0), (signal.SIGHUP, 129)])
def test_console_in_a_terminal_exits_on_a_stop_signal(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    """SIGTERM, SIGINT or SIGHUP sent to the console (not a key press): it exits promptly, the
    lock is free, the exit status says how it ended (0 idle, 128+1 after a hang-up)."""
    import uuid

    root = tmp_path / "root"
    (root / "logs").mkdir(parents=True)
    status = tmp_path / "status"
    sock = f"qtsw-test-{uuid.uuid4().hex[:8]}"
    env = clean_env()
    env.update(TERM="xterm-256color", LANG="C.UTF-8", LC_ALL="C.UTF-8")
    subprocess.run([TMUX, "-L", sock, "-f", "/dev/null", "new-session", "-d", "-s", "console", "-x", "80", "-y", "24",
                    f"{QTSW_SCRIPT} --root {root}; echo $? > {status}; sleep 30"],
                   env=env, check=True, timeout=20)
    try:
        pid = holder_pid(root / "logs" / "qtsw.lock")
        deadline = time.monotonic() + 60
        while "schedule" not in subprocess.run([TMUX, "-L", sock, "capture-pane", "-p", "-t", "console"],
                                               capture_output=True, text=True, timeout=20).stdout:
            assert time.monotonic() < deadline, "the console did not start"
            time.sleep(0.1)
        os.kill(pid, sig)
        wait_gone(pid, STOP_WITHIN)
        deadline = time.monotonic() + 5
        while not status.exists() or not status.read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        subprocess.run([TMUX, "-L", sock, "kill-server"], capture_output=True, timeout=20)
    assert int(status.read_text()) == code
    assert lock_free(root / "logs" / "qtsw.lock")


@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_console_whose_terminal_takes_no_output_still_exits_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    """A terminal that stopped reading (a stalled SSH link, a paused terminal): the console's
    writes block. A stop signal still ends it within seconds, and the lock is freed."""
    import struct
    import termios

    root = tmp_path / "root"
    (root / "logs").mkdir(parents=True)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = clean_env()
    env.update(TERM="xterm-256color", LANG="C.UTF-8", LC_ALL="C.UTF-8")
    proc = subprocess.Popen([QTSW_SCRIPT, "--root", str(root)], stdin=slave, stdout=slave, stderr=slave,
                            env=env, start_new_session=True)
    os.close(slave)
    try:
        holder_pid(root / "logs" / "qtsw.lock")
        seen = b""
        deadline = time.monotonic() + 60
        while b"schedule" not in seen:  # read until the console has drawn its header ...
            assert time.monotonic() < deadline, f"the console did not start: {seen[-500:]!r}"
            seen += os.read(master, 65536)
        time.sleep(1.0)  # ... then nobody reads: what it draws fills the terminal's buffer
        proc.send_signal(sig)
        code = wait_exit(proc, 15)
        assert code is not None, f"{sig.name} ignored: still running 15 s later"
        assert code == 0
        assert lock_free(root / "logs" / "qtsw.lock")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
