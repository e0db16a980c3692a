"""One engine per data root (SPEC §6.4): an exclusive ``flock`` on ``logs/qtsw.lock``.

The holder writes its pid, host and start time (Chicago) into the file, so a second engine can
say who is in the way. The kernel releases the lock when the holder's process dies, however it
dies, so there is never a stale lock to clear by hand. The file descriptor is not inherited by
stage subprocesses (Python opens files non-inheritable), so a stage never keeps the lock alive.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

from pipeline_core import clock
from pipeline_core.settings import Settings

# Locks held by this process, by path: flock conflicts between two descriptors of the same
# process too, so "is it held by someone else?" must first ask this registry.
_held: dict[Path, EngineLock] = {}


class LockHeld(RuntimeError):
    """Another engine holds the lock; ``holder`` is what it wrote into the lock file."""

    def __init__(self, path: Path, holder: dict[str, Any] | None) -> None:
        self.path = path
        self.holder = holder or {}
        super().__init__(describe_refusal(path, self.holder))


def describe_refusal(path: Path, holder: dict[str, Any]) -> str:
    pid = holder.get("pid", "?")
    host = holder.get("host", "?")
    since = holder.get("started", "?")
    return (
        f"another qtsw engine is running on this data root: pid {pid} on host {host}, "
        f"started {since} (lock file {path}); stop it first, or use another --root"
    )


class EngineLock:
    """The engine lock of a data root. ``acquire()`` raises :class:`LockHeld` when taken."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self.info: dict[str, Any] = {}

    @classmethod
    def for_settings(cls, settings: Settings) -> EngineLock:
        return cls(settings.lock_file)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> EngineLock:
        """Take the lock (non-blocking) and write pid, host and start time into the file."""
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_CREAT without O_TRUNC: the holder's details must survive a refused attempt.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(self.path, read_lock_info(self.path)) from None
        except BaseException:
            os.close(fd)
            raise
        self.info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": clock.iso_now(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(self.info) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        _held[self.path.resolve()] = self
        return self

    def release(self) -> None:
        """Give the lock up. The file stays (deleting it would race with a starting engine)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _held.pop(self.path.resolve(), None)
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> EngineLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_lock_info(path: Path) -> dict[str, Any] | None:
    """What the holder wrote into the lock file (pid, host, started), or None if unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (FileNotFoundError, OSError):
        return None
    if not text:
        return None
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return None
    return info if isinstance(info, dict) else None


def lock_holder(path: Path) -> dict[str, Any] | None:
    """The engine holding the lock at ``path`` (its pid, host, started), or None when it is free.

    ``{"self": True, ...}`` when this very process holds it.
    """
    path = Path(path)
    mine = _held.get(path.resolve()) if path.exists() else None
    if mine is not None:
        return {**mine.info, "self": True}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        # A shared probe conflicts with the holder's exclusive lock, and with nothing else.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_lock_info(path) or {"pid": "?", "host": "?", "started": "?"}
    finally:
        os.close(fd)  # closing the descriptor drops the probe lock, if we got it
    return None


def held_by_other(settings: Settings) -> dict[str, Any] | None:
    """The other process holding this root's lock, or None (free, or held by this process)."""
    holder = lock_holder(settings.lock_file)
    if holder is None or holder.get("self"):
        return None
    return holder
