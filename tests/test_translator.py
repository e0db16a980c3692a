"""The translator stage, run as a real subprocess on real files in a temporary data root."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline_core import catalog, fsutil, protocol, repair, sample, store, translator
from pipeline_core.settings import CHICAGO, Settings, load_settings

ENV = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}
END = date(2025, 11, 26)


# --- helpers ---------------------------------------------------------------------------------


@dataclass
class StageRun:
    rc: int
    stdout: str
    stderr: str
    messages: list[protocol.Message]

    @property
    def result(self) -> dict[str, Any]:
        results = [m.body for m in self.messages if m.type == "result"]
        assert len(results) == 1, self.stdout + self.stderr
        return results[0]

    @property
    def counts(self) -> dict[str, Any]:
        return self.result["counts"]

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [m.body for m in self.messages if m.type == type_]

    def metric(self, file: str) -> dict[str, Any]:
        [m] = [m["data"] for m in self.of("metric") if m["data"].get("file") == file]
        return m

    @property
    def text(self) -> str:
        return "\n".join(line for line in self.stdout.splitlines() if protocol.parse(line) is None)


def run_translator(root: Path, env: dict[str, str] | None = None, timeout: float = 120) -> StageRun:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline_core.translator", "--root", str(root), "--run-id", "run-test"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**ENV, **(env or {})},
        stdin=subprocess.DEVNULL,
    )
    msgs = [m for m in (protocol.parse(line) for line in proc.stdout.splitlines()) if m is not None]
    return StageRun(proc.returncode, proc.stdout, proc.stderr, msgs)


def make_bars(symbol: str = "ES", days: int = 2, end: date = END, seed: int = 3, tick: float = 0.25) -> pa.Table:
    return sample.generate_bars(symbol, tick, sample.trading_days(end, days), seed, gap_fraction=0.01)


def settle(path: Path, age: float = 3600) -> Path:
    """Make a file look stable (not modified for ``age`` seconds)."""
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def put(settings: Settings, name: str, bars: pa.Table, form: str = "exporter", age: float = 3600, **kw: Any) -> Path:
    path = sample.write_bars_csv(settings.raw_dir / name, bars, form, **kw)
    return settle(path, age) if age else path


def put_text(settings: Settings, name: str, text: str | bytes, age: float = 3600) -> Path:
    path = settings.raw_dir / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return settle(path, age) if age else path


def stored(settings: Settings, inst: str) -> pa.Table:
    return store.read_bars(settings, inst)


def assert_store_holds(settings: Settings, inst: str, bars: pa.Table) -> None:
    got = stored(settings, inst)
    want_ts = bars.column("timestamp").cast(pa.int64()).to_pylist()
    assert got.column("timestamp").cast(pa.int64()).to_pylist() == want_ts
    for c in ("open", "high", "low", "close", "volume"):
        assert got.column(c).to_pylist() == bars.column(c).to_pylist(), c
    assert set(got.column("instrument").to_pylist()) == {inst}


def archived(settings: Settings, name: str) -> list[Path]:
    return sorted(settings.archive_dir.glob(f"*/{name}"))


def manifest(settings: Settings) -> list[dict[str, Any]]:
    """The catalogue's raw-file records, in ingestion order."""
    if not settings.catalog_path.exists():
        return []
    recs = catalog.open_catalog(settings).raw_files()
    for r in recs:
        r["dropped"] = json.loads(r["dropped"]) if r.get("dropped") else {}
    return recs


def with_line(text: str, line_no: int, new: str) -> str:
    lines = text.splitlines()
    lines[line_no - 1] = new
    return "\n".join(lines) + "\n"


# --- every input form ---------------------------------------------------------------------------

# (instrument, file name, form, options): each in its own instrument so one run covers all
FORMS = [
    ("ES", "DataExport_ES_20251127_023046_UTC.csv", "exporter", {}),
    ("NQ", "MinuteDataExport_NQ_20251127_101500_UTC.csv", "exporter", {}),
    ("YM", "YM.csv", "exporter", {}),
    ("CL", "CL 01-26.Last.txt", "ninjatrader", {"sep": ";"}),
    ("NG", "NG 01-26.Last.txt", "ninjatrader", {"sep": ","}),
    ("GC", "GC.csv", "timestamp_utc", {}),
    ("RTY", "DataExport_RTY_20251127_023046_UTC.csv", "timestamp_utc", {}),
    ("MES", "MES.csv", "exporter", {"bom": True, "crlf": True}),
    ("MNQ", "MNQ 12-25.Last.txt", "ninjatrader", {"sep": ";", "bom": True, "crlf": True}),
    ("MYM", "MYM.csv", "timestamp_utc", {"bom": True, "crlf": True}),
]


@pytest.fixture(scope="module")
def all_forms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict[str, pa.Table], StageRun, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("forms")
    s = load_settings(root=root, env=ENV)
    s.ensure_dirs()
    written, raw = {}, {}
    for i, (inst, name, form, kw) in enumerate(FORMS):
        tick = s.instrument(inst).tick
        bars = make_bars(inst, seed=10 + i, tick=tick)
        p = put(s, name, bars, form, instrument=inst, **kw)
        written[inst] = bars
        raw[name] = p.read_bytes()
    return s, written, run_translator(root), raw


@pytest.mark.parametrize(("inst", "name", "form", "kw"), FORMS, ids=[f"{f[2]}-{f[1]}" for f in FORMS])
def test_every_input_form_lands_in_the_store_exactly(all_forms: Any, inst: str, name: str, form: str, kw: dict) -> None:
    s, written, run, raw = all_forms
    assert run.rc == 0, run.stdout + run.stderr
    assert run.result["status"] == "success"
    assert_store_holds(s, inst, written[inst])
    m = run.metric(name)
    assert m["instrument"] == inst and m["form"] == form
    assert m["rows_in"] == m["rows_kept"] == written[inst].num_rows
    assert m["dropped"] == {} and m["duplicates"] == 0
    first = written[inst].column("timestamp")[0].as_py().astimezone(CHICAGO)
    assert m["first_bar"] == first.isoformat()
    # archived unchanged, recorded in the catalogue
    [arch] = archived(s, name)
    assert arch.read_bytes() == raw[name]
    assert not (s.raw_dir / name).exists()
    [rec] = [r for r in manifest(s) if r["name"] == name]
    assert rec["sha256"] == hashlib.sha256(raw[name]).hexdigest()
    assert rec["size"] == len(raw[name]) and rec["instrument"] == inst
    assert rec["rows_in"] == rec["rows_kept"] == written[inst].num_rows
    assert rec["first_bar"] == first.isoformat() and rec["ingested_at"]
    assert rec["dropped"] == {} and rec["duplicates"] == 0 and rec["mtime_ns"] > 0
    changes = catalog.open_catalog(s).read_changes()
    assert changes[inst][0] == first


def test_forms_run_reports_progress_and_counts(all_forms: Any) -> None:
    s, written, run, _ = all_forms
    progress = run.of("progress")
    c = run.counts
    # in bytes of the input read: one at each file's start, rising, and the whole at the end
    assert {p.get("unit") for p in progress} == {"bytes"}
    assert progress[0]["done"] == 0 and progress[-1]["done"] == progress[-1]["total"] == c["bytes"] > 0
    assert len(progress) >= len(FORMS) + 1
    assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)
    assert c["files"] == c["translated"] == len(FORMS)
    assert c["quarantined"] == c["already_ingested"] == c["errors"] == 0
    assert c["rows_kept"] == sum(b.num_rows for b in written.values())
    assert c["instruments"] == {k: b.num_rows for k, b in written.items()}
    assert f"{len(FORMS)} file(s) translated" in run.result["msg"]
    assert "bars kept" in run.text  # the operator's lines


# --- time zones and DST ----------------------------------------------------------------------------

DST_DAYS = [date(2025, 3, 7), date(2025, 3, 10), date(2025, 10, 31), date(2025, 11, 3)]


def test_dst_weeks_exact_in_every_zone_setting(root: Path) -> None:
    (root / "qtsw.toml").write_text('[input]\ntimezones = [{pattern = "NQ*", timezone = "America/Chicago"}]\n')
    s = load_settings(root=root, env=ENV)
    s.ensure_dirs()
    bars = sample.generate_bars("ES", 0.25, DST_DAYS, seed=5, gap_fraction=0)
    put(s, "ES.csv", bars)  # UTC wall clock
    put(s, "YM 03-25.Last.txt", bars, "ninjatrader")  # UTC, bar-close stamps
    put(s, "NQ.csv", bars, zone="America/Chicago")  # Chicago wall clock, per the setting
    run = run_translator(root)
    assert run.result["status"] == "success", run.stdout
    for inst in ("ES", "YM", "NQ"):
        got = stored(s, inst).column("timestamp").to_pylist()
        assert got == bars.column("timestamp").to_pylist()
        # each session 17:00 to 15:59 Chicago, 1380 bars, whatever the UTC offset
        starts = sorted(t for t in got if t.astimezone(CHICAGO).hour == 17 and t.astimezone(CHICAGO).minute == 0)
        assert [(t.astimezone(CHICAGO).date(), t.astimezone(CHICAGO).utcoffset()) for t in starts] == [
            (date(2025, 3, 6), timedelta(hours=-6)),
            (date(2025, 3, 9), timedelta(hours=-5)),  # spring forward that morning
            (date(2025, 10, 30), timedelta(hours=-5)),
            (date(2025, 11, 2), timedelta(hours=-6)),  # fall back that morning
        ]
        ends = sorted(t for t in got if t.astimezone(CHICAGO).hour == 15 and t.astimezone(CHICAGO).minute == 59)
        assert [t.astimezone(CHICAGO).replace(tzinfo=None) for t in ends] == [datetime.combine(d, datetime.min.time()).replace(hour=15, minute=59) for d in DST_DAYS]
        assert len(got) == 4 * 1380


def test_bar_open_is_bar_close_minus_one_minute_for_ninjatrader(settings: Settings) -> None:
    put_text(settings, "ES 12-25.Last.txt", "20251124 230100;6000.25;6001;6000;6000.5;10\n20251124 230200;6000.5;6000.75;6000.25;6000.5;4\n")
    run = run_translator(settings.root)
    assert run.result["status"] == "success", run.stdout
    got = stored(settings, "ES").column("timestamp").to_pylist()
    assert got == [datetime(2025, 11, 24, 17, 0, tzinfo=CHICAGO), datetime(2025, 11, 24, 17, 1, tzinfo=CHICAGO)]


def test_wrong_time_zone_is_caught_by_the_plausibility_check(root: Path) -> None:
    s = load_settings(root=root, env=ENV)
    s.ensure_dirs()
    bars = make_bars("ES", days=3)
    put(s, "ES.csv", bars, zone="America/Chicago")  # Chicago wall clock, read as UTC
    run = run_translator(root)
    assert run.rc == 0 and run.result["status"] == "partial"
    err = (s.quarantine_dir / "ES.csv.error.txt").read_text()
    assert "rule: suspect_times" in err
    assert "16:00–16:59 Chicago break or on a Saturday" in err and "input time zone UTC" in err
    assert stored(s, "ES").num_rows == 0
    # the operator fixes the setting and puts the file back: it goes in exactly
    (root / "qtsw.toml").write_text('[input]\ntimezones = [{pattern = "ES.csv", timezone = "America/Chicago"}]\n')
    (s.quarantine_dir / "ES.csv").rename(s.raw_dir / "ES.csv")
    settle(s.raw_dir / "ES.csv")
    run2 = run_translator(root)
    assert run2.result["status"] == "success", run2.stdout
    assert_store_holds(s, "ES", bars)


def _bars_at(moments: list[datetime], price: float = 6000.0) -> pa.Table:
    return pa.table({
        "timestamp": pa.array([int(m.timestamp() * 1000) for m in moments], pa.timestamp("ms", tz="UTC")),
        **{c: [price] * len(moments) for c in ("open", "high", "low", "close", "volume")},
    })


@pytest.fixture(scope="module")
def plausibility(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict[str, pa.Table], StageRun]:
    root = tmp_path_factory.mktemp("plausible")
    s = load_settings(root=root, env=ENV)
    s.ensure_dirs()
    sat = datetime(2025, 11, 22, 10, 0, tzinfo=CHICAGO)
    # within a day ahead (further is a bad row, rule out_of_range): a wrong time zone setting
    future = datetime.now(CHICAGO).replace(second=0, microsecond=0) + timedelta(hours=3)
    files = {
        # 40 bars on a Saturday among ~2,800: more than 1 %
        "ES.csv": pa.concat_tables([make_bars("ES", end=date(2025, 11, 21)), _bars_at([sat + timedelta(minutes=i) for i in range(40)])]),
        # one bar three hours ahead
        "DataExport_NQ_20251127_023046_UTC.csv": pa.concat_tables([make_bars("NQ"), _bars_at([future])]),
        # one bar in the break is no reason to doubt the file
        "YM.csv": pa.concat_tables([make_bars("YM", tick=1.0), _bars_at([datetime(2025, 11, 25, 16, 30, tzinfo=CHICAGO)])]),
    }
    for name, bars in files.items():
        put(s, name, bars)
    return s, files, run_translator(root)


def test_saturday_bars_make_a_file_suspect(plausibility: Any) -> None:
    s, _, run = plausibility
    assert run.result["status"] == "partial"
    err = (s.quarantine_dir / "ES.csv.error.txt").read_text()
    assert "rule: suspect_times" in err and "40 of" in err
    assert stored(s, "ES").num_rows == 0


def test_a_bar_in_the_future_rejects_the_file(plausibility: Any) -> None:
    s, _, run = plausibility
    err = (s.quarantine_dir / "DataExport_NQ_20251127_023046_UTC.csv.error.txt").read_text()
    assert "rule: future_bar" in err and "is in the future" in err
    assert stored(s, "NQ").num_rows == 0


def test_a_few_bars_in_the_break_are_tolerated(plausibility: Any) -> None:
    s, files, run = plausibility
    assert run.metric("YM.csv")["status"] == "translated"
    assert stored(s, "YM").num_rows == files["YM.csv"].num_rows
    assert run.counts["quarantined"] == 2 and run.counts["translated"] == 1


# --- bad rows -----------------------------------------------------------------------------------

GOOD = "2025-11-25,14:00:00,6000.25,6001,6000,6000.5,10,ES"
BAD_ROWS = {
    "time": "2025-13-45,14:00:00,6000.25,6001,6000,6000.5,10,ES",
    "non_numeric": "2025-11-25,14:00:00,abc,6001,6000,6000.5,10,ES",
    "nan": "2025-11-25,14:00:00,6000.25,6001,6000,NaN,10,ES",
    "high_low": "2025-11-25,14:00:00,6000.25,5999,6000,6000.5,10,ES",
    "open_close": "2025-11-25,14:00:00,6002,6001,6000,6000.5,10,ES",
    "volume": "2025-11-25,14:00:00,6000.25,6001,6000,6000.5,-3,ES",
    "malformed": "2025-11-25,14:00:00,6000.25,6001",
    "out_of_range": "1900-01-02,14:00:00,6000.25,6001,6000,6000.5,10,ES",
    "instrument": "2025-11-25,14:00:00,6000.25,6001,6000,6000.5,10,CL",  # a CL bar in an MGC file
}
RULE_TEXT = {
    "time": "unparseable time",
    "non_numeric": "non-numeric price or volume",
    "nan": "NaN or infinite price or volume",
    "high_low": "high < low",
    "open_close": "open or close outside [low, high]",
    "volume": "negative volume",
    "malformed": "wrong number of fields",
    "out_of_range": "bar time before input.min_date or after now + 1 day",
    "instrument": "Instrument column names another instrument (CL; the file name says MGC)",
}
# one instrument per rule so a single run covers them all
RULE_INST = dict(zip(BAD_ROWS, ["ES", "NQ", "YM", "CL", "GC", "RTY", "MES", "MNQ", "MGC"], strict=True))


def _exporter_text(bars: pa.Table, inst: str, tmp: Path) -> str:
    return sample.write_bars_csv(tmp / f"{inst}.src", bars, "exporter", instrument=inst).read_text()


@pytest.fixture(scope="module")
def dropped_rows(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict[str, pa.Table], StageRun]:
    """One bad row (line 12) in a file of ~2,800 rows: dropped and counted, the rest kept."""
    root = tmp_path_factory.mktemp("dropped")
    s = load_settings(root=root, env=ENV)
    s.ensure_dirs()
    kept = {}
    for rule, row in BAD_ROWS.items():
        inst = RULE_INST[rule]
        bars = make_bars(inst, seed=len(kept))
        text = with_line(_exporter_text(bars, inst, root), 12, row)
        put_text(s, f"{inst}.csv", text)
        kept[inst] = pa.concat_tables([bars.slice(0, 10), bars.slice(11)])
    return s, kept, run_translator(root)


@pytest.mark.parametrize("rule", list(BAD_ROWS))
def test_a_bad_row_is_dropped_counted_and_located(dropped_rows: Any, rule: str) -> None:
    s, kept, run = dropped_rows
    inst = RULE_INST[rule]
    assert run.result["status"] == "success", run.stdout
    m = run.metric(f"{inst}.csv")
    assert m["dropped"] == {rule: 1}
    assert m["first_bad_line"] == {rule: 12}
    assert m["rows_in"] == kept[inst].num_rows + 1 and m["rows_kept"] == kept[inst].num_rows
    assert_store_holds(s, inst, kept[inst])
    assert f"{RULE_TEXT[rule]} 1 (first at line 12)" in run.text
    assert run.counts["dropped_by_rule"][rule] == 1
    [rec] = [r for r in manifest(s) if r["name"] == f"{inst}.csv"]
    assert rec["dropped"] == {rule: 1}


@pytest.fixture(scope="module")
def rejected_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict[str, bytes], StageRun]:
    """Two bad rows in 60 (more than 1 %): the whole file is quarantined."""
    root = tmp_path_factory.mktemp("rejected")
    s = load_settings(root=root, env=ENV)
    s.ensure_dirs()
    raw = {}
    for rule, row in BAD_ROWS.items():
        inst = RULE_INST[rule]
        bars = make_bars(inst, seed=3).slice(0, 60)
        text = with_line(with_line(_exporter_text(bars, inst, root), 12, row), 30, row)
        raw[inst] = put_text(s, f"{inst}.csv", text).read_bytes()
    good = make_bars("NG", tick=0.001)
    put(s, "NG.csv", good, instrument="NG")
    raw["NG"] = b""
    return s, raw, run_translator(root)


@pytest.mark.parametrize("rule", list(BAD_ROWS))
def test_too_many_bad_rows_quarantine_the_file_with_its_reason(rejected_files: Any, rule: str) -> None:
    s, raw, run = rejected_files
    inst = RULE_INST[rule]
    name = f"{inst}.csv"
    assert run.rc == 0 and run.result["status"] == "partial"
    q = s.quarantine_dir / name
    assert q.read_bytes() == raw[inst]  # moved unchanged
    err = (s.quarantine_dir / f"{name}.error.txt").read_text()
    assert f"file: {name}\n" in err
    assert f"rule: {rule}\n" in err and "line: 12\n" in err
    assert f"{name} line 12: {RULE_TEXT[rule]}" in err
    assert "2 of 60 rows are bad" in err
    assert not (s.raw_dir / name).exists()
    assert stored(s, inst).num_rows == 0
    assert any(w["msg"].startswith(f"quarantined {name}:") for w in run.of("warning"))
    assert run.metric(name)["status"] == "quarantined"


def test_other_files_go_on_when_one_is_quarantined(rejected_files: Any) -> None:
    s, _, run = rejected_files
    assert run.counts["quarantined"] == len(BAD_ROWS)
    assert run.counts["translated"] == 1 and stored(s, "NG").num_rows > 2000
    assert run.result["status"] == "partial" and f"{len(BAD_ROWS)} quarantined" in run.result["msg"]


def test_bad_times_in_the_other_forms(settings: Settings) -> None:
    es = make_bars("ES")
    nt = sample.write_bars_csv(settings.root / "x.txt", es, "ninjatrader", sep=";").read_text()
    put_text(settings, "ES 12-25.Last.txt", with_line(nt, 7, "20251324 230100;6000.25;6001;6000;6000.5;10"))
    nq = make_bars("NQ")
    utc = sample.write_bars_csv(settings.root / "y.csv", nq, "timestamp_utc").read_text()
    put_text(settings, "NQ.csv", with_line(with_line(utc, 9, "2025-11-25 14:00:00,1,1,1,1,1"), 4, ""))
    run = run_translator(settings.root)
    assert run.result["status"] == "success", run.stdout
    assert run.metric("ES 12-25.Last.txt")["first_bad_line"] == {"time": 7}
    # a time without its zone is refused; the blank line 4 is not a row but still a line
    assert run.metric("NQ.csv")["first_bad_line"] == {"time": 9}
    assert stored(settings, "ES").num_rows == es.num_rows - 1
    assert stored(settings, "NQ").num_rows == nq.num_rows - 2


def test_the_instrument_column_never_moves_a_bar_to_another_instrument(settings: Settings) -> None:
    """The file name says which instrument a file holds. A row whose Instrument column names
    another configured instrument is a bad row (rule instrument), found in either parse (the
    typed one, and the tolerant one a bad cell sends a piece to) and in any piece; values
    that name no other instrument (the exporter's DATAEXPORT, a contract of the file's own
    instrument, lower case, an unknown symbol, nothing) are not judged."""
    es = make_bars("ES", days=20)
    text = sample.write_bars_csv(settings.root / "es.src", es, "exporter", instrument="ES").read_text()
    rows = text.splitlines(keepends=True)
    for i, value in zip(range(2, 9), ["DATAEXPORT", "ES 03-26", "es", "ZZ", "", "es mar26", '"ES"'], strict=True):
        rows[i - 1] = rows[i - 1].rsplit(",", 1)[0] + f",{value}\n"
    foreign = {3000: "CL", 9000: "nq 03-26", 20_000: '"CL"'}  # in three pieces of 128 KiB
    for line, value in foreign.items():
        rows[line - 1] = rows[line - 1].rsplit(",", 1)[0] + f",{value}\n"
    cells = rows[20_010 - 1].split(",")
    cells[3] = "abc"  # a high that is no number: the piece of line 20,000 is parsed the tolerant way
    rows[20_010 - 1] = ",".join(cells)
    put_text(settings, "ES.csv", "".join(rows))
    run = run_translator(settings.root, env={"QTSW_TRANSLATOR_PIECE_BYTES": str(128 * 1024)})
    assert run.result["status"] == "success", run.stdout
    m = run.metric("ES.csv")
    assert m["dropped"] == {"non_numeric": 1, "instrument": 3}
    assert m["first_bad_line"] == {"non_numeric": 20_010, "instrument": 3000}
    assert ("Instrument column names another instrument (CL, NQ; the file name says ES) 3 "
            "(first at line 3000)") in run.text
    gone = sorted([*foreign, 20_010])
    keep = [i for i in range(es.num_rows) if i + 2 not in gone]  # data row i is on line i + 2
    assert_store_holds(settings, "ES", es.take(keep))
    assert stored(settings, "CL").num_rows == 0 and stored(settings, "NQ").num_rows == 0


def test_a_misnamed_export_is_quarantined_and_stores_nothing(settings: Settings) -> None:
    """CL bars saved under an ES name: every row names CL, the file is refused whole, kept
    unchanged in the quarantine with its reason; the ES store is not touched."""
    es = make_bars("ES")
    put(settings, "ES.csv", es)
    assert run_translator(settings.root).result["status"] == "success"
    cl = make_bars("CL", seed=5, tick=0.01)
    path = put(settings, "DataExport_ES_20251127_023000_UTC.csv", cl, instrument="CL")
    raw = path.read_bytes()
    run = run_translator(settings.root)
    assert run.result["status"] == "partial", run.stdout
    name = path.name
    assert (settings.quarantine_dir / name).read_bytes() == raw
    err = (settings.quarantine_dir / f"{name}.error.txt").read_text()
    assert "rule: instrument\n" in err and "line: 2\n" in err
    assert (f"{name} line 2: Instrument column names another instrument (CL; the file name says ES) — "
            f"{cl.num_rows} of {cl.num_rows} rows are bad") in err
    assert_store_holds(settings, "ES", es)


def test_zero_and_negative_prices_are_legal(settings: Settings) -> None:
    put_text(
        settings,
        "CL.csv",
        "Date,Time,Open,High,Low,Close,Volume,Instrument\n"
        "2020-04-20,18:00:00,1.5,1.7,-2.0,-1.0,100,CL\n"
        "2020-04-20,18:01:00,-1.0,0,-40.32,-37.63,250,CL\n"
        "2020-04-20,18:02:00,0,0,0,0,0,CL\n",
    )
    run = run_translator(settings.root)
    assert run.result["status"] == "success", run.stdout
    assert stored(settings, "CL").column("close").to_pylist() == [-1.0, -37.63, 0.0]


def test_duplicate_timestamps_last_one_wins(settings: Settings) -> None:
    bars = make_bars("ES")
    text = sample.write_bars_csv(settings.root / "x.csv", bars, "exporter", instrument="ES").read_text()
    lines = text.splitlines()
    # repeat rows 100..104 at the end of the file with another close (still inside the bar)
    repeats = []
    for line in lines[100:105]:
        f = line.split(",")
        f[5] = f[3]  # close = high
        repeats.append(",".join(f))
    put_text(settings, "ES.csv", "\n".join(lines + repeats) + "\n")
    run = run_translator(settings.root)
    m = run.metric("ES.csv")
    assert m["duplicates"] == 5 and m["rows_in"] == bars.num_rows + 5 and m["rows_kept"] == bars.num_rows
    got = stored(settings, "ES")
    assert got.column("close").to_pylist()[99:104] == bars.column("high").to_pylist()[99:104]
    assert "5 duplicate timestamp(s), last kept" in run.text
    assert run.counts["duplicates"] == 5


# --- file-level rejections ------------------------------------------------------------------------


def test_unusable_files_are_quarantined_with_a_reason(settings: Settings) -> None:
    put_text(settings, "DataExport_CL_20251120_175201_UTC.csv", b"")
    put(settings, "ZZ.csv", make_bars("ES"))
    put(settings, "notes.csv", make_bars("ES"))
    put_text(settings, "GC.csv", "hello,world\n1,2\n")
    put_text(settings, "YM.csv", "Date,Time,Open,High,Low,Close\n2025-11-25,14:00:00,1,1,1,1\n")
    good = put(settings, "ES.csv", make_bars("ES"))
    from pipeline_core import rawfiles

    sig = rawfiles.complete_signal(settings, "DataExport_CL_20251120_175201_UTC.csv")
    sig.write_text('{"status": "complete", "totalBarsProcessed": 0, "fileSizeBytes": 0}')
    run = run_translator(settings.root)
    assert run.rc == 0 and run.result["status"] == "partial"
    assert run.counts["quarantined"] == 5 and run.counts["translated"] == 1
    q = settings.quarantine_dir
    expect = {
        "DataExport_CL_20251120_175201_UTC.csv": ("empty", "zero-byte file"),
        "ZZ.csv": ("file_name", "instrument 'ZZ' is not in the configured instrument table"),
        "notes.csv": ("file_name", "file name matches no accepted form"),
        "GC.csv": ("format", "GC.csv line 1: unrecognised first line 'hello,world'"),
        "YM.csv": ("format", "YM.csv line 1: header lacks column(s) volume"),
    }
    for name, (rule, reason) in expect.items():
        err = (q / f"{name}.error.txt").read_text()
        assert f"rule: {rule}\n" in err and reason in err, err
        assert (q / name).exists() and not (settings.raw_dir / name).exists()
    assert (q / "logs" / sig.name).exists() and not sig.exists()  # its signal went with it
    assert not good.exists() and stored(settings, "ES").num_rows > 0


def test_a_second_rejection_of_the_same_name_keeps_both(settings: Settings) -> None:
    from pipeline_core import rawfiles

    for n in range(2):
        put_text(settings, "ZZ.csv", "x\n")
        rawfiles.complete_signal(settings, "ZZ.csv").write_text(f'{{"status": "complete", "export": {n}}}')
        assert run_translator(settings.root).result["status"] == "partial"
    q = settings.quarantine_dir
    assert sorted(p.name for p in q.iterdir() if p.is_file()) == ["ZZ-2.csv", "ZZ-2.csv.error.txt", "ZZ.csv", "ZZ.csv.error.txt"]
    # each file's signal is kept too: the second does not replace the first
    signals = sorted((q / "logs").iterdir())
    assert sorted(json.loads(p.read_text())["export"] for p in signals) == [0, 1]


# --- readiness ------------------------------------------------------------------------------------


def test_files_still_being_written_are_not_touched(settings: Settings) -> None:
    from pipeline_core import rawfiles

    exporting = put(settings, "DataExport_ES_20251127_023046_UTC.csv", make_bars("ES"))
    sample.write_export_signal(settings, exporting, "ES", 1000, "progress")
    fresh = put(settings, "NQ.csv", make_bars("NQ"), age=0)  # just modified, no signal
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (exporting, fresh)}
    run = run_translator(settings.root)
    assert run.rc == 0 and run.result["status"] == "success"
    assert run.counts["files"] == 0 and run.counts["waiting"] == 2
    assert "no raw files ready (2 still being written)" == run.result["msg"]
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (exporting, fresh)} == before
    assert not list(settings.processed_dir.rglob("*.parquet"))
    assert rawfiles.progress_signal(settings, exporting.name).exists()


def test_stale_export_is_translated_with_a_warning(settings: Settings) -> None:
    from pipeline_core import rawfiles

    f = put(settings, "DataExport_ES_20251127_023046_UTC.csv", make_bars("ES"))
    sig = sample.write_export_signal(settings, f, "ES", 1000, "progress")
    settle(sig, settings.export_stale_seconds + 60)
    run = run_translator(settings.root)
    assert run.result["status"] == "success" and run.counts["stale"] == 1
    assert any("export never completed" in w["msg"] for w in run.of("warning"))
    assert stored(settings, "ES").num_rows > 0
    assert not sig.exists() and archived(settings, "logs/" + sig.name)
    assert not rawfiles.progress_signal(settings, f.name).exists()


def test_complete_signal_is_archived_with_its_file(settings: Settings) -> None:
    [f] = sample.write_samples(settings, days=2, instruments=["GC"], end=END)
    sig = settings.raw_logs_dir / f"export_complete_{f.stem}.json"
    run = run_translator(settings.root)  # fresh file, but the exporter said it is complete
    assert run.result["status"] == "success"
    assert not f.exists() and not sig.exists()
    [day] = list(settings.archive_dir.iterdir())
    assert (day / f.name).exists() and (day / "logs" / sig.name).exists()
    assert day.name == datetime.now(CHICAGO).strftime("%Y-%m-%d") or day.name == (datetime.now(CHICAGO) - timedelta(minutes=1)).strftime("%Y-%m-%d")


# --- ingestion bookkeeping ----------------------------------------------------------------------


def test_same_file_twice_is_ingested_once(settings: Settings) -> None:
    bars = make_bars("ES")
    f = put(settings, "ES.csv", bars)
    content = f.read_bytes()
    first = run_translator(settings.root)
    assert first.counts["translated"] == 1
    year_file = store.store_path(settings, "ES", 2025)
    snap = year_file.read_bytes(), year_file.stat().st_mtime_ns
    changes_before = catalog.open_catalog(settings).read_changes()
    (settings.raw_dir / "ES.csv").write_bytes(content)
    settle(settings.raw_dir / "ES.csv")
    second = run_translator(settings.root)
    assert second.rc == 0 and second.result["status"] == "success"
    assert second.counts["already_ingested"] == 1 and second.counts["translated"] == 0
    rec = manifest(settings)[0]
    [w] = [w for w in second.of("warning") if "already ingested" in w["msg"]]
    assert f"already ingested at {rec['ingested_at']}" in w["msg"]
    assert (year_file.read_bytes(), year_file.stat().st_mtime_ns) == snap
    assert catalog.open_catalog(settings).read_changes() == changes_before
    names = sorted(p.name for p in settings.archive_dir.glob("*/*.csv"))
    assert names == ["ES-2.csv", "ES.csv"]  # archived like any other
    assert not (settings.raw_dir / "ES.csv").exists()
    # the copy is in the catalogue as what it is, so the archive holds nothing unknown
    ingested, copy = manifest(settings)
    assert ingested["status"] == "ingested" and ingested["archived_path"].endswith("/ES.csv")
    assert copy["status"] == "already_ingested" and copy["archived_path"].endswith("/ES-2.csv")
    assert copy["sha256"] == ingested["sha256"] and copy["instrument"] == "ES"
    assert repair.verify(settings) == []
    # a data root from before copies were recorded: the archived copy is still known by its hash
    with sqlite3.connect(settings.catalog_path) as db:
        db.execute("DELETE FROM raw_files WHERE status = 'already_ingested'")
    assert len(manifest(settings)) == 1
    assert repair.verify(settings) == []
    (settings.archive_dir / "x.csv").write_bytes(content + b"2025-11-25,14:00:00,1,1,1,1,1,ES\n")
    [p] = repair.verify(settings)
    assert (p.problem, p.path, p.detail) == ("unknown", "data/raw/archive/x.csv", "archived file not in the catalogue")


def test_a_copy_in_the_same_run_is_reported_with_the_manifest_time(settings: Settings) -> None:
    f = put(settings, "ES.csv", make_bars("ES"), age=7200)  # older: translated first
    copy = settings.raw_dir / "DataExport_ES_20251127_023046_UTC.csv"
    copy.write_bytes(f.read_bytes())
    settle(copy)
    run = run_translator(settings.root)
    assert run.counts["translated"] == 1 and run.counts["already_ingested"] == 1
    rec, again = manifest(settings)
    assert rec["name"] == "ES.csv" and again["name"] == copy.name and again["status"] == "already_ingested"
    [w] = [w for w in run.of("warning") if "already ingested" in w["msg"]]
    assert w["data"]["ingested_at"] == rec["ingested_at"]


def test_newer_file_wins_on_equal_timestamps(settings: Settings) -> None:
    bars = make_bars("ES")
    old = put(settings, "ES.csv", bars, age=7200)
    newer = bars.slice(100, 50)
    newer = newer.set_column(4, "close", newer.column("high"))
    put(settings, "DataExport_ES_20251127_023046_UTC.csv", newer, age=3600)
    run = run_translator(settings.root)
    assert run.counts["translated"] == 2 and not old.exists()
    got = stored(settings, "ES")
    assert got.column("close").to_pylist()[100:150] == newer.column("close").to_pylist()
    assert got.num_rows == bars.num_rows
    m = run.metric("DataExport_ES_20251127_023046_UTC.csv")
    changed = [i for i in range(50) if newer.column("close")[i].as_py() != bars.column("close")[100 + i].as_py()]
    assert m["changed_first"] == newer.column("timestamp")[changed[0]].as_py().astimezone(CHICAGO).isoformat()


def test_changes_widen_over_files_for_the_analyzer(settings: Settings) -> None:
    a = make_bars("ES", days=1, end=date(2025, 11, 20))
    b = make_bars("ES", days=1, end=date(2025, 11, 25))
    put(settings, "ES.csv", a)
    run_translator(settings.root)
    put(settings, "DataExport_ES_20251127_023046_UTC.csv", b)
    run_translator(settings.root)
    first, last = catalog.open_catalog(settings).read_changes()["ES"]
    assert first == a.column("timestamp")[0].as_py() and last == b.column("timestamp")[-1].as_py()


@pytest.mark.parametrize("policy", ["delete", "keep"])
def test_raw_policy(root: Path, policy: str) -> None:
    (root / "qtsw.toml").write_text(f'[input]\nraw_policy = "{policy}"\n')
    s = load_settings(root=root, env=ENV)
    [f] = sample.write_samples(s, days=1, instruments=["YM"], end=END)
    sig = s.raw_logs_dir / f"export_complete_{f.stem}.json"
    run = run_translator(root)
    assert run.counts["translated"] == 1
    assert not s.archive_dir.exists() or not any(s.archive_dir.rglob("*.csv"))
    if policy == "delete":
        assert not f.exists() and not sig.exists()
    else:
        assert f.exists() and sig.exists()
        again = run_translator(root)  # a kept file is not picked up again
        assert again.counts["files"] == 0 and again.result["msg"] == "no raw files ready"
    assert stored(s, "YM").num_rows > 0


def test_no_raw_files_is_a_quick_success(settings: Settings) -> None:
    run = run_translator(settings.root)
    assert run.rc == 0 and run.result == {"status": "success", "msg": "no raw files ready", "counts": run.counts, "error": None}
    assert run.counts["files"] == 0


def test_bad_settings_fail_with_exit_code_2(root: Path) -> None:
    (root / "qtsw.toml").write_text('[input]\nraw_policy = "shred"\n')
    run = run_translator(root)
    assert run.rc == 2 and run.result["status"] == "failure"
    assert "input.raw_policy" in run.result["error"]


# --- crash safety ---------------------------------------------------------------------------------


def _store_snapshot(settings: Settings) -> dict[str, pa.Table]:
    return {p.name: pq.read_table(p) for p in sorted(settings.processed_dir.rglob("*.parquet"))}


def _rows(t: pa.Table) -> dict[int, tuple]:
    cols = [t.column(c).to_pylist() for c in ("timestamp", "open", "high", "low", "close", "volume")]
    return {int(r[0].timestamp() * 1000): r[1:] for r in zip(*cols, strict=True)}


@pytest.mark.parametrize("kill_at", [1, 2])
def test_sigkill_while_writing_the_store_loses_and_doubles_nothing(settings: Settings, kill_at: int) -> None:
    # The store holds Dec 2024 - Jan 2025; a new file corrects and extends both years.
    base = sample.generate_bars("ES", 0.25, sample.trading_days(date(2025, 1, 8), 8), seed=1)
    put(settings, "ES.csv", base)
    assert run_translator(settings.root).counts["translated"] == 1
    old = {k: _rows(t) for k, t in _store_snapshot(settings).items()}
    assert sorted(old) == ["ES_2024.parquet", "ES_2025.parquet"]
    update = sample.generate_bars("ES", 0.25, sample.trading_days(date(2025, 1, 10), 10), seed=2)
    expected = {**_rows(base), **_rows(update)}
    new = {
        f"ES_{y}.parquet": {k: v for k, v in expected.items() if datetime.fromtimestamp(k / 1000, CHICAGO).year == y}
        for y in (2024, 2025)
    }
    assert all(new[k] != old[k] for k in old)  # both years change
    f = put(settings, "DataExport_ES_20250111_023046_UTC.csv", update)
    content = f.read_bytes()
    # killed between writing a temp file and renaming it (the kill_at-th year file; the
    # years are written in parallel, so with 2 the other year may already be renamed)
    run = run_translator(settings.root, env={fsutil.CRASH_BEFORE_RENAME_ENV: str(kill_at)})
    assert run.rc == -9, run.stdout + run.stderr
    assert not any(m.type == "result" for m in run.messages)
    now = {k: _rows(t) for k, t in _store_snapshot(settings).items()}  # every file reads
    assert sorted(now) == sorted(old)
    for k in now:
        assert now[k] in (old[k], new[k]), k  # old or new, never partial
    if kill_at == 1:
        assert now == old
    assert f.exists() and f.read_bytes() == content  # not archived: the store write was not durable
    assert [r["name"] for r in manifest(settings)] == ["ES.csv"]
    assert list(settings.processed_dir.rglob(".*.tmp"))  # the interrupted temp file
    # the analyzer's pending range already covers the new file, before any store file changed
    first, last = catalog.open_catalog(settings).read_changes()["ES"]
    assert first <= update.column("timestamp")[0].as_py() and last >= update.column("timestamp")[-1].as_py()
    rerun = run_translator(settings.root)
    assert rerun.rc == 0 and rerun.result["status"] == "success"
    assert rerun.counts["translated"] == 1
    assert "temporary file(s) left in the store" in rerun.text
    assert not list(settings.processed_dir.rglob(".*.tmp"))
    got = stored(settings, "ES")
    ts = got.column("timestamp").cast(pa.int64()).to_pylist()
    assert ts == sorted(expected)  # nothing lost, nothing doubled
    assert _rows(got) == expected
    assert [r["name"] for r in manifest(settings)] == ["ES.csv", f.name]
    assert archived(settings, f.name) and not f.exists()


def test_no_pandas_in_the_translator_process(settings: Settings) -> None:
    # pandas costs a third of a second at start-up; a whole translator run must not pull it in
    put(settings, "ES.csv", make_bars("ES"))
    code = (
        "import sys\n"
        "from pipeline_core import translator\n"
        f"code = translator.main(['--root', {str(settings.root)!r}])\n"
        "assert code == 0, code\n"
        "assert 'pandas' not in sys.modules, 'pandas imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV, timeout=60)
    assert list(settings.processed_dir.glob("ES/*.parquet"))


def test_line_numbers_count_blank_lines_and_skip_nothing(settings: Settings) -> None:
    bars = make_bars("ES")
    text = _exporter_text(bars, "ES", settings.root)
    lines = text.splitlines()
    lines.insert(3, "")  # a blank line 4
    lines.insert(5, "")  # and line 6
    lines[20] = BAD_ROWS["high_low"]
    lines[25] = BAD_ROWS["malformed"]
    put_text(settings, "ES.csv", "\r\n".join(lines) + "\r\n")
    run = run_translator(settings.root)
    m = run.metric("ES.csv")
    assert m["first_bad_line"] == {"high_low": 21, "malformed": 26}
    assert m["dropped"] == {"high_low": 1, "malformed": 1}


def test_large_file_is_cut_into_pieces_without_losing_a_row(settings: Settings) -> None:
    # 60 trading days (~4.5 MB) with pieces of 256 KiB: many pieces, every row kept once.
    bars = make_bars("ES", days=60)
    put(settings, "ES.csv", bars)
    text = (settings.raw_dir / "ES.csv").read_text()
    bad_line = 40_000
    put_text(settings, "ES.csv", with_line(text, bad_line, BAD_ROWS["open_close"]))
    run = run_translator(settings.root, env={"QTSW_TRANSLATOR_PIECE_BYTES": str(256 * 1024)})
    m = run.metric("ES.csv")
    assert m["first_bad_line"] == {"open_close": bad_line}
    kept = pa.concat_tables([bars.slice(0, bad_line - 2), bars.slice(bad_line - 1)])
    assert_store_holds(settings, "ES", kept)


def test_unsorted_file_is_stored_sorted(settings: Settings) -> None:
    bars = make_bars("ES")
    idx = np.random.default_rng(1).permutation(bars.num_rows)
    put(settings, "ES.csv", bars.take(pa.array(idx)))
    run = run_translator(settings.root)
    assert run.result["status"] == "success"
    assert_store_holds(settings, "ES", bars)


def test_semicolon_header_and_a_repeated_wall_time(root: Path) -> None:
    (root / "qtsw.toml").write_text('[input]\ntimezones = [{pattern = "NQ.csv", timezone = "America/Chicago"}]\n')
    s = load_settings(root=root, env=ENV)
    s.ensure_dirs()
    put_text(s, "ES.csv", "Date;Time;Open;High;Low;Close;Volume;Instrument\n2025-11-24;23:00:00;6000;6001;5999.5;6000.5;3;ES\n")
    # 01:30 on 2025-11-02 happens twice in Chicago; the first (CDT) is taken, and said so
    put_text(s, "NQ.csv", "Date,Time,Open,High,Low,Close,Volume,Instrument\n2025-11-02,01:30:00,1,1,1,1,1,NQ\n2025-11-03,08:30:00,1,1,1,1,1,NQ\n")
    run = run_translator(root)
    assert run.result["status"] == "success", run.stdout
    assert stored(s, "ES").column("timestamp").to_pylist() == [datetime(2025, 11, 24, 17, 0, tzinfo=CHICAGO)]
    first = stored(s, "NQ").column("timestamp").to_pylist()[0]
    assert first.astimezone(CHICAGO).isoformat() == "2025-11-02T01:30:00-05:00"
    assert run.metric("NQ.csv")["ambiguous"] == 1
    assert any("occurs twice" in w["msg"] for w in run.of("warning"))


# --- instruments side by side ----------------------------------------------------------------------


def test_instruments_translated_side_by_side_each_store_as_alone(settings: Settings, tmp_path: Path) -> None:
    (settings.root / "qtsw.toml").write_text("[engine]\nworkers = 3\n")
    s = load_settings(root=settings.root, env=ENV)
    days = {"ES": 3, "NQ": 4, "GC": 5}  # different sizes: nothing can be a copy of another
    files = {inst: put(s, f"DataExport_{inst}_20251127_0{i}0000_UTC.csv", make_bars(inst, days=n, seed=i))
             for i, (inst, n) in enumerate(days.items(), start=1)}
    groups = translator.concurrent_groups(sorted(files.values(), key=lambda p: p.name), s)
    assert groups is not None and sorted(len(g) for g in groups) == [1, 1, 1]
    # the same files, one after another, on a second root: the reference
    alone = load_settings(root=tmp_path / "alone", env=ENV)
    alone.ensure_dirs()
    for inst, path in files.items():
        (alone.raw_dir / path.name).write_bytes(path.read_bytes())
        settle(alone.raw_dir / path.name)
        assert run_translator(alone.root).counts["translated"] == 1, inst

    run = run_translator(s.root)

    assert run.rc == 0 and run.result["status"] == "success"
    assert run.counts["translated"] == 3 and run.counts["files"] == 3
    assert run.counts["instruments"] == {i: stored(alone, i).num_rows for i in days}
    for inst in days:
        assert stored(s, inst).equals(stored(alone, inst)), inst
        assert archived(s, files[inst].name) and not files[inst].exists()
    # every store file's record matches it, and no intent is left uncommitted
    cat = catalog.open_catalog(s)
    assert not cat.query("SELECT * FROM intents")
    for rec in cat.records(catalog.STORE):
        assert catalog.sha256_file(cat.abs(rec.path)) == rec.sha256
    assert set(catalog.open_catalog(s).read_changes()) == set(days)
    progress = [m["done"] for m in run.of("progress")]
    assert progress == sorted(progress)  # counted up whatever order the files finish in


def test_same_size_or_big_files_go_one_after_another(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    (settings.root / "qtsw.toml").write_text("[engine]\nworkers = 3\n")
    s = load_settings(root=settings.root, env=ENV)
    es = put(s, "ES.csv", make_bars("ES", days=3))
    nq = put_text(s, "NQ.csv", es.read_bytes())  # the same size (a copy, say)
    tr = translator
    assert tr.concurrent_groups([es, nq], s) is None
    gc = put(s, "GC.csv", make_bars("GC", days=4))
    assert tr.concurrent_groups([es, gc], s) is not None
    monkeypatch.setenv(tr.PIECE_BYTES_ENV, str(es.stat().st_size))  # ES now parses in pieces
    assert tr.concurrent_groups([es, gc], s) is None
