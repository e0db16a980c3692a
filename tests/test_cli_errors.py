"""The command line's refusals and errors, as an operator meets them: each is one line on
stderr naming the path or the setting and the reason, with the documented exit code, and no
traceback. Real subprocesses on temporary data roots."""

from __future__ import annotations

import os
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
    [["--no-ui", "--run-now"], ["--no-ui"], ["--no-ui", "--stage", "merger"], ["status"], ["status", "--json"],
     ["verify"]],
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
