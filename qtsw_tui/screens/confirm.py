"""A yes/no question (cancel the run? quit during a run?)."""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from qtsw_tui.widgets.format import key_label


class ConfirmScreen(ModalScreen[bool]):
    """Dismisses with True (``y``/Yes) or False (``n``/``Esc``/No).

    ``question`` may be a function: it is asked again twice a second, so a question about
    something that moves on (the run's current stage) stays true while it is on screen.
    """

    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n", "answer(False)", "No", id="confirm.no"),
        Binding("escape", "answer(False)", "No", show=False, id="confirm.escape"),
    ]

    REFRESH_SECONDS = 0.5

    def __init__(self, question: str | Callable[[], str], yes: str = "Yes", no: str = "No") -> None:
        super().__init__()
        self._ask = question if callable(question) else None
        self.question = question() if callable(question) else question
        self.yes_label, self.no_label = yes, no

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Static(self.question, id="confirm-question", markup=False)
            with Horizontal(id="confirm-buttons"):
                yes, no = key_label(self.app, "confirm.yes", "y"), key_label(self.app, "confirm.no", "n")
                yield Button(f"{self.yes_label} ({yes})", id="confirm-yes", variant="error")
                yield Button(f"{self.no_label} ({no})", id="confirm-no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#confirm-no", Button).focus()
        if self._ask is not None:
            self.set_interval(self.REFRESH_SECONDS, self.refresh_question)

    def refresh_question(self) -> None:
        if self._ask is None:
            return
        text = self._ask()
        if text != self.question:
            self.question = text
            self.query_one("#confirm-question", Static).update(text)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm-yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
