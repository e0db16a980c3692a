"""The command line (SPEC §7): ``qtsw`` — the console, or the engine headless.

::

    qtsw                              the console, with the scheduler running
    qtsw --no-ui                      headless: scheduler loop, events printed as they happen
    qtsw --run-now [--no-ui]          one full run now (headless: then exit)
    qtsw --stage translator|analyzer|merger [--no-ui]   one stage
    qtsw --schedule HH:MM             the schedule loop, first run not before HH:MM
    qtsw --attach                     a console attached to the running engine (exit 4 if none)
    qtsw sample [--days N] ...        write realistic sample exports into data/raw
    qtsw status [--json]              what is where: files per folder, last runs, lock holder
    qtsw verify [--json]              check the data files against the catalogue
    qtsw rebuild --instrument X|--all rebuild a bar store from the raw archive, re-analyse it
    qtsw ctl run-now [--full]|stage NAME|pause|resume|cancel|status [--json]
                                      commands to the running engine, through its control socket

Also ``--root PATH`` (env ``QTSW_ROOT``), ``--config FILE``, ``--full``, ``--json`` (headless:
raw event lines), ``--verbose`` (headless: stage output too).

Headless exit codes: 0 success, 1 partial, 2 failure, 3 cancelled, 4 could not start (the lock is
held by another engine, bad settings, bad arguments). SIGTERM/SIGINT cancel the active run (it is
recorded as ``cancelled``), release the lock and exit 3 — or 0 when the engine was idle.

This module and :mod:`qtsw_tui.headless` never import Textual: the console (``qtsw_tui.app``)
is imported only on the console path.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any, NoReturn

EXIT_CODES = {"success": 0, "partial": 1, "failure": 2, "cancelled": 3}
EXIT_CANNOT_START = 4
COMMANDS = ("sample", "status", "verify", "rebuild", "ctl")
STAGES = ("translator", "analyzer", "merger")
_VALUE_OPTIONS = {"--root", "--config", "--stage", "--schedule"}


class _Parser(argparse.ArgumentParser):
    """Bad arguments mean the engine could not start: exit 4, not argparse's 2 (= failure)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_CANNOT_START, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="qtsw",
        description="Operator console for the qtsw futures-data pipeline "
        "(raw exports -> bar store -> opening-range breakout analysis -> monthly results).",
        epilog="Commands: 'qtsw sample [--days N] [--instruments ES,NQ] [--seed S] [--if-empty]' "
        "writes sample exports; 'qtsw status [--json]' shows what is where. Headless exit codes: "
        "0 success, 1 partial, 2 failure, 3 cancelled, 4 could not start.",
    )
    p.add_argument("--root", help="data root (default: QTSW_ROOT, else the project folder)")
    p.add_argument("--config", help="settings file (default: <root>/qtsw.toml)")
    p.add_argument("--no-ui", action="store_true", help="run headless: events printed as they happen")
    p.add_argument("--attach", action="store_true",
                   help="only attach a console to the engine running on the data root (exit 4 if none)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--run-now", action="store_true", help="one full run now (headless: then exit)")
    what.add_argument("--stage", choices=STAGES, help="one stage now (headless: then exit)")
    p.add_argument("--schedule", metavar="HH:MM", help="first scheduled run not before HH:MM (Chicago)")
    p.add_argument("--full", action="store_true", help="re-analyse everything (after a change of analysis settings)")
    p.add_argument("--json", action="store_true", help="headless: print raw JSONL event lines")
    p.add_argument("-v", "--verbose", action="store_true", help="headless: print stage output lines too")
    return p


def _split_command(argv: list[str]) -> tuple[str | None, list[str], list[str]]:
    """(command, arguments before it, arguments after it); command None for the engine."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in COMMANDS:
            return a, argv[:i], argv[i + 1 :]
        if a in _VALUE_OPTIONS:
            i += 2
            continue
        if not a.startswith("-"):
            return None, argv, []
        i += 1
    return None, argv, []


def _globals(before: list[str]) -> list[str]:
    """--root/--config given before a command, to pass on."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--root")
    p.add_argument("--config")
    known, _ = p.parse_known_args(before)
    out = []
    if known.root:
        out += ["--root", known.root]
    if known.config:
        out += ["--config", known.config]
    return out


def _err(text: str) -> None:
    print(f"qtsw: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command, before, after = _split_command(argv)
    if command == "sample":
        from pipeline_core import sample

        return int(sample.main(_globals(before) + after) or 0)
    if command == "status":
        return _status(_globals(before) + after)
    if command == "ctl":
        return _ctl(_globals(before) + after)
    if command in ("verify", "rebuild"):
        from qtsw_tui import repaircmd

        run = repaircmd.verify_main if command == "verify" else repaircmd.rebuild_main
        return run(_globals(before) + after)
    args = build_parser().parse_args(argv)

    from pipeline_core import clock
    from pipeline_core.settings import SettingsError, load_settings

    try:
        settings = load_settings(root=args.root, config=args.config)
        settings.ensure_dirs()
    except SettingsError as exc:
        _err(str(exc))
        return EXIT_CANNOT_START
    except OSError as exc:
        _err(f"cannot use the data root: {exc}")
        return EXIT_CANNOT_START
    not_before = None
    if args.schedule:
        from pipeline_core.schedule import not_before_from, parse_hhmm

        try:
            not_before = not_before_from(parse_hhmm(args.schedule), clock.now())
        except ValueError as exc:
            _err(str(exc))
            return EXIT_CANNOT_START

    from pipeline_core.engine import Engine
    from pipeline_core.lock import EngineLock, LockHeld

    if args.attach:
        if args.no_ui:
            _err("--attach is for the console; use 'qtsw ctl' to steer an engine from a script")
            return EXIT_CANNOT_START
        return _attach(settings, args, only=True)
    lock = EngineLock.for_settings(settings)
    try:
        lock.acquire()
    except LockHeld as exc:
        if args.no_ui:
            _err(str(exc))
            return EXIT_CANNOT_START
        return _attach(settings, args, only=False, held=str(exc))
    try:
        engine = Engine(settings, full=args.full)
        engine.not_before = not_before
        if not args.no_ui:
            return _console(settings, engine, args, not_before)
        return _headless(engine, args, not_before)
    finally:
        lock.release()


# --- the console ------------------------------------------------------------------------------


def _attach(settings: Any, args: argparse.Namespace, *, only: bool, held: str = "") -> int:
    """A console attached to the engine already running on the data root (never a second one)."""
    from pipeline_core.control import Connection, ControlError, socket_path
    from pipeline_core.remote import RemoteEngine

    try:
        Connection(socket_path(settings), timeout=5).close()  # is anyone there?
    except (ControlError, OSError) as exc:
        if only:
            _err(f"no engine is running on data root {settings.root} ({exc}); "
                 "start one with 'qtsw' or 'qtsw --no-ui'")
        else:
            _err(f"{held}; and it cannot be attached to ({exc})")
        return EXIT_CANNOT_START
    return _console(settings, RemoteEngine(settings), args, None)


def _console(settings: Any, engine: Any, args: argparse.Namespace, not_before: Any) -> int:
    try:
        from qtsw_tui.app import build_app
    except ImportError as exc:
        _err(f"the console is not available ({exc}); run headless with --no-ui")
        return EXIT_CANNOT_START
    options = {
        "schedule": True,
        "not_before": not_before,
        "run_now": bool(args.run_now),
        "stage": args.stage,
        "full": bool(args.full),
        "control": True,
    }
    app = build_app(settings, engine, options)
    app.run()
    code = getattr(app, "return_code", None)
    return int(code) if isinstance(code, int) else 0


# --- headless -----------------------------------------------------------------------------------


def _headless(engine: Any, args: argparse.Namespace, not_before: Any) -> int:
    import anyio

    from pipeline_core import history
    from pipeline_core.control import ControlError, ControlServer
    from pipeline_core.sdnotify import Notifier
    from qtsw_tui.headless import HeadlessPrinter

    printer = HeadlessPrinter(sys.stdout, json_mode=args.json, verbose=args.verbose)
    engine.subscribe(printer)
    one_run = bool(args.run_now or args.stage)
    server: Any = ControlServer(engine, engine.settings, hosted_by="headless", takes_runs=not one_run)
    try:
        server.open()
    except ControlError as exc:  # the pipeline still runs; only attaching is impossible
        _err(f"{exc}; consoles cannot attach to this engine")
        server = None
    host = _Host(engine, server, Notifier())
    if one_run:
        stages = [args.stage] if args.stage else None
        try:
            rs = anyio.run(_one_run, engine, stages, bool(args.full), printer, host)
        except Exception as exc:  # not even the run's event log could be written (a full disk)
            os_error = _os_error(exc)
            if os_error is None:
                raise
            _err(f"the run could not be recorded: {os_error.filename or ''}: {os_error.strerror or os_error}")
            return EXIT_CODES["failure"]
        if rs is None:  # interrupted before the run began
            return EXIT_CODES["cancelled"]
        report = history.find_report(engine.settings, rs.run_id)
        printer.summary(rs, report.get("path") if report else None)
        if rs.record_error:  # the run went as it says, but not all of its record is on disk
            _err(f"run {rs.run_id[:8]} {rs.status}, but its record is incomplete: {rs.record_error}")
            return EXIT_CODES["failure"]
        return EXIT_CODES.get(rs.status, 2)
    return anyio.run(_serve, engine, not_before, printer, host)


class _Host:
    """What runs beside a headless engine: its control socket and the service-manager notices."""

    def __init__(self, engine: Any, server: Any, notifier: Any) -> None:
        self.engine = engine
        self.server = server
        self.notifier = notifier

    def start(self, tg: Any, *, schedule: bool = True) -> None:
        """Serve the socket; tell the service manager the engine is ready once the lock and the
        socket are up and (``schedule``) the engine has recovered and its schedule runs."""
        if self.server is not None:
            tg.start_soon(self.server.serve)
        tg.start_soon(self._notify, schedule)

    async def _notify(self, schedule: bool) -> None:
        import anyio

        from pipeline_core.sdnotify import engine_status

        if not self.notifier.enabled:
            return
        while schedule and self.engine.scheduler_state == "off":
            await anyio.sleep(0.01)
        self.notifier.ready(engine_status(self.engine))
        await self.notifier.run(lambda: engine_status(self.engine))

    def stopping(self) -> None:
        self.notifier.stopping("stopping")


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError in ``exc`` (itself, or within an exception group), else None."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _os_error(inner)
            if found is not None:
                return found
    return None


def _stop_signals() -> list[signal.Signals]:
    """SIGINT, SIGTERM — and SIGHUP (the SSH session went away) unless it is ignored (nohup)."""
    sigs = [signal.SIGINT, signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        sigs.append(signal.SIGHUP)
    return sigs


async def _one_run(engine: Any, stages: list[str] | None, full: bool, printer: Any, host: _Host) -> Any:
    import anyio

    out: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:

        async def watch_signals(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            with anyio.open_signal_receiver(*_stop_signals()) as signals:
                task_status.started()
                async for sig in signals:
                    printer.note(f"{sig.name}: cancelling the run")
                    host.stopping()
                    if not engine.cancel():
                        tg.cancel_scope.cancel()

        await tg.start(watch_signals)  # handlers in place before anything can be interrupted
        host.start(tg, schedule=False)
        out["rs"] = await engine.run(
            "stage" if stages else "manual", stages=stages, full=full
        )
        host.stopping()
        tg.cancel_scope.cancel()
    return out.get("rs")


async def _serve(engine: Any, not_before: Any, printer: Any, host: _Host) -> int:
    import anyio

    state = {"cancelled_a_run": False}
    async with anyio.create_task_group() as tg:

        async def watch_signals(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            with anyio.open_signal_receiver(*_stop_signals()) as signals:
                task_status.started()
                async for sig in signals:
                    busy = engine.busy
                    state["cancelled_a_run"] = state["cancelled_a_run"] or busy
                    printer.note(f"{sig.name}: stopping" + (" (cancelling the active run)" if busy else ""))
                    host.stopping()
                    engine.stop()

        await tg.start(watch_signals)
        host.start(tg)
        await engine.serve(schedule=True, not_before=not_before)
        host.stopping()
        tg.cancel_scope.cancel()
    return EXIT_CODES["cancelled"] if state["cancelled_a_run"] else 0


# --- qtsw ctl -----------------------------------------------------------------------------------

CTL_COMMANDS = {"run-now": "run_now", "stage": "stage", "pause": "pause", "resume": "resume",
                "cancel": "cancel"}


def _ctl(argv: list[str]) -> int:
    """``qtsw ctl …``: 0 accepted, 4 no engine or refused (the reason on stderr), 2 broken reply."""
    p = _Parser(prog="qtsw ctl", description="Send a command to the engine running on the data "
                "root, through its control socket. Exit codes: 0 accepted, 4 no engine running or "
                "the command refused (the reason on stderr), 2 the engine answered something unexpected.")
    p.add_argument("--root")
    p.add_argument("--config")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_now = sub.add_parser("run-now", help="start a full run now")
    run_now.add_argument("--full", action="store_true", help="re-analyse everything")
    stage = sub.add_parser("stage", help="run one stage now")
    stage.add_argument("name", choices=STAGES)
    stage.add_argument("--full", action="store_true", help="re-analyse everything (analyzer)")
    sub.add_parser("pause", help="pause the schedule (a running run continues)")
    sub.add_parser("resume", help="resume the schedule")
    sub.add_parser("cancel", help="cancel the active run")
    status = sub.add_parser("status", help="the engine's state: schedule, next run, active run")
    status.add_argument("--json", action="store_true", help="print it as one JSON object")
    for sp in sub.choices.values():  # so that --root may also follow the command
        sp.add_argument("--root", dest="root_after", help=argparse.SUPPRESS)
        sp.add_argument("--config", dest="config_after", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from pipeline_core.control import ControlError, NoEngine, connect
    from pipeline_core.settings import SettingsError, load_settings

    try:
        settings = load_settings(root=args.root_after or args.root, config=args.config_after or args.config)
    except SettingsError as exc:
        _err(str(exc))
        return EXIT_CANNOT_START
    try:
        with connect(settings) as conn:
            if args.command == "status":
                snap = conn.snapshot()
                if args.json:
                    print(json.dumps({"engine": conn.hello, "snapshot": snap}, indent=2), flush=True)
                else:
                    print(format_ctl_status(conn.hello, snap), flush=True)
                return 0
            params: dict[str, Any] = {}
            if args.command in ("run-now", "stage") and args.full:
                params["full"] = True
            if args.command == "stage":
                params["stage"] = args.name
            reply = conn.command(CTL_COMMANDS[args.command], **params)
    except NoEngine as exc:
        _err(f"no engine is running on data root {settings.root} ({exc})")
        return EXIT_CANNOT_START
    except (ControlError, OSError) as exc:
        _err(f"the engine's control socket: {exc}")
        return EXIT_CODES["failure"]
    if reply.get("type") == "accepted":
        detail = reply.get("detail") or (f"run {str(reply['run_id'])[:8]}" if reply.get("run_id") else "")
        print(f"accepted: {args.command}" + (f" ({detail})" if detail else ""), flush=True)
        return 0
    if reply.get("type") == "refused":
        _err(f"refused: {args.command}: {reply.get('reason')}")
        return EXIT_CANNOT_START
    _err(f"unexpected answer from the engine: {reply.get('error') or reply}")
    return EXIT_CODES["failure"]


def format_ctl_status(hello: dict[str, Any], snap: dict[str, Any]) -> str:
    """``qtsw ctl status`` as plain text."""
    def hhmm(text: Any) -> str:
        return str(text)[11:16] if text else "-"

    lines = [
        f"engine:    pid {hello.get('pid')} ({hello.get('hosted_by')}) since {hello.get('started')}, "
        f"version {hello.get('engine_version')}, settings {hello.get('settings_hash')}",
        f"data root: {hello.get('root')}",
        f"schedule:  {snap.get('scheduler')}; next run {hhmm(snap.get('next_mark'))}",
    ]
    run = snap.get("current")
    if run:
        stage = f", {run['stage']} running" if run.get("stage") else ""
        lines.append(f"run:       {str(run['run_id'])[:8]} ({run.get('trigger')}) since {hhmm(run.get('started'))}{stage}")
    else:
        lines.append("run:       idle")
    last = snap.get("last_run")
    if last:
        lines.append(f"last run:  {str(last.get('run_id'))[:8]} {last.get('status')} at {hhmm(last.get('ended'))}")
    else:
        lines.append("last run:  none")
    return "\n".join(lines)


# --- qtsw status --------------------------------------------------------------------------------


def _status(argv: list[str]) -> int:
    p = _Parser(prog="qtsw status", description="What is where: files per folder, pending work, last runs, the lock holder.")
    p.add_argument("--root")
    p.add_argument("--config")
    p.add_argument("--json", action="store_true", help="print it as one JSON object")
    p.add_argument("--runs", type=int, default=5, help="how many recent runs to list (5)")
    args = p.parse_args(argv)
    from pipeline_core.history import collect_status
    from pipeline_core.settings import SettingsError, load_settings

    try:
        settings = load_settings(root=args.root, config=args.config)
    except SettingsError as exc:
        _err(str(exc))
        return EXIT_CANNOT_START
    from pipeline_core.safetext import safe_data

    st = safe_data(collect_status(settings, runs=args.runs))  # file names reach the terminal escaped
    text = json.dumps(st, default=str, indent=2) if args.json else format_status(st)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `qtsw status | head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _names(items: list[str], limit: int = 6) -> str:
    if not items:
        return ""
    more = f", … (+{len(items) - limit})" if len(items) > limit else ""
    return " (" + ", ".join(items[:limit]) + more + ")"


def format_status(st: dict[str, Any]) -> str:
    """``qtsw status`` as plain text."""
    lines = [f"qtsw status — data root {st['root']}"]
    lock = st["lock"]
    if lock:
        lines.append(f"  engine:     running — pid {lock.get('pid')} on {lock.get('host')} since {lock.get('started')}")
    else:
        lines.append("  engine:     not running (lock free)")
    raw = st["raw"]
    lines.append(
        f"  raw:        {len(raw['ready'])} ready{_names(raw['ready'])}, {len(raw['waiting'])} waiting, "
        f"{len(raw['exporting'])} being exported{_names(raw['exporting'])}, "
        f"{len(raw['quarantined'])} quarantined, {raw['archived']} archived"
    )
    for ign in raw.get("ignored", []):
        lines.append(f"  ignored:    {ign['path']}: {ign['reason']}")
    proc = st["processed"]
    files = sum(v["files"] for v in proc.values())
    size = sum(v["bytes"] for v in proc.values()) / 1e6
    per = ", ".join(f"{k} {v['files']}" for k, v in proc.items())
    lines.append(f"  store:      {len(proc)} instrument(s), {files} file(s), {size:.1f} MB" + (f" ({per})" if per else ""))
    pend = st["pending"]
    analysis = [f"{k}: {v}" for k, v in pend["analysis"].items()]
    lines.append(f"  analysis:   {len(analysis)} instrument(s) pending" + (": " + "; ".join(analysis) if analysis else ""))
    lines.append(f"  merges:     {len(pend['merges'])} run folder(s) awaiting merge{_names(pend['merges'], 3)}")
    monthly = st["monthly"]
    lines.append(
        f"  results:    {sum(monthly.values())} monthly file(s)"
        + (" (" + ", ".join(f"{k} {v}" for k, v in monthly.items()) + ")" if monthly else "")
    )
    rset = st.get("results_settings") or {}
    if rset.get("stale"):
        lines.append("  settings:   results from other settings (the next run re-analyses them): "
                     + "; ".join(f"{k}: {v}" for k, v in rset["stale"].items()))
    elif rset.get("current"):
        lines.append("  settings:   results match the current analysis settings ("
                     + ", ".join(f"{k} {v}" for k, v in rset["current"].items()) + ")")
    runs = st["runs"]
    if not runs:
        lines.append("  last runs:  none")
    else:
        lines.append("  last runs:")
        for r in reversed(runs):
            stages = " ".join(f"{n[0].upper()}:{s}" for n, s in (r.get("stages") or {}).items())
            started = str(r.get("started", ""))[:19].replace("T", " ")
            lines.append(f"    {started}  {str(r['run_id'])[:8]}  {r.get('trigger', ''):<8}  {r.get('status', ''):<9}  {stages}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
