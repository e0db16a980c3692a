"""The sample export generator (``qtsw sample``)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from pipeline_core import sample
from pipeline_core.settings import CHICAGO, Settings, load_settings

END = date(2025, 11, 28)  # the Friday after Thanksgiving


def _read_exporter_csv(path: Path) -> pa.Table:
    return pacsv.read_csv(
        path,
        convert_options=pacsv.ConvertOptions(
            column_types={"Date": pa.string(), "Time": pa.string(), "Instrument": pa.string()}
        ),
    )


def _chicago(table: pa.Table) -> list[datetime]:
    return [datetime.fromisoformat(f"{d}T{t}+00:00").astimezone(CHICAGO) for d, t in zip(table.column("Date").to_pylist(), table.column("Time").to_pylist(), strict=True)]


def test_holidays_2025() -> None:
    assert sample.exchange_holidays(2025) == {
        date(2025, 1, 1),
        date(2025, 1, 20),
        date(2025, 2, 17),
        date(2025, 4, 18),
        date(2025, 5, 26),
        date(2025, 6, 19),
        date(2025, 7, 4),
        date(2025, 9, 1),
        date(2025, 11, 27),
        date(2025, 12, 25),
    }
    # observed on the nearest weekday
    assert date(2021, 12, 24) in sample.exchange_holidays(2021)  # Christmas on a Saturday
    assert date(2023, 1, 2) in sample.exchange_holidays(2023)  # New Year on a Sunday
    assert date(2026, 4, 3) in sample.exchange_holidays(2026)  # Good Friday


def test_trading_days_skip_weekends_and_holidays() -> None:
    days = sample.trading_days(END, 5)
    assert days == [date(2025, 11, 21), date(2025, 11, 24), date(2025, 11, 25), date(2025, 11, 26), date(2025, 11, 28)]
    assert sample.last_completed_trading_day(date(2025, 11, 28)) == date(2025, 11, 26)
    assert sample.last_completed_trading_day(date(2025, 12, 1)) == date(2025, 11, 28)


def test_samples_are_realistic_exporter_files(settings: Settings) -> None:
    paths = sample.write_samples(settings, days=10, end=END)
    assert [p.name for p in paths] == [
        f"DataExport_{s}_20251129_{t}_UTC.csv"
        for s, t in zip(sample.DEFAULT_INSTRUMENTS, ["023000", "023017", "023034", "023051", "023108", "023125"], strict=True)
    ]
    for path in paths:
        sym = path.name.split("_")[1]
        inst = settings.instrument(sym)
        assert path.parent == settings.raw_dir
        assert path.read_text().splitlines()[0] == "Date,Time,Open,High,Low,Close,Volume,Instrument"
        t = _read_exporter_csv(path)
        assert set(t.column("Instrument").to_pylist()) == {sym}
        when = _chicago(t)
        assert when == sorted(set(when))
        # Globex hours: Sunday 17:00 to Friday 16:00, daily break 16:00-16:59, no Saturday
        assert not any(16 <= w.hour < 17 for w in when)
        assert not any(w.weekday() == 5 for w in when)
        assert not any(w.weekday() == 6 and w.hour < 17 for w in when)
        assert not any(w.weekday() == 4 and w.hour >= 16 for w in when)
        # Thanksgiving: closed until the evening session opens at 17:00
        assert not any(w.date() == date(2025, 11, 27) and w.hour < 17 for w in when)
        assert when[0] == datetime(2025, 11, 13, 17, 0, tzinfo=CHICAGO)
        assert when[-1] == datetime(2025, 11, 28, 15, 59, tzinfo=CHICAGO)
        assert len(when) > 10 * 1300  # 1380 minutes a session, a few quiet minutes missing
        o, h, lo, c = (np.array(t.column(k).to_pylist()) for k in ("Open", "High", "Low", "Close"))
        assert (lo <= np.minimum(o, c)).all() and (np.maximum(o, c) <= h).all()
        for arr in (o, h, lo, c):
            ticks = arr / inst.tick
            assert np.allclose(ticks, np.round(ticks), atol=1e-6)
        assert (np.array(t.column("Volume").to_pylist()) > 0).all()
        # a typical day moves: the range of a session is neither flat nor absurd
        price, day_range = sample.PROFILES[sym]
        assert 0.3 * day_range < h.max() - lo.min() < 20 * day_range
        signal = json.loads((settings.raw_logs_dir / f"export_complete_{path.stem}.json").read_text())
        assert signal["status"] == "complete"
        assert signal["fileName"] == path.name and signal["filePath"] == str(path)
        assert signal["instrument"] == sym and signal["dataType"] == "Minute"
        assert signal["totalBarsProcessed"] == t.num_rows
        assert signal["fileSizeBytes"] == path.stat().st_size
        assert signal["fileSizeMB"] == round(path.stat().st_size / 1048576, 2)
        assert signal["completedAt"].endswith("Z")
        assert {"gapsDetected", "invalidDataSkipped"} <= set(signal)


def test_same_seed_same_files_other_seed_other_prices(root: Path, tmp_path: Path) -> None:
    def make(r: Path, seed: int) -> dict[str, bytes]:
        s = load_settings(root=r, env={})
        return {p.name: p.read_bytes() for p in sample.write_samples(s, days=3, instruments=["ES", "CL"], seed=seed, end=END)}

    a = make(root, 7)
    b = make(tmp_path / "b", 7)
    c = make(tmp_path / "c", 8)
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_default_end_is_the_last_completed_trading_day(settings: Settings) -> None:
    [path] = sample.write_samples(settings, days=1, instruments=["NG"])
    last = _chicago(_read_exporter_csv(path))[-1]
    expected = sample.last_completed_trading_day()
    assert last == datetime.combine(expected, datetime.min.time(), CHICAGO).replace(hour=15, minute=59)
    assert expected < datetime.now(CHICAGO).date()


def test_bars_keep_minute_spacing_across_the_dst_weekends() -> None:
    days = [date(2025, 3, 7), date(2025, 3, 10), date(2025, 10, 31), date(2025, 11, 3)]
    b = sample.generate_bars("ES", 0.25, days, seed=1, gap_fraction=0)
    when = [t.astimezone(CHICAGO) for t in b.column("timestamp").to_pylist()]
    starts = [w for w in when if w.hour == 17 and w.minute == 0]
    assert [w.date() for w in starts] == [date(2025, 3, 6), date(2025, 3, 9), date(2025, 10, 30), date(2025, 11, 2)]
    assert all(w.utcoffset() == timedelta(hours=-5) for w in when if date(2025, 3, 9) <= w.date() <= date(2025, 11, 1))
    assert b.num_rows == 4 * 1380


def test_write_bars_csv_forms(tmp_path: Path) -> None:
    t0 = datetime(2025, 3, 9, 21, 59, tzinfo=CHICAGO).timestamp() * 1000  # 02:59 UTC next day
    bars = pa.table(
        {
            "timestamp": pa.array([int(t0), int(t0) + 60_000], pa.timestamp("ms", tz="UTC")),
            "open": [5000.25, 5000.5],
            "high": [5001.0, 5001.0],
            "low": [5000.0, 4999.75],
            "close": [5000.5, 5000.0],
            "volume": [12.0, 7.0],
        }
    )
    exp = sample.write_bars_csv(tmp_path / "a.csv", bars, "exporter", instrument="ES")
    assert exp.read_bytes() == (
        b"Date,Time,Open,High,Low,Close,Volume,Instrument\n"
        b"2025-03-10,02:59:00,5000.25,5001,5000,5000.5,12,ES\n"
        b"2025-03-10,03:00:00,5000.5,5001,4999.75,5000,7,ES\n"
    )
    chi = sample.write_bars_csv(tmp_path / "b.csv", bars, "exporter", instrument="ES", zone="America/Chicago", bom=True, crlf=True)
    assert chi.read_bytes().startswith(b"\xef\xbb\xbfDate,Time,")
    assert b"2025-03-09,21:59:00,5000.25" in chi.read_bytes() and b"\r\n" in chi.read_bytes()
    nt = sample.write_bars_csv(tmp_path / "ES 03-25.Last.txt", bars, "ninjatrader", sep=";")
    assert nt.read_bytes() == b"20250310 030000;5000.25;5001;5000;5000.5;12\n20250310 030100;5000.5;5001;4999.75;5000;7\n"
    utc = sample.write_bars_csv(tmp_path / "c.csv", bars, "timestamp_utc")
    assert utc.read_bytes().splitlines() == [
        b"timestamp_utc,open,high,low,close,volume",
        b"2025-03-10T02:59:00Z,5000.25,5001,5000,5000.5,12",
        b"2025-03-10T03:00:00Z,5000.5,5001,4999.75,5000,7",
    ]
    with pytest.raises(ValueError, match="unknown form"):
        sample.write_bars_csv(tmp_path / "d.csv", bars, "excel")


def test_progress_signal_fields(settings: Settings) -> None:
    csv = settings.raw_dir / "DataExport_ES_20251128_023046_UTC.csv"
    csv.write_text("Date,Time,Open,High,Low,Close,Volume,Instrument\n")
    p = sample.write_export_signal(settings, csv, "ES", 500, "progress", last_bar=datetime(2025, 11, 27, 8, 30))
    body = json.loads(p.read_text())
    assert p.name == "export_progress_DataExport_ES_20251128_023046_UTC.json"
    assert body["status"] == "in_progress" and body["lastBarTime"] == "2025-11-27T08:30:00"
    assert body["lastUpdateTime"].endswith("Z") and body["totalBarsProcessed"] == 500


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline_core.sample", *args], capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})


def test_command_line_writes_and_if_empty_respects_existing_data(root: Path) -> None:
    r = _cli("--root", str(root), "--days", "2", "--instruments", "ES,NQ", "--end", "2025-11-28")
    assert r.returncode == 0, r.stderr
    raw = root / "data" / "raw"
    names = sorted(p.name for p in raw.glob("*.csv"))
    assert names == ["DataExport_ES_20251129_023000_UTC.csv", "DataExport_NQ_20251129_023017_UTC.csv"]
    assert "2 sample export(s)" in r.stdout
    before = {p: p.read_bytes() for p in raw.glob("*.csv")}
    r2 = _cli("sample", "--root", str(root), "--days", "5", "--if-empty")
    assert r2.returncode == 0 and "nothing written" in r2.stdout
    assert {p: p.read_bytes() for p in raw.glob("*.csv")} == before


def test_command_line_refuses_an_unknown_instrument(root: Path) -> None:
    r = _cli("--root", str(root), "--instruments", "ES,ZZ")
    assert r.returncode == 4
    assert "unknown instrument 'ZZ'" in r.stderr
    assert not list((root / "data" / "raw").glob("*.csv"))
