"""Analyzer progress: one ProgressBar per instrument (dates done / dates to do), state, time."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Label, ProgressBar, Static

from pipeline_core.runstate import InstrumentProgress
from qtsw_tui.widgets.format import duration, state_mark


class InstrumentRow(Horizontal):
    """``ES  ███████░░░  70%  ✓ 3s`` — one instrument of the analyzer stage."""

    def __init__(self, instrument: str) -> None:
        super().__init__(classes="instrument-row")
        self.instrument = instrument
        self.bar = ProgressBar(total=1, show_eta=False, show_percentage=True, classes="inst-bar")
        self.state_label = Label("", classes="inst-state")
        self.shown: tuple | None = None
        self.progress: InstrumentProgress | None = None

    def compose(self) -> ComposeResult:
        yield Label(self.instrument, classes="inst-name")
        yield self.bar
        yield self.state_label

    def show(self, p: InstrumentProgress, now: datetime) -> None:
        """Show an instrument's progress; cheap when nothing changed."""
        self.progress = p
        elapsed = p.elapsed(now)
        key = (p.state, p.done, p.total, int(elapsed), p.error)
        if key == self.shown:
            return
        self.shown = key
        # total 0 would make the bar indeterminate (an animation): show an empty bar instead
        if p.total > 0:
            total, done = p.total, min(p.done, p.total)
        else:
            total, done = 1, (1 if p.state in ("success", "partial", "skipped") else 0)
        self.bar.update(total=total, progress=done)
        mark, style = state_mark(p.state)
        label = Text(f"{mark} ", style=style)
        if p.state == "running":
            label.append(duration(elapsed))
        else:
            label.append(p.state, style=style)
            if p.started is not None:
                label.append(f" {duration(elapsed)}", style="dim")
        self.state_label.update(label, layout=False)
        self.tooltip = p.error or None


class InstrumentProgressList(VerticalScroll):
    """The analyzer's instruments in the current run (kept on screen after the run ends)."""

    can_focus = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.run_id: str | None = None
        self.rows: dict[str, InstrumentRow] = {}
        self.placeholder = Static("no analyzer run yet", classes="placeholder")

    def compose(self) -> ComposeResult:
        yield self.placeholder

    def show(self, run_id: str | None, instruments: Mapping[str, InstrumentProgress], now: datetime,
             note: str = "no analyzer work yet") -> None:
        """Show a run's instruments; a new run clears the previous run's rows (``note`` says why
        there are none yet)."""
        if not self.is_attached:  # the console is starting or shutting down
            return
        if run_id != self.run_id:
            self.run_id = run_id
            self.remove_children()
            self.rows = {}
            self.placeholder = Static(note, classes="placeholder")
            if not instruments:
                self.mount(self.placeholder)
                return
        if not instruments:
            if (self.placeholder.is_mounted or self.placeholder.parent is not None) and note != self.placeholder.content:
                self.placeholder.update(note)  # only a change: each update lays the screen out again
            return
        if not self.rows and self.placeholder.parent is not None:
            self.placeholder.remove()
        new = []
        for inst in sorted(instruments):
            row = self.rows.get(inst)
            if row is None:
                row = self.rows[inst] = InstrumentRow(inst)
                new.append(row)
            row.show(instruments[inst], now)
        if new:
            self.mount_all(new)
