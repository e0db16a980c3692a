"""Process-table checks for the tests, independent of the code under test."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    """A live, non-zombie process with this pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
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
