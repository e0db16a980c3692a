"""The qtsw operator console: the App, its keys, the engine worker and the message feed.

One factory, :func:`build_app`, builds the console for the command line and for the tests.
The engine's scheduler (:meth:`Engine.serve`) runs in a worker on the app's event loop; the
engine calls :meth:`QtswApp.receive` for every event and every line a stage prints, which only
appends to bounded buffers. A timer hands the buffers to the widgets in batches every
``FLUSH_SECONDS`` — never one message per line — so a flood of output cannot starve the keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import partial, wraps
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from pipeline_core import clock as chicago
from pipeline_core.events import Event
from pipeline_core.remote import ENGINE_GONE
from pipeline_core.runstate import (
    STAGE_NAMES,
    EngineSnapshot,
    EventMessage,
    OutputMessage,
    RunState,
    StageState,
    stage_fraction,
)
from pipeline_core.settings import Settings
from qtsw_tui.headless import event_text
from qtsw_tui.nocolor import make_readable
from qtsw_tui.screens.alerts import AlertsScreen
from qtsw_tui.screens.confirm import ConfirmScreen
from qtsw_tui.screens.event_detail import EventDetailScreen
from qtsw_tui.screens.help import HelpScreen
from qtsw_tui.screens.history import HistoryScreen
from qtsw_tui.screens.quarantine import QuarantineScreen
from qtsw_tui.screens.run_detail import RunDetailScreen
from qtsw_tui.widgets.counters import Counters, CountersPanel, read_counters
from qtsw_tui.widgets.event_table import EventsPanel, EventTable
from qtsw_tui.widgets.footer_fit import KeyFooter
from qtsw_tui.widgets.format import clock_time, key_label, parse_time, short_id
from qtsw_tui.widgets.header import StatusHeader
from qtsw_tui.widgets.progress import InstrumentProgressList
from qtsw_tui.widgets.stage_pane import MIN_WRAP, StagePane

if TYPE_CHECKING:  # the console only talks to the engine object it is given
    from pipeline_core.engine import Engine

FLUSH_SECONDS = 0.1  # how often buffered engine messages reach the widgets
FREEZE_EVERY = 5000  # stored events between two gc.freeze() calls (see flush)
EVENTS_PER_FLUSH = 8000  # at most this many events per batch (32,000 a second in a flood), so
# a flood cannot hold the event loop long enough to delay a key press
FLOOD_EVENTS = 1000  # this many events waiting: a flood, drawn at most every FLOOD_SECONDS
FLOOD_SECONDS = 0.25  # (each drawing of the screen costs the same whatever the number of events)
STATUS_SECONDS = 1.0  # header clock, elapsed times, progress bars
COUNTERS_SECONDS = 3.0  # raw files, store, pending work (a thread worker)
READ_AHEAD_AFTER = 2.0  # seconds after start before the results are read ahead (see _read_results_ahead)
PANE_LINES = 2000  # per stage pane; the full output is in the stage's .log file
EVENT_CAPACITY = 100_000  # events kept in memory for the table and its filter
EVENT_WINDOW = 150  # rows in the live table at most (the store keeps the rest, filterable)
LINE_CHARS = 2000  # a longer output line is cut on screen (the .log file has all of it)
STOP_SECONDS = 60.0  # how long quitting waits for the engine to record a cancelled run
HANGUP_EXIT = 128 + signal.SIGHUP  # the console's exit status after losing its terminal
EXIT_GRACE = 3.0  # after a stop signal and the engine's stop, how long the console may take to exit
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
WIDE = (120, 36)  # from this size on, the events table shows below the stage panes


READ_ONLY_NOTE = ("read-only: this web console shows the engine but cannot start a run or a stage, "
                  "pause or cancel; restart 'qtsw web' with --allow-control for that, or use "
                  "'qtsw' or 'qtsw ctl' in a terminal")


STEERING_ACTIONS: set[str] = set()  # the actions marked with @steers_the_engine


def steers_the_engine(action: Callable[..., Any]) -> Callable[..., Any]:
    """Marks an action that steers the engine (run, stage, pause/resume, cancel). The one place
    where a read-only console (``qtsw web`` without ``--allow-control``) refuses them: every
    way to such an action — its key, a remapped key, the command palette, a click on the
    footer — ends here."""
    STEERING_ACTIONS.add(action.__name__.removeprefix("action_"))

    @wraps(action)
    def gated(self: QtswApp, *args: Any) -> Any:
        if self.read_only:
            self.notify(READ_ONLY_NOTE, title="Read-only", severity="warning", timeout=8, markup=False)
            return None
        return action(self, *args)

    return gated


def stage_bar(st: StageState, run: RunState) -> float | None:
    """A stage pane's bar (0…1): how far its process said it was; whole once it succeeded;
    None for a stage that has not started, was skipped, or has not said how much there is."""
    if st.state in ("waiting", "skipped"):
        return None
    frac = stage_fraction(st, run.instruments if st.name == "analyzer" else None)
    if st.state == "success":
        return 1.0
    return frac


def binding_ids() -> set[str]:
    """Every binding id that ``[keys]`` in the settings may remap: the app's, its panels' and
    its screens' (Textual's keymap applies to bindings wherever they are declared)."""
    from qtsw_tui.screens.results import ResultsScreen
    classes = (QtswApp, EventsPanel, EventTable, StagePane, ConfirmScreen, HelpScreen,
               HistoryScreen, ResultsScreen, RunDetailScreen, EventDetailScreen, QuarantineScreen,
               AlertsScreen)
    return {b.id for cls in classes for b in cls.BINDINGS if isinstance(b, Binding) and b.id}


class QtswApp(App[int]):
    """The operator console over one :class:`Engine`."""

    CSS_PATH = "app.tcss"
    TITLE = "qtsw"
    ENABLE_COMMAND_PALETTE = True  # ctrl+p: every action, with its key

    _STAGE_KEYS = Binding.Group("stage")
    BINDINGS = [
        Binding("r", "run_now", "run", id="run_now"),
        Binding("t", "run_stage('translator')", "translator", id="run_translator", group=_STAGE_KEYS),
        Binding("a", "run_stage('analyzer')", "analyzer", id="run_analyzer", group=_STAGE_KEYS),
        Binding("m", "run_stage('merger')", "merger", id="run_merger", group=_STAGE_KEYS),
        Binding("p", "toggle_pause", "pause", id="toggle_pause"),
        Binding("c", "cancel_run", "cancel", id="cancel_run"),
        Binding("h", "history", "history", id="history"),
        Binding("e", "events", "events", id="events"),
        Binding("slash", "filter", "filter", show=False, id="filter"),  # shown in the events view
        Binding("s", "results", "results", id="results"),
        Binding("u", "quarantine", "quarantine", show=False, id="quarantine"),
        Binding("exclamation_mark", "alerts", "alerts", show=False, id="alerts"),
        Binding("question_mark", "help", "help", id="help"),
        Binding("q", "request_quit", "quit", id="quit"),
        Binding("ctrl+q", "request_quit", "quit", show=False, id="quit_ctrl", priority=True),
    ]
    # what each binding does, in the operator's words (help screen)
    DESCRIPTIONS = {
        "run_now": "run the whole pipeline now",
        "run_translator": "run the translator only",
        "run_analyzer": "run the analyzer only",
        "run_merger": "run the merger only",
        "toggle_pause": "pause / resume the schedule (a running run continues)",
        "cancel_run": "cancel the active run (asks first)",
        "history": "run history (Enter: a run's stages, events and logs)",
        "events": "show the live event table",
        "filter": "filter the events: stage, event type or words",
        "results": "results: matrix in dollars, statistics, equity curve",
        "quarantine": "quarantined files: why, and re-queue once fixed",
        "alerts": "alerts: active and recent (a: acknowledge)",
        "help": "this help",
        "quit": "quit (asks first while a run is active)",
        "quit_ctrl": "quit",
    }

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        options: dict[str, Any] | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__()
        if self.no_color:
            make_readable(self._filters)  # NO_COLOR: greys, each readable on its background
        self.settings = settings
        self.engine = engine
        self.options = dict(options or {})
        self.clock = clock or chicago.now
        self.snapshot: EngineSnapshot | None = None
        self.serve_worker: Worker[None] | None = None
        self.closing = False
        self.stopped_busy = False  # a run was active when the console was asked to stop
        self.farewell = ""  # printed by the command line after the console has gone
        self._watchdog: threading.Thread | None = None
        self.hung_up = False
        self.notified: list[tuple[str, str, str]] = []  # (severity, title, text) of failures shown
        self.alerts_notified: list[tuple[str, str]] = []  # (severity, text) of alerts shown as they fired
        self._unsubscribe: Callable[[], None] | None = None
        self._events: deque[Event] = deque(maxlen=EVENT_CAPACITY)
        self._lines: dict[str, deque[str]] = {s: deque(maxlen=PANE_LINES) for s in STAGE_NAMES}
        self.received = {"events": 0, "lines": 0}
        self.flushed = {"events": 0, "batches": 0}
        self._unfrozen_events = 0
        self._last_flush = 0.0
        self._was_connected = False
        self._past_runs: set[str] = set()  # runs that ended before the console started
        self._panes_ready: set[str] = set()  # stage panes laid out at least once
        self._attached_once = False
        self._started_at = time.monotonic()
        self._read_ahead_for: object = object()  # the last run whose results were read ahead
        self._told_no_engine = False
        # ``qtsw web``: the console is in a browser tab; read-only unless started with control
        self.web = bool(self.options.get("web"))
        self.read_only = bool(self.options.get("read_only"))
        # what the footer does not offer (the keys still answer, with the read-only note)
        self.refused_actions = frozenset(STEERING_ACTIONS) if self.read_only else frozenset()
        # checked when the settings loaded (pipeline_core.keys): known ids, keys a terminal
        # sends, no two bindings on one key where both are active
        self.set_keymap(dict(settings.keys))

    # --- layout ---------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StatusHeader(id="header")
        with Vertical(id="main"):
            with Horizontal(id="pipeline"):
                with Vertical(id="panes"):
                    for stage in STAGE_NAMES:
                        yield StagePane(stage, max_lines=PANE_LINES, id=f"pane-{stage}", classes="stage-pane")
                with Vertical(id="side"):
                    yield InstrumentProgressList(id="progress")
                    yield CountersPanel("reading…", id="counters")
            yield EventsPanel(capacity=EVENT_CAPACITY, window=EVENT_WINDOW, id="events")
        # the palette (ctrl+p) is in the help screen: its footer entry would push "? help q quit"
        # off an 80-column footer
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#progress").border_title = "Analyzer"
        self.query_one("#counters").border_title = "Counters"
        self.query_one("#events").border_title = "Events"
        # the last run (also after a restart): its events and its panes' tails, shown as past
        # (its failures were notified when they happened, not again now)
        first = self.engine.snapshot()
        if first.current is None and first.last_run and first.last_run.get("run_id"):
            self._past_runs.add(str(first.last_run["run_id"]))
        self._unsubscribe = self.engine.subscribe(self.receive, catch_up=True)
        # the timers keep ticking while the console shuts down and its screens are taken apart
        self.set_interval(FLUSH_SECONDS, self._while_running(self.flush), name="flush")
        self.set_interval(STATUS_SECONDS, self._while_running(self.refresh_status), name="status")
        self.set_interval(COUNTERS_SECONDS, self._while_running(self.refresh_counters), name="counters")
        self.serve_worker = self._serve()
        self.refresh_status()
        self.refresh_counters()
        self._layout_for(self.size.width, self.size.height)
        if not self.is_headless:
            # losing the terminal, SIGTERM or SIGINT: stop the engine cleanly (the run is recorded)
            loop = asyncio.get_running_loop()
            for sig in STOP_SIGNALS:
                if sig == signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN:
                    continue  # started under nohup: a hang-up is meant to be ignored
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, self._signal_quit, sig == signal.SIGHUP)
        self.call_after_refresh(self._start_requested)
        self.call_after_refresh(self._freeze_startup_objects)

    def _freeze_startup_objects(self) -> None:
        # Modules, widgets and styles live as long as the console; moving them out of the
        # collector's reach keeps each full collection short, so a flood of events does not
        # stall key presses behind a long garbage-collection pass.
        gc.freeze()

    def _start_requested(self) -> None:
        """``qtsw --run-now`` / ``--stage X`` with the console: ask for that run once serving."""
        full = True if self.options.get("full") else None  # None: the engine's own default
        if self.options.get("stage"):
            self.engine.request_run("stage", stages=[self.options["stage"]], full=full)
        elif self.options.get("run_now"):
            self.engine.request_run("manual", full=full)

    def _while_running(self, tick: Callable[[], None]) -> Callable[[], None]:
        def guarded() -> None:
            if self.is_running:
                tick()

        return guarded

    def on_resize(self, event: Resize) -> None:
        self._layout_for(event.size.width, event.size.height)

    def _layout_for(self, width: int, height: int) -> None:
        try:
            main = self.query_one("#main")
        except Exception:  # resized before compose finished
            return
        main.set_class(width >= WIDE[0] and height >= WIDE[1], "-wide")
        if main.has_class("-wide"):
            self.query_one("#events", EventsPanel).catch_up()

    # --- the engine -----------------------------------------------------------------------------
    @work(exclusive=True, group="engine", exit_on_error=False, name="engine")
    async def _serve(self) -> None:
        import anyio

        server = None
        if self.options.get("control") and not getattr(self.engine, "attached", False):
            # the engine this console hosts serves its socket too, so others can attach
            from pipeline_core.control import ControlError, ControlServer

            server = ControlServer(self.engine, self.settings, hosted_by="console")
            try:
                server.open()
            except ControlError as exc:
                self.notify(f"{exc}; other consoles cannot attach", severity="warning", timeout=15)
                server = None
        async with anyio.create_task_group() as tg:
            if server is not None:
                tg.start_soon(server.serve)
            await self.engine.serve(
                schedule=bool(self.options.get("schedule", True)),
                not_before=self.options.get("not_before"),
            )
            tg.cancel_scope.cancel()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is not self.serve_worker:
            if event.state == WorkerState.ERROR and event.worker.error is not None:
                self.notify(f"{event.worker.name or 'worker'}: {event.worker.error}", severity="error")
            return
        if event.state == WorkerState.ERROR:
            self.notify(f"The engine stopped: {event.worker.error}", title="Engine", severity="error", timeout=30)
        elif event.state == WorkerState.SUCCESS and not self.closing:
            self.notify("The engine stopped.", title="Engine", severity="warning")
        if self.is_running:  # not while the console's screens are taken apart
            self.refresh_status()

    def receive(self, message: EventMessage | OutputMessage) -> None:
        """The engine's subscriber: append to the buffers, nothing else (quick; never raises)."""
        try:
            if isinstance(message, OutputMessage):
                buf = self._lines.get(message.stage)
                if buf is not None:
                    line = message.line if len(message.line) <= LINE_CHARS else message.line[:LINE_CHARS] + " …"
                    inst = message.instrument
                    # the analyzer's processes share a pane: say whose line it is (once)
                    buf.append(f"{inst} │ {line}" if inst and not line.startswith(inst) else line)
                    self.received["lines"] += 1
            elif isinstance(message, EventMessage):
                ev = message.event
                self._events.append(ev)
                self.received["events"] += 1
                if ev.stage in self._lines and ev.event in ("start", "skipped"):
                    # a run's mark in the stage's pane; a skipped stage says why
                    buf = self._lines[ev.stage]
                    buf.append(f"── run {short_id(ev.run_id)} · {clock_time(ev.timestamp)} ──")
                    if ev.event == "skipped":  # on its own line(s), wrapped to the pane
                        buf.append(f"skipped: {ev.data.get('reason') or ev.msg}")
        except Exception:  # noqa: BLE001 - a display problem must never reach the engine
            pass

    def flush(self) -> None:
        """Hand the buffered messages to the widgets: one batch per pane and one for the events."""
        info = self.engine.host_info()
        if info.get("mode") == "attached" and bool(info.get("connected")) != self._was_connected:
            self.refresh_status()  # attached (or detached): the header says so first
        # time-boxed: at most EVENTS_PER_FLUSH events per batch, the rest wait for the next one
        pending = self._events
        now = time.monotonic()
        if len(pending) >= FLOOD_EVENTS and now - self._last_flush < FLOOD_SECONDS:
            return  # a flood: fewer, bigger batches, so the console does not starve the engine
        self._last_flush = now
        take = min(len(pending), EVENTS_PER_FLUSH)
        events: list[Event] = [pending.popleft() for _ in range(take)]
        lines: dict[str, list[str]] = {}
        for stage, buf in self._lines.items():
            if not buf:
                continue
            if stage not in self._panes_ready:
                # lines that came before the pane's first layout (the last run's tails, at
                # start) wait for it, so they are wrapped to its width like every later line
                if self.query_one(f"#pane-{stage}", StagePane).scrollable_content_region.width < MIN_WRAP:
                    continue
                self._panes_ready.add(stage)
            lines[stage] = list(buf)
            buf.clear()
        if not events and not lines:
            return
        with self.batch_update():
            for stage, batch in lines.items():
                self.query_one(f"#pane-{stage}", StagePane).add_lines(batch)
            if events:
                self.query_one("#events", EventsPanel).add_events(events)
        self.flushed["events"] += len(events)
        self.flushed["batches"] += 1
        self._unfrozen_events += len(events)
        if self._unfrozen_events >= FREEZE_EVERY:
            # The event store keeps up to 100,000 events for the console's lifetime; frozen,
            # they are no longer rescanned by every full collection (which otherwise grows to
            # tens of milliseconds and delays key presses). Evicted events are still freed by
            # reference counting; young cyclic garbage is collected first (cheap: generations 0
            # and 1 are small), so little is kept, and this happens once per thousands of events.
            gc.collect(1)
            gc.freeze()
            self._unfrozen_events = 0
        if events:
            self._notify_failures(events)
            self.refresh_status()
            if any(e.is_terminal and e.stage != "scheduler" for e in events):
                self.refresh_counters()  # a stage moved files: the counters show it now

    def _notify_failures(self, events: Sequence[Event]) -> None:
        for ev in events:
            if ev.run_id in self._past_runs:
                continue
            if ev.event == "alert" and ev.data.get("state") == "firing":
                severity = "error" if ev.data.get("severity") == "critical" else "warning"
                self.alerts_notified.append((severity, ev.msg))
                self.notify(ev.msg, title="Alert (! to see)", severity=severity, timeout=20, markup=False)
                continue
            if ev.event != "failure":
                continue
            error = event_text(ev).strip() or "no error message"
            if ev.stage == "pipeline":
                status = str(ev.data.get("status") or "failure")
                severity = "warning" if status == "partial" else "error"
                text = error if status in error else f"Run ended {status}: {error}"
                title = f"Run {short_id(ev.run_id)} {status}"
            else:
                # a stage's terminal failure event also reports `partial` (data.status)
                partial = ev.data.get("status") == "partial"
                severity = "warning" if partial else "error"
                text = error
                if not text.lower().startswith(ev.stage):
                    text = f"{ev.stage} {'partial' if partial else 'failed'}: {text}"
                title = f"{ev.stage.title()} {'partial' if partial else 'failed'}"
                if ev.stage == "translator" and "quarantined" in text:
                    text += f" ({key_label(self, 'quarantine', 'u')}: the quarantine, why and re-queue)"
            self.notified.append((severity, title, text))
            self.notify(text, title=title, severity=severity, timeout=20, markup=False)

    def refresh_status(self) -> None:
        """Header, stage pane titles and instrument bars from the engine snapshot."""
        snap = self.engine.snapshot()
        self.snapshot = snap
        now = self.clock()
        host = self._host_label()
        monitor = getattr(self.engine, "alerts", None)  # an attached console has none of its own
        alerts = sum(1 for a in monitor.active() if not a.acknowledged) if monitor else 0
        header = self.query_one("#header", StatusHeader)
        header.alerts = alerts
        header.show(snap, now, host)
        for screen in self.screen_stack[1:]:  # history and results keep the header
            for other in screen.query(".screen-header").results(StatusHeader):
                other.alerts = alerts
                other.show(snap, now, host)
        run = snap.current
        # while no run is active, the panes and bars show the last one (also after a restart),
        # their titles saying which run that was
        shown = run if run is not None else snap.last_state
        past = ""
        if run is None and snap.last_run:
            ended = parse_time(snap.last_run.get("ended")) or parse_time(snap.last_run.get("started"))
            past = f"last run {ended:%H:%M}" if ended is not None else "last run"
        for stage in STAGE_NAMES:
            pane = self.query_one(f"#pane-{stage}", StagePane)
            if shown is not None and stage in shown.stages:
                st = shown.stages[stage]
                pane.set_state(st.state, st.elapsed(now) if st.started else None, stage_bar(st, shown), past)
            elif run is None and snap.last_run:
                pane.set_state((snap.last_run.get("stages") or {}).get(stage), past=past)
        if shown is not None:
            an = shown.stages.get("analyzer")
            note = f"analyzer: {an.state}" if an is not None else "no analyzer work"
            self.query_one("#progress", InstrumentProgressList).show(shown.run_id, shown.instruments, now, note)

    def _host_label(self) -> str:
        """Who runs the engine, for the header; says so when an attached engine comes or goes."""
        info = self.engine.host_info()
        connected = bool(info.get("connected"))
        web = ("web read-only · " if self.read_only else "web control · ") if self.web else ""
        if info.get("mode") != "attached":
            return web + "hosting"
        if connected != self._was_connected:
            self._was_connected = connected
            if connected:
                if self._told_no_engine:
                    self.clear_notifications()  # the note on how to start one has served
                self.notify(f"Attached to the engine, pid {info.get('pid')}.", title="Engine")
            elif self._attached_once:
                why = info.get("problem") or ENGINE_GONE
                # the engine ended (its usual cause, said once), or this console was cut off
                text = ("The engine went away; reattaching when it is back." if why == ENGINE_GONE
                        else f"Detached from the engine: {why}. Reattaching.")
                self.notify(text, title="Engine", severity="warning", timeout=20)
            self._attached_once = self._attached_once or connected
        on_attached = self.options.get("on_attached")
        if connected and info.get("caught_up") and on_attached is not None:
            # once, after the first screen that shows the engine's state (the catch-up has come)
            self.options["on_attached"] = None
            self.call_after_refresh(on_attached)
        if not connected and not self._attached_once and info.get("problem") and not self._told_no_engine:
            # a console that has never seen an engine (a browser tab opened before it started)
            self._told_no_engine = True
            root = self.settings.root
            self.notify(f"No engine is running on data root {root}. Start one with "
                        f"'qtsw --no-ui --root {root}' (or the qtsw systemd service); this console "
                        "attaches by itself once it is up.", title="No engine", severity="warning",
                        timeout=24 * 3600, markup=False)
        if not connected:
            if not self._attached_once:
                return web + "no engine running: waiting for one (qtsw --no-ui)"
            return web + "detached: waiting for an engine"
        since = clock_time(info.get("since"), "%H:%M")
        return f"{web}attached pid {info.get('pid')} since {since}"

    @work(thread=True, exclusive=True, group="counters", exit_on_error=False, name="counters")
    def refresh_counters(self) -> None:
        counters = read_counters(self.settings)  # file stats, off the event loop
        self.call_from_thread(self._show_counters, counters)
        self._read_results_ahead()

    def _read_results_ahead(self) -> None:
        """Once after start and once after each run, from the counters' thread: the results
        screen's first figures are computed before the operator asks (it then opens at once)."""
        snap = self.snapshot
        if snap is None or snap.current is not None or time.monotonic() - self._started_at < READ_AHEAD_AFTER:
            return  # not while the console draws its first screen, nor while a run writes
        last = (snap.last_run or {}).get("run_id")
        if last == self._read_ahead_for:
            return
        self._read_ahead_for = last
        from pipeline_core import results  # numpy and pyarrow: not at the console's start

        try:
            results.read_ahead(self.settings)
        except Exception:  # noqa: BLE001 - the screen reads them itself, and says what failed
            pass

    def _show_counters(self, counters: Counters) -> None:
        self.query_one("#counters", CountersPanel).show(counters)
        header = self.query_one("#header", StatusHeader)
        stale = tuple(sorted(counters.stale_results))
        if stale != header.stale:
            header.stale = stale
            if self.snapshot is not None:
                header.show(self.snapshot, self.clock())

    # --- actions --------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # A question on screen takes only its answer; keys meant for the main screen do nothing
        # elsewhere (the event view and its filter would change unseen).
        if isinstance(self.screen, ConfirmScreen) and action != "pop_screen":
            return False
        if action in ("events", "filter") and len(self.screen_stack) > 1:
            return False
        return True

    def _serving(self) -> bool:
        if self.serve_worker is None or self.serve_worker.state not in (WorkerState.PENDING, WorkerState.RUNNING):
            self.notify("The engine is not running (see the earlier message).", severity="error")
            return False
        return True

    def _refusal(self) -> str:
        return getattr(self.engine, "last_refusal", "") or "a run is already active"

    @steers_the_engine
    def action_run_now(self) -> None:
        if self._serving() and not self.engine.request_run("manual"):
            self.notify(f"Not started: {self._refusal()}.", severity="warning")
        self.refresh_status()

    @steers_the_engine
    def action_run_stage(self, stage: str) -> None:
        if self._serving() and not self.engine.request_run("stage", stages=[stage]):
            self.notify(f"{stage.title()} not started: {self._refusal()}.", severity="warning")
        self.refresh_status()

    @steers_the_engine
    def action_toggle_pause(self) -> None:
        if self.engine.paused:
            self.engine.resume()
            self.notify("Schedule resumed.")
        else:
            self.engine.pause()
            self.notify("Schedule paused: no scheduled runs until resumed (r still runs).")
        self.refresh_status()

    @steers_the_engine
    def action_cancel_run(self) -> None:
        if not self.engine.busy:
            self.notify("No run is active.")
            return
        def question() -> str:
            # asked again while the dialog is open: it names the stage running now
            run = self.engine.snapshot().current
            if run is None:
                return "The run has ended: nothing left to cancel."
            return f"Cancel run {short_id(run.run_id)}" + (f" ({run.stage} running)?" if run.stage else "?")

        def answered(yes: bool | None) -> None:
            if yes and not self.engine.cancel():
                self.notify("The run had already ended.")
            elif yes:
                self.notify("Cancelling: the stages are being stopped.")

        self.push_screen(ConfirmScreen(question, yes="Cancel run", no="Keep running"), answered)

    def action_history(self) -> None:
        self.push_screen(HistoryScreen(self.settings))

    def action_results(self) -> None:
        # imported when first asked for: numpy and pyarrow would add a third of a second to
        # every console's start (an attached console's time to show the engine)
        from qtsw_tui.screens.results import ResultsScreen

        self.push_screen(ResultsScreen(self.settings))

    def action_quarantine(self) -> None:
        self.push_screen(QuarantineScreen(self.settings))

    def action_alerts(self) -> None:
        monitor = getattr(self.engine, "alerts", None)
        if monitor is None:
            self.notify("Alerts are listed by the console that hosts the engine, and by "
                        "'qtsw status'.", title="Alerts", markup=False)
            return
        if not isinstance(self.screen, AlertsScreen):
            self.push_screen(AlertsScreen(monitor))

    def action_events(self) -> None:
        main = self.query_one("#main")
        panel = self.query_one("#events", EventsPanel)
        if main.has_class("-wide"):
            panel.table.focus()
            return
        main.toggle_class("-events")
        if main.has_class("-events"):
            panel.catch_up()
            panel.table.focus()

    def close_events_view(self) -> bool:
        """Close the events view opened with ``e`` (below the wide layout it covers the panes);
        False when it is not open as a view (the wide layout shows the table all the time)."""
        main = self.query_one("#main")
        if main.has_class("-wide") or not main.has_class("-events"):
            return False
        main.remove_class("-events")
        self.set_focus(None)
        return True

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The command palette (ctrl+p): every action of the console with its key, then
        Textual's own (theme, keys, screenshot, quit)."""
        if screen is self.screen_stack[0]:  # the main screen (the palette opened over it)
            for shown, desc, binding in self._key_rows():
                if binding.id == "quit_ctrl":
                    continue
                yield SystemCommand(desc[:1].upper() + desc[1:], f"key: {shown}",
                                    partial(self.run_action, binding.action))
        yield from super().get_system_commands(screen)

    def action_filter(self) -> None:
        main = self.query_one("#main")
        main.add_class("-events")
        panel = self.query_one("#events", EventsPanel)
        panel.catch_up()
        panel.open_filter()

    def _key_rows(self) -> list[tuple[str, str, Binding]]:
        """(key as currently bound, what it does, binding) for every app binding."""
        out = []
        for binding in self.BINDINGS:
            if not isinstance(binding, Binding):
                continue
            keys = self._keymap.get(binding.id or "", binding.key)
            shown = ", ".join(self.get_key_display(Binding(k.strip(), "")) for k in keys.split(","))
            out.append((shown, self.DESCRIPTIONS.get(binding.id or "", binding.description), binding))
        return out

    def key_help(self) -> list[tuple[str, str]]:
        """(key as currently bound, what it does) for every app binding."""
        rows = self._key_rows()
        also = {b.action: shown for shown, _, b in rows if b.id == "quit_ctrl"}  # one row for quit
        rows = [(shown + (f", {also[b.action]}" if b.id == "quit" and b.action in also else ""), desc)
                for shown, desc, b in rows if b.id != "quit_ctrl"]
        palette = self.get_key_display(Binding(self.COMMAND_PALETTE_BINDING, ""))
        return [*rows, (palette, "command palette: every action by name, with its key")]

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.key_help()))

    async def action_request_quit(self) -> None:
        if self.closing:
            return
        if self.engine.busy and not self.engine.attached:  # an attached console leaves the run alone
            run = self.engine.snapshot().current

            def answered(yes: bool | None) -> None:
                if yes:
                    self.run_worker(self.shutdown(), group="quit", exit_on_error=False)

            which = f"Run {short_id(run.run_id)} is active" if run else "A run is active"
            self.push_screen(
                ConfirmScreen(f"{which}. Cancel it and quit?", yes="Cancel and quit", no="Stay"), answered
            )
        else:
            await self.shutdown()

    async def action_quit(self) -> None:
        await self.action_request_quit()

    def _signal_quit(self, hangup: bool) -> None:
        self._start_exit_watchdog()
        if hangup and not self.hung_up:
            # The terminal is gone (SSH dropped, window closed): anything drawn now would only
            # fill the output queue of a terminal that cannot take it, so drawing stops here.
            self.hung_up = True
            self._no_drawing = self.batch_update()
            self._no_drawing.__enter__()
        self.run_worker(self.shutdown(), group="quit", exit_on_error=False)

    def _start_exit_watchdog(self) -> None:
        """A stop signal must end the process, whatever state the screen is in.

        A thread, not a task: it works even when the event loop is blocked (a terminal that
        takes no more output, a stuck write). Once the engine has stopped (its active run is
        cancelled and recorded) the console has ``EXIT_GRACE`` seconds to exit by itself; then
        the process ends here and the kernel frees the engine lock with it.
        """
        if self._watchdog is not None:
            return

        def watch() -> None:
            deadline = time.monotonic() + STOP_SECONDS
            worker = self.serve_worker
            while (
                worker is not None
                and worker.state in (WorkerState.PENDING, WorkerState.RUNNING)
                and time.monotonic() < deadline
            ):
                time.sleep(0.1)
            time.sleep(EXIT_GRACE)
            os._exit(HANGUP_EXIT if self.hung_up else 3 if self.stopped_busy else 0)

        self._watchdog = threading.Thread(target=watch, name="qtsw-exit-watchdog", daemon=True)
        self._watchdog.start()

    async def shutdown(self) -> None:
        """Stop the engine (an active run is cancelled and recorded), wait for it, then exit.

        After a hang-up the process ends at once once the engine has stopped: restoring a
        terminal that no longer exists can block forever, and nothing is left to do.
        """
        if self.closing:
            return
        self.closing = True
        busy = self.stopped_busy = self.engine.busy and not self.engine.attached
        active = self.engine.snapshot().current if busy else None
        if busy:
            self.notify("Cancelling the run and stopping the engine…", timeout=STOP_SECONDS)
        self.engine.stop()  # attached: only detaches
        worker = self.serve_worker
        if worker is not None and worker.state in (WorkerState.PENDING, WorkerState.RUNNING):
            try:
                await asyncio.wait_for(worker.wait(), STOP_SECONDS)
            except Exception:  # noqa: BLE001 - failed, cancelled or too slow: exit anyway
                worker.cancel()
        if self.hung_up:
            if self._unsubscribe is not None:
                self._unsubscribe()
            os._exit(HANGUP_EXIT)
        if active is not None:
            self.farewell = self._farewell(active.run_id)
        self.exit(3 if busy else 0)

    def _farewell(self, run_id: str) -> str:
        """What the command line prints once the console has gone: how the run it stopped ended."""
        from pipeline_core import history

        try:
            line = next((r for r in reversed(history.read_runs(self.settings)) if r.get("run_id") == run_id), None)
            report = history.find_report(self.settings, run_id)
        except Exception:  # noqa: BLE001 - a note on the way out must not stop the exit
            line, report = None, None
        status = (line or {}).get("status") or "cancelled"
        text = f"run {short_id(run_id)} {status} and recorded"
        if report and report.get("path"):
            text += f" (report {report['path']})"
        return text + "; the engine has stopped"

    def on_unmount(self) -> None:
        gc.unfreeze()  # what was frozen at start-up may be collected again once the console is gone
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if not self.is_headless:
            loop = asyncio.get_running_loop()
            for sig in STOP_SIGNALS:
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)


def build_app(
    settings: Settings,
    engine: Engine,
    options: dict[str, Any] | None = None,
    *,
    clock: Callable[[], datetime] | None = None,
) -> QtswApp:
    """The console over ``engine``, as the command line runs it and the tests drive it.

    ``options`` (all optional): ``schedule`` (bool, default True: the quarter-hour schedule
    runs), ``not_before`` (aware datetime: first scheduled run not before it), ``run_now``
    (bool: a full run at start), ``stage`` (``translator``/``analyzer``/``merger``: one stage
    at start), ``full`` (bool: with ``run_now``/``stage``, re-analyse everything),
    ``on_attached`` (a callable: called once, after the screen first shows the attached engine;
    the attached console steps back there, :func:`pipeline_core.remote.step_back`).
    ``clock`` is the console's Chicago clock (tests and snapshots pass a fixed one).
    Keys are remapped from ``settings.keys`` ({binding id: key}).
    """
    return QtswApp(settings, engine, options, clock=clock)

