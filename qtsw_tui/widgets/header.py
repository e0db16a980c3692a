"""The console header: Chicago clock, schedule state, next run, current run, last run."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.widgets import Static

from pipeline_core.runstate import EngineSnapshot, seconds_between
from qtsw_tui.widgets.format import countdown, duration, key_label, parse_time, short_id, state_mark

SCHEDULER_STYLE = {"running": "bold green", "paused": "bold black on yellow", "off": "dim"}


IDLE_HINT = "r run now · t/a/m one stage · s results · ? help"


def stale_notice(streams: tuple[str, ...] | list[str]) -> str:
    """The header's word that the stored results are from other analysis settings."""
    shown = ", ".join(streams[:3]) + (f" +{len(streams) - 3}" if len(streams) > 3 else "")
    return f"⚠ results from other settings ({shown}): the next run re-analyses"


def header_lines(
    snap: EngineSnapshot, now: datetime, hint: str = IDLE_HINT, host: str = "", stale: tuple[str, ...] = (),
    alerts: int = 0,
    width: int | None = None,
) -> tuple[Text, Text]:
    """The two header lines for an engine snapshot at ``now`` (the console's Chicago clock);
    ``hint`` names the main keys while no run is active; ``host`` says who runs the engine
    (``hosting``, ``attached pid N since HH:MM``); ``stale``: the streams whose results are
    from other analysis settings (said instead of the hint, or after the run's stages);
    ``alerts``: the active alerts not acknowledged (a badge, shown only when there are some);
    ``width``: the columns there are — a run's line longer than that leaves out the trigger, then
    the word "stage", so the stage and its time stay in sight."""
    top = _top_line(snap, now, alerts)
    bottom = _bottom_line(snap, now, hint, host, stale)
    if width and len(bottom.plain) > width and snap.current is not None:
        bottom = _bottom_line(snap, now, hint, host, stale, trigger=False)
        if len(bottom.plain) > width:
            bottom = _bottom_line(snap, now, hint, host, stale, trigger=False, stage_word=False)
        if len(bottom.plain) > width:  # then the host says only whose engine: its pid
            bottom = _bottom_line(snap, now, hint, short_host(host), stale, trigger=False, stage_word=False)
    return top, bottom


def short_host(host: str) -> str:
    """``attached pid 123 since 10:00`` → ``attached 123`` (a web console keeps its prefix)."""
    return host.split(" since ", 1)[0].replace("attached pid ", "attached ", 1)


def _top_line(snap: EngineSnapshot, now: datetime, alerts: int) -> Text:
    top = Text()
    top.append(now.strftime("%H:%M:%S"), style="bold")
    top.append(" CT", style="dim")
    top.append("  schedule ", style="dim")
    top.append(snap.scheduler, style=SCHEDULER_STYLE.get(snap.scheduler, ""))
    top.append("  next ", style="dim")
    if snap.next_mark is not None and snap.scheduler != "paused":  # paused: nothing runs next
        top.append(snap.next_mark.strftime("%H:%M"))
        top.append(f" in {countdown(seconds_between(now, snap.next_mark))}")
    else:
        top.append("-")
    top.append("  last ", style="dim")
    last = snap.last_run
    if last:
        mark, style = state_mark(last.get("status"))
        top.append(f"{mark} {last.get('status', '?')}", style=style)
        ended = parse_time(last.get("ended")) or parse_time(last.get("started"))
        if ended is not None:
            top.append(f" {ended:%H:%M}")
    else:
        top.append("-")
    if alerts:  # first, and short: at 80 columns the line's end may be cut, never the alerts
        top = Text.assemble((f"!{alerts}", "bold white on red"), " ", top)
    return top


def _bottom_line(
    snap: EngineSnapshot, now: datetime, hint: str, host: str, stale: tuple[str, ...] | list[str],
    *, trigger: bool = True, stage_word: bool = True,
) -> Text:
    bottom = Text()
    run = snap.current
    if run is None:
        bottom.append("idle", style="dim")
        if stale:
            bottom.append(f"  {stale_notice(stale)}", style="bold yellow")
        else:
            bottom.append(f"  {hint}", style="dim")
    else:
        bottom.append("▶ run ", style="bold cyan")
        bottom.append(short_id(run.run_id), style="bold")
        if trigger:
            bottom.append(f" {run.trigger}", style="dim")
        bottom.append(f"  {duration(seconds_between(run.started, now))}")
        est = snap.estimate
        if est is not None:  # from recent runs: before the stage, so 80 columns keep it
            bottom.append(f" {int(est.fraction * 100)}% ~{duration(est.seconds_left)} left", style="cyan")
        if run.stage:
            st = run.stages.get(run.stage)
            bottom.append("  stage " if stage_word else "  ", style="dim")
            bottom.append(run.stage, style="bold")
            if st is not None and st.started is not None:
                bottom.append(f" {duration(st.elapsed(now))}")
        done = [s for s in run.stages.values() if s.state not in ("waiting", "running")]
        for st in done:
            mark, style = state_mark(st.state)
            bottom.append(f"  {st.name[0].upper()}{mark}", style=style)
        if stale:
            bottom.append("  ⚠ results from other settings", style="bold yellow")
    if host:  # first: at 80 columns a long line loses its end, never who runs the engine
        waiting = "detached" in host or "no engine" in host
        bottom = Text.assemble((host, "bold magenta" if waiting else "dim"), "  ", bottom)
    return bottom


class StatusHeader(Static):
    """Two lines at the top of the main screen, refreshed from the engine snapshot."""

    _shown: Text | None = None
    _hint_text: str | None = None
    stale: tuple[str, ...] = ()  # from the counters: streams whose results are of other settings
    _host = ""  # who runs the engine, as last shown
    alerts: int = 0  # active alerts not acknowledged

    def _hint(self) -> str:
        if self._hint_text is None:  # the keymap is fixed once the console runs

            def k(binding_id: str, default: str) -> str:
                return key_label(self.app, binding_id, default)

            if getattr(self.app, "read_only", False):  # a web console that only watches
                self._hint_text = (f"{k('results', 's')} results · {k('history', 'h')} history · "
                                   f"{k('help', '?')} help")
                return self._hint_text
            self._hint_text = (
                f"{k('run_now', 'r')} run now · {k('run_translator', 't')}/{k('run_analyzer', 'a')}/"
                f"{k('run_merger', 'm')} one stage · {k('results', 's')} results · {k('help', '?')} help"
            )
        return self._hint_text

    def on_mount(self) -> None:
        # a header on a pushed screen shows the state at once, then follows the app's refreshes
        snap, clock = getattr(self.app, "snapshot", None), getattr(self.app, "clock", None)
        if snap is not None and clock is not None:
            host = getattr(self.app, "_host_label", lambda: "")()
            self.show(snap, clock(), host)

    def show(self, snap: EngineSnapshot, now: datetime, host: str | None = None) -> None:
        host = self._host if host is None else host
        self._host = host
        width = self.content_size.width or None  # 0 before the first layout
        text = Text("\n").join(header_lines(snap, now, self._hint(), host, self.stale, self.alerts, width))
        if text != self._shown:
            self._shown = text
            # two lines, height fixed by the stylesheet: repaint only, no layout pass
            self.update(text, layout=False)
