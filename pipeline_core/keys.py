"""The console's key bindings as the settings see them (``[keys]`` in ``qtsw.toml``); no Textual.

Every binding id the console declares, its default key(s) and where it is active, so that a
remap is checked when the settings load, in every mode (headless too), and a mistake stops
start-up with the usual settings error instead of surfacing later in the console:

- a key must be one a terminal can send: a letter or digit, a punctuation character (``?``)
  or its name (``question_mark``), a named key (``escape``, ``f5``, ``pageup`` …), each with
  optional ``ctrl+``, ``shift+``, ``alt+``, ``meta+``, ``super+`` or ``hyper+``; several keys are
  separated by commas. Keys are stored as the console matches them (``?`` becomes
  ``question_mark``, modifiers in alphabetical order).
- two bindings active at the same time may not share a key: the app's bindings with each
  other and with those of the main screen's panels (while a panel has the focus its keys win),
  and a screen's or a dialog's bindings with each other. A screen's own keys may reuse an app
  key on purpose (``h`` closes the history it opened).
- a binding id must be one of these.

``qtsw_tui`` declares the same bindings on its widgets; a test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# scope -> {binding id: default key(s)}
APP_SCOPE = "app"
SCOPES: dict[str, dict[str, str]] = {
    APP_SCOPE: {
        "run_now": "r",
        "run_translator": "t",
        "run_analyzer": "a",
        "run_merger": "m",
        "toggle_pause": "p",
        "cancel_run": "c",
        "history": "h",
        "events": "e",
        "filter": "slash",
        "results": "s",
        "quarantine": "u",
        "alerts": "exclamation_mark",
        "help": "question_mark",
        "quit": "q",
        "quit_ctrl": "ctrl+q",
    },
    "event table": {
        "events.follow": "end",
        "events.verbose": "v",
        "events.stage": "f",
        "events.clear": "escape",
    },
    "stage pane": {"pane.follow": "end"},
    "confirm dialog": {"confirm.yes": "y", "confirm.no": "n", "confirm.escape": "escape"},
    "help screen": {"help.back": "escape,question_mark,q"},
    "history screen": {"history.back": "escape,h", "history.reload": "f5"},
    "results screen": {
        "results.back": "escape,s",
        "results.prev": "left_square_bracket",
        "results.next": "right_square_bracket",
        "results.prev_year": "left_curly_bracket",
        "results.next_year": "right_curly_bracket",
        "results.stream": "n",
        "results.prev_stream": "N",
        "results.session": "f",
        "results.slot": "o",
        "results.provisional": "v",
        "results.export": "x",
        "results.tab_matrix": "1",
        "results.tab_stats": "2",
        "results.tab_equity": "3",
    },
    "run detail": {"detail.back": "escape"},
    "event detail": {"event.back": "escape"},
    "quarantine screen": {"quarantine.back": "escape,u", "quarantine.requeue": "r", "quarantine.reload": "f5"},
    "alerts screen": {"alerts.back": "escape,exclamation_mark", "alerts.acknowledge": "a"},
}
PANEL_SCOPES = ("event table", "stage pane")  # on the main screen: checked with the app's keys
DEFAULT_KEYS: dict[str, str] = {bid: key for scope in SCOPES.values() for bid, key in scope.items()}
SCOPE_OF: dict[str, str] = {bid: scope for scope, ids in SCOPES.items() for bid in ids}

MODIFIERS = ("alt", "ctrl", "hyper", "meta", "shift", "super")
NAMED_KEYS = frozenset(
    ["escape", "enter", "tab", "backspace", "delete", "insert", "home", "end", "pageup", "pagedown",
     "up", "down", "left", "right", "space"]
    + [f"f{n}" for n in range(1, 25)]
)
# punctuation as the console names it (the Unicode name, lower case, a few shortened)
PUNCTUATION = {
    "!": "exclamation_mark", '"': "quotation_mark", "#": "number_sign", "$": "dollar_sign",
    "%": "percent_sign", "&": "ampersand", "'": "apostrophe", "(": "left_parenthesis",
    ")": "right_parenthesis", "*": "asterisk", "+": "plus", ",": "comma", "-": "minus",
    ".": "full_stop", "/": "slash", ":": "colon", ";": "semicolon", "<": "less_than_sign",
    "=": "equals_sign", ">": "greater_than_sign", "?": "question_mark", "@": "at",
    "[": "left_square_bracket", "\\": "backslash", "]": "right_square_bracket",
    "^": "circumflex_accent", "_": "underscore", "`": "grave_accent", "{": "left_curly_bracket",
    "|": "vertical_line", "}": "right_curly_bracket", "~": "tilde",
}
PUNCTUATION_NAMES = frozenset(PUNCTUATION.values())

ALLOWED_KEYS = (
    "keys such as r, R, ?, question_mark, f5, escape, pageup, ctrl+r or alt+shift+up (a letter, "
    "digit, punctuation character or key name, with optional ctrl+/shift+/alt+/meta+/super+/hyper+; "
    "several separated by commas)"
)


class KeyProblem(ValueError):
    """A ``[keys]`` entry that cannot be used: the setting, its value, what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key} = {value!r}: {allowed}")


def normalize_key(text: str) -> str | None:
    """One key as the console matches it, or None when no terminal can send it."""
    text = text.strip()
    if not text:
        return None
    if text in PUNCTUATION:  # '+' and ',' alone, before splitting on them
        return PUNCTUATION[text]
    *mods, base = text.split("+")
    mods = [m.strip().lower() for m in mods]
    if any(m not in MODIFIERS for m in mods) or len(set(mods)) != len(mods):
        return None
    base = base.strip()
    if len(base) == 1:
        if base in PUNCTUATION:
            base = PUNCTUATION[base]
        elif not (base.isascii() and base.isalnum()):
            return None
    elif base.lower() in NAMED_KEYS or base.lower() in PUNCTUATION_NAMES:
        base = base.lower()
    else:
        return None
    return "+".join([*sorted(mods), base])


def check_keys(keys: Mapping[str, Any]) -> dict[str, str]:
    """The ``[keys]`` table checked and normalised ({binding id: "key,key"}).

    Raises :class:`KeyProblem` for an unknown binding id, a key no terminal can send, or two
    bindings active at the same time on the same key.
    """
    out: dict[str, str] = {}
    for bid, value in _flatten(keys).items():
        if bid not in DEFAULT_KEYS:
            raise KeyProblem(f"keys.{bid}", value, "a binding id: " + ", ".join(sorted(DEFAULT_KEYS)))
        if not isinstance(value, str):
            raise KeyProblem(f"keys.{bid}", value, ALLOWED_KEYS)
        parts = value.split(",") if value.strip() not in (",", "comma") else [value]
        normalized = [normalize_key(p) for p in parts]
        if not parts or any(k is None for k in normalized):
            raise KeyProblem(f"keys.{bid}", value, ALLOWED_KEYS)
        out[bid] = ",".join(dict.fromkeys(k for k in normalized if k))
    _check_clashes(out)
    return out


def _flatten(keys: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """TOML reads ``history.reload = "r"`` as a table ``history = {reload = "r"}``."""
    out: dict[str, Any] = {}
    for k, v in keys.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def effective_keys(keys: Mapping[str, str]) -> dict[str, list[str]]:
    """Every binding id's keys once ``keys`` (normalised) is applied over the defaults."""
    return {bid: (keys.get(bid) or default).split(",") for bid, default in DEFAULT_KEYS.items()}


def _check_clashes(keys: Mapping[str, str]) -> None:
    now = effective_keys(keys)
    groups = [[*SCOPES[APP_SCOPE], *SCOPES[s]] for s in PANEL_SCOPES]
    groups += [list(ids) for scope, ids in SCOPES.items() if scope not in PANEL_SCOPES]
    for group in groups:
        holder: dict[str, str] = {}
        for bid in group:
            for key in now[bid]:
                other = holder.get(key)
                if other is not None and other != bid and (bid in keys or other in keys):
                    mine, theirs = (bid, other) if bid in keys else (other, bid)
                    raise KeyProblem(
                        f"keys.{mine}", keys[mine],
                        f"a key no other binding of the {_where(mine, theirs)} uses "
                        f"({key} is {theirs}'s); remap {theirs} too, or choose another key",
                    )
                holder[key] = bid


def _where(a: str, b: str) -> str:
    scopes = {SCOPE_OF[a], SCOPE_OF[b]}
    if scopes <= {APP_SCOPE}:
        return "console"
    named = sorted(s for s in scopes if s != APP_SCOPE)
    return f"{named[0]} (with the console's keys)" if APP_SCOPE in scopes else named[0]
