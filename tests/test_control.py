"""The control socket with real processes: a headless engine (``qtsw --no-ui``) on a sample data
root, and clients on its real socket — the protocol, its commands, subscriptions across a
catch-up, slow and hostile clients, other users, ``qtsw ctl`` and the service-manager notices.

One engine serves the module (starting one costs a second); every test leaves it idle.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from processes import terminate, wait_until

from pipeline_core import catalog, clock, history
from pipeline_core.control import (
    CLIENT_QUEUE,
    MAX_LINE,
    PROTOCOL_VERSION,
    REQUESTS,
    WRITE_COUNT,
    Connection,
    NoEngine,
    socket_path,
)
from pipeline_core.sample import write_samples
from pipeline_core.sdnotify import Notifier
from pipeline_core.settings import Settings, load_settings

END = date(2025, 11, 26)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("QTSW_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def far_schedule() -> str:
    """An HH:MM whose first mark is about a day away: no scheduled run during the test."""
    return (clock.now() - timedelta(minutes=2)).strftime("%H:%M")


def start_engine(root: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``qtsw --no-ui`` on ``root``; its output goes to a file beside the root (a pipe nobody
    reads would fill up and hold the engine's printer)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root.parent / "engine.out", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qtsw_tui", "--root", str(root), "--no-ui", "--schedule", far_schedule()],
            stdout=out, stderr=subprocess.STDOUT, text=True, env=env or clean_env(),
        )
    proc.root = root  # type: ignore[attr-defined]
    return proc


def stop_engine(proc: subprocess.Popen[str]) -> str:
    terminate(proc)
    return (proc.root.parent / "engine.out").read_text()[-3000:]  # type: ignore[attr-defined]


def connect_when_up(path: Path, proc: subprocess.Popen[str], timeout: float = 30.0) -> Connection:
    def attempt() -> Connection | None:
        assert proc.poll() is None, f"the engine exited with {proc.returncode}"
        try:
            return Connection(path)
        except NoEngine:
            return None

    return wait_until(attempt, f"the engine to serve {path}", timeout)


class Served:
    def __init__(self, settings: Settings, proc: subprocess.Popen[str]) -> None:
        self.settings = settings
        self.proc = proc
        self.path = socket_path(settings)

    def connect(self) -> Connection:
        return Connection(self.path)

    def wait_idle(self, conn: Connection, timeout: float = 60.0) -> None:
        wait_until(lambda: conn.snapshot()["current"] is None, "the engine to be idle", timeout)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("control") / "root"
    settings = load_settings(root=root, env={})
    settings.ensure_dirs()
    write_samples(settings, days=30, instruments=["ES", "NQ", "CL"], end=END)
    # a socket file left by an engine that died: the new engine replaces it
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    here = os.getcwd()
    os.chdir(settings.logs_dir)  # a short path: sun_path is 108 bytes
    try:
        stale.bind("qtsw.sock")
    finally:
        os.chdir(here)
    stale.close()
    assert stat.S_ISSOCK(os.lstat(socket_path(settings)).st_mode)
    proc = start_engine(root)
    try:
        connect_when_up(socket_path(settings), proc).close()
        yield Served(settings, proc)
    finally:
        out = stop_engine(proc)
        assert proc.returncode == 0, out
        assert not socket_path(settings).exists(), "the engine left its socket behind"


def read_until_run_ends(conn: Connection, run_id: str, timeout: float = 90.0) -> list[dict[str, Any]]:
    """Subscription messages up to the terminal pipeline event of ``run_id``."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        msg = conn.next_message(max(0.1, deadline - time.monotonic()))
        assert msg is not None, "the engine closed the subscription"
        got.append(msg)
        ev = msg.get("event") or {}
        if ev.get("run_id") == run_id and ev.get("stage") == "pipeline" and ev.get("event") in (
                "success", "failure", "cancelled"):
            return got


def run_events(msgs: list[dict[str, Any]], run_id: str) -> list[int]:
    return [m["event"]["seq"] for m in msgs if m.get("type") == "event" and m["event"]["run_id"] == run_id]


# --- hello, snapshot, commands ------------------------------------------------------------------


def test_hello_snapshot_and_socket_mode(served: Served) -> None:
    st_ = os.lstat(served.path)
    assert stat.S_ISSOCK(st_.st_mode) and stat.S_IMODE(st_.st_mode) == 0o600
    with served.connect() as conn:
        hello = conn.hello
        assert hello["type"] == "hello" and hello["version"] == PROTOCOL_VERSION
        assert hello["pid"] == served.proc.pid and hello["root"] == str(served.settings.root)
        assert hello["hosted_by"] == "headless" and len(hello["settings_hash"]) == 16
        assert hello["started"][:4].isdigit() and hello["engine_version"]
        snap = conn.snapshot()
        assert snap["scheduler"] == "running" and snap["next_mark"]
        assert "current" in snap and "last_run" in snap
        assert conn.request({"type": "ping"})["type"] == "pong"
    # a client that does not say hello first is told so
    with Connection(served.path, greet=False) as raw:
        got = raw.request({"type": "snapshot"})
        assert got["type"] == "error" and "hello" in got["error"]
        got = raw.request({"type": "hello", "version": 99})
        assert got["type"] == "error" and "version" in got["error"]


def test_commands_accepted_and_refused(served: Served) -> None:
    with served.connect() as conn, served.connect() as other:
        served.wait_idle(conn)
        assert conn.command("pause")["type"] == "accepted"
        assert conn.snapshot()["scheduler"] == "paused"
        assert conn.command("pause") == {"type": "accepted", "id": conn._ids, "command": "pause",
                                         "detail": "already paused"}
        assert conn.command("resume")["type"] == "accepted"
        assert conn.snapshot()["scheduler"] == "running"
        refused = conn.command("cancel")
        assert refused["type"] == "refused" and refused["reason"] == "no run is active"
        refused = conn.command("stage", stage="sorter")
        assert refused["type"] == "refused" and "unknown stage" in refused["reason"]

        conn.subscribe()
        started = conn.command("run_now", full=True)
        assert started["type"] == "accepted", started
        run_id = started["run_id"]
        # while it runs, every way of starting another is refused, naming the active run
        for name, params in (("run_now", {}), ("stage", {"stage": "merger"}), ("run_now", {"full": True})):
            refused = other.command(name, **params)
            assert refused["type"] == "refused", refused
            assert refused["reason"] == f"a run is active: {run_id[:8]}"
        msgs = read_until_run_ends(conn, run_id)
        assert msgs[-1]["event"]["event"] == "success"
        assert history.read_runs(served.settings)[-1]["run_id"] == run_id

        # cancel, from another client, while the analyzer runs: held at its end (where it
        # writes the catalogue) so that a warm run cannot end before the cancel arrives
        hold = contextlib.ExitStack()
        hold.enter_context(catalog.hold_writes(served.settings))
        started = conn.command("run_now", full=True)
        assert started["type"] == "accepted"
        run_id = started["run_id"]

        def analyzer_started() -> bool:
            msg = conn.next_message(30)
            ev = (msg or {}).get("event") or {}
            return ev.get("run_id") == run_id and ev.get("stage") == "analyzer" and ev.get("event") == "start"

        try:
            wait_until(analyzer_started, "the analyzer to start")
            cancel = other.command("cancel")
        finally:
            hold.close()
        assert cancel["type"] == "accepted" and cancel["run_id"] == run_id
        msgs = read_until_run_ends(conn, run_id)
        assert msgs[-1]["event"]["event"] == "cancelled"
        assert history.read_runs(served.settings)[-1]["status"] == "cancelled"
    assert served.proc.poll() is None


# --- subscriptions ------------------------------------------------------------------------------


def test_two_clients_subscribed_mid_run_see_the_same_events(served: Served) -> None:
    with served.connect() as a, served.connect() as b:
        served.wait_idle(a)
        # the store up to date first: a translator with files to write would wait for the hold
        # below before the analyzer could start (the module's engine may have run nothing yet)
        assert a.command("stage", stage="translator")["type"] == "accepted"
        served.wait_idle(a)
        a.subscribe()
        # the analyzer processes wait at their end for the catalogue's write lock, so the run is
        # certainly still going when b subscribes (warm stage starts make a run short)
        hold = contextlib.ExitStack()
        hold.enter_context(catalog.hold_writes(served.settings))
        run_id = a.command("run_now", full=True)["run_id"]
        got_a: list[dict[str, Any]] = []

        # b subscribes in the middle of the run: once a has seen the analyzer at work
        def mid_run() -> bool:
            msg = a.next_message(30)
            assert msg is not None
            got_a.append(msg)
            ev = msg.get("event") or {}
            return ev.get("run_id") == run_id and ev.get("stage") == "analyzer" and ev.get("event") != "start"

        wait_until(mid_run, "the analyzer to report")
        reply = b.subscribe()
        hold.close()
        assert reply == {"type": "subscribed", "id": b._ids, "run_id": run_id}
        got_a += read_until_run_ends(a, run_id)
        got_b = read_until_run_ends(b, run_id)

    # a heard everything live from before the start; b caught up mid-run, then went live
    seq_a = run_events(got_a, run_id)
    seq_b = run_events(got_b, run_id)
    assert seq_a == list(range(1, len(seq_a) + 1)), "a missed or doubled an event"
    assert seq_b == seq_a, "b's catch-up and live stream differ from a's"
    mine = [m for m in got_b if m.get("type") == "event" and m["event"]["run_id"] == run_id]
    assert any(m.get("catchup") for m in mine) and not all(m.get("catchup") for m in mine), \
        "the subscription began mid-run: some events caught up, some live"
    ns = [m["n"] for m in got_b]  # consecutive (the live ones are the engine's own count)
    assert ns == list(range(ns[0], ns[0] + len(ns))) and got_b[0]["type"] == "snapshot"
    ns_a = [m["n"] for m in got_a]
    assert ns_a == list(range(ns_a[0], ns_a[0] + len(ns_a)))
    cut = [m["type"] for m in got_b].index("caught_up")
    assert all(m.get("catchup") for m in got_b[1:cut]) and not any(m.get("catchup") for m in got_b[cut:])
    live_a = {m["n"]: m for m in got_a[[m["type"] for m in got_a].index("caught_up") + 1:]}
    live_b = got_b[cut + 1:]
    assert live_b and all(live_a[m["n"]] == m for m in live_b), \
        "a live message has one n, the same for every client"
    # the same events as the run's event file
    text = (served.settings.events_dir / f"pipeline_{run_id}.jsonl").read_text()
    assert [m["event"] for m in mine] == [json.loads(x) for x in text.splitlines()]


def test_a_client_that_never_reads_is_disconnected_and_slows_nothing(served: Served) -> None:
    with served.connect() as conn:
        served.wait_idle(conn)
        lazy = served.connect()
        lazy.subscribe()  # and then never reads
        watcher = served.connect()
        watcher.subscribe()
        hold = contextlib.ExitStack()  # the run goes on (held in the analyzer) during the flood
        hold.enter_context(catalog.hold_writes(served.settings))
        run_id = conn.command("run_now", full=True)["run_id"]
        # a client that does read, all along, in a thread of its own
        seen: dict[str, Any] = {}
        reading = threading.Thread(target=lambda: seen.update(got=read_until_run_ends(watcher, run_id)))
        reading.start()
        # a flood of scheduler events (pause/resume) from a third client while the run goes on:
        # more than CLIENT_QUEUE beyond what the lazy client's socket buffer and its writer's
        # last chunk (WRITE_COUNT messages) take, however few messages the run itself publishes
        # (a warm run, after other tests' runs, publishes few; the catch-up of a small last run
        # does not fill the socket buffer either)
        flood = CLIENT_QUEUE + 3 * WRITE_COUNT
        answered = 0
        for _ in range(flood // 500):
            conn.send(b"".join(json.dumps({"type": t}).encode() + b"\n" for _ in range(250)
                               for t in ("pause", "resume")))
            for _ in range(500):
                msg = conn.read_message(30)
                assert msg is not None and msg["type"] == "accepted"
                answered += 1
        assert answered == flood
        hold.close()
        # the reading client kept up with all of it and saw the run end well
        reading.join(90)
        got = seen["got"]
        assert got[-1]["event"]["event"] == "success"

        def flood_seen() -> int:
            return sum(1 for m in got if m.get("type") == "event" and m["event"]["stage"] == "scheduler")

        # the run may end before the flood's last events reach the reader: it goes on reading them
        while flood_seen() < flood:
            msg = watcher.read_message(30)
            assert msg is not None, f"the reading client got {flood_seen()} of {flood} scheduler events"
            got.append(msg)
        ns = [m["n"] for m in got]
        assert ns == list(range(ns[0], ns[0] + len(ns)))
        # the lazy client is cut off (its writes blocked a second with more than CLIENT_QUEUE
        # messages waiting): the engine closes its end, seen here with its data still unread
        # (before this client reads, which would unblock the engine's writes to it)
        def closed_by_the_engine() -> bool:
            poller = select.poll()
            poller.register(lazy.sock, select.POLLRDHUP)
            return any(ev & (select.POLLRDHUP | select.POLLHUP) for _, ev in poller.poll(0))

        wait_until(closed_by_the_engine, "the engine to cut the lazy client off", timeout=30)
        # reading now reaches the end of its stream
        lazy.sock.settimeout(30)
        received = 0
        lagging = False
        while True:
            msg = lazy.read_message(30)
            if msg is None:
                break
            received += 1
            lagging = lagging or msg.get("type") == "lagging"
        assert received < flood, "the lazy client was never disconnected"
        lazy.close()
        watcher.close()
        assert conn.command("resume")["type"] == "accepted"
        assert conn.snapshot()["scheduler"] == "running"
    assert served.proc.poll() is None


# --- hostile input ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _not_a_request(line: bytes) -> bool:
    if not line.strip():
        return False
    try:
        obj = json.loads(line)
    except ValueError:
        return True
    return not (isinstance(obj, dict) and obj.get("type") in REQUESTS)


bad_lines = st.one_of(
    st.binary(min_size=1, max_size=300).map(lambda b: b.replace(b"\n", b" ")),
    st.text(max_size=200).map(lambda t: t.replace("\n", " ").encode("utf-8", "surrogatepass")),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.text(max_size=10), json_values, max_size=4).map(lambda d: json.dumps(d).encode()),
    st.builds(lambda t, rest: json.dumps({**rest, "type": t}).encode(),
              json_values, st.dictionaries(st.text(max_size=6), json_values, max_size=3)),
    # known requests with bad parameters: an error, and no run
    st.builds(lambda full: json.dumps({"type": "run_now", "full": full}).encode(),
              json_values.filter(lambda v: not isinstance(v, bool))),
    st.builds(lambda v: json.dumps({"type": "hello", "version": v}).encode(),
              json_values.filter(lambda v: v != PROTOCOL_VERSION or isinstance(v, bool))),
).filter(_not_a_request)


def test_malformed_oversized_and_unknown_messages_get_errors(served: Served) -> None:
    with served.connect() as conn:
        served.wait_idle(conn)
        runs_before = len(history.read_runs(served.settings))

        @hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(line=bad_lines)
        def each(line: bytes) -> None:
            conn.send(line + b"\n")
            reply = conn.read_message(10)
            assert reply is not None and reply["type"] == "error", (line, reply)
            assert reply["error"]

        each()
        # a line longer than the limit, in pieces, then one more than the limit at once
        big = b'{"type":"ping","pad":"' + b"x" * MAX_LINE
        for i in range(0, len(big), 10_000):
            conn.send(big[i:i + 10_000])
        conn.send(b'"}\n')
        reply = conn.read_message(10)
        assert reply["type"] == "error" and "too long" in reply["error"]
        conn.send(b"y" * (MAX_LINE + 1) + b"\n")
        reply = conn.read_message(10)
        assert reply["type"] == "error" and "too long" in reply["error"]
        # a subscription's tail is a whole number of events, 0 or more
        for tail in (-1, True, 2.5, "10", [3]):
            reply = conn.request({"type": "subscribe", "tail": tail})
            assert reply["type"] == "error" and "tail" in reply["error"], (tail, reply)
        # … and its events come on the socket ("stream") or from the run's file ("file")
        for mode in ("socket", "", None, 1, True, ["file"], {"file": 1}, "FILE"):
            reply = conn.request({"type": "subscribe", "events": mode})
            assert reply["type"] == "error" and "events must be one of stream, file" in reply["error"], (mode, reply)
        # the connection goes on, and the engine too
        assert conn.request({"type": "ping"})["type"] == "pong"
        assert conn.snapshot()["current"] is None
        assert len(history.read_runs(served.settings)) == runs_before
    assert served.proc.poll() is None


# --- other users --------------------------------------------------------------------------------


def _connect_as_nobody(logs: Path) -> str:
    """A child process that becomes ``nobody`` and tries the socket; what happened, as text."""
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no threads of its own
        result = "?"
        try:
            os.close(read_end)
            os.chdir(logs)  # as root; the folders above may be closed to nobody
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            try:
                s.connect("qtsw.sock")
            except PermissionError:
                result = "permission denied"
            else:
                data = b""  # the engine speaks first: it refuses before reading anything
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                result = "closed after: " + data.decode()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            result = f"child error: {exc!r}"
        finally:
            os.write(write_end, result.encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        out = fh.read().decode()
    os.waitpid(pid, 0)
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user (nobody)")
def test_a_peer_with_another_uid_is_refused(served: Served) -> None:
    logs = served.settings.logs_dir
    # the socket's mode alone keeps other users out
    assert _connect_as_nobody(logs) == "permission denied"
    # and were its mode loosened, the engine checks the peer's uid itself
    os.chmod(served.path, 0o666)
    try:
        got = _connect_as_nobody(logs)
    finally:
        os.chmod(served.path, 0o600)
    assert got.startswith("closed after: "), got
    reply = json.loads(got[len("closed after: "):])
    assert reply["type"] == "error" and "refused" in reply["error"]
    assert f"uid {pwd.getpwnam('nobody').pw_uid}" in reply["error"]
    with served.connect() as conn:  # the engine's own user still gets in
        assert conn.snapshot()["scheduler"] == "running"


# --- qtsw ctl -----------------------------------------------------------------------------------


def ctl(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qtsw_tui", "--root", str(root), "ctl", *args],
                          capture_output=True, text=True, env=clean_env(), timeout=60)


def test_qtsw_ctl_commands_and_exit_codes(served: Served, tmp_path: Path) -> None:
    root = served.settings.root
    with served.connect() as conn:
        served.wait_idle(conn)
        got = ctl(root, "status")
        assert got.returncode == 0, got.stderr
        assert f"pid {served.proc.pid} (headless)" in got.stdout and "run:       idle" in got.stdout
        got = ctl(root, "status", "--json")
        assert got.returncode == 0 and json.loads(got.stdout)["engine"]["pid"] == served.proc.pid
        got = ctl(root, "pause")
        assert (got.returncode, got.stdout.strip()) == (0, "accepted: pause")
        assert conn.snapshot()["scheduler"] == "paused"
        got = ctl(root, "resume")
        assert got.returncode == 0 and conn.snapshot()["scheduler"] == "running"
        got = ctl(root, "cancel")
        assert got.returncode == 4 and "no run is active" in got.stderr

        conn.subscribe()
        hold = contextlib.ExitStack()  # the run stays in the analyzer until the cancel lands
        hold.enter_context(catalog.hold_writes(served.settings))
        got = ctl(root, "run-now", "--full")
        assert got.returncode == 0 and got.stdout.startswith("accepted: run-now (run "), got.stderr
        run_id = conn.snapshot()["current"]["run_id"]
        assert run_id[:8] in got.stdout
        got = ctl(root, "stage", "merger")
        assert got.returncode == 4 and f"a run is active: {run_id[:8]}" in got.stderr
        got = ctl(root, "cancel")
        assert got.returncode == 0, got.stderr
        hold.close()
        assert read_until_run_ends(conn, run_id)[-1]["event"]["event"] == "cancelled"
        got = ctl(root, "stage", "merger")
        assert got.returncode == 0, got.stderr
        merger_run = conn.snapshot()["current"]
        if merger_run is not None:
            read_until_run_ends(conn, merger_run["run_id"])
        assert history.read_runs(served.settings)[-1]["trigger"] == "stage"
    # bad arguments, and a data root without an engine
    assert ctl(root, "stage", "sorter").returncode == 4
    empty = tmp_path / "empty"
    got = ctl(empty, "status")
    assert got.returncode == 4 and "no engine is running" in got.stderr
    got = ctl(empty, "run-now")
    assert got.returncode == 4 and "no control socket" in got.stderr


# --- the service manager ------------------------------------------------------------------------


def test_notify_protocol_against_a_datagram_socket(tmp_path: Path) -> None:
    root = tmp_path / "root"
    name = f"qtsw-test-{uuid.uuid4().hex[:8]}"
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind("\0" + name)  # the abstract namespace, as systemd may hand out ('@' in the variable)
    manager.settimeout(30)
    proc = start_engine(root, clean_env(NOTIFY_SOCKET="@" + name, WATCHDOG_USEC="400000"))
    received: list[str] = []
    try:
        ready = manager.recv(4096).decode()
        received.append(ready)
        fields = dict(line.split("=", 1) for line in ready.splitlines())
        assert fields["READY"] == "1" and fields["MAINPID"] == str(proc.pid)
        assert "schedule running" in fields["STATUS"]
        # ready means the lock is held and the socket serves
        s = load_settings(root=root, env={})
        with Connection(socket_path(s)) as conn:
            assert conn.hello["pid"] == proc.pid
        pings = 0
        deadline = time.monotonic() + 20
        while pings < 3:
            assert time.monotonic() < deadline, received
            msg = manager.recv(4096).decode()
            received.append(msg)
            pings += msg == "WATCHDOG=1"
        proc.send_signal(signal.SIGTERM)
        while True:
            msg = manager.recv(4096).decode()
            received.append(msg)
            if msg.startswith("STOPPING=1"):
                break
        assert proc.wait(30) == 0
    finally:
        stop_engine(proc)
        manager.close()
    assert received[0].startswith("READY=1")


def test_notifier_without_notify_socket_sends_nothing(tmp_path: Path) -> None:
    env: dict[str, str] = {"WATCHDOG_USEC": "1000000"}
    quiet = Notifier(env)
    assert not quiet.enabled and quiet.watchdog_seconds is None
    assert quiet.ready("x") is False and quiet.watchdog() is False and quiet.stopping() is False
    # with a path socket, and a watchdog meant for another process
    path = tmp_path / "notify"
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(path))
    manager.settimeout(5)
    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    loud = Notifier(env)
    assert loud.enabled and loud.watchdog_seconds is None and env == {}  # hidden from stages
    assert loud.status("schedule running") and not loud.status("schedule running")
    assert manager.recv(100) == b"STATUS=schedule running"
    assert loud.stopping("bye") and not loud.stopping()
    assert manager.recv(100) == b"STOPPING=1\nSTATUS=bye"
    loud.close()
    manager.close()


def test_a_tail_catch_up_keeps_the_runs_story_and_its_newest_detail(tmp_path: Path) -> None:
    """``subscribe`` with ``tail``: of a run's event file, every event but progress, metric and
    log ones, log warnings and errors too, and only the newest ``tail`` of the rest."""
    from pipeline_core.control import _event_lines_upto
    from pipeline_core.events import EventWriter

    path = tmp_path / "pipeline_r.jsonl"
    with EventWriter(path, "r") as w:
        w.emit("pipeline", "start", "run")
        w.emit("translator", "start", "translator")
        for i in range(10):
            w.emit("translator", "metric", f"m{i}", {"i": i})
        w.emit("translator", "log", "disk nearly full", {"level": "WARNING"})
        w.emit("translator", "log", "bad row", {"level": "error"})
        for i in range(10):
            w.emit("translator", "progress", f"p{i}", {"done": i, "total": 10})
        w.emit("translator", "log", "chatter", {"level": "info"})
        w.emit("translator", "success", "done")
        w.emit("pipeline", "success", "run")
    size = path.stat().st_size

    def msgs(tail: int | None) -> list[str]:
        return [json.loads(line)["msg"] for line in _event_lines_upto(path, size, keep_verbose=tail)]

    everything = [json.loads(line)["msg"] for line in path.read_text().splitlines()]
    assert msgs(None) == everything and msgs(1000) == everything
    assert msgs(3) == ["run", "translator", "disk nearly full", "bad row", "p8", "p9", "chatter", "done", "run"]
    assert msgs(0) == ["run", "translator", "disk nearly full", "bad row", "done", "run"]


# --- file subscribers ---------------------------------------------------------------------------


def _read_until_notice(conn: Connection, run_id: str, last_seq: Callable[[], int | None],
                       timeout: float = 120.0) -> list[dict[str, Any]]:
    """A file subscriber's messages up to the notice of ``run_id``'s last event (``last_seq()``:
    None until the run has ended)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        msg = conn.next_message(max(0.1, deadline - time.monotonic()))
        assert msg is not None, "the engine closed the subscription"
        got.append(msg)
        if msg.get("type") == "events" and msg.get("run_id") == run_id:
            last = last_seq()
            if last is not None and msg["seq"] == last:
                return got


def test_file_subscribers_get_notices_and_read_the_runs_file(tmp_path: Path) -> None:
    """``"events":"file"``: no run event on the socket, a notice now and then instead; the run's
    file read from the offset ``caught_up`` gives holds exactly the events after the catch-up,
    for a client subscribed before the run and one subscribed in the middle of its flood. A
    stream subscriber on the same engine still gets every event on the socket."""
    from pipeline_core.events import run_event_path

    events = 20_000
    root = tmp_path / "root"
    settings = load_settings(root=root, env={})
    settings.ensure_dirs()
    write_samples(settings, days=1, instruments=["ES"], end=END)  # work for the translator
    gate = tmp_path / "gate"
    with open(tmp_path / "engine.out", "wb") as out:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("flood_engine.py")), str(root),
                                 str(events), str(gate)], stdout=out, stderr=subprocess.STDOUT, env=clean_env())
    try:
        path = socket_path(settings)
        with connect_when_up(path, proc) as conn, Connection(path) as stream, Connection(path) as early, \
                Connection(path) as late:
            stream.subscribe()
            assert early.subscribe(events="file")["events"] == "file"
            run_id = conn.command("run_now")["run_id"]
            run_file = run_event_path(settings.events_dir, run_id)
            # the stream subscriber reads all along (in a thread: a flood would cut it off)
            seen: dict[str, Any] = {}
            reading = threading.Thread(target=lambda: seen.update(got=read_until_run_ends(stream, run_id)))
            reading.start()
            halfway = b'"msg":"metric %d"' % (events // 2 - 1)
            wait_until(lambda: run_file.exists() and halfway in run_file.read_bytes(), "the stage at its gate")
            size = run_file.stat().st_size
            gate.touch()
            # in the middle of the flood: once the stage's second half is being written
            wait_until(lambda: run_file.stat().st_size > size + 10_000, "the flood to go on")
            reply = late.subscribe(events="file")
            assert reply == {"type": "subscribed", "id": late._ids, "run_id": run_id, "events": "file"}

            def last_seq() -> int | None:
                if not history.read_runs(settings):
                    return None
                return json.loads(run_file.read_bytes().splitlines()[-1])["seq"]

            got_late = _read_until_notice(late, run_id, last_seq)
            got_early = _read_until_notice(early, run_id, last_seq)
            reading.join(120)
            got_stream = seen["got"]
            # the scheduler's own events still come on the socket, to every subscriber
            assert conn.command("pause")["type"] == "accepted"
            assert conn.command("resume")["type"] == "accepted"
            for sub, got in ((late, got_late), (early, got_early)):
                while sum(1 for m in got if (m.get("event") or {}).get("run_id") == "scheduler"
                          and not m.get("catchup")) < 2:
                    msg = sub.next_message(30)
                    assert msg is not None
                    got.append(msg)
        assert proc.poll() is None
    finally:
        terminate(proc)

    data = run_file.read_bytes()
    logged = [json.loads(line) for line in data.splitlines()]
    seqs = [e["seq"] for e in logged]
    assert seqs == list(range(1, len(logged) + 1)) and len(logged) > events
    assert history.read_runs(settings)[-1]["run_id"] == run_id
    assert run_events(got_stream, run_id) == seqs, "the stream subscriber got every event on the socket"

    def read_from(offset: int) -> list[int]:
        assert offset == 0 or data[offset - 1:offset] == b"\n", "the offset is at a line's start"
        return [json.loads(line)["seq"] for line in data[offset:].splitlines()]

    for got, caught in ((got_late, True), (got_early, False)):
        ns = [m["n"] for m in got]
        assert ns == list(range(ns[0], ns[0] + len(ns))), "n is consecutive"
        cut = [m["type"] for m in got].index("caught_up")
        done = got[cut]
        assert done["events"] == "file"
        mine = run_events(got, run_id)
        assert all(m.get("catchup") for m in got[:cut] if m.get("type") == "event")
        assert not any(m.get("type") == "event" and m["event"]["run_id"] != "scheduler" for m in got[cut:]), \
            "no run event on a file subscriber's socket"
        notices = [m for m in got[cut:] if m.get("type") == "events"]
        assert all(m["run_id"] == run_id for m in notices)
        assert [m["seq"] for m in notices] == sorted({m["seq"] for m in notices}), "each notice names newer events"
        if caught:  # subscribed mid-flood: the run's events so far, then the rest from its file
            assert done["run_id"] == run_id and mine == list(range(1, len(mine) + 1)) and mine
            after = read_from(done["offset"])
            assert mine + after == seqs, "the catch-up and the file from its offset: no gap, no duplicate"
            assert len(after) > 1000, "the client subscribed while the run was writing its events"
            assert len(notices) < len(after) // 4, "notices are coalesced, not one per event"
        else:  # subscribed before the run: every event of the run from its file
            assert done["run_id"] is None and done["offset"] == 0 and not mine
            assert read_from(0) == seqs
    # the two file subscribers' live messages: one n, the same message for both
    live_early = {m["n"]: m for m in got_early if not m.get("catchup")}
    live_late = [m for m in got_late[[m["type"] for m in got_late].index("caught_up") + 1:]]
    assert live_late and all(live_early[m["n"]] == m for m in live_late if m["n"] in live_early)
