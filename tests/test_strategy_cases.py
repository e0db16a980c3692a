"""Hand-built cases for the opening-range breakout rules (SPEC §4.2–§4.6), one rule at a time.

Every case builds a real bar-store table (timestamp[ms, America/Chicago], prices), runs
``analyze`` and compares whole rows with the values worked out by hand from the SPEC. Each case
also runs the plain reference implementation, which must agree.

Most cases use ES (tick 0.25, T = 10) and a range 4990–5010 built by one 02:00 bar, as in the
original's verified scenarios: long level 5010.25, short level 4989.75, TP 5020.25, initial
stop 4990, break-even when a high reaches 5016.75 (65 % of T), break-even stop 5010.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, time, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import reference_strategy

from pipeline_core.analyzer.strategy import (
    RESULT_SCHEMA,
    Bars,
    StrategyConfig,
    affected_dates,
    analyze,
    candidate_dates,
)
from pipeline_core.settings import CHICAGO, Settings

D = date(2025, 6, 3)  # a Tuesday
RANGE_BAR = ("02:00", 5000, 5010, 4990, 5000)
ENTRY_BAR = ("07:45", 5008, 5010.25, 5007, 5010)  # reaches the long level 5010.25 exactly


def ct(text: str) -> datetime:
    """'2025-06-03 07:45' as an aware Chicago datetime."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=CHICAGO)


def bar_table(bars: list[tuple], day: date = D, instrument: str = "ES") -> pa.Table:
    """A bar-store table from (time, open, high, low, close); time 'HH:MM' on ``day`` or a full
    'YYYY-MM-DD HH:MM'."""
    stamps = [ct(b[0]) if len(b[0]) > 5 else ct(f"{day} {b[0]}") for b in bars]
    return pa.table(
        {
            "timestamp": pa.array(stamps, type=pa.timestamp("ms", tz="America/Chicago")),
            "open": pa.array([float(b[1]) for b in bars]),
            "high": pa.array([float(b[2]) for b in bars]),
            "low": pa.array([float(b[3]) for b in bars]),
            "close": pa.array([float(b[4]) for b in bars]),
            "volume": pa.array([1.0] * len(bars)),
            "instrument": pa.array([instrument] * len(bars)),
        }
    )


def run(cfg: StrategyConfig, bars: list[tuple], day: date = D, **kw) -> pa.Table:
    """analyze() on the bars; also checks that the reference implementation agrees exactly."""
    table = bar_table(bars, day, cfg.instrument)
    result = analyze(Bars.from_table(table), cfg, **kw)
    assert result.schema == RESULT_SCHEMA
    ref = reference_strategy.analyze(table, cfg, kw.get("dates"))
    assert result.to_pylist() == ref.to_pylist()
    return result


def row(table: pa.Table, slot: str, session: str = "S1", day: date = D) -> dict:
    rows = [r for r in table.to_pylist() if r["Time"] == slot and r["Session"] == session and r["Date"] == day]
    assert len(rows) == 1, f"expected one {day} {slot} {session} row, got {len(rows)}"
    return rows[0]


def trade(
    *,
    slot: str = "07:30",
    session: str = "S1",
    day: date = D,
    entry_time: str,
    exit_time: str,
    direction: str = "Long",
    result: str,
    peak: float,
    profit: float,
    entry: float = 5010.25,
    exit: float,
    stop: float = 4990.0,
    target_price: float = 5020.25,
    range_high: float = 5010.0,
    range_low: float = 4990.0,
    final: bool = True,
    target: float = 10.0,
    instrument: str = "ES",
) -> dict:
    """The full expected row of a trade."""
    return {
        "Date": day,
        "Time": slot,
        "EntryTime": ct(entry_time if len(entry_time) > 5 else f"{day} {entry_time}"),
        "ExitTime": ct(exit_time if len(exit_time) > 5 else f"{day} {exit_time}"),
        "Target": target,
        "Peak": peak,
        "Direction": direction,
        "Result": result,
        "Range": round(range_high - range_low, 6),
        "Stream": instrument + session[1:],
        "Instrument": instrument,
        "Session": session,
        "Profit": profit,
        "RangeHigh": range_high,
        "RangeLow": range_low,
        "EntryPrice": entry,
        "ExitPrice": exit,
        "StopPrice": stop,
        "TargetPrice": target_price,
        "Final": final,
    }


def no_trade(*, slot: str, session: str = "S1", day: date = D, range_high: float, range_low: float,
             final: bool = True, target: float = 10.0, instrument: str = "ES") -> dict:
    return {
        "Date": day,
        "Time": slot,
        "EntryTime": None,
        "ExitTime": None,
        "Target": target,
        "Peak": 0.0,
        "Direction": "NA",
        "Result": "NoTrade",
        "Range": round(range_high - range_low, 6),
        "Stream": instrument + session[1:],
        "Instrument": instrument,
        "Session": session,
        "Profit": 0.0,
        "RangeHigh": range_high,
        "RangeLow": range_low,
        "EntryPrice": None,
        "ExitPrice": None,
        "StopPrice": None,
        "TargetPrice": None,
        "Final": final,
    }


@pytest.fixture
def es(settings: Settings) -> StrategyConfig:
    return StrategyConfig.from_settings(settings, "ES")


# --- §4.2 range -------------------------------------------------------------------------------


def test_range_window_includes_a_bar_at_the_start_and_excludes_one_at_the_slot_end(es):
    bars = [
        ("01:59", 5000, 5100, 4900, 5000),  # before the range start: ignored
        ("02:00", 5000, 5001, 4990, 5000),  # exactly at the start: sets the low
        ("05:00", 5000, 5010, 4995, 5000),
        ("07:30", 5000, 5009, 4989.75, 4991),  # exactly at the slot end: not in the 07:30 range
        ("16:30", 4991, 4991, 4991, 4991),
        (f"{D + timedelta(days=1)} 12:00", 4991, 4991, 4991, 4991),
    ]
    out = run(es, bars)
    # The 07:30 bar is the first bar of the entry window: its low 4989.75 is the short level.
    assert row(out, "07:30") == trade(
        entry_time="07:30", exit_time="16:30", direction="Short", result="TIME", peak=0.0,
        profit=-1.25, entry=4989.75, exit=4991.0, stop=5010.0, target_price=4979.75,
        range_high=5010.0, range_low=4990.0, final=True,
    )
    # ...and it is inside the 08:00 range.
    assert row(out, "08:00") == no_trade(slot="08:00", range_high=5010.0, range_low=4989.75)
    assert row(out, "09:00") == no_trade(slot="09:00", range_high=5010.0, range_low=4989.75)
    assert out.num_rows == 3  # no S2 rows: no bars in any S2 range window


def test_no_bars_in_the_range_window_means_no_row(es):
    out = run(es, [("07:30", 5000, 5001, 4999, 5000), ("08:30", 5000, 5001, 4999, 5000)])
    # 07:30 range [02:00, 07:30) is empty; 08:00 range holds the 07:30 bar; S2 09:30 the 08:30 one.
    assert [(r["Time"], r["Session"]) for r in out.to_pylist()] == [
        ("08:00", "S1"), ("09:00", "S1"), ("09:30", "S2"), ("10:00", "S2"), ("10:30", "S2"), ("11:00", "S2"),
    ]


# --- §4.3 entry -------------------------------------------------------------------------------


def test_breakout_at_the_1600_cutoff_counts_and_at_1601_does_not(es):
    d2 = D + timedelta(days=1)
    bars = [
        RANGE_BAR,
        ("15:59", 5000, 5010, 4990, 5000),
        ("16:00", 5000, 5011, 4999, 5010),  # at the cutoff: a long entry
        (f"{d2} 02:00", 5000, 5010, 4995, 5000),  # the last bar before X of D's 07:30 trade
        (f"{d2} 15:59", 5000, 5010, 4995, 5000),
        (f"{d2} 16:01", 5000, 5011, 4999, 5010),  # one minute late: ignored
    ]
    out = run(es, bars)
    assert row(out, "07:30") == trade(
        entry_time="16:00", exit_time=f"{d2} 02:00", result="TIME", peak=0.75, profit=-10.25,
        exit=5000.0,
    )
    assert row(out, "07:30", day=d2) == no_trade(slot="07:30", day=d2, range_high=5010.0, range_low=4995.0)


def test_same_bar_double_breakout_is_a_final_notrade(es):
    # Both levels in one bar; the data ends there, yet the row is final.
    out = run(es, [RANGE_BAR, ("07:45", 5000, 5011, 4989, 5000)])
    assert row(out, "07:30") == no_trade(slot="07:30", range_high=5010.0, range_low=4990.0, final=True)


def test_earlier_side_wins(es):
    bars = [RANGE_BAR, ("07:40", 5000, 5001, 4989.75, 4995), ("07:45", 4995, 5011, 4994, 5010)]
    out = run(es, bars)
    assert row(out, "07:30")["Direction"] == "Short"
    assert row(out, "07:30")["EntryTime"] == ct(f"{D} 07:40")


def test_gap_through_the_level_enters_at_the_level(es):
    out = run(es, [RANGE_BAR, ("07:45", 5015, 5018, 5014, 5016)])
    # Entry at 5010.25 although the bar opened at 5015; 7.75 favourable fires break-even in the
    # entry bar; no exit and no later data: a provisional TIME at the last close.
    assert row(out, "07:30") == trade(
        entry_time="07:45", exit_time="07:45", result="TIME", peak=7.75, profit=5.75, exit=5016.0,
        final=False,
    )


# --- §4.4 exits (the original's verified scenarios, with our SPEC decisions) -------------------


def test_target_reached(es):
    out = run(es, [RANGE_BAR, ENTRY_BAR, ("08:05", 5012, 5020.25, 5011, 5020)])
    assert row(out, "07:30") == trade(
        entry_time="07:45", exit_time="08:05", result="Win", peak=10.0, profit=10.0, exit=5020.25,
    )


def test_break_even_then_be_exit_and_stop_not_checked_in_the_break_even_bar(es):
    bars = [
        RANGE_BAR,
        ENTRY_BAR,
        ("08:10", 5012, 5017, 5009, 5015),  # break-even fires; low 5009 is below the new stop
        ("08:20", 5014, 5014, 5010, 5011),  # touches the break-even stop 5010
    ]
    out = run(es, bars)
    assert row(out, "07:30") == trade(
        entry_time="07:45", exit_time="08:20", result="BE", peak=6.75, profit=-0.25, exit=5010.0,
    )


def test_break_even_bar_touching_the_initial_stop_is_not_a_loss(es):
    bars = [
        RANGE_BAR,
        ENTRY_BAR,
        ("08:10", 5000, 5017, 4989, 5000),  # break-even fires and the low passes the initial stop
        ("08:20", 5005, 5006, 5004, 5005),  # next bar: below the break-even stop → BE
    ]
    out = run(es, bars)
    # Peak stops before the 08:10 bar (it touches the initial stop): only the entry bar counts.
    assert row(out, "07:30") == trade(
        entry_time="07:45", exit_time="08:20", result="BE", peak=0.0, profit=-0.25, exit=5010.0,
    )


@pytest.mark.parametrize(
    ("bar", "result", "peak"),
    [
        # opens beyond TP → target, although the stop is inside and the close near it
        (("08:05", 5022, 5025, 5008, 5009), "Win", 14.75),
        # opens at the moved stop 5010 → stop (BE)
        (("08:05", 5010, 5021, 5008, 5019), "BE", 10.75),
        # both inside, close 5019 nearer TP (1.25 vs 9) → target
        (("08:05", 5012, 5021, 5009, 5019), "Win", 10.75),
        # both inside, close 4996 nearer the stop (14 vs 24.25) → stop (BE)
        (("08:05", 5012, 5021, 4995, 4996), "BE", 10.75),
        # only the target inside → target
        (("08:05", 5012, 5021, 5011, 5020), "Win", 10.75),
    ],
    ids=["opens-beyond-tp", "opens-at-moved-stop", "both-inside-close-near-tp", "both-inside-close-near-stop", "only-tp-inside"],
)
def test_break_even_and_target_in_one_bar(es, bar, result, peak):
    out = run(es, [RANGE_BAR, ENTRY_BAR, bar])
    exit_price = 5020.25 if result == "Win" else 5010.0
    profit = 10.0 if result == "Win" else -0.25
    assert row(out, "07:30") == trade(
        entry_time="07:45", exit_time="08:05", result=result, peak=peak, profit=profit, exit=exit_price,
    )


@pytest.mark.parametrize(("close", "result"), [(5015.25, "Win"), (5015.0, "BE")])
def test_nearer_to_close_tie_goes_to_the_target(settings, close, result):
    # T = 10.25 (41 ticks) so TP 5020.5 and the break-even stop 5010 are 42 ticks apart and a
    # close can sit exactly between them (with T an even number of ticks it never can).
    cfg = replace(StrategyConfig.from_settings(settings, "ES"), target=10.25)
    out = run(cfg, [RANGE_BAR, ENTRY_BAR, ("08:05", 5012, 5021, 5009, close)])
    assert row(out, "07:30") == trade(
        entry_time="07:45", exit_time="08:05", result=result, peak=10.75,
        profit=10.25 if result == "Win" else -0.25, exit=5020.5 if result == "Win" else 5010.0,
        target_price=5020.5, target=10.25,
    )


def test_loss_on_the_entry_bar(es):
    out = run(es, [RANGE_BAR, ("07:45", 5008, 5011, 4990, 5000)])
    # Loss = −(entry − initial stop) = −20.25 (range + 1 tick); the stop bar is excluded from Peak.
    assert row(out, "07:30") == trade(
        entry_time="07:45", exit_time="07:45", result="Loss", peak=0.0, profit=-20.25, exit=4990.0,
    )


def test_stop_capped_at_three_targets_short(es):
    bars = [
        ("02:00", 5000, 5010, 4970, 5000),  # range 40
        ("07:45", 4975, 4976, 4969.75, 4970),  # short at 4969.75
        ("07:50", 4970, 4971, 4966, 4968),
        ("08:00", 4975, 5000, 4974, 4999),  # reaches the capped stop 4969.75 + 30 = 4999.75
    ]
    out = run(es, bars)
    assert row(out, "07:30") == trade(
        entry_time="07:45", exit_time="08:00", direction="Short", result="Loss", peak=3.75,
        profit=-30.0, entry=4969.75, exit=4999.75, stop=4999.75, target_price=4959.75,
        range_high=5010.0, range_low=4970.0,
    )


def test_time_exit_at_the_next_days_slot(es):
    d2 = D + timedelta(days=1)
    bars = [
        RANGE_BAR,
        ENTRY_BAR,
        ("09:00", 5011, 5012, 5005, 5006),
        (f"{d2} 07:29", 5000, 5001, 4999, 5000),
        (f"{d2} 07:30", 5000, 5030, 4980, 5000),  # at X: outside the walk (would hit both)
    ]
    out = run(es, bars)
    assert row(out, "07:30") == trade(
        entry_time="07:45", exit_time=f"{d2} 07:29", result="TIME", peak=1.75, profit=-10.25,
        exit=5000.0, final=True,
    )


@pytest.mark.parametrize(
    ("friday", "monday", "offset_hours"),
    [(date(2025, 10, 31), date(2025, 11, 3), -6), (date(2025, 3, 7), date(2025, 3, 10), -5)],
    ids=["fall-back-weekend", "spring-forward-weekend"],
)
def test_friday_horizon_is_monday_slot_across_dst(es, friday, monday, offset_hours):
    sunday = monday - timedelta(days=1)
    bars = [
        RANGE_BAR,
        ENTRY_BAR,
        ("15:59", 5010, 5011, 5009, 5010),
        (f"{sunday} 17:00", 5010, 5011, 5009, 5010),
        (f"{monday} 07:29", 5003, 5004, 5002, 5003),
        (f"{monday} 07:30", 5003, 5040, 4980, 5003),  # X itself: excluded
    ]
    out = run(es, bars, day=friday)
    got = row(out, "07:30", day=friday)
    assert got == trade(
        day=friday, entry_time="07:45", exit_time=f"{monday} 07:29", result="TIME", peak=0.75,
        profit=-7.25, exit=5003.0, final=True,
    )
    assert got["ExitTime"].utcoffset() == timedelta(hours=offset_hours)


def test_data_ending_mid_trade_is_provisional(es):
    out = run(es, [RANGE_BAR, ENTRY_BAR, ("09:00", 5011, 5012, 5005, 5006)])
    assert row(out, "07:30") == trade(
        entry_time="07:45", exit_time="09:00", result="TIME", peak=1.75, profit=-4.25,
        exit=5006.0, final=False,
    )


def test_a_later_run_with_more_data_makes_the_row_final(es):
    d2 = D + timedelta(days=1)
    early = run(es, [RANGE_BAR, ENTRY_BAR, ("09:00", 5011, 5012, 5005, 5006)])
    late = run(es, [RANGE_BAR, ENTRY_BAR, ("09:00", 5011, 5012, 5005, 5006), (f"{d2} 08:00", 5006, 5006, 5006, 5006)])
    assert row(early, "07:30")["Final"] is False
    assert row(late, "07:30")["Final"] is True
    assert row(late, "07:30")["ExitTime"] == ct(f"{D} 09:00")


# --- §4.5 Peak --------------------------------------------------------------------------------


def test_peak_keeps_counting_after_a_win_until_the_initial_stop_is_touched(es):
    bars = [
        RANGE_BAR,
        ENTRY_BAR,
        ("08:05", 5012, 5020.25, 5011, 5020),  # Win
        ("10:00", 5020, 5030, 5019, 5025),  # after the exit: counts (19.75)
        ("11:00", 5000, 5045, 4989, 4995),  # touches the initial stop: excluded, and all after
        ("12:00", 5000, 5050, 4999, 5000),
    ]
    out = run(es, bars)
    assert row(out, "07:30") == trade(
        entry_time="07:45", exit_time="08:05", result="Win", peak=19.75, profit=10.0, exit=5020.25,
    )


def test_peak_of_a_loss_excludes_the_stop_bar(es):
    bars = [
        RANGE_BAR,
        ENTRY_BAR,
        ("08:00", 5010, 5015, 5009, 5014),  # 4.75 favourable, below break-even
        ("08:10", 5000, 5016, 4989, 4995),  # touches the stop; its high is not counted
    ]
    out = run(es, bars)
    assert row(out, "07:30") == trade(
        entry_time="07:45", exit_time="08:10", result="Loss", peak=4.75, profit=-20.25, exit=4990.0,
    )


def test_peak_never_below_zero_short(es):
    bars = [RANGE_BAR, ("07:45", 4992, 4993, 4989.75, 4990), ("08:00", 4990, 5000, 4990, 4999)]
    out = run(es, bars)
    got = row(out, "07:30")
    assert got["Direction"] == "Short" and got["Peak"] == 0.0 and got["Result"] == "TIME"


# --- NoTrade rows and provisional rows -----------------------------------------------------------


def test_an_instrument_without_any_trade_still_gets_notrade_rows(es):
    bars = [
        RANGE_BAR,
        ("08:00", 5000, 5005, 4995, 5000),
        ("12:00", 5000, 5001, 4999, 5000),
        ("16:30", 5000, 5001, 4999, 5000),
    ]
    out = run(es, bars)
    assert out.to_pylist() == [
        no_trade(slot="07:30", range_high=5010.0, range_low=4990.0),
        no_trade(slot="08:00", range_high=5010.0, range_low=4990.0),
        no_trade(slot="09:00", range_high=5010.0, range_low=4990.0),
        no_trade(slot="09:30", session="S2", range_high=5005.0, range_low=4995.0),
        no_trade(slot="10:00", session="S2", range_high=5005.0, range_low=4995.0),
        no_trade(slot="10:30", session="S2", range_high=5005.0, range_low=4995.0),
        no_trade(slot="11:00", session="S2", range_high=5005.0, range_low=4995.0),
    ]


def test_a_1015_run_writes_provisional_notrade_rows_with_the_range_so_far(es):
    minutes = [datetime.combine(D, time(2)) + timedelta(minutes=i) for i in range(8 * 60 + 15)]
    bars = [  # 02:00 … 10:14; from 10:10 the highs reach 5002
        (m.strftime("%H:%M"), 5000, 5001, 4999, 5000) if m.time() < time(10, 10)
        else (m.strftime("%H:%M"), 5001, 5002, 5000, 5001)
        for m in minutes
    ]
    out = run(es, bars)
    # 10:30 and 11:00: provisional NoTrade, range so far (the 10:10 bar included).
    for slot in ("10:30", "11:00"):
        assert row(out, slot, "S2") == no_trade(
            slot=slot, session="S2", range_high=5002.0, range_low=4999.0, final=False
        )
    # Earlier slots broke out at 10:10 (5002 ≥ 5001.25): open trades, provisional.
    for slot, session in (("07:30", "S1"), ("09:30", "S2")):
        got = row(out, slot, session)
        assert (got["Direction"], got["Result"], got["Final"]) == ("Long", "TIME", False)
        assert got["EntryTime"] == ct(f"{D} 10:10") and got["ExitTime"] == ct(f"{D} 10:14")

    # A later run, with data up to the next day, replaces them with final rows.
    bars += [("16:30", 5000, 5001, 4999, 5000), (f"{D + timedelta(days=1)} 12:00", 5000, 5001, 4999, 5000)]
    later = run(es, bars)
    for slot in ("10:30", "11:00"):
        assert row(later, slot, "S2") == no_trade(slot=slot, session="S2", range_high=5002.0, range_low=4999.0)
    assert all(r["Final"] for r in later.to_pylist())


def test_notrade_without_a_bar_after_the_cutoff_is_provisional(es):
    out = run(es, [RANGE_BAR, ("15:59", 5000, 5001, 4999, 5000), ("16:00", 5000, 5001, 4999, 5000)])
    assert row(out, "07:30")["Final"] is False  # the entry window includes 16:00: not yet complete
    out = run(es, [RANGE_BAR, ("16:00", 5000, 5001, 4999, 5000), ("16:01", 5000, 5001, 4999, 5000)])
    assert row(out, "07:30")["Final"] is True


# --- ticks: no float artefacts -------------------------------------------------------------------


def test_cl_prices_are_compared_and_printed_in_ticks(settings):
    cl = StrategyConfig.from_settings(settings, "CL")
    bars = [
        ("02:00", 50.00, 50.12, 49.80, 50.00),
        ("07:45", 50.05, 50.12 + 0.01, 50.04, 50.10),  # 50.129999999999995: reaches 50.13
        ("08:00", 50.20, 50.63 - 1e-12, 50.15, 50.60),  # just under 50.63 as a float: still TP
    ]
    out = run(cl, bars)
    got = row(out, "07:30")
    assert got == trade(
        entry_time="07:45", exit_time="08:00", result="Win", peak=0.5, profit=0.5, entry=50.13,
        exit=50.63, stop=49.8, target_price=50.63, range_high=50.12, range_low=49.8, target=0.5,
        instrument="CL",
    )
    assert repr(got["Range"]) == "0.32" and repr(got["EntryPrice"]) == "50.13"


def test_ng_loss_profit_is_an_exact_tick_multiple(settings):
    ng = StrategyConfig.from_settings(settings, "NG")
    bars = [
        ("02:00", 2.500, 2.512, 2.488, 2.500),
        ("07:45", 2.490, 2.491, 2.487, 2.488),  # short at 2.487
        ("08:00", 2.495, 2.512, 2.494, 2.510),  # back to the range high: Loss
    ]
    out = run(ng, bars)
    assert row(out, "07:30") == trade(
        entry_time="07:45", exit_time="08:00", direction="Short", result="Loss", peak=0.0,
        profit=-0.025, entry=2.487, exit=2.512, stop=2.512, target_price=2.437,
        range_high=2.512, range_low=2.488, target=0.05, instrument="NG",
    )


# --- dates, inputs and outputs --------------------------------------------------------------------


def test_candidate_dates_are_chicago_trade_days_with_bars(es):
    table = bar_table([
        ("2025-11-02 17:00", 1, 1, 1, 1),  # Sunday evening: not a trade day
        ("2025-11-03 02:00", 1, 1, 1, 1),
        ("2025-11-03 23:59", 1, 1, 1, 1),
        ("2025-11-05 00:00", 1, 1, 1, 1),
        ("2025-11-08 10:00", 1, 1, 1, 1),  # Saturday
    ])
    assert candidate_dates(Bars.from_table(table), es) == [date(2025, 11, 3), date(2025, 11, 5)]
    assert candidate_dates(Bars.from_table(bar_table([])), es) == []


def test_analyze_with_given_dates_equals_the_full_analysis_restricted(es):
    d2, d3 = D + timedelta(days=1), D + timedelta(days=2)
    bars = [RANGE_BAR, ENTRY_BAR, (f"{d2} 02:00", 5000, 5010, 4990, 5000), (f"{d2} 07:45", 5000, 5011, 4999, 5010),
            (f"{d3} 02:00", 5000, 5010, 4990, 5000), (f"{d3} 12:00", 5000, 5001, 4999, 5000)]
    full = run(es, bars)
    part = run(es, bars, dates=[d2, date(2025, 6, 7)])  # a Saturday gives nothing
    assert part.to_pylist() == [r for r in full.to_pylist() if r["Date"] == d2]
    assert run(es, bars, dates=[]).num_rows == 0


def test_empty_bars_give_an_empty_table_with_the_schema(es):
    out = analyze(Bars.from_table(bar_table([])), es)
    assert out.num_rows == 0 and out.schema == RESULT_SCHEMA


def test_progress_reports_dates_done_and_ends_at_the_total(es):
    start = date(2024, 1, 1)
    bars = [(f"{start + timedelta(days=i)} 02:00", 5000, 5010, 4990, 5000) for i in range(800)]
    calls: list[tuple[int, int]] = []
    table = bar_table(bars)
    analyze(Bars.from_table(table), es, progress=lambda done, total: calls.append((done, total)))
    total = len(candidate_dates(Bars.from_table(table), es))
    assert calls[-1] == (total, total)
    assert len(calls) >= 2 and all(b == total for _, b in calls)
    assert [a for a, _ in calls] == sorted(a for a, _ in calls)


def test_sorted_by_date_time_then_session_when_sessions_share_a_slot(settings):
    from pipeline_core.settings import Session

    sessions = (Session("S2", time(8), (time(9), time(9, 30))), Session("S1", time(2), (time(9),)))
    cfg = replace(StrategyConfig.from_settings(settings, "ES"), sessions=sessions)
    out = run(cfg, [RANGE_BAR, ("08:30", 5000, 5001, 4999, 5000)])
    assert [(r["Time"], r["Session"], r["Stream"]) for r in out.to_pylist()] == [
        ("09:00", "S1", "ES1"), ("09:00", "S2", "ES2"), ("09:30", "S2", "ES2"),
    ]


def test_bars_from_a_parquet_store_file(tmp_path: Path, es):
    path = tmp_path / "ES_2025.parquet"
    table = bar_table([ENTRY_BAR, RANGE_BAR, ("08:05", 5012, 5020.25, 5011, 5020)])  # unsorted
    pq.write_table(table, path)
    bars = Bars.from_table(pq.read_table(path))
    assert list(bars.ts) == sorted(bars.ts)
    assert bars.ts[0] == int(ct(f"{D} 02:00").timestamp()) * 10**9
    assert row(analyze(bars, es), "07:30")["Result"] == "Win"


def test_bad_bar_tables_are_rejected_with_the_reason(es):
    good = bar_table([RANGE_BAR, ENTRY_BAR])
    dup = pa.concat_tables([good, good.slice(0, 1)])
    with pytest.raises(ValueError, match="duplicated timestamp 2025-06-03T02:00:00-05:00"):
        Bars.from_table(dup)
    naive = good.set_column(0, "timestamp", good.column("timestamp").cast(pa.timestamp("ms")))
    with pytest.raises(ValueError, match="time-zone-aware"):
        Bars.from_table(naive)
    with pytest.raises(ValueError, match="lacks column"):
        Bars.from_table(good.drop_columns(["low"]))
    nan = good.set_column(3, "low", pa.array([4990.0, float("nan")]))
    with pytest.raises(ValueError, match="low is NaN at 2025-06-03T07:45:00-05:00"):
        Bars.from_table(nan)


def test_from_settings_uses_the_instrument_table_and_micros_share_the_base(settings):
    mes = StrategyConfig.from_settings(settings, "MES")
    assert (mes.instrument, mes.tick, mes.target) == ("MES", 0.25, 10)
    assert mes.entry_cutoff == time(16) and mes.break_even_fraction == 0.65 and mes.stop_cap_multiple == 3.0
    assert [s.name for s in mes.sessions] == ["S1", "S2"] and mes.trade_days == frozenset(range(5))
    with pytest.raises(KeyError, match="unknown instrument"):
        StrategyConfig.from_settings(settings, "XX")


# --- affected dates ---------------------------------------------------------------------------------


def test_affected_dates_reach_back_over_the_weekend_horizon(es):
    # A bar changed on Saturday lies inside Friday's horizon (Friday → Monday 11:00).
    assert affected_dates(ct("2025-11-01 12:00"), ct("2025-11-01 12:00"), es) == [date(2025, 10, 31)]
    # Monday 10:59 (CST, after the fall-back weekend) is still inside Friday's horizon.
    assert affected_dates(ct("2025-11-03 10:59"), ct("2025-11-03 10:59"), es) == [
        date(2025, 10, 31), date(2025, 11, 3)
    ]
    # Tuesday 01:00: only Monday's horizon (Tuesday's range starts at 02:00).
    assert affected_dates(ct("2025-11-04 01:00"), ct("2025-11-04 01:00"), es) == [date(2025, 11, 3)]
    # A week of changes: every trade day from the Friday before, no weekend days.
    got = affected_dates(ct("2025-11-03 00:00"), ct("2025-11-09 23:59"), es)
    assert got == [date(2025, 10, 31)] + [date(2025, 11, d) for d in (3, 4, 5, 6, 7)]


def test_affected_dates_need_aware_ordered_times(es):
    with pytest.raises(ValueError, match="aware"):
        affected_dates(datetime(2025, 1, 1), datetime(2025, 1, 2), es)
    with pytest.raises(ValueError, match="before first"):
        affected_dates(ct("2025-01-02 00:00"), ct("2025-01-01 00:00"), es)


def test_notrade_is_provisional_until_its_range_window_is_complete(settings):
    # With the cutoff (10:00) before the 10:30 slot the entry window is empty and complete once
    # a bar after 10:00 exists; the range window still needs a bar at or after 10:30.
    cfg = replace(StrategyConfig.from_settings(settings, "ES"), entry_cutoff=time(10))
    bars = [("08:00", 5000, 5001, 4999, 5000), ("10:14", 5000, 5001, 4999, 5000)]
    assert row(run(cfg, bars), "10:30", "S2")["Final"] is False
    bars.append(("10:30", 5000, 5001, 4999, 5000))
    assert row(run(cfg, bars), "10:30", "S2") == no_trade(
        slot="10:30", session="S2", range_high=5001.0, range_low=4999.0, final=True
    )


def test_dates_far_apart_are_analysed_like_a_full_run(es):
    # Two clusters of dates a month apart (an incremental run's changed and provisional dates).
    later = D + timedelta(days=35)
    bars = [RANGE_BAR, ENTRY_BAR, ("08:05", 5012, 5020.25, 5011, 5020),
            (f"{later} 02:00", 5000, 5010, 4990, 5000), (f"{later} 07:45", 5000, 5000, 4989, 4990)]
    full = run(es, bars)
    assert run(es, bars, dates=[D, later]).to_pylist() == full.to_pylist()
    assert {r["Date"] for r in full.to_pylist()} == {D, later}
