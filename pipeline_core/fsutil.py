"""Atomic file writes: temporary file in the same folder, fsync, rename, fsync the folder.

A crash at any moment leaves the destination either old or new, never partial.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline_core.osfiles import FILE_MODE, fail_point

if TYPE_CHECKING:  # pyarrow is imported where a Parquet file is written: the console starts without it
    import pyarrow as pa

# Fault injection for the crash tests: with QTSW_CRASH_BEFORE_RENAME=N a process kills itself
# (SIGKILL) at its Nth atomic Parquet write, when the temporary file is complete and the
# destination not yet replaced: the moment a crash tests the "old or new, never partial" rule.
CRASH_BEFORE_RENAME_ENV = "QTSW_CRASH_BEFORE_RENAME"
_parquet_writes = 0
_crash_lock = threading.Lock()


def _crash_point(dest: Path) -> None:
    global _parquet_writes
    at = os.environ.get(CRASH_BEFORE_RENAME_ENV)
    if not at or dest.suffix != ".parquet":
        return
    with _crash_lock:
        _parquet_writes += 1
        if _parquet_writes == int(at):
            os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_beside(dest: Path) -> Path:
    """A new, empty temporary file beside ``dest`` (its folder made if need be), with the mode a
    data file gets; its name (``.<name>.*.tmp``) is what :func:`remove_stale_temp_files` finds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fail_point(dest)
    # the temporary name stays within NAME_MAX however long the destination's name is
    fd, tmp_name = tempfile.mkstemp(prefix=f".{os.fsdecode(os.fsencode(dest.name)[:200])}.", suffix=".tmp", dir=dest.parent)
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600; a data file gets the umask's mode
    finally:
        os.close(fd)
    return Path(tmp_name)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: Path, dest: Path, sync_dir: bool = True) -> None:
    """Rename a complete, fsynced ``tmp`` onto ``dest`` (and fsync the folder unless the caller
    does it once for several renames)."""
    _crash_point(dest)
    os.replace(tmp, dest)
    if sync_dir:
        fsync_dir(dest.parent)


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it is fsynced and renamed onto ``dest``."""
    dest = Path(dest)
    tmp = temp_beside(dest)
    try:
        yield tmp
        fsync_file(tmp)
        replace_durably(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(dest: Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(dest: Path, obj: Any) -> None:
    write_bytes_atomic(dest, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path, default: Any = None) -> Any:
    """Read a JSON state file; ``default`` when it does not exist."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


def append_jsonl(path: Path, record: Any) -> None:
    """Append one JSON line durably: one whole write, fsynced.

    A crash during an earlier append may have left a partial last line; the new record then
    starts on a fresh line, so readers that skip the broken line lose nothing else.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, ensure_ascii=False, default=str, separators=(",", ":")) + "\n").encode(
        "utf-8", "backslashreplace")
    fail_point(path)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON-object lines of a file written by :func:`append_jsonl` (none if it does not
    exist); a partial last line from a crash, or any line that is not an object, is skipped."""
    out: list[dict[str, Any]] = []
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return out
    with fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def write_parquet_atomic(dest: Path, table: pa.Table, **options: Any) -> None:
    """Write ``table`` to ``dest`` atomically (``options`` go to ``pyarrow.parquet.write_table``;
    page checksums are on unless they say otherwise)."""
    import pyarrow.parquet as pq

    options.setdefault("write_page_checksum", True)
    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp, **options)


def remove_stale_temp_files(folder: Path) -> int:
    """Remove leftovers of writes interrupted by a crash (``.<name>.*.tmp``); returns the count."""
    n = 0
    if folder.is_dir():
        for p in folder.rglob(".*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
    return n
