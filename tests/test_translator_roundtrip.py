"""Parsing round trips (hypothesis): bars written in any input form come back exactly, and
bad rows are found, counted by rule and located by line wherever they are."""

from __future__ import annotations

import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from pipeline_core import sample, store, translator
from pipeline_core.settings import CHICAGO, load_settings

ORIGIN = datetime(2025, 1, 5, 17, 0, tzinfo=CHICAGO)  # a Sunday evening open
ORIGIN_MS = int(ORIGIN.timestamp() * 1000)
SPAN_MINUTES = 330 * 24 * 60  # the year, across both DST changes
TICKS = {"ES": 0.25, "CL": 0.01, "NG": 0.001, "YM": 1.0}


def _globex(minute: int) -> bool:
    """Inside the Globex week: Sunday 17:00 to Friday 16:00, not in the daily break."""
    t = datetime.fromtimestamp(ORIGIN_MS / 1000 + minute * 60, CHICAGO)
    wd, h = t.weekday(), t.hour
    if wd == 5 or (wd == 6 and h < 17) or (wd == 4 and h >= 16):
        return False
    return h != 16


_bar = st.tuples(
    st.integers(-2000, 400_000),  # low, in ticks (negative prices are legal)
    st.integers(0, 400),  # high - low
    st.floats(0, 1),  # where open sits in the bar
    st.floats(0, 1),  # where close sits
    st.integers(0, 1_000_000),  # volume
)


@st.composite
def bar_tables(draw: Any) -> tuple[str, pa.Table]:
    symbol = draw(st.sampled_from(sorted(TICKS)))
    tick = TICKS[symbol]
    minutes = draw(st.lists(st.integers(0, SPAN_MINUTES).filter(_globex), min_size=1, max_size=50, unique=True))
    rows = draw(st.lists(_bar, min_size=len(minutes), max_size=len(minutes)))
    decimals = sample.tick_decimals(tick)
    cols: dict[str, list[float]] = {k: [] for k in ("open", "high", "low", "close", "volume")}
    for low, span, fo, fc, vol in rows:
        for k, t in (("low", low), ("high", low + span), ("open", low + round(span * fo)), ("close", low + round(span * fc))):
            cols[k].append(round(t * tick, decimals))
        cols["volume"].append(float(vol))
    ts = pa.array([ORIGIN_MS + m * 60_000 for m in minutes], pa.timestamp("ms", tz="UTC"))
    return symbol, pa.table({"timestamp": ts, **cols})


_form = st.sampled_from(
    [("exporter", ","), ("ninjatrader", ";"), ("ninjatrader", ","), ("timestamp_utc", ",")]
)
_zone = st.sampled_from(["UTC", "America/Chicago", "Europe/London", "Asia/Kolkata"])


def _parse(path: Path, zone: str, tolerant: bool, piece_bytes: int | None = None, max_bad: float = 0.01,
           instrument: str | None = None) -> tuple[translator.FileResult, pa.Table]:
    s = load_settings(
        root=path.parent,
        env={},
        overrides={"input.timezones": [{"pattern": "*", "timezone": zone}], "input.max_bad_row_fraction": max_bad},
    )
    layout, pieces = translator.parse_file(path, s, tolerant=tolerant, piece_bytes=piece_bytes, workers=2,
                                           instrument=instrument)
    result = translator.FileResult(path.name, instrument or "ES", 0, "")
    years = translator.assemble(path, s, instrument or "ES", layout, pieces, result, int(time.time() * 1000))
    table = pa.concat_tables(years.values()) if years else store.empty_table()
    return result, table


def _name(symbol: str, form: str) -> str:
    return f"{symbol} 03-25.Last.txt" if form == "ninjatrader" else f"{symbol}.csv"


def _same_bars(got: pa.Table, bars: pa.Table) -> None:
    order = pa.compute.sort_indices(bars, [("timestamp", "ascending")])
    want = bars.take(order)
    assert got.column("timestamp").cast(pa.int64()).to_pylist() == want.column("timestamp").cast(pa.int64()).to_pylist()
    for c in ("open", "high", "low", "close", "volume"):
        assert got.column(c).to_pylist() == want.column(c).to_pylist(), c


@hsettings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=bar_tables(),
    form=_form,
    zone=_zone,
    bom=st.booleans(),
    crlf=st.booleans(),
    tolerant=st.booleans(),
    shuffle=st.randoms(use_true_random=False),
)
def test_written_bars_come_back_exactly(data: tuple[str, pa.Table], form: tuple[str, str], zone: str, bom: bool, crlf: bool, tolerant: bool, shuffle: Any) -> None:
    symbol, bars = data
    kind, sep = form
    idx = list(range(bars.num_rows))
    shuffle.shuffle(idx)
    bars_in_file = bars.take(pa.array(idx))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / _name(symbol, kind)
        sample.write_bars_csv(path, bars_in_file, kind, instrument=symbol, zone=zone, sep=sep, bom=bom, crlf=crlf)
        result, got = _parse(path, zone, tolerant, piece_bytes=256, instrument=symbol)
    assert result.rows_in == result.rows_kept == bars.num_rows
    assert result.dropped == {} and result.duplicates == 0
    _same_bars(got, bars)


_BREAKERS = {
    # rule -> how to spoil one row of the exporter form (fields: date, time, o, h, l, c, v, sym)
    "malformed": lambda f: f[:5],
    "time": lambda f: ["2025-02-30", *f[1:]],
    "non_numeric": lambda f: [*f[:3], "1,5".replace(",", "x"), *f[4:]],
    "nan": lambda f: [*f[:5], "nan", *f[6:]],
    "high_low": lambda f: [*f[:3], str(float(f[4]) - 1), *f[4:]],
    "open_close": lambda f: [*f[:2], str(float(f[3]) + 1), *f[3:]],
    "volume": lambda f: [*f[:6], "-1", *f[7:]],
    "instrument": lambda f: [*f[:7], "mgc 12-25"],  # another configured instrument (no file here is MGC)
}


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=bar_tables(),
    spoil=st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(sorted(_BREAKERS))), min_size=1, max_size=8),
    blanks=st.lists(st.integers(0, 10_000), max_size=3),
    piece_bytes=st.sampled_from([128, 512, 1 << 20]),
)
def test_bad_rows_are_counted_by_rule_and_located(data: tuple[str, pa.Table], spoil: list[tuple[int, str]], blanks: list[int], piece_bytes: int) -> None:
    symbol, bars = data
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{symbol}.csv"
        text = sample.write_bars_csv(path, bars, "exporter", instrument=symbol).read_text()
        lines = text.splitlines()
        n = len(lines) - 1
        spoiled: dict[int, str] = {}  # data row index -> rule
        for pos, rule in spoil:
            spoiled.setdefault(pos % n, rule)
        for row, rule in spoiled.items():
            lines[row + 1] = ",".join(_BREAKERS[rule](lines[row + 1].split(",")))
        # blank lines shift line numbers but are not rows
        out, line_of = [lines[0]], {}
        blank_after = {b % (n + 1) for b in blanks}
        for i, line in enumerate(lines[1:]):
            if i in blank_after:
                out.append("")
            out.append(line)
            line_of[i] = len(out)
        path.write_text("\n".join(out) + "\n")
        result, got = _parse(path, "UTC", False, piece_bytes=piece_bytes, max_bad=1.0, instrument=symbol)
    by_rule: dict[str, int] = {}
    first: dict[str, int] = {}
    for row, rule in sorted(spoiled.items()):
        by_rule[rule] = by_rule.get(rule, 0) + 1
        first.setdefault(rule, line_of[row])
    assert result.dropped == {r: by_rule[r] for r in translator.RULES if r in by_rule}
    assert result.first_lines == {r: first[r] for r in translator.RULES if r in first}
    assert result.rows_in == n and result.rows_kept == n - len(spoiled)
    keep = [i for i in range(n) if i not in spoiled]
    _same_bars(got, bars.take(pa.array(keep, pa.int64())))


def test_round_trip_across_the_spring_forward_in_chicago_wall_time() -> None:
    # every minute of the 2025-03-09 Sunday evening open, written in Chicago wall time
    start = datetime(2025, 3, 9, 17, 0, tzinfo=CHICAGO)
    ts = [int((start + timedelta(minutes=i)).timestamp() * 1000) for i in range(120)]
    bars = pa.table({"timestamp": pa.array(ts, pa.timestamp("ms", tz="UTC")), **{c: [1.0] * 120 for c in ("open", "high", "low", "close", "volume")}})
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ES.csv"
        sample.write_bars_csv(path, bars, "exporter", instrument="ES", zone="America/Chicago")
        assert "2025-03-09,17:00:00" in path.read_text()
        _, got = _parse(path, "America/Chicago", False)
    assert got.column("timestamp").to_pylist()[0] == start
    assert got.column("timestamp").to_pylist()[0].utcoffset() == timedelta(hours=-5)
