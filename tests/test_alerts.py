"""Alerts: the rules (each firing and recovering, on a fake clock), the Globex calendar, the
alert book (grouping, repeat suppression, recovery across a restart), delivery through apprise
to a real local HTTP server receiving its JSON webhook, a channel that fails or hangs, and that
no secret from a channel URL shows anywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipeline_core import alerts, history
from pipeline_core.alerts import (
    AlertMonitor,
    Check,
    RuleResult,
    export_facts,
    market_open,
    mask_url,
    quarantined_files,
    rule_export_stalled,
    rule_low_disk,
    rule_missed_marks,
    rule_no_run,
    rule_quarantine,
    rule_run_failed,
    rule_slow_stage,
    rule_stale_data,
)
from pipeline_core.engine import Engine
from pipeline_core.events import read_events, scheduler_event_path
from pipeline_core.settings import CHICAGO, Settings, SettingsError, load_settings
from qtsw_tui.cli import format_status

SECRET_PW = "pw-Secret-7731"
SECRET_TOKEN = "tok-Secret-9924"


def chicago(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=CHICAGO)


class FakeClock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t

    def advance(self, **kw: float) -> None:
        self.t = self.t + timedelta(**kw)


def wait_for(cond: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# --- a real webhook receiver ------------------------------------------------------------------


class Webhook:
    """A local HTTP server taking apprise's JSON webhook: ``/ok/...`` answers 200, ``/fail/...``
    500, ``/slow/...`` answers only after 8 s (longer than the channel's timeout)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hook.received.append((self.path, json.loads(body or b"{}")))
                if self.path.startswith("/slow"):
                    time.sleep(8)
                self.send_response(500 if self.path.startswith("/fail") else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, kind: str = "ok", secret: bool = False) -> str:
        cred = f"alice:{SECRET_PW}@" if secret else ""
        return f"json://{cred}127.0.0.1:{self.port}/{kind}/{SECRET_TOKEN if secret else 'hook'}"

    def messages(self, kind: str = "ok") -> list[dict[str, Any]]:
        return [body for path, body in self.received if path.startswith(f"/{kind}")]


@pytest.fixture
def hook() -> Iterator[Webhook]:
    w = Webhook()
    yield w
    w.server.shutdown()
    w.server.server_close()


def make_settings(root: Path, urls: list[str] | None = None, **overrides: Any) -> Settings:
    opts: dict[str, Any] = {"alerts.timeout_seconds": 2.0, "alerts.retries": 1,
                            "alerts.retry_backoff_seconds": 0.1, "alerts.min_free_mb": 0}
    opts.update({k.replace("__", "."): v for k, v in overrides.items()})
    env = {"QTSW_ALERTS_URLS": " ".join(urls)} if urls else {}
    s = load_settings(root=root, env=env, overrides=opts)
    s.ensure_dirs()
    return s


def alert_events(s: Settings) -> list[Any]:
    events, _ = read_events(scheduler_event_path(s.events_dir))
    return [e for e in events if e.event == "alert"]


# --- the market calendar ---------------------------------------------------------------------


def test_globex_calendar() -> None:
    assert market_open(chicago("2026-12-01 10:00"))  # Tuesday
    assert not market_open(chicago("2026-12-05 10:00"))  # Saturday
    assert not market_open(chicago("2026-12-06 16:59"))  # Sunday before the open
    assert market_open(chicago("2026-12-06 17:00"))  # Sunday open
    assert not market_open(chicago("2026-12-01 16:30"))  # the daily break
    assert market_open(chicago("2026-12-01 17:00"))
    assert market_open(chicago("2026-12-04 15:59")) and not market_open(chicago("2026-12-04 17:30"))  # Friday
    assert not market_open(chicago("2026-12-25 10:00"))  # Christmas
    assert not market_open(chicago("2026-12-24 18:00"))  # the session ending on Christmas
    assert market_open(chicago("2026-12-24 11:00")) and not market_open(chicago("2026-12-24 12:30"))  # early close
    assert not market_open(chicago("2026-04-03 09:00"))  # Good Friday
    assert not market_open(chicago("2026-01-19 13:00")) and market_open(chicago("2026-01-19 17:30"))  # MLK halt


# --- each rule fires and recovers ------------------------------------------------------------


def test_stale_data_only_while_the_market_is_open(settings: Settings) -> None:
    def run(now: str, last: str) -> RuleResult:
        return rule_stale_data(settings, chicago(now), {"ES": chicago(last)})

    fired = run("2026-12-01 10:00", "2026-12-01 09:00")  # Tuesday 10:00, an hour without bars
    assert [(c.subject, c.firing, c.severity) for c in fired.checks] == [("ES", True, "critical")]
    assert "no new bars" in fired.checks[0].message and "2026-12-01 09:00" in fired.checks[0].message
    assert [c.firing for c in run("2026-12-01 10:00", "2026-12-01 09:45").checks] == [False]
    # nothing said when the market is closed, however old the bars
    assert run("2026-12-05 10:00", "2026-12-04 09:00").checks == ()  # Saturday
    assert run("2026-12-01 16:30", "2026-12-01 12:00").checks == ()  # the daily break
    assert run("2026-12-25 10:00", "2026-12-23 10:00").checks == ()  # a holiday
    # Sunday 17:10: ten open minutes since Friday's last bar is not stale
    assert [c.firing for c in run("2026-12-06 17:10", "2026-12-04 15:59").checks] == [False]

    book = alerts.AlertBook(settings.logs_dir / "alerts.json")
    n1 = book.apply([fired], chicago("2026-12-01 10:00"), 60)
    n2 = book.apply([run("2026-12-01 10:20", "2026-12-01 10:19")], chicago("2026-12-01 10:20"), 60)
    assert [(n.kind, n.alert.key) for n in n1 + n2] == [("firing", "stale_data:ES"), ("recovered", "stale_data:ES")]


def test_stale_data_from_the_catalogue_in_a_running_schedule(settings: Settings, hook: Webhook) -> None:
    from pipeline_core import catalog

    cat = catalog.open_catalog(settings)
    path = settings.processed_dir / "ES" / "ES_2026.parquet"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"bars")
    cat.add_record(path, catalog.STORE, "ES", last=chicago("2026-12-01 08:59").isoformat())
    catalog.close_all()
    s = make_settings(settings.root, [hook.url()])
    clock = FakeClock(chicago("2026-12-01 10:00"))
    mon = AlertMonitor(s, now=clock)
    mon.tick("off")  # no schedule: a manual setup, not the live feed
    assert mon.active() == []
    clock.advance(minutes=5)
    mon.tick("running")
    assert [a.key for a in mon.active()] == ["stale_data:ES"]
    wait_for(lambda: len(hook.messages()) == 1)
    assert "ES: no new bars" in hook.messages()[0]["message"]


def run_report(run_id: str, **stages: Any) -> dict[str, Any]:
    status = "success"
    for st in stages.values():
        if st["status"] == "failure":
            status = "failure"
        elif st["status"] == "partial" and status == "success":
            status = "partial"
    return {"run_id": run_id, "status": status, "ended": "2026-12-01T10:00:00-06:00", "stages": stages}


def test_run_failed_per_stage_and_instrument(settings: Settings) -> None:
    now = chicago("2026-12-01 10:00")
    bad = run_report("a" * 36, translator={"status": "success", "counts": {}},
                     analyzer={"status": "partial", "instruments": {
                         "ES": {"status": "failure", "error": "bars unreadable"},
                         "NQ": {"status": "success"}}},
                     merger={"status": "failure", "error": "disk full"})
    res = rule_run_failed(settings, now, bad)
    firing = {c.subject: c for c in res.checks if c.firing}
    assert set(firing) == {"analyzer ES", "merger"}
    assert firing["analyzer ES"].severity == "warning" and "bars unreadable" in firing["analyzer ES"].message
    assert firing["merger"].severity == "critical" and "disk full" in firing["merger"].message
    # a translator that only quarantined files is no failure here (the quarantine rule says it)
    q = run_report("b" * 36, translator={"status": "partial", "counts": {"quarantined": 1, "errors": 0}})
    assert not any(c.firing for c in rule_run_failed(settings, now, q).checks)
    book = alerts.AlertBook(settings.logs_dir / "alerts.json")
    book.apply([res], now, 60)
    # the next run: the analyzer is skipped (says nothing), the merger succeeds (recovered)
    good = run_report("c" * 36, analyzer={"status": "skipped"}, merger={"status": "success"})
    notices = book.apply([rule_run_failed(settings, now, good)], now + timedelta(minutes=15), 60)
    assert [(n.kind, n.alert.key) for n in notices] == [("recovered", "run_failed:merger")]
    assert list(book.active) == ["run_failed:analyzer ES"]
    # cancelled runs say nothing
    assert rule_run_failed(settings, now, {**bad, "status": "cancelled"}).checks == ()


def test_quarantined_file_fires_until_moved_away(settings: Settings) -> None:
    q = settings.quarantine_dir
    q.mkdir(parents=True, exist_ok=True)
    (q / "ES.csv").write_text("x")
    (q / "ES.csv.error.txt").write_text("file: ES.csv\nrule: bad_time\nline: 12\nreason: time not HH:MM\n")
    now = chicago("2026-12-01 10:00")
    book = alerts.AlertBook(settings.logs_dir / "alerts.json")
    n = book.apply([rule_quarantine(settings, now, quarantined_files(settings))], now, 60)
    assert [(x.kind, x.alert.key) for x in n] == [("firing", "quarantine:ES.csv")]
    assert "rule bad_time, line 12" in n[0].alert.message and "time not HH:MM" in n[0].alert.message
    (q / "ES.csv").unlink()
    n = book.apply([rule_quarantine(settings, now, quarantined_files(settings))], now, 60)
    assert [(x.kind, x.alert.key) for x in n] == [("recovered", "quarantine:ES.csv")]


def test_export_started_and_not_completed(settings: Settings) -> None:
    s = make_settings(settings.root, alerts__export_stale_seconds=300)
    (s.raw_dir / "ES.csv").write_text("Date,Time\n")
    progress = s.raw_logs_dir / "export_progress_ES.json"
    progress.write_text(json.dumps({"fileName": "ES.csv", "status": "exporting"}))
    now = chicago("2026-12-01 10:00")
    assert not any(c.firing for c in rule_export_stalled(s, now, export_facts(s)).checks)
    old = time.time() - 900
    os.utime(progress, (old, old))
    res = rule_export_stalled(s, now, export_facts(s))
    assert [(c.subject, c.firing) for c in res.checks] == [("ES.csv", True)]
    book = alerts.AlertBook(s.logs_dir / "alerts.json")
    book.apply([res], now, 60)
    (s.raw_logs_dir / "export_complete_ES.json").write_text("{}")
    n = book.apply([rule_export_stalled(s, now, export_facts(s))], now, 60)
    assert [(x.kind, x.alert.key) for x in n] == [("recovered", "export_stalled:ES.csv")]


def test_no_successful_run_while_the_schedule_runs(settings: Settings) -> None:
    since, last_ok = chicago("2026-12-01 10:00"), chicago("2026-12-01 09:00")
    at = lambda hhmm, running=True: rule_no_run(settings, chicago(f"2026-12-01 {hhmm}"), running, since, last_ok)  # noqa: E731
    assert [c.firing for c in at("10:40").checks] == [False]  # counted from the schedule's start
    fired = at("10:50").checks
    assert [c.firing for c in fired] == [True] and "no successful run for 50 min" in fired[0].message
    assert at("11:30", running=False).checks == ()  # paused: nothing said
    hung = rule_no_run(settings, chicago("2026-12-01 10:50"), True, since, last_ok, chicago("2026-12-01 10:02"))
    assert "a run has been going since 2026-12-01 10:02" in hung.checks[0].message
    book = alerts.AlertBook(settings.logs_dir / "alerts.json")
    book.apply([RuleResult("no_run", fired)], chicago("2026-12-01 10:50"), 60)
    last_ok = chicago("2026-12-01 10:55")
    n = book.apply([at("11:00")], chicago("2026-12-01 11:00"), 60)
    assert [(x.kind, x.alert.key) for x in n] == [("recovered", "no_run:schedule")]


def test_missed_marks_fire_and_clear_at_the_next_mark_met(settings: Settings) -> None:
    now = chicago("2026-12-01 12:35")
    missed = [chicago("2026-12-01 11:45"), chicago("2026-12-01 12:00"), chicago("2026-12-01 12:15")]
    res = rule_missed_marks(settings, now, missed, chicago("2026-12-01 12:30"))
    assert res.checks[0].firing and "3 scheduled run(s) missed: 11:45, 12:00, 12:15" in res.checks[0].message
    book = alerts.AlertBook(settings.logs_dir / "alerts.json")
    book.apply([res], now, 60)
    n = book.apply([rule_missed_marks(settings, now, [], chicago("2026-12-01 12:45"))], now, 60)
    assert [(x.kind, x.alert.key) for x in n] == [("recovered", "missed_marks:schedule")]


def test_slow_stage_against_its_median_from_the_reports(settings: Settings) -> None:
    from pipeline_core.fsutil import write_json_atomic

    for i, secs in enumerate([100, 120, 90, 110]):
        rep = run_report(f"{i:08d}-past", translator={"status": "success", "duration_seconds": secs},
                         analyzer={"status": "success", "instruments": {"ES": {"status": "success", "duration_seconds": 5}}})
        write_json_atomic(settings.reports_dir / f"pipeline_report_20261201_0{i}0000_{i:08d}.json", rep)
    past = history.recent_reports(settings, 21)
    assert len(past) == 4
    now = chicago("2026-12-01 10:00")
    slow = run_report("slow-run", translator={"status": "success", "duration_seconds": 400},
                      analyzer={"status": "success", "instruments": {"ES": {"status": "success", "duration_seconds": 30}}})
    res = rule_slow_stage(settings, now, slow, past)
    firing = [c for c in res.checks if c.firing]
    # 400 s against a median of 105 s; ES's 30 s is 6x its median but under slow_min_seconds
    assert [c.subject for c in firing] == ["translator"] and "median of 105 s" in firing[0].message
    book = alerts.AlertBook(settings.logs_dir / "alerts.json")
    book.apply([res], now, 60)
    normal = run_report("next-run", translator={"status": "success", "duration_seconds": 115})
    n = book.apply([rule_slow_stage(settings, now, normal, past)], now, 60)
    assert [(x.kind, x.alert.key) for x in n] == [("recovered", "slow_stage:translator")]


def test_low_disk(settings: Settings) -> None:
    now = chicago("2026-12-01 10:00")
    free = alerts.free_bytes(settings)
    assert isinstance(free, int) and free > 0
    low = make_settings(settings.root, alerts__min_free_mb=free / 1e6 + 1000)
    res = rule_low_disk(low, now, free)
    assert res.checks[0].firing and res.checks[0].severity == "critical"
    book = alerts.AlertBook(settings.logs_dir / "alerts.json")
    book.apply([res], now, 60)
    n = book.apply([rule_low_disk(make_settings(settings.root, alerts__min_free_mb=1), now, free)], now, 60)
    assert [(x.kind, x.alert.key) for x in n] == [("recovered", "low_disk:data")]


# --- grouping, suppression, channels ----------------------------------------------------------


def firing(*subjects: str, severity: str = "critical") -> RuleResult:
    return RuleResult("quarantine", tuple(Check("quarantine", s, True, severity, f"{s} quarantined") for s in subjects),
                      complete=True)


def test_grouping_and_repeat_suppression_survive_a_restart(root: Path, hook: Webhook) -> None:
    s = make_settings(root, [hook.url("ok"), "critical=" + hook.url("crit")], alerts__repeat_minutes=60)
    clock = FakeClock(chicago("2026-12-01 10:00"))
    mon = AlertMonitor(s, now=clock)
    mon.evaluate([RuleResult("quarantine", (
        Check("quarantine", "A.csv", True, "warning", "A.csv quarantined"),
        Check("quarantine", "B.csv", True, "critical", "B.csv quarantined"),
        Check("quarantine", "C.csv", True, "critical", "C.csv quarantined")), complete=True)])
    wait_for(lambda: len(hook.messages("ok")) == 1 and len(hook.messages("crit")) == 1)
    grouped = hook.messages("ok")[0]
    assert grouped["title"] == "qtsw: 3 alert(s)" and grouped["type"] == "failure"
    assert grouped["message"].count("\n") == 2 and "A.csv" in grouped["message"]
    # the critical-only channel gets the same message without the warning
    assert "A.csv" not in hook.messages("crit")[0]["message"]
    # the same conditions 10 minutes later: not sent again
    clock.advance(minutes=10)
    mon.evaluate([firing("B.csv", "C.csv", "A.csv")])
    time.sleep(0.3)  # nothing to wait for: give a wrongly queued message the chance to arrive
    assert len(hook.messages("ok")) == 1
    # a restart (new monitor on the same state) within the window: still quiet
    clock.advance(minutes=20)
    mon = AlertMonitor(s, now=clock)
    assert len(mon.active()) == 3
    mon.evaluate([RuleResult("quarantine", (
        Check("quarantine", "A.csv", True, "warning", "A.csv quarantined"),
        Check("quarantine", "B.csv", True, "critical", "B.csv quarantined"),
        Check("quarantine", "C.csv", True, "critical", "C.csv quarantined")), complete=True)])
    # after the window, one reminder for the whole group
    clock.advance(minutes=31)
    mon.evaluate([RuleResult("quarantine", (
        Check("quarantine", "A.csv", True, "warning", "A.csv quarantined"),
        Check("quarantine", "B.csv", True, "critical", "B.csv quarantined"),
        Check("quarantine", "C.csv", True, "critical", "C.csv quarantined")), complete=True)])
    wait_for(lambda: len(hook.messages("ok")) == 2)
    assert "still" in hook.messages("ok")[1]["message"]
    # all clear: one grouped "recovered" message
    clock.advance(minutes=1)
    mon.evaluate([RuleResult("quarantine", (), complete=True)])
    wait_for(lambda: len(hook.messages("ok")) == 3)
    rec = hook.messages("ok")[2]
    assert rec["title"] == "qtsw: 3 recovered" and rec["type"] == "success"
    assert rec["message"].count("RECOVERED") == 3
    assert mon.active() == [] and len(mon.recent()) == 3
    mon.close(5)


def test_an_acknowledged_alert_sends_no_reminder(root: Path, hook: Webhook) -> None:
    s = make_settings(root, [hook.url()], alerts__repeat_minutes=5)
    clock = FakeClock(chicago("2026-12-01 10:00"))
    events: list[tuple[str, dict[str, Any]]] = []
    mon = AlertMonitor(s, now=clock, emit=lambda m, d: events.append((m, d)))
    mon.evaluate([firing("A.csv")])
    wait_for(lambda: len(hook.messages()) == 1)
    assert mon.acknowledge("quarantine:A.csv") and mon.active()[0].acknowledged
    clock.advance(minutes=30)
    mon.evaluate([firing("A.csv")])
    mon.evaluate([firing()])  # recovered: still told
    wait_for(lambda: len(hook.messages()) == 2)
    assert "RECOVERED" in hook.messages()[1]["message"]
    assert [d["state"] for _, d in events] == ["firing", "acknowledged", "recovered"]


# --- the engine -------------------------------------------------------------------------------


def stage_script(tmp_path: Path, ok: bool) -> Callable[[str, str | None], list[str]]:
    script = tmp_path / ("ok_stage.py" if ok else "bad_stage.py")
    script.write_text(
        "from pipeline_core.protocol import Reporter\nReporter().result('success', 'done', {})\n" if ok
        else "import sys\nprint('cannot read the raw folder')\nsys.exit(3)\n")
    return lambda stage, inst: [sys.executable, str(script)]


def add_raw(s: Settings, name: str = "ES.csv") -> None:
    p = s.raw_dir / name
    p.write_text("Date,Time,Open,High,Low,Close,Volume\n")
    old = time.time() - 3600
    os.utime(p, (old, old))


def test_a_failed_run_alerts_and_the_next_good_run_recovers(root: Path, tmp_path: Path, hook: Webhook) -> None:
    s = make_settings(root, [hook.url()])
    add_raw(s)
    rs = anyio.run(lambda: Engine(s, stage_command=stage_script(tmp_path, ok=False)).run())
    assert rs.status == "failure"
    wait_for(lambda: len(hook.messages()) == 1)
    assert "translator failed" in hook.messages()[0]["message"]
    fired = [e for e in alert_events(s) if e.data["state"] == "firing"]
    assert [e.data["key"] for e in fired] == ["run_failed:translator"]
    assert fired[0].stage == "scheduler" and fired[0].data["severity"] == "critical"
    text = format_status(history.collect_status(s))
    assert "alerts:     1 active" in text and "translator failed" in text
    rs = anyio.run(lambda: Engine(s, stage_command=stage_script(tmp_path, ok=True)).run())
    assert rs.status == "success"
    wait_for(lambda: len(hook.messages()) == 2)
    assert "RECOVERED" in hook.messages()[1]["message"]
    assert [e.data["state"] for e in alert_events(s)] == ["firing", "recovered"]
    assert "alerts:     0 active" in format_status(history.collect_status(s))


def test_a_channel_that_fails_or_hangs_leaves_the_run_alone(root: Path, tmp_path: Path, hook: Webhook) -> None:
    quiet = make_settings(tmp_path / "quiet")
    add_raw(quiet)
    base = anyio.run(lambda: Engine(quiet, stage_command=stage_script(tmp_path, ok=False)).run())
    s = make_settings(root, [hook.url("fail"), hook.url("slow")])
    add_raw(s)
    engine = Engine(s, stage_command=stage_script(tmp_path, ok=False))
    rs = anyio.run(engine.run)
    assert rs.status == base.status == "failure"
    report = history.find_report(s, rs.run_id)
    assert report is not None and report["status"] == "failure"
    assert history.read_runs(s)[-1]["status"] == "failure"

    def failures() -> list[Any]:
        return [e for e in alert_events(s) if e.data["state"] == "delivery_failed"]

    wait_for(lambda: len(failures()) == 2)
    reasons = {e.data["channel_number"]: e for e in failures()}
    assert reasons[1].data["channel"] == mask_url(hook.url("fail")) == f"json://127.0.0.1:{hook.port}/****"
    fail = reasons[1].data
    assert "500" in fail["reason"] and fail["attempts"] == 2 and fail["keys"] == ["run_failed:translator"]
    assert "timed out after 2 s" in reasons[2].data["reason"] and reasons[2].data["attempts"] == 2
    assert len(hook.messages("fail")) == 2  # retried once
    # the hanging channel's two attempts (2 s each) ended after the run had: the run did not
    # wait for them, its duration and status were taken without them, and its record did not
    # change afterwards
    ended = datetime.fromisoformat(report["ended"])
    assert datetime.fromisoformat(reasons[2].timestamp) > ended
    assert report["duration_seconds"] <= (ended - datetime.fromisoformat(report["started"])).total_seconds() + 0.01
    assert history.find_report(s, rs.run_id) == report
    engine.alerts.close(0)


def test_no_secret_in_events_logs_status_or_output(root: Path, hook: Webhook, capsys: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    urls = [hook.url("ok", secret=True), hook.url("fail", secret=True),
            "nosuchservice://TokenA-Secret-1/TokenB-Secret-2/TokenC-Secret-3"]
    secrets = [SECRET_PW, SECRET_TOKEN, "TokenA-Secret-1", "TokenB-Secret-2", "TokenC-Secret-3"]
    s = make_settings(root)
    (s.raw_dir / "junk name.csv").write_text("not,a,bar\n")  # quarantined: an alert
    old = time.time() - 3600
    os.utime(s.raw_dir / "junk name.csv", (old, old))
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTSW_")}
    env.update(QTSW_ALERTS_URLS=" ".join(urls), QTSW_ALERTS_TIMEOUT_SECONDS="2", QTSW_ALERTS_RETRIES="0")
    run = subprocess.run([sys.executable, "-m", "qtsw_tui", "--root", str(root), "--run-now", "--no-ui"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr  # partial: a file was quarantined
    alert_lines = [ln for ln in run.stdout.splitlines() if " alert " in ln]
    # the quarantine alert printed once, and each failed channel once (500, no such service)
    assert sum("junk name.csv quarantined" in ln for ln in alert_lines) == 1, run.stdout
    assert sum("not delivered" in ln for ln in alert_lines) == 2, run.stdout
    assert len(hook.messages("ok")) == 1
    # status, status --json and the test command, in this process (the same entry point)
    for k, v in env.items():
        if k.startswith("QTSW_"):
            monkeypatch.setenv(k, v)
    for k in [k for k in os.environ if k.startswith("QTSW_") and k not in env]:
        monkeypatch.delenv(k)
    from qtsw_tui.cli import main

    capsys.readouterr()
    assert main(["--root", str(root), "status"]) == 0
    status = capsys.readouterr()
    assert main(["--root", str(root), "status", "--json"]) == 0
    status_json = capsys.readouterr()
    assert main(["--root", str(root), "alert", "test"]) == 1
    test = capsys.readouterr()
    assert "sent    #1 json://****@127.0.0.1" in test.out and "FAILED  #3 nosuchservice://****" in test.out
    assert "junk name.csv quarantined" in status.out and "json://****@127.0.0.1" in status.out
    shown = [run.stdout, run.stderr, status.out, status.err, status_json.out, test.out, test.err]
    for path in (root / "logs").rglob("*"):
        if path.is_file():
            shown.append(path.read_text(encoding="utf-8", errors="replace"))
    for text in shown:
        for secret in secrets:
            assert secret not in text


# --- settings and the test command ------------------------------------------------------------


def test_alert_settings_and_errors_never_show_a_url(root: Path) -> None:
    (root / "qtsw.toml").write_text(
        '[alerts]\nstale_minutes = 20\nurls = ["mailto://me:hunter2@example.com", '
        '{url = "ntfy://ntfy.sh/topic", min_severity = "critical"}]\n[alerts.rules]\nslow_stage = false\n')
    s = load_settings(root=root, env={})
    assert s.alerts.stale_minutes == 20 and not s.alerts.enabled("slow_stage") and s.alerts.enabled("low_disk")
    assert [(mask_url(c.url), c.min_severity) for c in s.alerts.channels] == [
        ("mailto://****@example.com", "info"), ("ntfy://ntfy.sh/****", "critical")]
    assert "hunter2" not in repr(s)
    (root / "qtsw.toml").write_text('[alerts]\nurls = [{url = "mailto://me:hunter2@x.com", min_severity = "loud"}]\n')
    with pytest.raises(SettingsError, match=r"alerts.urls\[0\].min_severity") as exc:
        load_settings(root=root, env={})
    assert "hunter2" not in str(exc.value)
    (root / "qtsw.toml").write_text('[alerts]\nurls = ["hunter2-not-a-url"]\n')
    with pytest.raises(SettingsError, match=r"alerts.urls\[0\]") as exc:
        load_settings(root=root, env={})
    assert "hunter2" not in str(exc.value)


def test_alert_test_command_reports_per_channel(root: Path, hook: Webhook, capsys: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from qtsw_tui.cli import main

    for k in [k for k in os.environ if k.startswith("QTSW_")]:
        monkeypatch.delenv(k)
    cmd = ["--root", str(root), "alert", "test"]
    assert main([*cmd, "--url", hook.url("ok")]) == 0
    assert "1 of 1 channel(s) sent" in capsys.readouterr().out
    assert hook.messages("ok")[0]["title"] == "qtsw: test message"
    assert main([*cmd, "--url", hook.url("ok"), "--url", hook.url("fail")]) == 1
    out = capsys.readouterr().out
    assert "1 of 2 channel(s) sent" in out and "FAILED  #2" in out and "500" in out
    assert main(cmd) == 1
    assert "no alert channel configured" in capsys.readouterr().err


# --- the console ------------------------------------------------------------------------------


def test_console_shows_an_alert_arriving_and_acknowledged(root: Path, hook: Webhook) -> None:
    from qtsw_tui.app import build_app
    from qtsw_tui.screens.alerts import AlertsScreen
    from qtsw_tui.widgets.header import StatusHeader

    s = make_settings(root, [hook.url()], alerts__check_seconds=1)
    app = build_app(s, Engine(s), {"schedule": True})

    async def until(pilot: Any, cond: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30
        while not cond():
            assert time.monotonic() < deadline, "condition not reached in time"
            await pilot.pause(0.05)

    async def main() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.snapshot is not None and app.snapshot.scheduler == "running")
            def badge() -> str:  # the header's first word: "!N" while N alerts are not acknowledged
                words = str(app.query_one("#header", StatusHeader).render()).split()
                return words[0] if words and words[0].startswith("!") else ""

            assert badge() == ""
            # a file is quarantined while the console watches; the next check finds it
            q = s.quarantine_dir
            q.mkdir(parents=True, exist_ok=True)
            (q / "ES.csv").write_text("x")
            (q / "ES.csv.error.txt").write_text("file: ES.csv\nrule: bad_header\nline: 1\nreason: no Date column\n")
            await until(pilot, lambda: any("ES.csv quarantined" in t for _, t in app.alerts_notified))
            await until(pilot, lambda: badge() == "!1")
            await pilot.press("exclamation_mark")
            assert isinstance(app.screen, AlertsScreen)
            table = app.screen.query_one("#alerts-table")
            row = [str(c) for c in table.get_row_at(0)]
            assert row[0] == "warning" and row[2] == "active" and "ES.csv quarantined (rule bad_header, line 1)" in row[3]
            await pilot.press("a")
            assert [str(c) for c in table.get_row_at(0)][2] == "acknowledged"
            assert app.engine.alerts.active()[0].acknowledged
            await pilot.press("escape")
            await until(pilot, lambda: badge() == "")
            await pilot.press("q")
        states = [e.data["state"] for e in alert_events(s)]
        assert states == ["firing", "acknowledged"]
        wait_for(lambda: len(hook.messages()) == 1)

    anyio.run(main, backend="asyncio")
