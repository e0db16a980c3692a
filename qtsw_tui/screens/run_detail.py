"""One run: its stages (status, duration, counts, errors from the audit report), its events, its logs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Log, Select, Static, TabbedContent, TabPane

from pipeline_core import history
from pipeline_core.events import Event
from pipeline_core.runstate import STAGE_NAMES
from pipeline_core.settings import Settings
from qtsw_tui.widgets.event_table import EventsPanel
from qtsw_tui.widgets.footer_fit import KeyFooter
from qtsw_tui.widgets.format import clock_time, duration, parse_time, run_seconds, state_mark

LOG_TAIL_BYTES = 2_000_000  # the widget shows the end of a stage log; the file is the store
LOG_TAIL_LINES = 5000
DETAIL_EVENTS = 2000  # rows of a run's events shown at once (the filter reaches the others)


def read_tail(path: Path, max_bytes: int = LOG_TAIL_BYTES, max_lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last lines of a (possibly huge) log file, reading at most ``max_bytes`` from its end."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            end = fh.tell()
            start = max(0, end - max_bytes)
            fh.seek(start)
            data = fh.read()
    except OSError as exc:
        return [f"cannot read {path}: {exc}"]
    lines = data.decode("utf-8", errors="replace").splitlines()
    if start > 0 and lines:
        lines = [f"… ({start:,} earlier bytes in {path})", *lines[1:]]
    return lines[-max_lines:]


def counts_text(counts: dict[str, Any] | None) -> str:
    """``files=3 rows=12,345`` — a stage's counts, nested values summarised."""
    parts = []
    for k, v in (counts or {}).items():
        if k in LISTED:
            continue  # a line of its own (see _detail)
        if isinstance(v, bool):
            parts.append(f"{k}={v}")
        elif isinstance(v, int):
            parts.append(f"{k}={v:,}")
        elif isinstance(v, float):
            parts.append(f"{k}={v:,.2f}")
        elif isinstance(v, dict):
            inner = ", ".join(f"{ik}={iv}" for ik, iv in list(v.items())[:8])
            parts.append(f"{k}={{{inner}}}")
        elif isinstance(v, list):
            parts.append(f"{k}=[{len(v)}]")
        else:
            parts.append(f"{k}={v}")
    return " ".join(parts)


LISTED = ("quarantined_files",)


def quarantined_line(q: dict[str, Any]) -> Text:
    """``quarantined ES_x.csv: bad_row at line 7 — 12 of 100 rows broken``."""
    where = f" at line {q['line']}" if q.get("line") not in (None, "", "-") else ""
    t = Text("quarantined ", style="yellow")
    t.append(str(q.get("file", "?")), style="bold")
    t.append(f": {q.get('rule', '?')}{where}")
    if q.get("reason"):
        t.append(f" — {q['reason']}")
    return t


def _detail(info: dict[str, Any], counts: bool = True) -> Text:
    """A stage's message, counts (dim), skip reason and error (red), one per line."""
    parts: list[Text] = []
    if info.get("msg"):
        parts.append(Text(str(info["msg"])))
    if counts and info.get("counts"):
        parts.append(Text(counts_text(info.get("counts")), style="dim"))
    if info.get("reason"):
        parts.append(Text(str(info["reason"]), style="dim"))
    for q in (info.get("counts") or {}).get("quarantined_files") or []:
        if isinstance(q, dict):
            parts.append(quarantined_line(q))
    if info.get("error") and info.get("error") != info.get("msg"):
        parts.append(Text(str(info["error"]), style="bold red"))
    return Text("\n").join(parts)


def stages_table(record: dict[str, Any], report: dict[str, Any] | None) -> Table:
    """Stage, status, duration and message/counts/error of each stage (the report, else the runs line).

    The analyzer's instruments follow it, one line each.
    """
    table = Table(expand=True, box=None, padding=(0, 1), show_edge=False)
    table.add_column("Stage", style="bold", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    table.add_column("Time", no_wrap=True, justify="right")
    table.add_column("Result / counts / error", ratio=1)
    found: dict[str, Any] = dict((report or {}).get("stages") or {})
    for name, status in (record.get("stages") or {}).items():
        found.setdefault(name, {"status": status})
    order = [n for n in STAGE_NAMES if n in found] + [n for n in found if n not in STAGE_NAMES]
    for name in order:
        info = found[name] if isinstance(found[name], dict) else {"status": found[name]}
        status = info.get("status")
        mark, style = state_mark(status)
        table.add_row(
            name, Text(f"{mark} {status or '?'}", style=style), duration(info.get("duration_seconds")), _detail(info)
        )
        for inst, sub in sorted((info.get("instruments") or {}).items()):
            sub = sub if isinstance(sub, dict) else {"status": sub}
            imark, istyle = state_mark(sub.get("status"))
            table.add_row(
                Text(f"  {inst}", style="not bold"),
                Text(f"{imark} {sub.get('status') or '?'}", style=istyle),
                duration(sub.get("duration_seconds")),
                _detail(sub, counts=False),
            )
    return table


def summary_text(record: dict[str, Any], report: dict[str, Any] | None) -> Text:
    rec = {**record, **{k: v for k, v in (report or {}).items() if k != "stages"}}
    mark, style = state_mark(rec.get("status"))
    t = Text()
    t.append(f"Run {rec.get('run_id', '?')}\n", style="bold")
    t.append(f"{mark} {rec.get('status', '?')}", style=style)
    started = parse_time(rec.get("started") or rec.get("start"))
    t.append(f"  {rec.get('trigger', '')}")
    if started is not None:
        t.append(f"  {started:%Y-%m-%d %H:%M:%S} CT")
    t.append(f"  → {clock_time(rec.get('ended') or rec.get('end'))}")
    secs = run_seconds({"started": rec.get("started") or rec.get("start"), "ended": rec.get("ended") or rec.get("end")})
    t.append(f"  ({duration(secs)})")
    if report is None:
        t.append("\nno audit report found", style="yellow")
    elif report.get("error"):
        t.append(f"\n{report['error']}", style="bold red")
    return t


class RunDetailScreen(Screen[None]):
    """A past (or just finished) run: stages, events and stage logs."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="detail.back"),
    ]

    def __init__(self, settings: Settings, record: dict[str, Any]) -> None:
        super().__init__()
        self.settings = settings
        self.record = record
        self.run_id = str(record.get("run_id", ""))
        self.report: dict[str, Any] | None = None
        self.events: list[Event] = []
        self.logs: dict[str, Path] = {}

    def compose(self) -> ComposeResult:
        yield Static(summary_text(self.record, None), id="detail-summary")
        with TabbedContent(id="detail-tabs"):
            with TabPane("Stages", id="tab-stages"), VerticalScroll():
                yield Static(stages_table(self.record, None), id="detail-stages")
            with TabPane("Events", id="tab-events"):
                yield EventsPanel(window=DETAIL_EVENTS, follow=False, id="detail-events")
            with TabPane("Logs", id="tab-logs"), Vertical():
                yield Select([], prompt="stage log", id="detail-log-choice", allow_blank=True)
                yield Log(id="detail-log", max_lines=LOG_TAIL_LINES + 1, auto_scroll=True)
        yield KeyFooter()

    def on_mount(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, exit_on_error=False, group="detail")
    def _load(self) -> None:
        report = history.find_report(self.settings, self.run_id)
        events = history.run_events(self.settings, self.run_id)
        logs = history.run_logs(self.settings, self.run_id)
        self.app.call_from_thread(self._show, report, events, logs)

    def _show(self, report: dict[str, Any] | None, events: list[Event], logs: dict[str, Path]) -> None:
        self.report, self.events, self.logs = report, events, logs
        self.query_one("#detail-summary", Static).update(summary_text(self.record, report))
        self.query_one("#detail-stages", Static).update(stages_table(self.record, report))
        panel = self.query_one("#detail-events", EventsPanel)
        panel.set_verbose(True)
        panel.add_events(events)
        choice = self.query_one("#detail-log-choice", Select)
        choice.set_options([(name, name) for name in logs])
        if logs:
            choice.value = next(iter(logs))

    @on(Select.Changed, "#detail-log-choice")
    def _log_chosen(self, message: Select.Changed) -> None:
        if isinstance(message.value, str) and message.value in self.logs:
            self._read_log(self.logs[message.value])

    @work(thread=True, exclusive=True, exit_on_error=False, group="detail-log")
    def _read_log(self, path: Path) -> None:
        lines = read_tail(path)
        self.app.call_from_thread(self._show_log, lines)

    def _show_log(self, lines: list[str]) -> None:
        log = self.query_one("#detail-log", Log)
        log.clear()
        log.write_lines(lines or ["(empty)"])
