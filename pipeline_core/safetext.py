"""Text taken from outside (file names, file contents, stage output) made fit for a terminal,
a log line and an event.

A file name is whatever bytes the file system holds: Python gives undecodable bytes as lone
surrogates (``surrogateescape``), which cannot be written as UTF-8, and a name may hold newlines,
ANSI escapes or bidirectional overrides that would forge or hide lines on the operator's
terminal. :func:`safe` escapes every such character visibly (``\\xff``, ``\\n``, ``\\x1b``,
``\\u202e``) and leaves all other text, printable Unicode included, as it is. Rich markup is not
touched here: the console renders such text as plain text, never as markup.

:func:`safe_filename` turns any name into one fit to create on disk beside a suffix of ours
(a quarantine note), and :func:`name_problem` says why a raw file's name is refused.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

# C0 and C1 controls and DEL, line and paragraph separators, bidirectional embeddings,
# overrides and isolates, and every surrogate (undecodable bytes, or broken text).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

# The longest file name most file systems allow, in bytes.
NAME_MAX = 255


def _escape(m: re.Match[str]) -> str:
    ch = m.group(0)
    o = ord(ch)
    if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{o - 0xDC00:02x}"
    if ch in _NAMED:
        return _NAMED[ch]
    return f"\\x{o:02x}" if o <= 0xFF else f"\\u{o:04x}"


def safe(text: str) -> str:
    """``text`` with control characters, line separators, bidi controls and undecodable bytes
    escaped visibly; the same string when there is none (the common case, one regex search)."""
    if not _UNSAFE.search(text):
        return text
    return _UNSAFE.sub(_escape, text)


def safe_data(value: Any) -> Any:
    """:func:`safe` applied to every string in a JSON-like value (dict keys included)."""
    if isinstance(value, str):
        return safe(value)
    if isinstance(value, dict):
        return {safe(k) if isinstance(k, str) else k: safe_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [safe_data(v) for v in value]
    return value


def name_problem(name: str) -> str | None:
    """Why a raw file's name cannot be taken as it is (None when it can): bytes that are not
    UTF-8, control characters, or a name too long to add a suffix to."""
    if any(0xDC80 <= ord(c) <= 0xDCFF for c in name):
        return "file name is not valid UTF-8"
    if _UNSAFE.search(name):
        return "file name holds control characters"
    return None


def safe_filename(name: str, suffix: str = "") -> str:
    """A name for ``name`` that can be created on disk with ``suffix`` appended: escaped as
    :func:`safe` does (a backslash escape never holds a path separator), and, when it would be
    longer than :data:`NAME_MAX` bytes, cut and given a hash of the original so two long names
    do not meet. The caller records the original beside it."""
    clean = safe(name).replace("/", "\\x2f")
    if len((clean + suffix).encode("utf-8")) <= NAME_MAX:
        return clean
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    stem, dot, ext = clean.rpartition(".")
    if not dot or len(ext) > 16:
        stem, ext = clean, ""
    tail = f"~{digest}" + (f".{ext}" if ext else "")
    room = NAME_MAX - len((tail + suffix).encode("utf-8"))
    cut = stem.encode("utf-8")[:room].decode("utf-8", "ignore")
    return cut + tail
