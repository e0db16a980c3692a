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


class StagePane(Log):
    """The live output of one stage (``translator``, ``analyzer`` or ``merger``)."""

    BINDINGS = [
        Binding("end", "follow", "Follow", show=False, id="pane.follow"),
    ]

    def __init__(self, stage: str, max_lines: int = 2000, **kwargs) -> None:
        super().__init__(max_lines=max_lines, auto_scroll=True, **kwargs)
        self.stage = stage
        self.state_text = ""
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

    def set_state(self, state: str | None, elapsed: float | None = None) -> None:
        """Show the stage's state (and elapsed time) in the pane's title."""
        if state:
            mark, _ = state_mark(state)
            text = f"{mark} {state}"
            if elapsed:
                text += f" {duration(elapsed)}"
        else:
            text = ""
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
