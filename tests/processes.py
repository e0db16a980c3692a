"""Process-table checks for the tests, independent of the code under test, and a command run
with a terminal of its own."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def alive(pid: int) -> bool:
    """A live, non-zombie process with this pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # (gone between the open and the read: ESRCH)
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def processes_naming(text: str | os.PathLike[str]) -> list[int]:
    """Pids of live processes (other than this one) whose command line contains ``text``,
    e.g. a data root that every stage of a run is given."""
    needle = os.fsencode(text)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmd and alive(int(entry)):
            pids.append(int(entry))
    return pids


def run_in_a_pty(cmd: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """Run ``cmd`` with a terminal (a pty, 80x24) as its input and output, reading all it writes;
    returns (exit code, what it wrote)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    out = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child has closed the terminal
                break
            if not chunk:
                break
            out += chunk
        return proc.wait(timeout), out.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def lock_free(path: Path) -> bool:
    """Nobody holds the engine lock (taken and released at once to find out)."""
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return True


def children_of(pid: int) -> list[int]:
    """Pids of the live children of process ``pid`` (any of its threads' children)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            continue
    return [c for c in out if alive(c)]


def wait_until(cond: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll ``cond`` until it returns something true (returned); fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def terminate(proc: subprocess.Popen[Any], timeout: float = 60) -> None:
    """SIGTERM, then wait; SIGKILL only if it did not end within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def priorities(pid: int) -> set[tuple[int, int]]:
    """The CPU priorities of a process's threads, from /proc: each thread's nice value (higher
    is lower) and scheduling policy (``os.SCHED_OTHER``, ``os.SCHED_IDLE`` …), as a set."""
    found = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            found.add((int(fields[16]), int(fields[38])))  # stat fields 19 and 41
    return found


def command_process(pid: int, word: str) -> int:
    """``pid``, or its child, whose command line contains ``word`` (a terminal's pane runs its
    command through a shell, which may or may not exec it)."""
    needle = word.encode()
    for candidate in [pid] + [int(e) for e in os.listdir("/proc") if e.isdigit()]:
        try:
            cmd = Path(f"/proc/{candidate}/cmdline").read_bytes()
            stat = Path(f"/proc/{candidate}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if needle in cmd and (candidate == pid or ppid == pid):
            return candidate
    raise LookupError(f"no process of pid {pid} runs {word}")
