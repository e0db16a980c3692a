"""The live event table: a bounded event store, a filter, and a capped DataTable window.

The store keeps the newest ``capacity`` events (100,000 by default); the table shows only the
newest ``window`` events that pass the filter, so adding a batch costs at most one window of
rows whatever the flood. The full history of a run stays in its JSONL file.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Input, Static

from pipeline_core.events import EVENT_TYPES, STAGES, Event
from qtsw_tui.widgets.format import clock_time, short_id

VERBOSE_ONLY = ("log", "progress", "metric")
# event type -> style; the type's name is always printed too, so colour is never the only cue
EVENT_STYLE = {
    "start": "bold cyan",
    "success": "green",
    "failure": "bold red",
    "cancelled": "magenta",
    "skipped": "yellow",
    "log": "",
    "metric": "blue",
    "progress": "dim",
}
LEVEL_STYLE = {"warning": "bold yellow", "error": "bold red"}


def is_notable_log(ev: Event) -> bool:
    """A log event the operator must see even with verbose off (a warning or an error)."""
    return ev.event == "log" and str(ev.data.get("level", "")).lower() in LEVEL_STYLE


@dataclass(frozen=True)
class EventFilter:
    """What the table shows: stages (empty: all), event types (empty: all), words, verbose.

    ``words`` must all occur (case-insensitive) in the event's run id, stage, type or message.
    With ``verbose`` off, log (except warnings/errors), progress and metric events are hidden.
    """

    stages: frozenset[str] = frozenset()
    events: frozenset[str] = frozenset()
    words: tuple[str, ...] = ()
    verbose: bool = False

    @classmethod
    def parse(cls, query: str, verbose: bool = False) -> EventFilter:
        """Build a filter from the operator's query.

        ``analyzer`` or ``stage:analyzer`` narrows to a stage, ``failure`` or ``event:failure``
        to an event type; any other word must appear in the event; ``stage:`` and ``event:``
        values may be comma-separated.
        """
        stages: set[str] = set()
        events: set[str] = set()
        words: list[str] = []
        for token in query.split():
            low = token.lower()
            key, sep, value = low.partition(":")
            if sep and key == "stage":
                stages.update(v for v in value.split(",") if v)
            elif sep and key == "event":
                events.update(v for v in value.split(",") if v)
            elif low in STAGES:
                stages.add(low)
            elif low in EVENT_TYPES:
                events.add(low)
            else:
                words.append(low)
        return cls(frozenset(stages), frozenset(events), tuple(words), verbose)

    def matches(self, ev: Event) -> bool:
        if self.stages and ev.stage not in self.stages:
            return False
        if self.events and ev.event not in self.events:
            return False
        # An explicit event-type filter shows that type even when verbose is off.
        if not self.verbose and not self.events and ev.event in VERBOSE_ONLY and not is_notable_log(ev):
            return False
        if self.words:
            hay = f"{ev.run_id} {ev.stage} {ev.event} {ev.msg}".lower()
            return all(w in hay for w in self.words)
        return True

    def describe(self) -> str:
        parts = []
        if self.stages:
            parts.append("stage " + ",".join(sorted(self.stages)))
        if self.events:
            parts.append("event " + ",".join(sorted(self.events)))
        if self.words:
            parts.append("“" + " ".join(self.words) + "”")
        parts.append("verbose" if self.verbose else "verbose off")
        return " · ".join(parts)


class EventStore:
    """The newest ``capacity`` events, in arrival order, and how many were ever added."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._events: deque[Event] = deque(maxlen=capacity)
        self.total = 0

    def __len__(self) -> int:
        return len(self._events)

    def extend(self, events: Sequence[Event]) -> None:
        self._events.extend(events)
        self.total += len(events)

    def latest(self, flt: EventFilter, limit: int) -> list[Event]:
        """The newest ``limit`` stored events that pass ``flt``, oldest first."""
        return newest_matching(self._events, flt, limit)


def newest_matching(events: Iterable[Event] | deque[Event], flt: EventFilter, limit: int) -> list[Event]:
    """The last ``limit`` events of ``events`` passing ``flt``, in their original order.

    Scans from the newest backwards and stops at ``limit`` matches, so a broad filter on a big
    store costs one window, not the whole store.
    """
    out: list[Event] = []
    if limit <= 0:
        return out
    seq = events if isinstance(events, (list, deque)) else list(events)
    for ev in reversed(seq):
        if flt.matches(ev):
            out.append(ev)
            if len(out) >= limit:
                break
    out.reverse()
    return out


def event_key(ev: Event) -> str:
    """The table row key of an event: unique per event file (run id or scheduler) and seq."""
    return f"{ev.run_id}:{ev.stage if ev.stage == 'scheduler' else ''}:{ev.seq}"


def event_summary(ev: Event) -> str:
    """The message column: the event's message, else a compact view of its data."""
    if ev.msg:
        return ev.msg
    d = ev.data
    if ev.event == "progress" and "done" in d:
        who = f"{d['instrument']} " if d.get("instrument") else ""
        return f"{who}{d.get('done')}/{d.get('total', '?')}"
    if ev.event == "skipped" and d.get("reason"):
        return str(d["reason"])
    if d:
        return ", ".join(f"{k}={v}" for k, v in list(d.items())[:6])
    return ""


def event_row(ev: Event) -> tuple[str, str, str, Text, Text]:
    """The cells of one table row: time, run, stage, event (styled), message."""
    style = EVENT_STYLE.get(ev.event, "")
    label = ev.event
    if ev.event == "log":
        level = str(ev.data.get("level", "")).lower()
        if level in LEVEL_STYLE:
            style, label = LEVEL_STYLE[level], level
    run = "" if ev.stage == "scheduler" else short_id(ev.run_id)
    msg = event_summary(ev)
    if len(msg) > 300:
        msg = msg[:299] + "…"
    return (
        clock_time(ev.timestamp),
        run,
        ev.stage,
        Text(label, style=style),
        Text(msg, style=style if ev.event == "failure" else "", no_wrap=True),
    )


class EventTable(DataTable):
    """The events DataTable (rows keyed by event)."""

    BINDINGS = [
        Binding("end", "follow", "Follow", show=False, id="events.follow"),
    ]

    def action_follow(self) -> None:
        if self.row_count:
            self.move_cursor(row=self.row_count - 1, animate=False)


class EventsPanel(Vertical):
    """Live event table with its filter bar and a status line (shown / stored / total)."""

    BINDINGS = [
        Binding("v", "toggle_verbose", "verbose", show=False, id="events.verbose"),
        Binding("f", "cycle_stage", "stage filter", show=False, id="events.stage"),
        Binding("escape", "clear_filter", "Clear filter", show=False, id="events.clear"),
    ]
    STAGE_CYCLE: tuple[str | None, ...] = (None, "pipeline", "translator", "analyzer", "merger", "scheduler")

    def __init__(self, capacity: int = 100_000, window: int = 1000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.store = EventStore(capacity)
        self.window = window
        self.query_text = ""
        self.verbose = False
        self.flt = EventFilter()
        self._shown: deque[str] = deque()  # row keys in table order

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter: stage, event type or words (Enter: keep, Esc: clear)", id="event-filter")
        table = EventTable(id="event-table", cursor_type="row", zebra_stripes=False)
        table.add_column("Time", width=8, key="time")
        table.add_column("Run", width=8, key="run")
        table.add_column("Stage", width=10, key="stage")
        table.add_column("Event", width=9, key="event")
        table.add_column("Message", key="msg")
        yield table
        yield Static("", id="event-status")

    def on_mount(self) -> None:
        self.query_one("#event-filter", Input).display = False
        self._update_status()

    @property
    def table(self) -> EventTable:
        return self.query_one("#event-table", EventTable)

    # --- feeding ------------------------------------------------------------------------------
    def add_events(self, events: Sequence[Event]) -> None:
        """Store a batch of events and append the ones passing the filter (one window at most)."""
        if not events:
            return
        self.store.extend(events)
        matched = newest_matching(events, self.flt, self.window)
        if matched:
            table = self.table
            follow = table.row_count == 0 or table.cursor_row >= table.row_count - 1
            overflow = len(self._shown) + len(matched) - self.window
            if overflow > 32:
                self._rebuild(follow=follow)
            else:
                with self.app.batch_update():
                    for _ in range(max(0, overflow)):
                        table.remove_row(self._shown.popleft())
                    self._append(matched)
                    if follow:
                        table.move_cursor(row=table.row_count - 1, animate=False)
        self._update_status()

    def _append(self, events: Sequence[Event]) -> None:
        table = self.table
        for ev in events:
            key = event_key(ev)
            if key in table.rows:
                continue  # the same event twice (a re-read file): one row
            table.add_row(*event_row(ev), key=key)
            self._shown.append(key)

    def _rebuild(self, follow: bool = True) -> None:
        table = self.table
        rows = self.store.latest(self.flt, self.window)
        with self.app.batch_update():
            table.clear()
            self._shown.clear()
            self._append(rows)
            if follow and table.row_count:
                table.move_cursor(row=table.row_count - 1, animate=False)

    # --- filtering ----------------------------------------------------------------------------
    def set_query(self, text: str) -> None:
        """Filter the table by the operator's query (see :meth:`EventFilter.parse`)."""
        self.query_text = text
        self.flt = EventFilter.parse(text, self.verbose)
        self._rebuild()
        self._update_status()

    def set_verbose(self, verbose: bool) -> None:
        self.verbose = verbose
        self.flt = replace(self.flt, verbose=verbose)
        self._rebuild()
        self._update_status()

    def open_filter(self) -> None:
        box = self.query_one("#event-filter", Input)
        box.display = True
        box.value = self.query_text
        box.focus()

    def action_toggle_verbose(self) -> None:
        self.set_verbose(not self.verbose)

    def action_cycle_stage(self) -> None:
        """Step the stage filter: all → pipeline → translator → analyzer → merger → scheduler."""
        current = next(iter(self.flt.stages)) if len(self.flt.stages) == 1 else None
        i = self.STAGE_CYCLE.index(current) if current in self.STAGE_CYCLE else 0
        nxt = self.STAGE_CYCLE[(i + 1) % len(self.STAGE_CYCLE)]
        words = [t for t in self.query_text.split() if t.lower() not in STAGES and not t.lower().startswith("stage:")]
        if nxt:
            words.insert(0, f"stage:{nxt}")
        self.set_query(" ".join(words))

    def action_clear_filter(self) -> None:
        box = self.query_one("#event-filter", Input)
        box.value = ""
        box.display = False
        self.set_query("")
        self.table.focus()

    @on(Input.Changed, "#event-filter")
    def _filter_changed(self, message: Input.Changed) -> None:
        self.set_query(message.value)

    @on(Input.Submitted, "#event-filter")
    def _filter_submitted(self, message: Input.Submitted) -> None:
        box = self.query_one("#event-filter", Input)
        box.display = bool(message.value)
        self.table.focus()

    def _update_status(self) -> None:
        status = self.query_one("#event-status", Static)
        stored, total = len(self.store), self.store.total
        dropped = f" (newest {stored:,} kept)" if total > stored else ""
        status.update(
            f"{self.table.row_count:,} shown · {total:,} events{dropped} · {self.flt.describe()}"
            "  [dim]/ filter · f stage · v verbose[/]"
        )


__all__ = [
    "EventFilter",
    "EventStore",
    "EventsPanel",
    "EventTable",
    "event_key",
    "event_row",
    "newest_matching",
]
