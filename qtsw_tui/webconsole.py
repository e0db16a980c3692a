"""One browser tab of ``qtsw web``: a console attached to the engine running on the data root.

``qtsw web`` (:mod:`qtsw_tui.web`) starts this module once per browser tab, with Textual's web
driver talking to the web server over standard input and output; it is not meant to be run by
hand (``qtsw --attach`` is the terminal's attached console). It never starts an engine: with
none running it says so, with how to start one, and attaches by itself once one is up. Without
``--allow-control`` it is read-only: the keys that steer the engine are refused with a note,
and its engine connection refuses every command too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys

from pipeline_core.usage import EXIT_USAGE, UsageParser, command_settings


def end_with_parent() -> None:
    """Linux: this process gets SIGTERM when the web server that started it ends, however it
    ends (even killed), so that no tab's console outlives ``qtsw web``."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the server was already gone before the line above
        raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    p = UsageParser(prog="python -m qtsw_tui.webconsole",
                    description="The console of one browser tab of 'qtsw web' (started by it).")
    p.add_argument("--root", required=True, help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--allow-control", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    end_with_parent()
    settings = command_settings(args.root, args.config)
    if settings is None:
        return EXIT_USAGE
    from qtsw_tui.cli import collector_paused

    with collector_paused():
        from pipeline_core.remote import RemoteEngine, step_back
        from qtsw_tui.app import build_app

    read_only = not args.allow_control
    # like a terminal's attached console, it steps back once it shows the engine
    app = build_app(settings, RemoteEngine(settings, read_only=read_only),
                    {"web": True, "read_only": read_only, "on_attached": lambda: step_back(settings)})
    app.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
