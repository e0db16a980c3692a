"""Analyzer stage (SPEC §4.6–§4.8): a real subprocess on a temp root with a real bar store."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time as _time
from datetime import date, datetime, time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline_core import catalog, sample, store
from pipeline_core.analyzer import runner
from pipeline_core.protocol import Reporter, parse
from pipeline_core.results import file_metadata
from pipeline_core.settings import CHICAGO, ENGINE_VERSION, Settings, load_settings

COLUMNS = [  # SPEC §4.6, in this order
    "Date", "Time", "EntryTime", "ExitTime", "Target", "Peak", "Direction", "Result", "Range",
    "Stream", "Instrument", "Session", "Profit", "RangeHigh", "RangeLow", "EntryPrice",
    "ExitPrice", "StopPrice", "TargetPrice", "Final",
]
LAST_DAY = date(2025, 11, 28)
DAYS = sample.trading_days(LAST_DAY, 12)


def add_bars(
    settings: Settings, inst: str, days: list[date], seed: int = 11, until: datetime | None = None
) -> None:
    """Upsert generated bars of ``days`` (before ``until``) into the store and record the change,
    as the translator does."""
    bars = sample.generate_bars(inst, settings.instrument(inst).tick, days, seed=seed)
    if until is not None:
        bars = bars.filter(pc.less(bars.column("timestamp"), pa.scalar(until, bars.schema.field("timestamp").type)))
    changed = store.upsert_bars(settings, inst, bars)
    assert changed is not None
    catalog.open_catalog(settings).record_changes(inst, *changed)


def run_analyzer(settings: Settings, *args: str) -> tuple[int, list, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline_core.analyzer", "--root", str(settings.root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}, "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
    )
    messages = [m for m in map(parse, proc.stdout.splitlines()) if m is not None]
    return proc.returncode, messages, proc.stdout + proc.stderr


def only_result(messages: list):
    results = [m for m in messages if m.type == "result"]
    assert len(results) == 1, messages
    return results[0]


def test_stage_writes_the_run_output_with_its_metadata_and_reports(settings: Settings) -> None:
    # The data ends at 10:15 on the last day, as for a run in the middle of the session.
    add_bars(settings, "ES", DAYS, until=datetime.combine(LAST_DAY, time(10, 15), tzinfo=CHICAGO))
    before_ns = _time.time_ns()

    code, messages, out = run_analyzer(settings, "--instrument", "ES", "--run-id", "run-1")

    assert code == 0, out
    path = settings.analyzer_temp_dir / "run-1" / "ES.parquet"
    table = pq.read_table(path)
    assert table.column_names == COLUMNS
    assert table.schema.field("Date").type == pa.date32()
    assert table.schema.field("EntryTime").type == pa.timestamp("ms", tz="America/Chicago")
    assert table.schema.field("Final").type == pa.bool_()
    assert table.num_rows == len(DAYS) * 7  # every slot of every trading day has its range
    assert table.column("Date").to_pylist() == sorted(table.column("Date").to_pylist())
    assert set(table.column("Stream").to_pylist()) == {"ES1", "ES2"}
    meta = file_metadata(path)
    assert meta["engine_version"] == ENGINE_VERSION
    assert meta["analysis_hash"] == settings.analysis_hash_for("ES")
    assert meta["run_id"] == "run-1" and meta["instrument"] == "ES" and meta["mode"] == "full"
    assert before_ns < int(meta["created_ns"]) < _time.time_ns()
    assert meta["created"].endswith(("-06:00", "-05:00"))  # Chicago offset

    progress = [m for m in messages if m.type == "progress"]
    assert len(progress) >= 2 and all(p.body["instrument"] == "ES" for p in progress)
    assert progress[0].body["done"] == 0
    # Every date holding bars counts, incl. the Sunday-evening start of the first session.
    assert progress[-1].body["done"] == progress[-1].body["total"] >= len(DAYS)
    metric = next(m for m in messages if m.type == "metric")
    for key in ("rows", "dates", "Win", "BE", "Loss", "TIME", "NoTrade", "load_seconds", "analysis_seconds"):
        assert key in metric.body["data"]
    res = only_result(messages)
    assert res.body["status"] == "success"
    counts = res.body["counts"]
    assert counts["rows"] == table.num_rows
    assert sum(counts[r] for r in ("Win", "BE", "Loss", "TIME", "NoTrade")) == table.num_rows

    st = catalog.open_catalog(settings).analyzer_state("ES")
    assert st["analysis_hash"] == settings.analysis_hash_for("ES") and st["last_run_id"] == "run-1"
    # The data ends at the last day's close: its trades' horizons (next day) are incomplete.
    not_final = {d for d, f in zip(table.column("Date").to_pylist(), table.column("Final").to_pylist(),
                                   strict=True) if not f}
    assert st["provisional_dates"] == sorted(d.isoformat() for d in not_final)
    assert LAST_DAY.isoformat() in st["provisional_dates"]
    last = [r for r in table.to_pylist() if r["Date"] == LAST_DAY and r["Time"] in ("10:30", "11:00")]
    assert [(r["Result"], r["Final"]) for r in last] == [("NoTrade", False), ("NoTrade", False)]
    assert "ES" not in catalog.open_catalog(settings).read_changes()
    assert catalog.pending_analysis(settings) == {}


def test_changed_analysis_settings_make_a_full_run_that_says_why(settings: Settings) -> None:
    add_bars(settings, "ES", DAYS)
    assert run_analyzer(settings, "--instrument", "ES", "--run-id", "a")[0] == 0
    (settings.root / "qtsw.toml").write_text('[analysis]\nentry_cutoff = "15:00"\n')
    new = load_settings(root=settings.root, env={})
    new_hash = new.analysis_hash_for("ES")
    assert new_hash != settings.analysis_hash_for("ES")
    assert catalog.pending_analysis(new)["ES"].startswith(
        "analysis settings changed: ES: entry cutoff 16:00:00 -> 15:00:00"
    ) or "entry cutoff 16:00 -> 15:00" in catalog.pending_analysis(new)["ES"]
    add_bars(settings, "ES", [date(2025, 12, 1)])

    code, messages, out = run_analyzer(settings, "--instrument", "ES", "--run-id", "b")

    assert code == 0, out
    [warn] = [m for m in messages if m.type == "warning" and "analysis settings changed" in m.body["msg"]]
    assert "entry cutoff 16:00 -> 15:00" in warn.body["msg"] and "full re-analysis" in warn.body["msg"]
    assert only_result(messages).body["counts"]["mode"] == "full"
    meta = file_metadata(settings.analyzer_temp_dir / "b" / "ES.parquet")
    assert meta["analysis_hash"] == new_hash and meta["mode"] == "full" and meta["replace"] == "1"
    assert json.loads(meta["analysis_settings"]) == new.analysis_dict_for("ES")
    assert catalog.open_catalog(settings).analyzer_state("ES")["analysis_hash"] == new_hash
    assert "ES" not in catalog.open_catalog(settings).read_changes()


def test_unknown_instrument_fails_naming_it(settings: Settings) -> None:
    code, messages, _ = run_analyzer(settings, "--instrument", "XX")
    assert code == 1
    res = only_result(messages)
    assert res.body["status"] == "failure" and "'XX'" in res.body["msg"]


def test_nothing_to_do_reports_zero_dates_and_writes_nothing(settings: Settings) -> None:
    add_bars(settings, "ES", DAYS)
    runner.analyze_instrument(settings, "ES", run_id="first")
    # Suppose every row were final: no changes and no provisional dates are pending.
    st = catalog.open_catalog(settings).analyzer_state("ES")
    catalog.open_catalog(settings).save_analysis("ES", {**st, "provisional_dates": []}, None)

    code, messages, out = run_analyzer(settings, "--instrument", "ES", "--run-id", "idle")

    assert code == 0, out
    res = only_result(messages)
    assert res.body["status"] == "success" and res.body["counts"]["dates"] == 0
    assert not (settings.analyzer_temp_dir / "idle").exists()


def test_a_new_day_reads_and_analyses_only_what_it_touches(settings: Settings) -> None:
    add_bars(settings, "ES", sample.trading_days(LAST_DAY, 300))
    full = runner.analyze_instrument(settings, "ES", run_id="full")
    assert full.mode == "full" and full.dates >= 300

    monday = date(2025, 12, 1)
    add_bars(settings, "ES", [monday], seed=12, until=datetime.combine(monday, time(10, 15), tzinfo=CHICAGO))
    out = runner.analyze_instrument(settings, "ES", run_id="inc", reporter=Reporter(io.StringIO()))

    # Friday 28 Nov (provisional: its horizon is Monday) and Monday 1 Dec.
    assert out.mode == "incremental" and out.dates == 2
    assert out.bars < 4 * 1440  # a few days of bars read, not the year
    rows = pq.read_table(out.output).to_pylist()
    assert {r["Date"] for r in rows} == {LAST_DAY, monday}
    assert all(r["Final"] for r in rows if r["Date"] == LAST_DAY)  # Monday's bars complete them
    assert [r["Final"] for r in rows if r["Date"] == monday and r["Time"] in ("10:30", "11:00")] == [
        False,
        False,
    ]
    st = catalog.open_catalog(settings).analyzer_state("ES")
    assert st["provisional_dates"] == ["2025-12-01"]


def test_the_same_run_analysing_twice_keeps_its_earlier_rows(settings: Settings) -> None:
    add_bars(settings, "ES", DAYS)
    first = runner.analyze_instrument(settings, "ES", run_id="same")
    add_bars(settings, "ES", [date(2025, 12, 1)], seed=12)
    second = runner.analyze_instrument(settings, "ES", run_id="same")

    table = pq.read_table(second.output)
    assert table.num_rows == first.rows + 7
    assert file_metadata(second.output)["mode"] == "full"  # it still covers every date
    dates = table.column("Date").to_pylist()
    assert dates == sorted(dates) and dates[-1] == date(2025, 12, 1)


def test_instruments_run_concurrently_each_with_its_own_state(settings: Settings) -> None:
    for inst in ("ES", "NQ", "CL"):
        add_bars(settings, inst, DAYS)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline_core.analyzer", "--root", str(settings.root),
             "--instrument", inst, "--run-id", "par"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for inst in ("ES", "NQ", "CL")
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]

    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    for inst in ("ES", "NQ", "CL"):
        assert (settings.analyzer_temp_dir / "par" / f"{inst}.parquet").exists()
        assert catalog.open_catalog(settings).analyzer_state(inst)["last_run_id"] == "par"
    assert catalog.open_catalog(settings).read_changes() == {}


def test_a_broken_state_record_is_named_and_a_full_run_rebuilds_it(settings: Settings) -> None:
    add_bars(settings, "ES", DAYS)
    runner.analyze_instrument(settings, "ES", run_id="first")
    cat = catalog.open_catalog(settings)
    with cat.tx() as c:  # a record no qtsw writes: a date that does not exist
        c.execute("UPDATE analyzer SET provisional_dates='[\"2025-13-45\"]' WHERE instrument='ES'")
    path = settings.catalog_path

    code, messages, _ = run_analyzer(settings, "--instrument", "ES", "--run-id", "inc")

    assert code == 1
    res = only_result(messages)
    assert str(path) in res.body["msg"] and "--full" in res.body["msg"]

    code, messages, _ = run_analyzer(settings, "--instrument", "ES", "--run-id", "full", "--full")

    assert code == 0
    assert catalog.open_catalog(settings).analyzer_state("ES")["last_run_id"] == "full"
