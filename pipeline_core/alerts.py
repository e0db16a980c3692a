"""Alerts (SPEC §11.3): tell the operator when something went wrong, or when something expected
did not happen.

* **Rules** are pure functions of (settings, now, observed facts) returning :class:`RuleResult`:
  a check per subject, firing or clear. A subject a rule did not look at keeps its state.
* The **alert book** (:class:`AlertBook`, persisted atomically in ``logs/alerts.json``) turns
  checks into alerts with a stable key (``rule:subject``), a severity, a first-seen time and a
  recovery; repeats of a key within ``alerts.repeat_minutes`` are not sent again.
* The **notifier** (:class:`Notifier`) delivers through ``apprise`` on a worker thread, never on
  the engine's loop: a timeout per attempt, retries with backoff, each channel on its own.
  Everything that arises in one evaluation goes out as one grouped message per channel.
* :class:`AlertMonitor` is what the engine holds: it gathers the facts, evaluates the rules at
  a run's end and on the scheduler's tick, and emits an ``alert`` event for each alert that fires
  or recovers and for each delivery that failed.

Channel URLs carry passwords and tokens: they are shown only through :func:`mask_url`, and any
text that may quote them (an apprise error) goes through :func:`scrub` first.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import statistics
import threading
import time as _time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline_core import clock
from pipeline_core.fsutil import write_json_atomic
from pipeline_core.settings import CHICAGO, SEVERITIES, AlertChannel, Settings

STATE_VERSION = 1
RECENT_KEPT = 100  # recovered alerts kept in the state file for the console and status
APPRISE_LOAD_SECONDS = 15.0  # allowed for loading apprise's plugins before a first delivery

# --- secrets in URLs -----------------------------------------------------------------------------

_HOSTNAME = re.compile(r"^(localhost|[0-9.]+|\[[0-9a-fA-F:]+\]|([A-Za-z0-9-]+\.)+[A-Za-z]{2,})$")


def mask_url(url: str) -> str:
    """A channel URL fit to show: the scheme and the host name (when it is one), every other part
    (user, password, path, query; a token standing where a host would be) replaced by ``****``.

    ``json://user:pw@127.0.0.1:8080/hook/abc`` → ``json://****@127.0.0.1:8080/****``;
    ``slack://TokenA/TokenB/TokenC`` → ``slack://****``.
    """
    try:
        parts = urlsplit(str(url).strip())
        scheme, host, port = parts.scheme, parts.hostname or "", parts.port
    except ValueError:
        return "****"
    if not scheme:
        return "****"
    out = f"{scheme}://"
    if "@" in parts.netloc:
        out += "****@"
    if host and _HOSTNAME.match(host):
        out += host + (f":{port}" if port else "")
        if parts.path.strip("/") or parts.query or parts.fragment:
            out += "/****"
    else:
        out += "****"
    return out


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def _secret_parts(url: str) -> list[str]:
    """The pieces of a channel URL that :func:`mask_url` hides (longest first)."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return [url]
    pieces = [parts.username or "", parts.password or "", parts.query, parts.fragment]
    pieces += [seg for seg in parts.path.split("/") if seg]
    if parts.hostname and not _HOSTNAME.match(parts.hostname):
        pieces.append(parts.hostname)
    for q in parts.query.split("&"):
        pieces.append(q.partition("=")[2])
    return sorted({p for p in pieces if len(p) >= 3}, key=len, reverse=True)


def scrub(text: str, urls: Iterable[str] = ()) -> str:
    """``text`` with every URL in it masked, and every secret piece of ``urls`` replaced."""
    out = _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), str(text))
    for url in urls:
        for piece in _secret_parts(url):
            out = out.replace(piece, "****")
    return out


# --- the market calendar -------------------------------------------------------------------------

GLOBEX_OPEN = time(17, 0)  # the session for the next trade date opens (Chicago)
GLOBEX_CLOSE = time(16, 0)  # the session of the trade date closes; 16:00-17:00 is the daily break

# CME Globex holiday hours for 2026 and 2027, from CME Group's holiday calendar
# (https://www.cmegroup.com/tools-information/holiday-calendar.html), equity-index hours (energy
# and metals halt within minutes of these). Trade date -> the halt time that day (trading resumes
# at 17:00 for the next trade date), or None: the session ending that day does not trade at all.
GLOBEX_HOLIDAYS: dict[date, time | None] = {
    date(2026, 1, 1): None,  # New Year's Day
    date(2026, 1, 19): time(12, 0),  # Martin Luther King Jr. Day
    date(2026, 2, 16): time(12, 0),  # Presidents' Day
    date(2026, 4, 3): None,  # Good Friday
    date(2026, 5, 25): time(12, 0),  # Memorial Day
    date(2026, 6, 19): time(12, 0),  # Juneteenth
    date(2026, 7, 3): time(12, 0),  # Independence Day (observed)
    date(2026, 9, 7): time(12, 0),  # Labor Day
    date(2026, 11, 26): time(12, 0),  # Thanksgiving
    date(2026, 11, 27): time(12, 15),  # the day after Thanksgiving
    date(2026, 12, 24): time(12, 15),  # Christmas Eve
    date(2026, 12, 25): None,  # Christmas Day
    date(2027, 1, 1): None,  # New Year's Day
    date(2027, 1, 18): time(12, 0),  # Martin Luther King Jr. Day
    date(2027, 2, 15): time(12, 0),  # Presidents' Day
    date(2027, 3, 26): None,  # Good Friday
    date(2027, 5, 31): time(12, 0),  # Memorial Day
    date(2027, 6, 18): time(12, 0),  # Juneteenth (observed)
    date(2027, 7, 5): time(12, 0),  # Independence Day (observed)
    date(2027, 9, 6): time(12, 0),  # Labor Day
    date(2027, 11, 25): time(12, 0),  # Thanksgiving
    date(2027, 11, 26): time(12, 15),  # the day after Thanksgiving
    date(2027, 12, 24): None,  # Christmas Day (observed)
}
_NOT_LISTED = object()


def market_open(moment: datetime, holidays: Mapping[date, time | None] = GLOBEX_HOLIDAYS) -> bool:
    """Whether the CME Globex market trades at ``moment``: Sunday 17:00 to Friday 16:00 Chicago,
    closed in the daily 16:00-17:00 break and as the holiday table says."""
    t = moment.astimezone(CHICAGO)
    tod = t.time()
    if GLOBEX_CLOSE <= tod < GLOBEX_OPEN:
        return False
    trade_date = t.date() + timedelta(days=1) if tod >= GLOBEX_OPEN else t.date()
    if trade_date.weekday() >= 5:
        return False
    halt = holidays.get(trade_date, _NOT_LISTED)
    if halt is None:
        return False
    return not (isinstance(halt, time) and trade_date == t.date() and tod >= halt)


def open_minutes_between(start: datetime, end: datetime, cap: float,
                         holidays: Mapping[date, time | None] = GLOBEX_HOLIDAYS) -> int:
    """Whole minutes of open market between ``start`` and ``end``, counting back from ``end``
    and stopping once more than ``cap`` are found (enough to compare with a threshold)."""
    step = timedelta(minutes=1)
    lo = start.astimezone(UTC)
    m = end.astimezone(UTC) - step
    n = 0
    while m >= lo and n <= cap:
        if market_open(m, holidays):
            n += 1
        m -= step
    return n


# --- rules ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """What a rule found for one subject: firing (with severity and message) or clear."""

    rule: str
    subject: str
    firing: bool
    severity: str = "warning"
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.rule}:{self.subject}"


@dataclass(frozen=True)
class RuleResult:
    """A rule's checks. ``complete``: they cover every subject of the rule, so an active alert
    of this rule whose subject is not among them has cleared."""

    rule: str
    checks: tuple[Check, ...] = ()
    complete: bool = False


def _hm(dt: datetime) -> str:
    return dt.astimezone(CHICAGO).strftime("%Y-%m-%d %H:%M %Z")


def _minutes(a: datetime, b: datetime) -> float:
    return (b.astimezone(UTC) - a.astimezone(UTC)).total_seconds() / 60


def rule_run_failed(settings: Settings, now: datetime, report: Mapping[str, Any] | None) -> RuleResult:
    """A run ended ``failure`` or ``partial``: one alert per failing stage (per instrument for
    the analyzer), naming the error. A stage that succeeded later clears it; a skipped stage
    says nothing. A translator that is partial only because it quarantined files is not a
    failure here (the quarantine rule names those files)."""
    rule = "run_failed"
    if not report or report.get("status") == "cancelled":
        return RuleResult(rule)
    run8 = str(report.get("run_id", ""))[:8]
    checks: list[Check] = []
    for name, st in (report.get("stages") or {}).items():
        status = st.get("status")
        counts = st.get("counts") or {}
        if status == "success" or (name == "translator" and status == "partial"
                                   and counts.get("quarantined") and not counts.get("errors")):
            checks.append(Check(rule, name, False))
            for inst in (st.get("instruments") or {}):
                checks.append(Check(rule, f"{name} {inst}", False))
            continue
        if status not in ("failure", "partial"):
            continue
        per = st.get("instruments") or {}
        if name == "analyzer" and per:
            for inst, ist in per.items():
                subject = f"{name} {inst}"
                if ist.get("status") == "success":
                    checks.append(Check(rule, subject, False))
                    continue
                err = ist.get("error") or ist.get("status")
                checks.append(Check(
                    rule, subject, True, "critical" if status == "failure" else "warning",
                    f"run {run8}: {subject} failed: {err}",
                    {"run_id": report.get("run_id"), "stage": name, "instrument": inst, "error": err}))
            continue
        err = st.get("error") or status
        checks.append(Check(
            rule, name, True, "critical" if status == "failure" else "warning",
            f"run {run8}: {name} {'failed' if status == 'failure' else 'partial'}: {err}",
            {"run_id": report.get("run_id"), "stage": name, "error": err}))
    if report.get("error") and report.get("status") == "failure":
        checks.append(Check(rule, "pipeline", True, "critical", f"run {run8} failed: {report['error']}",
                            {"run_id": report.get("run_id"), "error": report["error"]}))
    elif report.get("status") == "success":
        checks.append(Check(rule, "pipeline", False))
    return RuleResult(rule, tuple(checks))


def rule_quarantine(settings: Settings, now: datetime, quarantined: Sequence[Mapping[str, Any]]) -> RuleResult:
    """A file in ``data/raw/quarantine``: one alert per file (its rule, line and reason); clears
    when the operator moves it away."""
    rule = "quarantine"
    checks = []
    for q in quarantined:
        where = f"rule {q.get('rule', '?')}" + (f", line {q['line']}" if q.get("line") not in (None, "-") else "")
        checks.append(Check(rule, str(q["file"]), True, "warning",
                            f"{q['file']} quarantined ({where}): {q.get('reason', '')}".rstrip(": "),
                            {"file": q["file"], "rule": q.get("rule"), "line": q.get("line")}))
    return RuleResult(rule, tuple(checks), complete=True)


def rule_stale_data(settings: Settings, now: datetime, last_bars: Mapping[str, datetime | None],
                    holidays: Mapping[date, time | None] = GLOBEX_HOLIDAYS) -> RuleResult:
    """No new bars for an instrument for more than ``alerts.stale_minutes`` minutes of open
    market. Judged only while the market is open (closed: nothing said either way)."""
    rule = "stale_data"
    limit = settings.alerts.stale_minutes
    if not market_open(now, holidays):
        return RuleResult(rule)
    checks = []
    for inst, last in sorted(last_bars.items()):
        if last is None:
            continue
        gap = open_minutes_between(last, now, cap=limit, holidays=holidays)
        if gap > limit:
            checks.append(Check(rule, inst, True, "critical",
                                f"{inst}: no new bars for over {limit:g} min while the market is open "
                                f"(last bar {_hm(last)})",
                                {"instrument": inst, "last_bar": last.isoformat(), "stale_minutes": limit}))
        else:
            checks.append(Check(rule, inst, False))
    return RuleResult(rule, tuple(checks))


def rule_export_stalled(settings: Settings, now: datetime, exports: Sequence[Mapping[str, Any]]) -> RuleResult:
    """An export started (its progress signal file exists) and has not completed: no progress
    for more than ``alerts.export_stale_seconds``. Clears when it completes or goes away."""
    rule = "export_stalled"
    limit = settings.alerts.export_stale_seconds
    checks = []
    for e in exports:
        name = str(e.get("fileName"))
        age = float(e.get("age_seconds") or 0)
        if age > limit:
            checks.append(Check(rule, name, True, "warning",
                                f"export of {name} started and not completed: no progress for {age / 60:.0f} min",
                                {"file": name, "age_seconds": age}))
    return RuleResult(rule, tuple(checks), complete=True)


def rule_no_run(settings: Settings, now: datetime, schedule_running: bool,
                running_since: datetime | None, last_ok: datetime | None,
                active_since: datetime | None = None) -> RuleResult:
    """No run finished its work (success or partial) for more than ``alerts.no_run_minutes``
    while the schedule runs (counted from the later of the last such run and the moment the
    schedule started or resumed). Paused or no schedule: nothing said."""
    rule = "no_run"
    if not schedule_running or running_since is None:
        return RuleResult(rule)
    since = max((t for t in (running_since, last_ok) if t is not None), key=lambda t: t.astimezone(UTC))
    mins = _minutes(since, now)
    limit = settings.alerts.no_run_minutes
    if mins > limit:
        what = f"last one ended {_hm(last_ok)}" if last_ok else "none since the schedule started"
        if active_since is not None:
            what += f"; a run has been going since {_hm(active_since)}"
        return RuleResult(rule, (Check(rule, "schedule", True, "critical",
                                       f"no successful run for {mins:.0f} min while the schedule runs ({what})",
                                       {"minutes": round(mins, 1), "last_ok": last_ok.isoformat() if last_ok else None}),))
    return RuleResult(rule, (Check(rule, "schedule", False),))


def rule_missed_marks(settings: Settings, now: datetime, missed: Sequence[datetime], mark: datetime | None) -> RuleResult:
    """Scheduled marks missed (the engine slept or was stopped); clears at the next mark met on time."""
    rule = "missed_marks"
    if missed:
        names = ", ".join(m.astimezone(CHICAGO).strftime("%H:%M") for m in missed[:8])
        more = f" (+{len(missed) - 8})" if len(missed) > 8 else ""
        return RuleResult(rule, (Check(rule, "schedule", True, "warning",
                                       f"{len(missed)} scheduled run(s) missed: {names}{more} (engine asleep or stopped)",
                                       {"marks_missed": [m.isoformat() for m in missed]}),))
    if mark is not None:
        return RuleResult(rule, (Check(rule, "schedule", False),))
    return RuleResult(rule)


def stage_durations(report: Mapping[str, Any]) -> dict[str, float]:
    """A report's successful stage durations: ``translator``, ``merger``, ``analyzer ES`` …"""
    out: dict[str, float] = {}
    for name, st in (report.get("stages") or {}).items():
        if name == "analyzer":
            for inst, ist in (st.get("instruments") or {}).items():
                if ist.get("status") == "success" and ist.get("duration_seconds") is not None:
                    out[f"analyzer {inst}"] = float(ist["duration_seconds"])
        elif st.get("status") == "success" and st.get("duration_seconds") is not None:
            out[name] = float(st["duration_seconds"])
    return out


def rule_slow_stage(settings: Settings, now: datetime, report: Mapping[str, Any] | None,
                    past: Sequence[Mapping[str, Any]]) -> RuleResult:
    """A stage (an analyzer instrument) that took more than ``alerts.slow_factor`` times its
    median over the recent runs ``past`` (at least three of them), and at least
    ``alerts.slow_min_seconds``. Clears the next time it runs at a normal pace."""
    rule = "slow_stage"
    if not report:
        return RuleResult(rule)
    a = settings.alerts
    history: dict[str, list[float]] = {}
    for r in past:
        if r.get("run_id") == report.get("run_id"):
            continue
        for k, v in stage_durations(r).items():
            history.setdefault(k, []).append(v)
    checks = []
    for k, took in stage_durations(report).items():
        got = history.get(k) or []
        if len(got) < 3:
            continue
        med = statistics.median(got)
        if took >= a.slow_min_seconds and took > a.slow_factor * med:
            checks.append(Check(rule, k, True, "warning",
                                f"{k} took {took:.0f} s, {took / max(med, 1e-9):.1f}x its median of {med:.0f} s "
                                f"over the last {len(got)} runs",
                                {"stage": k, "seconds": took, "median_seconds": med, "runs": len(got)}))
        else:
            checks.append(Check(rule, k, False))
    return RuleResult(rule, tuple(checks))


def rule_low_disk(settings: Settings, now: datetime, free_bytes: int | None) -> RuleResult:
    """Free space on the data root's file system below ``alerts.min_free_mb``."""
    rule = "low_disk"
    if free_bytes is None:
        return RuleResult(rule)
    free_mb = free_bytes / 1e6
    limit = settings.alerts.min_free_mb
    if free_mb < limit:
        return RuleResult(rule, (Check(rule, "data", True, "critical",
                                       f"{free_mb:.0f} MB free on the data root ({settings.data_dir}), below {limit:g} MB",
                                       {"free_mb": round(free_mb, 1), "min_free_mb": limit}),))
    return RuleResult(rule, (Check(rule, "data", False),))


# --- facts ----------------------------------------------------------------------------------------


def quarantined_files(settings: Settings) -> list[dict[str, Any]]:
    """The files in ``data/raw/quarantine`` with the rule, line and reason of their note."""
    d = settings.quarantine_dir
    out: list[dict[str, Any]] = []
    if not d.is_dir():
        return out
    for p in sorted(d.iterdir()):
        if p.name.endswith(".error.txt") or p.name.startswith(".") or p.is_dir():
            continue
        info: dict[str, Any] = {"file": p.name}
        try:
            for line in (d / f"{p.name}.error.txt").read_text(encoding="utf-8", errors="replace").splitlines():
                k, _, v = line.partition(": ")
                if k in ("file", "rule", "line", "reason"):
                    info[k] = v
        except OSError:
            pass
        out.append(info)
    return out


def last_bars(settings: Settings) -> dict[str, datetime | None]:
    """Per configured instrument with bars in the store, the time of its newest bar (catalogue)."""
    from pipeline_core import catalog

    cat = catalog.open_readonly(settings)
    if cat is None:
        return {}
    try:
        rows = cat.query("SELECT subject, max(last) FROM files WHERE kind=? GROUP BY subject", (catalog.STORE,))
    except catalog.CatalogError:
        return {}
    finally:
        cat.close()
    out: dict[str, datetime | None] = {}
    for subject, last in rows:
        if subject not in settings.instruments or not last:
            continue
        try:
            dt = datetime.fromisoformat(last)
        except ValueError:
            continue
        out[subject] = dt if dt.tzinfo else dt.replace(tzinfo=CHICAGO)
    return out


def export_facts(settings: Settings) -> list[dict[str, Any]]:
    """Exports in progress (progress signal, no complete signal) with the age of their signal."""
    from pipeline_core.rawfiles import scan_raw

    return [{"fileName": e.get("fileName"), "age_seconds": e.get("age_seconds")} for e in scan_raw(settings).exporting]


def free_bytes(settings: Settings) -> int | None:
    try:
        return shutil.disk_usage(settings.data_dir if settings.data_dir.exists() else settings.root).free
    except OSError:
        return None


# --- the alert book -------------------------------------------------------------------------------


@dataclass
class Alert:
    """One alert: a condition (rule + subject) from its first sighting to its recovery."""

    key: str
    rule: str
    subject: str
    severity: str
    message: str
    first_seen: str
    last_seen: str
    data: dict[str, Any] = field(default_factory=dict)
    recovered: str | None = None
    last_sent: str | None = None
    acknowledged: bool = False
    notified: bool = False  # its firing was sent: its recovery is sent too

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Alert:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass(frozen=True)
class Notice:
    """Something to tell about an alert: ``firing``, ``reminder`` or ``recovered``."""

    kind: str
    alert: Alert
    deliver: bool


def _dt(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def state_path(settings: Settings) -> Path:
    return settings.logs_dir / "alerts.json"


class AlertBook:
    """The active alerts, the recently recovered ones and when each key was last sent, kept in
    ``logs/alerts.json`` (written atomically after each change) so that repeat suppression and
    recovery survive a restart."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.active: dict[str, Alert] = {}
        self.recent: list[Alert] = []
        self.sent: dict[str, str] = {}
        self.changed = False  # an active alert's message or severity changed since the last save
        self.load()

    def load(self) -> None:
        try:
            obj = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if not isinstance(obj, dict):
            return
        self.active = {k: Alert.from_dict(v) for k, v in (obj.get("active") or {}).items()}
        self.recent = [Alert.from_dict(v) for v in obj.get("recent") or []]
        self.sent = {str(k): str(v) for k, v in (obj.get("sent") or {}).items()}

    def save(self) -> None:
        self.changed = False
        write_json_atomic(self.path, {
            "v": STATE_VERSION,
            "active": {k: asdict(a) for k, a in self.active.items()},
            "recent": [asdict(a) for a in self.recent[-RECENT_KEPT:]],
            "sent": self.sent,
        })

    def apply(self, results: Iterable[RuleResult], now: datetime, repeat_minutes: float,
              enabled: Callable[[str], bool] = lambda rule: True) -> list[Notice]:
        """Fold rule results into the book; return what to tell (in order)."""
        notices: list[Notice] = []
        stamp = now.isoformat()
        for key in [k for k, a in self.active.items() if not enabled(a.rule)]:
            del self.active[key]  # a rule switched off: its alerts go, without a message
        for res in results:
            if not enabled(res.rule):
                continue
            seen: set[str] = set()
            for c in res.checks:
                seen.add(c.key)
                if c.firing:
                    n = self._fire(c, now, stamp, repeat_minutes)
                    if n is not None:
                        notices.append(n)
                elif c.key in self.active:
                    notices.append(self._recover(c.key, stamp))
            if res.complete:
                for key in [k for k, a in self.active.items() if a.rule == res.rule and k not in seen]:
                    notices.append(self._recover(key, stamp))
        return notices

    def _within(self, key: str, now: datetime, repeat_minutes: float, last: str | None = None) -> bool:
        last_dt = _dt(last if last is not None else self.sent.get(key))
        return last_dt is not None and _minutes(last_dt, now) < repeat_minutes

    def _fire(self, c: Check, now: datetime, stamp: str, repeat: float) -> Notice | None:
        a = self.active.get(c.key)
        if a is None:
            a = Alert(c.key, c.rule, c.subject, c.severity, c.message, stamp, stamp, dict(c.data))
            self.active[c.key] = a
            deliver = not self._within(c.key, now, repeat)
            if deliver:
                self._sent(a, stamp)
            return Notice("firing", a, deliver)
        if (a.severity, a.message) != (c.severity, c.message):
            self.changed = True
        a.severity, a.message, a.last_seen, a.data = c.severity, c.message, stamp, dict(c.data)
        if a.acknowledged or self._within(c.key, now, repeat):
            return None
        kind = "reminder" if a.notified else "firing"
        self._sent(a, stamp)
        return Notice(kind, a, True)

    def _sent(self, a: Alert, stamp: str) -> None:
        a.last_sent = stamp
        a.notified = True
        self.sent[a.key] = stamp

    def _recover(self, key: str, stamp: str) -> Notice:
        a = self.active.pop(key)
        a.recovered = stamp
        self.recent.append(a)
        del self.recent[:-RECENT_KEPT]
        if a.notified:
            self.sent[key] = stamp
        return Notice("recovered", a, a.notified)

    def acknowledge(self, key: str) -> bool:
        """Silence an active alert's reminders until it recovers. False if it is not active."""
        a = self.active.get(key)
        if a is None:
            return False
        a.acknowledged = True
        return True


# --- messages and delivery ------------------------------------------------------------------------

_NOTIFY_TYPE = {"critical": "failure", "warning": "warning", "info": "info"}


def notice_line(n: Notice) -> str:
    a = n.alert
    if n.kind == "recovered":
        return f"RECOVERED {a.message} (active since {_hm(_dt(a.first_seen) or clock.now())})"
    tag = a.severity.upper()
    if n.kind == "reminder":
        return f"{tag} still: {a.message} (since {_hm(_dt(a.first_seen) or clock.now())})"
    return f"{tag} {a.message}"


def group_message(notices: Sequence[Notice]) -> tuple[str, str, str]:
    """(title, body, apprise notify type) of one grouped message."""
    firing = [n for n in notices if n.kind != "recovered"]
    recovered = [n for n in notices if n.kind == "recovered"]
    if len(notices) == 1:
        a = notices[0].alert
        title = f"qtsw: {'recovered' if recovered else a.severity}: {a.rule.replace('_', ' ')} {a.subject}"
    else:
        parts = []
        if firing:
            parts.append(f"{len(firing)} alert(s)")
        if recovered:
            parts.append(f"{len(recovered)} recovered")
        title = "qtsw: " + ", ".join(parts)
    body = "\n".join(notice_line(n) for n in sorted(notices, key=lambda n: (n.kind == "recovered",
                                                                            -SEVERITIES.index(n.alert.severity))))
    worst = max((SEVERITIES.index(n.alert.severity) for n in firing), default=-1)
    ntype = _NOTIFY_TYPE[SEVERITIES[worst]] if worst >= 0 else "success"
    return title, body, ntype


class _ThreadLog(logging.Handler):
    """Collects apprise's log records per thread: the reason a channel failed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.by_thread: dict[int, list[str]] = {}
        self._mu = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._mu:
            got = self.by_thread.setdefault(record.thread or 0, [])
            got.append(record.getMessage())
            del got[:-5]

    def take(self, ident: int) -> list[str]:
        with self._mu:
            return self.by_thread.pop(ident, [])


_apprise_log = _ThreadLog()
_apprise_logger = logging.getLogger("apprise")
_apprise_logger.addHandler(_apprise_log)
_apprise_logger.propagate = False  # its lines may quote a URL: only scrubbed reasons leave here


@dataclass(frozen=True)
class Delivery:
    """The outcome of one message on one channel (``channel`` already masked)."""

    channel: str
    ok: bool
    reason: str = ""
    attempts: int = 1
    number: int = 0  # the channel's place in [alerts] urls, from 1 (masked URLs may look alike)


SOCKET_MARGIN_SECONDS = 1.0  # a channel's sockets outlast its attempt's timeout by this


def _plugin(url: str) -> Any:
    """The apprise service for ``url``, or None (loading apprise's plugins takes a moment the
    first time: done before any attempt's timeout starts)."""
    import apprise

    try:
        return apprise.Apprise.instantiate(url)
    except Exception:
        return None


def _attempt(plugin: Any, title: str, body: str, ntype: str, timeout: float) -> tuple[bool, str]:
    result: dict[str, Any] = {}

    def send() -> None:
        ident = threading.get_ident()
        try:
            # The attempt's own bound (the join below) decides, and says "timed out": the
            # service's sockets give up just after it (so the abandoned thread ends too). With
            # both at ``timeout`` either could fire first, and apprise names a read timeout
            # "a connection error".
            for attr in ("socket_connect_timeout", "socket_read_timeout"):
                if hasattr(plugin, attr):
                    setattr(plugin, attr, timeout + SOCKET_MARGIN_SECONDS)
            ok = bool(plugin.notify(body=body, title=title, notify_type=ntype))
            why = "; ".join(_apprise_log.take(ident)) or "the service refused the message"
            result["out"] = (ok, "" if ok else why)
        except Exception as exc:  # a plugin's bug must not reach the engine
            result["out"] = (False, f"{type(exc).__name__}: {exc}")
        finally:
            _apprise_log.take(ident)

    t = threading.Thread(target=send, name="qtsw-alert-send", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        return False, f"timed out after {timeout:g} s"
    return result.get("out", (False, "no result"))


def deliver(channel: AlertChannel, title: str, body: str, ntype: str, *, timeout: float, retries: int,
            backoff: float, stop: threading.Event | None = None, number: int = 0) -> Delivery:
    """Send one message on one channel: up to ``1 + retries`` attempts, each bounded by
    ``timeout``, waiting ``backoff``, 2×``backoff`` … between them. Blocks: call it off the loop."""
    plugin = _plugin(channel.url)
    if plugin is None:
        return Delivery(mask_url(channel.url), False, "not a valid apprise URL (or its service is not available)",
                        0, number)
    reason = ""
    attempts = 0
    for i in range(retries + 1):
        attempts = i + 1
        ok, reason = _attempt(plugin, title, body, ntype, timeout)
        if ok:
            return Delivery(mask_url(channel.url), True, "", attempts, number)
        if i < retries:
            wait = backoff * (2 ** i)
            if stop is not None and stop.wait(wait):
                break
            if stop is None:
                _time.sleep(wait)
    return Delivery(mask_url(channel.url), False, scrub(reason, [channel.url]), attempts, number)


class Notifier:
    """Delivers grouped messages on a worker thread: the engine's loop only queues them.

    ``on_result(delivery, keys)`` is called from that thread for each channel's outcome.
    """

    def __init__(self, settings: Settings, on_result: Callable[[Delivery, list[str]], None]) -> None:
        self.settings = settings
        self.on_result = on_result
        self._queue: list[tuple[int, AlertChannel, str, str, str, list[str]]] = []
        self._cv = threading.Condition()
        self._busy = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def submit(self, notices: Sequence[Notice]) -> None:
        """Queue the notices to deliver: one message per channel, with those it wants."""
        chosen = [n for n in notices if n.deliver]
        if not chosen or not self.settings.alerts.channels:
            return
        with self._cv:
            for number, ch in enumerate(self.settings.alerts.channels, start=1):
                mine = [n for n in chosen if ch.wants(n.alert.severity)]
                if mine:
                    title, body, ntype = group_message(mine)
                    self._queue.append((number, ch, title, body, ntype, [n.alert.key for n in mine]))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="qtsw-alerts", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def _work(self) -> None:
        a = self.settings.alerts
        while True:
            with self._cv:
                while not self._queue and not self._stop.is_set():
                    self._cv.wait()
                if not self._queue:
                    return
                jobs, self._queue = self._queue, []
                self._busy += len(jobs)
            threads = []
            for number, ch, title, body, ntype, keys in jobs:
                def one(number: int = number, ch: AlertChannel = ch, title: str = title, body: str = body,
                        ntype: str = ntype, keys: list[str] = keys) -> None:
                    try:
                        d = deliver(ch, title, body, ntype, timeout=a.timeout_seconds, retries=a.retries,
                                    backoff=a.retry_backoff_seconds, stop=self._stop, number=number)
                        try:
                            self.on_result(d, keys)
                        except Exception:
                            pass
                    finally:
                        with self._cv:
                            self._busy -= 1
                            self._cv.notify_all()

                t = threading.Thread(target=one, name="qtsw-alert-channel", daemon=True)
                t.start()
                threads.append(t)
            for t in threads:
                t.join()

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for queued messages to be delivered (or given up)."""
        deadline = _time.monotonic() + timeout
        with self._cv:
            while self._queue or self._busy:
                left = deadline - _time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def close(self, timeout: float = 0.0) -> None:
        """Deliver what is queued within ``timeout`` seconds, then stop retrying."""
        self.flush(timeout)
        stop, self._stop = self._stop, threading.Event()  # a later submit starts afresh
        stop.set()


# --- the monitor the engine holds ------------------------------------------------------------------

EmitFn = Callable[[str, dict[str, Any]], None]


class AlertMonitor:
    """Evaluates the rules for the engine and keeps the alert book.

    ``emit(msg, data)`` writes one ``alert`` event (the engine's scheduler event log). Called from
    the engine's loop (:meth:`run_ended`, :meth:`tick`, :meth:`marks`) and, for delivery failures,
    from the notifier's thread.
    """

    def __init__(self, settings: Settings, *, now: Callable[[], datetime] = clock.now,
                 emit: EmitFn | None = None) -> None:
        self.settings = settings
        self.now = now
        self.emit = emit or (lambda msg, data: None)
        self.book = AlertBook(state_path(settings))
        self.notifier = Notifier(settings, self._delivered)
        self._mu = threading.RLock()
        self.last_check: datetime | None = None
        self.running_since: datetime | None = None
        self.last_ok = self._last_ok_from_history()
        self.holidays: Mapping[date, time | None] = GLOBEX_HOLIDAYS
        self.listeners: list[Callable[[], None]] = []  # told when the book changes (the console)

    def _last_ok_from_history(self) -> datetime | None:
        from pipeline_core import history

        for r in reversed(history.read_runs(self.settings, limit=200)):
            if r.get("status") in ("success", "partial"):
                return _dt(r.get("ended"))
        return None

    # facts and evaluation ---------------------------------------------------------------------

    def standing_results(self, now: datetime) -> list[RuleResult]:
        """The rules that look at the present state of the data root. Stale data is judged only
        while the schedule runs: a manual run on old data is no news about the live feed."""
        s = self.settings
        out = []
        on = s.alerts.enabled
        if on("quarantine"):
            out.append(rule_quarantine(s, now, quarantined_files(s)))
        if on("stale_data") and self.running_since is not None:
            out.append(rule_stale_data(s, now, last_bars(s), self.holidays))
        if on("export_stalled"):
            out.append(rule_export_stalled(s, now, export_facts(s)))
        if on("low_disk"):
            out.append(rule_low_disk(s, now, free_bytes(s)))
        return out

    def evaluate(self, results: Sequence[RuleResult], now: datetime | None = None) -> list[Notice]:
        """Fold results into the book, save it, emit the events, queue the grouped message."""
        now = now or self.now()
        with self._mu:
            notices = self.book.apply(results, now, self.settings.alerts.repeat_minutes,
                                      self.settings.alerts.enabled)
            if notices or self.book.changed:
                try:
                    self.book.save()
                except OSError as exc:
                    self.emit(f"alert state not saved: {exc.filename or ''}: {exc.strerror or exc}",
                              {"state": "error", "level": "error"})
        for n in notices:
            if n.kind == "reminder":
                continue  # each alert is an event once when it fires and once when it recovers
            a = n.alert
            self.emit(notice_line(n), {
                "state": "recovered" if n.kind == "recovered" else "firing",
                "key": a.key, "rule": a.rule, "subject": a.subject, "severity": a.severity,
                "first_seen": a.first_seen, "recovered": a.recovered, "message": a.message,
                "sent": n.deliver, "level": "info" if n.kind == "recovered" else
                ("error" if a.severity == "critical" else "warning"),
                **{k: v for k, v in a.data.items() if k not in ("state", "level")},
            })
        self.notifier.submit(notices)
        if notices:
            for fn in list(self.listeners):
                try:
                    fn()
                except Exception:
                    pass
        return notices

    def run_ended(self, report: Mapping[str, Any]) -> list[Notice]:
        """At a run's end: its failures, slow stages, and the standing rules; one message."""
        from pipeline_core import history

        s = self.settings
        now = self.now()
        if report.get("status") in ("success", "partial"):
            self.last_ok = _dt(report.get("ended")) or now
        results: list[RuleResult] = []
        try:
            if s.alerts.enabled("run_failed"):
                results.append(rule_run_failed(s, now, report))
            if s.alerts.enabled("slow_stage"):
                results.append(rule_slow_stage(s, now, report, history.recent_reports(s, s.alerts.slow_history + 1)))
            results += self.standing_results(now)
            if s.alerts.enabled("no_run") and self.running_since is not None:
                results.append(rule_no_run(s, now, True, self.running_since, self.last_ok))
        except Exception as exc:  # a fact that cannot be read must not break the run's end
            self.emit(f"alert rules could not be evaluated: {type(exc).__name__}: {exc}",
                      {"state": "error", "level": "error"})
        self.last_check = now
        return self.evaluate(results, now)

    def tick(self, scheduler_state: str, active_since: datetime | None = None) -> list[Notice]:
        """The scheduler's periodic look: every ``alerts.check_seconds``. ``active_since``: when
        the run in progress (if any) started, said in a no-run alert."""
        now = self.now()
        if scheduler_state == "running":
            if self.running_since is None:
                self.running_since = now
        else:
            self.running_since = None
        if self.last_check is not None:
            gap = (now.astimezone(UTC) - self.last_check.astimezone(UTC)).total_seconds()
            if 0 <= gap < self.settings.alerts.check_seconds:
                return []
        self.last_check = now
        s = self.settings
        results: list[RuleResult] = []
        try:
            results = self.standing_results(now)
            if s.alerts.enabled("no_run"):
                results.append(rule_no_run(s, now, scheduler_state == "running", self.running_since, self.last_ok,
                                           active_since))
        except Exception as exc:
            self.emit(f"alert rules could not be evaluated: {type(exc).__name__}: {exc}",
                      {"state": "error", "level": "error"})
        return self.evaluate(results, now)

    def marks(self, missed: Sequence[datetime], mark: datetime | None) -> list[Notice]:
        """A look at the schedule found ``mark`` due, with ``missed`` marks before it."""
        if not self.settings.alerts.enabled("missed_marks") or (mark is None and not missed):
            return []
        return self.evaluate([rule_missed_marks(self.settings, self.now(), missed, mark)])

    # delivery ------------------------------------------------------------------------------

    def _delivered(self, d: Delivery, keys: list[str]) -> None:
        if d.ok:
            return
        self.emit(f"alert not delivered to channel {d.number} ({d.channel}) after {d.attempts} attempt(s): {d.reason}",
                  {"state": "delivery_failed", "channel": d.channel, "channel_number": d.number, "reason": d.reason,
                   "attempts": d.attempts, "keys": keys, "level": "warning"})

    # the console -----------------------------------------------------------------------------

    def active(self) -> list[Alert]:
        with self._mu:
            return sorted(self.book.active.values(), key=lambda a: (-SEVERITIES.index(a.severity), a.first_seen))

    def recent(self, limit: int = 50) -> list[Alert]:
        with self._mu:
            return list(reversed(self.book.recent[-limit:]))

    def acknowledge(self, key: str) -> bool:
        with self._mu:
            ok = self.book.acknowledge(key)
            if ok:
                try:
                    self.book.save()
                except OSError:
                    pass
        if ok:
            a = self.book.active.get(key)
            self.emit(f"acknowledged: {a.message if a else key}",
                      {"state": "acknowledged", "key": key, "level": "info"})
            for fn in list(self.listeners):
                try:
                    fn()
                except Exception:
                    pass
        return ok

    def close(self, timeout: float = 0.0) -> None:
        """Give queued messages up to ``timeout`` seconds, then stop retrying."""
        self.notifier.close(timeout)

    def delivery_bound(self) -> float:
        """The longest one message can take on a channel: every attempt and every wait, and
        loading apprise's plugins the first time (a few seconds on a busy machine)."""
        a = self.settings.alerts
        return (APPRISE_LOAD_SECONDS + a.timeout_seconds * (a.retries + 1)
                + a.retry_backoff_seconds * (2 ** a.retries - 1))


# --- status and the test message ----------------------------------------------------------------


def status_view(settings: Settings, recent: int = 10) -> dict[str, Any]:
    """The alerts for ``qtsw status``: active ones, recently recovered ones, the channels (masked)."""
    book = AlertBook(state_path(settings))
    view = lambda a: {k: v for k, v in asdict(a).items() if k not in ("data", "notified")}  # noqa: E731
    return {
        "active": [view(a) for a in sorted(book.active.values(),
                                           key=lambda a: (-SEVERITIES.index(a.severity), a.first_seen))],
        "recent": [view(a) for a in reversed(book.recent[-recent:])],
        "channels": [{"url": mask_url(c.url), "min_severity": c.min_severity} for c in settings.alerts.channels],
    }


def send_test(settings: Settings, urls: Sequence[str] | None = None) -> list[Delivery]:
    """Send a test message to each channel (or to ``urls``), one after another; the outcomes."""
    channels = [AlertChannel(u) for u in urls] if urls else list(settings.alerts.channels)
    a = settings.alerts
    title = "qtsw: test message"
    body = f"A test alert from qtsw at {_hm(clock.now())} (data root {settings.root}). No action needed."
    return [deliver(ch, title, body, "info", timeout=a.timeout_seconds, retries=0, backoff=0, number=i)
            for i, ch in enumerate(channels, start=1)]
