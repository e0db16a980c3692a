"""Results follow the settings: a change of the analysis settings re-analyses the instruments it
affects by itself, and the monthly rows then equal those of a root built with the new settings
from the start. Real runs on sample data."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_cli import END, monthly_tables, qtsw

from pipeline_core.results import monthly_files
from pipeline_core.settings import load_settings

SESSIONS = """[sessions]
S1 = {{range_start = "{s1}", slots = [{s1_slots}]}}
S2 = {{range_start = "08:00", slots = [{s2_slots}]}}
"""
S1 = '"07:30", "08:00", "09:00"'
S2 = '"09:30", "10:00", "10:30", "11:00"'

CHANGES = {
    "slot_removed": SESSIONS.format(s1="02:00", s1_slots=S1, s2_slots='"09:30", "10:00", "10:30"'),
    "slot_added": SESSIONS.format(s1="02:00", s1_slots=S1, s2_slots=S2 + ', "11:30"'),
    "range_start_moved": SESSIONS.format(s1="03:00", s1_slots=S1, s2_slots=S2),
    "tick_changed": '[instruments]\nES = {tick = 0.5, target = 10}\nNQ = {tick = 0.25, target = 50}\n',
    "instrument_removed": '[instruments]\nES = {tick = 0.25, target = 10}\n',
}


def build(root: Path, toml: str | None) -> None:
    got = qtsw("--root", str(root), "sample", "--days", "5", "--end", END, "--instruments", "ES,NQ")
    assert got.returncode == 0, got.stderr
    if toml is not None:
        (root / "qtsw.toml").write_text(toml)


def run(root: Path) -> str:
    got = qtsw("--root", str(root), "--run-now", "--no-ui", "-v")
    assert got.returncode in (0, 1), got.stdout + got.stderr  # 1: NQ quarantined without NQ
    return got.stdout


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_settings_change_re_analyses_and_equals_a_clean_root(tmp_path: Path, change: str) -> None:
    root, clean = tmp_path / "root", tmp_path / "clean"
    build(root, None)
    run(root)
    before = monthly_tables(load_settings(root=root, env={}))
    (root / "qtsw.toml").write_text(CHANGES[change])

    status = qtsw("--root", str(root), "status")
    assert "results from other settings" in status.stdout, status.stdout
    out = run(root)
    if change == "instrument_removed":
        assert "NQ is no longer in the settings" in out
    else:
        assert "analysis settings changed: ES:" in out and "full re-analysis" in out

    build(clean, CHANGES[change])
    run(clean)
    s, c = load_settings(root=root, env={}), load_settings(root=clean, env={})
    got, want = monthly_tables(s), monthly_tables(c)
    assert got.keys() == want.keys() and got
    for name in want:
        assert got[name].equals(want[name]), name
    assert got != before
    assert "results match the current analysis settings" in qtsw("--root", str(root), "status").stdout
    # the settings that produced a monthly file are readable from the file itself
    path = monthly_files(s)["ES1"][0]
    meta = pq.read_schema(path).metadata
    assert json.loads(meta[b"analysis_settings"]) == s.analysis_dict_for("ES")
    report = qtsw("--root", str(root), "status", "--json")
    assert json.loads(report.stdout)["results_settings"]["stale"] == {}


def test_a_change_that_decides_no_result_re_analyses_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    build(root, None)
    run(root)
    before = monthly_tables(load_settings(root=root, env={}))
    (root / "qtsw.toml").write_text("[timeouts]\nmerger = 900\n\n[engine]\nworkers = 1\n")
    assert "results match the current analysis settings" in qtsw("--root", str(root), "status").stdout
    out = run(root)
    assert "analyzer skipped" in out.lower() or "analyzer  skipped" in out, out
    after = monthly_tables(load_settings(root=root, env={}))
    assert after.keys() == before.keys()
    for name in before:
        assert after[name].equals(before[name]), name
