"""Merger stage (SPEC §5): per-run analyzer output → monthly files, upsert, atomicity, retries."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import date, datetime, time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from pipeline_core import catalog, fsutil, merger
from pipeline_core.analyzer.strategy import RESULT_SCHEMA
from pipeline_core.protocol import parse
from pipeline_core.results import (
    META_ANALYSIS_HASH,
    META_CREATED,
    META_CREATED_NS,
    META_ENGINE_VERSION,
    META_INSTRUMENT,
    META_MODE,
    META_RUN_ID,
    file_metadata,
    monthly_files,
    monthly_path,
    read_monthly_file,
)
from pipeline_core.settings import CHICAGO, ENGINE_VERSION, Settings, load_settings

SLOTS = {"S1": ("07:30", "08:00", "09:00"), "S2": ("09:30", "10:00", "10:30", "11:00")}


# --- building analyzer output in the documented format ---------------------------------------------


def row(
    inst: str,
    d: date,
    slot: str,
    result: str = "NoTrade",
    *,
    final: bool = True,
    profit: float = 0.0,
    range_high: float = 100.0,
) -> dict:
    """One result row (SPEC §4.6) with plausible values; ``result`` decides the trade columns."""
    session = "S1" if slot in SLOTS["S1"] else "S2"
    trade = result != "NoTrade"
    hh, mm = map(int, slot.split(":"))
    entry = datetime.combine(d, time(hh, mm), tzinfo=CHICAGO) if trade else None
    return {
        "Date": d,
        "Time": slot,
        "EntryTime": entry,
        "ExitTime": entry,
        "Target": 10.0,
        "Peak": 4.0 if trade else 0.0,
        "Direction": "Long" if trade else "NA",
        "Result": result,
        "Range": 5.0,
        "Stream": inst + session[1],
        "Instrument": inst,
        "Session": session,
        "Profit": profit,
        "RangeHigh": range_high,
        "RangeLow": range_high - 5.0,
        "EntryPrice": range_high + 0.25 if trade else None,
        "ExitPrice": range_high + 0.25 + profit if trade else None,
        "StopPrice": range_high - 5.0 if trade else None,
        "TargetPrice": range_high + 10.25 if trade else None,
        "Final": final,
    }


def table_of(rows: list[dict]) -> pa.Table:
    rows = sorted(rows, key=lambda r: (r["Date"], r["Time"]))
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


def write_run(
    settings: Settings,
    run_id: str,
    inst: str,
    rows: list[dict] | pa.Table,
    created_ns: int,
    mode: str = "incremental",
) -> Path:
    """An analyzer output file ``data/analyzer_temp/<run_id>/<INST>.parquet`` with its metadata."""
    table = rows if isinstance(rows, pa.Table) else table_of(rows)
    meta = {
        META_ENGINE_VERSION: ENGINE_VERSION,
        META_ANALYSIS_HASH: settings.analysis_hash,
        META_RUN_ID: run_id,
        META_INSTRUMENT: inst,
        META_CREATED: "2025-01-01T00:00:00-06:00",
        META_CREATED_NS: str(created_ns),
        META_MODE: mode,
    }
    path = settings.analyzer_temp_dir / run_id / f"{inst}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata({k.encode(): v.encode() for k, v in meta.items()}), path)
    return path


def monthly_rows(settings: Settings) -> dict[str, list[dict]]:
    """Every monthly file's rows, keyed by the path relative to the analyzer_runs folder."""
    out = {}
    for files in monthly_files(settings).values():
        for f in files:
            out[str(f.relative_to(settings.analyzer_runs_dir))] = read_monthly_file(f).to_pylist()
    return out


def run_stage(settings: Settings, env: dict | None = None) -> tuple[int, list]:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline_core.merger", "--root", str(settings.root), "--run-id", "r"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdin=subprocess.DEVNULL,
    )
    messages = [m for m in map(parse, proc.stdout.splitlines()) if m is not None]
    return proc.returncode, messages


def result_of(messages: list):
    results = [m for m in messages if m.type == "result"]
    assert len(results) == 1, messages
    return results[0]


D1, D2, D3 = date(2025, 10, 30), date(2025, 10, 31), date(2025, 11, 3)


# --- tests ----------------------------------------------------------------------------------------


def test_stage_writes_monthly_files_by_stream_year_month(settings: Settings) -> None:
    rows = [row("ES", d, s, "Win", profit=10.0) for d in (D1, D2, D3) for s in ("07:30", "09:30")]
    rows.append(row("ES", D3, "10:30", final=False))
    write_run(settings, "run-a", "ES", rows, created_ns=1)
    write_run(settings, "run-a", "NQ", [row("NQ", D1, "08:00", "Loss", profit=-7.5)], created_ns=2)

    code, messages = run_stage(settings)

    assert code == 0
    res = result_of(messages)
    assert res.body["status"] == "success"
    assert res.body["counts"]["files_written"] == 5
    assert res.body["counts"]["rows_added"] == 8
    progress = [m for m in messages if m.type == "progress"]
    assert progress[-1].body["done"] == progress[-1].body["total"] == 5
    metrics = [m for m in messages if m.type == "metric" and "file" in m.body["data"]]
    assert {Path(m.body["data"]["file"]).name for m in metrics} == {
        "ES1_an_2025_10.parquet",
        "ES1_an_2025_11.parquet",
        "ES2_an_2025_10.parquet",
        "ES2_an_2025_11.parquet",
        "NQ1_an_2025_10.parquet",
    }
    oct_es2 = monthly_path(settings, "ES2", 2025, 10)
    assert oct_es2 == settings.analyzer_runs_dir / "ES2" / "2025" / "ES2_an_2025_10.parquet"
    got = read_monthly_file(oct_es2)
    assert got.schema.equals(RESULT_SCHEMA)
    assert got.column("Date").to_pylist() == [D1, D2]
    nov_es2 = read_monthly_file(monthly_path(settings, "ES2", 2025, 11)).to_pylist()
    assert [(r["Time"], r["Final"]) for r in nov_es2] == [("09:30", True), ("10:30", False)]
    meta = file_metadata(oct_es2)
    assert meta[META_ENGINE_VERSION] == ENGINE_VERSION
    assert meta[META_ANALYSIS_HASH] == settings.analysis_hash
    assert not (settings.analyzer_temp_dir / "run-a").exists()


def test_provisional_row_is_replaced_never_duplicated(settings: Settings) -> None:
    write_run(settings, "early", "ES", [row("ES", D3, "10:30", final=False)], created_ns=10)
    merger.merge(settings)
    write_run(settings, "later", "ES", [row("ES", D3, "10:30", "Win", profit=10.0)], created_ns=20)
    summary = merger.merge(settings)

    assert summary.ok
    rows = read_monthly_file(monthly_path(settings, "ES2", 2025, 11)).to_pylist()
    assert len(rows) == 1
    assert (rows[0]["Result"], rows[0]["Direction"], rows[0]["Final"]) == ("Win", "Long", True)
    assert summary.groups[0].replaced == 1 and summary.groups[0].added == 0


def test_newer_run_wins_regardless_of_folder_name(settings: Settings) -> None:
    # Folder names sort the other way round from the runs' creation order.
    write_run(settings, "a-newer", "ES", [row("ES", D1, "08:00", "Win", profit=10.0)], created_ns=200)
    write_run(settings, "b-older", "ES", [row("ES", D1, "08:00", "Loss", profit=-5.0)], created_ns=100)
    summary = merger.merge(settings)

    assert summary.ok and sorted(summary.folders_removed) == ["a-newer", "b-older"]
    rows = read_monthly_file(monthly_path(settings, "ES1", 2025, 10)).to_pylist()
    assert [(r["Result"], r["Profit"]) for r in rows] == [("Win", 10.0)]


def test_merging_the_same_run_twice_changes_nothing(settings: Settings, tmp_path: Path) -> None:
    rows = [row("ES", d, s, "Loss", profit=-3.0) for d in (D1, D2, D3) for s in SLOTS["S1"]]
    write_run(settings, "run", "ES", rows, created_ns=5)
    shutil.copytree(settings.analyzer_temp_dir / "run", tmp_path / "copy")
    merger.merge(settings)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for fs in monthly_files(settings).values() for p in fs}

    shutil.copytree(tmp_path / "copy", settings.analyzer_temp_dir / "run")
    summary = merger.merge(settings)

    assert summary.ok and summary.folders_removed == ["run"]
    assert {g.action for g in summary.groups} == {"unchanged"}
    assert sum(g.unchanged for g in summary.groups) == len(rows)
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for fs in monthly_files(settings).values() for p in fs}
    assert after == before
    # And with nothing left to merge, a third merge does nothing at all.
    assert merger.merge(settings).groups == []


def test_corrupt_run_file_keeps_its_folder_and_fails_the_stage(settings: Settings) -> None:
    write_run(settings, "good", "ES", [row("ES", D1, "07:30")], created_ns=1)
    bad = settings.analyzer_temp_dir / "bad" / "NQ.parquet"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"PAR1 this is not parquet")

    code, messages = run_stage(settings)

    assert code == 1
    res = result_of(messages)
    assert res.body["status"] == "failure"
    assert str(bad) in res.body["error"] and "unreadable" in res.body["error"]
    assert "bad" in res.body["msg"]  # the kept folder is named
    assert bad.exists()
    assert not (settings.analyzer_temp_dir / "good").exists()
    assert monthly_path(settings, "ES1", 2025, 10).exists()


def test_schema_mismatch_names_the_column(settings: Settings) -> None:
    table = table_of([row("ES", D1, "07:30")]).drop_columns(["Peak"])
    path = settings.analyzer_temp_dir / "odd" / "ES.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)

    summary = merger.merge(settings)

    assert not summary.ok
    assert summary.errors == [f"{path}: schema mismatch: missing column(s) Peak"]
    assert path.exists() and monthly_files(settings) == {}


def test_failed_group_keeps_the_run_and_the_retry_does_not_undo_newer_rows(settings: Settings) -> None:
    # Run A (older) feeds October and November; run B (newer) rewrites A's November row.
    write_run(settings, "A", "ES", [row("ES", D1, "07:30", "Loss", profit=-4.0),
                                    row("ES", D3, "07:30", "Loss", profit=-4.0)], created_ns=1)
    write_run(settings, "B", "ES", [row("ES", D3, "07:30", "Win", profit=10.0)], created_ns=2)
    october = monthly_path(settings, "ES1", 2025, 10)
    october.parent.mkdir(parents=True)
    october.write_bytes(b"garbage, not a parquet file")  # the October group cannot be merged

    code, messages = run_stage(settings)

    # a damaged monthly file blocks its own stream and month: the stage is partial, names it
    assert code == 0
    res = result_of(messages)
    assert res.body["status"] == "partial" and str(october) in res.body["error"]
    assert "qtsw rebuild --instrument ES" in res.body["error"]
    assert (settings.analyzer_temp_dir / "A").exists()  # A's October group failed: A stays
    assert not (settings.analyzer_temp_dir / "B").exists()  # all of B's groups were written
    november = monthly_path(settings, "ES1", 2025, 11)
    assert [r["Result"] for r in read_monthly_file(november).to_pylist()] == ["Win"]

    october.unlink()  # the operator removes the broken file; the next merge retries A
    code, messages = run_stage(settings)

    assert code == 0, messages
    assert not (settings.analyzer_temp_dir / "A").exists()
    assert [r["Result"] for r in read_monthly_file(october).to_pylist()] == ["Loss"]
    # A is older than B: its retry must not lay its November row over B's.
    assert [r["Result"] for r in read_monthly_file(november).to_pylist()] == ["Win"]
    assert catalog.open_catalog(settings).journal() == {}


@pytest.mark.parametrize("kill_at", [1, 3])
def test_merge_killed_mid_way_leaves_files_old_or_new_and_a_rerun_completes(
    settings: Settings, tmp_path: Path, kill_at: int
) -> None:
    days = [date(2025, m, 3) for m in (8, 9, 10)]
    old_rows = [row("ES", d, s, "Loss", profit=-2.0) for d in days for s in ("07:30", "10:00")]
    write_run(settings, "first", "ES", old_rows, created_ns=1)
    merger.merge(settings)
    old = monthly_rows(settings)
    assert len(old) == 6
    new_rows = [row("ES", d, s, "Win", profit=10.0) for d in days for s in ("07:30", "10:00")]
    write_run(settings, "second", "ES", new_rows, created_ns=2)
    # The expected end state, from the same merge on a copy of the data root.
    copy = load_settings(root=shutil.copytree(settings.root, tmp_path / "copy"), env={})
    merger.merge(copy)
    new = monthly_rows(copy)

    code, _ = run_stage(settings, env={fsutil.CRASH_BEFORE_RENAME_ENV: str(kill_at)})

    assert code == -9
    now = monthly_rows(settings)
    assert set(now) == set(old)
    assert all(now[k] in (old[k], new[k]) for k in now)
    assert sum(now[k] == new[k] for k in now) == kill_at - 1
    assert (settings.analyzer_temp_dir / "second").exists()

    code, messages = run_stage(settings)

    assert code == 0 and result_of(messages).body["status"] == "success"
    assert monthly_rows(settings) == new
    assert not (settings.analyzer_temp_dir / "second").exists()
    assert list(settings.analyzer_runs_dir.rglob("*.tmp")) == []


def test_full_run_drops_rows_and_months_it_no_longer_holds(settings: Settings) -> None:
    write_run(settings, "inc", "ES", [row("ES", D1, "07:30"), row("ES", D1, "11:00"),
                                      row("ES", D3, "07:30")], created_ns=1)
    write_run(settings, "inc", "NQ", [row("NQ", D1, "07:30")], created_ns=1)
    merger.merge(settings)
    # A full re-analysis (say, slot 11:00 removed from the settings) holds only October S1.
    write_run(settings, "full", "ES", [row("ES", D1, "07:30", "Win", profit=10.0)], created_ns=2, mode="full")

    summary = merger.merge(settings)

    assert summary.ok
    files = {str(p.relative_to(settings.analyzer_runs_dir)) for fs in monthly_files(settings).values() for p in fs}
    assert files == {"ES1/2025/ES1_an_2025_10.parquet", "NQ1/2025/NQ1_an_2025_10.parquet"}
    assert [r["Result"] for r in read_monthly_file(monthly_path(settings, "ES1", 2025, 10)).to_pylist()] == ["Win"]
    assert {g.action for g in summary.groups if g.stream == "ES2"} == {"deleted"}


def test_full_run_also_drops_rows_of_older_runs_in_the_same_merge(settings: Settings) -> None:
    write_run(settings, "old", "ES", [row("ES", D1, "07:30"), row("ES", D3, "07:30")], created_ns=1)
    write_run(settings, "full", "ES", [row("ES", D1, "07:30", "Win", profit=10.0)], created_ns=2, mode="full")
    write_run(settings, "newer", "ES", [row("ES", D3, "08:00", "Loss", profit=-2.0)], created_ns=3)

    assert merger.merge(settings).ok

    assert {k: [(r["Date"], r["Time"], r["Result"]) for r in v] for k, v in monthly_rows(settings).items()} == {
        "ES1/2025/ES1_an_2025_10.parquet": [(D1, "07:30", "Win")],
        "ES1/2025/ES1_an_2025_11.parquet": [(D3, "08:00", "Loss")],  # the older 07:30 row is gone
    }


def test_nothing_to_merge_is_a_success(settings: Settings) -> None:
    code, messages = run_stage(settings)
    assert code == 0
    res = result_of(messages)
    assert res.body["status"] == "success" and res.body["counts"]["groups"] == 0


# --- invariant: any batching of runs into merges gives the newest row per key ----------------------

KEYS = [(d, s) for d in (D1, D2, D3, date(2025, 12, 1)) for s in ("07:30", "09:00", "10:00", "11:00")]
RESULTS = ["Win", "BE", "Loss", "TIME", "NoTrade"]

run_strategy = st.lists(
    st.dictionaries(st.sampled_from(KEYS), st.tuples(st.sampled_from(RESULTS), st.booleans()), max_size=8),
    min_size=1,
    max_size=5,
)


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=run_strategy, merge_after=st.lists(st.booleans(), min_size=5, max_size=5), data=st.data())
def test_merged_files_hold_the_newest_row_of_every_key(
    tmp_path_factory: pytest.TempPathFactory, runs: list, merge_after: list, data: st.DataObject
) -> None:
    root = tmp_path_factory.mktemp("root")
    settings = load_settings(root=root, env={})
    settings.ensure_dirs()
    model: dict = {}
    # Folder names sort differently from the order the runs were created in.
    names = data.draw(st.permutations(range(len(runs))))
    for i, spec in enumerate(runs):
        rows = [row("ES", d, s, r, final=f, profit=float(i)) for (d, s), (r, f) in spec.items()]
        write_run(settings, f"run{names[i]}", "ES", rows, created_ns=1000 + i)
        model.update({(r["Date"], r["Time"]): r for r in rows})
        if merge_after[i] or i == len(runs) - 1:
            assert merger.merge(settings).ok
    got = [r for rows in monthly_rows(settings).values() for r in rows]
    assert sorted(((r["Date"], r["Time"]), r["Result"], r["Profit"], r["Final"]) for r in got) == sorted(
        ((k, r["Result"], r["Profit"], r["Final"]) for k, r in model.items())
    )
    for rows in monthly_rows(settings).values():
        assert [(r["Date"], r["Time"]) for r in rows] == sorted((r["Date"], r["Time"]) for r in rows)
    assert list(settings.analyzer_temp_dir.iterdir()) == []


def test_a_month_that_cannot_be_written_fails_alone_and_the_retry_completes(settings: Settings) -> None:
    # the monthly files of a merge are written together: one that fails must not take the others
    write_run(settings, "A", "ES", [row("ES", D1, "07:30", "Win", profit=10.0), row("ES", D3, "07:30")],
              created_ns=1)
    october = monthly_path(settings, "ES1", 2025, 10)
    november = monthly_path(settings, "ES1", 2025, 11)

    code, messages = run_stage(settings, env={"QTSW_FAIL_WRITE": f"*/{october.name}"})

    res = result_of(messages)
    assert code == 1 and res.body["status"] == "failure"
    assert str(october) in res.body["error"] and "No space left on device" in res.body["error"]
    assert not october.exists() and not list(october.parent.glob(".*.tmp"))
    assert [r["Result"] for r in read_monthly_file(november).to_pylist()] == ["NoTrade"]
    cat = catalog.open_catalog(settings)
    assert cat.record(november) is not None and cat.record(october) is None
    assert not cat.query("SELECT * FROM intents")
    assert (settings.analyzer_temp_dir / "A").exists()  # kept for the retry

    code, messages = run_stage(settings)

    assert code == 0 and result_of(messages).body["status"] == "success"
    assert [r["Result"] for r in read_monthly_file(october).to_pylist()] == ["Win"]
    assert [r["Result"] for r in read_monthly_file(november).to_pylist()] == ["NoTrade"]
    assert not (settings.analyzer_temp_dir / "A").exists()
    assert catalog.sha256_file(october) == catalog.open_catalog(settings).record(october).sha256
