"""One event with all its fields (Enter on a row of an event table)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Static

from pipeline_core.events import Event, read_events, run_event_path, scheduler_event_path
from pipeline_core.settings import Settings
from qtsw_tui.widgets.footer_fit import KeyFooter
from qtsw_tui.widgets.format import event_clock


def event_file(settings: Settings, run_id: str, scheduler: bool) -> Path:
    return scheduler_event_path(settings.events_dir) if scheduler else run_event_path(settings.events_dir, run_id)


def find_event(settings: Settings, run_id: str, scheduler: bool, seq: int) -> Event | None:
    """The event from its file (the table keeps only a summary of each)."""
    path = event_file(settings, run_id, scheduler)
    try:
        events, _ = read_events(path)
    except OSError:
        return None
    return next((e for e in reversed(events) if e.seq == seq), None)


def event_fields(ev: Event, path: Path | None = None) -> Text:
    """Every field of the event, one per line; data values as JSON."""
    t = Text()

    def row(name: str, value: Any, style: str = "") -> None:
        t.append(f"{name:<10} ", style="bold")
        t.append(f"{value}\n", style=style)

    row("time", f"{ev.timestamp} ({event_clock(ev.timestamp)} Chicago)")
    row("run", ev.run_id)
    row("stage", ev.stage)
    row("event", ev.event, "bold red" if ev.event == "failure" else "")
    row("seq", ev.seq)
    row("message", ev.msg or "-")
    if path is not None:
        row("file", path)
    if ev.data:
        t.append("data\n", style="bold")
        for key, value in ev.data.items():
            shown = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
            t.append(f"  {key}: ", style="bold")
            t.append(f"{shown}\n")
    return t


class EventDetailScreen(Screen[None]):
    """An event with all its fields: time, run, stage, type, message and every data field."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="event.back"),
    ]

    def __init__(self, settings: Settings, key: str) -> None:
        super().__init__()
        self.settings = settings
        run_id, sched, seq = key.rsplit(":", 2)
        self.run_id, self.scheduler, self.seq = run_id, sched == "scheduler", int(seq)
        self.event: Event | None = None

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="event-detail"):
            yield Static("reading the event…", id="event-fields", markup=False)
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#event-detail").border_title = f"Event {self.seq} of {self.run_id[:8]}"
        self._load()

    @work(thread=True, exclusive=True, exit_on_error=False, group="event-detail")
    def _load(self) -> None:
        ev = find_event(self.settings, self.run_id, self.scheduler, self.seq)
        self.app.call_from_thread(self._show, ev)

    def _show(self, ev: Event | None) -> None:
        self.event = ev
        fields = self.query_one("#event-fields", Static)
        if ev is None:
            fields.update(f"event {self.seq} is not in {event_file(self.settings, self.run_id, self.scheduler)}")
        else:
            fields.update(event_fields(ev, event_file(self.settings, self.run_id, self.scheduler)))
