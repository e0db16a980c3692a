"""One typed settings object: built-in defaults < qtsw.toml < QTSW_* environment < flags.

Every path the product uses comes from :class:`Settings`, built on the data root. Nothing here
depends on the current directory or the machine's local time zone.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline_core.keys import KeyProblem, check_keys

CHICAGO = ZoneInfo("America/Chicago")
ENGINE_VERSION = "0.1.0"
PROJECT_DIR = Path(__file__).resolve().parent.parent
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class SettingsError(ValueError):
    """An invalid setting: names the key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str, source: str = "") -> None:
        self.key, self.value, self.allowed, self.source = key, value, allowed, source
        where = f" (from {source})" if source else ""
        super().__init__(f"invalid setting {key} = {value!r}{where}: {allowed}")


@dataclass(frozen=True)
class Instrument:
    """A tradable symbol: its tick size and the target T, both in price points, and what one
    point is worth in dollars per contract (None when the table does not say: results then
    show points only for it)."""

    symbol: str
    tick: float
    target: float
    base: str  # the symbol whose tick/target a micro uses; itself for a base symbol
    point_value: float | None = None  # dollars per point per contract; a micro has its own

    def ticks(self, price: float) -> int:
        """A price in integer ticks (so float artefacts cannot flip a comparison)."""
        return round(price / self.tick)


@dataclass(frozen=True)
class Session:
    """A session: the range starts at ``range_start``; each slot end is an independent trade."""

    name: str
    range_start: time
    slots: tuple[time, ...]

    @property
    def stream_digit(self) -> str:
        return self.name.lstrip("S")


# point_value: dollars per point per contract (exchange contract specs). A micro trades its
# base's prices (same tick and target) but is a smaller contract: it has its own point value.
DEFAULT_INSTRUMENTS: dict[str, dict[str, Any]] = {
    "ES": {"tick": 0.25, "target": 10, "point_value": 50},
    "NQ": {"tick": 0.25, "target": 50, "point_value": 20},
    "YM": {"tick": 1.0, "target": 100, "point_value": 5},
    "CL": {"tick": 0.01, "target": 0.50, "point_value": 1000},
    "NG": {"tick": 0.001, "target": 0.05, "point_value": 10000},
    "GC": {"tick": 0.1, "target": 5, "point_value": 100},
    "RTY": {"tick": 0.10, "target": 10, "point_value": 50},
    "MES": {"base": "ES", "point_value": 5},
    "MNQ": {"base": "NQ", "point_value": 2},
    "MYM": {"base": "YM", "point_value": 0.5},
    "MCL": {"base": "CL", "point_value": 100},
    "MNG": {"base": "NG", "point_value": 1000},
    "MGC": {"base": "GC", "point_value": 10},
    "M2K": {"base": "RTY", "point_value": 5},
}

DEFAULTS: dict[str, Any] = {
    "instruments": DEFAULT_INSTRUMENTS,
    "sessions": {
        "S1": {"range_start": "02:00", "slots": ["07:30", "08:00", "09:00"]},
        "S2": {"range_start": "08:00", "slots": ["09:30", "10:00", "10:30", "11:00"]},
    },
    "analysis": {
        "trade_days": ["Mon", "Tue", "Wed", "Thu", "Fri"],
        "entry_cutoff": "16:00",
        "break_even_fraction": 0.65,
        "stop_cap_multiple": 3.0,
    },
    "input": {
        "default_timezone": "UTC",
        # [{pattern = "ES*.csv", timezone = "America/Chicago"}, ...]; first match wins.
        "timezones": [],
        "stable_seconds": 10.0,
        "export_stale_seconds": 600.0,
        "max_bad_row_fraction": 0.01,
        "raw_policy": "archive",
        # bars before this Chicago date (or after now + 1 day) are bad rows (rule out_of_range)
        "min_date": "2000-01-01",
    },
    "timeouts": {
        "translator": 3600.0,
        "analyzer": 21600.0,
        "merger": 1800.0,
        "grace": 5.0,
        "silence_warning": 300.0,
        "progress_interval": 60.0,
    },
    "engine": {
        "workers": 0,  # 0 = CPU count
        "schedule_minutes": [0, 15, 30, 45],
        # start stages by forking a warm launcher that has already imported them (SPEC §11.2);
        # false: every stage is a fresh interpreter
        "warm_start": True,
    },
    "console": {
        # an attached console lowers its CPU priority by this (nice, 0-19): on a machine with
        # fewer cores than processes, watching a run must not slow it; 0: as the engine
        "attached_nice": 19,
        # true: … and it runs as an idle task (Linux SCHED_IDLE), only on CPU time nothing else
        # wants: watching a flood costs the run less, but while every core is busy the console
        # hardly runs (draws, takes keys, even quits only when a core is free)
        "attached_idle": False,
    },
    "keys": {},  # binding id -> key, e.g. {run_now = "R"}
    "alerts": {
        # apprise URLs: "mailto://…", or {url = "ntfy://…", min_severity = "critical"}
        "urls": [],
        "stale_minutes": 30.0,
        "no_run_minutes": 45.0,
        "repeat_minutes": 60.0,
        "min_free_mb": 1024.0,
        "slow_factor": 3.0,
        "slow_min_seconds": 60.0,
        "slow_history": 20,
        "export_stale_seconds": 600.0,
        "check_seconds": 60.0,
        "timeout_seconds": 10.0,
        "retries": 2,
        "retry_backoff_seconds": 2.0,
        "rules": {
            "run_failed": True,
            "quarantine": True,
            "stale_data": True,
            "export_stalled": True,
            "no_run": True,
            "missed_marks": True,
            "slow_stage": True,
            "low_disk": True,
        },
    },
}

# Environment variables: QTSW_<SECTION>_<KEY> for scalar settings, e.g. QTSW_ENGINE_WORKERS=2.
_SCALAR_KEYS = {
    ("analysis", "entry_cutoff"),
    ("analysis", "break_even_fraction"),
    ("analysis", "stop_cap_multiple"),
    ("input", "default_timezone"),
    ("input", "stable_seconds"),
    ("input", "export_stale_seconds"),
    ("input", "max_bad_row_fraction"),
    ("input", "raw_policy"),
    ("input", "min_date"),
    ("timeouts", "translator"),
    ("timeouts", "analyzer"),
    ("timeouts", "merger"),
    ("timeouts", "grace"),
    ("timeouts", "silence_warning"),
    ("timeouts", "progress_interval"),
    ("engine", "workers"),
    ("engine", "warm_start"),
    ("console", "attached_nice"),
    ("console", "attached_idle"),
    ("alerts", "stale_minutes"),
    ("alerts", "no_run_minutes"),
    ("alerts", "repeat_minutes"),
    ("alerts", "min_free_mb"),
    ("alerts", "slow_factor"),
    ("alerts", "slow_min_seconds"),
    ("alerts", "slow_history"),
    ("alerts", "export_stale_seconds"),
    ("alerts", "check_seconds"),
    ("alerts", "timeout_seconds"),
    ("alerts", "retries"),
    ("alerts", "retry_backoff_seconds"),
}
_LIST_KEYS = {("analysis", "trade_days"), ("engine", "schedule_minutes")}

RAW_POLICIES = ("archive", "delete", "keep")
SEVERITIES = ("info", "warning", "critical")  # lowest first
ALERT_RULES = tuple(DEFAULTS["alerts"]["rules"])


@dataclass(frozen=True)
class AlertChannel:
    """One place alerts go: an apprise URL (holding secrets: show it only through
    ``pipeline_core.alerts.mask_url``) and the lowest severity it receives."""

    url: str = field(repr=False)
    min_severity: str = "info"

    def wants(self, severity: str) -> bool:
        return SEVERITIES.index(severity) >= SEVERITIES.index(self.min_severity)


@dataclass(frozen=True)
class AlertSettings:
    """``[alerts]``: channels, the rules' thresholds and which rules are on."""

    channels: tuple[AlertChannel, ...] = ()
    stale_minutes: float = 30.0
    no_run_minutes: float = 45.0
    repeat_minutes: float = 60.0
    min_free_mb: float = 1024.0
    slow_factor: float = 3.0
    slow_min_seconds: float = 60.0
    slow_history: int = 20
    export_stale_seconds: float = 600.0
    check_seconds: float = 60.0
    timeout_seconds: float = 10.0
    retries: int = 2
    retry_backoff_seconds: float = 2.0
    rules: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(ALERT_RULES, True))

    def enabled(self, rule: str) -> bool:
        return bool(self.rules.get(rule, False))

# The qtsw.toml that `qtsw init` writes: every setting at its default, commented out.
STARTER_TOML = """\
# qtsw settings for this data root. Every setting is shown at its built-in default, commented
# out: remove the '#' and change the value to override it. QTSW_<SECTION>_<KEY> environment
# variables (e.g. QTSW_ENGINE_WORKERS=2) override this file; command-line flags override both.

# [instruments]            # a table here replaces the built-in one (ES NQ YM CL NG GC RTY and micros)
# ES  = {tick = 0.25, target = 10}
# MES = {base = "ES"}      # a micro uses its base symbol's tick and target

# [sessions]
# S1 = {range_start = "02:00", slots = ["07:30", "08:00", "09:00"]}
# S2 = {range_start = "08:00", slots = ["09:30", "10:00", "10:30", "11:00"]}

[analysis]
# trade_days = ["Mon", "Tue", "Wed", "Thu", "Fri"]
# entry_cutoff = "16:00"
# break_even_fraction = 0.65
# stop_cap_multiple = 3.0

[input]
# default_timezone = "UTC"       # input timestamps are UTC unless a pattern says otherwise
# timezones = [{pattern = "GC*.csv", timezone = "America/Chicago"}]
# stable_seconds = 10            # a file with no signal files is ready after this long unmodified
# export_stale_seconds = 600
# max_bad_row_fraction = 0.01
# raw_policy = "archive"         # archive | delete | keep

[timeouts]                       # seconds
# translator = 3600
# analyzer = 21600               # per instrument
# merger = 1800
# grace = 5                      # from the stop request to a forced kill
# silence_warning = 300
# progress_interval = 60

[engine]
# workers = 0                    # analyzer processes at once; 0 = one per CPU
# schedule_minutes = [0, 15, 30, 45]
# warm_start = true              # fork stages from a warm launcher; false: fresh interpreters

[console]
# attached_nice = 19             # an attached console's CPU priority below the engine's (0-19)
# attached_idle = false          # true: it runs only on idle CPU time (Linux SCHED_IDLE)

[keys]                           # console keys by binding id (the README lists them)
# run_now = "R"
"""


@dataclass(frozen=True)
class Settings:
    """Everything the engine, the stages and the console need, resolved and validated."""

    root: Path
    instruments: dict[str, Instrument]
    sessions: tuple[Session, ...]
    trade_days: frozenset[int]  # 0 = Monday
    entry_cutoff: time
    break_even_fraction: float
    stop_cap_multiple: float
    default_timezone: str
    input_timezones: tuple[tuple[str, str], ...]  # (glob pattern, zone)
    stable_seconds: float
    export_stale_seconds: float
    max_bad_row_fraction: float
    raw_policy: str
    min_date: date
    timeouts: dict[str, float]
    workers: int
    schedule_minutes: tuple[int, ...]
    keys: dict[str, str] = field(default_factory=dict)
    warm_start: bool = True
    attached_nice: int = 19
    attached_idle: bool = False
    config_file: Path | None = None
    alerts: AlertSettings = field(default_factory=AlertSettings)

    # --- paths (SPEC §1) -------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def raw_logs_dir(self) -> Path:
        return self.raw_dir / "logs"

    @property
    def quarantine_dir(self) -> Path:
        return self.raw_dir / "quarantine"

    @property
    def archive_dir(self) -> Path:
        return self.raw_dir / "archive"

    @property
    def processed_dir(self) -> Path:
        return self.data_dir / "processed"

    @property
    def analyzer_temp_dir(self) -> Path:
        return self.data_dir / "analyzer_temp"

    @property
    def analyzer_runs_dir(self) -> Path:
        return self.data_dir / "analyzer_runs"

    @property
    def catalog_path(self) -> Path:
        return self.data_dir / "catalog.sqlite"

    @property
    def results_cache_path(self) -> Path:
        """What the statistics read from every monthly file, kept between starts (a cache:
        deleting it only costs one slower first read)."""
        return self.data_dir / "cache" / "results.arrow"

    @property
    def exports_dir(self) -> Path:
        """CSV files the console exports (results)."""
        return self.root / "exports"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def events_dir(self) -> Path:
        return self.logs_dir / "events"

    @property
    def runs_dir(self) -> Path:
        return self.logs_dir / "runs"

    @property
    def reports_dir(self) -> Path:
        return self.logs_dir / "reports"

    @property
    def runs_index(self) -> Path:
        return self.logs_dir / "runs.jsonl"

    @property
    def lock_file(self) -> Path:
        return self.logs_dir / "qtsw.lock"

    def data_folders(self) -> tuple[Path, ...]:
        """The folders of a data root's layout (SPEC §1)."""
        return (
            self.raw_dir,
            self.raw_logs_dir,
            self.processed_dir,
            self.analyzer_temp_dir,
            self.analyzer_runs_dir,
            self.events_dir,
            self.runs_dir,
            self.reports_dir,
        )

    def ensure_dirs(self) -> None:
        """Create the data and log folders inside the root (the root itself must be made by
        ``qtsw init`` or ``qtsw sample``; the command line checks it exists first)."""
        for d in self.data_folders():
            d.mkdir(parents=True, exist_ok=True)

    # --- derived values ----------------------------------------------------------------
    def instrument(self, symbol: str) -> Instrument:
        try:
            return self.instruments[symbol]
        except KeyError:
            raise KeyError(
                f"unknown instrument {symbol!r}; configured: {', '.join(sorted(self.instruments))}"
            ) from None

    def timeout(self, stage: str) -> float:
        return self.timeouts[stage]

    @property
    def effective_workers(self) -> int:
        return self.workers or (os.cpu_count() or 1)

    def timezone_for(self, file_name: str) -> ZoneInfo:
        """The input time zone of a raw file: the first matching pattern, else the default."""
        from fnmatch import fnmatchcase

        for pattern, zone in self.input_timezones:
            if fnmatchcase(file_name, pattern):
                return ZoneInfo(zone)
        return ZoneInfo(self.default_timezone)

    def analysis_dict(self) -> dict[str, Any]:
        """The settings that decide analysis results (their hash goes into every result file)."""
        return {
            "instruments": {
                s: {"tick": i.tick, "target": i.target} for s, i in sorted(self.instruments.items())
            },
            "sessions": [
                {
                    "name": s.name,
                    "range_start": s.range_start.strftime("%H:%M"),
                    "slots": [t.strftime("%H:%M") for t in s.slots],
                }
                for s in self.sessions
            ],
            "trade_days": sorted(self.trade_days),
            "entry_cutoff": self.entry_cutoff.strftime("%H:%M"),
            "break_even_fraction": self.break_even_fraction,
            "stop_cap_multiple": self.stop_cap_multiple,
        }

    @property
    def analysis_hash(self) -> str:
        blob = json.dumps(self.analysis_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def analysis_dict_for(self, symbol: str) -> dict[str, Any]:
        """The settings that decide ``symbol``'s results: its tick and target (a micro's come
        from its base), the sessions and slots, trade days, entry cutoff, break-even fraction and
        stop cap. Nothing else (timeouts, keys, workers, paths, input, point values) changes a
        result row."""
        inst = self.instrument(symbol)
        full = self.analysis_dict()
        del full["instruments"]
        return {"instrument": {"symbol": symbol, "tick": inst.tick, "target": inst.target}, **full}

    def analysis_hash_for(self, symbol: str) -> str:
        """The hash of :meth:`analysis_dict_for`: results computed with another hash are stale."""
        blob = json.dumps(self.analysis_dict_for(symbol), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def describe_analysis_change(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    """What differs between two :meth:`Settings.analysis_dict_for` values, in the operator's
    words (``"tick 0.25 -> 0.5; S2 slots 09:30 10:00 10:30 11:00 -> 09:30 10:00 10:30"``)."""
    if not old:
        return "the settings of the stored results are not known"

    def flat(d: Mapping[str, Any]) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in d.get("instrument", {}).items():
            if k != "symbol":
                out[k] = str(v)
        for sess in d.get("sessions", []):
            out[f"{sess['name']} range start"] = sess["range_start"]
            out[f"{sess['name']} slots"] = " ".join(sess["slots"])
        days = "Mon Tue Wed Thu Fri Sat Sun".split()
        out["trade days"] = " ".join(days[i] for i in d.get("trade_days", []))
        for k in ("entry_cutoff", "break_even_fraction", "stop_cap_multiple"):
            out[k.replace("_", " ")] = str(d.get(k))
        return out

    a, b = flat(old), flat(new)
    parts = []
    for key in [*a, *(k for k in b if k not in a)]:
        if a.get(key) != b.get(key):
            parts.append(f"{key} {a.get(key) or '(none)'} -> {b.get(key) or '(removed)'}")
    return "; ".join(parts) or "no difference"


# --- loading ---------------------------------------------------------------------------------


def default_root(env: Mapping[str, str] | None = None) -> Path:
    """The data root: ``QTSW_ROOT``, else the project's own folder."""
    env = os.environ if env is None else env
    if env.get("QTSW_ROOT"):
        return Path(env["QTSW_ROOT"]).expanduser().resolve()
    return PROJECT_DIR


def load_settings(
    root: str | Path | None = None,
    config: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings: defaults < ``qtsw.toml`` (at the root, or ``config``) < ``QTSW_*`` < overrides.

    ``overrides`` uses dotted keys (``{"engine.workers": 2}``). Raises :class:`SettingsError`
    naming the key, the value and what is allowed.
    """
    env = os.environ if env is None else env
    _check_environment(env)
    root_path = Path(root).expanduser().resolve() if root else default_root(env)
    raw = copy.deepcopy(DEFAULTS)
    sources: dict[str, str] = {}  # dotted setting -> the file, variable or flag that set it
    config_path: Path | None = None
    if config is None and env.get("QTSW_CONFIG"):
        config = env["QTSW_CONFIG"]
    if config is not None:
        config_path = Path(config).expanduser().resolve()
        if not config_path.is_file():
            raise SettingsError("--config", str(config_path), "the file must exist")
    elif (root_path / "qtsw.toml").is_file():
        config_path = root_path / "qtsw.toml"
    if config_path is not None:
        try:
            with open(config_path, "rb") as fh:
                file_values = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError("qtsw.toml", str(config_path), f"valid TOML ({exc})") from None
        _merge(raw, file_values, str(config_path), prefix="", sources=sources)
    for (section, key) in sorted(_SCALAR_KEYS | _LIST_KEYS):
        name = env_name(section, key)
        if name in env:
            value: Any = env[name]
            if (section, key) in _LIST_KEYS:
                value = [v.strip() for v in value.split(",") if v.strip()]
            raw[section][key] = value
            sources[f"{section}.{key}"] = f"environment variable {name}"
    if env.get("QTSW_ALERTS_URLS") is not None:
        # whitespace-separated; "critical=ntfy://…" sets the channel's minimum severity
        raw["alerts"]["urls"] = env["QTSW_ALERTS_URLS"].split()
        sources["alerts.urls"] = "environment variable QTSW_ALERTS_URLS"
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if section not in raw or not isinstance(raw[section], dict) or not key:
            raise SettingsError(dotted, value, "a known setting", "the command line")
        raw[section][key] = value
        sources[dotted] = "the command line"
    try:
        return _build(root_path, raw, config_path)
    except SettingsError as exc:
        if exc.source:
            raise
        # say where the wrong value came from: the file, the environment or a flag
        source = _source_of(exc.key, sources)
        if not source:
            raise
        raise SettingsError(exc.key, exc.value, exc.allowed, source) from None


def env_name(section: str, key: str) -> str:
    """The environment variable of a setting: ``QTSW_<SECTION>_<KEY>``."""
    return f"QTSW_{section}_{key}".upper()


# QTSW_* variables that are not settings: the data root and settings file, and what the engine
# gives its stage processes (and the tests' fault injection).
ENV_OTHER = {
    "QTSW_ROOT": "the data root",
    "QTSW_ALERTS_URLS": "the alert channels (alerts.urls), whitespace-separated",
    "QTSW_CONFIG": "the settings file",
    "QTSW_RUN_ID": "set by the engine for its stages",
    "QTSW_PROC_TOKEN": "set by the engine for its stages",
    "QTSW_STAGE": "set by the engine for its stages",
    "QTSW_INSTRUMENT": "set by the engine for its stages",
    "QTSW_FULL": "set by the engine for its stages",
    "QTSW_TRANSLATOR_PIECE_BYTES": "a test setting of the translator",
    "QTSW_CRASH_BEFORE_RENAME": "a test setting of atomic writes",
    "QTSW_FAIL_WRITE": "a test setting: writes to matching paths fail as on a full disk",
    "QTSW_PAUSE_AFTER_READ": "a test setting of the translator (a file changing while read)",
}


def _check_environment(env: Mapping[str, str]) -> None:
    """A ``QTSW_*`` variable that names no setting is a mistake (a typo would be ignored)."""
    known = {env_name(s, k) for s, k in _SCALAR_KEYS | _LIST_KEYS} | set(ENV_OTHER)
    for name in sorted(env):
        if name.startswith("QTSW_") and name not in known:
            settings_vars = sorted(env_name(s, k) for s, k in _SCALAR_KEYS | _LIST_KEYS)
            raise SettingsError(
                name, env[name],
                "a known variable: QTSW_ROOT, QTSW_CONFIG or one of " + ", ".join(settings_vars),
                "the environment",
            )


def _source_of(key: str, sources: Mapping[str, str]) -> str:
    """Where the value of ``key`` (``instruments.ES.tick``, ``input.timezones[0].timezone``)
    came from: the most specific recorded source, "" for a built-in default."""
    parts = key.split("[", 1)[0].split(".")
    for n in range(len(parts), 0, -1):
        src = sources.get(".".join(parts[:n]))
        if src:
            return src
    return ""


def _merge(
    base: dict[str, Any], new: Mapping[str, Any], source: str, prefix: str, sources: dict[str, str]
) -> None:
    for key, value in new.items():
        full = f"{prefix}{key}"
        if key not in base and prefix not in ("instruments.", "sessions.", "keys."):
            raise SettingsError(full, value, f"a known setting (known here: {', '.join(sorted(base))})", source)
        if isinstance(base.get(key), dict) and isinstance(value, Mapping) and full not in (
            "instruments",
            "sessions",
        ):
            _merge(base[key], value, source, prefix=f"{full}.", sources=sources)
        elif full in ("instruments", "sessions"):
            if not isinstance(value, Mapping):
                raise SettingsError(full, value, "a table", source)
            base[key] = dict(value)  # a table given in the file replaces the built-in one
            sources[full] = source
        else:
            base[key] = value
            sources[full] = source


_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def _time(key: str, value: Any) -> time:
    if isinstance(value, time):
        return value
    m = _HHMM.match(str(value))
    if not m:
        raise SettingsError(key, value, "a wall-clock time HH:MM (00:00 to 23:59)")
    return time(int(m.group(1)), int(m.group(2)))


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise SettingsError(key, value, "true or false")


def _number(key: str, value: Any, lo: float, hi: float, *, integer: bool = False) -> float:
    try:
        num = int(value) if integer else float(value)
        if integer and float(value) != num:
            raise ValueError
    except (TypeError, ValueError):
        kind = "a whole number" if integer else "a number"
        raise SettingsError(key, value, f"{kind} from {lo:g} to {hi:g}") from None
    if not (lo <= num <= hi):
        kind = "a whole number" if integer else "a number"
        raise SettingsError(key, value, f"{kind} from {lo:g} to {hi:g}")
    return num


def _positive(key: str, value: Any) -> float:
    allowed = "a positive number (dollars per point per contract, e.g. 50 for ES)"
    if isinstance(value, bool):
        raise SettingsError(key, value, allowed)
    try:
        num = float(value)
    except (TypeError, ValueError):
        raise SettingsError(key, value, allowed) from None
    if not (num > 0 and num < float("inf")):
        raise SettingsError(key, value, allowed)
    return num


def _date(key: str, value: Any) -> date:
    if isinstance(value, datetime):
        value = value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise SettingsError(key, value, "a date YYYY-MM-DD") from None


def _zone(key: str, value: Any) -> str:
    try:
        ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(key, value, "an IANA time zone name such as UTC or America/Chicago") from None
    return str(value)


def _build(root: Path, raw: dict[str, Any], config_path: Path | None) -> Settings:
    instruments: dict[str, Instrument] = {}
    table = raw["instruments"]
    for sym, spec in table.items():
        if not re.fullmatch(r"[A-Z][A-Z0-9]*", sym):
            raise SettingsError(f"instruments.{sym}", sym, "an upper-case symbol such as ES or M2K")
        if not isinstance(spec, Mapping):
            raise SettingsError(f"instruments.{sym}", spec, "a table with tick and target, or base")
    for sym, spec in table.items():
        base = spec.get("base", sym)
        src = table.get(base)
        if src is None or "base" in src and src["base"] != base:
            raise SettingsError(f"instruments.{sym}.base", base, "a base symbol defined with tick and target")
        tick = _number(f"instruments.{sym}.tick", spec.get("tick", src.get("tick")), 1e-9, 1e9)
        target = _number(f"instruments.{sym}.target", spec.get("target", src.get("target")), 1e-9, 1e9)
        # Not inherited from the base (a micro is a smaller contract); a symbol of the built-in
        # table keeps its built-in point value when the file's table does not give one.
        pv_raw = spec.get("point_value", DEFAULT_INSTRUMENTS.get(sym, {}).get("point_value"))
        point_value = None if pv_raw is None else _positive(f"instruments.{sym}.point_value", pv_raw)
        instruments[sym] = Instrument(sym, tick, target, base, point_value)

    sessions = []
    for name, spec in raw["sessions"].items():
        if not re.fullmatch(r"S\d", name):
            raise SettingsError(f"sessions.{name}", name, "a session name S1 to S9")
        start = _time(f"sessions.{name}.range_start", spec.get("range_start"))
        slots_raw = spec.get("slots")
        if not isinstance(slots_raw, list) or not slots_raw:
            raise SettingsError(f"sessions.{name}.slots", slots_raw, "a non-empty list of HH:MM times")
        slots = tuple(sorted(_time(f"sessions.{name}.slots", s) for s in slots_raw))
        if slots[0] <= start:
            raise SettingsError(f"sessions.{name}.slots", slots_raw[0], f"slot ends later than range_start {start:%H:%M}")
        sessions.append(Session(name, start, slots))
    if not sessions:
        raise SettingsError("sessions", raw["sessions"], "at least one session")

    an = raw["analysis"]
    days = an["trade_days"]
    if isinstance(days, str):
        days = [d.strip() for d in days.split(",")]
    trade_days = set()
    for d in days:
        if str(d)[:3].title() not in WEEKDAYS[:5]:
            raise SettingsError("analysis.trade_days", d, "weekday names Mon to Fri")
        trade_days.add(WEEKDAYS.index(str(d)[:3].title()))
    if not trade_days:
        raise SettingsError("analysis.trade_days", days, "at least one weekday Mon to Fri")
    inp = raw["input"]
    if inp["raw_policy"] not in RAW_POLICIES:
        raise SettingsError("input.raw_policy", inp["raw_policy"], "one of " + ", ".join(RAW_POLICIES))
    tzs = []
    for i, entry in enumerate(inp["timezones"]):
        if not isinstance(entry, Mapping) or "pattern" not in entry or "timezone" not in entry:
            raise SettingsError(f"input.timezones[{i}]", entry, "a table {pattern = \"ES*.csv\", timezone = \"...\"}")
        tzs.append((str(entry["pattern"]), _zone(f"input.timezones[{i}].timezone", entry["timezone"])))
    to = raw["timeouts"]
    timeouts = {k: _number(f"timeouts.{k}", to[k], 0.1, 1e7) for k in to}
    eng = raw["engine"]
    minutes = tuple(
        sorted({int(_number("engine.schedule_minutes", m, 0, 59, integer=True)) for m in eng["schedule_minutes"]})
    )
    if not minutes:
        raise SettingsError("engine.schedule_minutes", eng["schedule_minutes"], "at least one minute 0 to 59")
    keys = raw.get("keys", {})
    if not isinstance(keys, Mapping):
        raise SettingsError("keys", keys, "a table of binding id = key")
    try:
        keys = check_keys(keys)
    except KeyProblem as exc:
        raise SettingsError(exc.key, exc.value, exc.allowed) from None
    return Settings(
        root=root,
        instruments=instruments,
        sessions=tuple(sessions),
        trade_days=frozenset(trade_days),
        entry_cutoff=_time("analysis.entry_cutoff", an["entry_cutoff"]),
        break_even_fraction=_number("analysis.break_even_fraction", an["break_even_fraction"], 0.01, 1.0),
        stop_cap_multiple=_number("analysis.stop_cap_multiple", an["stop_cap_multiple"], 0.1, 100.0),
        default_timezone=_zone("input.default_timezone", inp["default_timezone"]),
        input_timezones=tuple(tzs),
        stable_seconds=_number("input.stable_seconds", inp["stable_seconds"], 0.0, 86400.0),
        export_stale_seconds=_number("input.export_stale_seconds", inp["export_stale_seconds"], 0.0, 1e7),
        max_bad_row_fraction=_number("input.max_bad_row_fraction", inp["max_bad_row_fraction"], 0.0, 1.0),
        raw_policy=inp["raw_policy"],
        min_date=_date("input.min_date", inp["min_date"]),
        timeouts=timeouts,
        workers=int(_number("engine.workers", eng["workers"], 0, 256, integer=True)),
        schedule_minutes=minutes,
        keys={str(k): str(v) for k, v in keys.items()},
        warm_start=_flag("engine.warm_start", eng["warm_start"]),
        attached_nice=int(_number("console.attached_nice", raw["console"]["attached_nice"], 0, 19, integer=True)),
        attached_idle=_flag("console.attached_idle", raw["console"]["attached_idle"]),
        config_file=config_path,
        alerts=_alert_settings(raw["alerts"]),
    )


_SEVERITY_PREFIX = re.compile(r"^(info|warning|critical)=(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def _alert_settings(a: Mapping[str, Any]) -> AlertSettings:
    urls = a["urls"]
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list):
        raise SettingsError("alerts.urls", "(a value)", "a list of apprise URLs")
    channels = []
    for i, entry in enumerate(urls):
        # a value shown in an error is never the URL itself: it may hold a password or token
        if isinstance(entry, Mapping):
            url, sev = entry.get("url"), str(entry.get("min_severity", "info"))
            unknown = sorted(set(entry) - {"url", "min_severity"})
            if unknown:
                raise SettingsError(f"alerts.urls[{i}]", ", ".join(unknown), "only the keys url and min_severity")
        elif isinstance(entry, str):
            m = _SEVERITY_PREFIX.match(entry)
            url, sev = (entry[m.end():], m.group(1)) if m else (entry, "info")
        else:
            raise SettingsError(f"alerts.urls[{i}]", type(entry).__name__, "an apprise URL or {url = ..., min_severity = ...}")
        if not isinstance(url, str) or "://" not in url:
            raise SettingsError(f"alerts.urls[{i}]", "(not shown)", "an apprise URL such as mailto://… or ntfy://…")
        if sev not in SEVERITIES:
            raise SettingsError(f"alerts.urls[{i}].min_severity", sev, "one of " + ", ".join(SEVERITIES))
        channels.append(AlertChannel(url.strip(), sev))
    rules = a["rules"]
    for name, on in rules.items():
        if not isinstance(on, bool):
            raise SettingsError(f"alerts.rules.{name}", on, "true or false")

    def num(key: str, lo: float, hi: float, integer: bool = False) -> float:
        return _number(f"alerts.{key}", a[key], lo, hi, integer=integer)

    return AlertSettings(
        channels=tuple(channels),
        stale_minutes=num("stale_minutes", 1, 1e6),
        no_run_minutes=num("no_run_minutes", 1, 1e6),
        repeat_minutes=num("repeat_minutes", 0, 1e6),
        min_free_mb=num("min_free_mb", 0, 1e9),
        slow_factor=num("slow_factor", 1.0, 1e3),
        slow_min_seconds=num("slow_min_seconds", 0, 1e7),
        slow_history=int(num("slow_history", 3, 1000, integer=True)),
        export_stale_seconds=num("export_stale_seconds", 1, 1e7),
        check_seconds=num("check_seconds", 1, 86400),
        timeout_seconds=num("timeout_seconds", 0.1, 600),
        retries=int(num("retries", 0, 10, integer=True)),
        retry_backoff_seconds=num("retry_backoff_seconds", 0, 3600),
        rules={str(k): bool(v) for k, v in rules.items()},
    )


def settings_args(settings: Settings) -> list[str]:
    """Command-line arguments that make a stage subprocess load the same settings."""
    args = ["--root", str(settings.root)]
    if settings.config_file is not None:
        args += ["--config", str(settings.config_file)]
    return args
