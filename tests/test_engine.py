"""The engine: runs, stage selection, statuses, events, records, cancel, recovery, schedule.

Stages here are small real scripts (written into the temp root) that behave as told by
``behaviour.json``: they do the bookkeeping a real stage does (consume raw files, write analyzer
output and state, merge it away), so a second run finds nothing to do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import anyio
import pytest
from processes import alive, processes_naming

from pipeline_core import history
from pipeline_core.engine import Engine, analyzer_status, worst
from pipeline_core.events import TERMINAL, Event, read_events, run_event_path, scheduler_event_path
from pipeline_core.runstate import EventMessage, OutputMessage
from pipeline_core.settings import CHICAGO, Settings, load_settings

FAKE_STAGE = textwrap.dedent(
    r'''
    import json, os, shutil, subprocess, sys, time
    from pathlib import Path
    from pipeline_core.protocol import Reporter
    from pipeline_core.settings import load_settings

    stage, inst, root = sys.argv[1], (None if sys.argv[2] == "-" else sys.argv[2]), Path(sys.argv[3])
    run_id = os.environ["QTSW_RUN_ID"]
    s = load_settings(root=root, env={})
    b_file = root / "behaviour.json"
    behaviour = json.loads(b_file.read_text()) if b_file.exists() else {}
    mode = behaviour.get(f"{stage}:{inst}", behaviour.get(stage, "ok"))
    with open(root / "pids.txt", "a") as fh:
        fh.write(f"{os.getpid()}\n")
    with open(root / "parents.txt", "a") as fh:
        fh.write(f"{os.getppid()}\n")
    with open(root / "intervals.txt", "a") as fh:
        fh.write(f"start {inst} {time.monotonic()}\n")
    rep = Reporter()
    rep.say(f"{stage} {inst or ''} starting in run {run_id} full={os.environ.get('QTSW_FULL')}")
    if mode == "grandchild":
        gc = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
        with open(root / "pids.txt", "a") as fh:
            fh.write(f"{gc.pid}\n")
        mode = "hang"
    if mode == "hang":
        (root / f"running-{stage}-{inst}").write_text("")
        time.sleep(600)
    if mode == "block":
        (root / f"running-{stage}-{inst}").write_text("")
        while not (root / "release").exists():
            time.sleep(0.01)
    if mode == "silent":
        time.sleep(3.0)
    if mode == "sleep":
        time.sleep(0.3)
    if mode == "bytes":
        rep.progress(200_000_000, 390_000_000, "ES.csv: 200 of 390 MB parsed", unit="bytes")
        time.sleep(0.8)  # long enough for a heartbeat at a 0.2 s progress interval
    if mode == "fail":
        rep.result("failure", "it broke", error=f"{stage} {inst or ''}: simulated failure".replace(" :", ":"))
        sys.exit(1)
    if mode == "no_result":
        sys.exit(0)
    if stage == "translator":
        s.archive_dir.mkdir(parents=True, exist_ok=True)
        for p in sorted(s.raw_dir.glob("*.csv")):
            p.rename(s.archive_dir / p.name)
    elif stage == "analyzer":
        out = s.analyzer_temp_dir / run_id
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{inst}.parquet").write_bytes(b"fake")
        from pipeline_core import catalog  # here: it imports pyarrow, slow for the other stages
        catalog.open_catalog(s).save_analysis(inst, {"analysis_hash": s.analysis_hash_for(inst), "last_run_id": run_id}, None)
    elif stage == "merger":
        for d in sorted(s.analyzer_temp_dir.iterdir()):
            shutil.rmtree(d)
    for i in range(1, 4):
        rep.progress(i, 3, "step", **({"instrument": inst} if inst else {}))
    rep.metric("rows", rows=7)
    with open(root / "intervals.txt", "a") as fh:
        fh.write(f"end {inst} {time.monotonic()}\n")
    rep.result("success", f"{stage} done", counts={"items": 1, "rows": 7})
    '''
)


def left_alive(root: Path, seconds: float = 1.0) -> list[int]:
    pids_file = root / "pids.txt"
    pids = [int(x) for x in pids_file.read_text().split()] if pids_file.exists() else []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return []
        time.sleep(0.02)
    return [p for p in pids if alive(p)]


def make_settings(root: Path, **overrides: object) -> Settings:
    opts = {"engine.workers": 2, "timeouts.grace": 0.5}
    opts.update({k.replace("__", "."): v for k, v in overrides.items()})
    s = load_settings(root=root, env={}, overrides=opts)
    s.ensure_dirs()
    return s


def fake_command(root: Path, tmp_path: Path) -> Callable[[str, str | None], list[str]]:
    script = tmp_path / "fake_stage.py"
    script.write_text(FAKE_STAGE, encoding="utf-8")

    def command(stage: str, instrument: str | None) -> list[str]:
        return [sys.executable, str(script), stage, instrument or "-", str(root)]

    return command


def behave(root: Path, **modes: str) -> None:
    (root / "behaviour.json").write_text(json.dumps({k.replace("_", ":"): v for k, v in modes.items()}))


def add_raw(s: Settings, name: str = "ES.csv") -> None:
    p = s.raw_dir / name
    p.write_text("Date,Time,Open,High,Low,Close,Volume,Instrument\n")
    old = time.time() - 3600
    os.utime(p, (old, old))


def add_store(s: Settings, *insts: str) -> None:
    for inst in insts:
        d = s.processed_dir / inst
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{inst}_2025.parquet").write_bytes(b"bars")


class Collector:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lines: list[OutputMessage] = []

    def __call__(self, msg: EventMessage | OutputMessage) -> None:
        if isinstance(msg, EventMessage):
            self.events.append(msg.event)
        else:
            self.lines.append(msg)


def check_run_file(s: Settings, run_id: str) -> list[Event]:
    """The §6.2 shape of a run's event file; returns its events."""
    events, bad = read_events(run_event_path(s.events_dir, run_id))
    assert bad == []
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert (events[0].stage, events[0].event) == ("pipeline", "start")
    terminal = [e for e in events if e.stage == "pipeline" and e.event in TERMINAL]
    assert len(terminal) == 1 and terminal[0] is events[-1]
    for stage in ("translator", "analyzer", "merger"):
        mine = [e for e in events if e.stage == stage]
        starts = [e for e in mine if e.event == "start"]
        ends = [e for e in mine if e.event in TERMINAL]
        skips = [e for e in mine if e.event == "skipped"]
        if skips:
            assert starts == [] and ends == [] and len(skips) == 1 and skips[0].data["reason"]
        else:
            assert len(starts) == 1 and len(ends) == 1 and mine.index(starts[0]) < mine.index(ends[0])
    for e in events:
        assert datetime.fromisoformat(e.timestamp).utcoffset() in (timedelta(hours=-6), timedelta(hours=-5))
    return events


def run_engine(engine: Engine, **kw: object):
    return anyio.run(lambda: engine.run(**kw))


# --- a whole run -------------------------------------------------------------------------------


def test_full_run_then_nothing_to_do(root: Path, tmp_path: Path) -> None:
    s = make_settings(root)
    add_raw(s)
    add_store(s, "ES", "NQ")
    engine = Engine(s, stage_command=fake_command(root, tmp_path))
    col = Collector()
    engine.subscribe(col)
    rs = run_engine(engine)
    assert rs.status == "success"
    assert {n: st.state for n, st in rs.stages.items()} == {
        "translator": "success", "analyzer": "success", "merger": "success"}
    assert {i: (p.state, p.done, p.total) for i, p in rs.instruments.items()} == {
        "ES": ("success", 3, 3), "NQ": ("success", 3, 3)}
    events = check_run_file(s, rs.run_id)
    assert events[-1].event == "success"
    assert [e.to_dict() for e in col.events if e.run_id == rs.run_id] == [e.to_dict() for e in events]
    kinds = {(e.stage, e.event) for e in events}
    assert {("analyzer", "progress"), ("analyzer", "metric"), ("translator", "progress")} <= kinds
    # free text goes to the logs and the subscribers, never into the event stream
    assert any("starting in run" in m.line and m.instrument == "ES" for m in col.lines)
    assert not any("starting in run" in e.msg for e in events)
    logs = history.run_logs(s, rs.run_id)
    assert set(logs) == {"translator", "analyzer-ES", "analyzer-NQ", "merger"}
    assert "starting in run" in logs["analyzer-NQ"].read_text()
    # the records
    line = history.read_runs(s)[-1]
    assert line == {"run_id": rs.run_id, "trigger": "manual", "started": rs.started.isoformat(),
                    "ended": rs.ended.isoformat(), "status": "success",
                    "stages": {"translator": "success", "analyzer": "success", "merger": "success"}}
    report = history.find_report(s, rs.run_id)
    assert report is not None
    assert Path(report["path"]).name.endswith(f"_{rs.run_id[:8]}.json")
    assert Path(report["path"]).name.startswith("pipeline_report_" + rs.started.strftime("%Y%m%d_%H%M%S"))
    assert report["status"] == "success" and report["trigger"] == "manual"
    assert report["engine_version"]
    for name in ("translator", "analyzer", "merger"):
        assert set(report["stages"][name]) >= {"status", "duration_seconds", "counts", "error"}
    assert report["stages"]["analyzer"]["counts"]["rows"] == 14
    assert set(report["stages"]["analyzer"]["instruments"]) == {"ES", "NQ"}
    snap = engine.snapshot()
    assert snap.current is None and snap.last_run == line and snap.scheduler == "off"

    # at once again: every stage skipped, with its reason, and quickly
    t0 = time.monotonic()
    rs2 = run_engine(engine)
    assert time.monotonic() - t0 < 2
    assert rs2.status == "success"
    ev2 = check_run_file(s, rs2.run_id)
    reasons = {e.stage: e.data["reason"] for e in ev2 if e.event == "skipped"}
    assert reasons == {"translator": "no raw files ready",
                       "analyzer": "no pending analysis (no bars changed since the last analysis)",
                       "merger": "no analyzer output awaiting merge"}
    assert [r["run_id"] for r in history.read_runs(s)] == [rs.run_id, rs2.run_id]
    assert left_alive(root) == []


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "plain"])
def test_one_instrument_failing_makes_the_run_partial(root: Path, tmp_path: Path, warm: bool) -> None:
    s = make_settings(root, engine__warm_start=warm)
    add_store(s, "ES", "NQ", "GC")
    behave(root, analyzer_NQ="fail")
    engine = Engine(s, stage_command=fake_command(root, tmp_path))
    rs = run_engine(engine)
    parents = {int(x) for x in (root / "parents.txt").read_text().split()}
    if warm:  # forked by the launcher, which ended with the run
        assert os.getpid() not in parents and len(parents) == 1 and not alive(parents.pop())
    else:
        assert parents == {os.getpid()}
    assert rs.status == "partial"
    assert rs.stages["analyzer"].state == "partial"
    assert {i: p.state for i, p in rs.instruments.items()} == {"ES": "success", "NQ": "failure", "GC": "success"}
    assert "NQ: simulated failure" in (rs.instruments["NQ"].error or "")
    assert rs.stages["merger"].state == "success"  # the others' output was merged
    events = check_run_file(s, rs.run_id)
    end = [e for e in events if e.stage == "analyzer" and e.event in TERMINAL][0]
    assert end.event == "failure" and end.data["status"] == "partial" and "NQ" in end.data["error"]
    assert events[-1].event == "failure" and events[-1].data["status"] == "partial"
    assert history.read_runs(s)[-1]["status"] == "partial"
    assert history.find_report(s, rs.run_id)["stages"]["analyzer"]["instruments"]["NQ"]["status"] == "failure"


def test_translator_failure_still_analyses_and_merger_failure_fails_the_run(root: Path, tmp_path: Path) -> None:
    s = make_settings(root)
    add_raw(s)
    add_store(s, "ES")
    behave(root, translator="fail", merger="no_result")
    rs = run_engine(Engine(s, stage_command=fake_command(root, tmp_path)))
    assert {n: st.state for n, st in rs.stages.items()} == {
        "translator": "failure", "analyzer": "success", "merger": "failure"}
    assert rs.status == "failure"
    assert "without a result" in (rs.stages["merger"].error or "")
    events = check_run_file(s, rs.run_id)
    assert events[-1].data["status"] == "failure"


def test_single_stage_run(root: Path, tmp_path: Path) -> None:
    s = make_settings(root)
    add_raw(s)
    add_store(s, "ES")
    rs = run_engine(Engine(s, stage_command=fake_command(root, tmp_path)), stages=["analyzer"], full=True)
    assert rs.trigger == "stage"
    assert {n: st.state for n, st in rs.stages.items()} == {
        "translator": "skipped", "analyzer": "success", "merger": "skipped"}
    assert rs.stages["translator"].reason.startswith("not requested")
    assert "full=1" in history.run_logs(s, rs.run_id)["analyzer-ES"].read_text()
    with pytest.raises(ValueError, match="unknown stage"):
        run_engine(Engine(s), stages=["sorter"])


def test_progress_in_bytes_is_shown_by_its_text(root: Path, tmp_path: Path) -> None:
    s = make_settings(root, timeouts__progress_interval=0.2)
    add_raw(s)
    behave(root, translator="bytes")
    rs = run_engine(Engine(s, stage_command=fake_command(root, tmp_path)), stages=["translator"])
    events, _ = read_events(run_event_path(s.events_dir, rs.run_id))
    progress = [e for e in events if e.stage == "translator" and e.event == "progress"]
    # heartbeats may come first on a loaded machine (the stage's start-up is slower than 0.2 s)
    reported = [e for e in progress if not e.data.get("heartbeat")]
    assert reported[0].msg == "ES.csv: 200 of 390 MB parsed"
    assert reported[0].data["unit"] == "bytes" and reported[0].data["done"] == 200_000_000
    assert progress[-1].msg == "3/3 step"  # counted items keep their counts
    # the heartbeats between the bytes and the first counted step repeat the bytes' text
    first, steps = progress.index(reported[0]), progress.index(reported[1])
    beats = [e for e in progress[first:steps] if e.data.get("heartbeat")]
    assert beats and all("200 of 390 MB parsed" in e.msg and "200000000" not in e.msg for e in beats)


def test_workers_bound_concurrency(root: Path, tmp_path: Path) -> None:
    s = make_settings(root, engine__workers=2)
    add_store(s, "ES", "NQ", "GC", "CL", "YM")
    behave(root, analyzer="sleep")
    rs = run_engine(Engine(s, stage_command=fake_command(root, tmp_path)))
    assert rs.status == "success"
    marks = []
    for line in (root / "intervals.txt").read_text().split("\n"):
        if line:
            kind, inst, t = line.split()
            marks.append((float(t), 1 if kind == "start" else -1))
    running = peak = 0
    for _, d in sorted(marks):
        running += d
        peak = max(peak, running)
    assert peak == 2


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "plain"])
def test_cancel_during_analyzer(root: Path, tmp_path: Path, warm: bool) -> None:
    s = make_settings(root, engine__warm_start=warm)
    add_store(s, "ES", "NQ", "GC")
    behave(root, analyzer_ES="grandchild", analyzer_NQ="hang", analyzer_GC="hang")
    engine = Engine(s, stage_command=fake_command(root, tmp_path))
    col = Collector()
    engine.subscribe(col)
    result = {}

    async def main() -> None:
        async with anyio.create_task_group() as tg:

            async def go() -> None:
                result["rs"] = await engine.run()

            tg.start_soon(go)
            with anyio.fail_after(15):
                while not ((root / "running-analyzer-ES").exists() and (root / "running-analyzer-GC").exists()):
                    await anyio.sleep(0.02)
            snap = engine.snapshot()
            assert engine.busy and snap.current is not None and snap.current.stage == "analyzer"
            assert snap.current.instruments["ES"].state == "running"
            assert snap.current.instruments["NQ"].state == "waiting"  # two workers
            assert engine.cancel() is True

    anyio.run(main)
    rs = result["rs"]
    assert rs.status == "cancelled"
    assert rs.stages["analyzer"].state == "cancelled"
    assert rs.stages["merger"].state == "skipped" and rs.stages["merger"].reason == "run cancelled"
    assert {p.state for p in rs.instruments.values()} == {"cancelled"}
    assert left_alive(root) == [], "no stage process (nor grandchild) may outlive a cancelled run"
    events = check_run_file(s, rs.run_id)
    assert events[-1].event == "cancelled"
    assert [e.event for e in events if e.stage == "analyzer" and e.event in TERMINAL] == ["cancelled"]
    assert history.read_runs(s)[-1]["status"] == "cancelled"
    assert history.find_report(s, rs.run_id)["status"] == "cancelled"
    assert engine.cancel() is False and not engine.busy


def test_launcher_killed_mid_run_fails_its_stage_and_a_new_one_starts_the_next(root: Path, tmp_path: Path) -> None:
    s = make_settings(root, engine__workers=1)
    add_store(s, "ES", "NQ")
    behave(root, analyzer_ES="grandchild")
    engine = Engine(s, stage_command=fake_command(root, tmp_path))
    result = {}

    async def main() -> None:
        async with anyio.create_task_group() as tg:

            async def go() -> None:
                result["rs"] = await engine.run()

            tg.start_soon(go)
            with anyio.fail_after(20):
                while not (root / "running-analyzer-ES").exists():
                    await anyio.sleep(0.02)
            assert engine._launcher is not None and engine._launcher.pid is not None
            result["launcher"] = engine._launcher.pid
            os.kill(engine._launcher.pid, signal.SIGKILL)

    anyio.run(main)
    rs = result["rs"]
    assert rs.status == "partial"
    assert rs.instruments["ES"].state == "failure"
    assert "the warm launcher ended while the stage ran" in (rs.instruments["ES"].error or "")
    assert rs.instruments["NQ"].state == "success" and rs.stages["merger"].state == "success"
    assert left_alive(root) == [], "the stage, and its grandchild that ignores SIGTERM, are gone"
    events = check_run_file(s, rs.run_id)
    said = [e for e in events if "fallback" in e.data]
    assert len(said) == 1 and said[0].data["level"] == "warning" and said[0].data["fallback"] == "restart"
    assert said[0].data["launcher_pid"] == result["launcher"] and "SIGKILL" in said[0].msg
    parents = [int(x) for x in (root / "parents.txt").read_text().split()]
    assert parents[0] == result["launcher"] and parents[-1] not in (result["launcher"], os.getpid())


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "plain"])
def test_analyzer_timeout_kills_group_and_others_complete(root: Path, tmp_path: Path, warm: bool) -> None:
    # a plain stage needs a fresh interpreter and pyarrow: more than 1 s on a loaded machine
    s = make_settings(root, timeouts__analyzer=1.0 if warm else 3.0, timeouts__grace=0.3, engine__warm_start=warm)
    add_store(s, "ES", "NQ")
    behave(root, analyzer_ES="grandchild")
    rs = run_engine(Engine(s, stage_command=fake_command(root, tmp_path)))
    assert rs.status == "partial"
    assert rs.instruments["ES"].state == "failure" and "timed out" in (rs.instruments["ES"].error or "")
    assert rs.instruments["NQ"].state == "success"
    assert left_alive(root) == []
    events = check_run_file(s, rs.run_id)
    es_end = [e for e in events if e.data.get("instrument") == "ES" and e.data.get("phase") == "end"]
    assert es_end and es_end[0].data["level"] == "error" and es_end[0].data["timed_out"] is True


def test_silence_warning_and_progress_heartbeat(root: Path, tmp_path: Path) -> None:
    s = make_settings(root, timeouts__silence_warning=0.3, timeouts__progress_interval=0.25)
    add_store(s, "ES")
    behave(root, analyzer="silent")
    rs = run_engine(Engine(s, stage_command=fake_command(root, tmp_path)))
    assert rs.status == "success"
    events = check_run_file(s, rs.run_id)
    warnings = [e for e in events if e.event == "log" and e.data.get("level") == "warning"]
    assert warnings and "no output for" in warnings[0].msg
    beats = [e for e in events if e.event == "progress" and e.data.get("heartbeat")]
    assert len(beats) >= 3 and all(e.stage == "analyzer" for e in beats)
    times = [datetime.fromisoformat(e.timestamp) for e in events if e.stage == "analyzer" and e.event == "progress"]
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    # the stage is silent for 3 s; with a 0.25 s interval no gap comes near that (slack for a
    # loaded machine)
    assert max(gaps) < 1.5


def test_stage_that_cannot_start(root: Path) -> None:
    s = make_settings(root)
    add_store(s, "ES")
    rs = run_engine(Engine(s, stage_command=lambda st, i: [str(root / "no-such-program")]))
    assert rs.stages["analyzer"].state == "failure"
    assert "could not run" in (rs.instruments["ES"].error or "")
    assert rs.status == "failure"
    check_run_file(s, rs.run_id)


def test_a_raising_subscriber_does_not_stop_the_run(root: Path, tmp_path: Path) -> None:
    s = make_settings(root)
    add_store(s, "ES")
    engine = Engine(s, stage_command=fake_command(root, tmp_path))

    def bad(_msg: object) -> None:
        raise RuntimeError("watcher bug")

    engine.subscribe(bad)
    col = Collector()
    unsubscribe = engine.subscribe(col)
    assert run_engine(engine).status == "success"
    n = len(col.events)
    assert n > 0
    unsubscribe()
    add_store(s, "NQ")
    run_engine(engine)
    assert len(col.events) == n


def test_status_rules() -> None:
    assert worst(["success", "skipped", "success"]) == "success"
    assert worst(["success", "partial", "skipped"]) == "partial"
    assert worst(["partial", "failure"]) == "failure"
    assert worst(["failure", "cancelled"]) == "cancelled"
    assert analyzer_status(["success", "failure"]) == "partial"
    assert analyzer_status(["failure", "failure"]) == "failure"
    assert analyzer_status(["partial", "success"]) == "partial"


# --- recovery ------------------------------------------------------------------------------------

ENGINE_SCRIPT = textwrap.dedent(
    """
    import sys, anyio
    from pathlib import Path
    from pipeline_core.engine import Engine
    from pipeline_core.settings import load_settings
    root, script = Path(sys.argv[1]), sys.argv[2]
    s = load_settings(root=root, env={}, overrides={"engine.workers": 2, "engine.warm_start": sys.argv[3] == "warm"})
    cmd = lambda st, i: [sys.executable, script, st, i or "-", str(root)]
    anyio.run(Engine(s, stage_command=cmd).run)
    """
)


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "plain"])
def test_engine_killed_mid_run_is_closed_as_failure_on_restart(root: Path, tmp_path: Path, warm: bool) -> None:
    s = make_settings(root, engine__warm_start=warm)
    add_store(s, "ES", "NQ")
    behave(root, analyzer_ES="grandchild", analyzer_NQ="hang")
    fake_command(root, tmp_path)  # writes the stage script
    eng_script = tmp_path / "engine_main.py"
    eng_script.write_text(ENGINE_SCRIPT)
    engine_proc = subprocess.Popen([sys.executable, str(eng_script), str(root), str(tmp_path / "fake_stage.py"),
                                    "warm" if warm else "plain"])
    try:
        deadline = time.monotonic() + 20
        while not ((root / "running-analyzer-ES").exists() and (root / "running-analyzer-NQ").exists()):
            assert time.monotonic() < deadline, "the engine never started its stages"
            time.sleep(0.02)
        engine_proc.send_signal(signal.SIGKILL)
        engine_proc.wait(10)
    finally:
        if engine_proc.poll() is None:
            engine_proc.kill()
    orphans = [int(x) for x in (root / "pids.txt").read_text().split()]
    if warm:
        # the launcher follows its engine (PR_SET_PDEATHSIG) and ends the stages it forked: the
        # SIGTERM-ignoring grandchild too, with SIGKILL after the grace period
        assert left_alive(root, 10.0) == [], "the warm stages end with their engine"
        deadline = time.monotonic() + 10
        while processes_naming(root) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert processes_naming(root) == [], "the launcher ends with its engine"
    else:
        assert any(alive(p) for p in orphans)  # the dead engine's stages are still running

    behave(root)  # from now on the stages behave
    engine = Engine(s, stage_command=fake_command(root, tmp_path))
    col = Collector()
    engine.subscribe(col)
    [old_id] = engine.recover()
    assert engine.recover() == []  # once
    assert [p for p in orphans if alive(p)] == [], "recovery kills the orphaned stage processes"
    events = check_run_file(s, old_id)
    assert events[-1].event == "failure" and events[-1].msg == "engine stopped during run"
    assert events[-1].data["status"] == "failure"
    analyzer_end = [e for e in events if e.stage == "analyzer" and e.event in TERMINAL]
    assert analyzer_end[0].data["error"] == "engine stopped during run"
    merger = [e for e in events if e.stage == "merger"]
    assert [e.event for e in merger] == ["skipped"]
    line = history.read_runs(s)[-1]
    assert line["run_id"] == old_id and line["status"] == "failure"
    assert line["stages"] == {"translator": "skipped", "analyzer": "failure", "merger": "skipped"}
    assert history.find_report(s, old_id)["error"] == "engine stopped during run"
    assert any(e.stage == "scheduler" and old_id in e.data.get("run_id", "") for e in col.events)
    # and the next run completes
    rs = run_engine(engine)
    assert rs.status == "success" and rs.stages["analyzer"].state == "success"
    assert [r["run_id"] for r in history.read_runs(s)] == [old_id, rs.run_id]
    assert left_alive(root) == []


def test_recover_indexes_a_finished_run_missing_its_line(root: Path, tmp_path: Path) -> None:
    s = make_settings(root)
    add_store(s, "ES")
    engine = Engine(s, stage_command=fake_command(root, tmp_path))
    rs = run_engine(engine)
    s.runs_index.write_text("")  # as if the append was lost
    assert Engine(s).recover() == []
    assert [r["run_id"] for r in history.read_runs(s)] == [rs.run_id]
    assert history.read_runs(s)[0]["status"] == "success"


def test_a_crash_while_recording_a_run_leaves_it_closed_exactly_once(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = make_settings(root)
    add_store(s, "ES")

    def crash(*_: object) -> None:  # the engine dies between the terminal event and the line
        raise SystemExit("the engine died while writing runs.jsonl")

    monkeypatch.setattr(history, "append_run", crash)
    with pytest.raises(BaseException, match="engine died"):
        run_engine(Engine(s, stage_command=fake_command(root, tmp_path)))
    monkeypatch.undo()
    [path] = s.events_dir.glob("pipeline_*.jsonl")
    run_id = path.stem[len("pipeline_"):]
    Engine(s).recover()
    events, _ = read_events(path)
    assert [e.event for e in events if e.stage == "pipeline" and e.is_terminal] == ["success"]
    assert [(r["run_id"], r["status"]) for r in history.read_runs(s)] == [(run_id, "success")]


# --- the engine's schedule loop --------------------------------------------------------------------


class FakeClock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


def sched_events(s: Settings) -> list[Event]:
    events, bad = read_events(scheduler_event_path(s.events_dir))
    assert bad == []
    return events


async def until(cond: Callable[[], bool], seconds: float = 15.0) -> None:
    with anyio.fail_after(seconds):
        while not cond():
            await anyio.sleep(0.01)


def test_schedule_overlap_and_missed_marks(root: Path, tmp_path: Path) -> None:
    s = make_settings(root)
    add_store(s, "ES")
    behave(root, analyzer="block")
    fc = FakeClock(datetime(2025, 6, 3, 10, 14, 59, tzinfo=CHICAGO))
    engine = Engine(s, now=fc, stage_command=fake_command(root, tmp_path))
    engine.schedule_tick = 0.01
    runs_seen: list[str] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.serve)
            await until(lambda: engine.snapshot().next_mark is not None)
            snap = engine.snapshot()
            assert snap.scheduler == "running" and snap.next_mark == datetime(2025, 6, 3, 10, 15, tzinfo=CHICAGO)
            fc.t = datetime(2025, 6, 3, 10, 15, 0, 5000, tzinfo=CHICAGO)
            await until(lambda: engine.busy and (root / "running-analyzer-ES").exists())
            runs_seen.append(engine.snapshot().current.run_id)
            assert engine.snapshot().current.trigger == "schedule"
            # the 10:30 mark arrives while the run is still going: skipped, with an event
            fc.t = datetime(2025, 6, 3, 10, 30, 1, tzinfo=CHICAGO)
            await until(lambda: any(e.event == "skipped" for e in sched_events(s)))
            assert engine.request_run() is False  # and a manual request too
            (root / "release").write_text("")
            await until(lambda: not engine.busy)
            # the machine sleeps two hours: one run, the missed marks logged
            (root / "release").unlink()
            behave(root)
            add_store(s, "NQ")
            fc.t = datetime(2025, 6, 3, 12, 35, tzinfo=CHICAGO)
            await until(lambda: len(history.read_runs(s)) == 2)
            # pause: the next mark is skipped; resume: the one after runs
            engine.pause()
            assert engine.snapshot().scheduler == "paused" and engine.paused
            fc.t = datetime(2025, 6, 3, 12, 45, 2, tzinfo=CHICAGO)
            await until(lambda: any(e.data.get("reason") == "schedule paused" for e in sched_events(s)))
            engine.resume()
            fc.t = datetime(2025, 6, 3, 13, 0, 1, tzinfo=CHICAGO)
            await until(lambda: len(history.read_runs(s)) == 3)
            engine.stop()

    anyio.run(main)
    evs = sched_events(s)
    skipped = [e for e in evs if e.event == "skipped"]
    assert skipped[0].data["mark"] == "2025-06-03T10:30:00-05:00" and skipped[0].data["active_run"] == runs_seen[0]
    assert skipped[1].data["trigger"] == "manual" and skipped[1].data["reason"] == "a run is active"
    missed = [e for e in evs if e.data.get("missed")]
    # after 10:30 the next look is at 12:35: 10:45 … 12:15 missed, one run for 12:30
    assert [e.data["mark"][11:16] for e in missed] == [
        "10:45", "11:00", "11:15", "11:30", "11:45", "12:00", "12:15"]
    runs = history.read_runs(s)
    assert [r["trigger"] for r in runs] == ["schedule", "schedule", "schedule"]
    starts = [read_events(run_event_path(s.events_dir, r["run_id"]))[0][0] for r in runs]
    assert [e.data["mark"][11:16] for e in starts] == ["10:15", "12:30", "13:00"]
    first = next(e for e in evs if e.event != "log")  # catalogue notes may come first
    assert first.event == "start" and evs[-1].msg == "Scheduler stopped"
    assert engine.snapshot().scheduler == "off"
    assert left_alive(root) == []


def test_request_run_and_stop_cancels_the_active_run(root: Path, tmp_path: Path) -> None:
    s = make_settings(root)
    add_store(s, "ES")
    behave(root, analyzer="hang")
    engine = Engine(s, stage_command=fake_command(root, tmp_path))
    assert engine.request_run(stages=["analyzer"]) is True  # queued until serve() starts
    assert engine.busy

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: engine.serve(schedule=False))
            await until(lambda: (root / "running-analyzer-ES").exists())
            assert engine.snapshot().scheduler == "off"
            engine.stop()

    anyio.run(main)
    [line] = history.read_runs(s)
    assert line["status"] == "cancelled" and line["trigger"] == "stage"
    assert left_alive(root) == []


def test_a_queued_run_stays_active_while_serve_starts_it(root: Path, tmp_path: Path) -> None:
    s = make_settings(root)
    add_store(s, "ES")
    behave(root, analyzer="hang")
    engine = Engine(s, stage_command=fake_command(root, tmp_path))
    assert engine.request_run() is True  # queued until serve() starts

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: engine.serve(schedule=False))
            # at every turn of the loop while serve() starts the queued run, a second request
            # is refused: there is never a moment with no run active
            while not (root / "running-analyzer-ES").exists():
                assert engine.busy
                assert engine.request_run() is False
                await anyio.lowlevel.checkpoint()
            engine.stop()

    anyio.run(main)
    assert [r["status"] for r in history.read_runs(s)] == ["cancelled"]
    assert left_alive(root) == []


def test_cancel_from_another_thread(root: Path, tmp_path: Path) -> None:
    s = make_settings(root)
    add_store(s, "ES")
    behave(root, analyzer="hang")
    engine = Engine(s, stage_command=fake_command(root, tmp_path))
    out = {}

    async def main() -> None:
        async with anyio.create_task_group() as tg:

            async def go() -> None:
                out["rs"] = await engine.run()

            tg.start_soon(go)
            await until(lambda: (root / "running-analyzer-ES").exists())
            out["cancelled"] = await anyio.to_thread.run_sync(engine.cancel)

    anyio.run(main)
    assert out["cancelled"] is True and out["rs"].status == "cancelled"
    assert left_alive(root) == []


# --- the run record, read side ------------------------------------------------------------------


def test_runs_index_tolerates_a_partial_last_line_and_reads_the_tail(settings: Settings) -> None:
    lines = [{"run_id": f"r{i:04d}", "trigger": "schedule", "started": "x", "ended": "y",
              "status": "success", "stages": {}} for i in range(3000)]
    for line in lines[:2999]:
        history.append_run(settings, line)
    with open(settings.runs_index, "ab") as fh:
        fh.write(b'{"run_id": "r-cut", "trig')  # a crash in the middle of an append
    assert history.read_runs(settings)[-1]["run_id"] == "r2998"
    assert [r["run_id"] for r in history.read_runs(settings, limit=3)] == ["r2996", "r2997", "r2998"]
    assert len(history.read_runs(settings)) == 2999
    history.append_run(settings, lines[2999])  # starts on a fresh line: nothing glued to the cut one
    assert [r["run_id"] for r in history.read_runs(settings, limit=2)] == ["r2998", "r2999"]
    assert history.last_run(settings)["run_id"] == "r2999"
    assert history.read_runs(settings, limit=0) == []


def test_history_of_a_run(root: Path, tmp_path: Path) -> None:
    s = make_settings(root)
    add_store(s, "ES")
    rs = run_engine(Engine(s, stage_command=fake_command(root, tmp_path)))
    evs = history.run_events(s, rs.run_id)
    assert evs[0].event == "start" and evs[-1].event == "success"
    assert list(history.run_logs(s, rs.run_id)) == ["analyzer-ES", "merger"]
    assert history.find_report(s, rs.run_id)["run_id"] == rs.run_id
    assert history.find_report(s, "00000000-no-such-run") is None
    assert history.run_logs(s, "no-such-run") == {}
    assert history.run_events(s, "no-such-run") == []
