"""Starting the warm launcher (:mod:`pipeline_core.launcher`), with nothing heavy imported.

The launcher takes about a quarter of a second to import numpy, pyarrow and the stages, and a
one-off run (``qtsw --run-now --no-ui``) waits for it before its first stage. The ``qtsw``
command therefore starts it first thing (:func:`start_early`, from :mod:`qtsw_tui.entry`),
before it has imported the engine or read its settings: the two import side by side. Such an
*early* launcher has no settings yet; it imports, then waits for its configuration (the data
root, the grace period, its log as an open file) before it says it is ready. The engine takes
it over (:meth:`pipeline_core.proc.WarmLauncher.adopt`) or, when the command does not host an
engine after all (the root's engine serves and takes the run, warm starts are off in the
settings, bad arguments), ends it at once (:meth:`EarlyLauncher.discard`).

This module imports only the standard library's process and socket modules: it runs before
anything else of the command.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import IO, Any

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# the launcher's environment on top of the engine's: unbuffered UTF-8 output, as the stages get it
LAUNCHER_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", "PYTHONUTF8": "1"}
# values of QTSW_ENGINE_WARM_START that turn warm starts off (the settings' own reading decides;
# this only spares starting a launcher that would be ended at once)
_OFF = {"0", "false", "no", "off"}


def package_fingerprint() -> str:
    """A digest of the package's source files (path, size, mtime): it changes when any file
    under ``pipeline_core`` is edited, added or removed."""
    found: list[tuple[str, str]] = []
    for folder, dirs, files in os.walk(PACKAGE_DIR):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = os.path.relpath(folder, PACKAGE_DIR)
        found += [(os.path.normpath(os.path.join(rel, f)), os.path.join(folder, f))
                  for f in files if f.endswith(".py")]
    h = hashlib.sha256()
    for rel, path in sorted(found):
        try:
            st = os.stat(path)
        except OSError:
            continue
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def spawn_launcher(
    *, grace: float | None = None, root: str | None = None, stderr: Any = subprocess.DEVNULL,
) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start a launcher process in its own session; (the process, the engine's end of its
    control socket, non-blocking). Without ``grace`` it is an early launcher: it waits for its
    configuration (:func:`configure`) before it says it is ready."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    argv = [sys.executable, "-X", "utf8", "-u", "-m", "pipeline_core.launcher",
            "--fd", str(theirs.fileno()), "--parent", str(os.getpid())]
    argv += ["--configure"] if grace is None else ["--grace", f"{grace:g}"]
    if root is not None:
        argv += ["--root", root]
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            pass_fds=[theirs.fileno()], env={**os.environ, **LAUNCHER_ENV}, start_new_session=True)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    ours.setblocking(False)
    return proc, ours


def configure(ctl: socket.socket, *, grace: float, root: str | None, log: IO[bytes] | None) -> None:
    """Send an early launcher its configuration (first message on its control socket); its
    stderr becomes ``log``. Raises OSError when the launcher is gone."""
    msg = json.dumps({"op": "configure", "grace": grace, "root": root}).encode()
    fds = [log.fileno()] if log is not None else []
    socket.send_fds(ctl, [msg], fds)


class EarlyLauncher:
    """A launcher started before the command read its settings: adopted by the engine, or
    discarded. ``code`` is the package's fingerprint taken before it was started."""

    def __init__(self, proc: subprocess.Popen[bytes], ctl: socket.socket, code: str) -> None:
        self.proc = proc
        self.ctl = ctl
        self.code = code
        self.taken = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def take(self) -> tuple[subprocess.Popen[bytes], socket.socket, str]:
        """Hand the process over (to :class:`pipeline_core.proc.WarmLauncher`)."""
        self.taken = True
        return self.proc, self.ctl, self.code

    def discard(self) -> None:
        """End it now (it has imported, at most: no stage of ours runs in it), unless taken."""
        if self.taken:
            return
        self.taken = True
        with contextlib.suppress(OSError):
            os.kill(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5.0)
        self.ctl.close()


def start_early(env: Mapping[str, str] = os.environ) -> EarlyLauncher | None:
    """Start an early launcher, unless warm starts are turned off in the environment; None then,
    or when it cannot be started (the engine starts its launcher as usual, and says so if it
    cannot)."""
    if env.get("QTSW_ENGINE_WARM_START", "").strip().lower() in _OFF:
        return None
    code = package_fingerprint()  # before the launcher imports: an edit after this is a change
    try:
        proc, ctl = spawn_launcher()
    except OSError:
        return None
    return EarlyLauncher(proc, ctl, code)
