"""The ``qtsw`` command's entry point: starts the warm launcher first, then runs the command line.

A one-off headless run (``qtsw --run-now --no-ui``, ``qtsw --stage NAME --no-ui``) waits for the
warm launcher's imports before its first stage. Started here, before the command line's own
imports (:mod:`qtsw_tui.cli`, the settings, the engine), the launcher imports side by side with
them (:mod:`pipeline_core.warmstart`). This module imports nothing heavy.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline_core.warmstart import EarlyLauncher

COMMANDS = ("init", "sample", "status", "verify", "rebuild", "ctl", "alert", "results", "web")
VALUE_OPTIONS = {"--root", "--config", "--stage", "--schedule"}


def split_command(argv: list[str]) -> tuple[str | None, list[str], list[str]]:
    """``qtsw``'s arguments as (command, arguments before it, arguments after it); command None
    for the engine."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in COMMANDS:
            return a, argv[:i], argv[i + 1 :]
        if a in VALUE_OPTIONS:
            i += 2
            continue
        if not a.startswith("-"):
            return None, argv, []
        i += 1
    return None, argv, []


def one_off_run(argv: list[str]) -> bool:
    """True for a one-off headless run of the engine: ``--no-ui`` with ``--run-now`` or
    ``--stage``, no command, and no ``--help``, ``--attach`` or ``--schedule``."""
    command, _, _ = split_command(argv)
    if command is not None:
        return False
    flags = {a.split("=", 1)[0] for a in argv if a.startswith("-")}
    if flags & {"-h", "--help", "--attach", "--schedule"}:
        return False
    return "--no-ui" in flags and bool(flags & {"--run-now", "--stage"})


def main(argv: list[str] | None = None) -> int:
    """``qtsw``: the command line (:func:`qtsw_tui.cli.main`), with an early warm launcher for a
    one-off run."""
    args = list(sys.argv[1:] if argv is None else argv)
    early = None
    if one_off_run(args):
        from pipeline_core import warmstart

        early = warmstart.start_early()
    return run(args, early)


def run(args: list[str], early: EarlyLauncher | None) -> int:
    """The command line with this early launcher: one the command did not take over (it did not
    host an engine, or stopped on bad arguments) is ended before this returns."""
    try:
        from qtsw_tui import cli

        return cli.main(args, early=early)
    finally:
        if early is not None:
            early.discard()
