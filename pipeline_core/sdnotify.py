"""Telling a service manager how the engine is (systemd's notify protocol, ``Type=notify``).

When ``NOTIFY_SOCKET`` is set, the engine sends datagrams of ``KEY=value`` lines to it:
``READY=1`` once it holds the lock and serves its control socket, ``STATUS=…`` whenever what it
is doing changes (one line: schedule, next run, the active run and stage, the last result),
``WATCHDOG=1`` every half ``WATCHDOG_USEC`` while its event loop is alive, and ``STOPPING=1``
when it shuts down. A socket path starting with ``@`` is in the abstract namespace. Without
``NOTIFY_SOCKET`` nothing is sent. The variables are removed from the environment once read, so
stage processes never talk to the service manager in the engine's name.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, MutableMapping
from typing import Any

import anyio

ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
STATUS_SECONDS = 1.0  # how often the engine's state is looked at for a STATUS= change


class Notifier:
    """The sending side of the notify protocol; every method is a no-op when disabled."""

    def __init__(self, env: MutableMapping[str, str] | None = None, *, unset: bool = True) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET") or ""
        self.address: str | None = None
        if addr.startswith("@"):
            self.address = "\0" + addr[1:]
        elif addr.startswith("/"):
            self.address = addr
        self.watchdog_seconds: float | None = None
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if self.address and usec and (not pid or pid == str(os.getpid())):
            with contextlib.suppress(ValueError):
                if int(usec) > 0:
                    self.watchdog_seconds = int(usec) / 1e6
        if unset:
            for k in ENV_VARS:
                env.pop(k, None)
        self._sock: socket.socket | None = None
        self._status: str | None = None
        self._stopping = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields as one datagram; False if disabled or it could not be sent."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode("utf-8", errors="replace"), self.address)
            return True
        except OSError:
            return False  # the manager went away: the engine carries on

    def ready(self, status: str | None = None) -> bool:
        fields = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            fields.append(f"STATUS={_one_line(status)}")
            self._status = status
        return self.send(*fields)

    def status(self, text: str) -> bool:
        """``STATUS=text`` if it differs from the last one sent."""
        if text == self._status:
            return False
        self._status = text
        return self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1`` (once)."""
        if self._stopping:
            return False
        self._stopping = True
        fields = ["STOPPING=1"]
        if status:
            fields.append(f"STATUS={_one_line(status)}")
        return self.send(*fields)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    async def run(self, status: Callable[[], str]) -> None:
        """Until cancelled: ``WATCHDOG=1`` every half watchdog period, ``STATUS=`` on change."""
        if not self.enabled:
            return
        loop_time = anyio.current_time
        next_ping = loop_time()
        half = self.watchdog_seconds / 2 if self.watchdog_seconds else None
        while True:
            now = loop_time()
            if half is not None and now >= next_ping:
                self.watchdog()
                next_ping = now + half
            with contextlib.suppress(Exception):
                self.status(status())
            wait = STATUS_SECONDS if half is None else min(STATUS_SECONDS, max(0.0, next_ping - loop_time()))
            await anyio.sleep(wait)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def engine_status(engine: Any) -> str:
    """One line for ``STATUS=``: the schedule, the next run, the active run, the last result."""
    snap = engine.snapshot()
    parts = [f"schedule {snap.scheduler}"]
    if snap.next_mark is not None:
        parts.append(f"next run {snap.next_mark:%H:%M}")
    run = snap.current
    if run is not None:
        parts.append(f"run {run.run_id[:8]} ({run.trigger})" + (f" {run.stage} running" if run.stage else ""))
    else:
        parts.append("idle")
    last = snap.last_run
    if last:
        parts.append(f"last run {str(last.get('run_id', ''))[:8]} {last.get('status', '?')}")
    return "; ".join(parts)
