"""What every ``qtsw`` command shares on the command line: bad arguments exit 4 (could not
start), and an operating-system error is told in one line naming the path and the reason."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path
from typing import Any, NoReturn

EXIT_USAGE = 4  # bad arguments, bad settings, a data root that cannot be used: could not start
EXIT_FAILURE = 2
ROOT_HELP = "data root (default: $QTSW_ROOT, else the folder qtsw is installed in)"
CONFIG_HELP = "settings file (default: <root>/qtsw.toml)"


def root_options(parser: argparse.ArgumentParser) -> None:
    """``--root PATH`` and ``--config FILE``, as every command that reads a data root takes them."""
    parser.add_argument("--root", metavar="PATH", help=ROOT_HELP)
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)


class UsageParser(argparse.ArgumentParser):
    """Bad arguments mean the command could not start: exit 4, not argparse's 2 (= failure)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def describe_os_error(exc: OSError) -> str:
    """``/path: Permission denied`` — the path(s) the error names and the system's reason."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


def root_problem(root: Path) -> str | None:
    """Why ``root`` cannot be used as a data root (one line), or None when it is a folder.

    Only ``qtsw init`` and ``qtsw sample`` create a data root: a mistyped ``--root`` must not
    quietly become a new, empty one.
    """
    try:
        st = os.stat(root)
    except (FileNotFoundError, NotADirectoryError):
        return (f"data root {root} does not exist: create it with 'qtsw init {root}' "
                "(or 'qtsw sample' for sample data), or give the right --root")
    except OSError as exc:
        return f"cannot use the data root {root}: {exc.strerror or exc}"
    if not stat.S_ISDIR(st.st_mode):
        return f"data root {root} is not a folder"
    return None


def command_settings(root: str | None, config: str | None, *, existing: bool = True) -> Any:
    """A command's settings and (``existing``) its data root checked (:func:`root_problem`);
    None when either cannot be had, said on stderr in one line (the caller exits 4)."""
    from pipeline_core.settings import SettingsError, load_settings

    try:
        settings = load_settings(root=root, config=config)
    except SettingsError as exc:
        print(f"qtsw: {exc}", file=sys.stderr, flush=True)
        return None
    problem = root_problem(settings.root) if existing else None
    if problem:
        print(f"qtsw: {problem}", file=sys.stderr, flush=True)
        return None
    return settings
