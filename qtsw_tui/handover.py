"""``qtsw --run-now --no-ui`` (or ``--stage NAME``) on a data root whose engine is serving: the
run is handed to that engine through its control socket, and this command follows it.

An engine running as a service holds the data root's lock, so a second engine cannot start
there; the operator (or cron) asking for a run still gets one: the serving engine runs it, its
launcher already warm, and this command prints the run's events as a headless run would
(the same lines, or JSONL with ``--json``), then the run's summary, and exits with the run's
exit code. A stop signal (Ctrl-C, SIGTERM, SIGHUP) asks the engine to cancel that run (only
that run: the engine and its schedule go on) and the command still waits for the run's end.
"""

from __future__ import annotations

import signal
from typing import Any

from pipeline_core.control import Connection, ControlError, NoEngine, socket_path
from pipeline_core.events import Event, EventError
from pipeline_core.settings import Settings
from qtsw_tui.cli import EXIT_CODES

WAIT_SECONDS = 1.0  # how long one wait for the engine's next message lasts (signals are seen between)
SILENT_LIMIT = 3600.0  # no message at all from the engine for this long: it is stuck; give up


class HandOverError(RuntimeError):
    """The run could not be handed over (no engine answers, or it refused); the text says why."""


def hand_over(settings: Settings, printer: Any, *, stage: str | None = None, full: bool = False,
              held: str = "") -> int:
    """Ask the engine serving ``settings``' root for a run and print it to its end; the run's
    exit code. Raises :class:`HandOverError` when no engine takes it."""
    try:
        conn = Connection(socket_path(settings), timeout=10.0)
    except (NoEngine, ControlError) as exc:
        raise HandOverError(f"{held or 'another qtsw engine holds the data root'}; and its control "
                            f"socket does not answer ({exc}), so the run cannot be handed to it") from None
    with conn:
        return _follow(conn, printer, stage=stage, full=full)


def _follow(conn: Connection, printer: Any, *, stage: str | None, full: bool) -> int:
    stops: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stops.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        # subscribed first (no catch-up of verbose events): nothing of the run can be missed
        reply = conn.request({"type": "subscribe", "tail": 0})
        if reply.get("type") != "subscribed":
            raise HandOverError(f"the engine did not take the subscription: {reply.get('error') or reply}")
        params: dict[str, Any] = {"full": True} if full else {}
        if stage:
            params["stage"] = stage
        reply = conn.command("stage" if stage else "run_now", **params)
        if reply.get("type") != "accepted" or not reply.get("run_id"):
            raise HandOverError(f"the engine (pid {conn.hello.get('pid')}) refused the run: "
                                f"{reply.get('reason') or reply.get('error') or reply}")
        run_id = str(reply["run_id"])
        printer.note(f"run {run_id[:8]} handed to the engine serving this data root "
                     f"(pid {conn.hello.get('pid')}); following it here")
        asked_cancel = False
        silent = 0.0
        while True:
            if stops and not asked_cancel:
                printer.note(f"{stops[0]}: asking the engine to cancel run {run_id[:8]}")
                asked_cancel = True
                conn.send({"type": "cancel", "id": "cancel"})
            try:
                msg = conn.next_message(WAIT_SECONDS)
            except TimeoutError:
                silent += WAIT_SECONDS
                if silent >= SILENT_LIMIT:
                    raise HandOverError(f"the engine sent nothing for {SILENT_LIMIT:g} s; "
                                        f"run {run_id[:8]} is its own to finish") from None
                continue
            silent = 0.0
            if msg is None:
                raise HandOverError(f"the engine closed the connection before run {run_id[:8]} ended "
                                    "(see 'qtsw status' for how it ended)")
            kind = msg.get("type")
            if kind == "lagging":
                raise HandOverError(f"the engine cut this command off for reading too slowly: {msg.get('error')}")
            if kind != "event" or msg.get("catchup"):
                continue
            try:
                ev = Event.from_dict(msg.get("event"))
            except EventError:
                continue
            if ev.run_id != run_id:
                continue
            printer.event(ev)
            if ev.stage == "pipeline" and ev.is_terminal:
                status = str(ev.data.get("status") or ev.event)
                stages = ev.data.get("stages") or {}
                printer.summary_line(run_id, status, {str(k): str(v) for k, v in stages.items()},
                                     ev.data.get("report"))
                return EXIT_CODES.get(status, EXIT_CODES["failure"])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
