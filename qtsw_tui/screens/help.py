"""Help: every key of the console, as currently bound (remapped keys included)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from qtsw_tui.widgets.format import key_label

# Keys that belong to panels and screens rather than the app: (where, binding ids, default
# label, what it does). A remapped binding shows its new key.
PANEL_KEYS: list[tuple[str, tuple[str, ...], str, str]] = [
    ("Events", ("events.stage",), "f", "cycle the stage filter"),
    ("Events", ("events.verbose",), "v", "verbose: show log, progress and metric events"),
    ("Events", ("events.clear",), "Esc", "clear the filter, else close the events view"),
    ("Events", (), "Enter", "the event with all its fields"),
    ("Stage pane", ("pane.follow",), "End", "follow new output again"),
    ("Results", ("results.prev", "results.next"), "[ / ]", "previous / next month"),
    ("Results", ("results.prev_year", "results.next_year"), "{ / }", "previous / next year"),
    ("Results", ("results.stream",), "n", "next stream (statistics and equity curve)"),
    ("Results", ("results.session", "results.slot"), "f / o", "session / slot filter"),
    ("Results", ("results.provisional",), "v", "provisional rows too (marked *)"),
    ("Results", ("results.export",), "x", "export what is shown to CSV (exports/)"),
    ("Results", (), "1 2 3", "matrix / statistics / equity curve"),
    ("Any screen", (), "Esc", "back"),
]


def panel_key(app: object, ids: tuple[str, ...], default: str) -> str:
    """The label of a panel key: its default, or the remapped key(s) of its binding(s)."""
    if not any(getattr(app, "_keymap", {}).get(i) for i in ids):
        return default
    defaults = [d.strip() for d in default.split("/")]
    return " / ".join(key_label(app, i, d) for i, d in zip(ids, defaults, strict=False))


class HelpScreen(ModalScreen[None]):
    """All keys: the app's bindings (with their current keys) and the panel keys."""

    BINDINGS = [
        Binding("escape,question_mark,q", "app.pop_screen", "Back", id="help.back"),
    ]

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = keys
        self.panel_rows: list[tuple[str, str]] = []  # (key as bound, "where: what it does")

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 1), expand=False)
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for key, desc in self.keys:
            table.add_row(key, desc)
        table.add_row("", "")
        self.panel_rows = [(panel_key(self.app, ids, default), f"{where}: {desc}")
                           for where, ids, default, desc in PANEL_KEYS]
        for key, text in self.panel_rows:
            where, _, desc = text.partition(": ")
            table.add_row(key, Text.assemble((f"{where}: ", "dim"), desc))
        with VerticalScroll(id="help-box") as box:
            box.border_title = "Keys"
            box.border_subtitle = "Esc back"
            yield Static(table)
