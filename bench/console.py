"""Console under load: 100,000 events and 200,000 stage output lines while keys are pressed.

The messages go through the engine's own publishing path (``Engine._publish``, which calls
every subscriber — here the console's :meth:`QtswApp.receive`), in bursts of ``--burst``
messages per event-loop turn, as a stage printing flat out would produce them. Meanwhile a key
is sent through the terminal driver every ``--key-every`` seconds (``down``/``up`` move the
cursor of the event table; every fourth round ``?`` opens the help screen, then it is closed)
and the time until the key's action runs is recorded.

Printed: the time to absorb the whole load (until every message reached the widgets), the key
press delays under load against the same keys on an idle console (baseline, same run), the
publishing cost against a no-op subscriber (baseline), and the process memory (RSS) before,
after and at peak. Target: key presses handled within 100 ms under load.

    .venv/bin/python bench/console.py [--events 100000] [--lines 200000] [--size 160x48]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from textual import events

from pipeline_core.engine import Engine
from pipeline_core.events import Event
from pipeline_core.runstate import EventMessage, OutputMessage
from pipeline_core.settings import load_settings
from qtsw_tui.app import FLUSH_SECONDS, QtswApp, build_app

STAGES = ("translator", "analyzer", "merger")
INSTRUMENTS = ("ES", "NQ", "YM", "CL", "NG", "GC")


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_messages(n_events: int, n_lines: int, run_id: str) -> Iterator[EventMessage | OutputMessage]:
    """A realistic mix, made as it is fed (the bench holds none of it): per event two output
    lines; events of every stage and type."""
    kinds = ("progress", "progress", "metric", "log", "progress", "start", "success", "log")
    lines_per_event = max(1, n_lines // max(1, n_events))
    line_no = 0
    for i in range(1, n_events + 1):
        stage = STAGES[i % 3]
        inst = INSTRUMENTS[i % 6] if stage == "analyzer" else None
        kind = kinds[i % len(kinds)]
        data = {"done": i % 500, "total": 500, "instrument": inst} if kind == "progress" else {"level": "info"}
        ts = f"2025-12-01T10:{(i // 60) % 60:02d}:{i % 60:02d}.000000-06:00"
        yield EventMessage(Event(run_id, stage, kind, f"{stage} {kind} {i} {inst or ''}", data, ts, i))
        for _ in range(lines_per_event):
            if line_no < n_lines:
                line_no += 1
                yield OutputMessage(run_id, stage, inst,
                                    f"{inst or stage}: processed block {line_no} rows={line_no * 37 % 100000}")


async def press_and_time(app: QtswApp, key: str, char: str | None, action: str, marks: dict[str, float]) -> float:
    """Send ``key`` through the driver as a terminal would; seconds until ``action`` ran."""
    marks.pop(action, None)
    t0 = time.perf_counter()
    ev = events.Key(key, char)
    ev.set_sender(app)
    app._driver.send_message(ev)
    while action not in marks:
        await asyncio.sleep(0.0005)
        if time.perf_counter() - t0 > 10:
            raise RuntimeError(f"key {key!r} not handled in 10 s")
    return marks[action] - t0


GC_PAUSES: list[tuple[int, float]] = []  # (generation, seconds) of each collection during the load
_gc_t0 = [0.0]


def _gc_timer(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_t0[0] = time.perf_counter()
    else:
        GC_PAUSES.append((info["generation"], time.perf_counter() - _gc_t0[0]))


def instrument(app: QtswApp, marks: dict[str, float], flushes: list[float]) -> None:
    """Record when key actions run (then do what they do), and how long each flush takes."""
    table = app.query_one("#event-table")
    timed = {
        "help": (app, "action_help"),
        "down": (table, "action_cursor_down"),
        "up": (table, "action_cursor_up"),
    }
    for mark, (owner, name) in timed.items():
        original = getattr(owner, name)

        def wrapper(*args, _original=original, _mark=mark, **kwargs):
            marks[_mark] = time.perf_counter()
            return _original(*args, **kwargs)

        setattr(owner, name, wrapper)
    flush = app.flush

    def timed_flush() -> None:
        t0 = time.perf_counter()
        flush()
        flushes.append(time.perf_counter() - t0)

    app.flush = timed_flush  # type: ignore[method-assign]
    # the flush timer was set up at mount with the original method: set it up again
    for timer in list(app._timers):
        if timer.name == "flush":
            timer.stop()
    app.set_interval(FLUSH_SECONDS, app.flush, name="flush")


async def key_round(app: QtswApp, marks: dict[str, float], with_help: bool) -> tuple[list[float], list[float]]:
    """Navigation keys in the event table (down, up); with ``with_help``, also ``?`` (then back)."""
    nav = [await press_and_time(app, "down", None, "down", marks),
           await press_and_time(app, "up", None, "up", marks)]
    helps = []
    if with_help:
        helps.append(await press_and_time(app, "question_mark", "?", "help", marks))
        await app.pop_screen()
        app.query_one("#event-table").focus()
    return nav, helps


async def bench(n_events: int, n_lines: int, burst: int, key_every: float, size: tuple[int, int]) -> None:
    with tempfile.TemporaryDirectory(prefix="qtsw-bench-console-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}
        settings = load_settings(root=tmp, env=env)
        settings.ensure_dirs()
        engine = Engine(settings)
        run_id = "b3f1c0de-0000-4000-8000-000000000000"
        n = n_events + n_lines

        # baseline: making the messages and publishing them to a subscriber that does nothing
        unsubscribe = engine.subscribe(lambda m: None)
        t0 = time.perf_counter()
        for m in make_messages(n_events, n_lines, run_id):
            engine._publish(m)
        publish_noop = time.perf_counter() - t0
        unsubscribe()

        app = build_app(settings, engine, {"schedule": False})
        marks: dict[str, float] = {}
        flushes: list[float] = []
        async with app.run_test(size=size) as pilot:
            instrument(app, marks, flushes)
            await pilot.pause(0.3)
            if not app.query_one("#events").display:
                await pilot.press("e")  # at 80x24 the events are a view of their own: show it
            app.query_one("#event-table").focus()
            await key_round(app, marks, True)  # warm-up: the first help screen builds its styles
            idle_nav: list[float] = []
            idle_help: list[float] = []
            for i in range(20):
                nav, helps = await key_round(app, marks, i % 2 == 0)
                idle_nav += nav
                idle_help += helps
            flushes.clear()
            gc.callbacks.append(_gc_timer)
            rss_before = rss_mb()

            done = asyncio.Event()
            fed = {"t_end": 0.0}

            async def feed() -> None:
                source = make_messages(n_events, n_lines, run_id)
                while chunk := list(islice(source, burst)):
                    for m in chunk:
                        engine._publish(m)  # what the engine does for each event and line
                    await asyncio.sleep(0)
                fed["t_end"] = time.perf_counter()
                done.set()

            frozen = gc.get_freeze_count()
            tracked = len(gc.get_objects())
            t_start, cpu_start = time.perf_counter(), time.process_time()
            feeder = asyncio.create_task(feed())
            load_nav: list[float] = []
            load_help: list[float] = []
            rounds = 0
            # keys while the load is fed and until every message reached the widgets
            while not done.is_set() or app.flushed["events"] < app.received["events"] or any(app._lines.values()):
                nav, helps = await key_round(app, marks, rounds % 4 == 0)
                load_nav += nav
                load_help += helps
                rounds += 1
                await asyncio.sleep(key_every)
            await feeder
            t_absorbed, cpu_absorbed = time.perf_counter(), time.process_time()
            gc.callbacks.remove(_gc_timer)
            rss_after = rss_mb()
            panel = app.query_one("#events")
            shown, stored, total = panel.table.row_count, len(panel.store), panel.store.total
            pane_lines = {s: app.query_one(f"#pane-{s}").line_count for s in STAGES}
            batches = app.flushed["batches"]
            await pilot.press("q")

    def stats(values: list[float]) -> str:
        ms = sorted(v * 1000 for v in values)
        p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
        return f"median {statistics.median(ms):6.1f} ms  p95 {p95:6.1f} ms  max {ms[-1]:6.1f} ms  (n={len(ms)})"

    absorb = t_absorbed - t_start
    print(f"console {size[0]}x{size[1]}, event table shown; "
          f"load: {n_events:,} events + {n_lines:,} output lines = {n:,} messages, bursts of {burst}")
    print(f"publishing, no-op subscriber (baseline): {publish_noop:.3f} s  ({n / publish_noop:,.0f} msg/s)")
    print(f"fed to the console in {fed['t_end'] - t_start:.2f} s; absorbed (all on the widgets) in {absorb:.2f} s "
          f"({n / absorb:,.0f} msg/s, {absorb / publish_noop:.1f}x the baseline), {batches} batches")
    print(f"navigation key (down/up in the event table), idle : {stats(idle_nav)}")
    print(f"navigation key (down/up in the event table), load : {stats(load_nav)}")
    print(f"help key '?' (opens a screen), idle               : {stats(idle_help)}")
    print(f"help key '?' (opens a screen), load               : {stats(load_help)}")
    worst = max(load_nav + load_help)
    print(f"  ratio loaded/idle (median, navigation): "
          f"{statistics.median(load_nav) / max(statistics.median(idle_nav), 1e-9):.1f}x; "
          f"target: every key handled within 100 ms: {'met' if worst < 0.1 else 'NOT met'} "
          f"(worst {worst * 1000:.1f} ms)")
    print(f"flushes (buffers -> widgets) under load: {stats(flushes)}")
    cpu_share = (cpu_absorbed - cpu_start) / absorb
    print(f"this process had {cpu_share:.0%} of a CPU during the load; machine load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other work inflates every wall time)")
    full = [d for g, d in GC_PAUSES if g == 2]
    print(f"objects: {frozen:,} frozen at start-up, {tracked:,} tracked before the load")
    print(f"garbage collections during the load: {len(GC_PAUSES)}, of which {len(full)} full "
          f"(longest {max(full, default=0) * 1000:.0f} ms); longest any {max((d for _, d in GC_PAUSES), default=0) * 1000:.0f} ms")
    print(f"event table: {shown} rows shown, {stored:,} stored of {total:,}; pane lines {pane_lines}")
    print(f"memory (RSS): before {rss_before:.1f} MB, after {rss_after:.1f} MB "
          f"(+{rss_after - rss_before:.1f} MB: the 100,000-event store, the panes, the table), "
          f"peak {rss_mb('VmHWM'):.1f} MB")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--lines", type=int, default=200_000)
    p.add_argument("--burst", type=int, default=500, help="messages published per event-loop turn")
    p.add_argument("--key-every", type=float, default=0.05, help="seconds between key rounds under load")
    p.add_argument("--size", default="160x48", help="terminal size WxH (160x48; 80x24 shows the events view)")
    a = p.parse_args(argv)
    w, _, h = a.size.partition("x")
    asyncio.run(bench(a.events, a.lines, a.burst, a.key_every, (int(w), int(h))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
