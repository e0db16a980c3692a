"""Console under load: 100,000 events and 200,000 stage output lines while keys are pressed.

The messages go through the engine's own publishing path (``Engine._publish``, which calls
every subscriber — here the console's :meth:`QtswApp.receive`), in bursts of ``--burst``
messages per event-loop turn, as a stage printing flat out would produce them. Meanwhile a key
is sent through the terminal driver every ``--key-every`` seconds (``?`` opens help, ``e``
switches the view) and the time until its action runs is recorded.

Printed: the time to absorb the whole load (until every message reached the widgets), the key
press delays under load against the same keys on an idle console (baseline, same run), the
publishing cost against a no-op subscriber (baseline), and the process memory (RSS) before,
after and at peak. Target: key presses handled within 100 ms under load.

    .venv/bin/python bench/console.py [--events 100000] [--lines 200000]
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
from qtsw_tui.app import QtswApp, build_app

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
    """Record when the help and events actions run (then do what they do), and each flush's time."""
    help_action, events_action, flush = app.action_help, app.action_events, app.flush

    def timed_flush() -> None:
        t0 = time.perf_counter()
        flush()
        flushes.append(time.perf_counter() - t0)

    def timed_help() -> None:
        marks["help"] = time.perf_counter()
        help_action()

    def timed_events() -> None:
        marks["events"] = time.perf_counter()
        events_action()

    app.action_help = timed_help  # type: ignore[method-assign]
    app.action_events = timed_events  # type: ignore[method-assign]
    app.flush = timed_flush  # type: ignore[method-assign]
    # the flush timer was set up at mount with the original method: set it up again
    for timer in list(app._timers):
        if timer.name == "flush":
            timer.stop()
    app.set_interval(0.2, app.flush, name="flush")


async def key_round(app: QtswApp, marks: dict[str, float]) -> tuple[float, float]:
    d_help = await press_and_time(app, "question_mark", "?", "help", marks)
    await app.pop_screen()
    d_events = await press_and_time(app, "e", "e", "events", marks)
    return d_help, d_events


async def bench(n_events: int, n_lines: int, burst: int, key_every: float) -> None:
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
        async with app.run_test(size=(160, 48)) as pilot:
            instrument(app, marks, flushes)
            await pilot.pause(0.3)
            await key_round(app, marks)  # warm-up: the first help screen builds its styles
            idle = [await key_round(app, marks) for _ in range(10)]
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
            loaded: list[tuple[float, float]] = []
            while not done.is_set():
                loaded.append(await key_round(app, marks))
                await asyncio.sleep(key_every)
            await feeder
            # absorbed: every message handed to the widgets (buffers empty, events all flushed)
            while app.flushed["events"] < app.received["events"] or any(app._lines.values()):
                loaded.append(await key_round(app, marks))
                await asyncio.sleep(0.01)
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

    idle_all = [d for pair in idle for d in pair]
    loaded_all = [d for pair in loaded for d in pair]
    absorb = t_absorbed - t_start
    print(f"load: {n_events:,} events + {n_lines:,} output lines = {n:,} messages, bursts of {burst}")
    print(f"publishing, no-op subscriber (baseline): {publish_noop:.3f} s  ({n / publish_noop:,.0f} msg/s)")
    print(f"fed to the console in {fed['t_end'] - t_start:.2f} s; absorbed (all on the widgets) in {absorb:.2f} s "
          f"({n / absorb:,.0f} msg/s, {absorb / publish_noop:.1f}x the baseline), {batches} batches")
    print(f"key '?' and 'e', idle console   : {stats(idle_all)}")
    print(f"key '?' and 'e', under the load : {stats(loaded_all)}")
    print(f"  ratio loaded/idle (median)    : "
          f"{statistics.median(loaded_all) / max(statistics.median(idle_all), 1e-9):.1f}x; "
          f"target < 100 ms: {'met' if max(loaded_all) < 0.1 else 'NOT met'} (max {max(loaded_all) * 1000:.1f} ms)")
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
    a = p.parse_args(argv)
    asyncio.run(bench(a.events, a.lines, a.burst, a.key_every))
    return 0


if __name__ == "__main__":
    sys.exit(main())
