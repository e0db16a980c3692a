"""The early warm launcher: ``qtsw`` starts it before its own imports for a one-off headless run;
the engine takes it over (configuration, log, code fingerprint) or the command ends it. Real
launcher processes, real stages, a real run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import date
from pathlib import Path

import anyio
import pytest
from processes import alive, wait_until
from test_control import clean_env

from pipeline_core import history, proc, warmstart
from pipeline_core.sample import write_samples
from pipeline_core.settings import load_settings
from qtsw_tui import cli, entry

END = date(2025, 11, 26)


def stage_script(tmp_path: Path) -> list[str]:
    path = tmp_path / "stage.py"
    path.write_text(textwrap.dedent("""
        import json, os
        from pipeline_core import launcher
        from pipeline_core.protocol import Reporter
        print(json.dumps({"ppid": os.getppid(), "threads_at_fork": launcher.threads_at_fork}))
        Reporter().result("success", "done")
    """), encoding="utf-8")
    return [sys.executable, str(path)]


def run_stage(argv: list[str], tmp_path: Path, launcher: proc.WarmLauncher) -> tuple[dict, list[str]]:
    """Run a stage through ``launcher``; (what it printed first, the launcher's events)."""
    lines: list[str] = []
    said: list[str] = []

    async def main() -> proc.StageOutcome:
        return await proc.run_stage(
            argv, log_path=tmp_path / "stage.log", launcher=launcher, timeout=60.0, grace=1.0,
            silence_warning=300.0, on_output=lines.append, on_launcher=lambda text, data: said.append(text))

    out = anyio.run(main)
    assert out.status == "success", (out, lines)
    return json.loads(lines[0]), said


def test_an_adopted_early_launcher_is_configured_and_forks_the_stages(tmp_path: Path) -> None:
    early = warmstart.start_early(env={})
    assert early is not None
    log = tmp_path / "logs" / "launcher.log"
    launcher = proc.WarmLauncher(root=tmp_path, grace=1.0, log_path=log)
    launcher.adopt(early)
    try:
        assert launcher.pid == early.pid and launcher.started == 1
        first, said = run_stage(stage_script(tmp_path), tmp_path, launcher)
        assert said == [] and launcher.forked == 1, "the stage was not started by the early launcher"
        assert first == {"ppid": early.pid, "threads_at_fork": 1}
        # its configuration arrived: the log is its stderr
        assert os.readlink(f"/proc/{early.pid}/fd/2") == str(log)
    finally:
        anyio.run(launcher.aclose)
    assert early.proc.returncode == 0  # ended by the engine closing its socket, not killed


def test_an_early_launcher_whose_code_changed_meanwhile_is_replaced_and_said(tmp_path: Path) -> None:
    # the fingerprint is the one taken before it was started: a package file edited while it
    # imported (here: a fingerprint that does not match the files) makes the engine replace it
    p, ctl = warmstart.spawn_launcher()
    early = warmstart.EarlyLauncher(p, ctl, "not the package on disk")
    launcher = proc.WarmLauncher(root=tmp_path, grace=1.0)
    launcher.adopt(early)
    try:
        first, said = run_stage(stage_script(tmp_path), tmp_path, launcher)
        assert said == ["warm launcher: package files changed on disk since it started; starting a new one"]
        assert launcher.started == 2 and first["ppid"] == launcher.pid != early.pid
    finally:
        anyio.run(launcher.aclose)
    wait_until(lambda: early.proc.poll() is not None, "the replaced launcher to end", 10)


def test_an_early_launcher_whose_socket_ends_before_its_configuration_exits_quietly() -> None:
    early = warmstart.start_early(env={})
    assert early is not None
    early.ctl.close()
    assert early.proc.wait(30) == 0


def test_no_early_launcher_when_warm_starts_are_off_in_the_environment() -> None:
    assert warmstart.start_early(env={"QTSW_ENGINE_WARM_START": "false"}) is None


@pytest.mark.parametrize(("argv", "expected"), [
    (["--run-now", "--no-ui"], True),
    (["--root", "/r", "--no-ui", "--stage", "merger"], True),
    (["--no-ui", "--stage=analyzer", "--full"], True),
    (["--run-now"], False),  # the console: its engine starts its launcher with the console
    (["--no-ui"], False),  # the scheduler: no run waits on it
    (["--no-ui", "--run-now", "--schedule", "09:00"], False),
    (["--no-ui", "--run-now", "--help"], False),
    (["--attach"], False),
    (["--root", "/r", "status", "--json"], False),
    (["ctl", "run-now"], False),
    (["--root", "--no-ui", "results"], False),  # a root named like an option, then a command
])
def test_only_a_one_off_headless_run_starts_the_launcher_early(argv: list[str], expected: bool) -> None:
    assert entry.one_off_run(argv) is expected


def sample_root(tmp_path: Path, toml: str = "") -> Path:
    root = tmp_path / "root"
    settings = load_settings(root=root, env={})
    settings.ensure_dirs()
    if toml:
        (root / "qtsw.toml").write_text(toml, encoding="utf-8")
    write_samples(settings, days=3, instruments=["ES"], end=END)
    return root


def test_the_command_takes_over_its_early_launcher_for_its_run(tmp_path: Path) -> None:
    root = sample_root(tmp_path)
    early = warmstart.start_early(env={})
    assert early is not None
    assert cli.main(["--root", str(root), "--run-now", "--no-ui"], early=early) == 0
    assert early.taken and early.proc.returncode == 0  # served the run, then closed by the engine
    assert history.read_runs(load_settings(root=root, env={}))[-1]["status"] == "success"


def test_an_early_launcher_the_settings_turn_off_is_ended_by_the_command(tmp_path: Path) -> None:
    root = sample_root(tmp_path, "[engine]\nwarm_start = false\n")
    early = warmstart.start_early(env={})
    assert early is not None
    assert cli.main(["--root", str(root), "--run-now", "--no-ui"], early=early) == 0
    # killed and reaped by the command itself, while this process (its parent) still lives: not
    # by the kernel's parent-death signal
    assert early.proc.returncode == -signal.SIGKILL and not alive(early.pid)


def test_an_early_launcher_of_a_command_that_fails_to_start_is_ended(tmp_path: Path) -> None:
    early = warmstart.start_early(env={})
    assert early is not None
    with pytest.raises(SystemExit) as stopped:
        entry.run(["--root", str(tmp_path / "root"), "--run-now", "--no-ui", "--bogus"], early)
    assert stopped.value.code == 4
    assert early.proc.returncode == -signal.SIGKILL and not alive(early.pid)


def test_the_entry_imports_nothing_heavy_before_it_starts_the_launcher() -> None:
    code = ("import sys, qtsw_tui.entry, pipeline_core.warmstart; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('numpy', 'pyarrow', 'anyio', 'textual') or m in ('pipeline_core.settings', 'qtsw_tui.cli')))")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), timeout=60)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == "[]"
