"""Raw file names and readiness (SPEC §2.1, §2.2)."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from pipeline_core import catalog
from pipeline_core.rawfiles import RawFileError, name_form, parse_instrument, scan_raw
from pipeline_core.settings import Settings, load_settings


def _write(path: Path, text: str = "Date,Time,Open,High,Low,Close,Volume,Instrument\n", age: float = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if age:
        t = time.time() - age
        os.utime(path, (t, t))
    return path


def _signal(settings: Settings, kind: str, name: str, age: float = 0, **body: object) -> Path:
    stem = name.rsplit(".", 1)[0]
    p = settings.raw_logs_dir / f"export_{kind}_{stem}.json"
    return _write(p, json.dumps({"status": kind, "fileName": name, **body}), age)


@pytest.mark.parametrize(
    ("name", "symbol"),
    [
        ("DataExport_ES_20251128_023046_UTC.csv", "ES"),
        ("MinuteDataExport_NQ_20251129_101500_UTC.csv", "NQ"),
        ("DataExport_M2K_20251128_023046_UTC.csv", "M2K"),
        ("ES.csv", "ES"),
        ("GC.csv", "GC"),
        ("ES 03-26.Last.txt", "ES"),
        ("MCL 12-25.Last.txt", "MCL"),
    ],
)
def test_each_accepted_name_form_gives_its_symbol(settings: Settings, name: str, symbol: str) -> None:
    assert parse_instrument(name, settings) == symbol


@pytest.mark.parametrize(
    "name",
    [
        "es.csv",
        "ES.txt",
        "ES.CSV",
        "DataExport_ES_2025112_023046_UTC.csv",
        "DataExport_ES_20251128_023046.csv",
        "DataExport_es_20251128_023046_UTC.csv",
        "ES_noheader.csv",
        "ES 3-26.Last.txt",
        "ES 03-26.txt",
        "notes.csv",
        "DATAEXPORT.csv.bak",
    ],
)
def test_unmatched_names_are_refused_with_the_accepted_forms(settings: Settings, name: str) -> None:
    with pytest.raises(RawFileError) as info:
        parse_instrument(name, settings)
    assert info.value.name == name
    assert "matches no accepted form" in info.value.reason
    assert "DataExport_<SYM>" in str(info.value)


def test_unknown_symbol_is_refused_naming_the_configured_ones(settings: Settings) -> None:
    with pytest.raises(RawFileError) as info:
        parse_instrument("ZZ.csv", settings)
    assert "'ZZ' is not in the configured instrument table" in info.value.reason
    assert "ES" in info.value.reason and "NQ" in info.value.reason


def test_instrument_table_comes_from_settings(root: Path) -> None:
    (root / "qtsw.toml").write_text('[instruments]\nZZ = {tick = 0.5, target = 4}\n')
    s = load_settings(root=root, env={})
    assert parse_instrument("DataExport_ZZ_20251128_023046_UTC.csv", s) == "ZZ"
    with pytest.raises(RawFileError):
        parse_instrument("ES.csv", s)  # the file's table replaces the built-in one


@hsettings(max_examples=60, deadline=None)
@given(
    symbol=st.sampled_from(["ES", "NQ", "YM", "CL", "NG", "GC", "RTY", "MES", "M2K"]),
    stamp=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(lambda d: d.strftime("%Y%m%d_%H%M%S")),
    minute=st.booleans(),
)
def test_exporter_names_parse_for_any_stamp(symbol: str, stamp: str, minute: bool) -> None:
    s = load_settings(root="/nonexistent-root", env={})
    name = f"{'Minute' if minute else ''}DataExport_{symbol}_{stamp}_UTC.csv"
    assert parse_instrument(name, s) == symbol
    assert name_form(name) == ("exporter", symbol)


# --- readiness ---------------------------------------------------------------------------------


def test_complete_signal_makes_a_fresh_file_ready(settings: Settings) -> None:
    f = _write(settings.raw_dir / "DataExport_ES_20251128_023046_UTC.csv")
    _signal(settings, "progress", f.name)  # a leftover progress file does not matter
    _signal(settings, "complete", f.name)
    scan = scan_raw(settings)
    assert scan.ready == [f]
    assert scan.waiting == [] and scan.exporting == [] and scan.stale == []


def test_file_with_progress_signal_waits_and_is_shown_as_exporting(settings: Settings) -> None:
    f = _write(settings.raw_dir / "DataExport_NQ_20251128_023046_UTC.csv", age=3600)
    sig = _signal(settings, "progress", f.name, instrument="NQ", totalBarsProcessed=100000, fileSizeMB=5.2)
    scan = scan_raw(settings)
    assert scan.ready == [] and scan.waiting == [f]
    [info] = scan.exporting
    assert info["instrument"] == "NQ" and info["totalBarsProcessed"] == 100000
    assert info["fileSizeMB"] == 5.2 and info["status"] == "progress"
    assert info["signal_path"] == sig and info["path"] == f and info["stale"] is False


def test_progress_signal_older_than_the_stale_limit_makes_the_file_ready_and_stale(settings: Settings) -> None:
    f = _write(settings.raw_dir / "DataExport_CL_20251128_023046_UTC.csv", age=3600)
    _signal(settings, "progress", f.name, age=settings.export_stale_seconds + 5)
    scan = scan_raw(settings)
    assert scan.ready == [f] and scan.stale == [f] and scan.waiting == []
    assert scan.exporting[0]["stale"] is True


def test_export_in_progress_without_its_csv_yet_is_listed(settings: Settings) -> None:
    _signal(settings, "progress", "DataExport_GC_20251128_023046_UTC.csv", instrument="GC")
    scan = scan_raw(settings)
    assert scan.ready == [] and scan.waiting == []
    assert scan.exporting[0]["path"] is None
    assert scan.exporting[0]["fileName"] == "DataExport_GC_20251128_023046_UTC.csv"


def test_half_written_progress_signal_does_not_break_the_scan(settings: Settings) -> None:
    f = _write(settings.raw_dir / "ES.csv", age=3600)
    _write(settings.raw_logs_dir / "export_progress_ES.json", '{"status": "in_pro')
    scan = scan_raw(settings)
    assert scan.waiting == [f]
    assert scan.exporting[0]["status"] == "unreadable"


def test_without_signals_the_file_is_ready_once_stable(settings: Settings) -> None:
    f = _write(settings.raw_dir / "ES.csv")
    now = f.stat().st_mtime
    assert scan_raw(settings, now=now + 1).waiting == [f]
    assert scan_raw(settings, now=now + settings.stable_seconds - 0.5).ready == []
    assert scan_raw(settings, now=now + settings.stable_seconds + 0.5).ready == [f]


def test_only_the_top_level_counts_and_hidden_or_temporary_files_are_ignored(settings: Settings) -> None:
    for rel in (
        "archive/2025-12-01/ES.csv",
        "quarantine/ZZ.csv",
        "sub/NQ.csv",
        ".DataExport_ES_20251128_023046_UTC.csv.x1y2.tmp",
        ".hidden.csv",
        "ES.csv.part",
        "NQ.csv~",
        "GC.csv.crdownload",
    ):
        _write(settings.raw_dir / rel, age=3600)
    f = _write(settings.raw_dir / "YM.csv", age=3600)
    scan = scan_raw(settings)
    assert scan.ready == [f] and scan.waiting == [] and scan.unrecognised == []


def test_ready_files_come_oldest_first(settings: Settings) -> None:
    a = _write(settings.raw_dir / "NQ.csv", age=300)
    b = _write(settings.raw_dir / "ES.csv", age=600)
    c = _write(settings.raw_dir / "GC.csv", age=100)
    assert scan_raw(settings).ready == [b, a, c]


def test_unrecognised_names_are_ready_for_quarantine_and_listed(settings: Settings) -> None:
    bad = _write(settings.raw_dir / "notes.csv", age=3600)
    zz = _write(settings.raw_dir / "ZZ.csv", age=3600)
    scan = scan_raw(settings)
    assert set(scan.ready) == {bad, zz}
    reasons = dict(scan.unrecognised)
    assert "matches no accepted form" in reasons[bad]
    assert "'ZZ' is not configured" in reasons[zz]


def test_scan_of_a_missing_raw_folder_is_empty(root: Path) -> None:
    s = load_settings(root=root, env={})
    scan = scan_raw(s)
    assert (scan.ready, scan.waiting, scan.exporting, scan.stale) == ([], [], [], [])


def test_keep_policy_skips_files_already_in_the_catalogue(root: Path) -> None:
    s = load_settings(root=root, env={}, overrides={"input.raw_policy": "keep"})
    s.ensure_dirs()
    f = _write(s.raw_dir / "ES.csv", age=3600)
    other = _write(s.raw_dir / "NQ.csv", age=3600)
    st_ = f.stat()
    rec = {"name": "ES.csv", "size": st_.st_size, "mtime_ns": st_.st_mtime_ns, "sha256": "x",
           "status": "ingested", "ingested_at": "2025-01-02T00:00:00-06:00"}
    catalog.open_catalog(s).add_raw(rec)
    assert scan_raw(s).ready == [other]
    _write(f, "Date,Time,Open,High,Low,Close,Volume,Instrument\n2025-01-02,00:00:00,1,1,1,1,1,ES\n", age=60)
    assert set(scan_raw(s).ready) == {f, other}  # changed since: to be translated again
