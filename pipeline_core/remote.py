"""An engine in another process, seen through its control socket (:mod:`pipeline_core.control`).

:class:`RemoteEngine` offers a console what :class:`pipeline_core.engine.Engine` offers —
``subscribe``, ``snapshot``, ``busy``/``paused``, ``request_run``, ``pause``/``resume``,
``cancel``, ``serve``/``stop`` and ``host_info`` — so no screen knows which one it talks to.
Its ``serve`` attaches: it asks for the engine's state (answered at once, so a console shows
it before the subscription's catch-up has been read) and subscribes, hands every event and
output line to the subscribers (each event once, by ``(run_id, seq)``, across reconnections),
keeps the engine's latest snapshot, and when the engine goes away says so and reattaches as
soon as one serves the data root again. It never starts an engine. ``stop`` only detaches: the
engine and its run go on.

By default it subscribes with ``"events":"file"``: the engine sends it no run event, only a
notice (at most one every few milliseconds) when the run's event file has grown, and it reads
the new complete lines of that file itself, from where it left off (the catch-up's end, given in
``caught_up``), in bounded chunks between turns of the console's event loop. The events are the
same, handed on the same way; the engine's cost of serving a console no longer grows with the
number of events it sends it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from pipeline_core import clock, history
from pipeline_core.control import (
    PROTOCOL_VERSION,
    Connection,
    ControlError,
    _short_path,
    snapshot_from_dict,
    socket_path,
)
from pipeline_core.events import Event, EventError, run_event_path
from pipeline_core.runstate import EngineSnapshot, EventMessage, OutputMessage
from pipeline_core.settings import Settings

Subscriber = Callable[[EventMessage | OutputMessage], None]
RECONNECT_SECONDS = 0.5  # how often a detached console looks for an engine again
COMMAND_TIMEOUT = 5.0  # a command's reply, from an engine on this machine
LINES_PER_TURN = 1000  # messages handled between two turns of the console's event loop
# the run's progress, metric and log events a console catches up with when it attaches (the
# newest; all its other events come too): a console shows the newest rows, and attaching during
# a flood must not replay a hundred thousand events through it (the run's file has them all)
CATCHUP_TAIL = 2000
READ_BYTES = 256 * 1024  # of a run's event file read at once (then the console's loop gets a turn)
ENGINE_GONE = "the engine went away"  # why an attached console is detached, when the engine ended
OFFSETS_KEPT = 8  # runs whose place in their event file is remembered


def step_back(settings: Settings) -> None:
    """Step this attached console back behind the engine it watches, every thread of it: its
    CPU priority lowered by ``console.attached_nice`` and, with ``console.attached_idle`` (off by
    default; Linux), the idle policy, SCHED_IDLE: it then runs only on CPU time nothing else
    wants and gives its core up at once to the engine or a stage that wakes. Watching a run's
    flood costs the run less as an idle task (``bench/attach.py``), but while every core is busy
    (an analyzer run, one process per core) an idle console hardly runs at all: it draws, takes
    keys and even quits only when a core is free (``bench/stepback.py``; the README gives both
    figures). An attached console
    calls this once it shows the engine (its first screen comes as fast as ever); a console
    hosting the engine never does: it runs the engine. Neither can be undone by the process."""
    idle = settings.attached_idle and hasattr(os, "SCHED_IDLE")
    for tid in _threads():
        with contextlib.suppress(OSError):  # a thread that just ended, or a system that refuses
            if idle:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            if settings.attached_nice:
                now = os.getpriority(os.PRIO_PROCESS, tid)
                os.setpriority(os.PRIO_PROCESS, tid, min(19, now + settings.attached_nice))


def _threads() -> list[int]:
    """This process's threads (Linux: each has its own priority and policy); elsewhere the
    process (0)."""
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


class RemoteEngine:
    """The engine serving ``settings``' data root, in another process."""

    attached = True

    def __init__(self, settings: Settings, *, reconnect_seconds: float = RECONNECT_SECONDS,
                 read_only: bool = False, catchup_tail: int | None = CATCHUP_TAIL,
                 file_events: bool = True) -> None:
        """``catchup_tail``: how many of the run's progress, metric and log events to catch up
        with on attaching (the newest; None: all of them). ``file_events``: read the run's live
        events from its event file when the engine says it has grown (False: the engine sends
        every event on the socket)."""
        self.settings = settings
        self.read_only = read_only  # watch only: every command is refused here, never sent
        self.path = socket_path(settings)
        self.reconnect_seconds = reconnect_seconds
        self.catchup_tail = catchup_tail
        self.file_events = file_events
        self.bad_lines = 0  # lines of a run's event file that were not an event (skipped)
        self.file_reads = 0  # reads of a run's event file
        self._offsets: dict[str, int] = {}  # run_id → the bytes of its event file already read
        self._to_read: dict[str, int] = {}  # run_id → the last seq a notice named, not yet read
        self.hello: dict[str, Any] | None = None  # the engine's hello while attached
        self.last_hello: dict[str, Any] | None = None
        self.problem: str | None = None  # why it is not attached, when it is not
        self.last_refusal = ""
        self.attachments = 0  # how many times it attached (1 = first time)
        self.caught_up = False  # this attachment's catch-up has come (the engine's state is known)
        self._subs: list[Subscriber] = []
        self._snap = EngineSnapshot(now=clock.now(), scheduler="off", next_mark=None, current=None,
                                    last_run=history.last_run(settings))
        self._seen: dict[str, int] = {}  # run_id → the last seq handed on
        self._output_runs: set[str] = set()  # runs whose output lines were already handed on
        self._catchup_runs: set[str] = set()  # … and those of the catch-up under way
        self._stop = False
        self._scope: anyio.CancelScope | None = None
        self._cmd: Connection | None = None
        self._queued: list[tuple[str, dict[str, Any]]] = []  # commands given before attaching

    # --- what the console reads -----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.hello is not None

    def subscribe(self, fn: Subscriber, *, catch_up: bool = False) -> Callable[[], None]:
        """Hand ``fn`` every event and output line from the engine. Each attachment starts with
        the engine's catch-up (the active or last run's events and its panes' recent lines), so
        ``catch_up`` asks for nothing more."""
        self._subs.append(fn)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subs.remove(fn)

        return unsubscribe

    def snapshot(self) -> EngineSnapshot:
        return replace(self._snap, now=clock.now())

    @property
    def busy(self) -> bool:
        return self._snap.current is not None

    @property
    def paused(self) -> bool:
        return self._snap.scheduler == "paused"

    @property
    def scheduler_state(self) -> str:
        return self._snap.scheduler

    @property
    def next_mark(self) -> datetime | None:
        return self._snap.next_mark

    def host_info(self) -> dict[str, Any]:
        """Who runs the engine: ``{"mode": "attached", "pid", "since", "connected", "problem",
        "caught_up"}`` (``caught_up``: the engine's state and its run's catch-up have come)."""
        h = self.hello or self.last_hello or {}
        return {"mode": "attached", "pid": h.get("pid"), "since": h.get("started"),
                "connected": self.connected, "problem": self.problem, "caught_up": self.caught_up}

    # --- commands -------------------------------------------------------------------------------

    def _command(self, name: str, **params: Any) -> dict[str, Any]:
        """Send a command and wait for its answer (an engine on this machine answers at once).
        Before the first attachment (``qtsw --run-now`` with an engine running) it is queued."""
        if self.read_only:
            return {"type": "refused", "reason": "this console is read-only"}
        if not self.connected:
            if self.attachments == 0 and self.problem is None and not self._stop:
                self._queued.append((name, params))
                return {"type": "accepted", "detail": "sent once attached"}
            return {"type": "refused", "reason": f"not attached to an engine ({self.problem or 'connecting'})"}
        for attempt in (1, 2):  # the command connection may have gone with an earlier engine
            try:
                if self._cmd is None:
                    self._cmd = Connection(self.path, timeout=COMMAND_TIMEOUT)
                return self._cmd.command(name, **params)
            except (ControlError, OSError) as exc:
                if self._cmd is not None:
                    self._cmd.close()
                    self._cmd = None
                if attempt == 2:
                    return {"type": "refused", "reason": f"the engine did not answer: {exc}"}
        raise AssertionError("unreachable")

    def _accepted(self, reply: dict[str, Any]) -> bool:
        if reply.get("type") == "accepted":
            self.last_refusal = ""
            return True
        self.last_refusal = str(reply.get("reason") or reply.get("error") or "refused")
        return False

    def request_run(self, trigger: str = "manual", stages: Any = None, full: bool | None = None) -> bool:
        """Ask the engine for a run (``stages``: one stage); False with :attr:`last_refusal`."""
        params: dict[str, Any] = {"full": True} if full else {}
        if stages:
            return self._accepted(self._command("stage", stage=list(stages)[0], **params))
        return self._accepted(self._command("run_now", **params))

    def cancel(self) -> bool:
        return self._accepted(self._command("cancel"))

    def pause(self) -> None:
        if self._accepted(self._command("pause")):
            self._snap = replace(self._snap, scheduler="paused")

    def resume(self) -> None:
        if self._accepted(self._command("resume")):
            self._snap = replace(self._snap, scheduler="running")

    def stop(self) -> None:
        """Detach (the engine and its run carry on)."""
        self._stop = True
        if self._scope is not None:
            self._scope.cancel()
        if self._cmd is not None:
            self._cmd.close()
            self._cmd = None

    # --- attached -------------------------------------------------------------------------------

    def _publish(self, msg: EventMessage | OutputMessage) -> None:
        for fn in self._subs:
            try:
                fn(msg)
            except Exception:  # noqa: BLE001, S110 - a watcher's bug must not end the attachment
                pass

    async def serve(self, *, schedule: bool = True, not_before: Any = None) -> None:
        """Stay attached until :meth:`stop`: attach, follow, and reattach when the engine is back."""
        with anyio.CancelScope() as scope:
            self._scope = scope
            while not self._stop:
                try:
                    await self._follow()
                except (OSError, ControlError, anyio.EndOfStream, anyio.BrokenResourceError,
                        anyio.ClosedResourceError) as exc:
                    if self.connected or self.problem is None:
                        self.problem = _why(exc)
                self._detached()
                await anyio.sleep(self.reconnect_seconds)
        self._detached()
        self._scope = None

    def _detached(self) -> None:
        if self.hello is not None:
            self.last_hello = self.hello
            self.problem = self.problem or ENGINE_GONE
        self.hello = None
        self.caught_up = False
        self._output_runs |= self._catchup_runs  # lines shown once are not shown again
        self._catchup_runs.clear()
        self._offsets.clear()  # the next catch-up says where to read from
        self._to_read.clear()
        self._snap = replace(self._snap, scheduler="off", next_mark=None, current=None)
        if self._cmd is not None:
            self._cmd.close()
            self._cmd = None

    async def _follow(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _short_path(self.path) as where:
                sock.connect(where)  # local: immediate, or refused at once
        except FileNotFoundError:
            sock.close()
            raise ControlError("no engine is running (no control socket)") from None
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        stream = await anyio.abc.SocketStream.from_socket(sock)
        async with stream:
            tail = b"" if self.catchup_tail is None else b',"tail":%d' % self.catchup_tail
            if self.file_events:
                tail += b',"events":"file"'
            # the engine's state first, answered at once; the subscription's catch-up (read from
            # the run's event file, which in a flood takes the engine a moment) follows
            await stream.send(b'{"type":"hello","version":%d,"id":"hello"}\n{"type":"snapshot","id":"snap"}\n'
                              b'{"type":"subscribe","id":"sub"%s}\n' % (PROTOCOL_VERSION, tail))
            buf = b""
            while True:
                chunk = await stream.receive(1 << 18)
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for i in range(0, len(lines), LINES_PER_TURN):
                    if i:
                        await anyio.lowlevel.checkpoint()  # the console draws during a flood
                    self._on_lines(lines[i:i + LINES_PER_TURN])
                if self._to_read:
                    await self._read_files()
                await anyio.lowlevel.checkpoint()  # a receive with data waiting does not yield
                while self._queued and self.connected:
                    name, params = self._queued.pop(0)
                    self._accepted(self._command(name, **params))
                if self._stop:
                    return

    async def _read_files(self) -> None:
        """Read what the notices announced: each run's new complete lines, from where it was
        left off, a chunk at a time with a turn of the loop between chunks, until the events a
        notice named have been handed on (a notice without a seq: until the file has no new
        complete line)."""
        while self._to_read:
            run_id = next(iter(self._to_read))
            upto = self._to_read.pop(run_id)
            while not upto or self._seen.get(run_id, 0) < upto:
                lines = self._read_chunk(run_id)
                if lines is None:
                    break
                for i in range(0, len(lines), LINES_PER_TURN):
                    self._on_file_lines(lines[i:i + LINES_PER_TURN])
                    await anyio.lowlevel.checkpoint()  # the console draws while it reads

    def _read_chunk(self, run_id: str) -> list[bytes] | None:
        """The next complete lines of ``run_id``'s event file (None: none yet). Only whole
        lines: the engine may be writing the last one. It reads what the file holds beyond the
        offset, at most :data:`READ_BYTES` (more only for one line longer than that): a buffer
        of the size asked for is allocated whatever comes, and the engine's notices come every
        few milliseconds, each for a few kilobytes."""
        path = run_event_path(self.settings.events_dir, run_id)
        offset = self._offsets.get(run_id, 0)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            available = os.fstat(fd).st_size - offset
            size = min(available, READ_BYTES)
            while True:
                data = os.pread(fd, size, offset) if size > 0 else b""
                end = data.rfind(b"\n")
                if end >= 0 or len(data) < size or size >= available:
                    break
                size = min(size * 2, available)  # one line longer than a chunk
        except OSError:
            return None
        finally:
            os.close(fd)
        self.file_reads += 1
        if end < 0:
            return None
        self._note_offset(run_id, offset + end + 1)
        lines = data.split(b"\n")
        lines.pop()  # what follows the last newline: a line still being written, or nothing
        return lines

    def _note_offset(self, run_id: str, offset: int) -> None:
        self._offsets.pop(run_id, None)  # the newest last: the oldest are forgotten
        self._offsets[run_id] = offset
        while len(self._offsets) > OFFSETS_KEPT:
            del self._offsets[next(iter(self._offsets))]

    def _on_file_lines(self, lines: list[bytes]) -> None:
        """Event lines of a run's file: decoded together, handed on like the socket's events; a
        line that is not an event is skipped and counted."""
        lines, objs = _decoded(lines)
        if objs is None:  # a damaged line among them
            objs = []
            for line in lines:
                try:
                    objs.append(json.loads(line))
                except ValueError:
                    self.bad_lines += 1
        for obj in objs:
            try:
                ev = Event.from_dict(obj)
            except (EventError, TypeError, ValueError):
                self.bad_lines += 1
                continue
            self._on_event(ev)

    def _on_event(self, ev: Event) -> None:
        if ev.seq <= self._seen.get(ev.run_id, 0):
            return  # seen before (a reconnection's catch-up)
        self._seen[ev.run_id] = ev.seq
        self._publish(EventMessage(ev))

    def _on_lines(self, lines: list[bytes]) -> None:
        """Messages from the engine: decoded together (one call for a whole batch of a flood,
        not one per line), each line on its own if the batch does not decode."""
        lines, msgs = _decoded(lines)
        if msgs is None:  # a damaged line among them
            for line in lines:
                self._on_line(line)
            return
        for msg in msgs:
            self._on_message(msg)

    def _on_line(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            return
        self._on_message(msg)

    def _on_message(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            return
        kind = msg.get("type")
        if kind == "event":
            try:
                ev = Event.from_dict(msg.get("event"))
            except (EventError, TypeError, ValueError):
                return
            self._on_event(ev)
        elif kind == "events":  # a run's event file has grown: read it (file mode)
            run_id = msg.get("run_id")
            if isinstance(run_id, str) and run_id and "/" not in run_id:
                self._to_read[run_id] = _whole(msg.get("seq"))  # (events read already: no read)
        elif kind == "output":
            run_id = str(msg.get("run_id") or "")
            if msg.get("catchup"):
                if run_id in self._output_runs:
                    return  # these lines were shown before a reconnection
                self._catchup_runs.add(run_id)  # the rest of this catch-up is still to be shown
            else:
                self._output_runs.add(run_id)
            self._publish(OutputMessage(run_id, str(msg.get("stage") or ""), msg.get("instrument"),
                                        str(msg.get("line") or "")))
        elif kind == "caught_up":
            self.caught_up = True
            self._output_runs |= self._catchup_runs
            self._catchup_runs.clear()
            run_id = msg.get("run_id")
            if msg.get("events") == "file" and isinstance(run_id, str) and run_id:
                # the run's live events begin here in its file (a new run's at 0)
                self._note_offset(run_id, _whole(msg.get("offset")))
        elif kind == "snapshot":
            with contextlib.suppress(Exception):
                self._snap = snapshot_from_dict(msg.get("snapshot") or {})
        elif kind == "hello":
            self.hello = msg
            self.last_hello = msg
            self.problem = None
            self.attachments += 1
        elif kind == "error" and msg.get("id") in ("hello", "sub"):
            raise ControlError(str(msg.get("error")))
        elif kind == "lagging":
            raise ControlError("this console fell behind the engine; catching up again")


def _decoded(lines: list[bytes]) -> tuple[list[bytes], list[Any] | None]:
    """The non-blank lines and their JSON values, decoded in one call (a flood's batch is one
    call, not one per line); None for the values when a line among them does not decode."""
    lines = [line for line in lines if line.strip()]
    try:
        values = json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:
        return lines, None
    if not isinstance(values, list) or len(values) != len(lines):
        return lines, None
    return lines, values


def _whole(value: Any) -> int:
    """A count from the engine (0 if it is not one)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _why(exc: BaseException) -> str:
    if isinstance(exc, anyio.EndOfStream | anyio.BrokenResourceError | anyio.ClosedResourceError):
        return ENGINE_GONE
    if isinstance(exc, ConnectionRefusedError):
        return "no engine is running (nobody listens on the socket)"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)
