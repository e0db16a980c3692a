"""The command line: ``qtsw`` — the console, or the engine headless.

::

    qtsw                              the console, with the scheduler running
    qtsw --no-ui                      headless: scheduler loop, events printed as they happen
    qtsw --run-now [--no-ui]          one full run now (headless: then exit)
    qtsw --stage translator|analyzer|merger [--no-ui]   one stage
    qtsw --schedule HH:MM             the schedule loop, first run not before HH:MM
    qtsw --attach                     a console attached to the running engine (exit 4 if none)
    qtsw init [PATH]                  create a data root: its folders and a starter qtsw.toml
    qtsw sample [--days N] ...        write realistic sample exports into data/raw
    qtsw status [--json]              what is where: files per folder, last runs, lock holder
    qtsw verify [--json]              check the data files against the catalogue
    qtsw rebuild --instrument X|--all rebuild a bar store from the raw archive, re-analyse it
    qtsw ctl run-now [--full]|stage NAME|pause|resume|cancel|status [--json]
                                      commands to the running engine, through its control socket
    qtsw alert test [--url URL]       send a test message to each alert channel (exit 1 if any failed)
    qtsw results [--year Y] [--stream S] [--csv|--json]   the stream x month matrix and statistics
    qtsw web [--host H] [--port N] [--public] [--allow-control]   the console in a web browser

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
import contextlib
import gc
import json
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pipeline_core.usage import (
    EXIT_FAILURE,
    UsageParser,
    command_settings,
    describe_os_error,
    root_options,
    root_problem,
)
from qtsw_tui.entry import split_command

if TYPE_CHECKING:
    from pipeline_core.warmstart import EarlyLauncher

EXIT_CODES = {"success": 0, "partial": 1, "failure": 2, "cancelled": 3}
EXIT_CANNOT_START = 4
STAGES = ("translator", "analyzer", "merger")


_Parser = UsageParser  # bad arguments exit 4 in every command




def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="qtsw",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Operator console for the qtsw futures-data pipeline: raw exports -> bar\n"
        "store -> opening-range breakout analysis -> monthly results, every 15 minutes.\n"
        "Without --no-ui it opens the console, which needs a terminal.",
        epilog="""commands (each has --help):
  qtsw init [PATH]        create a data root: its folders and a starter qtsw.toml
  qtsw sample             write sample exports to try the pipeline with
  qtsw status [--json]    what is where: files, pending work, last runs, the engine
  qtsw verify [--json]    check the data files against the catalogue
  qtsw rebuild --instrument X | --all
                          rebuild a bar store from the archived exports
  qtsw ctl COMMAND        steer the engine running on the data root (run-now, pause …)
  qtsw alert test         send a test message to each alert channel
  qtsw results [--year Y] [--stream S] [--csv|--json]
                          the stream x month matrix in dollars and the statistics
  qtsw web [--port N]     the console in a web browser (read-only unless --allow-control)

exit codes: 0 success, 1 partial (or problems found), 2 failure (or a file that
cannot be read or written), 3 cancelled, 4 could not start (bad arguments or
settings, a missing data root, the engine already running)""",
    )
    root_options(p)
    p.add_argument("--no-ui", action="store_true", help="run headless: events printed as they happen")
    p.add_argument("--attach", action="store_true",
                   help="only attach a console to the engine running on the data root (exit 4 if none)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--run-now", action="store_true", help="one full run now (headless: then exit)")
    what.add_argument("--stage", choices=STAGES, help="one stage now (headless: then exit)")
    p.add_argument("--schedule", metavar="HH:MM", help="first scheduled run not before HH:MM (Chicago time)")
    p.add_argument("--full", action="store_true", help="re-analyse everything (needed after a change of analysis settings)")
    p.add_argument("--json", action="store_true", help="headless: print each event as its JSON line")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="headless: print every event (progress, per-file figures) and the stages' output")
    return p


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


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Large imports (the engine, the console) without the garbage collector: each full
    collection during them rescans everything imported so far (about a tenth of the console's
    import time)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _err(text: str) -> None:
    print(f"qtsw: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None, early: EarlyLauncher | None = None) -> int:
    """Run the command line; returns the exit code. ``early``: a warm launcher started before
    this (:mod:`qtsw_tui.entry`), taken over by an engine this command hosts, else ended.

    No traceback reaches the operator for what the system refuses: an ``OSError`` anywhere (a
    file that cannot be read or written, a folder that is not one) is one line naming the path
    and the reason, exit 2.
    """
    try:
        return _main(list(sys.argv[1:] if argv is None else argv), early)
    except OSError as exc:
        _err(describe_os_error(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_CODES["cancelled"]


def _main(argv: list[str], early: EarlyLauncher | None = None) -> int:
    command, before, after = split_command(argv)
    if command == "init":
        return _init(_globals(before) + after)
    if command == "sample":
        from pipeline_core import sample

        return int(sample.main(_globals(before) + after) or 0)
    if command == "status":
        return _status(_globals(before) + after)
    if command == "results":
        from qtsw_tui import resultscmd

        return resultscmd.main(_globals(before) + after)
    if command == "ctl":
        return _ctl(_globals(before) + after)
    if command == "web":
        from qtsw_tui import web

        return web.main(_globals(before) + after)
    if command == "alert":
        return _alert(_globals(before) + after)
    if command in ("verify", "rebuild"):
        from qtsw_tui import repaircmd

        run = repaircmd.verify_main if command == "verify" else repaircmd.rebuild_main
        return run(_globals(before) + after)
    args = build_parser().parse_args(argv)
    if not args.no_ui:
        not_terminal = _not_a_terminal()
        if not_terminal:
            # Drawn into a pipe or a file, the console is unreadable and cannot be steered.
            _err(f"the console needs a terminal, and {not_terminal} is not one: "
                 "use --no-ui for headless output (add --json for JSONL events)")
            return EXIT_CANNOT_START

    from pipeline_core import clock

    settings = command_settings(args.root, args.config)
    if settings is None:
        return EXIT_CANNOT_START
    try:
        settings.ensure_dirs()
    except OSError as exc:
        _err(f"cannot use the data root: {describe_os_error(exc)}")
        return EXIT_CANNOT_START
    not_before = None
    if args.schedule:
        from pipeline_core.schedule import not_before_from, parse_hhmm

        try:
            not_before = not_before_from(parse_hhmm(args.schedule), clock.now())
        except ValueError as exc:
            _err(str(exc))
            return EXIT_CANNOT_START

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
        if early is not None:  # the engine serving the root has its own
            early.discard()
        if args.no_ui and (args.run_now or args.stage) and not args.schedule:
            return _hand_over(settings, args, held=str(exc))
        if args.no_ui:
            _err(str(exc))
            return EXIT_CANNOT_START
        return _attach(settings, args, only=False, held=str(exc))
    except OSError as exc:  # a root owned by someone else, a read-only file system
        _err(f"cannot take the engine lock: {describe_os_error(exc)}")
        return EXIT_CANNOT_START
    try:
        # the warm launcher imports the stages while this process imports the engine
        launcher = _start_launcher(settings, early)
        with collector_paused():
            from pipeline_core.engine import Engine

        engine = Engine(settings, full=args.full, launcher=launcher)
        engine.not_before = not_before
        if not args.no_ui:
            return _console(settings, engine, args, not_before)
        return _headless(engine, args, not_before)
    finally:
        lock.release()


def _hand_over(settings: Any, args: argparse.Namespace, *, held: str) -> int:
    """A one-off run on a root whose engine serves: that engine runs it; this command follows."""
    from qtsw_tui.handover import HandOverError, hand_over
    from qtsw_tui.headless import HeadlessPrinter

    printer = HeadlessPrinter(sys.stdout, json_mode=args.json, verbose=args.verbose)
    try:
        return hand_over(settings, printer, stage=args.stage, full=bool(args.full), held=held)
    except HandOverError as exc:
        _err(str(exc))
        return EXIT_CANNOT_START


def _start_launcher(settings: Any, early: EarlyLauncher | None = None) -> Any:
    if not settings.warm_start:
        if early is not None:
            early.discard()
        return None
    from pipeline_core.proc import WarmLauncher

    launcher = WarmLauncher.for_settings(settings)
    if early is not None:
        launcher.adopt(early)
        return launcher
    try:
        launcher.start()
    except OSError:
        return None  # the engine tries again, and says so if it cannot
    return launcher


# --- the console ------------------------------------------------------------------------------


def _attach(settings: Any, args: argparse.Namespace, *, only: bool, held: str = "") -> int:
    """A console attached to the engine already running on the data root (never a second one)."""
    from pipeline_core.control import Connection, ControlError, socket_path
    from pipeline_core.remote import RemoteEngine, step_back

    try:
        Connection(socket_path(settings), timeout=5).close()  # is anyone there?
    except (ControlError, OSError) as exc:
        if only:
            _err(f"no engine is running on data root {settings.root} ({exc}); "
                 "start one with 'qtsw' or 'qtsw --no-ui'")
        else:
            _err(f"{held}; and it cannot be attached to ({exc})")
        return EXIT_CANNOT_START
    # once it shows the engine, the console steps back: watching must not slow the engine
    return _console(settings, RemoteEngine(settings), args, None, on_attached=lambda: step_back(settings))


def _not_a_terminal() -> str | None:
    """The first of standard input, output and error (the console draws on the latter) that is
    not a terminal, or None when all three are."""
    for name, words in (("stdin", "standard input"), ("stdout", "standard output"), ("stderr", "standard error")):
        stream = getattr(sys, name)
        try:
            if stream is None or not stream.isatty():
                return words
        except (AttributeError, ValueError):
            return words
    return None


def _console(settings: Any, engine: Any, args: argparse.Namespace, not_before: Any, **more: Any) -> int:
    try:
        with collector_paused():
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
        **more,
    }
    app = build_app(settings, engine, options)
    app.run()
    if getattr(app, "farewell", ""):
        _err(app.farewell)  # the terminal is back: say how the run that was stopped ended
    # the console ends with exit(3) after stopping an active run, exit(0) otherwise
    code = getattr(app, "return_value", None)
    if not isinstance(code, int):
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
        # the run is recorded; give its alerts their delivery before the process ends
        engine.alerts.close(timeout=engine.alerts.delivery_bound())
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


async def _one_run(
    engine: Any, stages: list[str] | None, full: bool, printer: Any, host: _Host | None = None
) -> Any:
    """One run of the engine (no schedule), cancelled on a stop signal; ``host``: the control
    socket and service notices beside it (none for a rebuild's re-analysis)."""
    import anyio

    out: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:

        async def watch_signals(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            with anyio.open_signal_receiver(*_stop_signals()) as signals:
                task_status.started()
                async for sig in signals:
                    printer.note(f"{sig.name}: cancelling the run")
                    if host is not None:
                        host.stopping()
                    if not engine.cancel():
                        tg.cancel_scope.cancel()

        await tg.start(watch_signals)  # handlers in place before anything can be interrupted
        if host is not None:
            host.start(tg, schedule=False)
        out["rs"] = await engine.run(
            "stage" if stages else "manual", stages=stages, full=full
        )
        if host is not None:
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
    root_options(p)
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


# --- qtsw init ---------------------------------------------------------------------------------


def _init(argv: list[str]) -> int:
    p = _Parser(
        prog="qtsw init",
        description="Create a data root: its folders, and a starter qtsw.toml (every setting at "
        "its default, commented out) unless one exists. Says what it made; changes nothing that "
        "is already there.",
    )
    p.add_argument("path", nargs="?", metavar="PATH",
                   help="the data root to create (default: --root, else $QTSW_ROOT, else the folder qtsw is installed in)")
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--config", metavar="FILE",
                   help="settings file to check instead of <root>/qtsw.toml (no starter file is written then)")
    args = p.parse_args(argv)
    from pipeline_core.settings import STARTER_TOML, SettingsError, load_settings

    root = args.path or args.root
    try:
        settings = load_settings(root=root, config=args.config)
    except SettingsError as exc:
        _err(str(exc))
        return EXIT_CANNOT_START
    made: list[str] = []
    try:
        if not settings.root.exists():
            settings.root.mkdir(parents=True)
            made.append(f"{settings.root}/")
        problem = root_problem(settings.root)
        if problem:
            _err(problem)
            return EXIT_CANNOT_START
        for d in settings.data_folders():
            if not d.is_dir():
                d.mkdir(parents=True, exist_ok=True)
                made.append(f"{d}/")
        toml = settings.root / "qtsw.toml"
        if settings.config_file is None and not toml.exists():
            from pipeline_core.fsutil import write_bytes_atomic

            write_bytes_atomic(toml, STARTER_TOML.encode())
            made.append(f"{toml} (starter settings: every setting at its default, commented out)")
    except OSError as exc:
        _err(f"cannot create the data root: {describe_os_error(exc)}")
        return EXIT_CANNOT_START
    if not made:
        print(f"{settings.root} is already a data root: nothing to create")
    else:
        for what in made:
            print(f"created {what}")
        print(f"data root {settings.root} is ready: put exports in {settings.raw_dir}, "
              f"then run 'qtsw --root {settings.root}'")
    return 0


# --- qtsw alert test ---------------------------------------------------------------------------


def _alert(argv: list[str]) -> int:
    p = _Parser(prog="qtsw alert", description="Alert channels: 'qtsw alert test' sends a test message "
                "to each channel of [alerts] urls (or to --url) and reports per channel; exit 0 when all "
                "were sent, 1 when any failed or none is configured.")
    p.add_argument("--root")
    p.add_argument("--config")
    p.add_argument("action", choices=["test"])
    p.add_argument("--url", action="append", help="send to this apprise URL instead (repeatable)")
    args = p.parse_args(argv)
    from pipeline_core.alerts import send_test

    settings = command_settings(args.root, args.config, existing=False)
    if settings is None:
        return EXIT_CANNOT_START
    if not args.url and not settings.alerts.channels:
        _err("no alert channel configured: set [alerts] urls in qtsw.toml or QTSW_ALERTS_URLS, or give --url")
        return 1
    results = send_test(settings, args.url)  # channels come back masked
    for d in results:
        if d.ok:
            print(f"sent    #{d.number} {d.channel}", flush=True)
        else:
            print(f"FAILED  #{d.number} {d.channel}: {d.reason}", flush=True)
    bad = sum(not d.ok for d in results)
    print(f"{len(results) - bad} of {len(results)} channel(s) sent", flush=True)
    return 1 if bad else 0


# --- qtsw status --------------------------------------------------------------------------------


def _status(argv: list[str]) -> int:
    p = _Parser(prog="qtsw status", description="What is where in a data root: raw files ready, "
                "being exported and quarantined, the bar store, pending analysis and merges, monthly "
                "result files, the last runs and whether an engine is running. Changes nothing.")
    root_options(p)
    p.add_argument("--json", action="store_true", help="print it as one JSON object")
    p.add_argument("--runs", type=int, default=5, metavar="N", help="how many recent runs to list (default: 5)")
    args = p.parse_args(argv)
    settings = command_settings(args.root, args.config)
    if settings is None:
        return EXIT_CANNOT_START
    from pipeline_core.catalog import CatalogError
    from pipeline_core.history import collect_status
    from pipeline_core.safetext import safe_data

    try:
        st = safe_data(collect_status(settings, runs=args.runs))  # file names reach the terminal escaped
    except OSError as exc:
        _err(f"status: cannot read {describe_os_error(exc)}")
        return EXIT_FAILURE
    except CatalogError as exc:
        _err(f"status: {exc}")
        return EXIT_FAILURE
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
    from qtsw_tui.widgets.format import size

    total = size(sum(v["bytes"] for v in proc.values()))  # decimal units, as the console shows them
    per = ", ".join(f"{k} {v['files']}" for k, v in proc.items())
    lines.append(f"  store:      {len(proc)} instrument(s), {files} file(s), {total}" + (f" ({per})" if per else ""))
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
    al = st.get("alerts") or {}
    active = al.get("active") or []
    chans = ", ".join(f"{c['url']} (min {c['min_severity']})" for c in al.get("channels") or []) or "none (event log, console and status only)"
    lines.append(f"  alerts:     {len(active)} active; channels: {chans}")
    for a in active:
        ack = " [acknowledged]" if a.get("acknowledged") else ""
        since = str(a.get("first_seen", ""))[:16].replace("T", " ")
        lines.append(f"    {a.get('severity', ''):<8}  since {since}  {a.get('message', '')}{ack}")
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
