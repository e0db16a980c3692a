"""The event log: v1 schema, one writer (seq, whole lines), tolerant reader, tailer."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_core.events import (
    EventError,
    EventTailer,
    EventWriter,
    read_events,
    run_event_path,
)


def test_writer_numbers_events_and_stamps_chicago_time(tmp_path: Path) -> None:
    path = run_event_path(tmp_path, "r1")
    with EventWriter(path, "r1") as w:
        w.emit("pipeline", "start", "Pipeline run started")
        w.emit("translator", "metric", "rows", {"rows": 3})
        w.emit("pipeline", "success", "done", {"status": "success"})
    lines = path.read_text().splitlines()
    objs = [json.loads(x) for x in lines]
    assert [o["seq"] for o in objs] == [1, 2, 3]
    assert set(objs[0]) == {"v", "seq", "run_id", "stage", "event", "timestamp", "msg", "data"}
    assert objs[1]["data"] == {"rows": 3}
    ts = datetime.fromisoformat(objs[0]["timestamp"])
    assert ts.utcoffset() is not None
    assert ts.tzname() in ("CST", "CDT") or ts.utcoffset().total_seconds() in (-6 * 3600, -5 * 3600)


def test_reopened_writer_continues_the_sequence(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.jsonl"
    with EventWriter(path, "scheduler") as w:
        w.emit("scheduler", "start")
    with EventWriter(path, "scheduler") as w:
        ev = w.emit("scheduler", "skipped", "overlap")
    assert ev.seq == 2


def test_writer_rejects_unknown_stage_and_event(tmp_path: Path) -> None:
    with EventWriter(tmp_path / "x.jsonl", "r") as w:
        with pytest.raises(EventError, match="unknown stage"):
            w.emit("export", "start")
        with pytest.raises(EventError, match="unknown event"):
            w.emit("pipeline", "heartbeat")


def test_reader_skips_corrupt_and_partial_lines(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    with EventWriter(path, "r") as w:
        w.emit("pipeline", "start")
        w.emit("pipeline", "log", "x")
    with open(path, "a") as fh:
        fh.write("this is not json\n")
        fh.write('{"v":1,"seq":9,"run_id":"r","stage":"nope","event":"log","timestamp":"t"}\n')
        fh.write('{"v":1,"seq":10,"run_id":"r","stage":"pipel')  # a crash mid-line
    events, bad = read_events(path)
    assert [e.seq for e in events] == [1, 2]
    assert [b.line_no for b in bad] == [3, 4, 5]
    assert "unknown stage" in bad[1].reason
    assert bad[2].reason == "partial last line"


def test_reader_of_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_events(tmp_path / "none.jsonl") == ([], [])


def test_tailer_yields_appended_events_and_holds_back_partial_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    tail = EventTailer(path)
    assert tail.poll() == []  # the file does not exist yet
    w = EventWriter(path, "r")
    w.emit("pipeline", "start")
    assert [e.event for e in tail.poll()] == ["start"]
    line = w.emit("analyzer", "progress", "", {"done": 1}).to_line()
    assert [e.event for e in tail.poll()] == ["progress"]
    # a line arriving in two pieces is yielded once, whole
    with open(path, "a") as fh:
        fh.write(line.replace('"seq":2', '"seq":3')[:20])
        fh.flush()
        assert tail.poll() == []
        fh.write(line.replace('"seq":2', '"seq":3')[20:] + "\n")
    got = tail.poll()
    assert [e.seq for e in got] == [3]
    w.close()


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=50, deadline=None)
@given(msgs=st.lists(st.tuples(_text, st.dictionaries(st.text(max_size=5), st.integers() | _text, max_size=3)), max_size=10))
def test_what_is_written_is_read_back(tmp_path_factory: pytest.TempPathFactory, msgs: list) -> None:
    path = tmp_path_factory.mktemp("ev") / "p.jsonl"
    with EventWriter(path, "run") as w:
        written = [w.emit("analyzer", "log", m, d) for m, d in msgs]
    events, bad = read_events(path)
    assert bad == []
    assert events == written
