"""``qtsw verify`` and ``qtsw rebuild``: the command-line side of :mod:`pipeline_core.repair`.

Neither imports Textual. ``verify`` exits 0 when clean, 1 when anything is wrong (4: could not
start). ``rebuild`` exits with the run's code when it re-analyses itself (0 success, 1 partial,
2 failure, 3 cancelled), 0 when it leaves the re-analysis to a running engine, 2 when the
rebuild cannot be done, 4 when it could not start.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipeline_core.usage import EXIT_USAGE as EXIT_CANNOT_START
from pipeline_core.usage import UsageParser, command_settings, root_options


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = UsageParser(prog=prog, description=description)
    root_options(p)
    return p


def verify_main(argv: list[str]) -> int:
    """``qtsw verify [--json]``."""
    p = _parser(
        "qtsw verify",
        "Check every store, monthly and archived raw file against the catalogue (readable, "
        "sha256, rows) and the folders for files it does not know. Changes nothing. "
        "Exit 0 when clean, 1 when anything is wrong.",
    )
    p.add_argument("--json", action="store_true", help="print the problems as JSON")
    args = p.parse_args(argv)
    settings = command_settings(args.root, args.config)
    if settings is None:
        return EXIT_CANNOT_START
    from pipeline_core import repair

    problems = repair.verify(settings)
    if args.json:
        print(json.dumps({"root": str(settings.root), "ok": not problems,
                          "problems": [pr.as_dict() for pr in problems]}, indent=2))
    elif not problems:
        print(f"verify: {settings.root}: every file matches the catalogue")
    else:
        width = max(len(pr.problem) for pr in problems)
        print(f"verify: {settings.root}: {len(problems)} problem(s)")
        for pr in problems:
            print(f"  {pr.problem:<{width}}  {pr.path}")
            print(f"  {'':<{width}}    {pr.detail}")
            print(f"  {'':<{width}}    repair: {pr.repair}")
    return 0 if not problems else 1


def rebuild_main(argv: list[str]) -> int:
    """``qtsw rebuild --instrument X | --all``."""
    p = _parser(
        "qtsw rebuild",
        "Rebuild an instrument's bar store from the raw archive (archived exports replayed in "
        "their ingestion order; the old store is kept until the new one is complete), then "
        "re-analyse and re-merge it. With an engine running, the engine does the re-analysis "
        "at its next run.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--instrument", metavar="SYMBOL", help="the instrument to rebuild, e.g. ES")
    which.add_argument("--all", action="store_true", help="every instrument in the catalogue")
    args = p.parse_args(argv)
    settings = command_settings(args.root, args.config)
    if settings is None:
        return EXIT_CANNOT_START
    from pipeline_core import catalog, repair
    from pipeline_core.lock import EngineLock, LockHeld

    lock = EngineLock.for_settings(settings)
    try:
        lock.acquire()
        held = None
    except LockHeld as exc:
        held = str(exc)
    try:
        if args.all:
            cat = catalog.open_catalog(settings)
            insts = sorted({r["instrument"] for r in cat.raw_files() if r.get("instrument")})
        else:
            insts = [args.instrument.upper()]
        for inst in insts:
            try:
                out = repair.rebuild_store(settings, inst, say=lambda t: print(t, flush=True))
            except (repair.RebuildError, catalog.CatalogError, OSError) as exc:
                print(f"qtsw rebuild: {inst}: {exc}", file=sys.stderr)
                return 2
            print(
                f"{inst}: store rebuilt from {out.files_replayed} archived export(s), "
                f"{out.bars} bars, years {', '.join(map(str, out.years or [])) or '-'} "
                f"in {out.seconds:.1f} s"
                + (f"; {len(out.monthly_set_aside)} damaged monthly file(s) set aside in data/damaged"
                   if out.monthly_set_aside else "")
                + (f"; {len(out.refused)} archived export(s) not replayed: today's checks refuse them "
                   "(named above)" if out.refused else ""),
                flush=True,
            )
        if held is not None:
            print(
                f"an engine is running ({held.split(': ', 1)[-1]}): it re-analyses and re-merges "
                f"{', '.join(insts)} in full at its next run",
                flush=True,
            )
            return 0
        return _reanalyse(settings)
    finally:
        if held is None:
            lock.release()


def _reanalyse(settings: Any) -> int:
    """Run the analyzer and the merger now (the full re-analysis the rebuild asked for)."""
    import anyio

    from pipeline_core import history
    from pipeline_core.engine import Engine
    from qtsw_tui.cli import EXIT_CODES, _one_run
    from qtsw_tui.headless import HeadlessPrinter

    engine = Engine(settings)
    printer = HeadlessPrinter(sys.stdout)
    engine.subscribe(printer)
    rs = anyio.run(_one_run, engine, ["analyzer", "merger"], False, printer)
    if rs is None:
        return EXIT_CODES["cancelled"]
    report = history.find_report(settings, rs.run_id)
    printer.summary(rs, report.get("path") if report else None)
    return EXIT_CODES.get(rs.status, 2)
