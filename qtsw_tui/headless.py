"""The headless printer: one readable line per event as it happens (``qtsw --no-ui``).

On a terminal the lines are coloured by event type (Rich); into a pipe or a file they are plain
text; with ``--json`` each event is printed as its raw JSONL line, the same bytes as in the
event file, so other tools can consume the stream. Without ``--verbose`` the readable output is
one line per stage start and end, per instrument, per problem and per run, each with its
figures; progress, per-file figures and free-text stage output are printed only with
``--verbose`` (they are always in the event log and the stage's ``.log`` file). No Textual here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

from pipeline_core.events import Event
from pipeline_core.runstate import EventMessage, OutputMessage, RunState
from pipeline_core.safetext import safe
from pipeline_core.settings import CHICAGO

EVENT_STYLES = {
    "start": "cyan",
    "success": "bold green",
    "failure": "bold red",
    "cancelled": "bold yellow",
    "skipped": "dim",
    "progress": "blue",
    "metric": "magenta",
    "log": "",
    "alert": "bold magenta",
}
LEVEL_STYLES = {"warning": "yellow", "error": "red"}


def _when(ev: Event) -> str:
    try:
        return datetime.fromisoformat(ev.timestamp).astimezone(CHICAGO).strftime("%Y-%m-%d %H:%M:%S %Z")
    except ValueError:
        return ev.timestamp


def event_text(ev: Event) -> str:
    """The message of an event, with its error when the message does not already say it."""
    msg = ev.msg
    err = ev.data.get("error")
    if err and str(err) not in msg:
        msg = f"{msg}: {err}" if msg else str(err)
    return msg


def event_kind(ev: Event) -> str:
    """The event type as the operator reads it: a failure that is a partial result says
    ``partial``; a warning or error log says so (``log/warning``)."""
    level = ev.data.get("level")
    if ev.event == "failure" and ev.data.get("status") == "partial":
        return "partial"
    return f"{ev.event}/{level}" if ev.event == "log" and level in LEVEL_STYLES else ev.event


def format_event(ev: Event, text: str | None = None) -> str:
    """``2025-06-03 10:15:00 CDT  ab12cd34  analyzer   success    text`` (plain)."""
    who = ev.run_id[:8] if ev.stage != "scheduler" else "--------"
    return f"{_when(ev)}  {who:8}  {ev.stage:<10} {event_kind(ev):<11} {event_text(ev) if text is None else text}"


RESULT_COUNTS = ("Win", "BE", "Loss", "TIME", "NoTrade")


def summary_text(ev: Event) -> str | None:
    """The line printed without ``--verbose`` for ``ev``, or None when it is detail that only
    ``--verbose`` (and the event log) shows: progress, per-file metrics, an instrument's start.

    Shown: stage and run start and end, each instrument's end with its figures, every problem
    (a warning or an error, a file with dropped rows) and the scheduler's lines.
    """
    data = ev.data
    if ev.event == "progress":
        return None
    if ev.event == "metric":
        dropped = data.get("dropped") or {}
        if ev.stage == "translator" and data.get("status") == "translated" and dropped:
            first = data.get("first_bad_line") or {}
            rules = ", ".join(f"{n} {rule}" + (f" (first at line {first[rule]})" if rule in first else "")
                              for rule, n in dropped.items())
            return (f"{data.get('file')}: {data.get('rows_kept')} bars kept of {data.get('rows_in')} rows; "
                    f"dropped {rules}")
        return None  # per-file and total figures: the stage's end line has the totals
    if ev.event == "log" and data.get("phase") == "start" and data.get("level") == "info":
        return None
    if ev.event == "log" and data.get("phase") == "end" and data.get("instrument"):
        text = event_text(ev)
        detail = str(data.get("msg") or "")
        inst = str(data["instrument"])
        if detail.startswith(f"{inst}: "):
            detail = detail[len(inst) + 2:]
        if detail and detail not in text:
            text += f": {detail}"
        counts = data.get("counts") or {}
        results = ", ".join(f"{k} {counts[k]}" for k in RESULT_COUNTS if counts.get(k))
        if results:
            text += f" ({results})"
        return text
    return event_text(ev)


class HeadlessPrinter:
    """A subscriber for :meth:`Engine.subscribe` that prints what happens.

    ``color``: None decides by whether ``stream`` is a terminal (and ``NO_COLOR``).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        json_mode: bool = False,
        color: bool | None = None,
        verbose: bool = False,
    ) -> None:
        self.stream = stream or sys.stdout
        self.json_mode = json_mode
        self.verbose = verbose
        if color is None:
            isatty = getattr(self.stream, "isatty", lambda: False)
            color = bool(isatty()) and not os.environ.get("NO_COLOR")
        self.color = color and not json_mode
        self.closed = False  # the reader went away: nothing more is printed
        self._console: Any = None
        if self.color:
            from rich.console import Console

            self._console = Console(file=self.stream, highlight=False, soft_wrap=True, force_terminal=True)

    def __call__(self, msg: EventMessage | OutputMessage) -> None:
        if isinstance(msg, EventMessage):
            self.event(msg.event)
        elif self.verbose and not self.json_mode:
            label = f"{msg.stage}-{msg.instrument}" if msg.instrument else msg.stage
            self._line(f"    {label} | {msg.line}", "dim")

    def event(self, ev: Event) -> None:
        if self.json_mode:
            self._write(lambda: self.stream.write(ev.to_line() + "\n"))
            return
        text = event_text(ev) if self.verbose else summary_text(ev)
        if text is None:
            return
        style = EVENT_STYLES.get(ev.event, "")
        if ev.event == "log":
            style = LEVEL_STYLES.get(str(ev.data.get("level")), "")
        elif ev.event == "alert":
            style = {"recovered": "green", "acknowledged": "dim"}.get(str(ev.data.get("state")), "bold magenta")
        if ev.stage == "pipeline" and ev.event == "failure" and ev.data.get("status") == "partial":
            style = "bold yellow"
        self._line(format_event(ev, text), style)

    def note(self, text: str) -> None:
        """A line from the command line itself (not an event); not printed in JSON mode."""
        if not self.json_mode:
            self._line(f"qtsw: {text}", "bold")

    def summary(self, rs: RunState, report: str | None = None) -> None:
        """The last line of a headless run: status, stages, where the report is."""
        self.summary_line(rs.run_id, rs.status, {n: st.state for n, st in rs.stages.items()}, report)

    def summary_line(self, run_id: str, status: str, stages: dict[str, str], report: str | None = None) -> None:
        """:meth:`summary` from the run's figures (a run followed through the control socket)."""
        if self.json_mode:
            return
        text = f"run {run_id[:8]} {status}: " + ", ".join(f"{n} {state}" for n, state in stages.items())
        if report:
            text += f" (report {report})"
        style = {"success": "bold green", "partial": "bold yellow", "cancelled": "bold yellow"}.get(
            status, "bold red"
        )
        self._line(text, style)

    def _line(self, text: str, style: str = "") -> None:
        text = safe(text)  # one event, one line: no name or output can forge or colour another
        if self._console is not None:
            from rich.text import Text

            self._write(lambda: self._console.print(Text(text, style=style or "")))
        else:
            self._write(lambda: self.stream.write(text + "\n"))

    def _write(self, write: Callable[[], object]) -> None:
        """Write and flush; once the reader has gone (``qtsw --no-ui | head``: a broken pipe, or
        a closed stream) stop printing for good. The engine is not disturbed either way."""
        if self.closed:
            return
        try:
            write()
            self.stream.flush()
        except (OSError, ValueError):
            self.closed = True
            self._discard_output()

    def _discard_output(self) -> None:
        # What could not be written is still buffered, and the interpreter flushes it again at
        # exit (an error message and exit status 120): point the descriptor at /dev/null.
        try:
            fd = self.stream.fileno()
        except (OSError, ValueError, AttributeError):
            return
        try:
            null = os.open(os.devnull, os.O_WRONLY)
        except OSError:
            return
        try:
            os.dup2(null, fd)
        except OSError:
            pass
        finally:
            os.close(null)
