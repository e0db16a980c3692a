"""The console's footer: the keys that work here, on one line that fits its width.

Every screen's footer lists the screen's own keys first, then the console's (run, stage, pause,
cancel, history, events, results, help, quit). At 80 columns a screen with many keys of its own
would push ``? help q quit`` off the end, so console-wide keys give way — only in the footer:
they still work, and the help screen lists them — in :data:`GIVE_WAY` order until what is left
fits. At a wide terminal nothing is left out.

One widget drawing one line of text: Textual's ``Footer`` mounts a widget per key and restyles
each on every change of focus or screen, which was most of the time a screen took to open.
A click on a key presses it, as in Textual's footer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

from rich.style import NULL_STYLE as NULL
from rich.style import Style
from rich.text import Text
from textual.app import App
from textual.binding import ActiveBinding, Binding
from textual.events import Click, Resize
from textual.screen import Screen
from textual.widget import Widget

# the console-wide actions the footer may leave out, first given way first; help and quit stay
GIVE_WAY = ("events", "history", "results", "run_stage", "toggle_pause", "run_now", "cancel_run")


class ShownKey(NamedTuple):
    """A key drawn in the footer: what it shows, what it does, where (columns ``start``..``end``)."""

    key: str
    display: str
    description: str
    start: int
    end: int


def _base(action: str) -> str:
    return action.removeprefix("app.").split("(", 1)[0]


Item = list[tuple[Binding, bool, str]]  # a single key, or a group's keys: (binding, enabled, display)


def _items(bindings: list[tuple[Binding, bool]], key_display: Callable[[Binding], str]) -> list[Item]:
    """The footer's items in order: a single key, or a group's keys (one per action)."""
    items: list[Item] = []
    seen: set[str] = set()
    for b, enabled in bindings:
        if b.action in seen:  # several keys for one action: the first is shown
            continue
        seen.add(b.action)
        entry = (b, enabled, key_display(b))
        if b.group is not None and items and items[-1][0][0].group is b.group:
            items[-1].append(entry)
        else:
            items.append([entry])
    return items


def footer_line(items: list[Item], key_style: Style = NULL, desc_style: Style = NULL) -> tuple[Text, list[ShownKey]]:
    """``r run  t a m stage p pause …``: the items as one line, and where each key is drawn."""
    text = Text(no_wrap=True, overflow="crop", end="")
    shown: list[ShownKey] = []
    dim = Style(dim=True)

    def key(b: Binding, enabled: bool, display: str, description: str) -> None:
        start = len(text)
        text.append(display, style=key_style if enabled else key_style + dim)
        if description:
            text.append(" " + description, style=desc_style if enabled else desc_style + dim)
        shown.append(ShownKey(b.key, display, description, start, len(text)))

    for item in items:
        first = item[0][0]
        grouped = first.group is not None and len(item) > 1
        if text:
            text.append("  " if grouped else " ")
        if grouped:
            for i, (b, enabled, display) in enumerate(item):
                if i:
                    text.append(" ")
                key(b, enabled, display, "")
            text.append(" " + first.group.description, style=desc_style)  # type: ignore[union-attr]
        else:
            b, enabled, display = item[0]
            key(b, enabled, display, b.description)
    return text, shown


def fit_bindings(
    bindings: Mapping[str, ActiveBinding], width: int, app: App, own: Callable[[ActiveBinding], bool]
) -> list[Item]:
    """The footer's items, console-wide keys left out (in :data:`GIVE_WAY` order) until they fit
    in ``width``. ``own`` tells a binding of the screen or its widgets (never left out)."""
    # a read-only console (qtsw web) answers its steering keys with a note, but does not offer them
    refused = getattr(app, "refused_actions", frozenset())
    shown = [ab for ab in bindings.values() if ab.binding.show and _base(ab.binding.action) not in refused]
    for action in [*GIVE_WAY, None]:
        items = _items([(ab.binding, ab.enabled) for ab in shown], app.get_key_display)
        if action is None or width <= 0 or len(footer_line(items)[0]) <= width:
            return items
        shown = [ab for ab in shown if own(ab) or _base(ab.binding.action) != action]
    return items


class KeyFooter(Widget):
    """The keys that work on this screen, on one line (docked at the bottom)."""

    COMPONENT_CLASSES = {"key-footer--key", "key-footer--description"}
    DEFAULT_CSS = """
    KeyFooter {
        dock: bottom;
        height: 1;
        width: 1fr;
        background: $footer-background;
        color: $footer-foreground;
        text-wrap: nowrap;
        text-overflow: clip;
        .key-footer--key {
            color: $footer-key-foreground;
            text-style: bold;
        }
        .key-footer--description {
            color: $footer-description-foreground;
        }
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.shown: list[ShownKey] = []
        self._text = Text()
        self._screen: Screen | None = None

    def on_mount(self) -> None:
        self._screen = screen = self.screen
        screen.bindings_updated_signal.subscribe(self, self._bindings_changed)
        self._compose_line()

    def on_unmount(self) -> None:
        if self._screen is not None:
            self._screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, screen: Screen) -> None:
        if self.is_attached and screen is self.screen:
            self.call_after_refresh(self._compose_line)

    def on_resize(self, event: Resize) -> None:
        self._compose_line()

    def _compose_line(self) -> None:
        screen = self._screen
        if screen is None or not self.is_attached:  # a change arriving after the screen closed
            return
        app = self.app
        items = fit_bindings(screen.active_bindings, self.size.width, app, lambda ab: ab.node is not app)
        self._text, self.shown = footer_line(
            items,
            self.get_component_rich_style("key-footer--key", partial=True),
            self.get_component_rich_style("key-footer--description", partial=True),
        )
        self.refresh()

    def render(self) -> Text:
        return self._text

    def on_click(self, event: Click) -> None:
        for shown in self.shown:
            if shown.start <= event.x < shown.end:
                event.stop()
                self.app.simulate_key(shown.key)
                return


__all__ = ["GIVE_WAY", "KeyFooter", "ShownKey", "fit_bindings", "footer_line"]
