"""A pane per stage streaming its free-text output: a bounded ``Log`` fed in batches.

Follow mode is on by default: new lines scroll the pane to the end. When the operator scrolls
up, the pane stops following (Textual's ``Log.write_lines`` only scrolls when the view was at
the end) and says so in its subtitle; ``End`` (or scrolling back to the bottom) resumes it.
The full output of a stage is in its ``logs/runs/<run_id>/<stage>.log`` file.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from rich.text import Text
from textual.binding import Binding
from textual.widgets import Log

from qtsw_tui.widgets.format import duration, state_mark

MIN_WRAP = 20  # narrower than this (not laid out yet) a line is kept whole
CONTINUATION = "  "


def wrap_line(line: str, width: int) -> list[str]:
    """``line`` in pieces of at most ``width`` columns, broken at spaces where it can be."""
    if len(line) <= width:
        return [line]
    return textwrap.wrap(
        line, width, subsequent_indent=CONTINUATION, break_on_hyphens=False, drop_whitespace=True
    ) or [line[:width]]


STAGE_TITLES = {"translator": "Translator", "analyzer": "Analyzer", "merger": "Merger"}


BAR_CELLS = 8


def progress_bar(fraction: float, cells: int = BAR_CELLS) -> str:
    """``█████░░░ 62%``: full and empty cells read apart without colour."""
    fraction = min(1.0, max(0.0, fraction))
    full = int(fraction * cells + 1e-9)
    return "█" * full + "░" * (cells - full) + f" {int(fraction * 100 + 1e-9)}%"


class StagePane(Log):
    """The live output of one stage (``translator``, ``analyzer`` or ``merger``)."""

    BINDINGS = [
        Binding("end", "follow", "Follow", show=False, id="pane.follow"),
    ]

    def __init__(self, stage: str, max_lines: int = 2000, **kwargs) -> None:
        super().__init__(max_lines=max_lines, auto_scroll=True, **kwargs)
        self.stage = stage
        self.state_text = ""
        self.progress: float | None = None  # the bar in the title (0…1), None when none is shown
        self.following = True

    def on_mount(self) -> None:
        self._retitle()

    def add_lines(self, lines: Sequence[str]) -> None:
        """Append a batch of output lines; only the last ``max_lines`` of a flood are kept.

        A line wider than the pane is wrapped (its continuation indented), so a skip reason or
        a file's figures are read whole at 80 columns; the stage's log file has it as written.
        """
        if not lines:
            return
        if self.max_lines is not None and len(lines) > self.max_lines:
            lines = lines[-self.max_lines :]
        width = self.scrollable_content_region.width
        if width >= MIN_WRAP:
            lines = [part for line in lines for part in wrap_line(line, width)]
        self.write_lines(lines)

    def set_state(
        self,
        state: str | None,
        elapsed: float | None = None,
        progress: float | None = None,
        past: str = "",
    ) -> None:
        """Show the stage's state (and elapsed time) in the pane's title, then ``past`` (which
        run it was, when it is not the active one: ``last run 10:00``), then its progress bar
        (``progress`` 0…1; None: no bar). At 80 columns a past run's bar is what gets cut."""
        if state:
            mark, _ = state_mark(state)
            text = f"{mark} {state}"
            if elapsed:
                text += f" {duration(elapsed)}"
        else:
            text = ""
        if past:
            text += f" · {past}" if text else past
        self.progress = progress
        if progress is not None:
            text += f" {progress_bar(progress)}"
        if text != self.state_text:
            self.state_text = text
            self._retitle()

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        following = self.is_vertical_scroll_end
        if following != self.following:
            self.following = following
            self._retitle()

    def action_follow(self) -> None:
        self.scroll_end(animate=False, immediate=True, x_axis=False)

    def _retitle(self) -> None:
        title = STAGE_TITLES.get(self.stage, self.stage.title())
        self.border_title = Text.assemble((title, "bold"), f" {self.state_text}" if self.state_text else "")
        self.border_subtitle = "" if self.following else "paused · End follows"
