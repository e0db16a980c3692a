"""A console attached to a headless engine in another process, driven with Pilot.

The engine is ``qtsw --no-ui`` (real stages, sample exports); the console is ``build_app`` over
a :class:`RemoteEngine` on the engine's real socket. Its keys act on the engine, its screens
show the engine's run, quitting leaves the engine alone, and when the engine goes away the
console says so and reattaches to the next one. Waits poll with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from processes import terminate
from test_control import clean_env, start_engine, stop_engine

from pipeline_core import catalog, history
from pipeline_core.control import Connection, NoEngine, socket_path
from pipeline_core.remote import READ_BYTES, RemoteEngine
from pipeline_core.sample import write_samples
from pipeline_core.settings import load_settings
from qtsw_tui.app import EVENT_WINDOW, QtswApp, build_app
from qtsw_tui.screens.confirm import ConfirmScreen
from qtsw_tui.widgets.event_table import EVENT, KEY, RUN, EventsPanel
from qtsw_tui.widgets.header import StatusHeader
from qtsw_tui.widgets.stage_pane import StagePane

pytestmark = pytest.mark.anyio
DEADLINE = 60.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def wait_for(pilot, cond: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; header: {header(pilot.app)!r}")
        await pilot.pause(0.05)


def header(app) -> str:
    return str(app.query_one("#header", StatusHeader).render())


def engine_snapshot(settings) -> dict:
    with Connection(socket_path(settings)) as conn:
        return conn.snapshot()


def wait_serving(settings, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, "the engine exited"
        try:
            Connection(socket_path(settings)).close()
            return
        except NoEngine:
            assert time.monotonic() < deadline, "the engine never served its socket"
            time.sleep(0.05)


async def test_attached_console_drives_the_engine_and_reattaches(tmp_path: Path) -> None:
    root = tmp_path / "root"
    settings = load_settings(root=root, env={})
    settings.ensure_dirs()
    write_samples(settings, days=20, instruments=["ES", "NQ"], end=date(2025, 11, 26))
    proc = start_engine(root)
    second = None
    try:
        wait_serving(settings, proc)
        remote = RemoteEngine(settings, reconnect_seconds=0.1)
        stepped: list[str] = []  # the header when the console stepped back (on_attached)
        app = build_app(settings, remote, {"control": True, "on_attached": lambda: stepped.append(header(app))})
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: f"attached pid {proc.pid}" in header(app), "the console to attach")
            # it steps back once its screen shows the engine's state, not before
            await wait_for(pilot, lambda: stepped, "the console to step back")
            assert f"attached pid {proc.pid}" in stepped[0] and "schedule running" in stepped[0]
            # r: a run in the engine, its events and output on this console
            await pilot.press("r")
            await wait_for(pilot, lambda: history.read_runs(settings), "the run to end")
            [run] = history.read_runs(settings)
            assert run["status"] == "success" and run["trigger"] == "manual"
            await wait_for(pilot, lambda: app.flushed["events"] and not remote.busy, "the console to show it")
            pane = app.query_one("#pane-translator", StagePane)
            # the run's lines reach the pane at the console's next flush after they arrived
            await wait_for(pilot, lambda: any(run["run_id"][:8] in line for line in pane.lines),
                           "the translator pane to show the run")
            assert app.received["lines"] > 0
            # p: the engine's schedule pauses, and resumes
            await pilot.press("p")
            assert engine_snapshot(settings)["scheduler"] == "paused"
            await pilot.press("p")
            assert engine_snapshot(settings)["scheduler"] == "running"
            # a: one stage; c: cancel it (asks first)
            await pilot.press("a")
            await wait_for(pilot, lambda: len(history.read_runs(settings)) == 2, "the analyzer run")
            assert history.read_runs(settings)[-1]["trigger"] == "stage"
            write_samples(settings, days=25, instruments=["CL", "GC", "NG"], end=date(2025, 11, 26))
            # new exports, and the catalogue's write lock held: the run waits at its first record
            # until the cancel has landed (with warm stage starts it is otherwise soon over)
            hold = contextlib.ExitStack()
            hold.enter_context(catalog.hold_writes(settings))
            await pilot.press("r")
            await wait_for(pilot, lambda: remote.busy, "the run to show as active")
            await pilot.press("c")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
            await pilot.press("y")
            await wait_for(pilot, lambda: not remote.busy, "the cancel to land")
            hold.close()
            await wait_for(pilot, lambda: len(history.read_runs(settings)) == 3, "the third run to end")
            assert history.read_runs(settings)[-1]["status"] == "cancelled"

            # the engine goes away: the console says so, and attaches to the next one
            stop_engine(proc)
            await wait_for(pilot, lambda: "detached" in header(app), "the console to notice")
            assert any("went away" in str(n.message) for n in app._notifications)
            second = start_engine(root)
            await wait_for(pilot, lambda: f"attached pid {second.pid}" in header(app), "the console to reattach")
            assert len(stepped) == 1  # once in the console's life
            # q: the attached console leaves at once; the engine stays
            await pilot.press("q")
            await wait_for(pilot, lambda: not app.is_running, "the console to quit")
        assert second.poll() is None
        assert engine_snapshot(settings)["scheduler"] == "running"
    finally:
        stop_engine(proc)
        if second is not None:
            stop_engine(second)


def test_attach_without_an_engine_exits_4(tmp_path: Path) -> None:
    from processes import run_in_a_pty

    load_settings(root=tmp_path / "r", env={}).ensure_dirs()  # a data root, with no engine on it
    code, said = run_in_a_pty([sys.executable, "-m", "qtsw_tui", "--root", str(tmp_path / "r"), "--attach"],
                              clean_env())
    assert code == 4 and "no engine is running" in said, said


async def test_an_attaching_console_has_the_engines_state_before_its_catch_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attaching during a flood, the catch-up is read from the run's event file, which takes the
    engine a moment: the console has the engine's state (what its header shows) without waiting
    for it. The real engine and server on this test's loop; their catch-up read is held until
    the test lets it go."""
    import threading
    from functools import partial

    from processes import alive

    from pipeline_core import clock, control
    from pipeline_core.control import ControlServer
    from pipeline_core.engine import Engine
    from pipeline_core.lock import EngineLock

    settings = load_settings(root=tmp_path / "root", env={})
    settings.ensure_dirs()
    gate = threading.Event()
    read = control._event_lines_upto

    def held(*args: object, **kwargs: object) -> list[bytes]:
        gate.wait(30)  # (in the server's worker thread)
        return read(*args, **kwargs)

    monkeypatch.setattr(control, "_event_lines_upto", held)
    with EngineLock.for_settings(settings):
        engine = Engine(settings)
        server = ControlServer(engine, settings)
        server.open()
        remote = RemoteEngine(settings, reconnect_seconds=0.05)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve)
                tg.start_soon(partial(engine.serve, not_before=clock.now() + timedelta(hours=1)))
                tg.start_soon(remote.serve)
                with anyio.fail_after(30):
                    while not (remote.connected and remote.scheduler_state == "running"):
                        await anyio.sleep(0.01)
                assert not remote.caught_up  # the catch-up is still being read
                gate.set()
                with anyio.fail_after(30):
                    while not remote.caught_up:
                        await anyio.sleep(0.01)
                launcher = engine.launcher.pid if engine.launcher is not None else None
                assert launcher is None or alive(launcher)
                remote.stop()
                engine.stop()
                tg.cancel_scope.cancel()
        finally:
            gate.set()
            server.close()
    assert launcher is None or not alive(launcher), "the engine's warm launcher outlived it"


STEP_BACK = """
import json, sys, threading
from pathlib import Path
from pipeline_core.remote import step_back
from pipeline_core.settings import load_settings
before = threading.Thread(target=sys.stdin.readline)  # a thread there before it steps back
before.start()
step_back(load_settings(root=Path(sys.argv[1]), env={}, overrides=json.loads(sys.argv[2])))
later = threading.Thread(target=before.join)  # and one started after
later.start()
print("stepped back", flush=True)
later.join()
"""


@pytest.mark.parametrize("idle", [True, False])
def test_an_attached_console_steps_back_every_thread_of_it(tmp_path: Path, idle: bool) -> None:
    """``step_back`` (what an attached console calls once it shows the engine): each thread's
    nice value lowered by ``console.attached_nice`` and, with ``console.attached_idle``, the idle
    policy (SCHED_IDLE); without it, the policy it had. Read from /proc, in a process of its own
    (neither can be undone)."""
    from processes import priorities

    overrides = {"console.attached_nice": 7, "console.attached_idle": idle}
    proc = subprocess.Popen([sys.executable, "-c", STEP_BACK, str(tmp_path / "r"), json.dumps(overrides)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=clean_env())
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "stepped back\n"
        policy = os.SCHED_IDLE if idle else os.sched_getscheduler(0)
        assert priorities(proc.pid) == {(min(19, os.nice(0) + 7), policy)}
        assert len(os.listdir(f"/proc/{proc.pid}/task")) == 3
    finally:
        proc.communicate("\n", timeout=30)
    assert proc.returncode == 0


def test_attached_console_in_tmux_killed_mid_run_leaves_the_run_alone(tmp_path: Path) -> None:
    """An operator's console attached over SSH at 80x24, its terminal gone mid-run: the run
    ends ``success`` in the engine, which still runs and still holds the lock."""
    from processes import alive, command_process, priorities
    from test_console_tmux import QTSW, TMUX, poll, tmux

    from pipeline_core.lock import lock_holder

    root = tmp_path / "root"
    settings = load_settings(root=root, env={})
    settings.ensure_dirs()
    write_samples(settings, days=15, instruments=["ES", "NQ", "CL"], end=date(2025, 11, 26))
    proc = start_engine(root)
    sock, session = f"qtsw-test-{uuid.uuid4().hex[:8]}", "console"
    env = clean_env(TERM="xterm-256color", LANG="C.UTF-8", LC_ALL="C.UTF-8")
    env.pop("TMUX", None)
    try:
        wait_serving(settings, proc)
        subprocess.run([TMUX, "-L", sock, "-f", "/dev/null", "new-session", "-d", "-s", session,
                        "-x", "80", "-y", "24", f"{QTSW} --root {root}"], env=env, check=True, timeout=20)
        first = poll(sock, session, lambda t: f"attached pid {proc.pid}" in t, "the console to attach")
        assert max(len(line) for line in first.splitlines()) <= 80
        # the run is held in its translator (the catalogue's write lock) until the terminal is
        # gone: a warm run of this size can be over between two looks at the screen
        with catalog.hold_writes(settings):
            tmux(sock, "send-keys", "-t", session, "r")
            poll(sock, session, lambda t: "▶ run" in t, "the run to show as running")
            pane_pid = int(tmux(sock, "display-message", "-p", "-t", session, "#{pane_pid}").stdout)
            # the attached console stepped back, every thread of it (console.attached_nice; the
            # idle policy is not the default): the engine has the cores first
            console = command_process(pane_pid, "qtsw")
            assert priorities(console) == {(min(19, os.nice(0) + 19), os.sched_getscheduler(0))}
            assert priorities(proc.pid) == {(os.nice(0), os.sched_getscheduler(0))}
            tmux(sock, "kill-session", "-t", session)  # the terminal hangs up
            deadline = time.monotonic() + 30
            while alive(pane_pid):
                assert time.monotonic() < deadline, "the console outlived its terminal"
                time.sleep(0.1)
            assert not history.read_runs(settings), "the run ended before the terminal was gone"
        deadline = time.monotonic() + 90
        while not history.read_runs(settings):
            assert time.monotonic() < deadline, "the run never ended"
            time.sleep(0.1)
        [run] = history.read_runs(settings)
        assert run["status"] == "success" and run["trigger"] == "manual"
        assert proc.poll() is None
        assert lock_holder(settings.lock_file)["pid"] == proc.pid
    finally:
        tmux(sock, "kill-server", check=False)
        stop_engine(proc)


async def test_a_hosting_console_serves_the_socket(tmp_path: Path) -> None:
    from pipeline_core.engine import Engine

    settings = load_settings(root=tmp_path / "root", env={})
    settings.ensure_dirs()
    app = build_app(settings, Engine(settings), {"control": True})
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: socket_path(settings).exists(), "the socket")
        await wait_for(pilot, lambda: header(app).splitlines()[1].startswith("hosting"), "the header")

        def script() -> tuple[str, str]:  # a blocking client: off the console's loop, which serves it
            with Connection(socket_path(settings)) as conn:
                return conn.hello["hosted_by"], conn.command("run_now")["type"]

        assert await anyio.to_thread.run_sync(script) == ("console", "accepted")
        await wait_for(pilot, lambda: history.read_runs(settings), "the run")
        await wait_for(pilot, lambda: app.flushed["events"] > 0, "the console to show its events")
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, "the console to quit")
    assert not socket_path(settings).exists()


def _seqs(panel: EventsPanel, run_id: str) -> list[int]:
    """The seqs of ``run_id``'s events in a console's event store (the table's data), in order."""
    return [int(rec[KEY].rsplit(":", 1)[1]) for rec in panel.store.records() if rec[RUN] == run_id]


def _row_seqs(panel: EventsPanel, run_id: str) -> list[int]:
    """The seqs of ``run_id``'s events in a console's event table rows (its bounded window)."""
    keys = [str(key.value) for key in panel.table.rows]
    return [int(k.rsplit(":", 1)[1]) for k in keys if k.startswith(f"{run_id}:")]


async def test_two_consoles_attached_at_once_see_the_same_events(tmp_path: Path) -> None:
    """Two consoles on one engine whose run writes thousands of events (each reads them from the
    run's event file, as a console does by default): one attached from the start, one attaching mid-run (its catch-up bounded to the run's story and its newest 100
    detail events, as a console asks). Both end with the run's events in their event stores and
    tables with no gap and no duplicate: the first all of them, as the run's event file has them;
    the second every event from the first one its catch-up kept on, and every start and end."""
    events, tail = 6000, 100
    root = tmp_path / "root"
    settings = load_settings(root=root, env={})
    settings.ensure_dirs()
    write_samples(settings, days=1, instruments=["ES"], end=date(2025, 11, 26))  # work for the translator
    gate = tmp_path / "gate"
    with open(tmp_path / "engine.out", "wb") as out:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("flood_engine.py")), str(root),
                                 str(events), str(gate)], stdout=out, stderr=subprocess.STDOUT, env=clean_env())
    try:
        wait_serving(settings, proc)
        first = RemoteEngine(settings, reconnect_seconds=0.1, catchup_tail=tail)
        second = RemoteEngine(settings, reconnect_seconds=0.1, catchup_tail=tail)
        app1 = build_app(settings, first, {})
        app2 = build_app(settings, second, {})
        async with app1.run_test(size=(120, 40)) as p1:  # wide: the event table is on screen
            await wait_for(p1, lambda: f"attached pid {proc.pid}" in header(app1), "the first console to attach")
            for key in ("e", "v"):  # the table, verbose: metric events are rows too
                await p1.press(key)
            panel1 = app1.query_one("#events", EventsPanel)
            assert panel1.verbose
            await p1.press("r")
            await wait_for(p1, lambda: first.busy, "the run to start")
            run_id = first.snapshot().current.run_id
            # mid-run: the stage waits at its gate with half its events written
            await wait_for(p1, lambda: len(_seqs(panel1, run_id)) > events // 2, "half the run's events")
            async with app2.run_test(size=(120, 40)) as p2:
                await wait_for(p2, lambda: f"attached pid {proc.pid}" in header(app2), "the second console")
                for key in ("e", "v"):
                    await p2.press(key)
                panel2 = app2.query_one("#events", EventsPanel)
                await wait_for(p2, lambda: _seqs(panel2, run_id), "the second console's catch-up")
                assert first.busy, "the run was still going when the second console attached"
                gate.touch()
                await wait_for(p2, lambda: history.read_runs(settings), "the run to end", timeout=120)

                def ended(app: QtswApp, panel: EventsPanel) -> bool:
                    return not app.engine.busy and bool(panel.store.records()) and \
                        panel.store.records()[-1][EVENT] == "success" and not app._events

                await wait_for(p2, lambda: ended(app1, panel1) and ended(app2, panel2), "both consoles to show the end")
                # the tables draw their rows at most once a second in a flood: wait for the last
                await wait_for(p2, lambda: not panel1._stale and not panel2._stale, "the tables' last rows")
                stored1, stored2 = _seqs(panel1, run_id), _seqs(panel2, run_id)
                # both read the run's live events from its file (the engine sent them notices)
                assert first.file_events and first.file_reads and second.file_reads
                assert first.bad_lines == second.bad_lines == 0
                rows1, rows2 = _row_seqs(panel1, run_id), _row_seqs(panel2, run_id)
        assert proc.poll() is None, "the engine outlived both consoles"
    finally:
        terminate(proc)

    [run] = history.read_runs(settings)
    assert run["status"] == "success" and run["run_id"] == run_id
    lines = (settings.events_dir / f"pipeline_{run_id}.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in lines]
    assert [e["seq"] for e in logged] == list(range(1, len(logged) + 1)) and len(logged) > events
    # the first console: every event of the run, once, in order
    assert stored1 == [e["seq"] for e in logged]
    # the second: caught up mid-run with the run's story and its newest `tail` detail events,
    # then live; from its first detail event on, every event, once, in order
    detail = [e["seq"] for e in logged if e["event"] in ("progress", "metric", "log")]
    since = next(s for s in stored2 if s in set(detail))
    assert stored2 == [e["seq"] for e in logged if e["seq"] >= since or e["seq"] not in set(detail)]
    # it attached while the stage waited at its gate, metrics 0 … events/2 - 1 written: it caught
    # up with the newest `tail` of them, and every start before
    by_msg = {e["msg"]: e["seq"] for e in logged}
    assert since == by_msg[f"metric {events // 2 - tail}"] and len(stored2) < len(stored1)
    # the tables: both show the same newest rows, the run's last events (a window of EVENT_WINDOW)
    assert rows1 == rows2 == [e["seq"] for e in logged][-EVENT_WINDOW:]


async def test_a_console_reading_a_runs_file_skips_damage_and_waits_for_whole_lines(tmp_path: Path) -> None:
    """What a console in file mode does on the engine's notices, on a real event file: it reads
    from the offset its catch-up ended at, hands on each event once in order, skips (and counts)
    a line that is not an event, leaves a line the writer has not finished for the next notice,
    reads a line longer than its chunk, and starts a new run's file at its beginning."""
    from pipeline_core.events import Event, run_event_path
    from pipeline_core.runstate import EventMessage

    settings = load_settings(root=tmp_path / "root", env={})
    settings.ensure_dirs()
    remote = RemoteEngine(settings)
    got: list[tuple[str, int]] = []
    remote.subscribe(lambda m: got.append((m.event.run_id, m.event.seq)) if isinstance(m, EventMessage) else None)

    def line(run_id: str, seq: int, msg: str = "m") -> bytes:
        ev = Event(run_id=run_id, stage="translator", event="metric", msg=msg, timestamp="2025-11-26T10:00:00-06:00",
                   seq=seq)
        return ev.to_line().encode() + b"\n"

    def tell(*msgs: dict) -> None:
        remote._on_lines([json.dumps(m).encode() for m in msgs])

    path = run_event_path(settings.events_dir, "r1")
    caught = line("r1", 1) + line("r1", 2)  # what the catch-up had
    path.write_bytes(caught + line("r1", 3) + b'{"seq": 4, "oops\n' + b'{"seq": 4}\n' + line("r1", 4)
                     + line("r1", 5)[:20])  # the writer is in the middle of event 5
    tell({"type": "event", "catchup": True, "event": json.loads(line("r1", 2))},
         {"type": "caught_up", "events": "file", "run_id": "r1", "offset": len(caught)},
         {"type": "events", "run_id": "r1", "seq": 4})
    await remote._read_files()
    assert got == [("r1", 2), ("r1", 3), ("r1", 4)] and remote.bad_lines == 2
    # the writer finishes event 5 and writes a line longer than a read
    with open(path, "ab") as fh:
        fh.write(line("r1", 5)[20:] + line("r1", 6, "x" * (READ_BYTES * 3)))
    tell({"type": "events", "run_id": "r1", "seq": 6})
    await remote._read_files()
    tell({"type": "events", "run_id": "r1", "seq": 6})  # nothing new: nothing handed on again
    await remote._read_files()
    # a new run: its file from the start
    run_event_path(settings.events_dir, "r2").write_bytes(line("r2", 1) + line("r2", 2))
    tell({"type": "events", "run_id": "r2", "seq": 2})
    await remote._read_files()
    assert got == [("r1", 2), ("r1", 3), ("r1", 4), ("r1", 5), ("r1", 6), ("r2", 1), ("r2", 2)]
    assert remote.bad_lines == 2
    # a notice that makes no sense is no trouble either
    tell({"type": "events", "run_id": "r2", "seq": "x"}, {"type": "events", "run_id": 7},
         {"type": "events", "run_id": "../r1"}, {"type": "caught_up", "events": "file", "run_id": "r3", "offset": [1]})
    await remote._read_files()
    assert len(got) == 7


async def test_a_flood_of_notices_costs_a_console_one_read_of_the_file(tmp_path: Path) -> None:
    """In a flood the engine's notices pile up while a console draws: it reads the run's file
    once for all of them, only as much as the file holds, and not at all for a notice naming
    events it has handed on already."""
    from pipeline_core.events import EventWriter, run_event_path
    from pipeline_core.runstate import EventMessage

    settings = load_settings(root=tmp_path / "root", env={})
    settings.ensure_dirs()
    remote = RemoteEngine(settings)
    got: list[int] = []
    remote.subscribe(lambda m: got.append(m.event.seq) if isinstance(m, EventMessage) else None)
    writer = EventWriter(run_event_path(settings.events_dir, "r1"), "r1")
    for i in range(1000):
        writer.emit("translator", "metric", f"metric {i}", {"i": i})
    writer.close()

    def notices(seqs: range) -> None:
        remote._on_lines([json.dumps({"type": "events", "run_id": "r1", "seq": s}).encode() for s in seqs])

    remote._on_lines([json.dumps({"type": "caught_up", "events": "file", "run_id": "r1", "offset": 0}).encode()])
    notices(range(10, 1001, 10))  # a hundred notices, waiting in the socket
    await remote._read_files()
    assert got == list(range(1, 1001)) and remote.file_reads == 1
    notices(range(10, 1001, 10))  # late notices for events read already: no read
    await remote._read_files()
    assert got == list(range(1, 1001)) and remote.file_reads == 1
