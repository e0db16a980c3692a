"""A footer that fits its width: the console-wide keys give way before ``? help`` and ``q quit``.

Every screen's footer lists the screen's own keys first, then the console's (run, stage, pause,
cancel, history, events, results, help, quit). At 80 columns a screen with many keys of its own
would push ``? help q quit`` off the end. :class:`FittedScreen` hides console-wide keys from the
footer — only from the footer: they still work, and the help screen lists them — in
:data:`GIVE_WAY` order until what is left fits. At a wide terminal nothing is hidden.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from textual.app import App
from textual.binding import ActiveBinding, Binding
from textual.events import Resize
from textual.screen import Screen

# the console-wide actions the footer may leave out, first given way first; help and quit stay
GIVE_WAY = ("events", "history", "results", "run_stage", "toggle_pause", "run_now", "cancel_run")
GAP = 2  # a group's keys are followed by two spaces in the compact footer


def _base(action: str) -> str:
    return action.removeprefix("app.").split("(", 1)[0]


def footer_width(bindings: list[Binding], key_display: Callable[[Binding], str]) -> int:
    """About how many columns the compact footer takes for ``bindings`` (the shown ones)."""
    width = 0
    groups: dict[object, int] = {}
    seen_actions: set[str] = set()
    for b in bindings:
        if b.action in seen_actions:  # several keys for one action: the footer shows the first
            continue
        seen_actions.add(b.action)
        key = len(key_display(b))
        if b.group is not None:
            groups[b.group] = groups.get(b.group, 0) + 1
            width += key + 1
            if groups[b.group] == 1:
                width += len(b.group.description) + GAP
        else:
            width += key + len(b.description) + GAP
    return width


def fit_bindings(
    bindings: Mapping[str, ActiveBinding], width: int, app: App, own: Callable[[ActiveBinding], bool]
) -> dict[str, ActiveBinding]:
    """``bindings`` with console-wide keys hidden (in :data:`GIVE_WAY` order) until they fit in ``width``.

    ``own`` tells a binding of the screen or its widgets (never hidden) from the console's.
    """
    fitted = dict(bindings)
    if width <= 0:
        return fitted

    def shown() -> list[Binding]:
        return [ab.binding for ab in fitted.values() if ab.binding.show]

    for action in GIVE_WAY:
        if footer_width(shown(), app.get_key_display) <= width:
            break
        for key, ab in fitted.items():
            if ab.binding.show and not own(ab) and _base(ab.binding.action) == action:
                fitted[key] = ab._replace(binding=dataclasses.replace(ab.binding, show=False))
    return fitted


class FittedScreen(Screen):
    """A screen whose footer keeps ``? help`` and ``q quit`` in sight at any width."""

    @property
    def active_bindings(self) -> dict[str, ActiveBinding]:
        width = self.size.width or self.app.size.width
        return fit_bindings(super().active_bindings, width, self.app, lambda ab: ab.node is not self.app)

    def on_resize(self, event: Resize) -> None:
        self.refresh_bindings()  # the footer recomposes for the new width


__all__ = ["GIVE_WAY", "FittedScreen", "fit_bindings", "footer_width"]
