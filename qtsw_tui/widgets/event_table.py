"""The live event table: a bounded event store, a filter, and a capped DataTable window.

The store keeps the newest ``capacity`` events (100,000 by default) as compact records; the
table shows only the newest ``window`` records that pass the filter, so adding a batch costs
at most one window of rows whatever the flood. The full history of a run stays in its JSONL
file (the run detail screen reads it).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from rich.text import Text
from textual import on
from textual.actions import SkipAction
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.timer import Timer
from textual.widgets import DataTable, Input, Static

from pipeline_core.events import EVENT_TYPES, STAGES, Event
from qtsw_tui.widgets.format import event_clock, key_label, short_id

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
    "alert": "bold magenta",
}
LEVEL_STYLE = {"warning": "bold yellow", "error": "bold red"}

# An event as the table keeps it: a plain tuple of strings,
#   (key, run_id, stage, event, level, text, time)
# Plain tuples of strings are untracked by Python's garbage collector, so a store of 100,000
# of them costs a full collection nothing; 100,000 Event objects (each with a dict) cost
# hundreds of milliseconds per full collection — a stall the operator would feel.
Record = tuple[str, str, str, str, str, str, str]
KEY, RUN, STAGE, EVENT, LEVEL, TEXT, TIME = range(7)
MSG_CHARS = 300
REBUILD_SECONDS = 1.0  # in a flood the table is rebuilt at most this often (the store is exact)


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


def record(ev: Event) -> Record:
    """The compact record of an event (what the store keeps and the table shows)."""
    text = event_summary(ev)
    if len(text) > MSG_CHARS:
        text = text[: MSG_CHARS - 1] + "…"
    level = str(ev.data.get("level", "")).lower() if ev.event == "log" else ""
    return (event_key(ev), ev.run_id, ev.stage, ev.event, level, text, event_clock(ev.timestamp))


def is_notable_log(rec: Record) -> bool:
    """A log event the operator must see even with verbose off (a warning or an error)."""
    return rec[EVENT] == "log" and rec[LEVEL] in LEVEL_STYLE


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

    def matches(self, rec: Record) -> bool:
        if self.stages and rec[STAGE] not in self.stages:
            return False
        if self.events and rec[EVENT] not in self.events:
            return False
        # An explicit event-type filter shows that type even when verbose is off.
        if not self.verbose and not self.events and rec[EVENT] in VERBOSE_ONLY and not is_notable_log(rec):
            return False
        if self.words:
            hay = f"{rec[RUN]} {rec[STAGE]} {rec[EVENT]} {rec[LEVEL]} {rec[TEXT]}".lower()
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
    """The newest ``capacity`` events (as records), in arrival order, and how many were ever added."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._records: deque[Record] = deque(maxlen=capacity)
        self.total = 0

    def __len__(self) -> int:
        return len(self._records)

    def extend(self, records: Sequence[Record]) -> None:
        self._records.extend(records)
        self.total += len(records)

    def records(self) -> list[Record]:
        return list(self._records)

    def latest(self, flt: EventFilter, limit: int) -> list[Record]:
        """The newest ``limit`` stored records that pass ``flt``, oldest first."""
        return newest_matching(self._records, flt, limit)


def newest_matching(records: Iterable[Record], flt: EventFilter, limit: int) -> list[Record]:
    """The last ``limit`` records passing ``flt``, in their original order.

    Scans from the newest backwards and stops at ``limit`` matches, so a broad filter on a big
    store costs one window, not the whole store.
    """
    out: list[Record] = []
    if limit <= 0:
        return out
    seq = records if isinstance(records, (list, tuple, deque)) else list(records)
    for rec in reversed(seq):
        if flt.matches(rec):
            out.append(rec)
            if len(out) >= limit:
                break
    out.reverse()
    return out


class Cell(Text):
    """A table cell that DataTable does not measure.

    Every column of the event table has a fixed width, yet DataTable measures each cell of
    each new row (Rich's console options per cell: ~60 µs); under a flood of events that
    measuring, not the drawing, is what starves the keys. Without ``__rich_measure__`` the
    cell is drawn as any Text, clipped to its column.
    """

    __rich_measure__ = None  # type: ignore[assignment]


def event_row(rec: Record) -> tuple[Cell, Cell, Cell, Cell, Cell]:
    """The cells of one table row: time, run, stage, event (styled), message."""
    event = rec[EVENT]
    style, label = EVENT_STYLE.get(event, ""), event
    if rec[LEVEL] in LEVEL_STYLE:
        style, label = LEVEL_STYLE[rec[LEVEL]], rec[LEVEL]
    run = "" if rec[STAGE] == "scheduler" else short_id(rec[RUN])
    return (
        Cell(rec[TIME], no_wrap=True),
        Cell(run, no_wrap=True),
        Cell(rec[STAGE], no_wrap=True),
        Cell(label, style=style, no_wrap=True),
        Cell(rec[TEXT], style=style if event == "failure" else "", no_wrap=True, overflow="ellipsis"),
    )


# time, run, stage, event (each with its one-space gap: the table has no cell padding, which
# leaves the message column the room at 80 columns); the message column takes the rest
FIXED_WIDTHS = (9, 9, 11, 10)


class EventTable(DataTable):
    """The events DataTable (rows keyed by event); the message column fills the width."""

    BINDINGS = [
        Binding("end", "follow", "Follow", show=False, id="events.follow"),
    ]

    def on_resize(self) -> None:
        self.fit_message_column()

    def fit_message_column(self) -> None:
        if "msg" not in self.columns or not self.size.width:
            return
        used = sum(FIXED_WIDTHS) + 2 * self.cell_padding * (len(FIXED_WIDTHS) + 1) + 2  # + scrollbar, padding
        width = max(20, self.size.width - used)
        column = self.columns["msg"]
        if column.width != width:
            column.width = width
            self.refresh(layout=True)

    def action_follow(self) -> None:
        if self.row_count:
            self.move_cursor(row=self.row_count - 1, animate=False)


class EventsPanel(Vertical):
    """Live event table with its filter bar and a status line (shown / stored / total)."""

    BINDINGS = [
        Binding("v", "toggle_verbose", "verbose", id="events.verbose"),
        Binding("f", "cycle_stage", "stage", id="events.stage"),
        Binding("escape", "clear_filter", "Clear filter", show=False, id="events.clear"),
    ]
    STAGE_CYCLE: tuple[str | None, ...] = (None, "pipeline", "translator", "analyzer", "merger", "scheduler")

    def __init__(self, capacity: int = 100_000, window: int = 1000, follow: bool = True, **kwargs) -> None:
        """``follow``: keep the cursor on the newest row as events arrive (the live table);
        off, the table stays at its first row (a past run, read from the top)."""
        super().__init__(**kwargs)
        self.store = EventStore(capacity)
        self.window = window
        self.follow = follow
        self.query_text = ""
        self.verbose = False
        self.flt = EventFilter()
        self._shown: deque[str] = deque()  # row keys in table order
        self._stale = False  # events not yet in the table (hidden, or a flood): rebuild to show
        self._last_rebuild = 0.0
        self._catch_up_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter: stage, event type or words (Enter: keep, Esc: clear)", id="event-filter")
        table = EventTable(id="event-table", cursor_type="row", zebra_stripes=False, cell_padding=0)
        for (label, key), width in zip(
            (("Time", "time"), ("Run", "run"), ("Stage", "stage"), ("Event", "event")), FIXED_WIDTHS, strict=True
        ):
            table.add_column(label, width=width, key=key)
        table.add_column("Message", width=40, key="msg")
        yield table
        yield Static("", id="event-status")

    def on_mount(self) -> None:
        self.query_one("#event-filter", Input).display = False
        self._update_status()

    def on_show(self) -> None:
        self.catch_up()

    def catch_up(self) -> None:
        """Build the rows of events not yet in the table (arrived while hidden or in a flood)."""
        if self._stale:
            self._rebuild()
            self._update_status()

    def _timed_catch_up(self) -> None:
        self._catch_up_timer = None
        if self.display:
            self.catch_up()

    @property
    def table(self) -> EventTable:
        return self.query_one("#event-table", EventTable)

    # --- feeding ------------------------------------------------------------------------------
    def add_events(self, events: Sequence[Event]) -> None:
        """Store a batch of events and append the ones passing the filter (one window at most)."""
        if not events:
            return
        records = [record(ev) for ev in events]
        self.store.extend(records)
        if not self.display:
            # hidden (the stage view at 80x24): keep the records, build the rows when shown
            self._stale = True
            return
        matched = newest_matching(records, self.flt, self.window)
        if matched:
            table = self.table
            follow = self.follow and (table.row_count == 0 or table.cursor_row >= table.row_count - 1)
            overflow = len(self._shown) + len(matched) - self.window
            if overflow > 32 or self._stale:  # many rows to drop, or rows missing: rebuild
                wait = self._last_rebuild + REBUILD_SECONDS - time.monotonic()
                if wait > 0:
                    # a flood: the table is rebuilt at most once per REBUILD_SECONDS
                    self._stale = True
                    if self._catch_up_timer is None:
                        self._catch_up_timer = self.set_timer(wait, self._timed_catch_up)
                else:
                    self._rebuild(follow=follow)
            else:
                with self.app.batch_update():
                    for _ in range(max(0, overflow)):
                        table.remove_row(self._shown.popleft())
                    self._append(matched)
                    if follow:
                        table.move_cursor(row=table.row_count - 1, animate=False)
        self._update_status()

    def _append(self, records: Sequence[Record]) -> None:
        table = self.table
        for rec in records:
            key = rec[KEY]
            if key in table.rows:
                continue  # the same event twice (a re-read file): one row
            table.add_row(*event_row(rec), key=key)
            self._shown.append(key)

    def _rebuild(self, follow: bool | None = None) -> None:
        if follow is None:
            follow = self.follow
        self._stale = False
        self._last_rebuild = time.monotonic()
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
        if not box.display and not self.query_text:
            close = getattr(self.app, "close_events_view", None)
            if close is not None and close():
                return  # nothing to clear: Esc closes the events view
            raise SkipAction()  # nothing to clear: Esc goes on to the screen (back)
        box.value = ""
        box.display = False
        self.set_query("")
        self.table.focus()

    @on(DataTable.RowSelected, "#event-table")
    def _open_event(self, message: DataTable.RowSelected) -> None:
        """Enter on a row: the event with all its fields."""
        key = message.row_key.value
        settings = getattr(self.app, "settings", None)
        if key is None or settings is None:
            return
        from qtsw_tui.screens.event_detail import EventDetailScreen

        self.app.push_screen(EventDetailScreen(settings, str(key)))

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
        text = (
            f"{self.table.row_count:,} shown · {total:,} events{dropped} · {self.flt.describe()}"
            f"  [dim]{key_label(self.app, 'filter', '/')} filter · {key_label(self.app, 'events.stage', 'f')} stage"
            f" · {key_label(self.app, 'events.verbose', 'v')} verbose · enter detail[/]"
        )
        status.update(text, layout=False)  # one line, fixed height: repaint only


__all__ = [
    "EventFilter",
    "EventStore",
    "EventsPanel",
    "EventTable",
    "Record",
    "event_key",
    "event_row",
    "newest_matching",
    "record",
]
