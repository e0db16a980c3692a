"""What every file write shares: the mode a new file gets from the umask, and the disk-full
fault injection point. Light (standard library only): the event writer and the console use it.
"""

from __future__ import annotations

import errno
import fnmatch
import os
from pathlib import Path

# Fault injection for the disk-full tests: with QTSW_FAIL_WRITE=PATTERN[,PATTERN…] every write
# through pipeline_core.fsutil (and the event log, the stage logs and the catalogue) to a path matching a
# pattern (fnmatch, on the whole path) fails as a full disk would: OSError ENOSPC naming the path.
FAIL_WRITE_ENV = "QTSW_FAIL_WRITE"


def fail_point(path: Path | str) -> None:
    """Raise ENOSPC for ``path`` when QTSW_FAIL_WRITE names it (see above); else nothing."""
    spec = os.environ.get(FAIL_WRITE_ENV)
    if spec and any(fnmatch.fnmatchcase(str(path), pat) for pat in spec.split(",") if pat):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _read_umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # at import, before any thread of ours exists
    os.umask(old)
    return old


UMASK = _read_umask()
FILE_MODE = 0o666 & ~UMASK
