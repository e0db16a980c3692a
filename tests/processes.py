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
