"""The warm launcher (SPEC §11.2): a process that has already imported the stages, and forks them.

Starting a stage as ``python -m pipeline_core.<stage>`` costs the interpreter start and the import
of numpy, pyarrow and the stage's own modules — about 0.3–0.7 s on two cores, for a few
milliseconds of work on a quiet run. The engine therefore starts this launcher once
(:class:`pipeline_core.proc.WarmLauncher`); it imports everything a stage needs and then waits on
a Unix socket pair for start requests. For each request it forks, and the child becomes the stage
exactly as ``python …`` would have started it:

* its own session and process group (``setsid``), so cancel and timeouts kill the whole group
  with ``killpg`` as for a plain subprocess;
* stdout and stderr are the engine's pipe (received with ``SCM_RIGHTS``), stdin is /dev/null;
* signal handlers and the signal mask as a fresh interpreter has them, ``random`` (and numpy's
  global generator) re-seeded, ``sys.argv``, ``os.environ`` and the working directory from the
  request; then the module runs as ``__main__`` (``runpy``), like ``-m``, and the interpreter
  exits normally with the stage's exit code;
* the child dies with the launcher (``PR_SET_PDEATHSIG``): a stage never runs on unsupervised.

The launcher replies on a private socket pair per stage: ``started`` with the child's pid, then
``exited`` with its exit status (it reaps every child). It runs no threads: it refuses to fork
when ``/proc/self/task`` holds more than one task (numpy's BLAS pool and arrow's jemalloc thread
are switched off before they are imported), and the child can read the count it was forked with
in :data:`threads_at_fork`.

It ends when the engine does: at the end of its control socket (the engine closed it or died),
or at SIGTERM (``PR_SET_PDEATHSIG`` from the engine's death). Before it ends it kills the process
groups of its children that are still running (SIGTERM, SIGKILL after the grace period).

Wire format: ``SOCK_SEQPACKET`` messages, each one JSON object; file descriptors ride along.

    engine → launcher (control)   {"op": "configure", "grace": S, "root": "..."} + fd [its log]
                                  first, to a launcher started with --configure (an early one,
                                  :mod:`pipeline_core.warmstart`): it is ready only after this
                                  {"op": "start", "argv": [...], "env": {...}, "cwd": "..."}
                                  + fds [stdout write end, the stage's reply socket]
                                  {"op": "retire"}   end once the running children have ended
    launcher → engine (control)   {"op": "ready", "pid", "threads", "executable"}
    launcher → engine (reply)     {"op": "started", "pid", "threads"} | {"op": "error", "error"}
                                  then {"op": "exited", "pid", "code"} (code < 0: killed by -code)
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# what a stage needs: importing these before the first fork is the whole point. Not pandas:
# no stage uses it (pipeline_core.arrays keeps pyarrow from importing it), and importing it
# would double the launcher's start (0.2 s of 0.4 s), which a whole command waits for.
WARM_MODULES = (
    "numpy",
    "pyarrow",
    "pyarrow.compute",
    "pyarrow.csv",
    "pyarrow.parquet",
    "pipeline_core.translator",
    "pipeline_core.analyzer.runner",
    "pipeline_core.merger",
)
# Stage modules whose ``python -m`` run is exactly ``sys.exit(<entry>())`` (their ``__main__``
# block, or the package's ``__main__.py``): a child calls the entry of the module the launcher
# already imported rather than executing the module's source again as ``__main__`` (a third of
# a stage's start). Anything else runs through runpy, as ``python -m`` would.
MAIN_ENTRIES = {
    "pipeline_core.translator": ("pipeline_core.translator", "main"),
    "pipeline_core.merger": ("pipeline_core.merger", "main"),
    "pipeline_core.analyzer": ("pipeline_core.analyzer.runner", "main"),
}
# libraries that would start a thread at import; a forking process must have none
SINGLE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "JE_ARROW_MALLOC_CONF": "background_thread:false"}
MAX_MESSAGE = 4 << 20
PR_SET_PDEATHSIG = 1

threads_at_fork: int | None = None  # in a stage forked by the launcher: tasks the launcher had


def thread_count() -> int:
    """Tasks (threads) of this process, from /proc/self/task (1 where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def set_pdeathsig(sig: int) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent ends (Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@dataclass(frozen=True)
class Target:
    """What ``python <argv[1:]>`` would run: a module (``-m``), a script path, or code (``-c``)."""

    kind: str  # module | path | code
    name: str
    args: tuple[str, ...]


def parse_argv(argv: Sequence[str], executable: str) -> Target | str:
    """The :class:`Target` of a stage command, or the reason it cannot be started warm.

    Only this interpreter is accepted, with the options the stages are started with
    (``-X utf8``, ``-u``); anything else is started as a plain subprocess.
    """
    if not argv:
        return "empty command"
    if os.path.realpath(argv[0]) != os.path.realpath(executable) and argv[0] != executable:
        return f"not this interpreter ({argv[0]})"
    i = 1
    while i < len(argv):
        a = argv[i]
        if a in ("-X", "-Xutf8") or a == "-u":
            if a == "-X":
                if i + 1 >= len(argv) or argv[i + 1] not in ("utf8", "utf8=1"):
                    return f"interpreter option -X {argv[i + 1] if i + 1 < len(argv) else ''}"
                i += 1
            i += 1
            continue
        if a in ("-m", "-c"):
            if i + 1 >= len(argv):
                return f"{a} without an argument"
            return Target("module" if a == "-m" else "code", argv[i + 1], tuple(argv[i + 2 :]))
        if a.startswith("-"):
            return f"interpreter option {a}"
        return Target("path", a, tuple(argv[i + 1 :]))
    return "no module or script"


# --- the launcher process ------------------------------------------------------------------


class _Child:
    def __init__(self, pid: int, reply: socket.socket) -> None:
        self.pid = pid
        self.reply = reply


def _send(sock: socket.socket, obj: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        sock.send(json.dumps(obj).encode())


class _Start(Exception):
    """Raised in a freshly forked child to leave the launcher's loop and become the stage."""

    def __init__(self, target: Target) -> None:
        self.target = target


class Launcher:
    """The launcher's loop (runs in the launcher process only)."""

    def __init__(self, ctl: socket.socket, grace: float) -> None:
        self.ctl = ctl
        self.grace = grace
        self.children: dict[int, _Child] = {}
        self.retiring = False
        self.stopping = False
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def serve(self) -> None:
        """Answer requests until the control socket ends; raises :class:`_Start` in a child."""
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _ignore)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGHUP, self._on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the engine decides; it closes the socket
        self.sel.register(self.ctl, selectors.EVENT_READ, "ctl")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self.stopping:
                for key, _ in self.sel.select(timeout=1.0):
                    if key.data == "wake":
                        with contextlib.suppress(OSError):
                            os.read(self.wake_r, 4096)
                    elif key.data == "ctl":
                        self._on_request()
                self._reap()
                if self.retiring and not self.children:
                    break
        finally:
            self._kill_children()  # none in a forked stage: it cleared its copy of the table

    def _on_term(self, *_: Any) -> None:
        self.stopping = True

    def _on_request(self) -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.ctl, MAX_MESSAGE, 4)
        except (ConnectionError, OSError):
            data, fds = b"", []
        if not data:  # the engine closed the socket, or died
            for fd in fds:
                os.close(fd)
            self.stopping = True
            return
        try:
            req = json.loads(data)
        except ValueError:
            req = {}
        op = req.get("op")
        if op == "retire":
            self.retiring = True
            for fd in fds:
                os.close(fd)
            return
        if op != "start" or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            return
        out_fd, reply_fd = fds
        reply = socket.socket(fileno=reply_fd)
        try:
            self._start(req, out_fd, reply)
        finally:
            os.close(out_fd)

    def _start(self, req: dict[str, Any], out_fd: int, reply: socket.socket) -> None:
        target = parse_argv(req.get("argv") or [], sys.executable)
        threads = thread_count()
        if isinstance(target, str) or threads != 1 or self.retiring:
            why = target if isinstance(target, str) else (
                "the launcher is retiring" if self.retiring else f"the launcher has {threads} threads")
            _send(reply, {"op": "error", "error": why})
            reply.close()
            return
        env = {str(k): str(v) for k, v in (req.get("env") or {}).items()}
        cwd = str(req.get("cwd") or os.getcwd())
        me = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:
            _send(reply, {"op": "error", "error": f"fork failed: {exc.strerror or exc}"})
            reply.close()
            return
        if pid == 0:  # the stage
            try:
                self._become_child(me, out_fd, reply, env, cwd, threads)
            except BaseException:
                os._exit(70)
            raise _Start(target)
        self.children[pid] = _Child(pid, reply)
        _send(reply, {"op": "started", "pid": pid, "threads": threads})

    def _become_child(
        self, parent: int, out_fd: int, reply: socket.socket, env: dict[str, str], cwd: str, threads: int
    ) -> None:
        os.setsid()
        set_pdeathsig(signal.SIGKILL)
        if os.getppid() != parent:  # the launcher died between the fork and the prctl
            os._exit(70)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        # nothing of the launcher's stays open in the stage: the engine sees EOF when it should
        self.sel.close()
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)
        self.ctl.close()
        reply.close()
        for child in self.children.values():
            child.reply.close()
        self.children.clear()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)  # out_fd itself is closed by _on_request's finally
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        time.tzset()
        _fresh_stdio()
        _reseed()
        sys.modules[__name__].threads_at_fork = threads  # type: ignore[attr-defined]

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is not None:
                _send(child.reply, {"op": "exited", "pid": pid, "code": os.waitstatus_to_exitcode(status)})
                child.reply.close()

    def _kill_children(self) -> None:
        """The engine is gone: the stages it started end with it, each with its process group
        (SIGTERM, then SIGKILL to what is left of the group: a stage that ended at SIGTERM
        may leave a child that ignores it)."""
        if not self.children:
            return
        groups = list(self.children)
        for pid in groups:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline:
            self._reap()
            if not self.children and not any(_group_alive(g) for g in groups):
                break
            time.sleep(0.02)
        for pid in groups:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)


def _ignore(*_: Any) -> None:
    return None


def _group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` still has a member."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _warm_arrow() -> None:
    """Once here rather than in every stage: what arrow sets up at its first use, i.e. the
    time-zone database (the first tz-aware compute call, 5 ms) and the Parquet encoders and
    decoders the store uses (1 ms). Imports no pandas and starts no thread (the launcher
    forks only with one)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline_core import arrays, store

    ms = np.zeros(1, dtype=np.int64)
    store.chicago_years(ms)
    bars = {"timestamp": arrays.to_arrow(ms, store.TIMESTAMP_TYPE)}
    bars.update({c: arrays.to_arrow(np.zeros(1), pa.float64()) for c in store.PRICE_COLUMNS})
    bars["instrument"] = arrays.repeat_string("ES", 1)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(bars, schema=store.SCHEMA), sink, **store.WRITE_OPTIONS)
    pq.ParquetFile(pa.BufferReader(sink.getvalue())).read(use_threads=False)


def _fresh_stdio() -> None:
    """stdin, stdout and stderr on fds 0, 1, 2, as ``python -u -X utf8`` opens them."""
    import io

    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(
        open(0, "rb", closefd=False), encoding="utf-8", errors="surrogateescape")
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        open(1, "wb", buffering=0, closefd=False), encoding="utf-8", errors="surrogateescape",
        write_through=True)
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        open(2, "wb", buffering=0, closefd=False), encoding="utf-8", errors="backslashreplace",
        write_through=True)


def _reseed() -> None:
    """A forked child shares its parent's random state: give it its own. numpy's global
    generator only if the launcher has one: ``numpy.random`` is imported lazily, and importing
    it here (to seed it) cost every stage about 10 ms of its start; one imported later seeds
    itself from the operating system."""
    import random

    random.seed()
    nprandom = sys.modules.get("numpy.random")
    if nprandom is not None:
        with contextlib.suppress(Exception):
            nprandom.seed()


def _run_target(target: Target) -> None:
    """Run the stage as ``python`` would: ``-m`` module, script, or ``-c`` code, as ``__main__``."""
    import runpy

    if target.kind == "module":
        sys.argv = [target.name, *target.args]
        sys.path[0] = os.getcwd()
        entry = MAIN_ENTRIES.get(target.name)
        module = sys.modules.get(entry[0]) if entry else None
        if entry is not None and module is not None and module.__file__:
            # the module as the launcher imported it (this fork has run nothing of it since):
            # the same state ``python -m`` would give it, without running its source again
            sys.argv[0] = module.__file__ if target.name == entry[0] else os.path.join(
                os.path.dirname(module.__file__), "__main__.py")
            sys.exit(getattr(module, entry[1])())
        # ``python -m`` runs a module that nothing has imported yet: without this, runpy would
        # warn on the stage's output that the launcher imported it
        existing = sys.modules.get(target.name)
        if existing is not None and not hasattr(existing, "__path__"):
            del sys.modules[target.name]
        runpy.run_module(target.name, run_name="__main__", alter_sys=True)
    elif target.kind == "path":
        sys.argv = [target.name, *target.args]
        sys.path[0] = os.path.dirname(os.path.abspath(target.name))
        runpy.run_path(target.name, run_name="__main__")
    else:
        sys.argv = ["-c", *target.args]
        sys.path[0] = ""
        exec(compile(target.name, "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102


def _run_stage(target: Target) -> int:
    """Run the stage and return its exit status as the interpreter would compute it."""
    try:
        _run_target(target)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code & 0xFF
        with contextlib.suppress(Exception):
            print(code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        return -int(signal.SIGINT)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        return 1
    return 0


def _finish(code: int) -> None:
    """End the stage as the interpreter ends: wait for its threads, run the exit functions,
    flush; but skip tearing down the imported modules (most of a forked process's exit time,
    and nothing a stage relies on)."""
    import atexit
    import threading

    with contextlib.suppress(Exception):
        threading._shutdown()  # type: ignore[attr-defined]  # joins non-daemon threads
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if code < 0:  # died of SIGINT, as the interpreter does on an uncaught KeyboardInterrupt
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


def _await_configuration(ctl: socket.socket) -> tuple[float, str] | None:
    """An early launcher's configuration, the first message on its control socket: (grace,
    root); its stderr becomes the log file that comes with it. None at the socket's end."""
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(ctl, MAX_MESSAGE, 1)
        except InterruptedError:
            continue
        except OSError:
            return None
        if not data:
            return None
        for fd in fds:
            os.dup2(fd, 2)
            os.close(fd)
        try:
            req = json.loads(data)
        except ValueError:
            req = {}
        if req.get("op") == "configure":
            return float(req.get("grace", 5.0)), str(req.get("root") or "")


def main(argv: list[str] | None = None) -> int:
    """``python -X utf8 -u -m pipeline_core.launcher --fd N --parent PID [--grace S] [--root R] [--configure]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pipeline_core.launcher")
    ap.add_argument("--fd", type=int, required=True, help="the control socket (inherited)")
    ap.add_argument("--parent", type=int, required=True, help="the engine's pid")
    ap.add_argument("--grace", type=float, default=5.0)
    ap.add_argument("--root", default="", help="the data root (shown in the process list)")
    ap.add_argument("--configure", action="store_true",
                    help="an early launcher: after the imports, wait for the configuration message")
    args = ap.parse_args(argv)
    ctl = socket.socket(fileno=args.fd)
    set_pdeathsig(signal.SIGTERM)
    if os.getppid() != args.parent:  # the engine ended before we could ask to follow it
        return 0
    os.environ.update(SINGLE_THREAD_ENV)
    import gc
    import importlib

    # No collection while importing (numpy and pyarrow allocate hundreds of thousands of objects,
    # and each full collection rescans them all: a tenth of the launcher's start, which a
    # one-off run waits for); what the imports leave is frozen below, then collection resumes.
    gc.disable()
    for name in WARM_MODULES:
        importlib.import_module(name)
    for name in SINGLE_THREAD_ENV:  # the stages' own environment comes with each request
        os.environ.pop(name, None)
    with contextlib.suppress(Exception):
        _warm_arrow()
    if args.configure:
        config = _await_configuration(ctl)
        if config is None:  # the command did not need it (the socket ended first)
            os._exit(0)
        args.grace, args.root = config
    if args.root:
        # Warm what every stage does first (reading the settings compiles their patterns): the
        # children inherit the caches. Only a warm-up: a failure here is the stage's to report.
        from pipeline_core.settings import load_settings

        with contextlib.suppress(Exception):
            load_settings(root=args.root)
    gc.freeze()  # the imported objects stay shared with the children (no copy on collection)
    gc.enable()
    _send(ctl, {"op": "ready", "pid": os.getpid(), "threads": thread_count(), "executable": sys.executable})
    launcher = Launcher(ctl, args.grace)
    try:
        launcher.serve()
    except _Start as start:
        _finish(_run_stage(start.target))
    # Its stages are ended (serve's last act): leave without tearing down numpy, pyarrow and
    # the stage modules, most of an exit's time, which the engine waits for at its end.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)

if __name__ == "__main__":
    # run as the package's module, not as a second copy named __main__: a stage reads
    # pipeline_core.launcher.threads_at_fork, and runpy gives __main__ to the stage
    from pipeline_core import launcher as _launcher

    sys.exit(_launcher.main())
