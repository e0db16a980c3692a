"""The engine (SPEC §6): runs, their stages, the schedule, and what the watchers see.

A run has a run_id (uuid4), a trigger (``schedule``, ``manual``, ``stage``) and the stages
Translator → Analyzer → Merger, each a subprocess (:mod:`pipeline_core.proc`):

* the translator runs if raw files are ready (``rawfiles.scan_raw``);
* the analyzer runs if analysis is pending (``catalog.pending_analysis``) — also after a failed
  translator — with one process per instrument, up to ``settings.effective_workers`` at once;
  one instrument failing leaves the others running and makes the stage ``partial``;
* the merger runs if analyzer output awaits merging (``catalog.pending_merges``).

A stage with nothing to do is recorded as ``skipped`` with the reason. The run's status is the
worst of its stages (success < partial < failure), or ``cancelled``. Everything a run does is
written to its event file (one writer: this engine), then summarised in an audit report and one
``logs/runs.jsonl`` line; the run's terminal ``pipeline`` event is written last, so a run file
without one is a run whose engine died — :meth:`Engine.recover` closes it as a failure.

Watchers (the console, the headless printer) :meth:`Engine.subscribe` to every event written
and every free-text line a stage prints, and read :meth:`Engine.snapshot` on a timer. The
snapshot carries the active run (with each stage's progress and an estimate of the time left
from recent runs) or, while none is active, the last run's state, rebuilt from its event file
after a restart; a console subscribes with ``catch_up`` to see the last run's events and the
tails of its stage logs first.

The engine does not take the data root's lock itself: whoever runs it (the command line) holds
:class:`pipeline_core.lock.EngineLock` for as long as the engine lives.
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

from pipeline_core import catalog, clock, history, lock, proc
from pipeline_core.alerts import AlertMonitor
from pipeline_core.events import (
    Event,
    EventWriter,
    read_events,
    run_event_path,
    scheduler_event_path,
)
from pipeline_core.protocol import Message
from pipeline_core.runstate import (
    CANCELLED,
    FAILURE,
    PARTIAL,
    RUNNING,
    SKIPPED,
    STAGE_NAMES,
    SUCCESS,
    WAITING,
    EngineSnapshot,
    EventMessage,
    InstrumentProgress,
    OutputMessage,
    RunEstimate,
    RunState,
    StageState,
    StageTypical,
    estimate_run,
)
from pipeline_core.schedule import MarkSchedule
from pipeline_core.settings import CHICAGO, ENGINE_VERSION, Settings, settings_args

TRIGGERS = ("schedule", "manual", "stage")
SCHEDULER_RUN_ID = "scheduler"
ENGINE_STOPPED = "engine stopped during run"
PROGRESS_EVENT_MIN_SECONDS = 1.0  # stage progress messages become events at most this often
LAST_RUN_EVENTS = 2000  # a new watcher is shown at most this many of the last run's events …
LAST_RUN_LINES = 2000  # … and at most this many of each stage's last output lines
ESTIMATE_RUNS = 10  # the time-left estimate goes by this many recent runs
_RANK = {SUCCESS: 0, SKIPPED: 0, PARTIAL: 1, FAILURE: 2}

Subscriber = Callable[[EventMessage | OutputMessage], None]
StageCommand = Callable[[str, str | None], list[str]]


def _iso(dt: datetime | None) -> str | None:
    return dt.astimezone(CHICAGO).isoformat() if dt is not None else None


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None:
        return None
    # in UTC: same-zone aware datetimes subtract by wall time, wrong across a DST change
    return round((b.astimezone(UTC) - a.astimezone(UTC)).total_seconds(), 3)


def worst(statuses: Sequence[str]) -> str:
    """The run status from stage statuses: cancelled if any, else the worst of the rest."""
    if CANCELLED in statuses:
        return CANCELLED
    rank = max((_RANK.get(s, 2) for s in statuses), default=0)
    return {0: SUCCESS, 1: PARTIAL, 2: FAILURE}[rank]


def analyzer_status(statuses: Sequence[str]) -> str:
    """The analyzer stage from its instruments: all good → success, none → failure, else partial."""
    if not statuses:
        return SUCCESS
    if all(s == SUCCESS for s in statuses):
        return SUCCESS
    if all(s == FAILURE for s in statuses):
        return FAILURE
    return PARTIAL


def _sum_counts(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Numeric counts added up across instruments (non-numeric values are left out)."""
    out: dict[str, Any] = {}
    for counts in parts:
        for k, v in counts.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                continue
            out[k] = out.get(k, 0) + v
    return out


@dataclass
class _Run:
    """A run in progress: its public state plus what the engine needs to finish it."""

    state: RunState
    requested: tuple[str, ...] | None
    full: bool
    mark: datetime | None = None
    writer: EventWriter | None = None
    scope: anyio.CancelScope | None = None
    cancel_requested: bool = False
    cancelled: bool = False  # the cancellation actually stopped something
    error: str | None = None
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # stage → done/total/msg
    report: dict[str, Any] | None = None  # the audit report, once written
    last_progress_event: dict[str, float] = field(default_factory=dict)  # key → monotonic


class Engine:
    """Runs the pipeline: one run at a time, on demand or on the schedule.

    ``now`` is the Chicago clock (injectable for tests and snapshots); ``full`` makes runs
    re-analyse everything by default; ``stage_command(stage, instrument) -> argv`` replaces the
    stage subprocess command (tests use small scripts); ``launcher`` is a warm launcher the
    caller already started (the command line does: it imports while the engine does), used by
    the first serve or run; later ones start their own. Stage processes always get the
    environment variables ``QTSW_RUN_ID``, ``QTSW_STAGE``, ``QTSW_INSTRUMENT`` and ``QTSW_FULL``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        now: Callable[[], datetime] = clock.now,
        full: bool = False,
        stage_command: StageCommand | None = None,
        launcher: proc.WarmLauncher | None = None,
    ) -> None:
        self.settings = settings
        self.now = now
        self.full = full
        self.stage_command = stage_command
        self.not_before: datetime | None = None  # serve()'s default first mark (--schedule)
        self.schedule_tick = 1.0  # the scheduler looks at the clock at least this often
        settings.ensure_dirs()
        self._subs: list[Subscriber] = []
        self._run: _Run | None = None
        self._queued: _Run | None = None
        self._last_run = history.last_run(settings)
        self._last_state = self._load_last_state()
        self._typical: tuple[dict[str, StageTypical], int] = ({}, 0)
        self._paused = False
        self._serving = False
        self._schedule: MarkSchedule | None = None
        self._sched_writer: EventWriter | None = None
        self._sched_lock = threading.RLock()
        self._tg: anyio.abc.TaskGroup | None = None
        self._stop = False
        self._wake: anyio.Event | None = None
        self._recovered = False
        self._loop_thread: int | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._subscriber_errors = 0
        self._launcher: proc.WarmLauncher | None = None
        self._prestarted = launcher  # started by the caller, used by the first serve or run
        self._since = clock.iso_now()
        self.alerts = AlertMonitor(settings, now=self.now, emit=self._alert_emit)

    attached = False  # this process hosts the engine (a RemoteEngine is attached to one)

    def host_info(self) -> dict[str, Any]:
        """Who runs the engine: this process (``hosting``), its pid and since when."""
        return {"mode": "hosting", "pid": os.getpid(), "since": self._since, "connected": True,
                "problem": None}

    # --- watchers -----------------------------------------------------------------------------

    def subscribe(self, fn: Subscriber, *, catch_up: bool = False) -> Callable[[], None]:
        """Call ``fn`` for every event written and every free-text stage line. Returns unsubscribe.

        With ``catch_up`` (a console), while no run is active ``fn`` first gets the last run's
        events and the tail of each stage's output (:meth:`last_run_messages`), as an attached
        console gets them from the control socket.
        """
        if catch_up and self._run is None:
            for msg in self.last_run_messages():
                fn(msg)
        self._subs.append(fn)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subs.remove(fn)

        return unsubscribe

    def _publish(self, msg: EventMessage | OutputMessage) -> None:
        for fn in list(self._subs):
            try:
                fn(msg)
            except Exception:  # a watcher's bug must not stop a run
                self._subscriber_errors += 1
                if self._subscriber_errors == 1:
                    traceback.print_exc(file=sys.stderr)

    def snapshot(self) -> EngineSnapshot:
        """The engine now: scheduler state, next mark, the active run (a copy), the last run."""
        current = copy.deepcopy(self._run.state) if self._run is not None else None
        return EngineSnapshot(
            now=self.now(),
            scheduler=self.scheduler_state,
            next_mark=self.next_mark,
            current=current,
            last_run=dict(self._last_run) if self._last_run else None,
            last_state=copy.deepcopy(self._last_state) if current is None else None,
            estimate=self._estimate(current) if current is not None else None,
        )

    def _estimate(self, run: RunState) -> RunEstimate | None:
        typical, runs = self._typical
        active = self._run
        if active is not None and active.requested is not None:
            typical = {k: v for k, v in typical.items() if k in active.requested}
        return estimate_run(run, typical, runs, self.now())

    # --- the last run, for watchers that come after it ---------------------------------------

    def _load_last_state(self) -> RunState | None:
        """The last run's stages and instruments, rebuilt from its event file (None without one)."""
        if not self._last_run or not self._last_run.get("run_id"):
            return None
        try:
            events = history.run_events(self.settings, str(self._last_run["run_id"]))
        except OSError:
            return None
        if not any(e.stage == "pipeline" and e.event == "start" for e in events):
            return None
        rs, _, _ = _state_from_events(events)
        return rs

    def last_run_messages(self) -> list[EventMessage | OutputMessage]:
        """The last run as a console that starts after it sees it: its last
        :data:`LAST_RUN_EVENTS` events, then the last :data:`LAST_RUN_LINES` lines of each
        stage's output (the analyzer's per instrument, in instrument order). [] with no run."""
        rs = self._last_state
        if rs is None:
            return []
        out: list[EventMessage | OutputMessage] = []
        try:
            events = history.run_events(self.settings, rs.run_id)
        except OSError:
            events = []
        out += [EventMessage(e) for e in events[-LAST_RUN_EVENTS:]]
        for key, path in history.run_logs(self.settings, rs.run_id).items():
            stage, _, inst = key.partition("-")
            if stage not in STAGE_NAMES:
                continue
            for line in history.tail_lines(path, LAST_RUN_LINES):
                out.append(OutputMessage(rs.run_id, stage, inst or None, line))
        return out

    @property
    def busy(self) -> bool:
        """A run is active (or queued to start)."""
        return self._run is not None or self._queued is not None

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def scheduler_state(self) -> str:
        """``running``, ``paused`` or ``off`` (no schedule loop)."""
        if self._schedule is None:
            return "off"
        return "paused" if self._paused else "running"

    @property
    def next_mark(self) -> datetime | None:
        return self._schedule.next_mark if self._schedule is not None else None

    # --- thread hand-off -------------------------------------------------------------------

    def _in_loop(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the engine's event loop thread (direct when already there)."""
        if (
            self._token is None
            or self._loop_thread is None
            or threading.get_ident() == self._loop_thread
        ):
            return fn()
        return anyio.from_thread.run_sync(fn, token=self._token)

    def _bind_loop(self) -> None:
        self._loop_thread = threading.get_ident()
        self._token = anyio.lowlevel.current_token()

    def _unbind_loop(self) -> None:
        self._loop_thread = None
        self._token = None

    # --- scheduler events -------------------------------------------------------------------

    def _sched_emit(self, event: str, msg: str, data: dict[str, Any] | None = None) -> Event:
        with self._sched_lock:  # alert delivery threads write here too
            if self._sched_writer is None:
                self._sched_writer = EventWriter(
                    scheduler_event_path(self.settings.events_dir), SCHEDULER_RUN_ID
                )
            ev = self._sched_writer.emit("scheduler", event, msg, data)
        self._publish(EventMessage(ev))
        return ev

    def _alert_emit(self, msg: str, data: dict[str, Any]) -> None:
        """An ``alert`` event in the scheduler's log. Also called from the notifier's threads:
        written there directly (the writer is thread-safe), never waiting for the loop, which
        may be busy or already gone."""
        with contextlib.suppress(Exception):  # an alert that cannot be recorded stops nothing
            self._sched_emit("alert", msg, data)

    # --- control ------------------------------------------------------------------------------

    def request_run(
        self,
        trigger: str = "manual",
        stages: Sequence[str] | None = None,
        full: bool | None = None,
    ) -> bool:
        """Start a run in the background of :meth:`serve` (queued until serve starts).

        ``stages=None``: the whole pipeline; ``["analyzer"]``: that stage only (trigger
        ``stage``). Returns False, with a scheduler ``skipped`` event, if a run is active.
        """
        return bool(self._in_loop(lambda: self._request_run(trigger, stages, full)))

    def _request_run(
        self, trigger: str, stages: Sequence[str] | None, full: bool | None, mark: datetime | None = None
    ) -> bool:
        if self.busy:
            active = (self._run or self._queued).state.run_id  # type: ignore[union-attr]
            what = "scheduled run" if trigger == "schedule" else f"{trigger} run request"
            self._sched_emit(
                "skipped",
                f"{what} skipped: run {active[:8]} is still active",
                {"reason": "a run is active", "active_run": active, "trigger": trigger,
                 "stages": list(stages) if stages else None,
                 "mark": _iso(mark)},
            )
            return False
        run = self._prepare(trigger, stages, full, mark)
        if self._tg is None:
            self._queued = run
            self._run = None
        else:
            self._tg.start_soon(self._execute_in_background, run)
        return True

    async def run(
        self,
        trigger: str = "manual",
        stages: Sequence[str] | None = None,
        full: bool | None = None,
    ) -> RunState:
        """Do one run to its end in the caller's task and return its final state."""
        bound_here = self._loop_thread is None
        self._bind_loop()
        own_launcher = not self._serving and self._launcher_open()
        try:
            self.recover()
            if self.busy:
                active = (self._run or self._queued).state.run_id  # type: ignore[union-attr]
                raise RuntimeError(f"a run is already active: {active}")
            run = self._prepare(trigger, stages, full, None)
            await self._execute(run)
            return run.state
        finally:
            if own_launcher:
                await self._launcher_close()
            if bound_here and not self._serving:
                self._unbind_loop()

    def cancel(self) -> bool:
        """Cancel the active run (it ends ``cancelled``, recorded). False if there is none."""
        return bool(self._in_loop(self._cancel))

    def _cancel(self) -> bool:
        run = self._run or self._queued
        if run is None:
            return False
        run.cancel_requested = True
        if run.scope is not None:
            run.scope.cancel()
        # a queued run ends cancelled as soon as serve() starts it
        return True

    def pause(self) -> None:
        """Pause the schedule (a running run continues)."""
        self._in_loop(lambda: self._set_paused(True))

    def resume(self) -> None:
        self._in_loop(lambda: self._set_paused(False))

    def _set_paused(self, paused: bool) -> None:
        if paused == self._paused:
            return
        self._paused = paused
        if self._schedule is not None:
            nxt = self._schedule.next_mark
            if paused:
                self._sched_emit("log", "Schedule paused", {"level": "info", "paused": True})
            else:
                self._sched_emit(
                    "log",
                    f"Schedule resumed; next run {nxt:%H:%M}",
                    {"level": "info", "paused": False, "next_mark": _iso(nxt)},
                )
        self._poke()

    def stop(self) -> None:
        """Ask :meth:`serve` to end; the active run is cancelled and recorded first."""
        def _stop() -> None:
            self._stop = True
            self._cancel()
            self._poke()

        self._in_loop(_stop)

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # --- the serve loop -----------------------------------------------------------------------

    async def serve(self, *, schedule: bool = True, not_before: datetime | None = None) -> None:
        """The scheduler loop and background runs, until :meth:`stop` (or cancellation).

        With ``schedule``, a run starts at each mark of ``settings.schedule_minutes`` (Chicago),
        the first one not before ``not_before`` (default: :attr:`not_before`).
        """
        if self._serving:
            raise RuntimeError("the engine is already serving")
        self._serving = True
        self._bind_loop()
        self._wake = anyio.Event()
        try:
            self._launcher_open()
            self.recover()
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if self._queued is not None:
                    # active from this moment: until its task first runs it would otherwise be
                    # neither queued nor running, and a request could start a second run
                    run, self._queued = self._queued, None
                    self._run = run
                    tg.start_soon(self._execute_in_background, run)
                if schedule:
                    nb = not_before or self.not_before
                    self._schedule = MarkSchedule(self.settings.schedule_minutes, self.now, nb)
                    nxt = self._schedule.next_mark
                    marks = " ".join(f":{m:02d}" for m in self.settings.schedule_minutes)
                    self._sched_emit(
                        "start",
                        f"Scheduler started: runs at {marks} Chicago time; next run {nxt:%Y-%m-%d %H:%M %Z}",
                        {"minutes": list(self.settings.schedule_minutes), "next_mark": _iso(nxt),
                         "not_before": _iso(nb), "paused": self._paused, "pid": os.getpid()},
                    )
                while not self._stop:
                    if self._schedule is not None:
                        self._look_at_clock()
                    self._alert_tick()
                    delay = self.schedule_tick
                    if self._schedule is not None:
                        delay = min(delay, self._schedule.seconds_to_next() + 0.005)
                    with anyio.move_on_after(max(delay, 0.005)):
                        await self._wake.wait()
                    if self._wake.is_set():
                        self._wake = anyio.Event()
                self._cancel()
                # leaving the task group waits for the cancelled run to be recorded
        finally:
            await self._launcher_close()
            self._tg = None
            if self._schedule is not None:
                with contextlib.suppress(Exception):
                    self._sched_emit("log", "Scheduler stopped", {"level": "info"})
            self._schedule = None
            self.alerts.running_since = None
            self.alerts.close(timeout=self.alerts.delivery_bound())
            with self._sched_lock:
                if self._sched_writer is not None:
                    self._sched_writer.close()
                    self._sched_writer = None
            self._serving = False
            self._wake = None
            self._stop = False
            self._unbind_loop()

    @property
    def launcher(self) -> proc.WarmLauncher | None:
        """The warm launcher of the current serve or run (None when off or between runs)."""
        return self._launcher

    # --- the warm launcher ---------------------------------------------------------------------

    def _launcher_open(self) -> bool:
        """Start the warm launcher (``engine.warm_start``) for this serve or run; True if this
        call started it. It imports in the background while the engine plans."""
        if not self.settings.warm_start or self._launcher is not None:
            return False
        if self._prestarted is not None:
            self._launcher, self._prestarted = self._prestarted, None
            return True
        self._launcher = proc.WarmLauncher.for_settings(self.settings)
        try:
            self._launcher.start()
        except OSError as exc:  # no launcher: stages start as plain subprocesses
            self._launcher.disabled = f"it could not be started: {exc.strerror or exc}"
        return True

    async def _launcher_close(self) -> None:
        launcher, self._launcher = self._launcher, None
        if launcher is not None:
            with anyio.CancelScope(shield=True):
                await launcher.aclose()

    def _alert_tick(self) -> None:
        try:
            self.alerts.tick(self.scheduler_state, self._run.state.started if self._run is not None else None)
        except Exception:  # alerts never stop the scheduler
            traceback.print_exc(file=sys.stderr)

    def _look_at_clock(self) -> None:
        assert self._schedule is not None
        due = self._schedule.poll()
        if due.mark is None:
            return
        try:
            self.alerts.marks(due.missed, due.mark)
        except Exception:
            traceback.print_exc(file=sys.stderr)
        for m in due.missed:
            self._sched_emit(
                "log",
                f"Missed mark {m:%Y-%m-%d %H:%M %Z} (machine asleep or clock jump); "
                f"one run for {due.mark:%H:%M} instead",
                {"level": "warning", "mark": _iso(m), "missed": True, "run_for": _iso(due.mark)},
            )
        if self._paused:
            self._sched_emit(
                "skipped",
                f"Mark {due.mark:%H:%M} skipped: schedule paused",
                {"reason": "schedule paused", "mark": _iso(due.mark)},
            )
            return
        if self._request_run("schedule", None, None, due.mark):
            run = self._run or self._queued
            assert run is not None
            self._sched_emit(
                "log",
                f"Mark {due.mark:%H:%M}: run {run.state.run_id[:8]} started; "
                f"next run {self._schedule.next_mark:%H:%M}",
                {"level": "info", "mark": _iso(due.mark), "run_id": run.state.run_id,
                 "next_mark": _iso(self._schedule.next_mark)},
            )

    # --- a run ----------------------------------------------------------------------------------

    def _prepare(
        self, trigger: str, stages: Sequence[str] | None, full: bool | None, mark: datetime | None
    ) -> _Run:
        requested: tuple[str, ...] | None = None
        if stages is not None:
            requested = tuple(stages)
            unknown = [s for s in requested if s not in STAGE_NAMES]
            if unknown or not requested:
                raise ValueError(
                    f"unknown stage(s) {unknown or requested!r}; allowed: {', '.join(STAGE_NAMES)}"
                )
            if trigger == "manual":
                trigger = "stage"
        if trigger not in TRIGGERS:
            raise ValueError(f"unknown trigger {trigger!r}; allowed: {', '.join(TRIGGERS)}")
        rs = RunState(
            run_id=str(uuid.uuid4()),
            trigger=trigger,
            started=self.now(),
            stages={n: StageState(n) for n in STAGE_NAMES},
        )
        run = _Run(state=rs, requested=requested, full=self.full if full is None else full, mark=mark)
        self._run = run
        return run

    async def _execute_in_background(self, run: _Run) -> None:
        try:
            await self._execute(run)
        except anyio.get_cancelled_exc_class():
            raise
        except OSError as exc:  # the run could not be recorded at all (a full disk): one line
            print(f"qtsw: run not recorded: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        except Exception:  # already recorded as the run's error; keep the scheduler alive
            traceback.print_exc(file=sys.stderr)

    def _emit(self, run: _Run, stage: str, event: str, msg: str, data: dict[str, Any] | None = None) -> None:
        assert run.writer is not None
        ev = run.writer.emit(stage, event, msg, data)
        if run.writer.error is not None:
            self._record_failed(run, run.writer.error, run.writer.path)
        self._publish(EventMessage(ev))

    def _record_failed(self, run: _Run, exc: OSError, path: Path | str | None = None) -> None:
        """A record of the run could not be written (the first such failure is kept)."""
        if run.state.record_error is None:
            where = exc.filename or path or "?"
            run.state.record_error = f"{where}: {exc.strerror or exc}"

    async def _execute(self, run: _Run) -> None:
        """Do the run's stages and record it, whatever happens (cancellation included)."""
        self._run = run
        rs = run.state
        rs.started = self.now()
        try:
            run.writer = EventWriter(run_event_path(self.settings.events_dir, rs.run_id), rs.run_id)
        except BaseException:
            self._run = None
            raise
        t0 = time.monotonic()
        try:
            self._typical = history.stage_typical(self.settings, ESTIMATE_RUNS)
        except OSError:  # no estimate this time; the run does not depend on it
            self._typical = ({}, 0)
        self._emit(
            run, "pipeline", "start",
            f"Run {rs.run_id[:8]} started ({rs.trigger}"
            + (f": {', '.join(run.requested)}" if run.requested else "")
            + (", full re-analysis" if run.full else "") + ")",
            {"trigger": rs.trigger, "stages": list(run.requested) if run.requested else list(STAGE_NAMES),
             "full": run.full, "mark": _iso(run.mark), "engine_version": ENGINE_VERSION,
             "pid": os.getpid(), "host": socket.gethostname()},
        )
        try:
            with anyio.CancelScope() as scope:
                run.scope = scope
                if run.cancel_requested:
                    scope.cancel()
                try:
                    for name in STAGE_NAMES:
                        await self._stage(run, name)
                except anyio.get_cancelled_exc_class():
                    raise
                except Exception as exc:  # an engine bug: the run fails, naming it
                    run.error = f"engine error: {type(exc).__name__}: {exc}"
                    self._engine_trace(run, traceback.format_exc())
            if scope.cancelled_caught:
                run.cancelled = True
        except anyio.get_cancelled_exc_class():
            run.cancelled = True
            run.cancel_requested = True
            raise
        finally:
            run.scope = None
            self._finish(run, time.monotonic() - t0)

    def _engine_trace(self, run: _Run, text: str) -> None:
        path = self.settings.runs_dir / run.state.run_id / "engine.log"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            self._record_failed(run, exc, path)

    def _finish(self, run: _Run, duration: float) -> None:
        rs = run.state
        if run.cancelled or any(st.state == CANCELLED for st in rs.stages.values()):
            for name, st in rs.stages.items():
                if st.state == WAITING:
                    st.state = SKIPPED
                    st.reason = "run cancelled"
                    self._emit(run, name, "skipped", f"{name} not run: run cancelled", {"reason": st.reason})
            status = CANCELLED
        else:
            status = worst([st.state for st in rs.stages.values()])
            if run.error:
                status = FAILURE
                for name, st in rs.stages.items():
                    if st.state == WAITING:
                        st.state = SKIPPED
                        st.reason = "not reached: " + run.error
                        self._emit(run, name, "skipped", f"{name} not run: {run.error}", {"reason": st.reason})
        rs.status = status
        rs.ended = self.now()
        rs.stage = None
        report = self._report(rs, run.details, full=run.full, error=run.error, duration=duration)
        run.report = report
        report_file: Path | None = None
        try:
            report_file = history.write_report(self.settings, report, rs.started)
        except OSError as exc:
            self._record_failed(run, exc)
        stages = {n: st.state for n, st in rs.stages.items()}
        data = {"status": status, "stages": stages, "duration_seconds": round(duration, 3),
                "report": str(report_file) if report_file else None}
        if rs.record_error:
            data["record_error"] = rs.record_error
        if run.error:
            data["error"] = run.error
        if status == SUCCESS:
            event, msg = "success", f"Run succeeded in {duration:.1f} s"
        elif status == CANCELLED:
            event, msg = "cancelled", f"Run cancelled after {duration:.1f} s"
        else:
            bad = [f"{n} {s}" for n, s in stages.items() if s in (PARTIAL, FAILURE)]
            event, msg = "failure", f"Run ended {status}: {run.error or ', '.join(bad)}"
        # Order matters for a crash: the terminal event first, then the runs.jsonl line. Recovery
        # closes a run without a terminal event, and adds the line of a run that has one.
        assert run.writer is not None
        ev = run.writer.emit("pipeline", event, msg, data)
        if run.writer.error is not None:
            self._record_failed(run, run.writer.error, run.writer.path)
        line = _run_line(rs)
        try:
            history.append_run(self.settings, line)
        except OSError as exc:
            self._record_failed(run, exc)
        self._last_run = line
        self._last_state = copy.deepcopy(rs)
        if self._run is run:
            self._run = None
        self._publish(EventMessage(ev))  # watchers told last: the line is there when they look
        run.writer.close()
        if run.writer.error is not None:
            self._record_failed(run, run.writer.error, run.writer.path)
        try:
            # after the run is recorded: alerts read its report, and never change or delay it
            self.alerts.run_ended(report)
        except Exception:
            traceback.print_exc(file=sys.stderr)

    # --- stages -------------------------------------------------------------------------------

    async def _stage(self, run: _Run, name: str) -> None:
        await anyio.lowlevel.checkpoint()  # a cancellation asked for between stages lands here
        rs = run.state
        st = rs.stages[name]
        if run.requested is not None and name not in run.requested:
            self._skip(run, name, f"not requested (single-stage run of {', '.join(run.requested)})")
            return
        try:
            go, reason, data = self._plan(run, name)
        except Exception as exc:
            st.state = RUNNING
            st.started = self.now()
            rs.stage = name
            self._emit(run, name, "start", f"{name}: checking for work", {})
            self._stage_ended(run, name, FAILURE, error=f"could not check for work: {type(exc).__name__}: {exc}",
                              duration=0.0)
            self._engine_trace(run, traceback.format_exc())
            return
        if not go:
            self._skip(run, name, reason)
            return
        st.state = RUNNING
        st.started = self.now()
        rs.stage = name
        run.progress[name] = (0, 0, "")
        self._emit(run, name, "start", f"{name} started: {reason}", data)
        for stale in data.get("stale") or []:
            self._emit(run, name, "log",
                       f"{stale}: its export never completed (progress file stale); treated as ready",
                       {"level": "warning", "file": stale})
        t0 = time.monotonic()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeat, run, name, t0)
                if name == "analyzer":
                    await self._analyzer(run, data["instruments"])
                else:
                    await self._single(run, name)
                tg.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                self._stage_cancelled(run, name, time.monotonic() - t0)
            raise
        finally:
            if rs.stage == name:
                rs.stage = None

    def _skip(self, run: _Run, name: str, reason: str) -> None:
        st = run.state.stages[name]
        st.state = SKIPPED
        st.reason = reason
        self._emit(run, name, "skipped", f"{name} skipped: {reason}", {"reason": reason})

    def _plan(self, run: _Run, name: str) -> tuple[bool, str, dict[str, Any]]:
        """Whether stage ``name`` has work: (go, reason, start-event data)."""
        s = self.settings
        if name == "translator":
            from pipeline_core.rawfiles import scan_raw

            scan = scan_raw(s)
            stale = list(getattr(scan, "stale", []) or [])
            ready = list(dict.fromkeys([*scan.ready, *stale]))
            waiting = list(getattr(scan, "waiting", []) or [])
            exporting = list(getattr(scan, "exporting", []) or [])
            ignored = list(getattr(scan, "ignored", []) or [])
            if not ready:
                extra = []
                if waiting:
                    extra.append(f"{len(waiting)} not yet stable")
                if exporting:
                    extra.append(f"{len(exporting)} being exported")
                for p, why in ignored[:3]:
                    extra.append(f"{p.parent.name}/{p.name} ignored: {why}")
                return False, "no raw files ready" + (f" ({', '.join(extra)})" if extra else ""), {}
            names = [p.name for p in ready]
            return True, f"{len(ready)} raw file(s) ready", {
                "files": names[:100], "count": len(ready), "waiting": len(waiting),
                "exporting": len(exporting), "stale": [p.name for p in stale]}
        if name == "analyzer":
            pending = catalog.pending_analysis(s, full=run.full)
            if not pending:
                if not catalog.store_instruments(s):
                    return False, "no bars in the store", {}
                return False, "no pending analysis (no bars changed since the last analysis)", {}
            insts = sorted(pending)
            for inst in insts:
                run.state.instruments[inst] = InstrumentProgress(inst)
            return True, f"{len(insts)} instrument(s) to analyse: {', '.join(insts)}", {
                "instruments": insts, "reasons": pending, "workers": s.effective_workers,
                "full": run.full}
        pending_dirs = catalog.pending_merges(s)
        removed = catalog.removed_streams(s)
        if not pending_dirs and not removed:
            return False, "no analyzer output awaiting merge", {}
        why = f"{len(pending_dirs)} analyzer run folder(s) awaiting merge" if pending_dirs else ""
        if removed:
            why += ("; " if why else "") + f"results of instruments no longer in the settings: {', '.join(removed)}"
        return True, why, {
            "run_folders": [p.name for p in pending_dirs], "count": len(pending_dirs),
            "removed_streams": removed}

    def _command(self, run: _Run, stage: str, instrument: str | None) -> list[str]:
        if self.stage_command is not None:
            return list(self.stage_command(stage, instrument))
        args = [*settings_args(self.settings), "--run-id", run.state.run_id]
        if stage == "analyzer":
            assert instrument is not None
            args += ["--instrument", instrument]
            if run.full:
                args.append("--full")
        return proc.python_command(f"pipeline_core.{stage}", *args)

    async def _process(self, run: _Run, stage: str, instrument: str | None) -> proc.StageOutcome:
        """One stage process, its messages turned into events and its text into the log."""
        s = self.settings
        rs = run.state
        key = history.log_name(stage, instrument)
        log_path = s.runs_dir / rs.run_id / f"{key}.log"
        who = f"{stage} {instrument}" if instrument else stage

        def on_output(line: str) -> None:
            self._publish(OutputMessage(rs.run_id, stage, instrument, line))

        def on_note(text: str) -> None:
            self._publish(OutputMessage(rs.run_id, stage, instrument, f"[qtsw] {text}"))

        def on_silence(seconds: float) -> None:
            self._emit(run, stage, "log", f"{who}: no output for {seconds:.0f} s",
                       {"level": "warning", "silent_seconds": round(seconds, 1), "instrument": instrument})

        def on_message(msg: Message) -> None:
            self._on_message(run, stage, instrument, msg)

        def on_launcher(text: str, data: dict[str, Any]) -> None:
            label = f"{instrument}: " if instrument else ""
            self._emit(run, stage, "log", f"{label}{text}",
                       {"level": "warning", "instrument": instrument, **data})

        def on_log_error(exc: OSError) -> None:
            self._record_failed(run, exc, log_path)
            self._emit(run, stage, "log", f"{who}: its log {log_path} cannot be written: {exc.strerror or exc}",
                       {"level": "error", "file": str(log_path), "instrument": instrument})

        env = {
            proc.RUN_ID_VAR: rs.run_id,
            "QTSW_STAGE": stage,
            "QTSW_INSTRUMENT": instrument or "",
            "QTSW_FULL": "1" if run.full else "0",
        }
        return await proc.run_stage(
            self._command(run, stage, instrument),
            log_path=log_path,
            timeout=s.timeout(stage),
            grace=s.timeouts["grace"],
            silence_warning=s.timeouts["silence_warning"],
            env=env,
            on_output=on_output,
            on_message=on_message,
            on_silence=on_silence,
            on_note=on_note,
            on_log_error=on_log_error,
            launcher=self._launcher,
            on_launcher=on_launcher,
        )

    def _on_message(self, run: _Run, stage: str, instrument: str | None, msg: Message) -> None:
        body = msg.body
        if msg.type == "progress":
            try:
                own_done, own_total = int(body.get("done") or 0), int(body.get("total") or 0)
            except (TypeError, ValueError):
                return
            done, total = own_done, own_total
            text = msg.msg
            if instrument is not None and instrument in run.state.instruments:
                ip = run.state.instruments[instrument]
                ip.done, ip.total = done, total
                done = sum(i.done for i in run.state.instruments.values())
                total = sum(i.total for i in run.state.instruments.values())
            unit = body.get("unit")
            st = run.state.stages.get(stage)
            if st is not None:
                st.done, st.total, st.unit = done, total, str(unit or "")
            # what the heartbeat repeats: the stage's counts (summed over instruments), or for a
            # quantity with a unit (bytes of a large file) the stage's own words
            run.progress[stage] = (done, total, progress_text(done, total, text if unit else "", unit))
            key = f"{stage}:{instrument or ''}"
            last = run.last_progress_event.get(key, 0.0)
            now = time.monotonic()
            finished = own_done >= own_total > 0
            if now - last >= PROGRESS_EVENT_MIN_SECONDS or finished:
                run.last_progress_event[key] = now
                run.last_progress_event[stage] = now
                data = {"done": own_done, "total": own_total, "stage_done": done, "stage_total": total}
                if instrument:
                    data["instrument"] = instrument
                if unit:
                    data["unit"] = unit
                label = f"{instrument}: " if instrument else ""
                self._emit(run, stage, "progress", label + progress_text(own_done, own_total, text, unit), data)
        elif msg.type == "metric":
            data = dict(body.get("data") or {})
            if instrument:
                data.setdefault("instrument", instrument)
            self._emit(run, stage, "metric", msg.msg, data)
        elif msg.type == "warning":
            data = dict(body.get("data") or {})
            data["level"] = "warning"
            if instrument:
                data.setdefault("instrument", instrument)
            label = f"{instrument}: " if instrument else ""
            self._emit(run, stage, "log", f"{label}{msg.msg}", data)
        # the result message is judged when the process ends (proc.judge)

    async def _heartbeat(self, run: _Run, stage: str, t0: float) -> None:
        """A progress event at least every ``progress_interval`` seconds while the stage runs."""
        interval = self.settings.timeouts["progress_interval"]
        while True:
            last = max(run.last_progress_event.get(stage, t0), t0)
            wait = last + interval - time.monotonic()
            if wait > 0:
                await anyio.sleep(wait)
                continue
            run.last_progress_event[stage] = time.monotonic()
            done, total, shown = run.progress.get(stage, (0, 0, ""))
            elapsed = time.monotonic() - t0
            data: dict[str, Any] = {"done": done, "total": total, "elapsed_seconds": round(elapsed, 1),
                                    "heartbeat": True}
            if stage == "analyzer":
                data["instruments"] = {
                    i.instrument: {"state": i.state, "done": i.done, "total": i.total}
                    for i in run.state.instruments.values()
                }
            where = shown if total else "running"
            self._emit(run, stage, "progress", f"{stage} {where}, {elapsed:.0f} s elapsed", data)

    async def _single(self, run: _Run, name: str) -> None:
        t0 = time.monotonic()
        try:
            out = await self._process(run, name, None)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # could not even start it
            self._engine_trace(run, traceback.format_exc())
            self._stage_ended(run, name, FAILURE, error=f"could not run {name}: {type(exc).__name__}: {exc}",
                              duration=time.monotonic() - t0)
            return
        self._stage_ended(run, name, out.status, error=out.error, counts=out.counts, msg=out.msg,
                          duration=out.duration,
                          extra={"exit_code": out.exit_code, "timed_out": out.timed_out,
                                 "hung_after_result": out.hung_after_result, "pid": out.pid})

    async def _analyzer(self, run: _Run, instruments: Sequence[str]) -> None:
        rs = run.state
        limiter = anyio.CapacityLimiter(max(1, self.settings.effective_workers))
        outcomes: dict[str, dict[str, Any]] = {}
        t0 = time.monotonic()

        async def one(inst: str) -> None:
            ip = rs.instruments[inst]
            async with limiter:
                ip.state = RUNNING
                ip.started = self.now()
                self._emit(run, "analyzer", "log", f"{inst}: analysis started",
                           {"level": "info", "instrument": inst, "phase": "start"})
                try:
                    out = await self._process(run, "analyzer", inst)
                    status, error, counts = out.status, out.error, out.counts
                    detail = {"status": status, "duration_seconds": round(out.duration, 3),
                              "exit_code": out.exit_code, "counts": counts, "error": error,
                              "msg": out.msg, "timed_out": out.timed_out, "pid": out.pid}
                except anyio.get_cancelled_exc_class():
                    raise
                except Exception as exc:
                    self._engine_trace(run, traceback.format_exc())
                    status, error, counts = FAILURE, f"could not run: {type(exc).__name__}: {exc}", {}
                    detail = {"status": status, "error": error, "counts": {}, "duration_seconds": 0.0}
                ip.state = status
                ip.ended = self.now()
                ip.error = error
                outcomes[inst] = detail
                level = "info" if status == SUCCESS else ("warning" if status == PARTIAL else "error")
                text = f"{inst}: {status} in {detail['duration_seconds']:.1f} s"
                if error:
                    text += f": {error}"
                self._emit(run, "analyzer", "log", text,
                           {"level": level, "instrument": inst, "phase": "end", **detail})

        try:
            async with anyio.create_task_group() as tg:
                for inst in instruments:
                    tg.start_soon(one, inst)
        except anyio.get_cancelled_exc_class():
            for ip in rs.instruments.values():
                if ip.state in (WAITING, RUNNING):
                    ip.state = CANCELLED
                    ip.ended = self.now()
            run.details["analyzer"] = {"instruments": outcomes}
            raise
        statuses = [outcomes[i]["status"] for i in instruments]
        status = analyzer_status(statuses)
        failed = [i for i in instruments if outcomes[i]["status"] != SUCCESS]
        counts = {"instruments": len(instruments),
                  "succeeded": len(instruments) - len(failed),
                  "failed": len(failed),
                  **_sum_counts([outcomes[i].get("counts") or {} for i in instruments])}
        error = None
        if failed:
            error = "; ".join(f"{i}: {outcomes[i].get('error') or outcomes[i]['status']}" for i in failed)
        ok = len(instruments) - len(failed)
        msg = f"{ok}/{len(instruments)} instrument(s) analysed"
        self._stage_ended(run, "analyzer", status, error=error, counts=counts, msg=msg,
                          duration=time.monotonic() - t0, extra={"instruments": outcomes})

    def _stage_ended(
        self,
        run: _Run,
        name: str,
        status: str,
        *,
        error: str | None = None,
        counts: dict[str, Any] | None = None,
        msg: str = "",
        duration: float,
        extra: dict[str, Any] | None = None,
    ) -> None:
        st = run.state.stages[name]
        st.state = status
        st.ended = self.now()
        st.error = error
        st.counts = dict(counts or {})
        run.details[name] = {"duration_seconds": round(duration, 3), "msg": msg, **(extra or {})}
        data: dict[str, Any] = {"status": status, "counts": st.counts, "duration_seconds": round(duration, 3)}
        if error:
            data["error"] = error
        for k in ("exit_code", "timed_out"):
            if extra and k in extra:
                data[k] = extra[k]
        if status == SUCCESS:
            text = f"{name} succeeded in {duration:.1f} s" + (f": {msg}" if msg else "")
            self._emit(run, name, "success", text, data)
        else:
            text = f"{name} {'partial' if status == PARTIAL else 'failed'}: {error or msg}"
            self._emit(run, name, "failure", text, data)

    def _stage_cancelled(self, run: _Run, name: str, duration: float) -> None:
        st = run.state.stages[name]
        st.state = CANCELLED
        st.ended = self.now()
        st.error = "cancelled"
        run.details.setdefault(name, {})
        run.details[name]["duration_seconds"] = round(duration, 3)
        self._emit(run, name, "cancelled", f"{name} cancelled after {duration:.1f} s",
                   {"status": CANCELLED, "duration_seconds": round(duration, 3)})

    # --- records ------------------------------------------------------------------------------

    def _report(
        self,
        rs: RunState,
        details: dict[str, dict[str, Any]],
        *,
        full: bool,
        error: str | None,
        duration: float | None,
    ) -> dict[str, Any]:
        stages: dict[str, Any] = {}
        for name, st in rs.stages.items():
            d = details.get(name, {})
            dur = d.get("duration_seconds")
            if dur is None:
                dur = _seconds(st.started, st.ended) if st.started else 0.0
            entry: dict[str, Any] = {
                "status": st.state,
                "started": _iso(st.started),
                "ended": _iso(st.ended),
                "duration_seconds": dur,
                "counts": st.counts,
                "error": st.error,
            }
            if st.state == SKIPPED:
                entry["reason"] = st.reason
            for k in ("msg", "exit_code", "timed_out", "hung_after_result"):
                if k in d:
                    entry[k] = d[k]
            if name == "analyzer" and (rs.instruments or d.get("instruments")):
                per = dict(d.get("instruments") or {})
                for inst, ip in rs.instruments.items():
                    per.setdefault(inst, {"status": ip.state, "error": ip.error, "counts": {},
                                          "duration_seconds": _seconds(ip.started, ip.ended)})
                entry["instruments"] = per
            stages[name] = entry
        return {
            **_run_line(rs),  # the runs.jsonl fields, then the report's own
            "duration_seconds": round(duration, 3) if duration is not None else _seconds(rs.started, rs.ended),
            "stages": stages,
            "error": error,
            "full": full,
            "engine_version": ENGINE_VERSION,
            "events": str(run_event_path(self.settings.events_dir, rs.run_id)),
            "logs": str(self.settings.runs_dir / rs.run_id),
            "host": socket.gethostname(),
        }

    # --- recovery -----------------------------------------------------------------------------

    def _reconcile_catalog(self) -> None:
        """Open the catalogue (migrating old JSON state on first start) and finish the data
        writes a crash interrupted; each thing done is a scheduler event."""
        try:
            cat = catalog.open_catalog(self.settings)
            notes = [*cat.migrated, *catalog.reconcile(self.settings)]
            cat.migrated = []
        except (catalog.CatalogError, OSError) as exc:
            self._sched_emit("log", f"catalogue: {exc}", {"level": "error"})
            return
        for note in notes:
            self._sched_emit("log", f"catalogue: {note}", {"level": "warning"})

    def recover(self) -> list[str]:
        """Close runs left open by an engine that died: each becomes ``failure``,
        "engine stopped during run", with its report and runs.jsonl line. Stage processes the dead
        engine left behind are killed first. Returns the closed run ids. Done once per engine, and
        never while another process holds the data root's lock.
        """
        if self._recovered:
            return []
        if lock.held_by_other(self.settings) is not None:
            return []
        self._recovered = True
        self._reconcile_catalog()
        known = history.run_ids(self.settings)
        active = {r.state.run_id for r in (self._run, self._queued) if r is not None}
        closed: list[str] = []
        for path in sorted(self.settings.events_dir.glob("pipeline_*.jsonl")):
            run_id = path.stem[len("pipeline_"):]
            if run_id in known or run_id in active:
                continue
            events, _ = read_events(path)
            starts = [e for e in events if e.stage == "pipeline" and e.event == "start"]
            if not starts:
                continue
            rs, details, open_stages = _state_from_events(events)
            terminal = [e for e in events if e.stage == "pipeline" and e.is_terminal]
            if terminal:
                # finished, but its summary line never made it: add it (and the report)
                if history.find_report(self.settings, run_id) is None:
                    history.write_report(
                        self.settings,
                        self._report(rs, details, full=bool(starts[0].data.get("full")),
                                     error=terminal[-1].data.get("error"), duration=None),
                        rs.started,
                    )
                history.append_run(self.settings, _run_line(rs))
                continue
            killed = proc.kill_run_processes(run_id)  # a run left open: its stages may live on
            writer = EventWriter(path, run_id)
            try:
                for name in open_stages:
                    st = rs.stages[name]
                    st.state = FAILURE
                    st.error = ENGINE_STOPPED
                    st.ended = rs.ended
                    ev = writer.emit(name, "failure", f"{name} failed: {ENGINE_STOPPED}",
                                     {"status": FAILURE, "error": ENGINE_STOPPED})
                    self._publish(EventMessage(ev))
                for ip in rs.instruments.values():
                    if ip.state in (WAITING, RUNNING):
                        ip.state = FAILURE
                        ip.error = ENGINE_STOPPED
                for name, st in rs.stages.items():
                    if st.state == WAITING:
                        st.state = SKIPPED
                        st.reason = ENGINE_STOPPED
                        ev = writer.emit(name, "skipped", f"{name} not run: {ENGINE_STOPPED}",
                                         {"reason": ENGINE_STOPPED})
                        self._publish(EventMessage(ev))
                rs.status = FAILURE
                report = self._report(rs, details, full=bool(starts[0].data.get("full")),
                                      error=ENGINE_STOPPED, duration=None)
                report["killed_processes"] = killed
                report_file = history.write_report(self.settings, report, rs.started)
                ev = writer.emit(  # before the runs.jsonl line, as in _finish
                    "pipeline", "failure", ENGINE_STOPPED,
                    {"status": FAILURE, "error": ENGINE_STOPPED, "recovered_by_pid": os.getpid(),
                     "killed_processes": killed, "report": str(report_file),
                     "stages": {n: st.state for n, st in rs.stages.items()}},
                )
                history.append_run(self.settings, _run_line(rs))
                self._publish(EventMessage(ev))
            finally:
                writer.close()
            closed.append(run_id)
            self._sched_emit(
                "log",
                f"Run {run_id[:8]} was left open by an engine that stopped; closed as failure"
                + (f" (killed {len(killed)} leftover stage process(es))" if killed else ""),
                {"level": "warning", "run_id": run_id, "killed_processes": killed},
            )
        if closed:
            self._last_run = history.last_run(self.settings)
            self._last_state = self._load_last_state()
        return closed


def progress_text(done: int, total: int, text: str = "", unit: str | None = None) -> str:
    """How a stage's progress reads: counted items as ``done/total text``; a quantity with a
    unit (bytes of a large file) by the stage's own text, which says it in better units."""
    if unit:
        return text or f"{done}/{total} {unit}"
    return f"{done}/{total}" + (f" {text}" if text else "")


def _run_line(rs: RunState) -> dict[str, Any]:
    """The runs.jsonl summary line of a run."""
    return {
        "run_id": rs.run_id,
        "trigger": rs.trigger,
        "started": _iso(rs.started),
        "ended": _iso(rs.ended),
        "status": rs.status,
        "stages": {n: st.state for n, st in rs.stages.items()},
    }


def _ts(ev: Event) -> datetime | None:
    try:
        return datetime.fromisoformat(ev.timestamp).astimezone(CHICAGO)
    except ValueError:
        return None


def _state_from_events(events: Sequence[Event]) -> tuple[RunState, dict[str, dict[str, Any]], list[str]]:
    """Rebuild a run's state from its event file: (state, report details, stages left open)."""
    first = next(e for e in events if e.stage == "pipeline" and e.event == "start")
    rs = RunState(
        run_id=first.run_id,
        trigger=str(first.data.get("trigger") or "manual"),
        started=_ts(first) or clock.now(),
        stages={n: StageState(n) for n in STAGE_NAMES},
    )
    details: dict[str, dict[str, Any]] = {}
    open_stages: list[str] = []
    for ev in events:
        ts = _ts(ev)
        if ev.stage == "pipeline":
            if ev.is_terminal:
                rs.status = str(ev.data.get("status") or ev.event)
                rs.ended = ts
            continue
        if ev.stage not in rs.stages:
            continue
        st = rs.stages[ev.stage]
        if ev.event == "start":
            st.state = RUNNING
            st.started = ts
            open_stages.append(ev.stage)
        elif ev.event == "skipped":
            st.state = SKIPPED
            st.reason = str(ev.data.get("reason") or "")
        elif ev.is_terminal:
            st.state = str(ev.data.get("status") or ev.event)
            st.ended = ts
            st.error = ev.data.get("error")
            st.counts = dict(ev.data.get("counts") or {})
            details[ev.stage] = {k: ev.data[k] for k in ("duration_seconds", "exit_code", "timed_out")
                                 if k in ev.data}
            if ev.stage == "analyzer" and st.state in (SUCCESS, CANCELLED):
                for ip in rs.instruments.values():  # an instrument whose own end was not recorded
                    if ip.state in (WAITING, RUNNING):
                        ip.state, ip.ended = st.state, ip.ended or ts
            if ev.stage in open_stages:
                open_stages.remove(ev.stage)
        elif ev.event == "progress" and not ev.data.get("heartbeat"):
            with contextlib.suppress(TypeError, ValueError):
                st.done = int(ev.data.get("stage_done", ev.data.get("done")) or 0)
                st.total = int(ev.data.get("stage_total", ev.data.get("total")) or 0)
                st.unit = str(ev.data.get("unit") or "")
                if ev.stage == "analyzer" and ev.data.get("instrument"):
                    ip = rs.instruments.setdefault(str(ev.data["instrument"]), InstrumentProgress(str(ev.data["instrument"])))
                    ip.done, ip.total = int(ev.data.get("done") or 0), int(ev.data.get("total") or 0)
        elif ev.event == "log" and ev.stage == "analyzer" and ev.data.get("instrument"):
            inst = str(ev.data["instrument"])
            phase = ev.data.get("phase")
            ip = rs.instruments.setdefault(inst, InstrumentProgress(inst))
            if phase == "start":
                ip.state = RUNNING
                ip.started = ts
            elif phase == "end":
                ip.state = str(ev.data.get("status") or FAILURE)
                ip.ended = ts
                ip.error = ev.data.get("error")
    if rs.ended is None:
        rs.ended = _ts(events[-1]) or rs.started
    return rs, details, open_stages
