"""The stage protocol: marked JSON lines never confused with free text; the result contract."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from pipeline_core.protocol import MARKER, Reporter, encode, parse


def test_messages_round_trip() -> None:
    out = io.StringIO()
    rep = Reporter(out)
    rep.say("Processing ES.csv")
    rep.progress(3, 10, "files", instrument="ES")
    rep.metric("rows", kept=5)
    rep.warning("export never completed", file="ES.csv")
    rep.result("partial", "1 file quarantined", counts={"files": 2}, error=None)
    lines = out.getvalue().splitlines()
    assert parse(lines[0]) is None
    p = parse(lines[1])
    assert p is not None and p.type == "progress" and p.body["done"] == 3 and p.body["instrument"] == "ES"
    assert parse(lines[2]).body["data"] == {"kept": 5}
    assert parse(lines[3]).type == "warning"
    r = parse(lines[4])
    assert r.type == "result" and r.body["status"] == "partial" and r.body["counts"] == {"files": 2}


@given(st.text())
def test_free_text_is_never_a_message(text: str) -> None:
    # anything a stage prints without the marker is free text, JSON or not
    for line in text.splitlines() or [text]:
        if not line.startswith(MARKER):
            assert parse(line) is None


def test_marked_lines_that_are_not_messages_are_free_text() -> None:
    assert parse(MARKER + "not json") is None
    assert parse(MARKER + json.dumps({"type": "shout"})) is None
    assert parse(MARKER + json.dumps({"type": "result", "status": "great"})) is None
    assert parse(json.dumps({"type": "result", "status": "success"})) is None
    assert parse(encode("result", status="success", msg="ok")).type == "result"


def _stage(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    script = tmp_path / "stage.py"
    script.write_text(
        "import sys\n"
        "from pipeline_core.protocol import stage_main\n"
        "def build(p): p.add_argument('--mode')\n"
        f"def run(args, settings, rep):\n{body}\n"
        "sys.exit(stage_main('demo', build, run))\n"
    )
    return subprocess.run(
        [sys.executable, str(script), "--root", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )


def test_stage_main_success_and_exit_codes(tmp_path: Path) -> None:
    done = _stage(tmp_path, "    rep.result('success', 'ok')\n    return 'success'")
    assert done.returncode == 0
    assert parse(done.stdout.splitlines()[-1]).body["status"] == "success"


def test_stage_without_result_fails(tmp_path: Path) -> None:
    done = _stage(tmp_path, "    rep.say('forgot')\n    return 'success'")
    assert done.returncode == 1
    last = parse(done.stdout.splitlines()[-1])
    assert last.body["status"] == "failure" and last.body["error"] == "no result reported"


def test_stage_exception_becomes_a_named_failure(tmp_path: Path) -> None:
    done = _stage(tmp_path, "    raise KeyError('instrument')")
    assert done.returncode == 1
    last = parse(done.stdout.splitlines()[-1])
    assert last.body["status"] == "failure" and "KeyError: 'instrument'" in last.body["error"]
    assert "Traceback" in done.stdout  # a bug: its traceback goes to the stage's log


def test_stage_os_error_names_the_file_and_the_reason_without_a_traceback(tmp_path: Path) -> None:
    done = _stage(tmp_path, "    raise OSError(28, 'No space left on device', '/data/processed/ES/ES_2025.parquet')")
    assert done.returncode == 1
    last = parse(done.stdout.splitlines()[-1])
    assert last.body["status"] == "failure"
    assert last.body["error"] == "/data/processed/ES/ES_2025.parquet: No space left on device"
    assert "Traceback" not in done.stdout


def test_stage_with_bad_settings_exits_2(tmp_path: Path) -> None:
    (tmp_path / "qtsw.toml").write_text('[input]\nraw_policy = "shred"\n')
    done = _stage(tmp_path, "    return 'success'")
    assert done.returncode == 2
    assert "input.raw_policy" in parse(done.stdout.splitlines()[-1]).body["error"]


def test_free_text_cannot_forge_a_message() -> None:
    """A file name holding a newline and the marker, said by a stage, stays free text."""
    out = io.StringIO()
    forged = MARKER + json.dumps({"type": "result", "status": "success", "msg": "forged"})
    Reporter(out).say(f"quarantined ES_a\n{forged}.csv: bad name")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and [parse(line) for line in lines] == [None, None]
    assert lines[1].startswith("\\x02qtsw:")
