"""The command line (SPEC §7): ``qtsw`` — the console, or the engine headless.

::

    qtsw                              the console, with the scheduler running
    qtsw --no-ui                      headless: scheduler loop, events printed as they happen
    qtsw --run-now [--no-ui]          one full run now (headless: then exit)
    qtsw --stage translator|analyzer|merger [--no-ui]   one stage
    qtsw --schedule HH:MM             the schedule loop, first run not before HH:MM
    qtsw sample [--days N] ...        write realistic sample exports into data/raw
    qtsw status [--json]              what is where: files per folder, last runs, lock holder
    qtsw verify [--json]              check the data files against the catalogue
    qtsw rebuild --instrument X|--all rebuild a bar store from the raw archive, re-analyse it

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
COMMANDS = ("sample", "status", "verify", "rebuild")
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

    from pipeline_core.lock import EngineLock, LockHeld

    lock = EngineLock.for_settings(settings)
    try:
        lock.acquire()
    except LockHeld as exc:
        _err(str(exc))
        return EXIT_CANNOT_START
    try:
        # the warm launcher imports the stages while this process imports the engine
        launcher = _start_launcher(settings)
        from pipeline_core.engine import Engine

        engine = Engine(settings, full=args.full, launcher=launcher)
        engine.not_before = not_before
        if not args.no_ui:
            return _console(settings, engine, args, not_before)
        return _headless(engine, args, not_before)
    finally:
        lock.release()


def _start_launcher(settings: Any) -> Any:
    if not settings.warm_start:
        return None
    from pipeline_core.proc import WarmLauncher

    launcher = WarmLauncher.for_settings(settings)
    try:
        launcher.start()
    except OSError:
        return None  # the engine tries again, and says so if it cannot
    return launcher


# --- the console ------------------------------------------------------------------------------


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
    }
    app = build_app(settings, engine, options)
    app.run()
    code = getattr(app, "return_code", None)
    return int(code) if isinstance(code, int) else 0


# --- headless -----------------------------------------------------------------------------------


def _headless(engine: Any, args: argparse.Namespace, not_before: Any) -> int:
    import anyio

    from pipeline_core import history
    from qtsw_tui.headless import HeadlessPrinter

    printer = HeadlessPrinter(sys.stdout, json_mode=args.json, verbose=args.verbose)
    engine.subscribe(printer)
    if args.run_now or args.stage:
        stages = [args.stage] if args.stage else None
        try:
            rs = anyio.run(_one_run, engine, stages, bool(args.full), printer)
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
    return anyio.run(_serve, engine, not_before, printer)


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


async def _one_run(engine: Any, stages: list[str] | None, full: bool, printer: Any) -> Any:
    import anyio

    out: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:

        async def watch_signals(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            with anyio.open_signal_receiver(*_stop_signals()) as signals:
                task_status.started()
                async for sig in signals:
                    printer.note(f"{sig.name}: cancelling the run")
                    if not engine.cancel():
                        tg.cancel_scope.cancel()

        await tg.start(watch_signals)  # handlers in place before anything can be interrupted
        out["rs"] = await engine.run(
            "stage" if stages else "manual", stages=stages, full=full
        )
        tg.cancel_scope.cancel()
    return out.get("rs")


async def _serve(engine: Any, not_before: Any, printer: Any) -> int:
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
                    engine.stop()

        await tg.start(watch_signals)
        await engine.serve(schedule=True, not_before=not_before)
        tg.cancel_scope.cancel()
    return EXIT_CODES["cancelled"] if state["cancelled_a_run"] else 0


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
