"""Data that cannot be silently lost: the catalogue, checksums, verify and rebuild (SPEC §11.1).

Real data roots, real stage processes through the real command line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from test_cli import END, clean_env, headless_run, monthly_tables, qtsw, read_until, store_tables

from pipeline_core import catalog, history
from pipeline_core.proc import RUN_ID_VAR, processes_with_env
from pipeline_core.results import monthly_files
from pipeline_core.settings import Settings, load_settings


def settings_for(root: Path) -> Settings:
    return load_settings(root=root, env={})


def sample(root: Path, days: int, *extra: str) -> None:
    got = qtsw("--root", str(root), "sample", "--days", str(days), "--end", END, *extra)
    assert got.returncode == 0, got.stderr


def run_now(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return qtsw("--root", str(root), "--run-now", "--no-ui", *extra)


def flip_byte(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def es_store_file(s: Settings) -> Path:
    [p] = sorted((s.processed_dir / "ES").glob("ES_*.parquet"))
    return p


def es1_monthly(s: Settings) -> Path:
    return monthly_files(s)["ES1"][-1]


def same_tables(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        assert a[k].equals(b[k]), k


def test_bit_rot_is_named_never_rewritten_and_rebuilt_exactly(tmp_path: Path) -> None:
    root = tmp_path / "root"
    sample(root, 6, "--instruments", "ES,NQ")
    assert run_now(root).returncode == 0
    # New ES bars, analysed but not merged yet: the next run will want to rewrite both the ES
    # store file (a newer export of the same days) and ES's monthly files (the pending output).
    sample(root, 3, "--instruments", "ES", "--seed", "11")
    assert qtsw("--root", str(root), "--stage", "translator", "--no-ui").returncode == 0
    assert qtsw("--root", str(root), "--stage", "analyzer", "--no-ui").returncode == 0
    reference = tmp_path / "reference"
    shutil.copytree(root, reference)
    assert qtsw("--root", str(reference), "--stage", "merger", "--no-ui").returncode == 0
    s = settings_for(root)
    want_store, want_monthly = store_tables(s), monthly_tables(settings_for(reference))

    store_file, monthly_file = es_store_file(s), es1_monthly(s)
    flip_byte(store_file)
    flip_byte(monthly_file, 0.3)
    damaged = store_file.read_bytes(), monthly_file.read_bytes()
    sample(root, 3, "--instruments", "ES", "--seed", "12")  # more ES bars for the same store file

    got = qtsw("--root", str(root), "verify")
    assert got.returncode == 1, got.stdout
    assert str(store_file.relative_to(root)) in got.stdout
    assert str(monthly_file.relative_to(root)) in got.stdout
    assert "qtsw rebuild --instrument ES" in got.stdout

    run = run_now(root)
    assert run.returncode == 1, run.stdout  # partial: ES blocked, NQ fine
    assert (store_file.read_bytes(), monthly_file.read_bytes()) == damaged  # never rewritten
    assert str(store_file) in run.stdout and "rebuild --instrument ES" in run.stdout
    assert list(s.raw_dir.glob("*ES*")), "the new ES export stays in data/raw"

    rebuilt = qtsw("--root", str(root), "rebuild", "--instrument", "ES")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "damaged monthly file(s) set aside" in rebuilt.stdout
    after = store_tables(s)
    assert after.keys() == want_store.keys()
    for k in want_store:
        assert after[k].equals(want_store[k]), k
    same_tables(monthly_tables(s), want_monthly)
    assert list((s.data_dir / "damaged").rglob("*.parquet.*"))  # kept for inspection
    ok = qtsw("--root", str(root), "verify", "--json")
    assert ok.returncode == 0, ok.stdout
    assert json.loads(ok.stdout)["ok"] is True


def test_truncated_store_file_is_named_and_rebuild_restores_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    sample(root, 5, "--instruments", "ES")
    assert run_now(root).returncode == 0
    s = settings_for(root)
    want_store, want_monthly = store_tables(s), monthly_tables(s)
    store_file = es_store_file(s)
    store_file.write_bytes(store_file.read_bytes()[:1000])  # truncated
    sample(root, 2, "--instruments", "ES", "--seed", "5")

    run = run_now(root)
    assert run.returncode == 1
    assert str(store_file) in run.stdout  # the store file is named, not the raw CSV
    assert "Traceback" not in run.stdout + run.stderr

    # --full cannot analyse a damaged store: ES fails, its good monthly rows stay
    full = run_now(root, "--full")
    assert full.returncode in (1, 2)
    same_tables(monthly_tables(s), want_monthly)

    assert qtsw("--root", str(root), "rebuild", "--instrument", "ES").returncode == 0
    after = store_tables(s)
    for k in want_store:
        assert after[k].equals(want_store[k]), k
    # and the waiting export goes in at the next run
    assert run_now(root).returncode == 0
    assert not list(s.raw_dir.glob("*ES*.csv"))


def _spoil_volumes(path: Path, rows: int) -> None:
    """Negative volume on the first ``rows`` data rows (rule volume)."""
    lines = path.read_text().splitlines(keepends=True)
    for i in range(1, rows + 1):
        fields = lines[i].split(",")
        fields[6] = "-1"
        lines[i] = ",".join(fields)
    path.write_text("".join(lines))


def test_rebuild_replays_only_what_todays_checks_accept(tmp_path: Path) -> None:
    """An export ingested under other checks (here a larger max_bad_row_fraction) is not
    replayed by a rebuild under today's: the rebuild names it and goes on with the others; when
    today's checks refuse every archived export, it says so and leaves the store as it was."""
    root = tmp_path / "root"
    sample(root, 3, "--instruments", "ES")
    s = settings_for(root)
    [first] = s.raw_dir.glob("*ES*.csv")
    _spoil_volumes(first, 60)  # about 2 % of its rows
    toml = root / "qtsw.toml"
    toml.write_text("[input]\nmax_bad_row_fraction = 0.05\n")
    assert run_now(root).returncode == 0
    only_first = store_tables(s)
    sample(root, 3, "--instruments", "ES", "--seed", "5")  # the same days again: its bars win
    assert run_now(root).returncode == 0
    both = store_tables(s)
    assert both != only_first

    toml.write_text("[input]\nmax_bad_row_fraction = 0.01\n")
    got = qtsw("--root", str(root), "rebuild", "--instrument", "ES")
    assert got.returncode == 0, got.stdout + got.stderr
    assert "Traceback" not in got.stdout + got.stderr
    assert "ES: not replayed: data/raw/archive/" in got.stdout and first.name in got.stdout
    assert "today's checks refuse it (rule volume)" in got.stdout
    assert "store rebuilt from 1 archived export(s)" in got.stdout
    assert "1 archived export(s) not replayed" in got.stdout
    # the store holds the second export's bars alone: as a root that only ever had it
    ref = tmp_path / "ref"
    sample(ref, 3, "--instruments", "ES", "--seed", "5")
    assert run_now(ref).returncode == 0
    after, want = store_tables(s), store_tables(settings_for(ref))
    assert after.keys() == want.keys() and all(after[k].equals(want[k]) for k in want)

    # today's checks refuse every export: nothing is rebuilt, the store is as it was
    root2 = tmp_path / "root2"
    sample(root2, 3, "--instruments", "ES")
    s2 = settings_for(root2)
    [only] = s2.raw_dir.glob("*ES*.csv")
    _spoil_volumes(only, 60)
    (root2 / "qtsw.toml").write_text("[input]\nmax_bad_row_fraction = 0.05\n")
    assert run_now(root2).returncode == 0
    before = store_tables(s2)
    (root2 / "qtsw.toml").write_text("[input]\nmax_bad_row_fraction = 0.01\n")
    got = qtsw("--root", str(root2), "rebuild", "--instrument", "ES")
    assert got.returncode == 2
    assert "today's checks refuse every archived export of ES (1, named above): the store is left as it was" in got.stderr
    assert "Traceback" not in got.stdout + got.stderr
    same = store_tables(s2)
    assert same.keys() == before.keys() and all(same[k].equals(before[k]) for k in before)


def test_full_reanalysis_keeps_rows_whose_bars_are_gone(tmp_path: Path) -> None:
    root = tmp_path / "root"
    sample(root, 6, "--instruments", "ES")
    assert run_now(root).returncode == 0
    s = settings_for(root)
    before = monthly_tables(s)
    rows_before = sum(t.num_rows for t in before.values())
    # The operator deletes the store (the bars are gone); a full re-analysis has nothing to
    # re-compute the monthly rows from: they are kept and counted, never deleted.
    for p in (s.processed_dir / "ES").glob("*.parquet"):
        catalog.remove_recorded(s, p)
    catalog.open_catalog(s).request_full("ES", "test")
    got = run_now(root, "--full")
    after = monthly_tables(s)
    assert sum(t.num_rows for t in after.values()) == rows_before, got.stdout
    same_tables(after, before)


def _old_state_root(tmp_path: Path) -> tuple[Path, Path]:
    """A data root as an earlier qtsw left it: data/state/ with a manifest and JSON state."""
    ref, root = tmp_path / "ref", tmp_path / "root"
    sample(ref, 5, "--instruments", "ES,NQ")
    assert run_now(ref).returncode == 0
    shutil.copytree(ref, root)
    s = settings_for(root)
    cat = catalog.open_catalog(s)
    state = s.data_dir / "state"
    (state / "analyzer").mkdir(parents=True)
    with open(state / "manifest.jsonl", "w") as fh:
        for raw in cat.raw_files():
            rec = {k: raw[k] for k in ("name", "size", "mtime_ns", "sha256", "status", "instrument",
                                       "ingested_at", "rows_kept")}
            fh.write(json.dumps(rec) + "\n")
    for inst, st in cat.analyzer_states().items():
        (state / "analyzer" / f"{inst}.json").write_text(json.dumps(
            {"analysis_hash": st["analysis_hash"], "engine_version": st["engine_version"],
             "provisional_dates": json.loads(st["provisional_dates"]), "last_run_id": st["last_run_id"]}))
    (state / "changes.json").write_text("{}")
    catalog.close_all()
    for p in s.data_dir.glob("catalog.sqlite*"):
        p.unlink()
    return ref, root


def test_old_json_state_is_migrated_with_a_line_saying_so(tmp_path: Path) -> None:
    ref, root = _old_state_root(tmp_path)
    s = settings_for(root)
    manifest = s.data_dir / "state" / "manifest.jsonl"
    lines = manifest.read_bytes().splitlines(keepends=True)
    # defect: one garbage line and one 0xFF byte; the file they describe is still recognised
    manifest.write_bytes(lines[0][:20] + b"\xff garbage\n" + b"".join(lines[1:]))
    (s.data_dir / "state" / "analyzer" / "ES.json").write_text('{"analysis_hash": ')  # cut short
    (s.data_dir / "state" / "changes.json").write_text('{"ES": {"first": "2025-')  # truncated
    (s.data_dir / "state" / "merger.json").write_bytes(b"\x00\xffnot json")  # garbage
    # an old export delivered again: it must not be ingested twice
    archived = sorted(s.archive_dir.rglob("*ES*.csv"))[0]
    shutil.copy(archived, s.raw_dir / archived.name)
    old = time.time() - 3600
    os.utime(s.raw_dir / archived.name, (old, old))  # stable: ready without signal files

    got = run_now(root)
    assert got.returncode == 0, got.stdout + got.stderr
    assert "migrated" in got.stdout and "manifest.jsonl: line 1" in got.stdout
    assert "ES.json: unreadable" in got.stdout
    assert "changes.json: unreadable" in got.stdout and "merger.json: unreadable" in got.stdout
    assert not (s.data_dir / "state").exists() and list(s.data_dir.glob("state.migrated-*"))
    assert "already ingested" in got.stdout  # the copy was recognised from the archive
    same_tables(store_tables(s), store_tables(settings_for(ref)))
    same_tables(monthly_tables(s), monthly_tables(settings_for(ref)))


def test_a_damaged_catalogue_is_named_and_nothing_is_touched(tmp_path: Path) -> None:
    root = tmp_path / "root"
    sample(root, 3, "--instruments", "ES")
    assert run_now(root).returncode == 0
    s = settings_for(root)
    snapshot = store_tables(s)
    for p in s.data_dir.glob("catalog.sqlite-*"):
        p.unlink()
    s.catalog_path.write_bytes(b"\xff" * 4096)
    sample(root, 2, "--instruments", "ES", "--seed", "3")
    got = run_now(root)
    assert got.returncode == 2
    assert str(s.catalog_path) in got.stdout and "Traceback" not in got.stdout + got.stderr
    same_tables(store_tables(s), snapshot)
    assert list(s.raw_dir.glob("*ES*.csv"))  # nothing ingested without a record
    assert qtsw("--root", str(root), "verify").returncode == 1


def test_intent_written_but_not_recorded_is_recorded_at_the_next_start(settings: Settings) -> None:
    """The write protocol's crash window (after the rename, before the record)."""
    import pyarrow as pa

    path = settings.processed_dir / "ES" / "ES_2025.parquet"
    table = pa.table({"x": [1, 2, 3]})
    catalog.write_recorded(settings, path, catalog.STORE, "ES", lambda t: pq.write_table(table, t))
    first = catalog.open_catalog(settings).record(path)
    # a second write that died between its rename and its record
    other = pa.table({"x": [4, 5]})
    tmp = path.with_name(".tmp.parquet")
    pq.write_table(other, tmp)
    cat = catalog.open_catalog(settings)
    cat.put_intent(path, catalog.STORE, "ES", catalog.sha256_file(tmp), tmp.stat().st_size, 2,
                   None, None, "dead")
    os.replace(tmp, path)
    assert catalog.reconcile(settings) == [
        "data/processed/ES/ES_2025.parquet: written but not recorded when qtsw stopped; recorded now"
    ]
    rec = cat.record(path)
    assert rec.sha256 != first.sha256 and rec.rows == 2 and rec.run_id == "dead"
    cat.check(path, catalog.STORE, "ES")  # matches now


def test_catalogue_is_wal_with_full_sync(settings: Settings) -> None:
    catalog.open_catalog(settings)
    conn = sqlite3.connect(settings.catalog_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    cat = catalog.open_catalog(settings)
    assert cat.query("PRAGMA synchronous")[0][0] == 2  # FULL


def test_chaos_random_kills_equal_an_uninterrupted_history(tmp_path: Path) -> None:
    """Random SIGKILLs of the engine and of single stages, new drops between runs: the final
    store, monthly files and catalogue equal those of an uninterrupted history."""
    import random

    rng = random.Random(20261203)
    ref, root = tmp_path / "ref", tmp_path / "root"
    # each drop ends a day later (new file names, new bars, some overlapping earlier ones)
    drops = [("ES,NQ", 4, 1, END), ("ES", 2, 2, "2025-11-27"), ("NQ,ES", 3, 3, "2025-11-28"),
             ("ES,NQ", 2, 4, "2025-12-01")]
    for r in (ref, root):
        sample(r, 4, "--instruments", "ES,NQ")
    assert run_now(ref).returncode == 0
    kills = 0
    for n, (insts, days, seed, end) in enumerate(drops):
        if n:
            for r in (ref, root):
                got = qtsw("--root", str(r), "sample", "--days", str(days), "--end", end,
                           "--instruments", insts, "--seed", str(seed))
                assert got.returncode == 0, got.stderr
            assert run_now(ref).returncode == 0
        for _attempt in range(2):
            eng = headless_run(root)
            try:
                target = rng.choice(["translator", "analyzer", "merger"])
                run_id = read_until(eng, lambda ev, t=target: ev["stage"] in (t, "pipeline")
                                    and ev["event"] in ("start", "success", "failure"))
                time.sleep(rng.uniform(0.0, 0.4))
                victims = processes_with_env(RUN_ID_VAR, run_id)
                if victims and rng.random() < 0.5:
                    os.kill(rng.choice(victims), signal.SIGKILL)  # one stage process
                else:
                    eng.send_signal(signal.SIGKILL)  # the engine itself
                kills += 1
                eng.wait(30)
            finally:
                if eng.poll() is None:
                    eng.kill()
                    eng.wait()
    for _ in range(3):  # the next starts clean up and finish the work
        got = run_now(root)
        if got.returncode == 0 and not catalog.pending_merges(settings_for(root)):
            break
    assert got.returncode == 0, got.stdout
    assert kills == 2 * len(drops)
    s, rs = settings_for(root), settings_for(ref)
    same_tables(store_tables(s), store_tables(rs))
    same_tables(monthly_tables(s), monthly_tables(rs))

    def catalogue(st: Settings) -> tuple:
        cat = catalog.open_catalog(st)
        raws = sorted((r["sha256"], r["instrument"], r["rows_kept"], r["status"])
                      for r in cat.raw_files() if r["status"] == "ingested")
        stores = sorted((r.path, r.sha256, r.rows) for r in cat.records(catalog.STORE))
        monthly = sorted((r.path, r.rows) for r in cat.records(catalog.MONTHLY))
        return raws, stores, monthly, cat.read_changes(), sorted(cat.journal())

    assert catalogue(s) == catalogue(rs)
    assert qtsw("--root", str(root), "verify").returncode == 0
    assert history.read_runs(s)[-1]["status"] == "success"
    assert processes_with_env(RUN_ID_VAR, history.read_runs(s)[-1]["run_id"]) == []


def test_rebuild_with_the_engine_running_leaves_the_reanalysis_to_it(tmp_path: Path) -> None:
    from datetime import timedelta

    from pipeline_core import clock
    from pipeline_core.lock import lock_holder

    root = tmp_path / "root"
    sample(root, 4, "--instruments", "ES")
    assert run_now(root).returncode == 0
    s = settings_for(root)
    want = store_tables(s)
    store_file = es_store_file(s)
    flip_byte(store_file)
    later = (clock.now() + timedelta(hours=6)).strftime("%H:%M")  # no scheduled run meanwhile
    eng = subprocess.Popen(
        [sys.executable, "-m", "qtsw_tui", "--root", str(root), "--no-ui", "--schedule", later],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env(),
    )
    try:
        deadline = time.monotonic() + 60
        while lock_holder(s.lock_file) is None:
            assert eng.poll() is None and time.monotonic() < deadline, "the engine did not start"
            time.sleep(0.05)
        got = qtsw("--root", str(root), "rebuild", "--instrument", "ES")
        assert got.returncode == 0, got.stdout + got.stderr
        assert "an engine is running" in got.stdout and f"pid {eng.pid}" in got.stdout
        after = store_tables(s)
        for k in want:
            assert after[k].equals(want[k]), k
        assert catalog.pending_analysis(s)["ES"].startswith("full re-analysis: store rebuilt")
        assert lock_holder(s.lock_file)["pid"] == eng.pid  # the engine was never disturbed
    finally:
        eng.send_signal(signal.SIGTERM)
        eng.wait(30)
    assert eng.returncode == 0


def test_a_removal_interrupted_before_its_record_is_finished(settings: Settings) -> None:
    import pyarrow as pa

    path = settings.analyzer_runs_dir / "ES1" / "2025" / "ES1_an_2025_11.parquet"
    catalog.write_recorded(settings, path, catalog.MONTHLY, "ES1",
                           lambda t: pq.write_table(pa.table({"x": [1]}), t))
    cat = catalog.open_catalog(settings)
    cat.put_intent(path, "-", None, catalog.DELETED, 0, None, None, None, None)
    path.unlink()  # the process died here, before the record went
    cat.check(path, catalog.MONTHLY, "ES1")  # not "missing": the removal is finished instead
    assert cat.record(path) is None
    # the same crash, found by the next start instead
    catalog.write_recorded(settings, path, catalog.MONTHLY, "ES1",
                           lambda t: pq.write_table(pa.table({"x": [2]}), t))
    cat.put_intent(path, "-", None, catalog.DELETED, 0, None, None, None, None)
    path.unlink()
    assert catalog.reconcile(settings) == [
        "data/analyzer_runs/ES1/2025/ES1_an_2025_11.parquet: removed but still recorded when "
        "qtsw stopped; record removed"
    ]
    assert cat.record(path) is None
