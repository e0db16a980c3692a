"""The stage protocol: how a stage subprocess talks to the engine.

A stage writes two kinds of lines on stdout:

* free text for the operator (any content, any length): streamed to the stage pane and to
  ``logs/runs/<run_id>/<stage>[-<INST>].log``;
* structured messages, one JSON object per line, prefixed by :data:`MARKER` (the ASCII control
  character STX ``\\x02`` followed by ``qtsw:``; STX, unlike the record separator, is not a line
  break for ``str.splitlines``). Free text can never be taken for one: a line is a
  message only when it starts with the marker *and* the rest is a JSON object with a known
  ``type``.

Message types::

    {"type": "progress", "done": 3, "total": 10, "msg": "...", "instrument": "ES"}
    {"type": "metric",   "msg": "...", "data": {...}}
    {"type": "warning",  "msg": "...", "data": {...}}     # becomes a log event the operator sees
    {"type": "result",   "status": "success|partial|failure", "msg": "...",
                          "counts": {...}, "error": "..." | null}

The final ``result`` message is mandatory. A stage succeeds only if it exits 0 *and* its result
says ``success`` (or ``partial``: done, with items quarantined or failed). Exit codes: 0 the
stage ran to its result (success or partial), 1 failure, 2 bad arguments or settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from pipeline_core.safetext import safe
from pipeline_core.settings import Settings, SettingsError, load_settings

MARKER = "\x02qtsw:"
MESSAGE_TYPES = ("progress", "metric", "warning", "result")
RESULT_STATUSES = ("success", "partial", "failure")
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class Message:
    type: str
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def msg(self) -> str:
        return str(self.body.get("msg") or "")


def encode(type_: str, **body: Any) -> str:
    """One protocol line (without the newline)."""
    if type_ not in MESSAGE_TYPES:
        raise ValueError(f"unknown message type {type_!r}")
    return MARKER + json.dumps({"type": type_, **body}, default=str, separators=(",", ":"))


def parse(line: str) -> Message | None:
    """The structured message on ``line``, or None when the line is free text."""
    if not line.startswith(MARKER):
        return None
    try:
        obj = json.loads(line[len(MARKER) :])
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or obj.get("type") not in MESSAGE_TYPES:
        return None
    type_ = obj.pop("type")
    if type_ == "result" and obj.get("status") not in RESULT_STATUSES:
        return None
    return Message(type_, obj)


class Reporter:
    """What a stage uses to speak to the engine (and to a human reading its output)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.result_sent = False
        self._lock = threading.Lock()  # a stage's threads may report: each line goes out whole

    def _send(self, line: str) -> None:
        with self._lock:
            self.out.write(line + "\n")
            self.out.flush()

    def say(self, text: str) -> None:
        """Free text for the operator: one output line per line of ``text``, each escaped
        (:func:`~pipeline_core.safetext.safe`). Stdout is the protocol's channel too: a name
        holding a newline and the marker must not be able to forge a message. (Structured
        messages are JSON, which escapes control characters; the engine escapes their text.)"""
        for line in text.rstrip("\n").split("\n"):
            self._send(safe(line))

    def progress(self, done: int, total: int, msg: str = "", **extra: Any) -> None:
        self._send(encode("progress", done=done, total=total, msg=msg, **extra))

    def metric(self, msg: str, **data: Any) -> None:
        self._send(encode("metric", msg=msg, data=data))

    def warning(self, msg: str, **data: Any) -> None:
        self._send(encode("warning", msg=msg, data=data))

    def result(
        self, status: str, msg: str, counts: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        if status not in RESULT_STATUSES:
            raise ValueError(f"unknown result status {status!r}")
        self.result_sent = True
        self._send(encode("result", status=status, msg=msg, counts=counts or {}, error=error))


def os_error_text(exc: OSError) -> str:
    """``<file>: <the OS's reason>`` (both files for a rename), for a message."""
    where = " → ".join(str(f) for f in (exc.filename, exc.filename2) if f)
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}" if where else reason


StageFn = Callable[[argparse.Namespace, Settings, Reporter], str]


def stage_main(
    name: str,
    build_parser: Callable[[argparse.ArgumentParser], None],
    run: StageFn,
    argv: list[str] | None = None,
) -> int:
    """Common entry point of ``python -m pipeline_core.<stage>``.

    ``run`` does the work, reports its result through the reporter and returns the status it
    reported. Exceptions become a ``failure`` result naming the error. Returns the exit code.
    """
    parser = argparse.ArgumentParser(prog=f"python -m pipeline_core.{name}")
    parser.add_argument("--root", help="data root (default: QTSW_ROOT, else the project folder)")
    parser.add_argument("--config", help="settings file (default: <root>/qtsw.toml)")
    parser.add_argument("--run-id", default=None, help="the run this stage belongs to")
    build_parser(parser)
    args = parser.parse_args(argv)
    rep = Reporter()
    try:
        settings = load_settings(root=args.root, config=args.config)
    except SettingsError as exc:
        rep.result("failure", f"{name}: bad settings", error=str(exc))
        return EXIT_USAGE
    try:
        status = run(args, settings, rep)
    except KeyboardInterrupt:
        rep.result("failure", f"{name} interrupted", error="interrupted")
        return EXIT_FAILURE
    except OSError as exc:  # a full disk, a permission: the file and the OS's reason, no traceback
        text = os_error_text(exc)
        rep.result("failure", f"{name} failed: {text}", error=text)
        return EXIT_FAILURE
    except Exception as exc:  # the stage's last word: name the error, keep the traceback in the log
        rep.say(traceback.format_exc())
        rep.result("failure", f"{name} failed: {exc}", error=f"{type(exc).__name__}: {exc}")
        return EXIT_FAILURE
    if not rep.result_sent:
        rep.result("failure", f"{name} ended without a result", error="no result reported")
        return EXIT_FAILURE
    return EXIT_OK if status in ("success", "partial") else EXIT_FAILURE
