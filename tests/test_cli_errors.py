"""The command line's refusals and errors, as an operator meets them: each is one line on
stderr naming the path or the setting and the reason, with the documented exit code, and no
traceback. Real subprocesses on temporary data roots."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from processes import run_in_a_pty

from pipeline_core.settings import load_settings

QTSW = [sys.executable, "-m", "qtsw_tui"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}
    env.update(extra)
    return env


def qtsw(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*QTSW, *args], capture_output=True, text=True, env=env or clean_env(),
                          timeout=timeout, stdin=subprocess.DEVNULL)


def one_line(got: subprocess.CompletedProcess[str]) -> str:
    """The single line the command wrote on stderr (no traceback, nothing else)."""
    assert "Traceback" not in got.stderr, got.stderr
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1, got.stderr
    return lines[0]


# --- item: a missing data root -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["--no-ui", "--run-now"], ["--no-ui"], ["status", "--json"], ["verify"]],
)
def test_a_missing_data_root_is_an_error_not_a_new_root(tmp_path: Path, args: list[str]) -> None:
    missing = tmp_path / "typo"
    got = qtsw("--root", str(missing), *args)
    assert got.returncode == 4
    line = one_line(got)
    assert str(missing) in line and "does not exist" in line and "qtsw init" in line
    assert got.stdout == ""
    assert not missing.exists()


def test_a_missing_data_root_from_the_environment_too(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    got = qtsw("status", env=clean_env(QTSW_ROOT=str(missing)))
    assert got.returncode == 4 and str(missing) in one_line(got)
    assert not missing.exists()


def test_the_console_refuses_a_missing_data_root(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    code, said = run_in_a_pty([*QTSW, "--root", str(missing)], clean_env(TERM="xterm-256color"))
    assert code == 4
    assert f"data root {missing} does not exist" in said and "Traceback" not in said
    assert not missing.exists()


def test_init_creates_a_data_root_with_a_starter_settings_file(tmp_path: Path) -> None:
    root = tmp_path / "new" / "root"
    got = qtsw("init", str(root))
    assert got.returncode == 0, got.stderr
    s = load_settings(root=root, env={})
    for folder in s.data_folders():
        assert folder.is_dir()
        assert f"created {folder}/" in got.stdout
    toml = root / "qtsw.toml"
    assert f"created {toml}" in got.stdout
    # the starter file changes nothing: every setting is its default
    defaults = load_settings(root=tmp_path / "elsewhere", env={})
    assert s.config_file == toml
    assert s.analysis_dict() == defaults.analysis_dict()
    assert (s.timeouts, s.workers, s.schedule_minutes, s.keys, s.raw_policy) == (
        defaults.timeouts, defaults.workers, defaults.schedule_minutes, defaults.keys, defaults.raw_policy)

    # again: nothing to do, and an operator's settings file is never replaced
    toml.write_text("[engine]\nworkers = 2\n")
    again = qtsw("--root", str(root), "init")
    assert again.returncode == 0 and "nothing to create" in again.stdout
    assert toml.read_text() == "[engine]\nworkers = 2\n"

    # the new root is one the engine accepts
    run = qtsw("--root", str(root), "--no-ui", "--run-now")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "success" in run.stdout


def test_init_refuses_a_file_and_bad_settings(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    got = qtsw("init", str(afile))
    assert got.returncode == 4 and f"data root {afile} is not a folder" in one_line(got)
    root = tmp_path / "root"
    root.mkdir()
    (root / "qtsw.toml").write_text("[engine]\nworkers = -1\n")
    bad = qtsw("init", str(root))
    assert bad.returncode == 4 and "engine.workers" in one_line(bad)


# --- item: no tracebacks -------------------------------------------------------------------------

DROP_PRIVILEGE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search",
                  "--inh-caps=-dac_override,-dac_read_search"]


def without_override(*args: str) -> subprocess.CompletedProcess[str]:
    """``qtsw`` as a user whom file permissions bind: as root, with the capabilities that
    override them dropped (so a file mode of 000 means what it says)."""
    prefix = DROP_PRIVILEGE if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *QTSW, *args], capture_output=True, text=True, env=clean_env(),
                          timeout=120, stdin=subprocess.DEVNULL)


needs_permissions = pytest.mark.skipif(
    os.geteuid() == 0 and not __import__("shutil").which("setpriv"),
    reason="running as root without setpriv: file permissions cannot be made to bind",
)


@pytest.mark.parametrize("args", [["status"], ["sample", "--days", "1"], ["--no-ui"], ["verify"], ["init"]])
def test_a_root_that_is_a_file(tmp_path: Path, args: list[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    got = qtsw("--root", str(afile), *args)
    assert got.returncode == 4
    assert f"data root {afile} is not a folder" in one_line(got)


def test_a_lock_file_that_cannot_be_opened_exits_4(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "logs" / "qtsw.lock").mkdir(parents=True)  # a folder where the lock file should be
    got = qtsw("--root", str(root), "--no-ui", "--run-now")
    assert got.returncode == 4
    line = one_line(got)
    assert "engine lock" in line and str(root / "logs" / "qtsw.lock") in line and "Is a directory" in line


@needs_permissions
def test_a_root_owned_by_someone_else_is_refused_with_the_reason(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert qtsw("init", str(root)).returncode == 0
    (root / "logs").chmod(0o555)
    try:
        got = without_override("--root", str(root), "--no-ui", "--run-now")
    finally:
        (root / "logs").chmod(0o755)
    assert got.returncode == 4
    line = one_line(got)
    assert f"{root / 'logs' / 'qtsw.lock'}: Permission denied" in line


@needs_permissions
def test_status_on_a_state_file_it_cannot_read(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert qtsw("init", str(root)).returncode == 0
    runs = root / "logs" / "runs.jsonl"
    runs.write_text('{"run_id": "x"}\n')
    runs.chmod(0)
    try:
        got = without_override("--root", str(root), "status")
    finally:
        runs.chmod(0o644)
    assert got.returncode == 2
    assert f"cannot read {runs}: Permission denied" in one_line(got)


def test_status_on_a_state_file_that_is_a_folder(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert qtsw("init", str(root)).returncode == 0
    (root / "logs" / "runs.jsonl").mkdir()
    got = qtsw("--root", str(root), "status")
    assert got.returncode == 2
    assert f"{root / 'logs' / 'runs.jsonl'}: Is a directory" in one_line(got)


@needs_permissions
def test_sample_into_a_read_only_folder(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert qtsw("init", str(root)).returncode == 0
    raw = root / "data" / "raw"
    raw.chmod(0o555)
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        into_raw = without_override("--root", str(root), "sample", "--days", "1")
        new_root = without_override("--root", str(parent / "new"), "sample", "--days", "1")
    finally:
        raw.chmod(0o755)
        parent.chmod(0o755)
    assert into_raw.returncode == 2
    assert f"cannot write the sample exports into {raw}: Permission denied" in one_line(into_raw)
    assert new_root.returncode == 4
    assert f"{parent / 'new'}: Permission denied" in one_line(new_root)


@pytest.mark.parametrize(
    "args",
    [["sample", "--days", "abc"], ["sample", "--days", "0"], ["sample", "--bogus"], ["status", "--runs", "x"],
     ["init", "a", "b"], ["verify", "--bogus"], ["rebuild"], ["--bogus"], ["web", "--port", "x"],
     ["web", "--port", "70000"]],
)
def test_bad_arguments_exit_4_in_every_command(tmp_path: Path, args: list[str]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    got = qtsw("--root", str(root), *args)
    assert got.returncode == 4, got.stderr
    assert "error:" in got.stderr and "Traceback" not in got.stderr


# --- item: one unit for sizes ----------------------------------------------------------------------


def test_the_console_and_status_show_the_store_size_in_the_same_unit(tmp_path: Path) -> None:
    """Decimal megabytes in both: the console's counters and ``qtsw status`` agree."""
    import json

    from pipeline_core.settings import load_settings
    from qtsw_tui.widgets.counters import counters_text, read_counters

    root = tmp_path / "root"
    assert qtsw("init", str(root)).returncode == 0
    s = load_settings(root=root, env={})
    store = s.processed_dir / "ES"
    store.mkdir(parents=True)
    (store / "ES_2025.parquet").write_bytes(b"\0" * 1_990_000)  # sizes only: never read
    status = qtsw("--root", str(root), "status")
    assert "2.0 MB" in status.stdout, status.stdout
    as_json = json.loads(qtsw("--root", str(root), "status", "--json").stdout)
    assert as_json["processed"]["ES"]["bytes"] == 1_990_000
    console = str(counters_text(read_counters(s), 40))
    assert "2.0 MB" in console, console


# --- item: help texts and the README speak to users -------------------------------------------------

PROJECT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", [[], ["init"], ["sample"], ["status"], ["verify"], ["rebuild"], ["ctl"],
                                     ["web"]])
def test_help_speaks_to_users(command: list[str]) -> None:
    got = qtsw(*command, "--help")
    assert got.returncode == 0 and got.stderr == ""
    text = got.stdout
    for jargon in ("SPEC", "§", "``", ":func:", ":mod:", "::"):
        assert jargon not in text, f"{jargon!r} in qtsw {' '.join(command)} --help"
    # every option says what it is for
    options = re.findall(r"^  (-\S+.*?)(?:\s{2,}(.*))?$", text, re.MULTILINE)
    assert options and all(help_text or "help" in opt for opt, help_text in options
                           if not opt.startswith("-h")), text


def test_readme_runs_qtsw_from_where_it_is_installed() -> None:
    readme = (PROJECT / "README.md").read_text()
    blocks = re.findall(r"```\n(.*?)```", readme, re.DOTALL)
    commands = [ln for b in blocks for ln in b.splitlines() if re.match(r"(\S*/)?qtsw( |$)", ln)]
    assert commands and all(ln.startswith(".venv/bin/qtsw") for ln in commands), commands
    assert ".venv/bin/qtsw" in readme and 'make qtsw ARGS="' in readme
    made = subprocess.run(["make", "-n", "-C", str(PROJECT), "qtsw", "ARGS=status --json"],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0 and ".venv/bin/qtsw status --json" in made.stdout
