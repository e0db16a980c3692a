"""Hostile input and a hostile disk (SPEC §11.1): any file name, symbolic links, files that
change while read, bars out of range, a full disk at every write site, the umask, a cut-off event
line. Real data roots, real stage processes through the real command line.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_cli import END, clean_env, monthly_tables, qtsw, store_tables

from pipeline_core import catalog, history
from pipeline_core.events import EventWriter, read_events, run_event_path
from pipeline_core.safetext import NAME_MAX, safe, safe_filename
from pipeline_core.settings import CHICAGO, Settings, load_settings

OLD = time.time() - 3 * 3600  # older than stable_seconds: ready without a signal file


def settings_for(root: Path) -> Settings:
    return load_settings(root=root, env={})


def make_root(root: Path, days: int = 3, instruments: str = "ES,NQ") -> Settings:
    got = qtsw("--root", str(root), "sample", "--days", str(days), "--end", END, "--instruments", instruments)
    assert got.returncode == 0, got.stderr
    return settings_for(root)


def export_of(s: Settings, inst: str) -> Path:
    [p] = sorted(s.raw_dir.glob(f"DataExport_{inst}_*.csv"))
    return p


def run_now(root: Path, *extra: str, env: dict[str, str] | None = None, umask: int = -1) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qtsw_tui", "--root", str(root), "--run-now", "--no-ui", *extra],
        capture_output=True, text=True, env={**clean_env(), **(env or {})}, timeout=180, umask=umask,
    )


def last_events(s: Settings) -> list:
    line = history.read_runs(s)[-1]
    events, bad = read_events(run_event_path(s.events_dir, line["run_id"]))
    assert bad == []
    return events


def drop(s: Settings, name: str | bytes, data: bytes) -> Path:
    folder = os.fsencode(s.raw_dir) if isinstance(name, bytes) else s.raw_dir
    path = os.path.join(folder, name)
    with open(path, "wb") as fh:
        fh.write(data)
    os.utime(path, (OLD, OLD))
    return Path(os.fsdecode(path))


# --- names --------------------------------------------------------------------------------------

HOSTILE = {
    b"ES_\xff.csv": "file name is not valid UTF-8",
    "ES_a\n2025-11-26 12:00:00 CST  00000000  pipeline   success     Run succeeded.csv": "control characters",
    "ES_\x1b[31mred\x1b[0m.csv": "control characters",
    "E" * 250 + ".csv": "not in the configured instrument table",
    "-ES.csv": "matches no accepted form",
    "ÉS.csv": "matches no accepted form",
    "ES_[bold red]x[reverse].csv": "matches no accepted form",
    "ES\u202e.csv": "control characters",
}


def test_any_file_name_is_quarantined_escaped_and_stops_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    s = make_root(root)
    content = export_of(s, "ES").read_bytes()
    for name in HOSTILE:
        drop(s, name, content)
    got = run_now(root)
    out = got.stdout + got.stderr
    assert got.returncode == 1, out  # partial: files were quarantined; nothing failed
    assert "Traceback" not in out
    # nothing from a name reaches the terminal raw: no escape, no forged line, no bidi override
    assert "\x1b" not in out and "\u202e" not in out
    assert not any(line.startswith("2025-11-26 12:00:00") for line in out.splitlines())
    assert "ES_a\\n2025-11-26" in got.stdout and "ES_\\xff.csv" in got.stdout
    # the six valid exports beside them are translated, analysed and merged
    assert {p.split("/")[0] for p in store_tables(s)} == {"ES", "NQ"}
    assert history.read_runs(s)[-1]["stages"] == {"translator": "partial", "analyzer": "success", "merger": "success"}
    # each hostile file is in quarantine, unchanged, with a note that says why and names it
    notes = sorted(s.quarantine_dir.glob("*.error.txt"))
    assert len(notes) == len(HOSTILE)
    texts = [n.read_text(encoding="utf-8") for n in notes]
    for name, why in HOSTILE.items():
        shown = safe(os.fsdecode(name))
        [text] = [t for t in texts if f"file: {shown}\n" in t]
        assert why in text
        stored = s.quarantine_dir / (text.split("stored_as: ")[1].split("\n")[0] if "stored_as: " in text
                                     else os.fsdecode(name))
        assert stored.read_bytes() == content
        if isinstance(name, bytes):
            assert f"name_bytes_hex: {name.hex()}\n" in text
    for n in notes:
        assert len(os.fsencode(n.name)) <= NAME_MAX
        assert safe(n.name) == n.name  # every stored name is fit to print
    assert not [p for p in os.listdir(os.fsencode(s.raw_dir)) if p.endswith((b".csv", b".txt"))]
    # and `status` prints them escaped
    st = qtsw("--root", str(root), "status")
    assert st.returncode == 0 and "\x1b" not in st.stdout
    assert f"{len(HOSTILE)} quarantined" in st.stdout


def test_a_long_name_gets_a_safe_note_name_that_the_note_records() -> None:
    name = "E" * 250 + ".csv"
    safe_name = safe_filename(name, ".error.txt-99")
    assert len(os.fsencode(safe_name + ".error.txt-99")) <= NAME_MAX
    assert safe_name.endswith(".csv") and "~" in safe_name
    other = safe_filename("E" * 251 + ".csv", ".error.txt-99")
    assert other != safe_name  # two long names do not meet
    assert safe_filename("ES.csv", ".error.txt") == "ES.csv"
    assert safe_filename("a/b\n.csv") == "a\\x2fb\\n.csv"


# --- symbolic links -----------------------------------------------------------------------------


def test_symbolic_links_are_never_followed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    s = make_root(root)
    (root / "qtsw.toml").write_text("[input]\nstable_seconds = 3600\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    # a valid NQ export outside the root, linked into data/raw: it must never be read
    nq = export_of(s, "NQ")
    target = outside / "NQ.csv"
    nq_bytes = nq.read_bytes()
    target.write_bytes(nq_bytes)
    nq.unlink()
    for sig in s.raw_logs_dir.glob("*NQ*"):
        sig.unlink()
    (s.raw_dir / "NQ.csv").symlink_to(target)
    os.utime(s.raw_dir / "NQ.csv", (OLD, OLD), follow_symlinks=False)
    # a "complete" signal outside, linked into raw/logs for a fresh file: it is no signal
    es = export_of(s, "ES")
    fresh = s.raw_dir / "ES.csv"
    fresh.write_bytes(es.read_bytes())
    secret = outside / "complete.json"
    secret.write_text(json.dumps({"status": "complete"}))
    (s.raw_logs_dir / "export_complete_ES.json").symlink_to(secret)
    got = run_now(root)
    out = got.stdout + got.stderr
    assert got.returncode == 1, out
    assert "Traceback" not in out
    # the NQ link went to quarantine as a link; its target is where it was, untouched and unread
    q = s.quarantine_dir / "NQ.csv"
    assert q.is_symlink() and os.readlink(q) == str(target)
    assert target.read_bytes() == nq_bytes
    note = (s.quarantine_dir / "NQ.csv.error.txt").read_text()
    assert "rule: symlink" in note and "never followed" in note
    assert "NQ" not in {p.split("/")[0] for p in store_tables(s)}
    # the fresh ES.csv is still waiting: the linked signal did not make it ready
    assert fresh.exists()
    events = last_events(s)
    assert any("export_complete_ES.json: ignored: a symbolic link" in e.msg for e in events)
    st = qtsw("--root", str(root), "status")
    assert "ignored:    logs/export_complete_ES.json: a symbolic link; links are never followed" in st.stdout
    st_json = json.loads(qtsw("--root", str(root), "status", "--json").stdout)
    assert st_json["raw"]["ignored"][0]["path"] == "logs/export_complete_ES.json"


# --- a file that changes while it is read --------------------------------------------------------


def test_a_file_that_changes_while_read_is_not_stored_and_is_taken_next_run(tmp_path: Path) -> None:
    root = tmp_path / "root"
    s = make_root(root, instruments="ES")
    path = export_of(s, "ES")
    full = path.read_bytes()
    lines = full.split(b"\n")
    half = b"\n".join(lines[: len(lines) // 2]) + b"\n"
    path.write_bytes(half)
    gate = tmp_path / "gate"
    gate.mkdir()
    eng = subprocess.Popen(
        [sys.executable, "-m", "qtsw_tui", "--root", str(root), "--stage", "translator", "--no-ui"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**clean_env(), "QTSW_PAUSE_AFTER_READ": str(gate)},
    )
    try:
        deadline = time.monotonic() + 60
        while not (gate / "read").exists():
            if eng.poll() is not None or time.monotonic() > deadline:
                eng.kill()
                out, err = eng.communicate()
                raise AssertionError(f"the translator never read the file: {out}{err}")
            time.sleep(0.01)
        assert (gate / "read").read_text() == path.name
        with open(path, "ab") as fh:  # the exporter goes on writing
            fh.write(full[len(half):])
        (gate / "go").write_text("")
        out, err = eng.communicate(timeout=120)
    finally:
        if eng.poll() is None:
            eng.kill()
    assert eng.returncode == 0, out + err
    assert "changed while it was read (size" in out
    assert path.exists() and path.read_bytes() == full  # not archived, not quarantined
    assert not (s.processed_dir / "ES").exists() or not list((s.processed_dir / "ES").glob("*.parquet"))
    cat = catalog.open_catalog(s)
    assert [r for r in cat.raw_files() if "ES" in r["name"]] == []
    # the next run takes the whole file; the archived copy is what was recorded
    got = run_now(root)
    assert got.returncode == 0, got.stdout + got.stderr
    cat = catalog.open_catalog(s)
    [rec] = [r for r in cat.raw_files() if "_ES_" in r["name"]]
    archived = cat.abs(rec["archived_path"])
    assert archived.read_bytes() == full
    assert rec["sha256"] == hashlib.sha256(full).hexdigest()
    assert rec["rows_in"] == len([x for x in lines[1:] if x])


# --- bars out of range --------------------------------------------------------------------------


def test_bars_before_min_date_or_after_tomorrow_are_bad_rows(tmp_path: Path) -> None:
    root = tmp_path / "root"
    s = make_root(root)
    path = export_of(s, "ES")
    first_far_line = len(path.read_bytes().splitlines()) + 1
    ahead = (datetime.now(CHICAGO) + timedelta(days=2)).strftime("%Y-%m-%d")
    far = ["0001-01-02", "1900-01-02", "1970-01-02", "1999-12-31", ahead]
    with open(path, "a") as fh:
        for day in far:
            fh.write(f"{day},10:00:00,6000.25,6001,6000,6000.5,10,ES\n")
    got = run_now(root)
    assert got.returncode == 0, got.stdout + got.stderr
    assert "Traceback" not in got.stdout + got.stderr
    [metric] = [e for e in last_events(s) if e.event == "metric" and e.data.get("file") == path.name]
    assert metric.data["dropped"] == {"out_of_range": len(far)}
    assert history.read_runs(s)[-1]["stages"]["analyzer"] == "success"
    ts = pq.read_table(next((s.processed_dir / "ES").glob("*.parquet"))).column("timestamp")
    assert min(ts.to_pylist()).year >= 2000
    assert metric.data["first_bad_line"] == {"out_of_range": first_far_line}


def test_min_date_is_a_setting_with_a_clear_error() -> None:
    from pipeline_core.settings import SettingsError

    s = load_settings(root=Path("/nonexistent-root"), env={}, overrides={"input.min_date": "2010-05-01"})
    assert s.min_date.isoformat() == "2010-05-01"
    with pytest.raises(SettingsError, match="input.min_date"):
        load_settings(root=Path("/nonexistent-root"), env={}, overrides={"input.min_date": "May 2010"})


# --- a full disk --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """A sample root (with one file for quarantine) and the store and monthly files an
    uninterrupted run makes of it."""
    template = tmp_path_factory.mktemp("template") / "root"
    s = make_root(template, days=2)
    drop(s, "ZZ.csv", b"not an export\n")
    ran = tmp_path_factory.mktemp("uninterrupted") / "root"
    shutil.copytree(template, ran, symlinks=True)
    got = run_now(ran)
    assert got.returncode == 1, got.stdout + got.stderr  # partial: ZZ.csv quarantined
    rs = settings_for(ran)
    return template, store_tables(rs), monthly_tables(rs)


# the write sites: (name, QTSW_FAIL_WRITE pattern, a part of the path the message must name)
SITES = [
    ("store", "*/data/processed/*/*.parquet", "data/processed/"),
    ("analyzer output", "*/data/analyzer_temp/*", "data/analyzer_temp/"),
    ("monthly file", "*/data/analyzer_runs/*", "data/analyzer_runs/"),
    ("quarantine note", "*/quarantine/*.error.txt", "quarantine/ZZ.csv.error.txt"),
    ("catalogue", "*/catalog.sqlite", "catalog.sqlite"),
    ("run report", "*/logs/reports/*", "logs/reports/"),
    ("runs.jsonl", "*/logs/runs.jsonl", "logs/runs.jsonl"),
    ("stage log", "*/logs/runs/*/*.log", "logs/runs/"),
    ("event log", "*/logs/events/*", "logs/events/"),
]


@pytest.mark.parametrize(("site", "pattern", "named"), SITES, ids=[x[0] for x in SITES])
def test_no_space_at_each_write_site(reference: tuple, tmp_path: Path, site: str, pattern: str, named: str) -> None:
    template, want_store, want_monthly = reference
    root = tmp_path / "root"
    shutil.copytree(template, root, symlinks=True)
    s = settings_for(root)
    got = run_now(root, env={"QTSW_FAIL_WRITE": pattern})
    out = got.stdout + got.stderr
    assert got.returncode == 2, out
    assert "Traceback" not in out
    said = [line for line in out.splitlines() if "No space left on device" in line]
    assert said and any(named in line for line in said), out
    if site == "event log":  # nothing could be recorded: one clear line, and nothing else
        assert got.stdout == "" and got.stderr.count("\n") == 1
    else:
        line = json.loads(s.runs_index.read_text().splitlines()[-1]) if site != "runs.jsonl" else None
        events, _ = read_events(run_event_path(s.events_dir, line["run_id"])) if line else ([], [])
        if line:  # the run is recorded, with its terminal event
            assert events[-1].stage == "pipeline" and events[-1].event in ("success", "failure")
    # nothing is lost: with the space back, the next run gives what an uninterrupted one gives
    again = run_now(root)
    assert again.returncode in (0, 1), again.stdout + again.stderr
    stores = store_tables(s)
    assert stores.keys() == want_store.keys() and all(stores[k].equals(v) for k, v in want_store.items())
    got_monthly = monthly_tables(s)
    assert got_monthly.keys() == want_monthly.keys()
    assert all(got_monthly[k].equals(v) for k, v in want_monthly.items())
    assert (s.quarantine_dir / "ZZ.csv").exists()


def _mount_tmpfs(where: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` at ``where``; None when done, else why it could not be."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None:
        return "no mount command"
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                         capture_output=True, text=True)
    return None if got.returncode == 0 else f"mount -t tmpfs failed: {got.stderr.strip()}"


def test_a_real_full_disk(reference: tuple, tmp_path: Path) -> None:
    template, want_store, want_monthly = reference
    disk = tmp_path / "disk"
    disk.mkdir()
    why = _mount_tmpfs(disk, "4m")
    if why:
        pytest.skip(f"no small disk to fill: {why}")
    try:
        root = disk / "root"
        shutil.copytree(template, root, symlinks=True)
        s = settings_for(root)
        filler = disk / "filler"
        with open(filler, "wb") as fh:  # fill the disk, then leave a little room
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        with open(filler, "r+b") as fh:
            fh.truncate(max(0, filler.stat().st_size - 48 * 1024))
        got = run_now(root)
        out = got.stdout + got.stderr
        assert got.returncode == 2, out
        assert "Traceback" not in out
        assert "No space left on device" in out
        filler.unlink()
        again = run_now(root)
        assert again.returncode in (0, 1), again.stdout + again.stderr
        stores = store_tables(s)
        assert stores.keys() == want_store.keys() and all(stores[k].equals(v) for k, v in want_store.items())
        got_monthly = monthly_tables(s)
        assert got_monthly.keys() == want_monthly.keys()
        assert all(got_monthly[k].equals(v) for k, v in want_monthly.items())
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# --- file modes and a cut-off event line ---------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_files_honour_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    root = tmp_path / "root"
    got = subprocess.run(
        [sys.executable, "-m", "qtsw_tui", "--root", str(root), "sample", "--days", "2", "--end", END,
         "--instruments", "ES"], capture_output=True, text=True, env=clean_env(), umask=umask)
    assert got.returncode == 0, got.stderr
    got = run_now(root, umask=umask)
    assert got.returncode == 0, got.stdout + got.stderr
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(files) > 10
    wrong = {str(p.relative_to(root)): oct(p.stat().st_mode & 0o777) for p in files if p.stat().st_mode & 0o777 != mode}
    assert wrong == {}


def test_a_cut_off_last_event_line_is_ended_before_the_next_event(tmp_path: Path) -> None:
    path = tmp_path / "pipeline_x.jsonl"
    with EventWriter(path, "x") as w:
        w.emit("pipeline", "start", "Run x started")
    whole = path.read_bytes()
    path.write_bytes(whole + whole[: len(whole) // 2])  # a crash in the middle of a second line
    with EventWriter(path, "x") as w:
        ev = w.emit("pipeline", "failure", "Run ended failure: the engine stopped")
    events, bad = read_events(path)
    assert [e.event for e in events] == ["start", "failure"] and events[-1].seq == ev.seq
    assert len(bad) == 1 and bad[0].line_no == 2
    assert path.read_bytes().endswith(b"\n") and path.read_bytes().count(b"\n") == 3
