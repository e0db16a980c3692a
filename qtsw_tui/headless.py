"""The headless printer: one readable line per event as it happens (``qtsw --no-ui``).

On a terminal the lines are coloured by event type (Rich); into a pipe or a file they are plain
text; with ``--json`` each event is printed as its raw JSONL line, the same bytes as in the
event file, so other tools can consume the stream. Free-text stage output is printed only with
``--verbose`` (it is always in the stage's ``.log`` file). No Textual here.
"""

from __future__ import annotations

import os
import sys
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


def format_event(ev: Event) -> str:
    """``2025-06-03 10:15:00 CDT  ab12cd34  analyzer   success    text`` (plain)."""
    who = ev.run_id[:8] if ev.stage != "scheduler" else "--------"
    level = ev.data.get("level")
    kind = f"{ev.event}/{level}" if ev.event == "log" and level in LEVEL_STYLES else ev.event
    return f"{_when(ev)}  {who:8}  {ev.stage:<10} {kind:<11} {event_text(ev)}"


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
        self._console: Any = None
        if self.color:
            from rich.console import Console

            self._console = Console(file=self.stream, highlight=False, soft_wrap=True, force_terminal=True)

    def __call__(self, msg: EventMessage | OutputMessage) -> None:
        try:
            if isinstance(msg, EventMessage):
                self.event(msg.event)
            elif self.verbose and not self.json_mode:
                label = f"{msg.stage}-{msg.instrument}" if msg.instrument else msg.stage
                self._line(f"    {label} | {msg.line}", "dim")
        except (OSError, ValueError):
            pass  # the reader or the terminal went away (`qtsw --no-ui | head`): keep the engine going

    def event(self, ev: Event) -> None:
        if self.json_mode:
            self.stream.write(ev.to_line() + "\n")
            self.stream.flush()
            return
        style = EVENT_STYLES.get(ev.event, "")
        if ev.event == "log":
            style = LEVEL_STYLES.get(str(ev.data.get("level")), "")
        elif ev.event == "alert":
            style = {"recovered": "green", "acknowledged": "dim"}.get(str(ev.data.get("state")), "bold magenta")
        if ev.stage == "pipeline" and ev.event == "failure" and ev.data.get("status") == "partial":
            style = "bold yellow"
        self._line(format_event(ev), style)

    def note(self, text: str) -> None:
        """A line from the command line itself (not an event); not printed in JSON mode."""
        if not self.json_mode:
            self._line(f"qtsw: {text}", "bold")

    def summary(self, rs: RunState, report: str | None = None) -> None:
        """The last line of a headless run: status, stages, where the report is."""
        if self.json_mode:
            return
        stages = ", ".join(f"{n} {st.state}" for n, st in rs.stages.items())
        text = f"run {rs.run_id[:8]} {rs.status}: {stages}"
        if report:
            text += f" (report {report})"
        style = {"success": "bold green", "partial": "bold yellow", "cancelled": "bold yellow"}.get(
            rs.status, "bold red"
        )
        self._line(text, style)

    def _line(self, text: str, style: str = "") -> None:
        text = safe(text)  # one event, one line: no name or output can forge or colour another
        if self._console is not None:
            from rich.text import Text

            self._console.print(Text(text, style=style or ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
