"""``qtsw results`` as a script sees it: a real subprocess on the hand-worked fixture of
``results_fixture`` (figures worked out in its docstring), in text, CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from results_fixture import write_fixture

from pipeline_core.settings import Settings


def qtsw(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}
    return subprocess.run([sys.executable, "-m", "qtsw_tui", "--root", str(root), "results", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_text_shows_the_matrix_and_the_statistics(settings: Settings) -> None:
    write_fixture(settings)
    out = qtsw(settings.root)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("Results 2025: dollars per contract, Final rows only")
    head = lines[1].split()
    assert head == ["Stream", *"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), "Total"]
    matrix = {ln.split()[0]: ln.split()[1:] for ln in lines[2:7]}
    assert matrix["ES1"] == ["."] * 9 + ["+163", "+100", ".", "+263"]  # 162.5 rounds away from 0
    assert matrix["ES2"][10] == "+500" and matrix["CL1"][10] == "+130" and matrix["MES1"][10] == "+50"
    assert matrix["Total"] == ["."] * 9 + ["+163", "+780", ".", "+943"]
    stats = {(ln.split()[0], ln.split()[1]): ln.split()[2:] for ln in lines[9:] if ln.strip()}
    # Trades Win Loss BE TIME NoTr Win% PF Avg trade Max DD Points Dollars
    assert stats[("ES1", "all")] == ["5", "2", "2", "1", "0", "1", "40.0", "1.36", "+52.50", "-413", "+5.25", "+263"]
    assert stats[("ES1", "2025-11")][6:] == ["50.0", "1.25", "+50.00", "-400", "+2.00", "+100"]
    assert stats[("MES1", "all")][7] == "-"  # no losses: no profit factor
    assert stats[("ALL", "all")][-2:] == ["-200", "+743"]  # points of different instruments: none


def test_stream_filter_and_provisional_rows_marked(settings: Settings) -> None:
    write_fixture(settings)
    out = qtsw(settings.root, "--stream", "ES1", "--provisional", "--year", "2025")
    assert out.returncode == 0, out.stderr
    assert "provisional rows included (marked *)" in out.stdout
    rows = [ln.split() for ln in out.stdout.splitlines()]
    es1 = next(r for r in rows if r and r[0] == "ES1" and len(r) == 14)
    assert es1[10:] == ["+163", "+263*", ".", "+425"]
    assert not any(r and r[0] in ("CL1", "ES2") for r in rows)


def test_csv_is_one_table_of_streams_and_periods(settings: Settings) -> None:
    write_fixture(settings)
    out = qtsw(settings.root, "--csv")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    by = {(r["stream"], r["period"]): r for r in rows}
    assert float(by[("ES1", "2025-10")]["profit_dollars"]) == 162.5
    assert float(by[("ES1", "all")]["max_drawdown"]) == 412.5
    assert float(by[("ES1", "all")]["win_rate"]) == 0.4
    assert by[("MES1", "all")]["profit_factor"] == ""
    assert float(by[("ALL", "2025")]["profit_dollars"]) == 942.5
    assert by[("ALL", "all")]["profit_points"] == ""


def test_json_holds_matrix_statistics_and_units(settings: Settings) -> None:
    write_fixture(settings)
    out = qtsw(settings.root, "--json", "--month", "10")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["year"] == 2025 and data["month"] == "2025-10"
    assert data["matrix"]["rows"]["ES1"]["2025-10"] == 162.5
    assert data["matrix"]["rows"]["ES1"]["2025-01"] is None
    assert data["matrix"]["totals"]["total"] == 942.5
    es1 = data["statistics"]["ES1"]
    assert set(es1) == {"2025-10", "2025", "all"}
    assert es1["all"]["profit_factor"] == (500 + 500) / (325 + 12.5 + 400)
    assert data["units"]["money"] == "dollars per contract"
    assert data["problems"] == []


def test_a_root_without_results_says_so_and_a_missing_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    out = qtsw(root)
    assert out.returncode == 0
    assert out.stdout.strip() == f"no monthly results under {root / 'data' / 'analyzer_runs'}"
    assert list(root.iterdir()) == []  # nothing written, not even the cache
    out = qtsw(root, "--json")
    assert json.loads(out.stdout)["empty"].startswith("no monthly results")
    missing = tmp_path / "mistyped"
    out = qtsw(missing)
    assert out.returncode == 4
    assert f"data root {missing} does not exist" in out.stderr
    assert not missing.exists()


def test_an_unreadable_monthly_file_is_named_and_the_rest_shown(settings: Settings) -> None:
    write_fixture(settings)
    bad = settings.analyzer_runs_dir / "ES1" / "2025" / "ES1_an_2025_09.parquet"
    bad.write_bytes(b"not parquet")
    out = qtsw(settings.root)
    assert out.returncode == 1
    assert "ES1_an_2025_09.parquet" in out.stderr and "unreadable" in out.stderr
    assert "+263" in out.stdout


def test_bad_arguments_exit_4(settings: Settings) -> None:
    out = qtsw(settings.root, "--csv", "--json")
    assert out.returncode == 4
    out = qtsw(settings.root, "--month", "13")
    assert out.returncode == 4
