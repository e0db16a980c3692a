"""Results for a trader: money per contract, the stream × month matrix, statistics and equity,
checked against the hand-worked fixture of ``results_fixture`` (real monthly Parquet files)."""

from __future__ import annotations

import os
from datetime import date

import numpy as np
import pytest
from results_fixture import row, write_fixture, write_month

from pipeline_core import results
from pipeline_core.results import ALL_TIME, Period, ResultFilter
from pipeline_core.settings import Settings, load_settings

FINAL = ResultFilter()


@pytest.fixture
def filled(settings: Settings) -> Settings:
    results.forget_cache()
    write_fixture(settings)
    return settings


def test_one_stream_all_time_by_hand(filled: Settings) -> None:
    rs = results.load_results(filled)
    assert rs.problems == []
    st = rs.stats(FINAL, ALL_TIME, "ES1")
    # Final rows: Win +10, Loss -6.5, BE -0.25, NoTrade, Loss -8, Win +10 (the TIME row is provisional)
    assert (st.rows, st.trades, st.wins, st.losses, st.be, st.time, st.no_trade) == (6, 5, 2, 2, 1, 0, 1)
    assert st.provisional == 0
    assert st.win_rate == pytest.approx(2 / 5)
    assert st.profit_points == pytest.approx(10 - 6.5 - 0.25 - 8 + 10)
    assert st.profit_dollars == pytest.approx(262.5)
    assert st.profit_factor == pytest.approx((500 + 500) / (325 + 12.5 + 400))
    assert st.average_trade == pytest.approx(262.5 / 5)
    # equity by trade date: 10-01 +175, 10-02 +162.5, 11-03 -237.5, 11-04 +262.5
    assert st.max_drawdown == pytest.approx(175 - (-237.5))
    curve = rs.equity(FINAL, ALL_TIME, "ES1")
    assert [str(x) for x in curve.days] == ["2025-10-01", "2025-10-02", "2025-11-03", "2025-11-04"]
    assert curve.equity.tolist() == pytest.approx([175, 162.5, -237.5, 262.5])
    assert curve.drawdown.tolist() == pytest.approx([0, -12.5, -412.5, 0])


def test_month_and_year_periods_start_their_own_equity(filled: Settings) -> None:
    rs = results.load_results(filled)
    nov = rs.stats(FINAL, Period(2025, 11), "ES1")
    assert (nov.trades, nov.wins, nov.losses) == (2, 1, 1)
    assert nov.profit_dollars == pytest.approx(100)
    assert nov.profit_factor == pytest.approx(500 / 400)
    assert nov.max_drawdown == pytest.approx(400)  # from 0 down to -400 on 11-03
    assert rs.stats(FINAL, Period(2025), "ES1") == rs.stats(FINAL, ALL_TIME, "ES1")
    empty = rs.stats(FINAL, Period(2023, 1), "ES1")
    assert empty.rows == 0 and empty.win_rate is None and empty.profit_factor is None
    assert empty.average_trade is None and empty.max_drawdown == 0


def test_no_losses_no_profit_factor_and_a_micro_has_its_own_point_value(filled: Settings) -> None:
    rs = results.load_results(filled)
    mes = rs.stats(FINAL, ALL_TIME, "MES1")
    assert mes.profit_factor is None  # gross loss 0: no ratio
    assert mes.profit_points == 10 and mes.profit_dollars == pytest.approx(50)  # 10 × $5, not × $50
    cl = rs.stats(FINAL, ALL_TIME, "CL1")
    assert cl.profit_dollars == pytest.approx(-200 + 500 - 370)
    assert cl.profit_factor == pytest.approx(500 / (200 + 370))


def test_all_streams_together_in_dollars(filled: Settings) -> None:
    rs = results.load_results(filled)
    st = rs.stats(FINAL, ALL_TIME, None)
    assert st.profit_points is None  # points of different instruments do not add up
    assert st.trades == 5 + 1 + 3 + 1
    assert st.profit_dollars == pytest.approx(262.5 + 500 - 70 + 50)
    assert st.profit_factor == pytest.approx((500 + 500 + 500 + 500 + 50) / (325 + 12.5 + 400 + 200 + 370))
    # equity: 2024-12-02 -200, 10-01 -25, 10-02 -37.5, 11-03 (-400+500+500+50) 612.5, 11-04 742.5
    curve = rs.equity(FINAL)
    assert curve.equity.tolist() == pytest.approx([-200, -25, -37.5, 612.5, 742.5])
    assert st.max_drawdown == pytest.approx(200)


def test_matrix_of_a_year_with_totals(filled: Settings) -> None:
    rs = results.load_results(filled)
    m = rs.matrix(FINAL, 2025)
    assert m.streams == ["ES1", "ES2", "CL1", "MES1"]  # instrument table order, then session
    assert m.cells["ES1"][9:11] == pytest.approx([162.5, 100])
    assert m.cells["ES1"][:9] == [None] * 9 and m.cells["ES1"][11] is None
    assert m.cells["ES2"][10] == pytest.approx(500)
    assert m.cells["CL1"][10] == pytest.approx(130) and m.cells["CL1"][9] is None
    assert m.cells["MES1"][10] == pytest.approx(50)
    assert m.row_totals == pytest.approx({"ES1": 262.5, "ES2": 500, "CL1": 130, "MES1": 50})
    assert m.column_totals[9:11] == pytest.approx([162.5, 780])
    assert m.column_totals[0] is None
    assert m.total == pytest.approx(942.5)
    assert m.provisional == set()
    assert rs.years == [2024, 2025] and rs.months(2025) == [10, 11]
    assert rs.latest_month() == Period(2025, 11)


def test_provisional_rows_on_request_and_marked(filled: Settings) -> None:
    rs = results.load_results(filled)
    with_prov = ResultFilter(provisional=True)
    st = rs.stats(with_prov, ALL_TIME, "ES1")
    assert st.provisional == 1 and st.time == 1 and st.trades == 6
    assert st.profit_dollars == pytest.approx(262.5 + 162.5)
    m = rs.matrix(with_prov, 2025)
    assert m.cells["ES1"][10] == pytest.approx(262.5)
    assert m.provisional == {("ES1", 11)}


def test_filters_by_stream_session_and_slot(filled: Settings) -> None:
    rs = results.load_results(filled)
    s2 = ResultFilter(sessions=frozenset({"S2"}))
    assert rs.shown_streams(s2) == ["ES2"]
    assert rs.stats(s2).profit_dollars == pytest.approx(500)
    early = ResultFilter(slots=frozenset({"07:30"}))
    assert rs.stats(early, ALL_TIME, "ES1").profit_points == pytest.approx(10 - 0.25 - 8 + 10)
    only_cl = ResultFilter(streams=frozenset({"CL1"}))
    assert rs.matrix(only_cl, 2025).streams == ["CL1"]
    assert rs.stats(only_cl).profit_dollars == pytest.approx(-70)


def test_table_rows_hold_the_matrix_and_the_statistics(filled: Settings) -> None:
    rows = results.load_results(filled).table_rows(FINAL, 2025)
    by = {(r["stream"], r["period"]): r for r in rows}
    assert by[("ES1", "2025-10")]["profit_dollars"] == pytest.approx(162.5)
    assert by[("ES1", "2025")]["max_drawdown"] == pytest.approx(412.5)
    assert by[("ALL", "all")]["profit_dollars"] == pytest.approx(742.5)
    assert ("ES1", "2025-01") not in by  # months without rows are left out


def test_a_change_of_point_value_changes_dollars_only(filled: Settings) -> None:
    (filled.root / "qtsw.toml").write_text("[instruments]\nES = {tick = 0.25, target = 10, point_value = 10}\n")
    other = load_settings(root=filled.root, env={})
    st = results.load_results(other).stats(FINAL, ALL_TIME, "ES1")
    assert st.profit_points == pytest.approx(5.25) and st.profit_dollars == pytest.approx(52.5)


def test_an_instrument_without_point_value_shows_points_only(filled: Settings) -> None:
    (filled.root / "qtsw.toml").write_text(
        "[instruments]\nES = {tick = 0.25, target = 10}\nCL = {tick = 0.01, target = 0.5}\n"
        "MES = {base = \"ES\"}\nZZ = {tick = 1, target = 1}\n"
    )
    write_month(filled, "ZZ1", 2025, 11, [row("ZZ", date(2025, 11, 3), "07:30", "Loss", -2.0)])
    other = load_settings(root=filled.root, env={})
    rs = results.load_results(other)
    assert rs.no_point_value == ["ZZ1"]
    zz = rs.stats(FINAL, ALL_TIME, "ZZ1")
    assert zz.profit_points == -2 and zz.profit_dollars is None and zz.max_drawdown is None
    assert rs.matrix(FINAL, 2025).cells["ZZ1"][10] is None
    assert rs.stats(FINAL).profit_dollars == pytest.approx(742.5)  # the others, in dollars


def test_cache_follows_changed_added_removed_and_unreadable_files(filled: Settings) -> None:
    rs = results.load_results(filled)
    assert filled.results_cache_path.is_file()
    assert results.load_results(filled) is rs  # nothing changed: the same arrays
    # a changed file, a new one, a removed one, a damaged one
    write_month(filled, "ES2", 2025, 11, [row("ES", date(2025, 11, 3), "10:30", "Loss", -4.0)])
    write_month(filled, "ES1", 2025, 12, [row("ES", date(2025, 12, 1), "07:30", "Win", 10.0)])
    os.unlink(results.monthly_path(filled, "MES1", 2025, 11))
    bad = results.monthly_path(filled, "CL1", 2025, 10)
    bad.write_bytes(b"not parquet")
    for disk in (False, True):
        if disk:
            results.forget_cache()  # a new process: the cache on disk, then the files that changed
        rs = results.load_results(filled)
        assert rs.stats(FINAL, ALL_TIME, "ES2").profit_dollars == pytest.approx(-200)
        assert rs.stats(FINAL, Period(2025, 12), "ES1").profit_dollars == pytest.approx(500)
        assert "MES1" not in rs.streams
        assert len(rs.problems) == 1 and "CL1_an_2025_10.parquet" in rs.problems[0]
        assert rs.stats(FINAL, ALL_TIME, "CL1").profit_dollars == pytest.approx(-70)


def test_an_unreadable_file_is_not_read_again_until_it_changes(filled: Settings) -> None:
    bad = results.monthly_path(filled, "CL1", 2025, 10)
    bad.write_bytes(b"not parquet")
    first = results.load_results(filled)
    assert len(first.problems) == 1
    cache_written = filled.results_cache_path.stat().st_mtime_ns
    again = results.load_results(filled)
    assert again is first and again.problems == first.problems  # nothing read, nothing written
    assert filled.results_cache_path.stat().st_mtime_ns == cache_written
    write_month(filled, "CL1", 2025, 10, [row("CL", date(2025, 10, 1), "07:30", "Win", 0.5)])
    fixed = results.load_results(filled)
    assert fixed.problems == [] and fixed.stats(FINAL, Period(2025, 10), "CL1").profit_dollars == pytest.approx(500)


def test_a_damaged_cache_is_read_around(filled: Settings) -> None:
    expected = results.load_results(filled).stats(FINAL)
    results.forget_cache()
    filled.results_cache_path.write_bytes(b"garbage")
    assert results.load_results(filled).stats(FINAL) == expected


def test_an_empty_root(settings: Settings) -> None:
    results.forget_cache()
    rs = results.load_results(settings)
    assert rs.streams == [] and rs.years == [] and rs.latest_month() is None
    assert rs.stats(FINAL).rows == 0
    assert rs.matrix(FINAL, 2025).streams == []
    assert len(rs.equity(FINAL).days) == 0 and np.asarray(rs.equity(FINAL).equity).size == 0
