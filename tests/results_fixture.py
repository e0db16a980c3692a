"""A small data root of monthly result files whose figures are worked out by hand in the tests.

Point values: ES 50, CL 1000, MES 5 (a micro's own, not its base's). Profit in points.

=======  ==========  =====  =======  =======  ======  =======================
stream   date        slot   result   points   final   dollars
=======  ==========  =====  =======  =======  ======  =======================
ES1      2025-10-01  07:30  Win       10       yes     +500
ES1      2025-10-01  08:00  Loss      -6.5     yes     -325
ES1      2025-10-02  07:30  BE        -0.25    yes     -12.5
ES1      2025-10-02  08:00  NoTrade    0       yes     0
ES1      2025-11-03  07:30  Loss      -8       yes     -400
ES1      2025-11-04  07:30  Win       10       yes     +500
ES1      2025-11-05  09:00  TIME      3.25     no      +162.5 (provisional)
ES2      2025-11-03  10:30  Win       10       yes     +500
CL1      2024-12-02  07:30  Loss      -0.2     yes     -200
CL1      2025-11-03  07:30  Win       0.5      yes     +500
CL1      2025-11-04  07:30  Loss      -0.37    yes     -370
MES1     2025-11-03  07:30  Win       10       yes     +50
=======  ==========  =====  =======  =======  ======  =======================
"""

from __future__ import annotations

from datetime import date, datetime, time

import pyarrow as pa

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
        "Direction": "Long" if trade else "NA", "Result": result, "Range": 4.0,
        "Stream": inst + session[1], "Instrument": inst, "Session": session, "Profit": profit,
        "RangeHigh": 10.0, "RangeLow": 6.0, "EntryPrice": 10.0 if trade else None,
        "ExitPrice": 10.0 + profit if trade else None, "StopPrice": 6.0 if trade else None,
        "TargetPrice": 20.0 if trade else None, "Final": final,
    }


def write_month(settings: Settings, stream: str, year: int, month: int, rows: list[dict]) -> None:
    table = pa.Table.from_pylist(sorted(rows, key=lambda r: (r["Date"], r["Time"])), schema=RESULT_SCHEMA)
    write_parquet_atomic(results.monthly_path(settings, stream, year, month), table)


def write_fixture(settings: Settings) -> None:
    """The table of the module docstring, as real monthly Parquet files."""
    d = date
    write_month(settings, "ES1", 2025, 10, [
        row("ES", d(2025, 10, 1), "07:30", "Win", 10.0),
        row("ES", d(2025, 10, 1), "08:00", "Loss", -6.5),
        row("ES", d(2025, 10, 2), "07:30", "BE", -0.25),
        row("ES", d(2025, 10, 2), "08:00", "NoTrade", 0.0),
    ])
    write_month(settings, "ES1", 2025, 11, [
        row("ES", d(2025, 11, 3), "07:30", "Loss", -8.0),
        row("ES", d(2025, 11, 4), "07:30", "Win", 10.0),
        row("ES", d(2025, 11, 5), "09:00", "TIME", 3.25, final=False),
    ])
    write_month(settings, "ES2", 2025, 11, [row("ES", d(2025, 11, 3), "10:30", "Win", 10.0)])
    write_month(settings, "CL1", 2024, 12, [row("CL", d(2024, 12, 2), "07:30", "Loss", -0.2)])
    write_month(settings, "CL1", 2025, 11, [
        row("CL", d(2025, 11, 3), "07:30", "Win", 0.5),
        row("CL", d(2025, 11, 4), "07:30", "Loss", -0.37),
    ])
    write_month(settings, "MES1", 2025, 11, [row("MES", d(2025, 11, 3), "07:30", "Win", 10.0)])


def write_year(settings: Settings, year: int = 2025, months: range = range(1, 12)) -> None:
    """A longer, deterministic history for the screens: ES1, ES2 and NQ1, every weekday of
    ``months``, results cycling through a fixed pattern (no randomness: snapshots stay put)."""
    pattern = [("Win", 1.0), ("Loss", -0.6), ("Win", 1.0), ("BE", 0.0), ("Loss", -1.0),
               ("TIME", 0.3), ("Win", 1.0), ("NoTrade", 0.0), ("Loss", -0.8), ("Loss", -0.5)]
    streams = {"ES1": ("ES", "07:30", 10.0, 0.25), "ES2": ("ES", "10:00", 10.0, 0.25),
               "NQ1": ("NQ", "08:00", 50.0, 0.25)}
    for n, (stream, (inst, slot, target, tick)) in enumerate(streams.items()):
        k = n * 3
        for month in months:
            rows = []
            for day in range(1, 32):
                try:
                    d = date(year, month, day)
                except ValueError:
                    break
                if d.weekday() >= 5:
                    continue
                result, scale = pattern[k % len(pattern)]
                k += 1
                profit = -tick if result == "BE" else round(scale * target / tick) * tick
                rows.append(row(inst, d, slot, result, profit))
            write_month(settings, stream, year, month, rows)
