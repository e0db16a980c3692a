"""Without colour (``NO_COLOR``) every state stays readable.

Textual draws a ``NO_COLOR`` screen in greys of the colours' own brightness, so a dark colour
(``■ cancelled`` in magenta, ``✗`` in red, dim text) becomes a grey barely lighter than the
background. This filter does the same conversion and then keeps every foreground at least
``MIN_CONTRAST`` away from its background (lightened on a dark background, darkened on a light
one), and drops ``dim``: the states are told apart by their glyphs and words, never by shade.
"""

from __future__ import annotations

from functools import lru_cache

from rich.color import Color as RichColor
from rich.segment import Segment
from rich.style import Style
from textual.color import Color
from textual.filter import LineFilter, Monochrome, monochrome_style

MIN_CONTRAST = 0.45  # of brightness, 0 (black) to 1 (white)


def _grey(level: float) -> RichColor:
    v = max(0, min(255, round(level * 255)))
    return Color(v, v, v).rich_color


@lru_cache(4096)
def readable_style(style: Style, background: Color) -> Style:
    """``style`` in greys, its foreground readable on its background (or ``background``)."""
    mono = monochrome_style(style) + Style(dim=False)
    if mono.color is None or mono.color.is_default:
        return mono
    fg = Color.from_rich_color(mono.color).brightness
    bg_color = mono.bgcolor
    bg = (background.monochrome if bg_color is None or bg_color.is_default
          else Color.from_rich_color(bg_color)).brightness
    if abs(fg - bg) >= MIN_CONTRAST:
        return mono
    level = bg + MIN_CONTRAST if bg < 0.5 else bg - MIN_CONTRAST
    return mono + Style(color=_grey(level))


class ReadableMonochrome(LineFilter):
    """Monochrome with a minimum contrast between each character and its background."""

    def apply(self, segments: list[Segment], background: Color) -> list[Segment]:
        return [
            Segment(text, readable_style(style, background) if style is not None else None, None)
            for text, style, _ in segments
        ]


def make_readable(filters: list[LineFilter]) -> None:
    """Replace Textual's monochrome filter (NO_COLOR) in ``filters`` with the readable one."""
    for i, f in enumerate(filters):
        if type(f) is Monochrome:
            filters[i] = ReadableMonochrome(enabled=f.enabled)
