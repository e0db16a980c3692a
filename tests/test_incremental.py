"""SPEC §4.7 invariant: after any sequence of incremental runs, the monthly results equal those of
a full re-analysis of the same bars.

Bars arrive in batches (cut anywhere, also mid-session), some late (holes filled afterwards), and
past bars get corrected. Each step does what the pipeline does: the translator's upsert and
change record, the analyzer stage for the instrument, and (sometimes) the merger. A second data
root then gets the final bars at once and one full analysis; both roots' monthly files must hold
the same rows.
"""

from __future__ import annotations

import tempfile
from datetime import date, time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from pipeline_core import catalog, merger, sample, store
from pipeline_core.analyzer import runner
from pipeline_core.analyzer.strategy import Bars, StrategyConfig, analyze
from pipeline_core.clock import wall
from pipeline_core.results import monthly_files, read_monthly_file
from pipeline_core.settings import Settings, load_settings

# Nine trading days across a month end and the November DST change (Sunday 2 Nov 2025).
DAYS = sample.trading_days(date(2025, 11, 7), 9)
TICK = 0.25
# Ordinary days (ES moves ~60 points, T = 10) and quiet ones (~8 points: trades run to the
# horizon, so TIME exits and provisional rows are common).
BARS = {
    (seed, rng): sample.generate_bars("ES", TICK, DAYS, seed=seed, daily_range=rng)
    for seed in range(3)
    for rng in (8.0, 60.0)
}


def session_of(bars: pa.Table) -> np.ndarray:
    """The index in DAYS of the trading session each bar belongs to."""
    ts = bars.column("timestamp").cast(pa.int64()).to_numpy()
    ends = np.array([sample.session_bounds_ms(d)[1] for d in DAYS])
    return np.searchsorted(ends, ts, side="right")


def new_root(base: Path, name: str) -> Settings:
    s = load_settings(root=base / name, env={})
    s.ensure_dirs()
    return s


def translate(settings: Settings, bars: pa.Table) -> None:
    """What the translator does with new bars: upsert, then record the changed range."""
    changed = store.upsert_bars(settings, "ES", bars)
    if changed is not None:
        catalog.open_catalog(settings).record_changes("ES", *changed)


def monthly(settings: Settings) -> dict[str, list[dict]]:
    return {
        str(p.relative_to(settings.analyzer_runs_dir)): read_monthly_file(p).to_pylist()
        for files in monthly_files(settings).values()
        for p in files
    }


def assert_equal_to_one_plain_analysis(settings: Settings) -> None:
    """The monthly files hold exactly what the strategy gives on all the stored bars at once
    (no windows, no year chunks, no merging)."""
    cfg = StrategyConfig.from_settings(settings, "ES")
    plain = analyze(Bars.from_table(store.read_bars(settings, "ES")), cfg).to_pylist()
    merged = [r for rows in monthly(settings).values() for r in rows]

    def order(r: dict) -> tuple:
        return (r["Date"], r["Time"], r["Session"])

    assert sorted(merged, key=order) == sorted(plain, key=order)


def shifted(bars: pa.Table, ticks: int) -> pa.Table:
    """The same bars with every price moved by ``ticks`` (a correction that keeps OHLC consistent)."""
    cols = {c: bars.column(c) for c in bars.column_names}
    for c in ("open", "high", "low", "close"):
        cols[c] = pa.array(np.round(bars.column(c).to_numpy() + ticks * TICK, 2))
    return pa.table(cols, schema=bars.schema)


step = st.tuples(
    st.floats(0.0, 1.0),  # where this batch ends, as a fraction of the remaining bars
    st.one_of(st.none(), st.tuples(st.floats(0, 1), st.integers(1, 600), st.sampled_from([-8, -1, 3, 40]))),
    st.booleans(),  # fill the holes now
    st.booleans(),  # merge after this step
)


@hsettings(max_examples=20, deadline=None)
@given(
    data=st.tuples(st.integers(0, 2), st.sampled_from([8.0, 60.0])),
    missing_days=st.sets(st.integers(1, len(DAYS) - 2), max_size=2),
    holes=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 2000)), max_size=2),
    steps=st.lists(step, min_size=1, max_size=5),
)
def test_incremental_runs_equal_a_full_reanalysis(
    data: tuple, missing_days: set, holes: list, steps: list
) -> None:
    bars = BARS[data]
    if missing_days:  # whole sessions without data: later bars lie beyond some horizons
        bars = bars.filter(pa.array(~np.isin(session_of(bars), sorted(missing_days))))
    n = bars.num_rows
    late = np.zeros(n, dtype=bool)  # bars that arrive only when the holes are filled
    for frac, length in holes:
        a = int(frac * n)
        late[a : a + length] = True
    with tempfile.TemporaryDirectory() as tmp:
        inc = new_root(Path(tmp), "incremental")
        done = 0
        for i, (cut, correction, fill, merge_now) in enumerate(steps):
            last = i == len(steps) - 1
            end = n if last else done + int(cut * (n - done))
            batch = bars.slice(done, end - done).filter(pa.array(~late[done:end]))
            translate(inc, batch)
            done = end
            if correction is not None and done:
                frac, length, ticks = correction
                a = int(frac * done)
                translate(inc, shifted(store.read_bars(inc, "ES").slice(a, length), ticks))
            if late[:done].any() and (fill or last):
                translate(inc, bars.slice(0, done).filter(pa.array(late[:done])))
            runner.analyze_instrument(inc, "ES", run_id=f"run-{i}")
            if merge_now or last:
                assert merger.merge(inc).ok
        full = new_root(Path(tmp), "full")
        translate(full, store.read_bars(inc, "ES"))
        runner.analyze_instrument(full, "ES", run_id="full", full=True)
        assert merger.merge(full).ok

        assert_equal_to_one_plain_analysis(full)
        got, want = monthly(inc), monthly(full)
        assert sorted(got) == sorted(want)
        for name in want:
            assert got[name] == want[name], name
        assert catalog.open_catalog(inc).read_changes() == {}
        assert catalog.open_catalog(inc).analyzer_state("ES")["provisional_dates"] == catalog.open_catalog(
            full
        ).analyzer_state("ES")["provisional_dates"]


def test_a_correction_in_the_past_sees_the_bar_that_completes_its_horizon() -> None:
    """Bars read for a past correction end at the last affected date's horizon; the bar at the
    horizon itself is what makes a trade still open there final."""
    bars = BARS[(0, 8.0)]
    wednesday = date(2025, 10, 29)
    with tempfile.TemporaryDirectory() as tmp:
        inc = new_root(Path(tmp), "incremental")
        translate(inc, bars)
        runner.analyze_instrument(inc, "ES", run_id="first")
        assert merger.merge(inc).ok
        # No provisional dates pending, so the correction's window is the only one read.
        st_ = catalog.open_catalog(inc).analyzer_state("ES")
        catalog.open_catalog(inc).save_analysis("ES", {**st_, "provisional_dates": []}, None)
        ten = store.read_bars(inc, "ES", wall(wednesday, time(10)), wall(wednesday, time(11)))
        translate(inc, shifted(ten, -3))

        out = runner.analyze_instrument(inc, "ES", run_id="fix")

        assert out.mode == "incremental" and out.dates == 2  # Tuesday (horizon) and Wednesday
        rows = pq.read_table(out.output).to_pylist()
        # Wednesday has trades still open at Thursday's slot times: the case this is about.
        assert any(r["Result"] == "TIME" and r["Date"] == wednesday and r["Final"] for r in rows)
        assert merger.merge(inc).ok
        full = new_root(Path(tmp), "full")
        translate(full, store.read_bars(inc, "ES"))
        runner.analyze_instrument(full, "ES", run_id="full", full=True)
        assert merger.merge(full).ok
        assert monthly(inc) == monthly(full)


def test_provisional_rows_are_completed_by_bars_beyond_their_horizon() -> None:
    """Thursday's data ends at noon, Friday's session is missing, then Monday's bars arrive: they
    lie beyond Thursday's horizon (Friday), yet they complete Thursday's open windows."""
    bars = BARS[(1, 8.0)]
    thursday, friday = date(2025, 10, 30), date(2025, 10, 31)
    ts = bars.column("timestamp").cast(pa.int64()).to_numpy()
    cut = int(np.searchsorted(ts, int(wall(thursday, time(12)).timestamp() * 1000)))
    monday = int(np.searchsorted(session_of(bars), DAYS.index(friday) + 1))
    with tempfile.TemporaryDirectory() as tmp:
        inc = new_root(Path(tmp), "incremental")
        translate(inc, bars.slice(0, cut))
        runner.analyze_instrument(inc, "ES", run_id="thursday")
        assert thursday.isoformat() in catalog.open_catalog(inc).analyzer_state("ES")["provisional_dates"]
        translate(inc, bars.slice(monday))
        out = runner.analyze_instrument(inc, "ES", run_id="monday")
        assert merger.merge(inc).ok
        assert thursday.isoformat() not in catalog.open_catalog(inc).analyzer_state("ES")["provisional_dates"]
        assert out.dates > 0

        full = new_root(Path(tmp), "full")
        translate(full, store.read_bars(inc, "ES"))
        runner.analyze_instrument(full, "ES", run_id="full", full=True)
        assert merger.merge(full).ok
        assert monthly(inc) == monthly(full)
