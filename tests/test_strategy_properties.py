"""Property tests: the vectorised strategy equals the plain reference, and incremental == full.

Bars are random walks in integer ticks (small steps, so prices touch the levels exactly and
often), with gaps, missing hours, optional Globex hours, occasional wide bars (same-bar double
breakouts, target and stop in one bar), price gaps, data that ends mid-day, and start dates
around the DST changes. Targets of a few ticks make every exit rule fire often.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import reference_strategy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline_core.analyzer import strategy
from pipeline_core.analyzer.strategy import Bars, StrategyConfig, affected_dates, analyze
from pipeline_core.settings import CHICAGO, load_settings

_SETTINGS = load_settings(root="/nonexistent-qtsw-root", env={})

# Fridays, Mondays and Sundays next to the DST changes, and a few ordinary dates.
EDGE_DATES = [
    date(2025, 3, 7), date(2025, 3, 9), date(2025, 3, 10), date(2025, 10, 31), date(2025, 11, 2),
    date(2025, 11, 3), date(2024, 11, 1), date(2024, 3, 8), date(2020, 4, 17), date(2023, 12, 29),
]
EDGE_TIMES = [time(2), time(7, 30), time(9), time(10, 15), time(10, 30), time(11), time(12, 30), time(16)]
TICKS = {"ES": 0.25, "CL": 0.01, "NG": 0.001, "YM": 1.0, "GC": 0.1}
BASES = {"ES": 20_000, "CL": 5_000, "NG": 2_500, "YM": 40_000, "GC": 20_000}


@dataclass(frozen=True)
class Scenario:
    start: date
    days: int
    spacing: int  # minutes between bars
    instrument: str
    seed: int
    drop: float  # fraction of bars missing at random
    holes: int  # missing blocks of hours
    globex: bool  # no bars Saturday, Sunday before 17:00, or 16:00–17:00
    step: int  # largest random-walk step, ticks
    wide: float  # fraction of wide bars
    gaps: float  # fraction of bars opening away from the previous close
    noise: bool  # prices off the tick grid by a hair (rounding must absorb it)
    negative: bool  # prices around zero and below (crude oil, 2020)
    calm: bool  # the market goes quiet at some point: open trades run to the horizon (TIME)


@st.composite
def scenarios(draw) -> Scenario:
    return Scenario(
        start=draw(st.sampled_from(EDGE_DATES) | st.dates(date(2018, 1, 1), date(2026, 12, 31))),
        days=draw(st.integers(1, 5)),
        spacing=draw(st.sampled_from([1, 5, 5, 15, 30])),
        instrument=draw(st.sampled_from(sorted(TICKS))),
        seed=draw(st.integers(0, 2**32 - 1)),
        drop=draw(st.sampled_from([0.0, 0.0, 0.1, 0.5])),
        holes=draw(st.integers(0, 3)),
        globex=draw(st.booleans()),
        step=draw(st.integers(1, 3)),
        wide=draw(st.sampled_from([0.0, 0.02, 0.1])),
        gaps=draw(st.sampled_from([0.0, 0.05])),
        noise=draw(st.booleans()),
        negative=draw(st.booleans()),
        calm=draw(st.booleans()),
    )


@st.composite
def configs(draw, instrument: str) -> StrategyConfig:
    base = StrategyConfig.from_settings(_SETTINGS, instrument)
    target_ticks = draw(st.sampled_from([3, 4, 5, 8, 13, round(base.target / base.tick)]))
    return replace(
        base,
        target=target_ticks * base.tick,
        trade_days=draw(st.sampled_from([frozenset(range(5)), frozenset({0, 2, 4}), frozenset({4})])),
        entry_cutoff=draw(st.sampled_from([time(16), time(16), time(12, 30), time(10, 15)])),
        break_even_fraction=draw(st.sampled_from([0.65, 0.65, 0.5, 1.0])),
        stop_cap_multiple=draw(st.sampled_from([3.0, 3.0, 1.0, 0.5])),
    )


def _ns(d: date, t: time) -> int:
    return int(pd.Timestamp(datetime.combine(d, t, tzinfo=CHICAGO)).value)


def _walk(rng: np.random.Generator, n: int, sc: Scenario, base: int) -> tuple[np.ndarray, ...]:
    """OHLC in ticks: a random walk with small steps, price gaps and some wide bars."""
    steps = rng.integers(-sc.step, sc.step + 1, n)
    if sc.calm and n:
        steps[rng.integers(0, n) :] = 0
    close = base + np.cumsum(steps)
    open_ = np.r_[close[:1], close[:-1]]
    jump = rng.random(n) < sc.gaps
    open_ = open_ + jump * rng.integers(-12, 13, n)
    high = np.maximum(open_, close) + rng.geometric(0.6, n) - 1
    low = np.minimum(open_, close) - (rng.geometric(0.6, n) - 1)
    wide = rng.random(n) < sc.wide
    high = high + wide * rng.integers(0, 25, n)
    low = low - wide * rng.integers(0, 25, n)
    return open_, high, low, close


def _prices(ticks: np.ndarray, sc: Scenario, rng: np.random.Generator) -> np.ndarray:
    tick = TICKS[sc.instrument]
    prices = ticks * tick  # float artefacts included on purpose (5013 * 0.01 = 50.13000000000001)
    if sc.noise:
        prices = prices + rng.uniform(-1e-7, 1e-7, len(prices)) * tick
    return prices


def _timestamps(sc: Scenario, rng: np.random.Generator) -> np.ndarray:
    begin = _ns(sc.start - timedelta(days=1), time(12))
    end = _ns(sc.start + timedelta(days=sc.days), time(12))
    ts = np.arange(begin, end, sc.spacing * 60 * 10**9, dtype=np.int64)
    keep = rng.random(len(ts)) >= sc.drop
    for _ in range(sc.holes):
        a = rng.integers(0, len(ts))
        keep[a : a + rng.integers(1, 7) * 60 // sc.spacing] = False
    if sc.globex:
        local = pd.to_datetime(ts, utc=True).tz_convert("America/Chicago")
        hour, dow = np.asarray(local.hour), np.asarray(local.day_of_week)
        keep &= (dow != 5) & ~((dow == 6) & (hour < 17)) & (hour != 16)
    # The data may end at any moment (a run in the middle of the day), often near a window edge.
    if rng.random() < 0.5:
        day = sc.start + timedelta(days=int(rng.integers(0, sc.days)))
        edge = EDGE_TIMES[rng.integers(len(EDGE_TIMES))]
        keep &= ts < _ns(day, edge) + int(rng.integers(-2, 3)) * 60 * 10**9
    else:
        keep[rng.integers(len(ts) // 2, len(ts) + 1) :] = False
    return ts[keep]


def make_table(sc: Scenario, ts: np.ndarray | None = None, seed_offset: int = 0) -> pa.Table:
    rng = np.random.default_rng(sc.seed + seed_offset)
    if ts is None:
        ts = _timestamps(sc, rng)
    base = -300 if sc.negative and sc.instrument == "CL" else BASES[sc.instrument]
    o, h, lo, c = _walk(rng, len(ts), sc, base)
    return pa.table(
        {
            "timestamp": pa.array(ts // 10**6, type=pa.int64()).cast(pa.timestamp("ms", tz="America/Chicago")),
            "open": _prices(o, sc, rng),
            "high": _prices(h, sc, rng),
            "low": _prices(lo, sc, rng),
            "close": _prices(c, sc, rng),
        }
    )


@contextlib.contextmanager
def batching(dates: int, gap_days: int) -> Iterator[None]:
    """Other batch sizes and gaps than the defaults: results must not depend on batching."""
    old = strategy._DATES_PER_BATCH, strategy._BATCH_GAP_DAYS
    strategy._DATES_PER_BATCH, strategy._BATCH_GAP_DAYS = dates, gap_days
    try:
        yield
    finally:
        strategy._DATES_PER_BATCH, strategy._BATCH_GAP_DAYS = old


def assert_same_rows(got: pa.Table, want: pa.Table) -> None:
    a, b = got.to_pylist(), want.to_pylist()
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            diff = {k: (x[k], y[k]) for k in x if x[k] != y[k]}
            raise AssertionError(f"row {i} ({x['Date']} {x['Time']} {x['Session']}) differs: {diff}")
    assert len(a) == len(b), f"{len(a)} rows, expected {len(b)}"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), sc=scenarios())
def test_analyze_equals_the_reference(data, sc):
    cfg = data.draw(configs(sc.instrument))
    table = make_table(sc)
    bars = Bars.from_table(table)
    dates = None
    if data.draw(st.booleans()):
        span = [sc.start + timedelta(days=i) for i in range(-1, sc.days + 1)]
        dates = data.draw(st.lists(st.sampled_from(span), max_size=4))
    with batching(data.draw(st.sampled_from([256, 1, 2])), data.draw(st.sampled_from([10, 0, 1]))):
        got = analyze(bars, cfg, dates)
    want = reference_strategy.analyze(table, cfg, dates)
    assert got.schema == want.schema
    assert_same_rows(got, want)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), sc=scenarios())
def test_reanalysing_affected_dates_equals_a_full_analysis(data, sc):
    """SPEC §4.7: only bars in [first, last] changed (edited or added, as the store upserts);
    re-analysing affected_dates plus the dates holding provisional rows gives the full result."""
    cfg = data.draw(configs(sc.instrument))
    old = make_table(sc)
    old_ts = old.column("timestamp").cast(pa.int64()).to_numpy() * 10**6
    lo_ns = _ns(sc.start - timedelta(days=2), time(0))
    hi_ns = _ns(sc.start + timedelta(days=sc.days + 2), time(0))
    minute = 60 * 10**9
    a = data.draw(st.integers(lo_ns // minute, hi_ns // minute)) * minute
    b = data.draw(st.integers(a // minute, min(hi_ns // minute, a // minute + 3 * 24 * 60))) * minute

    # New bars: every minute of [a, b] not already present, thinned out at random; edited
    # bars: a random share of the old bars inside [a, b].
    rng = np.random.default_rng(sc.seed ^ 0x5EED)
    fresh = np.arange(a, b + 1, minute * data.draw(st.sampled_from([1, 5, 30])), dtype=np.int64)
    fresh = fresh[~np.isin(fresh, old_ts)]
    fresh = fresh[rng.random(len(fresh)) < data.draw(st.sampled_from([0.0, 0.3, 1.0]))]
    inside = np.flatnonzero((old_ts >= a) & (old_ts <= b))
    edited = inside[rng.random(len(inside)) < data.draw(st.sampled_from([0.0, 0.5, 1.0]))]
    new_rows = make_table(sc, np.sort(np.r_[fresh, old_ts[edited]]), seed_offset=1)
    keep = np.ones(len(old_ts), dtype=bool)
    keep[edited] = False
    new = pa.concat_tables([old.filter(pa.array(keep)), new_rows]).sort_by("timestamp")

    before = analyze(Bars.from_table(old), cfg)
    full = analyze(Bars.from_table(new), cfg)

    first = datetime.fromtimestamp(a / 1e9, CHICAGO)
    last = datetime.fromtimestamp(b / 1e9, CHICAGO)
    redo = set(affected_dates(first, last, cfg))
    redo |= {r["Date"] for r in before.to_pylist() if not r["Final"]}
    kept = [r for r in before.to_pylist() if r["Date"] not in redo]
    redone = analyze(Bars.from_table(new), cfg, sorted(redo)).to_pylist()
    merged = sorted(kept + redone, key=lambda r: (r["Date"], r["Time"], r["Session"]))
    assert_same_rows(pa.Table.from_pylist(merged, schema=strategy.RESULT_SCHEMA), full)


@settings(max_examples=60, deadline=None)
@given(
    first=st.datetimes(datetime(2019, 1, 1), datetime(2026, 12, 31), timezones=st.just(CHICAGO)),
    hours=st.integers(0, 24 * 9),
    trade_days=st.sampled_from([frozenset(range(5)), frozenset({0, 2, 4}), frozenset({3})]),
)
def test_affected_dates_are_exactly_the_overlapping_windows(first, hours, trade_days):
    """A trade date is affected iff [first, last] meets [its earliest range start, its horizon]."""
    cfg = replace(StrategyConfig.from_settings(_SETTINGS, "ES"), trade_days=trade_days)
    last = first + timedelta(hours=hours)
    got = affected_dates(first, last, cfg)
    want = []
    d = first.date() - timedelta(days=10)
    while d <= last.date() + timedelta(days=1):
        if d.weekday() in trade_days:
            nxt = d + timedelta(days=1)
            while nxt.weekday() not in trade_days:
                nxt += timedelta(days=1)
            start = datetime.combine(d, time(2), tzinfo=CHICAGO)
            end = datetime.combine(nxt, time(11), tzinfo=CHICAGO)
            if start <= last and first <= end:
                want.append(d)
        d += timedelta(days=1)
    assert got == want


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 3000),
    seed=st.integers(0, 2**32 - 1),
    queries=st.integers(1, 60),
)
def test_window_queries_equal_a_plain_scan(size, seed, queries):
    """The block-maximum table behind every window query: first crossing and window maximum,
    for windows of any length (up to the whole array) and levels on and off the data."""
    rng = np.random.default_rng(seed)
    n = size + (-size) % 32
    z = np.full(n + 32, -np.inf)  # as analyze builds it: padded to whole blocks, a spare block
    z[:size] = np.cumsum(rng.integers(-2, 3, size))
    table = strategy._BlockMax(z)
    s = rng.integers(0, size + 1, queries)
    e = np.minimum(s + rng.integers(0, size + 1, queries), size)
    e = np.where(rng.random(queries) < 0.1, s, e)  # some empty windows
    v = rng.integers(-40, 40, queries)
    first = table.first_ge(s, e, v)
    top = table.range_max(s, e)
    for i in range(queries):
        window = z[s[i] : e[i]]
        hits = np.flatnonzero(window >= v[i])
        assert first[i] == (s[i] + hits[0] if len(hits) else strategy._NOT_FOUND)
        assert top[i] == (window.max() if len(window) else -np.inf)
