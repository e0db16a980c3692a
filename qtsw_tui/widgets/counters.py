"""Counters: raw files ready / being exported, store size, pending work, monthly files per stream.

:func:`read_counters` only lists folders and stats files (plus the small export signal JSONs),
so the console can call it every few seconds from a thread worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual.widgets import Static

from pipeline_core import catalog, history, quarantine, rawfiles
from pipeline_core.settings import Settings
from qtsw_tui.widgets.format import clock_time, size


@dataclass(frozen=True)
class Counters:
    """What is where, as the counters panel shows it."""

    raw_ready: int = 0
    raw_waiting: int = 0
    raw_stale: int = 0
    exporting: tuple[dict[str, Any], ...] = ()
    store_bytes: int = 0
    store_instruments: int = 0
    pending_analysis: int = 0
    pending_merges: int = 0
    monthly: dict[str, int] = field(default_factory=dict)  # stream -> monthly files
    problems: tuple[str, ...] = ()
    # streams whose monthly results were computed with other analysis settings (or belong to
    # an instrument the settings no longer name), each with why; until the next run has merged
    stale_results: dict[str, str] = field(default_factory=dict)
    quarantined: int = 0


def read_counters(settings: Settings) -> Counters:
    """Count raw files, store, pending work and monthly files; a failing part is reported, not raised."""
    problems: list[str] = []
    ready = waiting = stale = 0
    exporting: tuple[dict[str, Any], ...] = ()
    # here, in the counters' thread, not at the console's start: results brings numpy and
    # pyarrow, a third of a second before a console could show anything
    from pipeline_core import results

    try:
        scan = rawfiles.scan_raw(settings)
        ready, waiting, stale = len(scan.ready), len(scan.waiting), len(scan.stale)
        exporting = tuple(scan.exporting)
    except Exception as exc:  # a half-written signal file must not blank the panel
        problems.append(f"raw: {exc}")
    _, store_bytes = history.count_files(settings.processed_dir, "*.parquet")
    try:
        quarantined = len(quarantine.quarantined(settings))
    except OSError as exc:
        problems.append(f"quarantine: {exc}")
        quarantined = 0
    try:
        store_insts = len(catalog.store_instruments(settings))
        pending_an = len(catalog.pending_analysis(settings))
        pending_mg = len(catalog.pending_merges(settings))
        stale_res = catalog.stale_results(settings)
    except Exception as exc:
        problems.append(f"state: {exc}")
        store_insts = pending_an = pending_mg = 0
        stale_res = {}
    return Counters(
        raw_ready=ready,
        raw_waiting=waiting,
        raw_stale=stale,
        exporting=exporting,
        store_bytes=store_bytes,
        store_instruments=store_insts,
        pending_analysis=pending_an,
        pending_merges=pending_mg,
        monthly=results.monthly_counts(settings),
        problems=tuple(problems),
        stale_results=stale_res,
        quarantined=quarantined,
    )


def counters_text(c: Counters, width: int = 32) -> Text:
    """The counters panel's text; lists wrap under the value column at ``width`` columns."""
    t = Text()
    indent = 9

    def row(label: str) -> None:
        if t:
            t.append("\n")
        t.append(f"{label:<{indent}}", style="dim")

    def wrapped(tokens: list[str], style: str = "dim") -> None:
        line = ""
        for token in tokens:
            if line and indent + len(line) + 2 + len(token) > width:
                t.append("\n" + " " * indent + line, style=style)
                line = ""
            line = f"{line}  {token}" if line else token
        if line:
            t.append("\n" + " " * indent + line, style=style)

    row("Raw")
    t.append(f"{c.raw_ready} ready", style="bold" if c.raw_ready else "")
    if c.raw_waiting:
        t.append(f" · {c.raw_waiting} waiting")
    if c.raw_stale:
        t.append(f" · {c.raw_stale} stale", style="bold yellow")
    if c.quarantined:
        t.append(f" · {c.quarantined} quarantined", style="bold yellow")
    row("Store")
    t.append(f"{size(c.store_bytes)} · {c.store_instruments} instr.")
    row("Pending")
    t.append(f"{c.pending_analysis} analysis · {c.pending_merges} merge")
    row("Monthly")
    if c.monthly:
        files = sum(c.monthly.values())
        t.append(f"{files} file{'s' if files != 1 else ''} · {len(c.monthly)} streams")
        wrapped([f"{s} {n}" for s, n in c.monthly.items()])
    else:
        t.append("none yet", style="dim")
    row("Exports")
    active = [e for e in c.exporting if not e.get("stale")]
    t.append(f"{len(active)} in progress" if c.exporting else "none", style="" if c.exporting else "dim")
    for exp in c.exporting:
        name = str(exp.get("instrument") or exp.get("fileName") or "?")
        bars = exp.get("totalBarsProcessed")
        parts = [name]
        if bars is not None:
            parts.append(f"{int(bars):,} bars")
        n_bytes = _export_bytes(exp)
        if n_bytes is not None:
            parts.append(size(n_bytes))
        last = exp.get("lastBarTime") or exp.get("lastUpdateTime")
        if last:
            shown = clock_time(last, "%m-%d %H:%M")
            parts.append(f"to {shown if shown != '-' else last}")
        if exp.get("stale"):
            parts.append("STALE")
        wrapped(parts, style="bold yellow" if exp.get("stale") else "")
    for p in c.problems:
        row("!")
        t.append(p, style="bold red")
    return t


class CountersPanel(Static):
    """Shows the latest :class:`Counters`."""

    counters: Counters | None = None

    def show(self, c: Counters) -> None:
        self.counters = c
        self._show()

    def on_resize(self) -> None:
        if self.counters is not None:
            self._show()

    def _show(self) -> None:
        assert self.counters is not None
        # the panel's size comes from the layout, not from its text: repaint only
        self.update(counters_text(self.counters, max(20, self.content_size.width or 32)), layout=False)


def _export_bytes(exp: dict[str, Any]) -> float | None:
    """The size of a file being exported, in bytes: the exporter's ``fileSizeBytes``, else its
    ``fileSizeMB`` (the exporter counts 1 MB as 1,048,576 bytes)."""
    for key, scale in (("fileSizeBytes", 1), ("fileSizeMB", 1024 * 1024)):
        value = exp.get(key)
        if value is not None:
            try:
                return float(value) * scale
            except (TypeError, ValueError):
                continue
    return None
