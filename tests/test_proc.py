"""The stage runner: real subprocesses, their output, the success contract, and the kill."""

from __future__ import annotations

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

from pipeline_core import proc, protocol
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


class Recorder:
    def __init__(self) -> None:
        self.lines: list[str] = []
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
        }

    def _start(self, pid: int) -> None:
        self.pid = pid


def run(argv: list[str], tmp_path: Path, rec: Recorder | None = None, **kw) -> proc.StageOutcome:
    rec = rec or Recorder()
    opts = {"timeout": 30.0, "grace": 1.0, "silence_warning": 300.0, **kw}

    async def main() -> proc.StageOutcome:
        return await proc.run_stage(argv, log_path=tmp_path / "logs" / "stage.log", **opts, **rec.kwargs())

    return anyio.run(main)


GRANDCHILD = textwrap.dedent("""
    # a grandchild that ignores SIGTERM, so only SIGKILL of the whole group ends it
    gc = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    Path = __import__("pathlib").Path
    Path(sys.argv[1]).write_text(f"{os.getpid()} {gc.pid}")
""")


def test_success_with_result_output_and_messages(tmp_path: Path) -> None:
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
    out = run(argv, tmp_path, rec)
    assert out.status == "success" and out.exit_code == 0 and out.error is None
    assert out.counts == {"files": 2} and out.msg == "all done"
    assert rec.lines == ["plain text line", "ünïcode ✓ and CRLF", "to stderr"]
    assert [m.type for m in rec.messages] == ["progress", "metric", "warning", "result"]
    log = (tmp_path / "logs" / "stage.log").read_text(encoding="utf-8")
    assert "plain text line\nünïcode ✓ and CRLF\nto stderr\n" in log
    assert protocol.MARKER not in log  # structured messages are not free text


def test_partial_result_is_partial(tmp_path: Path) -> None:
    out = run(script(tmp_path, 'rep.result("partial", "one file quarantined")'), tmp_path)
    assert out.status == "partial" and out.exit_code == 0


def test_exit_zero_without_result_is_failure(tmp_path: Path) -> None:
    out = run(script(tmp_path, 'print("[SUCCESS] all good, honest")'), tmp_path)
    assert out.status == "failure"
    assert out.exit_code == 0
    assert "without a result" in (out.error or "")


def test_nonzero_exit_with_success_result_is_failure(tmp_path: Path) -> None:
    out = run(script(tmp_path, 'rep.result("success", "fine")\nsys.exit(1)'), tmp_path)
    assert out.status == "failure" and out.exit_code == 1
    assert "exit code 1" in (out.error or "")


def test_failure_result_names_its_error(tmp_path: Path) -> None:
    out = run(script(tmp_path, 'rep.result("failure", "broke", error="ES.csv line 4: bad time")\nsys.exit(1)'), tmp_path)
    assert out.status == "failure"
    assert "ES.csv line 4: bad time" in (out.error or "")


def test_one_megabyte_line(tmp_path: Path) -> None:
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
    out = run(argv, tmp_path, rec)
    assert out.status == "success"
    assert [len(x) for x in rec.lines] == [1_000_000, 300_000]
    assert set(rec.lines[0]) == {"x"}
    big = [m for m in rec.messages if m.type == "metric"]
    assert len(big) == 1 and len(big[0].body["data"]["blob"]) == 500_000
    log = (tmp_path / "logs" / "stage.log").read_text()
    assert "x" * 1_000_000 + "\n" in log


def test_hang_times_out_and_kills_the_whole_group(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    argv = script(tmp_path, GRANDCHILD + "\nprint('working', flush=True)\ntime.sleep(600)\n")
    argv.append(str(pids_file))
    rec = Recorder()
    t0 = time.monotonic()
    out = run(argv, tmp_path, rec, timeout=1.5, grace=0.5)
    took = time.monotonic() - t0
    assert out.status == "failure" and out.timed_out
    assert "timed out after 1.5 s" in (out.error or "")
    assert took < 10
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 2 and rec.pid == pids[0]
    assert wait_dead(pids, 0.5) == [], "no process of the stage may outlive it"
    assert any("timed out" in n and "killed" in n for n in rec.notes)
    assert "[qtsw] timed out" in (tmp_path / "logs" / "stage.log").read_text()


def test_result_then_hang_fails_after_grace(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    argv = script(tmp_path, GRANDCHILD + '\nrep.result("success", "done")\ntime.sleep(600)\n')
    argv.append(str(pids_file))
    t0 = time.monotonic()
    out = run(argv, tmp_path, timeout=60, grace=0.5)
    assert time.monotonic() - t0 < 10  # not the 60 s timeout: the grace after the result
    assert out.status == "failure" and out.hung_after_result and not out.timed_out
    assert "did not exit" in (out.error or "")
    assert out.result is not None and out.result["status"] == "success"
    assert wait_dead([int(p) for p in pids_file.read_text().split()], 0.5) == []


def test_lingering_grandchild_is_killed_after_a_clean_exit(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    argv = script(tmp_path, GRANDCHILD + '\nrep.result("success", "done")\n')
    argv.append(str(pids_file))
    rec = Recorder()
    out = run(argv, tmp_path, rec, grace=0.3)
    assert out.status == "success"
    assert wait_dead([int(p) for p in pids_file.read_text().split()], 0.5) == []
    assert any("still running at the end" in n for n in rec.notes)


def test_process_that_left_the_group_is_swept(tmp_path: Path) -> None:
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
    out = run(argv, tmp_path, rec, grace=0.3)
    assert out.status == "success"
    assert wait_dead([int(pid_file.read_text())], 0.5) == []
    assert any("left the group" in n for n in rec.notes)


def test_silence_produces_warnings(tmp_path: Path) -> None:
    rec = Recorder()
    out = run(script(tmp_path, 'print("start", flush=True)\ntime.sleep(1.0)\nrep.result("success", "done")'),
              tmp_path, rec, silence_warning=0.3)
    assert out.status == "success"
    assert len(rec.silences) >= 2  # warned, and again after a further silent period
    assert all(s >= 0.29 for s in rec.silences)


def test_cancel_kills_the_group(tmp_path: Path) -> None:
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
                                         silence_warning=300, **rec.kwargs())

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
    assert any(n.endswith("terminated as asked") for n in rec.notes), rec.notes
    assert not any("still running" in n for n in rec.notes), rec.notes


def test_environment_is_unbuffered_utf8_with_tokens(tmp_path: Path) -> None:
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
    run(argv, tmp_path, rec, env={"QTSW_RUN_ID": "r1"})
    import json

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
def test_any_output_arrives_line_for_line(tmp_path: Path, lines: list[str], chunk: int) -> None:
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
    out = run(argv, tmp_path, rec)
    assert out.status == "success"
    assert rec.lines == [safe(x) for x in lines]
