"""The control socket (SPEC §11.2): the engine as a service that consoles and scripts attach to.

The process that runs the engine (``qtsw --no-ui``, or a console hosting it) serves
``logs/qtsw.sock``: a Unix stream socket created with mode 0600 that accepts only peers whose
uid (``SO_PEERCRED``) is the engine's or root's. The protocol is JSON lines (one object per
line, UTF-8, at most :data:`MAX_LINE` bytes); every request may carry an ``id`` that its reply
repeats. The first message must be ``hello`` with the protocol ``version``::

    > {"type":"hello","version":1}
    < {"type":"hello","version":1,"pid":…,"engine_version":…,"root":…,"started":…,"settings_hash":…}
    > {"type":"snapshot","id":2}
    < {"type":"snapshot","id":2,"snapshot":{…}}
    > {"type":"run_now","id":3,"full":false}         (also: stage + "stage", pause, resume, cancel)
    < {"type":"accepted","id":3,"command":"run_now","run_id":…}
    < {"type":"refused","id":3,"command":"run_now","reason":"a run is active: ab12cd34"}
    > {"type":"subscribe","id":4}                     (a console: "tail":N, "events":"file", see below)
    < {"type":"subscribed","id":4,"run_id":…}
    < {"n":38,"type":"snapshot","snapshot":{…}}                      the catch-up …
    < {"n":39,"type":"event","catchup":true,"event":{v1 event}}
    < {"n":40,"type":"output","catchup":true,"run_id":…,"stage":…,"instrument":…,"line":…}
    < {"n":41,"type":"caught_up"}
    < {"n":42,"type":"event","event":{…}}                           … then live
    < {"type":"error","error":"…"}       a malformed, oversized or unknown message
    < {"type":"lagging","error":"…"}     the client fell behind: it is disconnected

``n`` numbers the messages of a subscription with consecutive integers, so a client sees a gap
at once. A live message's ``n`` is the engine's own count of the messages it has published to
subscribers of its mode (the same for every client of a mode, so it is written once); a client's catch-up is numbered up to its first
live message, and so may begin anywhere, below 1 too. Events
carry the ``seq`` of their event file: the catch-up reads the file up to the point where the
client was registered for live events, so an event is in the catch-up or live, never both and
never neither; a client that reconnects de-duplicates by ``(run_id, seq)``. With ``"tail": N``
the catch-up keeps of the run's progress, metric and log events only the newest N (log
warnings and errors are kept), with all its other events: what a console shows, in a bounded
catch-up however many events the run has written.

With ``"events":"file"`` (the default is ``"stream"``, all of the above) a subscriber reads a
run's live events from the run's event file (``logs/events/pipeline_<run_id>.jsonl``; a peer is
the engine's uid or root, so it may), and the engine sends it none of them. Its catch-up is the
same; ``caught_up`` then says where in which file its live events begin, and live, in place of
the run's events, it gets at most one notice every COALESCE_SECONDS, and one soon after any
event was written (every event is written to its file before it is published)::

    < {"type":"subscribed","id":4,"run_id":…,"events":"file"}
    < … the catch-up, as above …
    < {"n":41,"type":"caught_up","events":"file","run_id":…,"offset":18230}   (run_id null: none yet)
    < {"n":42,"type":"events","run_id":…,"seq":812}   read the run's file on: events up to 812 are there

The client reads the file's complete lines from ``offset`` on (a run it has not read yet: from
0), to its last newline (the engine may be writing the next line); a notice for another run
comes only after the last one for the run before. Output lines, snapshots, replies and the
scheduler's own events (``run_id`` "scheduler") come on the socket, as for a stream subscriber.
A file subscriber's ``n`` counts the messages of its own live log (shared by every file
subscriber), consecutive as well. Notices are made once for all file subscribers: the engine's
work per event does not depend on how many there are.

Every subscription message is encoded once, whatever the number of clients: it is appended to
one live log, and each client's writer sends from its own cursor in it, many messages per write.

A slow client never slows the engine: each client has a bounded queue, and one that falls
behind is told so and disconnected. The server runs on the engine's own event loop (anyio), in
the task group of whoever hosts the engine; a message from a client never reaches the engine
except as one of the five commands. The file at the socket's path when the server starts is
stale (the engine holds the data root's lock, so no other engine serves it) and is replaced.

The client side: :class:`Connection` (blocking, for ``qtsw ctl`` and tests) and
:func:`connect`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import stat
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from pipeline_core import clock
from pipeline_core.events import run_event_path, scheduler_event_path
from pipeline_core.runstate import (
    STAGE_NAMES,
    EngineSnapshot,
    EventMessage,
    InstrumentProgress,
    OutputMessage,
    RunEstimate,
    RunState,
    StageState,
)
from pipeline_core.settings import CHICAGO, ENGINE_VERSION, Settings

PROTOCOL_VERSION = 1
MAX_LINE = 64 * 1024  # bytes in one request line; a longer one gets an error and is skipped
CLIENT_QUEUE = 10_000  # messages waiting for a client that does not read before it is cut off
CLIENT_QUEUE_MAX = 200_000  # … and for any client (a burst the client is reading through)
STUCK_SECONDS = 1.0  # a write to the client blocked this long: the client is not reading
PANE_LINES = 200  # recent output lines per stage pane in a catch-up
LAST_RUN_EVENTS = 2000  # the last run's events in a catch-up while no run is active
SCHEDULER_CATCHUP = 50  # recent scheduler events in a catch-up
SCHEDULER_TAIL_BYTES = 64 * 1024  # how much of scheduler.jsonl is read for them
WRITE_BYTES = 256 * 1024  # a write smaller than a sixteenth of this is a trickle (see COALESCE_SECONDS)
WRITE_COUNT = 2000  # live messages in one write to a client at most
COALESCE_SECONDS = 0.01  # a trickling client's writes are at least this far apart (the delay it adds at most)
TRIM_AT = 4096  # live messages kept before the ones every client has been sent are forgotten
VERBOSE_EVENTS = (b"progress", b"metric", b"log")  # what a catch-up with a tail keeps only the newest of
SNAPSHOT_SECONDS = 0.25  # how often the snapshot is compared and a change sent to subscribers
COMMANDS = ("run_now", "stage", "pause", "resume", "cancel")
SCHEDULER_RUN_ID = "scheduler"  # the run_id of the scheduler's own events (scheduler.jsonl, not a run's file)
EVENT_MODES = ("stream", "file")  # how a subscriber gets a run's events: on the socket, or from its file
REQUESTS = ("hello", "snapshot", "subscribe", "ping", *COMMANDS)
_PATH_MAX = 100  # sun_path holds 108 bytes; a longer path is reached through /proc/self/fd


class ControlError(RuntimeError):
    """The control socket could not be served or used; the message names the path and why."""


class NoEngine(ControlError):
    """No engine serves this data root (no socket, or nobody listening)."""


def socket_path(settings: Settings) -> Path:
    """Where the engine of this data root serves its control socket."""
    return settings.logs_dir / "qtsw.sock"


def settings_hash(settings: Settings) -> str:
    """A short hash of all the settings, so a client can tell two engines' settings apart."""
    blob = json.dumps(dataclasses.asdict(settings), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """A path the socket calls accept: itself, or through an open descriptor of its folder
    when it is longer than ``sun_path`` allows (deep data roots, test folders)."""
    if len(os.fsencode(str(path))) < _PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


# --- the snapshot as JSON ----------------------------------------------------------------------


def _iso(dt: datetime | None) -> str | None:
    return dt.astimezone(CHICAGO).isoformat() if dt is not None else None


def _dt(text: Any) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text)).astimezone(CHICAGO)
    except ValueError:
        return None


def _run_to_dict(run: RunState | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {
        "run_id": run.run_id,
        "trigger": run.trigger,
        "started": _iso(run.started),
        "status": run.status,
        "ended": _iso(run.ended),
        "stage": run.stage,
        "stages": {
            n: {"state": s.state, "started": _iso(s.started), "ended": _iso(s.ended),
                "reason": s.reason, "error": s.error, "counts": s.counts,
                "done": s.done, "total": s.total, "unit": s.unit}
            for n, s in run.stages.items()
        },
        "instruments": {
            i: {"state": p.state, "done": p.done, "total": p.total, "started": _iso(p.started),
                "ended": _iso(p.ended), "error": p.error}
            for i, p in run.instruments.items()
        },
    }


def _run_from_dict(cur: Any) -> RunState | None:
    if not cur:
        return None
    return RunState(
        run_id=str(cur["run_id"]),
        trigger=str(cur.get("trigger") or "manual"),
        started=_dt(cur.get("started")) or clock.now(),
        status=str(cur.get("status") or "running"),
        ended=_dt(cur.get("ended")),
        stage=cur.get("stage"),
        stages={
            n: StageState(n, state=s.get("state", "waiting"), started=_dt(s.get("started")),
                          ended=_dt(s.get("ended")), reason=s.get("reason") or "",
                          error=s.get("error"), counts=dict(s.get("counts") or {}),
                          done=int(s.get("done") or 0), total=int(s.get("total") or 0),
                          unit=str(s.get("unit") or ""))
            for n, s in (cur.get("stages") or {}).items()
        },
        instruments={
            i: InstrumentProgress(i, state=p.get("state", "waiting"), done=int(p.get("done") or 0),
                                  total=int(p.get("total") or 0), started=_dt(p.get("started")),
                                  ended=_dt(p.get("ended")), error=p.get("error"))
            for i, p in (cur.get("instruments") or {}).items()
        },
    )


def snapshot_to_dict(snap: EngineSnapshot) -> dict[str, Any]:
    """An :class:`EngineSnapshot` as plain JSON values (times ISO-8601, Chicago)."""
    est = snap.estimate
    return {
        "now": _iso(snap.now),
        "scheduler": snap.scheduler,
        "next_mark": _iso(snap.next_mark),
        "current": _run_to_dict(snap.current),
        "last_run": snap.last_run,
        "last_state": _run_to_dict(snap.last_state),
        "estimate": dataclasses.asdict(est) if est is not None else None,
    }


def snapshot_from_dict(d: dict[str, Any]) -> EngineSnapshot:
    """The inverse of :func:`snapshot_to_dict`."""
    est = d.get("estimate")
    estimate = None
    if isinstance(est, dict):
        with contextlib.suppress(TypeError, ValueError):
            estimate = RunEstimate(fraction=float(est["fraction"]), seconds_left=float(est["seconds_left"]),
                                   runs=int(est.get("runs") or 0))
    return EngineSnapshot(
        now=_dt(d.get("now")) or clock.now(),
        scheduler=str(d.get("scheduler") or "off"),
        next_mark=_dt(d.get("next_mark")),
        current=_run_from_dict(d.get("current")),
        last_run=d.get("last_run"),
        last_state=_run_from_dict(d.get("last_state")),
        estimate=estimate,
    )


def _dumps(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str) + "\n").encode()


# --- the server --------------------------------------------------------------------------------


class _Client:
    """One connected peer: its replies waiting to be sent, its catch-up, and where it is in the
    server's live log (every subscriber reads the same encoded messages; none is copied per client)."""

    def __init__(self, server: ControlServer, stream: anyio.abc.SocketStream, pid: int, uid: int) -> None:
        self.server = server
        self.stream = stream
        # read and written directly (anyio's stream logs an error when a client is cut off
        # while its socket turns ready: a cancelled wait's future is then set)
        self.sock: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        self.sock.setblocking(False)
        self.pid = pid
        self.uid = uid
        self.greeted = False
        self.subscribed = False
        self.replies: deque[bytes] = deque()  # answers to its requests (unnumbered)
        self.catchup: list[bytes] | None = None  # subscription messages before the live ones
        self.feed: _Feed = server._stream  # the live log it reads: with run events, or notices
        self.cursor = -1  # the index in its live log of the next live message it gets
        self.live = False  # catch-up sent: live messages go out
        self.lagging = False
        self.closing = False  # the peer closed its side: send what is waiting, then end
        self.blocked_since: float | None = None  # a write to it has been waiting since
        self.wake = anyio.Event()
        self.scope: anyio.CancelScope | None = None
        self.tg: anyio.abc.TaskGroup | None = None

    def reply(self, obj: dict[str, Any]) -> None:
        if self.lagging:
            return
        self.replies.append(_dumps(obj))
        if len(self.replies) > CLIENT_QUEUE:
            self.fall_behind()  # it sends requests and never reads the answers
            return
        self.poke()

    def poke(self) -> None:
        """Something to send: wake its writer (if it waits)."""
        self.feed.sleepers.discard(self)
        self.wake.set()

    def behind(self) -> int:
        """Messages waiting for it: replies, catch-up and live ones not yet written."""
        waiting = len(self.replies) + len(self.catchup or ())
        if self.cursor >= 0:
            waiting += self.feed.end - self.cursor
        return waiting

    def fall_behind(self) -> None:
        if self.lagging:
            return
        self.lagging = True
        self.server.lagged += 1
        self.feed.sleepers.discard(self)
        if self.scope is not None:
            self.scope.cancel()


class _Feed:
    """A live log: subscription messages, each encoded and numbered once (its ``n`` is this
    log's count of them), read by its clients from their own cursors. A stream subscriber's log
    has every event; a file subscriber's has notices in place of a run's events."""

    def __init__(self) -> None:
        self.log: list[bytes] = []
        self.base = 0  # the index of log[0]
        self.end = 0  # the index of the next message (and the n of the last one)
        self.subscribers = 0  # clients with a cursor in it
        self.sleepers: set[_Client] = set()  # live clients whose writer waits for a message

    def append(self, body: bytes) -> None:
        """One message (a JSON object's line), numbered."""
        self.end += 1
        self.log.append(b'{"n":%d,' % self.end + body[1:])


class ControlServer:
    """Serves the control socket for ``engine`` (see the module docstring for the protocol).

    :meth:`open` binds the socket (raises :class:`ControlError`); :meth:`serve` then accepts
    clients until cancelled, and removes the socket when it ends. ``hosted_by`` says who runs the
    engine (``headless`` or ``console``); it goes into ``hello``.
    """

    def __init__(self, engine: Any, settings: Settings, *, path: Path | None = None,
                 hosted_by: str = "headless", takes_runs: bool = True) -> None:
        self.engine = engine
        self.settings = settings
        self.path = Path(path) if path is not None else socket_path(settings)
        self.hosted_by = hosted_by
        self.takes_runs = takes_runs  # False: a one-run engine (qtsw --run-now), no new runs
        self.started = clock.iso_now()
        self.clients: set[_Client] = set()
        self.lagged = 0  # clients disconnected for falling behind
        self.errors = 0  # error replies sent
        self.troubles = 0  # problems of the socket itself (reported on stderr)
        self._sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._recent: dict[str, deque[bytes]] = {s: deque(maxlen=PANE_LINES) for s in STAGE_NAMES}
        # after a restart, the last run's output tails: what a console attaching now shows in
        # its panes (its events come from the run's event file in the catch-up)
        if not getattr(engine, "busy", True):
            for m in getattr(engine, "last_run_messages", list)():
                if isinstance(m, OutputMessage) and m.stage in self._recent:
                    self._recent[m.stage].append(_dumps({"type": "output", "run_id": m.run_id, "stage": m.stage,
                                                         "instrument": m.instrument, "line": m.line}))
        # the live logs: every subscription message once, encoded and numbered once (its ``n``
        # is the log's count of them); a client's cursor says how far it has been sent. Stream
        # subscribers read the run's events in theirs; file subscribers read the run's event
        # file, told by a notice in theirs when it has grown.
        self._stream = _Feed()
        self._files = _Feed()
        self._feeds = (self._stream, self._files)
        # the run whose events were written since the last notice (file subscribers), its last seq
        self._fresh_run: str | None = None
        self._fresh_seq = 0
        self._notice_wake: anyio.Event | None = None  # set: a notice is due (made on the loop, in serve)
        self.notices = 0  # notices published
        self._unsubscribe: Any = None
        self._loop_thread: int | None = None
        self._token: Any = None
        self._last_snapshot: dict[str, Any] | None = None
        self._hash = settings_hash(settings)

    # --- socket -------------------------------------------------------------------------------

    def open(self) -> None:
        """Bind and listen: a stale socket file is removed first; the socket is mode 0600
        from the moment it exists (umask during bind, then chmod)."""
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                st = None
            if st is not None:
                if not stat.S_ISSOCK(st.st_mode):
                    raise ControlError(f"{path}: exists and is not a socket; move it away")
                os.unlink(path)  # stale: the engine holds the lock, so nobody serves it
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                with _short_path(path) as where:
                    old = os.umask(0o177)
                    try:
                        sock.bind(where)
                    finally:
                        os.umask(old)
                    os.chmod(where, 0o600)
                sock.listen(64)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            raise ControlError(f"{path}: cannot serve the control socket: {exc.strerror or exc}") from None
        st = os.lstat(path)
        self._inode = (st.st_dev, st.st_ino)
        self._sock = sock

    def close(self) -> None:
        """Stop listening and remove the socket file (if it is still ours)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        if self._inode is not None:
            with contextlib.suppress(OSError):
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:
                    os.unlink(self.path)
            self._inode = None

    # --- serving -----------------------------------------------------------------------------

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Accept clients until cancelled (opens the socket first if :meth:`open` was not called)."""
        if self._sock is None:
            self.open()
        assert self._sock is not None
        self._loop_thread = threading.get_ident()
        self._token = anyio.lowlevel.current_token()
        listener = await anyio.abc.SocketListener.from_socket(self._sock)
        self._unsubscribe = self.engine.subscribe(self._on_engine)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_snapshot)
                tg.start_soon(self._send_notices)
                task_status.started()
                while True:
                    try:
                        stream = await listener.accept()
                    except (OSError, anyio.BrokenResourceError) as exc:  # e.g. out of descriptors
                        self._trouble(f"accepting a client: {exc}")
                        await anyio.sleep(0.5)
                        continue
                    tg.start_soon(self._handle_safely, stream)
        finally:
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(Exception):
                    await listener.aclose()
            self._sock = None  # the listener closed it
            self.close()

    def _trouble(self, text: str) -> None:
        """A problem of the socket, never of the engine: one line on stderr (the journal)."""
        self.troubles += 1
        if self.troubles <= 10:
            print(f"qtsw: control socket: {text}", file=sys.stderr, flush=True)

    async def _handle_safely(self, stream: anyio.abc.SocketStream) -> None:
        try:
            await self._handle(stream)
        except Exception as exc:  # noqa: BLE001 - one client's trouble must never reach the engine
            self._trouble(f"a client: {type(exc).__name__}: {exc}")
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await stream.aclose()

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        try:
            pid, uid, _gid = peer_credentials(raw)
        except OSError:
            pid, uid = 0, -1
        if uid not in (os.getuid(), 0):
            with contextlib.suppress(OSError):
                raw.send(_dumps({"type": "error", "error": f"refused: peer uid {uid} is neither the "
                                 f"engine's uid {os.getuid()} nor root"}), socket.MSG_DONTWAIT)
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            return
        client = _Client(self, stream, pid, uid)
        self.clients.add(client)
        try:
            with anyio.CancelScope() as scope:
                client.scope = scope
                async with anyio.create_task_group() as tg:
                    client.tg = tg
                    tg.start_soon(self._writer, client)
                    await self._reader(client)
                    # the peer closed its side: send what is waiting, then end
                    client.closing = True
                    client.poke()
        finally:
            self._drop(client)
            if client.lagging:
                # tell it why, without waiting for a peer that does not read
                with contextlib.suppress(OSError):
                    raw.send(b"\n" + _dumps({"type": "lagging", "error": "this client fell behind "
                             f"(more than {CLIENT_QUEUE} messages queued); disconnected; "
                             "reconnect to catch up"}), socket.MSG_DONTWAIT)
            with anyio.CancelScope(shield=True):
                # a turn of the loop first: the cancelled receive must let go of its future
                # before the stream closes (anyio#1267 on asyncio Unix streams)
                await anyio.lowlevel.checkpoint()
                with contextlib.suppress(Exception):
                    await stream.aclose()

    async def _writer(self, client: _Client) -> None:
        """Send the client what waits for it: its replies, its catch-up (one write), then the
        live log from its cursor, many messages per write (a burst of events costs the engine a
        few writes per client, not one per event)."""
        try:
            while True:
                data = self._take(client)
                if data is None:
                    if client.closing:
                        return
                    client.wake = anyio.Event()
                    if client.live:
                        client.feed.sleepers.add(client)
                    await client.wake.wait()
                    continue
                client.blocked_since = time.monotonic()
                await _send_all(client.sock, data)
                client.blocked_since = None
                if client.live and len(data) < WRITE_BYTES // 16:
                    # a trickle: let the next messages gather, so a steady stream of events costs
                    # the engine a write per client every COALESCE_SECONDS, not one per event
                    await anyio.sleep(COALESCE_SECONDS)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            if client.scope is not None:
                client.scope.cancel()

    def _take(self, client: _Client) -> bytes | None:
        """The next bytes to write to ``client``, or None when nothing waits."""
        if client.replies:
            data = b"".join(client.replies)
            client.replies.clear()
            return data
        if client.catchup is not None:
            # the whole catch-up in one write, numbered up to the first live message's n; the
            # live messages follow, with no await between
            data = _numbered(client.cursor - len(client.catchup) + 1, client.catchup)
            client.catchup = None
            client.live = True
            return data
        feed = client.feed
        if client.live and client.cursor < feed.end:
            i = client.cursor - feed.base
            chunk = feed.log[i:i + WRITE_COUNT]  # numbered already: the same bytes for all
            client.cursor += len(chunk)
            self._trim(feed)
            return b"".join(chunk)
        return None

    def _trim(self, feed: _Feed, *, force: bool = False) -> None:
        """Forget the live messages of ``feed`` every client of it has been sent (amortised: in halves)."""
        if len(feed.log) < TRIM_AT and not force:
            return
        low = min((c.cursor for c in self.clients if c.cursor >= 0 and c.feed is feed), default=feed.end)
        k = low - feed.base
        if k > 0 and (force or 2 * k >= len(feed.log)):
            del feed.log[:k]
            feed.base = low

    def _drop(self, client: _Client) -> None:
        """The client leaves (or is cut off): its cursor no longer holds the live log."""
        self.clients.discard(client)
        feed = client.feed
        feed.sleepers.discard(client)
        if client.cursor >= 0:
            client.cursor = -1
            feed.subscribers -= 1
        client.live = False
        if not feed.subscribers:
            feed.log.clear()
            feed.base = feed.end

    def _cut_laggards(self) -> None:
        """Cut off the clients that fell behind: too much waiting for them, or a write to them
        blocked for STUCK_SECONDS while more than CLIENT_QUEUE messages wait."""
        now = time.monotonic()
        for client in list(self.clients):
            behind = client.behind()
            if behind > CLIENT_QUEUE_MAX or (
                    behind > CLIENT_QUEUE and client.blocked_since is not None
                    and now - client.blocked_since > STUCK_SECONDS):
                client.fall_behind()
                self._drop(client)
        for feed in self._feeds:
            self._trim(feed, force=True)

    async def _reader(self, client: _Client) -> None:
        buf = b""
        skipping = False  # inside an oversized line: drop bytes up to its newline
        while True:
            try:
                chunk = client.sock.recv(65536)
            except BlockingIOError:
                await anyio.wait_readable(client.sock)
                continue
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while True:
                i = buf.find(b"\n")
                if i < 0:
                    if len(buf) > MAX_LINE:
                        if not skipping:
                            self._error(client, f"message too long: more than {MAX_LINE} bytes")
                        skipping = True
                        buf = b""
                    break
                line, buf = buf[:i], buf[i + 1:]
                if skipping:
                    skipping = False
                    continue
                if len(line) > MAX_LINE:
                    self._error(client, f"message too long: more than {MAX_LINE} bytes")
                    continue
                if line.strip():
                    self._request(client, line)
            await anyio.lowlevel.checkpoint()

    def _error(self, client: _Client, text: str, msg_id: Any = None) -> None:
        self.errors += 1
        out: dict[str, Any] = {"type": "error", "error": text}
        if msg_id is not None:
            out["id"] = msg_id
        client.reply(out)

    # --- requests ----------------------------------------------------------------------------

    def _request(self, client: _Client, line: bytes) -> None:
        try:
            msg = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            self._error(client, f"malformed message: {type(exc).__name__}: {str(exc)[:200]}")
            return
        if not isinstance(msg, dict):
            self._error(client, "malformed message: not a JSON object")
            return
        msg_id = msg.get("id")
        if msg_id is not None and (isinstance(msg_id, bool) or not isinstance(msg_id, int | str)):
            msg_id = None
        kind = msg.get("type")
        if not isinstance(kind, str) or kind not in REQUESTS:
            shown = json.dumps(kind)[:60] if kind is not None else "none"
            self._error(client, f"unknown message type {shown}; known: {', '.join(REQUESTS)}", msg_id)
            return
        if not client.greeted and kind != "hello":
            self._error(client, "the first message must be hello (with the protocol version)", msg_id)
            return
        try:
            if kind == "hello":
                self._hello(client, msg, msg_id)
            elif kind == "ping":
                client.reply({"type": "pong", "id": msg_id})
            elif kind == "snapshot":
                client.reply({"type": "snapshot", "id": msg_id, "snapshot": self._snapshot()})
            elif kind == "subscribe":
                self._subscribe(client, msg, msg_id)
            else:
                self._command(client, kind, msg, msg_id)
        except Exception as exc:  # noqa: BLE001 - a bad request must never disturb the engine
            self._error(client, f"{kind}: {type(exc).__name__}: {exc}", msg_id)

    def hello(self) -> dict[str, Any]:
        """What ``hello`` answers: who the engine is."""
        return {
            "type": "hello",
            "version": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "engine_version": ENGINE_VERSION,
            "root": str(self.settings.root),
            "started": self.started,
            "settings_hash": self._hash,
            "hosted_by": self.hosted_by,
        }

    def _hello(self, client: _Client, msg: dict[str, Any], msg_id: Any) -> None:
        version = msg.get("version")
        if version != PROTOCOL_VERSION:
            self._error(client, f"unsupported protocol version {json.dumps(version)[:40]}; "
                        f"this engine speaks version {PROTOCOL_VERSION}", msg_id)
            return
        client.greeted = True
        client.reply({**self.hello(), "id": msg_id})

    def _snapshot(self) -> dict[str, Any]:
        return snapshot_to_dict(self.engine.snapshot())

    def _command(self, client: _Client, kind: str, msg: dict[str, Any], msg_id: Any) -> None:
        engine = self.engine

        def answer(ok: bool, reason: str = "", **extra: Any) -> None:
            out: dict[str, Any] = {"type": "accepted" if ok else "refused", "id": msg_id, "command": kind}
            if reason:
                out["reason" if not ok else "detail"] = reason
            client.reply({**out, **extra})

        if kind in ("run_now", "stage"):
            full = msg.get("full", False)
            if not isinstance(full, bool):
                self._error(client, f"{kind}: full must be true or false", msg_id)
                return
            stages = None
            if kind == "stage":
                stage = msg.get("stage")
                if stage not in STAGE_NAMES:
                    answer(False, f"unknown stage {json.dumps(stage)[:40]}; allowed: {', '.join(STAGE_NAMES)}")
                    return
                stages = [stage]
            if not self.takes_runs:
                answer(False, "this engine does one run and then exits; it takes no new runs")
                return
            active = engine.snapshot().current
            if engine.request_run("stage" if stages else "manual", stages=stages, full=True if full else None):
                cur = engine.snapshot().current
                answer(True, run_id=cur.run_id if cur is not None else None)
            else:
                rid = active.run_id[:8] if active is not None else "?"
                answer(False, f"a run is active: {rid}")
        elif kind == "pause":
            was = engine.paused
            engine.pause()
            answer(True, "already paused" if was else "")
        elif kind == "resume":
            was = engine.paused
            engine.resume()
            answer(True, "" if was else "not paused")
        elif kind == "cancel":
            cur = engine.snapshot().current
            if engine.cancel():
                answer(True, run_id=cur.run_id if cur is not None else None)
            else:
                answer(False, "no run is active")

    # --- subscriptions -----------------------------------------------------------------------

    def _subscribe(self, client: _Client, msg: dict[str, Any], msg_id: Any) -> None:
        if client.subscribed:
            self._error(client, "already subscribed", msg_id)
            return
        tail = msg.get("tail")
        if tail is not None and (isinstance(tail, bool) or not isinstance(tail, int) or tail < 0):
            self._error(client, "subscribe: tail must be a whole number of events, 0 or more", msg_id)
            return
        mode = msg.get("events", "stream")
        if mode not in EVENT_MODES:
            self._error(client, f"subscribe: events must be one of {', '.join(EVENT_MODES)}, "
                        f"not {json.dumps(mode)[:40]}", msg_id)
            return
        snap = self.engine.snapshot()
        run_id = snap.current.run_id if snap.current is not None else (
            str(snap.last_run["run_id"]) if snap.last_run and snap.last_run.get("run_id") else None)
        # Everything published so far is in the event files (an event is written, then
        # published, with no await between), so their sizes now split catch-up from live.
        run_file = run_event_path(self.settings.events_dir, run_id) if run_id else None
        sched_file = scheduler_event_path(self.settings.events_dir)
        upto = {p: _size(p) for p in (run_file, sched_file) if p is not None}
        recent = [b'{"catchup":true,' + line[1:] for pane in self._recent.values() for line in pane]
        client.subscribed = True
        client.feed = feed = self._files if mode == "file" else self._stream
        client.cursor = feed.end  # live from here: what is published from now on
        feed.subscribers += 1
        reply: dict[str, Any] = {"type": "subscribed", "id": msg_id, "run_id": run_id}
        if mode == "file":
            reply["events"] = "file"
        client.reply(reply)
        first = _dumps({"type": "snapshot", "snapshot": snapshot_to_dict(snap)})  # the first message
        assert client.tg is not None
        client.tg.start_soon(self._catch_up, client, run_file, sched_file, upto, [first, *recent], tail,
                             snap.current is not None, run_id if mode == "file" else None)

    async def _catch_up(self, client: _Client, run_file: Path | None, sched_file: Path,
                        upto: dict[Path, int], around: list[bytes], tail: int | None, active: bool = True,
                        file_run: str | None = None) -> None:
        offset = 0  # a file subscriber's: where in the run's file its live events begin

        def read() -> list[bytes]:
            nonlocal offset
            # the file's own lines, wrapped: no event is decoded and encoded again
            sched = _event_lines_upto(sched_file, upto.get(sched_file, 0), tail=SCHEDULER_TAIL_BYTES)
            out = [_CATCHUP_EVENT + line + b"}\n" for line in sched[-SCHEDULER_CATCHUP:]]
            if run_file is not None:
                lines = _event_lines_upto(run_file, upto.get(run_file, 0), keep_verbose=tail)
                if not active:  # the last run: its last events, as a console that hosts shows
                    lines = lines[-LAST_RUN_EVENTS:]
                out += [_CATCHUP_EVENT + line + b"}\n" for line in lines]
                # a line cut short at subscribe time is not in the catch-up: it is read live
                offset = _complete_upto(run_file, upto.get(run_file, 0))
            return out

        lines = await anyio.to_thread.run_sync(read)
        if client.lagging:
            return
        # the snapshot taken at subscribe time, the files, the recent output, then (from the
        # client's cursor, set at subscribe time) what was published meanwhile
        first, *recent = around
        done: dict[str, Any] = {"type": "caught_up"}
        if client.feed is self._files:
            done.update(events="file", run_id=file_run, offset=offset)
        client.catchup = [first, *lines, *recent, _dumps(done)]
        client.poke()

    def _broadcast(self, body: bytes) -> None:
        """One subscription message, encoded once for every subscriber (once for each kind of
        them): appended to the live logs, from which each client's writer takes it. No work per
        client here."""
        for feed in self._feeds:
            if feed.subscribers:
                feed.append(body)
                self._published(feed)

    def _published(self, feed: _Feed) -> None:
        """A message was appended to a live log: wake the writers that wait for one."""
        if feed.sleepers:
            for client in feed.sleepers:
                client.wake.set()
            feed.sleepers.clear()
        if len(feed.log) > CLIENT_QUEUE_MAX:
            self._cut_laggards()

    def _on_engine(self, msg: EventMessage | OutputMessage) -> None:
        """The engine's subscriber: one JSON line built once (nothing with no subscriber), appended
        to the live log for all of them. File subscribers get no run event: it is noted, and
        :meth:`_send_notices` tells them soon after."""
        if self._loop_thread is not None and threading.get_ident() != self._loop_thread:
            anyio.from_thread.run_sync(self._on_engine, msg, token=self._token)
            return
        if isinstance(msg, EventMessage):
            ev = msg.event
            feed = self._stream
            if feed.subscribers:
                # the event's line as its file has it, wrapped and numbered in one step
                feed.end += 1
                feed.log.append(b'{"n":%d,"type":"event","event":%b}\n' % (feed.end, ev.to_line().encode()))
                self._published(feed)
            if self._files.subscribers:
                if ev.run_id == SCHEDULER_RUN_ID:  # the scheduler's own events come on the socket
                    self._files.append(b'{"type":"event","event":%b}\n' % ev.to_line().encode())
                    self._published(self._files)
                    return
                if self._fresh_run is None and self._notice_wake is not None:
                    self._notice_wake.set()
                elif self._fresh_run != ev.run_id:
                    self._notice()  # another run: the last one's notice first
                self._fresh_run = ev.run_id
                self._fresh_seq = ev.seq
            return
        body = _dumps({"type": "output", "run_id": msg.run_id, "stage": msg.stage,
                       "instrument": msg.instrument, "line": msg.line})
        pane = self._recent.get(msg.stage)
        if pane is not None:
            pane.append(body)  # kept for the catch-ups, subscribers or not
        self._broadcast(body)

    def _notice(self) -> None:
        """Tell the file subscribers that a run's event file has grown (to ``seq``): one message."""
        run_id, self._fresh_run = self._fresh_run, None
        if run_id is None or not self._files.subscribers:
            return
        self.notices += 1
        self._files.append(b'{"type":"events","run_id":%b,"seq":%d}\n' % (json.dumps(run_id).encode(),
                                                                         self._fresh_seq))
        self._published(self._files)

    async def _send_notices(self) -> None:
        """At most one notice every COALESCE_SECONDS, and one soon after any run event (at the
        next turn of the loop after a quiet spell): a flood of events costs a file subscriber a
        message per COALESCE_SECONDS, not one per event."""
        while True:
            self._notice_wake = wake = anyio.Event()
            if self._fresh_run is None:
                await wake.wait()
            self._notice()
            await anyio.sleep(COALESCE_SECONDS)

    async def _watch_snapshot(self) -> None:
        while True:
            await anyio.sleep(SNAPSHOT_SECONDS)
            self._cut_laggards()
            if not any(c.subscribed for c in self.clients):
                self._last_snapshot = None
                continue
            try:
                d = self._snapshot()
            except Exception as exc:  # noqa: BLE001 - the watchers wait for the next one
                self._trouble(f"snapshot: {type(exc).__name__}: {exc}")
                continue
            same = {k: v for k, v in d.items() if k != "now"}
            if same != self._last_snapshot:
                self._last_snapshot = same
                self._broadcast(_dumps({"type": "snapshot", "snapshot": d}))


async def _send_all(sock: socket.socket, data: bytes) -> None:
    """Write all of ``data`` to a non-blocking socket, waiting while it is full."""
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await anyio.wait_writable(sock)
            continue
        view = view[sent:]


def _numbered(first: int, messages: list[bytes]) -> bytes:
    """``messages`` (JSON objects, one per line) as one block, numbered ``first``, ``first`` + 1 …"""
    if not messages:
        return b""
    args: list[Any] = [None] * (2 * len(messages))
    args[0::2] = range(first, first + len(messages))
    args[1::2] = [m[1:] for m in messages]
    return (b'{"n":%d,%b' * len(messages)) % tuple(args)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


_CATCHUP_EVENT = b'{"type":"event","catchup":true,"event":'


def _complete_upto(path: Path, upto: int) -> int:
    """The end of the last complete line in the first ``upto`` bytes of a file (0: none)."""
    try:
        with open(path, "rb") as fh:
            end = upto
            while end > 0:
                start = max(0, end - 65536)
                fh.seek(start)
                i = fh.read(end - start).rfind(b"\n")
                if i >= 0:
                    return start + i + 1
                end = start
    except OSError:
        pass
    return 0


def _event_lines_upto(path: Path, upto: int, *, tail: int | None = None,
                      keep_verbose: int | None = None) -> list[bytes]:
    """The complete, well-formed event lines in the first ``upto`` bytes of an event file (only
    its last ``tail`` bytes with ``tail``); a damaged line is left out. With ``keep_verbose``,
    only the newest that many progress, metric and log events are kept (a log warning or error
    always is), with every other event: the run's story, and its latest detail."""
    if upto <= 0:
        return []
    try:
        with open(path, "rb") as fh:
            start = max(0, upto - tail) if tail else 0
            fh.seek(start)
            data = fh.read(upto - start)
    except OSError:
        return []
    lines = data.split(b"\n")
    if start > 0:
        lines = lines[1:]  # the first one is cut
    if keep_verbose is not None:
        verbose = [i for i, raw in enumerate(lines) if _is_verbose(raw)]
        if len(verbose) > keep_verbose:
            drop = set(verbose[:len(verbose) - keep_verbose])
            lines = [raw for i, raw in enumerate(lines) if i not in drop]
    out = []
    for raw in lines:
        if not raw.strip():
            continue
        try:
            ok = isinstance(json.loads(raw), dict)
        except ValueError:
            ok = False
        if ok:
            out.append(raw.strip())
    return out


def _is_verbose(raw: bytes) -> bool:
    """Whether an event line (as the writer writes it: ``event`` before ``msg`` and ``data``) is
    a progress, metric or log event other than a warning or an error; read from the bytes."""
    i = raw.find(b'"event":"')
    if i < 0:
        return False
    i += 9
    kind = raw[i:raw.find(b'"', i)]
    if kind not in VERBOSE_EVENTS:
        return False
    if kind == b"log":
        low = raw.lower()
        return b'"level":"warning"' not in low and b'"level":"error"' not in low
    return True


# --- the client --------------------------------------------------------------------------------


class Connection:
    """A blocking connection to an engine's control socket (``qtsw ctl``, scripts, tests).

    Opening it says ``hello``; :attr:`hello` holds the engine's answer. :meth:`request` sends one
    message and returns its reply; subscription messages that arrive meanwhile wait in
    :attr:`pending` for :meth:`next_message`.
    """

    def __init__(self, path: Path, *, timeout: float = 10.0, greet: bool = True) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.pending: deque[dict[str, Any]] = deque()
        self._buf = b""
        self._lines: deque[bytes] = deque()  # complete lines received, not yet read
        self._ids = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            with _short_path(self.path) as where:
                self.sock.connect(where)
        except FileNotFoundError:
            self.sock.close()
            raise NoEngine(f"no control socket at {self.path}") from None
        except ConnectionRefusedError:
            self.sock.close()
            raise NoEngine(f"nobody listens on {self.path}") from None
        except OSError as exc:
            self.sock.close()
            raise ControlError(f"{self.path}: cannot connect: {exc.strerror or exc}") from None
        self.hello: dict[str, Any] = {}
        if greet:
            got = self.request({"type": "hello", "version": PROTOCOL_VERSION})
            if got.get("type") != "hello":
                self.close()
                raise ControlError(f"{self.path}: the engine did not greet: {got.get('error') or got}")
            self.hello = got

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, obj: dict[str, Any] | bytes) -> None:
        data = obj if isinstance(obj, bytes) else _dumps(obj)
        self.sock.sendall(data)

    def read_message(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next message from the engine, or None at end of stream; TimeoutError on timeout.
        A line that is not a JSON object comes back as ``{"type": "unreadable", "line": …}``."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            while self._lines:
                line = self._lines.popleft()
                if line.strip():
                    return _decode(line)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.path}: no message within {timeout or self.timeout} s")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 18)
            except TimeoutError:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if self._buf.strip():
                    line, self._buf = self._buf, b""
                    return _decode(line)
                return None
            *complete, self._buf = (self._buf + chunk).split(b"\n")
            self._lines.extend(complete)

    def request(self, obj: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send ``obj`` (given an ``id``) and return its reply."""
        self._ids += 1
        msg_id = self._ids
        self.send({**obj, "id": msg_id})
        while True:
            got = self.read_message(timeout)
            if got is None:
                raise NoEngine(f"{self.path}: the engine closed the connection")
            if got.get("id") == msg_id and "n" not in got:
                return got
            self.pending.append(got)

    def command(self, name: str, **params: Any) -> dict[str, Any]:
        """A command (``run_now``, ``stage``, ``pause``, ``resume``, ``cancel``): its reply,
        ``{"type": "accepted"|"refused", "reason": …}``."""
        return self.request({"type": name, **params})

    def snapshot(self) -> dict[str, Any]:
        return self.request({"type": "snapshot"})["snapshot"]

    def subscribe(self, **params: Any) -> dict[str, Any]:
        """Subscribe (``tail=N``, ``events="file"``: see the module docstring); the reply."""
        return self.request({"type": "subscribe", **params})

    def next_message(self, timeout: float | None = None) -> dict[str, Any] | None:
        if self.pending:
            return self.pending.popleft()
        return self.read_message(timeout)


def _decode(line: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"type": "unreadable", "line": line[:200].decode("utf-8", errors="replace")}
    return obj if isinstance(obj, dict) else {"type": "unreadable", "line": str(obj)[:200]}


def connect(settings: Settings, *, timeout: float = 10.0) -> Connection:
    """A connection to the engine serving this data root; :class:`NoEngine` when none does."""
    return Connection(socket_path(settings), timeout=timeout)
