"""Analyzer stage (SPEC §4.6–§4.8): one instrument's bars → ``data/analyzer_temp/<run_id>/<INST>.parquet``.

``python -m pipeline_core.analyzer --instrument ES [--full] [--root R] [--config C] [--run-id ID]``

Which trading dates are analysed (§4.7):

* never analysed (no analyzer state) or ``--full``: every candidate date in the store;
* otherwise the dates whose range, entry or horizon window overlaps the bars the translator
  changed (``state.read_changes``), plus the dates that still hold ``Final = false`` rows (kept in
  the analyzer state). Only the bars those dates need are read from the store.

A different analysis-settings hash (of the instrument's own analysis settings) than the
state's makes the run a full re-analysis by itself, whose output replaces every older row of the
instrument (rows of removed slots and sessions, and rows whose bars are gone, included).

The output is written atomically with the engine version, the analysis hash, the run id and a
``created_ns`` stamp (the merger's run order) in its Parquet metadata. Only once it is durable are
the analyzer state and the pending change range updated, so a crash at any moment loses nothing:
the next run simply does the same dates again. The engine runs one such process per instrument
concurrently; each touches only its own state file and output file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline_core import catalog, clock, store
from pipeline_core.analyzer.strategy import (
    RESULT_SCHEMA,
    Bars,
    StrategyConfig,
    affected_dates,
    analyze,
    candidate_dates,
    date_window,
)
from pipeline_core.arrays import date_numbers, dates_array, to_numpy
from pipeline_core.catalog import CatalogError, DamageError
from pipeline_core.fsutil import write_parquet_atomic
from pipeline_core.protocol import Reporter, stage_main
from pipeline_core.results import (
    META_ANALYSIS_HASH,
    META_ANALYSIS_SETTINGS,
    META_COVERED,
    META_CREATED,
    META_CREATED_NS,
    META_ENGINE_VERSION,
    META_INSTRUMENT,
    META_MODE,
    META_REPLACE,
    META_RUN_ID,
    RESULTS,
    decode_dates,
    encode_dates,
    read_result_file,
)
from pipeline_core.settings import CHICAGO, ENGINE_VERSION, Settings, describe_analysis_change

BAR_COLUMNS = ("timestamp", "open", "high", "low", "close")  # what the strategy reads
# The last window is read this much further, to find the bar that follows it in the same read.
_NEXT_BAR_MARGIN = timedelta(days=5)
# Windows of dates closer than this are read from the store as one range.
_JOIN_GAP = timedelta(days=3)
# Report progress at least every this share of an instrument's dates, or this often (seconds),
# whichever comes first; batches of dates are made small enough for the share (down to
# _MIN_BATCH_DATES).
PROGRESS_STEP = 0.04
PROGRESS_EVERY = 1.0
# A batch costs about 1 ms whatever its size, and 64 dates take about 3 ms: smaller batches
# would cost more than their reports are worth (the engine passes on at most one progress event
# a second per instrument). An instrument of fewer than 1,600 dates reports every 64 dates.
_MIN_BATCH_DATES = 64


@dataclass
class AnalyzerOutcome:
    """What one analyzer run for one instrument did."""

    instrument: str
    mode: str  # "full" | "incremental" | "none" (nothing to do)
    dates: int = 0
    rows: int = 0
    bars: int = 0
    results: dict[str, int] = field(default_factory=dict)  # rows by Result
    provisional_rows: int = 0
    provisional_dates: list[date] = field(default_factory=list)  # after this run
    output: Path | None = None
    load_seconds: float = 0.0
    analysis_seconds: float = 0.0
    write_seconds: float = 0.0
    message: str = ""

    def counts(self) -> dict[str, Any]:
        return {
            "instrument": self.instrument,
            "mode": self.mode,
            "dates": self.dates,
            "rows": self.rows,
            "bars": self.bars,
            **{r: self.results.get(r, 0) for r in RESULTS},
            "provisional_rows": self.provisional_rows,
            "provisional_dates": len(self.provisional_dates),
            "load_seconds": round(self.load_seconds, 3),
            "analysis_seconds": round(self.analysis_seconds, 3),
            "write_seconds": round(self.write_seconds, 3),
        }


# --- which bars the dates need --------------------------------------------------------------------


def date_windows(dates: Iterable[date], cfg: StrategyConfig) -> list[tuple[datetime, datetime]]:
    """The bar ranges [start, end) that analysing ``dates`` reads, joined where close together.

    A date needs its bars from the earliest range start up to its horizon (the latest slot on
    the next trade day). The next bar at or after the end also matters (it makes a window
    complete); :func:`load_bars_for_dates` adds it.
    """
    windows: list[tuple[datetime, datetime]] = []
    for d in sorted(set(dates)):
        lo, hi = date_window(d, cfg)
        if windows and lo <= windows[-1][1] + _JOIN_GAP:
            windows[-1] = (windows[-1][0], max(windows[-1][1], hi))
        else:
            windows.append((lo, hi))
    return windows


def stored_dates(settings: Settings, inst: str, cfg: StrategyConfig) -> list[date]:
    """Every candidate date of the instrument's store (reads only the timestamps, a year at a time)."""
    out: list[date] = []
    cat = catalog.open_catalog(settings)
    for year in store.store_years(settings, inst):
        path = store.store_path(settings, inst, year)
        cat.check_once(path, catalog.STORE, inst)
        col = store.read_year(path, columns=["timestamp"]).column(0)
        ts = to_numpy(col.cast(pa.timestamp("ns", tz="UTC")), np.int64)
        # candidate_dates looks at bar times only; the prices are a zero-copy stand-in.
        zero = np.broadcast_to(np.float64(0.0), ts.shape)
        out.extend(candidate_dates(Bars(ts, zero, zero, zero, zero), cfg))
    return sorted(set(out))


def _by_year(dates: list[date]) -> Iterator[list[date]]:
    """Sorted ``dates`` cut into runs of the same calendar year."""
    chunk: list[date] = []
    for d in dates:
        if chunk and d.year != chunk[0].year:
            yield chunk
            chunk = []
        chunk.append(d)
    if chunk:
        yield chunk


def _epoch_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def read_bar_range(settings: Settings, inst: str, start: datetime, end: datetime) -> pa.Table:
    """Stored bars with ``start <= timestamp < end``: the timestamp and price columns only.

    ``volume`` and ``instrument`` are never looked at by the strategy and would cost as much to
    decode as the prices.
    """
    return store.read_bars(settings, inst, start, end, columns=BAR_COLUMNS)


def _first_bar_from(settings: Settings, inst: str, start: datetime) -> pa.Table:
    """The first stored bar at or after ``start`` (empty table if none)."""
    for year in store.store_years(settings, inst):
        if year < start.astimezone(CHICAGO).year:
            continue
        part = read_bar_range(settings, inst, start, datetime(year + 1, 1, 1, tzinfo=CHICAGO))
        if part.num_rows:
            return part.slice(0, 1)
    return store.empty_table(BAR_COLUMNS)


def load_bars_for_dates(
    settings: Settings, inst: str, dates: Iterable[date], cfg: StrategyConfig
) -> pa.Table:
    """The stored bars analysing ``dates`` needs: their windows, plus the next bar after them."""
    windows = date_windows(dates, cfg)
    if not windows:
        return store.empty_table(BAR_COLUMNS)
    parts = [read_bar_range(settings, inst, lo, hi) for lo, hi in windows[:-1]]
    # The last window is read a little further, for the bar that follows it (usually there).
    last_lo, last_hi = windows[-1]
    tail = read_bar_range(settings, inst, last_lo, last_hi + _NEXT_BAR_MARGIN)
    end_ms = _epoch_ms(last_hi)
    ts = to_numpy(tail.column("timestamp").cast(pa.int64()), np.int64)
    cut = int(np.searchsorted(ts, end_ms))
    if cut < len(ts):
        parts.append(tail.slice(0, cut + 1))
    else:
        parts += [tail, _first_bar_from(settings, inst, last_hi + _NEXT_BAR_MARGIN)]
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return store.empty_table(BAR_COLUMNS)
    return pa.concat_tables(parts).combine_chunks()


# --- state ------------------------------------------------------------------------------------------


class StateError(Exception):
    """Pending-work state that cannot be read: names the catalogue and what to do."""


def read_state(settings: Settings, inst: str, full: bool) -> dict[str, Any] | None:
    """The instrument's analyzer state from the catalogue (None: never analysed), checked. A
    broken one is ignored by a full run (which rebuilds it) and stops an incremental run with a
    :class:`StateError`."""
    try:
        st = catalog.open_catalog(settings).analyzer_state(inst)
        if st is not None:
            for d in st.get("provisional_dates", []):
                date.fromisoformat(d)  # raises for a broken entry
            if st.get("analysis_hash") is None and not st.get("full_requested"):
                raise ValueError("no analysis_hash")
        return st
    except (ValueError, TypeError, AttributeError) as exc:
        if full:
            return None
        raise StateError(
            f"{settings.catalog_path}: unreadable analyzer state of {inst} ({exc}); "
            "a full re-analysis (--full) rebuilds it"
        ) from None


def read_changed_range(settings: Settings, inst: str) -> tuple[datetime, datetime] | None:
    """The instrument's pending changed bar range (from the catalogue), or None."""
    try:
        return catalog.open_catalog(settings).read_changes().get(inst)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise StateError(
            f"{settings.catalog_path}: unreadable pending changes of {inst} ({exc}); "
            "re-analyse with --full"
        ) from None


def output_path(settings: Settings, run_id: str, inst: str) -> Path:
    """Where the run's output for ``inst`` goes: ``data/analyzer_temp/<run_id>/<INST>.parquet``."""
    return settings.analyzer_temp_dir / run_id / f"{inst}.parquet"


# --- the work ---------------------------------------------------------------------------------------


def analyze_instrument(
    settings: Settings,
    inst: str,
    *,
    full: bool = False,
    run_id: str | None = None,
    reporter: Reporter | None = None,
) -> AnalyzerOutcome:
    """Analyse what is due for ``inst`` (everything with ``full``), write the run output, update state.

    When the instrument's analysis settings differ from those its results were computed with,
    the analysis is a full one that replaces every older row (and says why). Raises
    :class:`StateError` for an unreadable state file, and KeyError for
    an instrument not in the settings.
    """
    run_id = run_id or str(uuid.uuid4())
    settings.instrument(inst)  # a clear error for an unknown symbol
    cfg = StrategyConfig.from_settings(settings, inst)
    st = read_state(settings, inst, full)
    changes = read_changed_range(settings, inst)
    requested = (st or {}).get("full_requested")
    if requested and not full:
        full = True
        if reporter:
            reporter.say(f"{inst}: full re-analysis: {requested}")
    if st is not None and st.get("analysis_hash") is None:
        st = None  # only a request on record: never analysed
    current = settings.analysis_hash_for(inst)
    replace = False
    if st is not None and st.get("analysis_hash") != current:
        # Results of other settings: recompute everything, and let no old row survive.
        old = json.loads(st["analysis_settings"]) if st.get("analysis_settings") else None
        why = describe_analysis_change(old, settings.analysis_dict_for(inst))
        if reporter:
            reporter.warning(
                f"analysis settings changed: {inst}: {why}; full re-analysis",
                instrument=inst, changed=why, old_hash=st.get("analysis_hash"), new_hash=current,
            )
        full = replace = True
    if st is not None and not full and st.get("engine_version") != ENGINE_VERSION and reporter:
        reporter.warning(
            f"{inst}: older results come from engine {st.get('engine_version')} "
            f"(now {ENGINE_VERSION}); a full re-analysis (--full) recomputes them",
            instrument=inst,
        )
    full_mode = full or st is None
    out = AnalyzerOutcome(inst, "full" if full_mode else "incremental")
    t0 = time.perf_counter()
    old_provisional: set[date] = set()
    if full_mode:
        dates = stored_dates(settings, inst, cfg)
        has_bars = bool(store.store_years(settings, inst))
    else:
        old_provisional = {date.fromisoformat(d) for d in st.get("provisional_dates", [])}
        changed = set(affected_dates(changes[0], changes[1], cfg)) if changes else set()
        dates = sorted(changed | old_provisional)
        has_bars = True
        if reporter:
            reporter.say(
                f"{inst}: {len(dates)} date(s) to analyse: {len(changed)} touched by changed bars"
                + (f" ({changes[0]:%Y-%m-%d %H:%M} to {changes[1]:%Y-%m-%d %H:%M})" if changes else "")
                + f", {len(old_provisional)} with provisional rows"
            )
    out.load_seconds = time.perf_counter() - t0

    if not dates:
        out.mode = "none"
        out.provisional_dates = sorted(old_provisional)
        if st is not None or has_bars:  # an empty store stays "never analysed"
            _save_state(settings, inst, run_id, out.provisional_dates, changes)
        out.message = f"{inst}: nothing to analyse (0 dates)"
        return out

    out.dates = total = len(dates)
    last = [0.0]
    last_done = [0]
    done_before = [0]
    step = max(1, int(total * PROGRESS_STEP))
    batch_dates = max(_MIN_BATCH_DATES, step)

    def progress(done: int, _chunk_total: int) -> None:
        done += done_before[0]
        now = time.monotonic()
        if reporter and (done >= total or done - last_done[0] >= step or now - last[0] >= PROGRESS_EVERY):
            last[0] = now
            last_done[0] = done
            reporter.progress(done, total, "dates analysed", instrument=inst)

    if reporter:
        reporter.progress(0, total, "dates to analyse", instrument=inst)
        last[0] = time.monotonic()
    # One calendar year of dates at a time: the bars of a year are small enough that memory is
    # reused from chunk to chunk instead of growing to the whole history.
    parts = []
    for chunk in _by_year(dates):
        t = time.perf_counter()
        table = load_bars_for_dates(settings, inst, chunk, cfg)
        bars = Bars.from_table(table)
        out.bars += table.num_rows
        t1 = time.perf_counter()
        out.load_seconds += t1 - t
        parts.append(analyze(bars, cfg, dates=chunk, progress=progress, batch_dates=batch_dates))
        out.analysis_seconds += time.perf_counter() - t1
        done_before[0] += len(chunk)
    result = pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    out.rows = result.num_rows
    res_counts = pc.value_counts(result.column("Result")).to_pylist() if result.num_rows else []
    out.results = {r: 0 for r in RESULTS} | {d["values"]: d["counts"] for d in res_counts}
    not_final = pc.invert(result.column("Final"))
    out.provisional_rows = pc.sum(not_final.cast(pa.int64())).as_py() or 0
    new_provisional = {
        d for d in result.column("Date").filter(not_final).to_pylist() if d is not None
    }
    out.provisional_dates = sorted((old_provisional - set(dates)) | new_provisional)

    # Write the output (even with zero rows for a full run: it says "nothing" for every month
    # of the dates it analysed).
    t2 = time.perf_counter()
    if result.num_rows or full_mode:
        out.output = _write_output(settings, run_id, inst, result, dates, full_mode, replace)
    out.write_seconds = time.perf_counter() - t2
    # Only now that the output is durable: the new state, then the consumed change range.
    _save_state(settings, inst, run_id, out.provisional_dates, changes)
    out.message = (
        f"{inst}: {out.mode} analysis of {out.dates} date(s): {out.rows} rows "
        f"({out.provisional_rows} provisional)"
    )
    return out


def _save_state(
    settings: Settings,
    inst: str,
    run_id: str,
    provisional: list[date],
    consumed: tuple[datetime, datetime] | None,
) -> None:
    """The new analyzer state and the consumed change range, in one catalogue transaction (a
    full re-analysis asked for is done by any run that gets here)."""
    catalog.open_catalog(settings).save_analysis(
        inst,
        {
            "analysis_hash": settings.analysis_hash_for(inst),
            "analysis_settings": settings.analysis_dict_for(inst),
            "engine_version": ENGINE_VERSION,
            "provisional_dates": [d.isoformat() for d in provisional],
            "last_run_id": run_id,
            "updated": clock.iso_now(),
            "full_done": True,
        },
        consumed,
    )


def _write_output(
    settings: Settings, run_id: str, inst: str, result: pa.Table, dates: list[date], full: bool,
    replace: bool = False,
) -> Path:
    """The run's output file for ``inst``. A ``full`` output stands for the dates it analysed
    (older rows on other dates are kept by the merger); a ``replace`` output (the analysis
    settings changed) stands for the instrument's whole history."""
    path = output_path(settings, run_id, inst)
    mode = "full" if full else "incremental"
    day_numbers = date_numbers(dates)
    covered = day_numbers if full else None
    if path.exists() and not full:
        # The same run analysed this instrument before: keep its rows for the other dates.
        prev, prev_meta = read_result_file(path)
        if prev_meta.get(META_MODE) == "full":
            mode = "full"
            covered = np.union1d(decode_dates(prev_meta.get(META_COVERED, "")), day_numbers)
        keep = pc.invert(pc.is_in(prev.column("Date"), value_set=dates_array(dates)))
        prev = prev.filter(keep)
        result = pa.concat_tables([prev, result]).sort_by(
            [("Date", "ascending"), ("Time", "ascending"), ("Session", "ascending")]
        )
    meta = {
        META_ENGINE_VERSION: ENGINE_VERSION,
        META_ANALYSIS_HASH: settings.analysis_hash_for(inst),
        META_ANALYSIS_SETTINGS: json.dumps(settings.analysis_dict_for(inst), sort_keys=True),
        META_RUN_ID: run_id,
        META_INSTRUMENT: inst,
        META_CREATED: clock.iso_now(),
        META_CREATED_NS: str(time.time_ns()),
        META_MODE: mode,
    }
    if replace:
        meta[META_REPLACE] = "1"
    elif covered is not None:
        # The merger drops older rows only on dates a full run analysed (bars still stored).
        meta[META_COVERED] = encode_dates(covered)
    table = result.cast(RESULT_SCHEMA).replace_schema_metadata(
        {k.encode(): v.encode() for k, v in meta.items()}
    )
    write_parquet_atomic(path, table)
    return path


# --- the stage -------------------------------------------------------------------------------------


def _build_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--instrument", required=True, help="the instrument to analyse, e.g. ES")
    p.add_argument("--full", action="store_true", help="re-analyse every date in the store")


def run(args: argparse.Namespace, settings: Settings, rep: Reporter) -> str:
    """The analyzer stage for one instrument: analyse, report metrics and the result."""
    inst = args.instrument
    if inst not in settings.instruments:
        msg = f"unknown instrument {inst!r}; configured: {', '.join(sorted(settings.instruments))}"
        rep.result("failure", msg, error=msg)
        return "failure"
    run_id = args.run_id or str(uuid.uuid4())
    try:
        with catalog.instrument_lock(settings, inst, shared=True):
            out = analyze_instrument(settings, inst, full=args.full, run_id=run_id, reporter=rep)
    except (StateError, DamageError, CatalogError) as exc:
        rep.say(f"ERROR {exc}")
        rep.result("failure", str(exc), counts={"instrument": inst, "dates": 0}, error=str(exc))
        return "failure"
    counts = out.counts()
    counts["catalog_seconds"] = round(catalog.open_catalog(settings).seconds, 4)
    rep.metric(f"{inst} analysis", **counts)
    if out.output is not None:
        rep.say(f"{inst}: wrote {out.output}")
    rep.say(out.message)
    rep.result("success", out.message, counts=counts)
    return "success"


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline_core.analyzer``; returns the exit code."""
    return stage_main("analyzer", _build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
