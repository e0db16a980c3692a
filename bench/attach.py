"""Benchmark: consoles attached to an engine through its control socket.

An engine process (the real :class:`Engine` and :class:`ControlServer`, holding the lock) runs a
translator stage that reports N metric messages, so a run writes N + a few events. Measured in
one go, on the same machine:

(a) attach time: from starting a console process (``RemoteEngine`` + the Textual console,
    headless, 80x24) to its header showing the engine (pid, schedule) — idle, and during a
    run's flood (started once the run has written about a third of its events); and the same
    from the command an operator types, ``qtsw --root ROOT``, in a new tmux session at 80x24,
    to its screen showing the engine (when tmux is installed). Target < 1 s;
(b) event delay: from an event's timestamp (taken as it is written) to its arrival in each of
    C client processes subscribed to the engine; p50 / p99 / max over all events and clients.
    Target p99 < 100 ms. Twice: C stream clients (every event sent on the socket) and C file
    clients (``"events":"file"``: a notice on the socket, the events read from the run's file on
    each notice; arrival is having read the event's line);
(c) the engine's run time (its report's duration) and the engine process's CPU seconds per
    run, with no client, with C protocol clients of each mode (the processes of (b): they only
    receive), and with C attached consoles (the Textual console over ``RemoteEngine``, which
    subscribes in file mode, headless, 120x40, its event table on screen). Two more runs tell
    serving from sharing the cores: C file clients that take the notices and read no file
    (what serving costs the engine, with clients that use no CPU), and C processes that only
    spin, with no client (what C busy processes cost the engine's CPU time on this machine,
    serving nothing). The ratios are the cost of serving them; target within 5 %. Each run
    with clients is measured between two runs alone, and its ratio is taken over their mean
    (paired; the median of the pairs is the figure): this machine's speed drifts by more than
    5 % from one run to the next, a neighbour on either side cancels the drift. The
    engine's CPU time is what serving costs the engine itself; its run time is also what the
    clients' own CPU takes from it on a machine with fewer cores than processes (each console
    processes every event: the consoles' CPU seconds are printed too). The consoles step back
    as ``qtsw --attach`` does once it shows the engine (``console.attached_nice``, 19); C more
    consoles that also take the idle policy (``console.attached_idle = true``, SCHED_IDLE)
    show what it would save.

``python bench/attach.py [--events 100000] [--clients 5] [--repeat 3] [--pairs 7]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT_DIR = HERE.parent
sys.path.insert(0, str(ROOT_DIR))

STAGE = r'''
import json, sys
n = int(sys.argv[1])
marker = "\x02qtsw:"
write = sys.stdout.write
for i in range(n):
    write(marker + json.dumps({"type": "metric", "msg": f"metric {i}", "data": {"i": i}}) + "\n")
write(marker + json.dumps({"type": "result", "status": "success", "msg": "done", "counts": {"n": n}}) + "\n")
'''


def _ready(procs: list[subprocess.Popen]) -> list[subprocess.Popen]:
    """The processes, once each has said it is ready (its first line)."""
    for c in procs:
        assert c.stdout is not None and c.stdout.readline().strip() == "ready"
    return procs


def _env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}
    e["PYTHONUNBUFFERED"] = "1"
    return e


PIN = False  # --pin: the engine (and its stages) on the first core, every client on the others


def _on(role: str) -> dict[str, Any]:
    """Popen arguments that put a process of ``role`` ("engine" or "client") on its cores."""
    if not PIN:
        return {}
    cpus = sorted(os.sched_getaffinity(0))
    mine = set(cpus[:1]) if role == "engine" else set(cpus[1:])
    return {"preexec_fn": lambda: os.sched_setaffinity(0, mine)}


# --- the processes -------------------------------------------------------------------------------


def engine_main(root: str, events: int) -> None:
    """The engine process: lock, engine (its translator reports ``events`` metrics), socket."""
    from datetime import timedelta
    from functools import partial

    import anyio

    from pipeline_core import clock
    from pipeline_core.control import ControlServer
    from pipeline_core.engine import Engine
    from pipeline_core.lock import EngineLock
    from pipeline_core.settings import load_settings

    settings = load_settings(root=Path(root), env={})
    script = Path(root) / "stage.py"
    script.write_text(STAGE)
    with EngineLock.for_settings(settings):
        engine = Engine(settings, stage_command=lambda stage, inst: [sys.executable, str(script), str(events)])
        server = ControlServer(engine, settings)
        server.open()

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve)
                with anyio.open_signal_receiver(signal.SIGTERM) as sigs:
                    # the schedule runs, its first mark an hour away: only the bench's runs happen
                    later = clock.now() + timedelta(hours=1)
                    tg.start_soon(partial(engine.serve, not_before=later))
                    async for _ in sigs:
                        engine.stop()
                        break
                tg.cancel_scope.cancel()

        anyio.run(main)


def _ends_run(line: bytes) -> bool:
    return b'"stage":"pipeline"' in line and (b'"event":"success"' in line or b'"event":"failure"' in line
                                              or b'"event":"cancelled"' in line)


def client_main(sock: str, mode: str = "stream") -> None:
    """A subscriber: prints ``ready``, then the delays of the live events of the next run. It
    measures arrival: each line's timestamp is sliced out, not the whole line decoded (what a
    console then does with an event is the console's own cost, measured in bench/console.py).
    ``mode`` "file": the events are read from the run's file on each notice (arrival: read)."""
    from pipeline_core.control import Connection
    from pipeline_core.events import run_event_path

    conn = Connection(Path(sock), timeout=120)
    conn.subscribe(events="file" if mode == "notices" else mode)
    offsets: dict[str, int] = {}
    while True:
        msg = conn.next_message(120)
        if msg.get("type") == "caught_up":
            if mode == "file" and msg.get("run_id"):
                offsets[msg["run_id"]] = int(msg["offset"])
            break
    events_dir = Path(sock).parent / "events"
    print("ready", flush=True)
    if mode == "notices":  # a file client that reads no file: what serving it costs the engine
        while conn.sock.recv(1 << 20):
            pass
        return
    delays: list[float] = []
    key = b'"timestamp":"'

    def arrived(line: bytes, now: float) -> bool:
        i = line.find(key) + len(key)
        ts = line[i:line.find(b'"', i)].decode()
        delays.append(now - datetime.fromisoformat(ts).timestamp())
        return _ends_run(line)

    def read_file(run_id: str) -> bool:
        path = run_event_path(events_dir, run_id)
        with open(path, "rb") as fh:
            fh.seek(offsets.get(run_id, 0))
            data = fh.read()
        now = time.time()
        end = data.rfind(b"\n") + 1
        offsets[run_id] = offsets.get(run_id, 0) + end
        ended = False
        for line in data[:end].split(b"\n"):
            if line:
                ended = arrived(line, now) or ended
        return ended

    buf = b"".join(line + b"\n" for line in conn._lines) + conn._buf
    ended = False
    while not ended:
        chunk = conn.sock.recv(1 << 20)
        if not chunk:
            break
        now = time.time()
        *lines, buf = (buf + chunk).split(b"\n")
        for line in lines:
            if b'"type":"events"' in line:  # a notice: read the run's file
                ended = read_file(json.loads(line)["run_id"]) or ended
            elif b'"type":"event"' in line and b'"run_id":"scheduler"' not in line:
                ended = arrived(line, now) or ended
    print(json.dumps({"delays": delays}), flush=True)


def console_main(root: str, t0: float, events: str = "file") -> None:
    """A console attached headless; prints the seconds from ``t0`` until it shows the engine."""
    import asyncio

    from pipeline_core.remote import RemoteEngine, step_back
    from pipeline_core.settings import load_settings
    from qtsw_tui.app import build_app
    from qtsw_tui.widgets.header import StatusHeader

    settings = load_settings(root=Path(root), env={})
    remote = RemoteEngine(settings, reconnect_seconds=0.05, file_events=events == "file")
    app = build_app(settings, remote, {"on_attached": lambda: step_back(settings)})  # as `qtsw --attach`

    async def main() -> float:
        async with app.run_test(size=(80, 24)) as pilot:
            while True:
                text = str(app.query_one("#header", StatusHeader).render())
                if "attached pid" in text and "schedule running" in text:
                    shown = time.time() - t0
                    break
                await asyncio.sleep(0.01)  # (not pilot.pause: it redraws the whole screen each time)
            await pilot.press("q")
        return shown

    print(json.dumps({"attach_seconds": asyncio.run(main())}), flush=True)


def console_follow_main(root: str, events: str = "file", idle: str = "false") -> None:
    """A console attached headless at 120x40 (its event table on screen) that follows the next
    run to its end: prints ``ready`` once attached, then the CPU seconds it spent from then
    until it has shown the end of a run that began after it attached. ``idle``: its
    ``console.attached_idle`` (it steps back as ``qtsw --attach`` does)."""
    import asyncio

    from pipeline_core import history
    from pipeline_core.remote import RemoteEngine, step_back
    from pipeline_core.runstate import EventMessage
    from pipeline_core.settings import load_settings
    from qtsw_tui.app import build_app
    from qtsw_tui.widgets.header import StatusHeader

    settings = load_settings(root=Path(root), env={}, overrides={"console.attached_idle": idle})
    remote = RemoteEngine(settings, reconnect_seconds=0.05, file_events=events == "file")
    app = build_app(settings, remote, {"on_attached": lambda: step_back(settings)})  # as `qtsw --attach`
    before = {str(r.get("run_id")) for r in history.read_runs(settings)}  # runs that ended before
    ended: list[str] = []
    cpu0: list[float] = []  # its CPU seconds once attached (the run's cost is what comes after)

    def watch(msg: Any) -> None:
        if isinstance(msg, EventMessage) and msg.event.stage == "pipeline" and msg.event.is_terminal:
            ended.append(msg.event.run_id)

    remote.subscribe(watch)

    async def main() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            while "attached pid" not in str(app.query_one("#header", StatusHeader).render()) or not app.flushed["events"]:
                await asyncio.sleep(0.01)
            print("ready", flush=True)
            cpu0.append(time.process_time())
            # the console left to itself, as in a terminal: pilot.pause would redraw its whole
            # screen at each look (20 a second), work a console attached in a terminal never does
            while not (set(ended) - before) or app._events:  # the end of the run, shown
                await asyncio.sleep(0.05)
            await pilot.press("q")

    asyncio.run(main())
    print(json.dumps({"cpu": time.process_time() - cpu0[0], "events": app.flushed["events"],
                      "reattached": remote.attachments - 1}), flush=True)


# --- the measurements ---------------------------------------------------------------------------


def _attach_time(root: Path, events: str = "file") -> float:
    t0 = time.time()
    got = subprocess.run([sys.executable, __file__, "console", str(root), repr(t0), events], capture_output=True,
                         text=True, env=_env(), timeout=120, **_on("client"))
    if got.returncode != 0:
        raise SystemExit(f"console failed: {got.stderr[-2000:]}")
    return float(json.loads(got.stdout.strip().splitlines()[-1])["attach_seconds"])


TMUX = shutil.which("tmux")


def _tmux_attach_time(root: Path) -> float:
    """From starting ``qtsw --root ROOT`` (the console script, as an operator types it) in a
    new tmux session at 80x24 to its screen showing the engine (pid, schedule), read with
    ``tmux capture-pane``; the session is then killed (the console goes with its terminal)."""
    qtsw = Path(sys.executable).with_name("qtsw")
    command = f"{qtsw if qtsw.exists() else sys.executable + ' -m qtsw_tui'} --root {root}"
    # a server of its own each time (one just killed may still be going away)
    sock, env = f"qtsw-bench-{uuid.uuid4().hex[:8]}", {k: v for k, v in _env().items() if k != "TMUX"}
    base = [TMUX, "-L", sock, "-f", "/dev/null"]
    t0 = time.monotonic()
    subprocess.run([*base, "new-session", "-d", "-s", "c", "-x", "80", "-y", "24", command], env=env, check=True,
                   timeout=30)
    try:
        while True:
            screen = subprocess.run([*base, "capture-pane", "-p", "-t", "c"], capture_output=True, text=True,
                                    timeout=30).stdout
            if "attached pid" in screen and "schedule running" in screen:
                return time.monotonic() - t0
            if time.monotonic() - t0 > 60:
                raise SystemExit(f"qtsw in tmux did not show the engine within 60 s:\n{screen}")
            time.sleep(0.005)
    finally:
        subprocess.run([*base, "kill-server"], capture_output=True, timeout=30)


def _cpu(pid: int) -> float:
    """CPU seconds a process has used (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run(conn: Any, settings: Any, cpu: list[float] | None = None, pid: int = 0,
         during: Any = None) -> float:
    """One run (its report's duration); ``cpu`` gets the engine's CPU seconds for it;
    ``during(run_id)`` is called once the run is under way."""
    from pipeline_core import history

    c0 = _cpu(pid) if cpu is not None else 0.0
    before = len(history.read_runs(settings))
    reply = conn.command("run_now")
    assert reply["type"] == "accepted", reply
    if during is not None:
        during(reply["run_id"])
    while len(history.read_runs(settings)) == before:
        time.sleep(0.05)
    if cpu is not None:
        cpu.append(_cpu(pid) - c0)
    line = history.read_runs(settings)[-1]
    report = history.find_report(settings, line["run_id"])
    assert line["status"] == "success", line
    return float(report["duration_seconds"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs with each kind of protocol client (and each control), and attaches during a flood")
    ap.add_argument("--pairs", type=int, default=7,
                    help="runs with each kind of consoles, each between two runs alone (the figure)")
    ap.add_argument("--pin", action="store_true",
                    help="the engine and its stages on the first core, the clients on the others: the engine's "
                         "CPU time then shows what serving costs it, less what sharing its core costs")
    ap.add_argument("--console-events", choices=("file", "stream"), default="file",
                    help="how the consoles get a run's events (RemoteEngine's mode; default file)")
    args = ap.parse_args()
    global PIN
    PIN = args.pin and len(os.sched_getaffinity(0)) > 1

    from pipeline_core.control import Connection, NoEngine, socket_path
    from pipeline_core.sample import write_samples
    from pipeline_core.settings import load_settings

    work = Path(tempfile.mkdtemp(prefix="qtsw-bench-attach-"))
    root = work / "root"
    settings = load_settings(root=root, env={})
    settings.ensure_dirs()
    write_samples(settings, days=1, instruments=["ES"], end=date(2025, 11, 26))  # work for the translator
    engine = subprocess.Popen([sys.executable, __file__, "engine", str(root), str(args.events)], env=_env(),
                              **_on("engine"))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = Connection(socket_path(settings))
                break
            except NoEngine:
                if time.monotonic() > deadline or engine.poll() is not None:
                    raise SystemExit("the engine did not start") from None
                time.sleep(0.05)
        idle_attach = [_attach_time(root, args.console_events) for _ in range(3)]
        # the same from the command an operator types, in a real terminal (when tmux is here)
        idle_tmux = [_tmux_attach_time(root) for _ in range(3)] if TMUX else []
        busy_tmux: list[float] = []
        alone: list[float] = []
        served: list[float] = []
        filed: list[float] = []
        # the consoles stepping back as by default (a lowered priority), and also as idle tasks
        consoled: dict[str, list[float]] = {"true": [], "false": []}
        delays: dict[str, list[float]] = {"stream": [], "file": []}
        busy_attach: list[float] = []
        cpu_alone: list[float] = []
        cpu_served: list[float] = []
        cpu_filed: list[float] = []
        cpu_quiet: list[float] = []  # file clients that read no file
        cpu_spun: list[float] = []  # processes that spin, no client
        cpu_consoled: dict[str, list[float]] = {"true": [], "false": []}
        cpu_consoles: list[float] = []
        shown: list[int] = []  # events each console showed (all, unless it was cut off)
        cut_off: list[int] = []  # times each console fell behind, was cut off and reattached
        # paired[x]: each run with x over the mean of the runs alone just before and just after it
        # (this machine's speed drifts between runs; a neighbour measured on both sides cancels it)
        paired: dict[str, list[float]] = {"stream": [], "file": [], "true": [], "false": []}
        before = 0.0  # the last run alone

        def run_alone() -> float:
            alone.append(_run(conn, settings, cpu_alone, engine.pid))
            return alone[-1]

        def pair(key: str, wall: float) -> None:
            """``wall``, a run with clients just measured, over the runs alone on either side."""
            nonlocal before
            after = run_alone()
            paired[key].append(wall / ((before + after) / 2))
            before = after

        for _ in range(args.repeat):
            # the CPU-only controls first, then each measured run between two runs alone
            for what, cpus in (("notices", cpu_quiet), ("spin", cpu_spun)):
                cmd = ([sys.executable, __file__, "client", str(socket_path(settings)), "notices"] if what == "notices"
                       else [sys.executable, "-c", "print('ready', flush=True)\nwhile True: pass"])
                others = _ready([subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=_env(), **_on("client"))
                                 for _ in range(args.clients)])
                _run(conn, settings, cpus, engine.pid)
                for c in others:
                    c.terminate()
                    c.communicate(timeout=60)
            before = run_alone()
            for mode, walls, cpus in (("stream", served, cpu_served), ("file", filed, cpu_filed)):
                clients = _ready([subprocess.Popen([sys.executable, __file__, "client", str(socket_path(settings)),
                                                    mode], stdout=subprocess.PIPE, text=True, env=_env(),
                                                   **_on("client"))
                                  for _ in range(args.clients)])
                walls.append(_run(conn, settings, cpus, engine.pid))
                for c in clients:
                    out, _ = c.communicate(timeout=300)
                    delays[mode].extend(json.loads(out.strip().splitlines()[-1])["delays"])
                pair(mode, walls[-1])
        # the figure: more pairs, the two kinds of consoles taking turns (the first paired with
        # the last run alone above)
        for _ in range(args.pairs):
            for idle in ("false", "true"):
                consoles = _ready([subprocess.Popen([sys.executable, __file__, "follow", str(root),
                                                     args.console_events, idle],
                                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                                    env=_env(), **_on("client"))
                                   for _ in range(args.clients)])
                consoled[idle].append(_run(conn, settings, cpu_consoled[idle], engine.pid))
                for c in consoles:
                    out, err = c.communicate(timeout=300)
                    if not out.strip():
                        raise SystemExit(f"a console ended with {c.returncode} and no figures: {err[-3000:]}")
                    got = json.loads(out.strip().splitlines()[-1])
                    cpu_consoles.append(got["cpu"])
                    shown.append(got["events"])
                    cut_off.append(got["reattached"])
                pair(idle, consoled[idle][-1])
        # a console attaching while a run floods (no other client): once about a third of the
        # run's events are written
        from pipeline_core.events import run_event_path

        def attach_mid_run(run_id: str, in_tmux: bool = False) -> None:
            path = run_event_path(settings.events_dir, run_id)
            while not path.exists() or path.stat().st_size < args.events * 200 // 3:
                time.sleep(0.01)
            if in_tmux:
                busy_tmux.append(_tmux_attach_time(root))
            else:
                busy_attach.append(_attach_time(root, args.console_events))

        for _ in range(args.repeat):
            _run(conn, settings, during=attach_mid_run)
            if TMUX:
                _run(conn, settings, during=lambda run_id: attach_mid_run(run_id, in_tmux=True))
        conn.close()
    finally:
        engine.send_signal(signal.SIGTERM)
        try:
            engine.wait(60)
        except subprocess.TimeoutExpired:
            engine.kill()
        shutil.rmtree(work, ignore_errors=True)

    def pct(xs: list[float], p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000

    print(f"events per run: {args.events + 8} (a translator reporting {args.events} metrics); "
          f"{args.clients} clients; {args.repeat} runs each way, {args.pairs} with each kind of consoles; {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at the end" + ("; pinned: the engine on one core, the clients on the others"
                                                      if PIN else ""))
    def runs(xs: list[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in xs)

    print(f"(a) attach, idle engine:     median {statistics.median(idle_attach):.2f} s "
          f"(runs {runs(idle_attach)})  target < 1 s")
    print(f"    attach, during the flood: median {statistics.median(busy_attach):.2f} s "
          f"(runs {runs(busy_attach)})  target < 1 s")
    if TMUX:
        print(f"    `qtsw` in tmux at 80x24, idle engine:   median {statistics.median(idle_tmux):.2f} s "
              f"(runs {runs(idle_tmux)})  target < 1 s")
        print(f"    `qtsw` in tmux at 80x24, during the flood: median {statistics.median(busy_tmux):.2f} s "
              f"(runs {runs(busy_tmux)})  target < 1 s")
    else:
        print("    (`qtsw` in a real terminal not measured: tmux is not installed)")
    for mode, xs in delays.items():
        xs.sort()
        print(f"(b) event delay over {len(xs)} deliveries to {args.clients} {mode} clients: p50 {pct(xs, 0.5):.1f} ms, "
              f"p99 {pct(xs, 0.99):.1f} ms, max {xs[-1] * 1000:.1f} ms  target p99 < 100 ms")
    n, cm = args.clients, args.console_events

    def row(label: str, xs: list[float], base: list[float] | None, pairs: list[float] | None = None) -> None:
        med = statistics.median(xs)
        text = f"      {label} {med:.2f} s (runs {runs(xs)})"
        if pairs:
            text += (f"; ratio {statistics.median(pairs):.3f} (paired: each run over the runs alone on either "
                     f"side of it; {', '.join(f'{x:.3f}' for x in pairs)})")
        if base is not None:
            # contention (other processes on the cores) only ever adds: the least disturbed runs'
            # ratio is the steadier estimate on a busy machine
            text += (f"; ratio {med / statistics.median(base):.3f} (medians), "
                     f"{min(xs) / min(base):.3f} (fastest runs)")
        print(text)

    print(f"(c) the engine's run time (wall), {args.events} events; target: paired ratio <= 1.05")
    row("alone", alone, None)
    row(f"{n} stream clients", served, alone, paired["stream"])
    row(f"{n} file clients", filed, alone, paired["file"])
    row(f"{n} consoles ({cm} mode)", consoled["false"], alone, paired["false"])
    row(f"{n} consoles, idle tasks too (attached_idle = true)", consoled["true"], alone, paired["true"])
    print("    the engine process's CPU seconds per run (what serving costs the engine itself)")
    row("alone", cpu_alone, None)
    row(f"{n} stream clients", cpu_served, cpu_alone)
    row(f"{n} file clients", cpu_filed, cpu_alone)
    row(f"{n} consoles ({cm} mode)", cpu_consoled["false"], cpu_alone)
    row(f"{n} consoles, idle tasks too", cpu_consoled["true"], cpu_alone)
    row(f"{n} file clients that read no file (serving alone)", cpu_quiet, cpu_alone)
    row(f"{n} spinning processes, no client (sharing the cores alone)", cpu_spun, cpu_alone)
    print(f"    the consoles: cut off for falling behind (and reattached, catching up with the newest "
          f"events only) {sum(cut_off)} times in {len(cut_off)} console runs; events each showed: "
          + (f"{shown[0]}, all of them" if len(set(shown)) == 1 else ", ".join(str(x) for x in shown)))
    print(f"    each console's own CPU seconds for the run: median {statistics.median(cpu_consoles):.2f} s "
          f"(the {args.clients} consoles and the engine share {os.cpu_count()} cores: on fewer cores than "
          f"processes, the consoles' CPU shows in the engine's wall time, not in its CPU time)")

    def verdict(pairs: list[float]) -> str:
        ratio = statistics.median(pairs)
        return f"{ratio:.3f} ({'within' if ratio <= 1.05 else 'over'} 5 %)"

    print(f"(c) in short: the engine's run time with {n} consoles over alone, median of {args.pairs} pairs: "
          f"{verdict(paired['false'])} as consoles step back by default (console.attached_nice), "
          f"{verdict(paired['true'])} as idle tasks too (console.attached_idle = true)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "engine":
        engine_main(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "client":
        client_main(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "stream")
    elif len(sys.argv) > 1 and sys.argv[1] == "console":
        console_main(sys.argv[2], float(sys.argv[3]), *sys.argv[4:5])
    elif len(sys.argv) > 1 and sys.argv[1] == "follow":
        console_follow_main(sys.argv[2], *sys.argv[3:5])
    else:
        raise SystemExit(main())
