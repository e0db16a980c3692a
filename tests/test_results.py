"""Read side of the monthly result files: listing, reading a month, per-stream summaries."""

from __future__ import annotations

from datetime import date, datetime, time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline_core import results
from pipeline_core.analyzer.strategy import RESULT_SCHEMA
from pipeline_core.fsutil import write_parquet_atomic
from pipeline_core.settings import CHICAGO, Settings


def row(inst: str, d: date, slot: str, result: str, profit: float, final: bool = True) -> dict:
    session = "S1" if slot < "09:30" else "S2"
    trade = result != "NoTrade"
    at = datetime.combine(d, time.fromisoformat(slot), tzinfo=CHICAGO) if trade else None
    return {
        "Date": d, "Time": slot, "EntryTime": at, "ExitTime": at, "Target": 10.0, "Peak": 3.0,
        "Direction": "Short" if trade else "NA", "Result": result, "Range": 4.0,
        "Stream": inst + session[1], "Instrument": inst, "Session": session, "Profit": profit,
        "RangeHigh": 10.0, "RangeLow": 6.0, "EntryPrice": 5.75 if trade else None,
        "ExitPrice": 5.75 - profit if trade else None, "StopPrice": 10.0 if trade else None,
        "TargetPrice": -4.25 if trade else None, "Final": final,
    }


def write_month(settings: Settings, stream: str, year: int, month: int, rows: list[dict]) -> None:
    table = pa.Table.from_pylist(sorted(rows, key=lambda r: (r["Date"], r["Time"])), schema=RESULT_SCHEMA)
    write_parquet_atomic(results.monthly_path(settings, stream, year, month), table)


@pytest.fixture
def filled(settings: Settings) -> Settings:
    nov = [date(2025, 11, d) for d in (3, 4, 5)]
    write_month(settings, "ES1", 2025, 11, [
        row("ES", nov[0], "07:30", "Win", 10.0),
        row("ES", nov[0], "08:00", "Loss", -6.5),
        row("ES", nov[1], "07:30", "BE", -0.25),
        row("ES", nov[1], "08:00", "Win", 10.0),
        row("ES", nov[2], "09:00", "TIME", 3.25, final=False),
        row("ES", nov[2], "07:30", "NoTrade", 0.0),
    ])
    write_month(settings, "ES2", 2025, 11, [row("ES", nov[0], "10:30", "NoTrade", 0.0, final=False)])
    write_month(settings, "ES1", 2025, 10, [row("ES", date(2025, 10, 31), "07:30", "Win", 10.0)])
    write_month(settings, "CL1", 2024, 12, [row("CL", date(2024, 12, 2), "07:30", "Loss", -0.37)])
    # Files that are not monthly result files are ignored.
    (settings.analyzer_runs_dir / "ES1" / "2025" / "notes.txt").write_text("x")
    (settings.analyzer_runs_dir / "ES1" / "2025" / ".ES1_an_2025_12.parquet.abc.tmp").write_text("x")
    return settings


def test_monthly_files_and_available_months(filled: Settings) -> None:
    files = results.monthly_files(filled)
    assert list(files) == ["CL1", "ES1", "ES2"]
    assert [p.name for p in files["ES1"]] == ["ES1_an_2025_10.parquet", "ES1_an_2025_11.parquet"]
    assert results.available_months(filled) == [(2024, 12), (2025, 10), (2025, 11)]


def test_read_month_all_streams_or_some(filled: Settings) -> None:
    month = results.read_month(filled, 2025, 11)
    assert month.schema.equals(RESULT_SCHEMA)
    assert month.num_rows == 7
    keys = [(r["Date"], r["Time"], r["Stream"]) for r in month.to_pylist()]
    assert keys == sorted(keys)
    only = results.read_month(filled, 2025, 11, streams=["ES2"])
    assert only.column("Stream").to_pylist() == ["ES2"]
    assert results.read_month(filled, 2023, 1).num_rows == 0


def test_summarize_month_counts_win_rate_profit_and_provisional(filled: Settings) -> None:
    es1, es2 = results.summarize_month(filled, 2025, 11)

    assert es1.stream == "ES1"
    assert es1.counts == {"Win": 2, "BE": 1, "Loss": 1, "TIME": 1, "NoTrade": 1}
    assert es1.trades == 5
    assert es1.win_rate == pytest.approx(2 / 4)
    assert es1.profit == pytest.approx(10 - 6.5 - 0.25 + 10 + 3.25)
    assert es1.provisional == 1 and es1.rows == 6
    assert es2.stream == "ES2"
    assert es2.counts["NoTrade"] == 1 and es2.trades == 0
    assert es2.win_rate is None  # no Win, BE or Loss: no rate
    assert es2.profit == 0.0 and es2.provisional == 1


def test_summary_of_an_empty_month_is_empty(settings: Settings) -> None:
    assert results.summarize_month(settings, 2025, 1) == []
    assert results.available_months(settings) == []
    assert results.monthly_files(settings) == {}


def test_a_monthly_file_with_the_wrong_columns_is_named(filled: Settings) -> None:
    path = results.monthly_path(filled, "ES1", 2025, 11)
    pq.write_table(pq.read_table(path).drop_columns(["Profit"]), path)
    with pytest.raises(ValueError, match=r"ES1_an_2025_11\.parquet: missing column\(s\) Profit"):
        results.read_month(filled, 2025, 11)


def test_file_metadata_reads_the_qtsw_keys(settings: Settings) -> None:
    table = pa.Table.from_pylist([row("ES", date(2025, 11, 3), "07:30", "Win", 10.0)], schema=RESULT_SCHEMA)
    path = results.monthly_path(settings, "ES1", 2025, 11)
    path.parent.mkdir(parents=True)
    pq.write_table(table.replace_schema_metadata({b"engine_version": b"9.9", b"analysis_hash": b"abc"}), path)
    assert results.file_metadata(path) == {"engine_version": "9.9", "analysis_hash": "abc"}
