"""The stage runner: real subprocesses, their output, the success contract, and the kill."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from processes import alive

from pipeline_core import launcher, proc, protocol
from pipeline_core.safetext import safe


def wait_dead(pids: list[int], seconds: float = 5.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.02)
    return [p for p in pids if alive(p)]


def script(tmp_path: Path, body: str, name: str = "stage.py") -> list[str]:
    path = tmp_path / name
    header = "import os, sys, time, subprocess, signal\nfrom pipeline_core.protocol import Reporter\nrep = Reporter()\n"
    path.write_text(header + textwrap.dedent(body), encoding="utf-8")
    return [sys.executable, str(path)]


@pytest.fixture(scope="module")
def warm_launcher():
    """One warm launcher for this module's warm runs (each test has its own event loop)."""
    launcher = proc.WarmLauncher(grace=1.0)
    launcher.start()
    yield launcher
    anyio.run(launcher.aclose)


@pytest.fixture(params=["plain", "warm"])
def how(request: pytest.FixtureRequest) -> proc.WarmLauncher | None:
    """Each stage test runs both ways: a plain subprocess, and forked by the warm launcher."""
    return request.getfixturevalue("warm_launcher") if request.param == "warm" else None


class Recorder:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.launcher_events: list[str] = []
        self.messages: list[protocol.Message] = []
        self.notes: list[str] = []
        self.silences: list[float] = []
        self.pid: int | None = None

    def kwargs(self) -> dict:
        return {
            "on_output": self.lines.append,
            "on_message": self.messages.append,
            "on_note": self.notes.append,
            "on_silence": self.silences.append,
            "on_start": self._start,
            "on_launcher": lambda text, data: self.launcher_events.append(text),
        }

    def _start(self, pid: int) -> None:
        self.pid = pid


def run(argv: list[str], tmp_path: Path, rec: Recorder | None = None, *,
        how: proc.WarmLauncher | None = None, **kw) -> proc.StageOutcome:
    """Run a stage (plain, or forked by the launcher ``how``); a warm one must really be forked."""
    rec = rec or Recorder()
    opts = {"timeout": 30.0, "grace": 1.0, "silence_warning": 300.0, **kw}
    forked = how.forked if how is not None else 0

    async def main() -> proc.StageOutcome:
        return await proc.run_stage(argv, log_path=tmp_path / "logs" / "stage.log", launcher=how, **opts,
                                    **rec.kwargs())

    out = anyio.run(main)
    if how is not None:
        assert rec.launcher_events == [] and how.forked == forked + 1, "the stage was not started warm"
    return out


GRANDCHILD = textwrap.dedent("""
    # a grandchild that ignores SIGTERM, so only SIGKILL of the whole group ends it
    gc = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    Path = __import__("pathlib").Path
    Path(sys.argv[1]).write_text(f"{os.getpid()} {gc.pid}")
""")


def test_success_with_result_output_and_messages(tmp_path: Path, how: proc.WarmLauncher | None) -> None:
    argv = script(
        tmp_path,
        """
        print("plain text line")
        print("ünïcode ✓ and CRLF", end="\\r\\n")
        print("to stderr", file=sys.stderr)
        rep.progress(1, 2, "half")
        rep.metric("rows written", rows=5)
        rep.warning("something odd", file="x.csv")
        rep.result("success", "all done", counts={"files": 2})
        """,
    )
    rec = Recorder()
    out = run(argv, tmp_path, rec, how=how)
    assert out.status == "success" and out.exit_code == 0 and out.error is None
    assert out.counts == {"files": 2} and out.msg == "all done"
    assert rec.lines == ["plain text line", "ünïcode ✓ and CRLF", "to stderr"]
    assert [m.type for m in rec.messages] == ["progress", "metric", "warning", "result"]
    log = (tmp_path / "logs" / "stage.log").read_text(encoding="utf-8")
    assert "plain text line\nünïcode ✓ and CRLF\nto stderr\n" in log
    assert protocol.MARKER not in log  # structured messages are not free text


def test_partial_result_is_partial(tmp_path: Path, how: proc.WarmLauncher | None) -> None:
    out = run(script(tmp_path, 'rep.result("partial", "one file quarantined")'), tmp_path, how=how)
    assert out.status == "partial" and out.exit_code == 0


def test_exit_zero_without_result_is_failure(tmp_path: Path, how: proc.WarmLauncher | None) -> None:
    out = run(script(tmp_path, 'print("[SUCCESS] all good, honest")'), tmp_path, how=how)
    assert out.status == "failure"
    assert out.exit_code == 0
    assert "without a result" in (out.error or "")


def test_nonzero_exit_with_success_result_is_failure(tmp_path: Path, how: proc.WarmLauncher | None) -> None:
    out = run(script(tmp_path, 'rep.result("success", "fine")\nsys.exit(1)'), tmp_path, how=how)
    assert out.status == "failure" and out.exit_code == 1
    assert "exit code 1" in (out.error or "")


def test_failure_result_names_its_error(tmp_path: Path, how: proc.WarmLauncher | None) -> None:
    out = run(script(tmp_path, 'rep.result("failure", "broke", error="ES.csv line 4: bad time")\nsys.exit(1)'), tmp_path, how=how)
    assert out.status == "failure"
    assert "ES.csv line 4: bad time" in (out.error or "")


def test_one_megabyte_line(tmp_path: Path, how: proc.WarmLauncher | None) -> None:
    argv = script(
        tmp_path,
        """
        sys.stdout.write("x" * 1_000_000 + "\\n")
        sys.stdout.write("y" * 300_000)  # and a long last line without a newline before the result
        sys.stdout.write("\\n")
        rep.metric("big", blob="z" * 500_000)
        rep.result("success", "done")
        """,
    )
    rec = Recorder()
    out = run(argv, tmp_path, rec, how=how)
    assert out.status == "success"
    assert [len(x) for x in rec.lines] == [1_000_000, 300_000]
    assert set(rec.lines[0]) == {"x"}
    big = [m for m in rec.messages if m.type == "metric"]
    assert len(big) == 1 and len(big[0].body["data"]["blob"]) == 500_000
    log = (tmp_path / "logs" / "stage.log").read_text()
    assert "x" * 1_000_000 + "\n" in log


def test_hang_times_out_and_kills_the_whole_group(tmp_path: Path, how: proc.WarmLauncher | None) -> None:
    pids_file = tmp_path / "pids"
    argv = script(tmp_path, GRANDCHILD + "\nprint('working', flush=True)\ntime.sleep(600)\n")
    argv.append(str(pids_file))
    rec = Recorder()
    t0 = time.monotonic()
    out = run(argv, tmp_path, rec, timeout=1.5, grace=0.5, how=how)
    took = time.monotonic() - t0
    assert out.status == "failure" and out.timed_out
    assert "timed out after 1.5 s" in (out.error or "")
    assert took < 10
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 2 and rec.pid == pids[0]
    assert wait_dead(pids, 0.5) == [], "no process of the stage may outlive it"
    assert any("timed out" in n and "killed" in n for n in rec.notes)
    assert "[qtsw] timed out" in (tmp_path / "logs" / "stage.log").read_text()


def test_result_then_hang_fails_after_grace(tmp_path: Path, how: proc.WarmLauncher | None) -> None:
    pids_file = tmp_path / "pids"
    argv = script(tmp_path, GRANDCHILD + '\nrep.result("success", "done")\ntime.sleep(600)\n')
    argv.append(str(pids_file))
    t0 = time.monotonic()
    out = run(argv, tmp_path, timeout=60, grace=0.5, how=how)
    assert time.monotonic() - t0 < 10  # not the 60 s timeout: the grace after the result
    assert out.status == "failure" and out.hung_after_result and not out.timed_out
    assert "did not exit" in (out.error or "")
    assert out.result is not None and out.result["status"] == "success"
    assert wait_dead([int(p) for p in pids_file.read_text().split()], 0.5) == []


def test_lingering_grandchild_is_killed_after_a_clean_exit(tmp_path: Path, how: proc.WarmLauncher | None) -> None:
    pids_file = tmp_path / "pids"
    argv = script(tmp_path, GRANDCHILD + '\nrep.result("success", "done")\n')
    argv.append(str(pids_file))
    rec = Recorder()
    out = run(argv, tmp_path, rec, grace=0.3, how=how)
    assert out.status == "success"
    assert wait_dead([int(p) for p in pids_file.read_text().split()], 0.5) == []
    assert any("still running at the end" in n for n in rec.notes)


def test_process_that_left_the_group_is_swept(tmp_path: Path, how: proc.WarmLauncher | None) -> None:
    pid_file = tmp_path / "escaped"
    argv = script(
        tmp_path,
        """
        esc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                               start_new_session=True)
        open(sys.argv[1], "w").write(str(esc.pid))
        rep.result("success", "done")
        """,
    )
    argv.append(str(pid_file))
    rec = Recorder()
    out = run(argv, tmp_path, rec, grace=0.3, how=how)
    assert out.status == "success"
    assert wait_dead([int(pid_file.read_text())], 0.5) == []
    assert any("left the group" in n for n in rec.notes)


def test_silence_produces_warnings(tmp_path: Path, how: proc.WarmLauncher | None) -> None:
    rec = Recorder()
    out = run(script(tmp_path, 'print("start", flush=True)\ntime.sleep(1.0)\nrep.result("success", "done")'),
              tmp_path, rec, silence_warning=0.3, how=how)
    assert out.status == "success"
    assert len(rec.silences) >= 2  # warned, and again after a further silent period
    assert all(s >= 0.29 for s in rec.silences)


def test_cancel_kills_the_group(tmp_path: Path, how: proc.WarmLauncher | None) -> None:
    pids_file = tmp_path / "pids"
    argv = script(tmp_path, GRANDCHILD + "\ntime.sleep(600)\n")
    argv.append(str(pids_file))
    rec = Recorder()
    cancelled = []

    async def main() -> None:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:

                async def stage() -> None:
                    await proc.run_stage(argv, log_path=tmp_path / "s.log", timeout=60, grace=0.5,
                                         silence_warning=300, launcher=how, **rec.kwargs())

                tg.start_soon(stage)
                with anyio.fail_after(10):
                    while not pids_file.exists() or len(pids_file.read_text().split()) < 2:
                        await anyio.sleep(0.02)
                scope.cancel()
        cancelled.append(scope.cancelled_caught)

    anyio.run(main)
    assert cancelled == [True]
    assert wait_dead([int(p) for p in pids_file.read_text().split()], 0.5) == []
    assert "cancelled" in (tmp_path / "s.log").read_text()
    # after a cancel, stopping the processes is what was asked for: said plainly, not as an alarm
    assert rec.notes[0] == "cancelled: stopping the stage's processes"
    # (terminated, or killed when a loaded machine kept them past the 0.5 s grace)
    assert any(n.startswith("stopped: process group ") and n.endswith(("terminated as asked", "killed as asked"))
               for n in rec.notes), rec.notes
    assert not any("still running" in n for n in rec.notes), rec.notes


def test_environment_is_unbuffered_utf8_with_tokens(tmp_path: Path, how: proc.WarmLauncher | None) -> None:
    argv = script(
        tmp_path,
        """
        import json
        keys = ["PYTHONUNBUFFERED", "PYTHONIOENCODING", "PYTHONUTF8", "QTSW_RUN_ID"]
        print(json.dumps({k: os.environ.get(k) for k in keys}))
        print(json.dumps({"stdin": sys.stdin.read(), "pgid_is_pid": os.getpgrp() == os.getpid(),
                          "token": bool(os.environ.get("QTSW_PROC_TOKEN"))}))
        rep.result("success", "done")
        """,
    )
    rec = Recorder()
    run(argv, tmp_path, rec, env={"QTSW_RUN_ID": "r1"}, how=how)

    env = json.loads(rec.lines[0])
    assert env == {"PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", "PYTHONUTF8": "1", "QTSW_RUN_ID": "r1"}
    assert json.loads(rec.lines[1]) == {"stdin": "", "pgid_is_pid": True, "token": True}


@pytest.mark.parametrize(
    ("code", "result", "status", "needle"),
    [
        (0, {"status": "success", "msg": "ok"}, "success", None),
        (0, {"status": "partial", "msg": "ok"}, "partial", None),
        (0, {"status": "failure", "msg": "bad", "error": "E"}, "failure", "E"),
        (0, None, "failure", "exit code 0 without a result"),
        (1, None, "failure", "exit code 1 without a result"),
        (2, {"status": "failure", "error": "bad settings"}, "failure", "bad settings"),
        (1, {"status": "success"}, "failure", "exit code 1, result success"),
        (-9, None, "failure", "killed by SIGKILL"),
    ],
)
def test_judge(code: int, result: dict | None, status: str, needle: str | None) -> None:
    out = proc.judge(code, result)
    assert out.status == status
    if needle:
        assert needle in (out.error or "")
    else:
        assert out.error is None


# Lines as a stage may print them: any text without a newline, long ones and marker-like ones too.
_line = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=40),
    st.just(protocol.MARKER + "not json"),
    st.builds(lambda n: "a" * n, st.integers(60_000, 140_000)),
)


@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_line, max_size=8), chunk=st.integers(1, 70_000))
def test_any_output_arrives_line_for_line(tmp_path: Path, lines: list[str], chunk: int, how: proc.WarmLauncher | None) -> None:
    """Whatever the stage writes, in whatever pieces, comes back as exactly those lines (each
    escaped for a terminal: control characters made visible)."""
    data = tmp_path / "lines.txt"
    data.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    argv = script(
        tmp_path,
        f"""
        raw = open({str(data)!r}, "rb").read()
        out = sys.stdout.buffer
        for i in range(0, len(raw), {chunk}):
            out.write(raw[i:i + {chunk}]); out.flush()
        rep.result("success", "done")
        """,
    )
    rec = Recorder()
    out = run(argv, tmp_path, rec, how=how)
    assert out.status == "success"
    assert rec.lines == [safe(x) for x in lines]


# --- the warm launcher ---------------------------------------------------------------------------


def test_a_warm_stage_is_forked_single_threaded_in_its_own_session(
    tmp_path: Path, warm_launcher: proc.WarmLauncher
) -> None:
    argv = script(
        tmp_path,
        """
        import gc, json, random
        import numpy as np
        from pipeline_core import launcher
        print(json.dumps({"threads_at_fork": launcher.threads_at_fork, "ppid": os.getppid(),
                          "gc": gc.isenabled(),
                          "sid": os.getsid(0) == os.getpid(), "pgid": os.getpgrp() == os.getpid(),
                          "argv": sys.argv[1:], "cwd": os.getcwd(), "x": os.environ.get("X_STAGE"),
                          "sigint": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
                          "sigterm": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
                          "sigchld": signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL,
                          "blocked": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
                          "random": [random.random(), float(np.random.random())]}))
        rep.result("success", "done")
        """,
    )
    seen = []
    for _ in range(2):
        rec = Recorder()
        out = run([*argv, "a b", "ü"], tmp_path, rec, how=warm_launcher, env={"X_STAGE": "1"})
        assert out.status == "success"
        seen.append(json.loads(rec.lines[0]))
    first = seen[0]
    assert first["threads_at_fork"] == 1, "the launcher forks with one thread only"
    assert first["ppid"] == warm_launcher.pid
    assert first["sid"] and first["pgid"]
    assert first["argv"] == ["a b", "ü"] and first["cwd"] == os.getcwd() and first["x"] == "1"
    assert first["sigint"] and first["sigterm"] and first["sigchld"] and first["blocked"] == []
    assert first["gc"], "the launcher imports with the collector off; a stage has it on"
    assert seen[0]["random"][0] != seen[1]["random"][0], "each stage has its own random state"
    assert seen[0]["random"][1] != seen[1]["random"][1]


def test_a_warm_stage_has_the_stages_imported_but_not_pandas(
    tmp_path: Path, warm_launcher: proc.WarmLauncher
) -> None:
    # pandas doubled the launcher's start (a whole command waits for it) and no stage uses it
    argv = script(
        tmp_path,
        """
        import json
        print(json.dumps({m: m in sys.modules for m in
                          ("pipeline_core.translator", "pipeline_core.merger", "pyarrow.parquet", "pandas")}))
        rep.result("success", "done")
        """,
    )
    rec = Recorder()
    out = run(argv, tmp_path, rec, how=warm_launcher)
    assert out.status == "success"
    assert json.loads(rec.lines[0]) == {
        "pipeline_core.translator": True, "pipeline_core.merger": True, "pyarrow.parquet": True, "pandas": False}


def test_the_launcher_killed_mid_stage_fails_it_clearly_and_a_new_one_takes_over(tmp_path: Path) -> None:
    launcher = proc.WarmLauncher(grace=0.5)
    launcher.start()
    pids_file = tmp_path / "pids"
    hang = script(tmp_path, GRANDCHILD + "\nprint('working', flush=True)\ntime.sleep(600)\n", "hang.py")
    ok = script(tmp_path, "from pipeline_core import launcher\nprint(os.getppid())\nrep.result('success', 'done')\n",
                "ok.py")
    rec = Recorder()
    results: list[proc.StageOutcome] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:

            async def stage() -> None:
                results.append(await proc.run_stage([*hang, str(pids_file)], log_path=tmp_path / "s.log",
                                                    timeout=60, grace=0.5, silence_warning=300,
                                                    launcher=launcher, **rec.kwargs()))

            tg.start_soon(stage)
            with anyio.fail_after(20):
                while not pids_file.exists() or len(pids_file.read_text().split()) < 2:
                    await anyio.sleep(0.02)
            os.kill(launcher.pid, signal.SIGKILL)
        again = Recorder()
        results.append(await proc.run_stage(ok, log_path=tmp_path / "ok.log", timeout=60, grace=0.5,
                                            silence_warning=300, launcher=launcher, **again.kwargs()))
        rec.launcher_events.extend(again.launcher_events)
        rec.lines.extend(again.lines)

    old = launcher.pid
    try:
        anyio.run(main)
        hung, fine = results
        assert hung.status == "failure" and "the warm launcher ended while the stage ran" in (hung.error or "")
        assert wait_dead([int(p) for p in pids_file.read_text().split()], 2.0) == []
        assert any("warm launcher ended" in n for n in rec.notes)
        # the next stage: a new launcher, said so, and the stage forked by it
        assert fine.status == "success"
        assert launcher.started == 2 and launcher.pid != old and int(rec.lines[-1]) == launcher.pid
        assert len(rec.launcher_events) == 1 and "ended (killed by SIGKILL); starting a new one" in rec.launcher_events[0]
    finally:
        anyio.run(launcher.aclose)
    assert wait_dead([old, launcher.pid or old], 2.0) == []


def test_changed_package_files_start_a_new_launcher(tmp_path: Path) -> None:
    stamp = tmp_path / "fingerprint"
    stamp.write_text("one")
    launcher = proc.WarmLauncher(grace=0.5, fingerprint=stamp.read_text)
    launcher.start()
    argv = script(tmp_path, "print(os.getppid())\nrep.result('success', 'done')\n")
    try:
        rec = Recorder()
        assert run(argv, tmp_path, rec, how=launcher).status == "success"
        first = launcher.pid
        stamp.write_text("two")  # as if a file of the package had been edited
        rec = Recorder()
        out = anyio.run(lambda: proc.run_stage(argv, log_path=tmp_path / "s.log", timeout=30, grace=0.5,
                                               silence_warning=300, launcher=launcher, **rec.kwargs()))
        assert out.status == "success" and launcher.started == 2
        assert int(rec.lines[0]) == launcher.pid != first
        assert rec.launcher_events == ["warm launcher: package files changed on disk since it started; "
                                       "starting a new one"]
        assert wait_dead([first], 5.0) == [], "the retired launcher ends once its stages have"
    finally:
        anyio.run(launcher.aclose)


def test_a_command_that_is_not_this_interpreter_runs_plain(tmp_path: Path, warm_launcher: proc.WarmLauncher) -> None:
    rec = Recorder()
    out = anyio.run(lambda: proc.run_stage(["/bin/sh", "-c", "echo plain; exit 0"], log_path=tmp_path / "s.log",
                                           timeout=30, grace=0.5, silence_warning=300, launcher=warm_launcher,
                                           **rec.kwargs()))
    assert out.exit_code == 0 and rec.lines == ["plain"]
    assert rec.launcher_events and "plain subprocess" in rec.launcher_events[0]


def test_parse_argv() -> None:
    exe = sys.executable
    assert launcher.parse_argv([exe, "-X", "utf8", "-m", "pipeline_core.merger", "--root", "r"], exe) == \
        launcher.Target("module", "pipeline_core.merger", ("--root", "r"))
    assert launcher.parse_argv([exe, "s.py", "a"], exe) == launcher.Target("path", "s.py", ("a",))
    assert launcher.parse_argv([exe, "-c", "pass", "x"], exe) == launcher.Target("code", "pass", ("x",))
    assert "interpreter option -O" in str(launcher.parse_argv([exe, "-O", "s.py"], exe))
    assert "not this interpreter" in str(launcher.parse_argv(["/usr/bin/python2", "s.py"], exe))


def test_a_real_stage_says_the_same_warm_or_plain(settings, how: proc.WarmLauncher | None) -> None:
    """The merger with nothing to merge: its output is exactly its own lines, both ways (the
    launcher has imported the stage modules; running one as ``__main__`` must not show it)."""
    rec = Recorder()
    argv = proc.python_command("pipeline_core.merger", "--root", str(settings.root), "--run-id", "t")
    out = run(argv, settings.root, rec, how=how)
    assert out.status == "success" and out.exit_code == 0
    assert rec.lines == ["nothing to merge: data/analyzer_temp holds no run folders"]
    assert [m.type for m in rec.messages] == ["result"]
