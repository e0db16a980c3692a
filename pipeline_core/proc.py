"""Stage subprocesses (SPEC §6.1): spawn, stream, time out, and kill the whole process group.

A stage runs as its own process group (new session), stdin from /dev/null, unbuffered UTF-8
output, stderr merged into stdout so the log keeps the order the stage wrote in. The byte
stream is split on ``\\n`` by hand, so a line may be any length (a 1 MB line is one line).
Each line is either a structured message of the stage protocol (:func:`protocol.parse`) or
free text; free text goes to the stage's ``.log`` file and to the caller.

The success contract: a stage succeeds only if it exits 0 *and* its final result says success
(or partial). Exit 0 without a result is a failure. A stage that reports its result and then
does not exit within the grace period is killed and counted as a failure: its result was never
confirmed by a clean exit, and waiting out the full timeout (hours for the analyzer) would hold
up the run for nothing. We never infer success from output text or files.

Whatever happens — normal end, timeout, cancellation, an exception in the engine — the
``finally`` of :func:`run_stage` terminates the process group (SIGTERM, then SIGKILL after the
grace period) and then sweeps for processes that left the group but still carry the stage's
token in their environment. Cancelling a task does not kill its child; this code does.

A stage is started either as a plain subprocess (a fresh interpreter) or, given a
:class:`WarmLauncher`, forked by the warm launcher (:mod:`pipeline_core.launcher`), which has
already imported what the stages need. Only the start and the exit status differ (the launcher
reports the status of a process the engine is not the parent of); the output, the judging,
timeouts and the kill of the group are the same code for both.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import anyio.lowlevel

from pipeline_core import launcher as warm
from pipeline_core import protocol, warmstart
from pipeline_core.osfiles import fail_point
from pipeline_core.safetext import safe, safe_data

PROC_DIR = Path("/proc")
YIELD_LINES = 50  # stage lines handled between two turns of the engine's other tasks
TOKEN_VAR = "QTSW_PROC_TOKEN"  # unique per stage process; inherited by everything it spawns
RUN_ID_VAR = "QTSW_RUN_ID"
DRAIN_SECONDS = 2.0  # after exit, how long to wait for the rest of the output
POLL_SECONDS = 0.02


@dataclass
class StageOutcome:
    """How a stage process ended, judged by the success contract."""

    status: str  # success | partial | failure
    exit_code: int | None
    msg: str = ""
    error: str | None = None
    result: dict[str, Any] | None = None  # the body of the stage's result message
    counts: dict[str, Any] = field(default_factory=dict)
    timed_out: bool = False
    hung_after_result: bool = False
    pid: int | None = None
    duration: float = 0.0


def stage_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a stage: ours, plus unbuffered UTF-8 output and ``extra``."""
    env = dict(os.environ)
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONUTF8": "1",
            TOKEN_VAR: uuid.uuid4().hex,
        }
    )
    env.update(extra or {})
    return env


# --- process table ------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of ``pid`` from /proc, or None if it is gone."""
    try:
        raw = (PROC_DIR / str(pid) / "stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
        return None
    # "pid (comm) state ppid pgrp ..." — comm may hold spaces and parentheses.
    rest = raw[raw.rfind(b")") + 2 :].split()
    try:
        return rest[0].decode(), int(rest[2])
    except (IndexError, ValueError):
        return None


def _all_pids() -> list[int]:
    try:
        return [int(p) for p in os.listdir(PROC_DIR) if p.isdigit()]
    except OSError:
        return []


def pid_alive(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie awaiting its reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    st = _proc_stat(pid)
    if st is None:
        return not PROC_DIR.is_dir()
    return st[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    if not PROC_DIR.is_dir():
        return [pgid]
    out = []
    for pid in _all_pids():
        st = _proc_stat(pid)
        if st is not None and st[1] == pgid and st[0] not in ("Z", "X"):
            out.append(pid)
    return out


def processes_with_env(name: str, value: str) -> list[int]:
    """Live processes whose environment has ``name=value`` (ours to see: same user)."""
    needle = f"\0{name}={value}\0".encode()
    me = os.getpid()
    base = str(PROC_DIR)  # (after every stage: string paths, not Path objects)
    out = []
    for pid in _all_pids():
        if pid == me:
            continue
        try:
            with open(f"{base}/{pid}/environ", "rb") as fh:
                environ = fh.read()
        except OSError:
            continue
        if needle in b"\0" + environ + b"\0" and pid_alive(pid):
            out.append(pid)
    return out


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _signal_pids(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


async def terminate_group(pgid: int, grace: float) -> str:
    """SIGTERM process group ``pgid``, SIGKILL it after ``grace`` seconds if anything is left.

    Returns ``"gone"`` (nothing was running), ``"terminated"`` or ``"killed"``.
    """
    if not group_members(pgid):
        return "gone"
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        await anyio.sleep(POLL_SECONDS)
        if not group_members(pgid):
            return "terminated"
    _signal_group(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while group_members(pgid) and time.monotonic() < deadline:
        await anyio.sleep(POLL_SECONDS)
    return "killed"


async def kill_escaped(token: str, grace: float) -> list[int]:
    """Terminate processes that carry a stage's token but left its process group (setsid)."""
    pids = processes_with_env(TOKEN_VAR, token)
    if not pids:
        return []
    _signal_pids(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        await anyio.sleep(POLL_SECONDS)
    _signal_pids([p for p in pids if pid_alive(p)], signal.SIGKILL)
    return pids


def kill_run_processes(run_id: str) -> list[int]:
    """SIGKILL every process still carrying ``run_id`` (stages orphaned by a dead engine)."""
    pids = processes_with_env(RUN_ID_VAR, run_id)
    groups = set()
    for pid in pids:
        st = _proc_stat(pid)
        if st is not None and st[1] > 1 and st[1] != os.getpgrp():
            groups.add(st[1])
    for pgid in groups:
        _signal_group(pgid, signal.SIGKILL)
    _signal_pids(pids, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(POLL_SECONDS)
    return pids


def _noop(*_args: Any) -> None:
    return None


# --- the warm launcher, the engine's side ------------------------------------------------------

LAUNCHER_READY_SECONDS = 60.0  # importing numpy, pyarrow and the stages (0.2 s idle), under load
LAUNCHER_REPLY_SECONDS = 10.0  # a fork and a reply
LAUNCHER_MAX_RESTARTS = 3  # launchers that died or failed in a row before warm starts are given up

Report = Callable[[str, dict[str, Any]], None]


class _PipeChunks:
    """The stage's stdout pipe as an async iterator of byte chunks (like a process's stdout)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)

    def __aiter__(self) -> _PipeChunks:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self.fd < 0:
                raise anyio.ClosedResourceError
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                await anyio.wait_readable(self.fd)
                continue
            if not data:
                raise StopAsyncIteration
            return data

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            with contextlib.suppress(OSError):
                os.close(fd)


class WarmProcess:
    """A stage forked by the warm launcher: its pid, its stdout, and its exit status as the
    launcher reports it (the engine is not its parent and cannot wait for it itself)."""

    def __init__(self, pid: int, stdout_fd: int, reply: socket.socket) -> None:
        self.pid = pid
        self.stdout = _PipeChunks(stdout_fd)
        self.returncode: int | None = None
        self.launcher_lost = False  # the launcher ended before it could report the exit
        self._reply = reply
        self._done = False
        self._lock = anyio.Lock()

    async def wait(self) -> int | None:
        """The exit code (negative: killed by that signal); None when the launcher ended first."""
        async with self._lock:
            while not self._done:
                try:
                    data = self._reply.recv(65536)
                except BlockingIOError:
                    await anyio.wait_readable(self._reply)
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.launcher_lost = True
                    self._done = True
                    break
                with contextlib.suppress(ValueError):
                    msg = json.loads(data)
                    if msg.get("op") == "exited":
                        self.returncode = int(msg["code"])
                        self._done = True
        if self.launcher_lost:
            # it died with the launcher (PR_SET_PDEATHSIG); wait until it is really gone
            deadline = time.monotonic() + 5.0
            while pid_alive(self.pid) and time.monotonic() < deadline:
                await anyio.sleep(POLL_SECONDS)
        return self.returncode

    async def aclose(self) -> None:
        self.stdout.close()
        self._reply.close()


class WarmLauncher:
    """The engine's handle on its warm launcher (:mod:`pipeline_core.launcher`).

    :meth:`start` starts the launcher process in the background; :meth:`spawn` starts a stage
    through it, or returns why it cannot, in which case the caller starts a plain subprocess.
    Whatever is not as it should be is said through ``report(text, data)`` (the engine turns it
    into a run event): a launcher that died or never got ready (a new one is started), package
    files changed on disk since it started (a new one is started; the old one ends when its
    stages do), or warm starts given up after :data:`LAUNCHER_MAX_RESTARTS` failures in a row
    (every stage is then a plain subprocess). :meth:`aclose` ends the launcher; it also ends
    by itself when the engine's process does.
    """

    def __init__(
        self,
        *,
        root: Path | None = None,
        grace: float = 5.0,
        log_path: Path | None = None,
        fingerprint: Callable[[], str] = warmstart.package_fingerprint,
    ) -> None:
        self.root = root
        self.fingerprint = fingerprint  # of the package's code on disk
        self.grace = grace
        self.log_path = log_path
        self.started = 0  # launcher processes started
        self.forked = 0  # stages started through it
        self.disabled: str | None = None  # why warm starts were given up
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctl: socket.socket | None = None
        self._info: dict[str, Any] | None = None  # its ready message
        self._code: str | None = None  # the fingerprint when it was started
        self._failures = 0
        self._retired: list[tuple[subprocess.Popen[bytes], socket.socket]] = []
        self._said: set[str] = set()
        self._lock: anyio.Lock | None = None  # one task at a time starts or checks the launcher
        self._lock_loop: object = None  # a lock belongs to one event loop; tests use several

    @classmethod
    def for_settings(cls, settings: Any) -> WarmLauncher:
        """The launcher of an engine on these settings (not started yet)."""
        return cls(root=settings.root, grace=settings.timeouts["grace"],
                   log_path=settings.logs_dir / "launcher.log")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def ready(self) -> bool:
        return self._info is not None and self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start a launcher process (it imports in the background; no waiting here)."""
        if self._proc is not None or self.disabled:
            return
        # taken before the launcher imports: a file edited after this is seen as a change
        self._code = self.fingerprint()
        log = self._open_log()
        try:
            self._proc, self._ctl = warmstart.spawn_launcher(
                grace=self.grace, root=str(self.root) if self.root is not None else None,
                stderr=log if log is not None else subprocess.DEVNULL)
        finally:
            if log is not None:
                log.close()
        self._info = None
        self.started += 1

    def adopt(self, early: warmstart.EarlyLauncher) -> None:
        """Take over a launcher the command started before it read the settings: send it its
        configuration. One that is gone already is found so at the first stage, like any other
        (a new one is started, and said)."""
        if self._proc is not None or self.disabled:
            early.discard()
            return
        self._proc, self._ctl, self._code = early.take()
        log = self._open_log()
        try:
            warmstart.configure(self._ctl, grace=self.grace,
                                root=str(self.root) if self.root is not None else None, log=log)
        except OSError:
            pass  # gone: the first stage finds it dead and starts another
        finally:
            if log is not None:
                log.close()
        self._info = None
        self.started += 1

    def _open_log(self) -> BinaryIO | None:
        """The launcher's stderr: its log file, opened for appending (None without one)."""
        if self.log_path is None:
            return None
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            return open(self.log_path, "ab")  # noqa: SIM115 - handed to the launcher, closed by the caller
        except OSError:
            return None

    def _say(self, report: Report, text: str, **data: Any) -> None:
        report(text, {"launcher_pid": self.pid, **data})

    def _failed(self, report: Report, what: str, *, stage_plain: bool = False) -> None:
        """The launcher is unusable: end it; start another, or give up after too many.
        ``stage_plain``: the stage being started goes on as a plain subprocess."""
        old = self.pid
        self._kill()
        self._failures += 1
        this = "; this stage starts as a plain subprocess" if stage_plain else ""
        if self._failures < LAUNCHER_MAX_RESTARTS:
            try:
                self.start()
            except OSError as exc:
                what += f"; a new one cannot be started ({exc.strerror or exc})"
                self._failures = LAUNCHER_MAX_RESTARTS
            else:
                report(f"warm launcher: {what}; starting a new one{this}",
                       {"launcher_pid": old, "fallback": "restart"})
                return
        self.disabled = f"{what} ({self._failures} times in a row)"
        self._said.add("disabled")
        report(f"warm launcher: {what}; giving up warm starts after {self._failures} failures in a row: "
               "stages start as plain subprocesses", {"launcher_pid": old, "fallback": "plain"})

    async def _read_ctl(self, timeout: float) -> dict[str, Any] | None:
        """The next message on the control socket; None at its end (the launcher is gone)."""
        assert self._ctl is not None
        with anyio.move_on_after(timeout):
            while True:
                try:
                    data = self._ctl.recv(65536)
                except BlockingIOError:
                    await anyio.wait_readable(self._ctl)
                    continue
                except OSError:
                    return None
                if not data:
                    return None
                with contextlib.suppress(ValueError):
                    return dict(json.loads(data))
        return None

    async def _ensure(self, report: Report) -> bool:
        """A live, ready launcher whose code is the package's code on disk now."""
        for _ in range(LAUNCHER_MAX_RESTARTS + 1):
            if self.disabled:
                return False
            if self._proc is None:
                self.start()
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                self._failed(report, f"the launcher (pid {self._proc.pid}) ended ({_describe_exit(code)})")
                continue
            if self._info is None:
                msg = await self._read_ctl(LAUNCHER_READY_SECONDS)
                if msg is None or msg.get("op") != "ready":
                    with anyio.move_on_after(2.0):  # it closed the socket: let it finish exiting
                        while self._proc.poll() is None:
                            await anyio.sleep(POLL_SECONDS)
                    code = self._proc.poll()
                    why = (f"ended while starting ({_describe_exit(code)}; see {self.log_path})"
                           if code is not None else f"not ready within {LAUNCHER_READY_SECONDS:g} s")
                    self._failed(report, f"the launcher (pid {self._proc.pid}) {why}")
                    continue
                self._info = msg
            if self._code != self.fingerprint():
                self._say(report, "warm launcher: package files changed on disk since it started; "
                          "starting a new one", fallback="restart")
                self._retire()
                self.start()
                continue
            return True
        return False

    async def wait_ready(self, report: Report = _noop) -> bool:
        """Wait until the launcher has imported everything (starting it if need be); False if
        warm starts are not available."""
        token = anyio.lowlevel.current_token()
        if self._lock is None or self._lock_loop != token:
            self._lock, self._lock_loop = anyio.Lock(), token
        async with self._lock:
            return await self._ensure(report)

    async def spawn(
        self, argv: Sequence[str], env: Mapping[str, str], report: Report = _noop
    ) -> WarmProcess | str:
        """Fork a stage through the launcher; the :class:`WarmProcess`, or why not (then the
        caller starts it as a plain subprocess)."""
        if self.disabled:
            if "disabled" not in self._said:
                self._said.add("disabled")
                report(f"warm launcher: {self.disabled}; stages start as plain subprocesses",
                       {"fallback": "plain"})
            return f"warm starts given up: {self.disabled}"
        target = warm.parse_argv(argv, sys.executable)
        if isinstance(target, str):
            if target not in self._said:
                self._said.add(target)
                report(f"warm launcher: cannot start {argv[0]} warm ({target}); plain subprocess",
                       {"fallback": "plain"})
            return target
        if not await self.wait_ready(report):
            return "no warm launcher"
        ctl = self._ctl
        assert ctl is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        r, w = os.pipe()
        request = json.dumps({"op": "start", "argv": list(argv), "env": dict(env), "cwd": os.getcwd()}).encode()
        reply: dict[str, Any] | None = None
        why = ""
        # Shielded: once asked, the launcher forks; we must learn the pid to be able to kill it.
        with anyio.CancelScope(shield=True):
            try:
                await _send_fds(ctl, request, [w, theirs.fileno()])
            except OSError as exc:
                why = f"the launcher cannot be reached ({exc.strerror or exc})"
            finally:
                os.close(w)
                theirs.close()
            ours.setblocking(False)
            with anyio.move_on_after(LAUNCHER_REPLY_SECONDS):
                while not why:
                    try:
                        data = ours.recv(65536)
                    except BlockingIOError:
                        await anyio.wait_readable(ours)
                        continue
                    except OSError:
                        data = b""
                    reply = json.loads(data) if data else {"op": "error", "error": "the launcher closed the reply"}
                    break
            if reply is None or reply.get("op") != "started":
                os.close(r)
                ours.close()
                if not why:
                    why = (f"no reply within {LAUNCHER_REPLY_SECONDS:g} s" if reply is None
                           else f"it did not start the stage: {reply.get('error')}")
                async with self._lock:  # type: ignore[union-attr]
                    if self._ctl is ctl:  # (not replaced meanwhile by another stage's start)
                        self._failed(report, f"the launcher (pid {self.pid}) {why}", stage_plain=True)
                return why
        self._failures = 0
        self.forked += 1
        return WarmProcess(int(reply["pid"]), r, ours)

    def _retire(self) -> None:
        """Let the current launcher end once its running stages have; a new one takes over."""
        if self._proc is None or self._ctl is None:
            return
        with contextlib.suppress(OSError):
            self._ctl.send(json.dumps({"op": "retire"}).encode())
        self._retired.append((self._proc, self._ctl))
        self._proc, self._ctl, self._info = None, None, None
        self._reap_retired()

    def _reap_retired(self) -> None:
        keep = []
        for p, ctl in self._retired:
            if p.poll() is None:
                keep.append((p, ctl))
            else:
                ctl.close()
        self._retired = keep

    def _kill(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5.0)
        if self._ctl is not None:
            self._ctl.close()
        self._proc, self._ctl, self._info = None, None, None

    async def aclose(self) -> None:
        """End the launcher(s): close the control socket (it then ends its stages, if any are
        still running, and exits); one still importing is killed at once."""
        procs = list(self._retired)
        if self._proc is not None and self._ctl is not None:
            if self._info is None:
                with contextlib.suppress(OSError):
                    self._proc.kill()  # still importing: nothing of ours runs in it
            procs.append((self._proc, self._ctl))
        self._proc, self._ctl, self._info = None, None, None
        self._retired = []
        for _p, ctl in procs:
            ctl.close()
        start = time.monotonic()
        deadline = start + self.grace + 5.0
        with anyio.CancelScope(shield=True):
            while any(p.poll() is None for p, _ in procs) and time.monotonic() < deadline:
                # an idle launcher is gone within milliseconds; one ending stages takes longer
                soon = time.monotonic() - start < POLL_SECONDS * 5
                await anyio.sleep(POLL_SECONDS / 10 if soon else POLL_SECONDS)
        for p, _ in procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5.0)


async def _send_fds(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    while True:
        try:
            socket.send_fds(sock, [data], fds)
            return
        except BlockingIOError:
            await anyio.wait_writable(sock)


# --- running a stage ------------------------------------------------------------------------


class _StageLog:
    """A stage's log file. A write that fails (a full disk) is said once, through
    ``on_failure``, and the log stops; the stage's output still reaches the engine."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.on_failure: Callable[[OSError], None] = _noop
        self.error: OSError | None = None
        self._fh: Any = None
        self._failed = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fail_point(path)
            self._fh = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        if self._failed:
            return
        self._failed = True
        self.error = exc
        fh, self._fh = self._fh, None
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.close()
        self.on_failure(exc)

    def write(self, text: str) -> None:
        if self._fh is not None:
            try:
                fail_point(self.path)
                self._fh.write(text)
            except OSError as exc:
                self._fail(exc)

    def flush(self) -> None:
        if self._fh is not None:
            try:
                self._fh.flush()
            except OSError as exc:
                self._fail(exc)

    def close(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            with contextlib.suppress(OSError):
                fh.close()


async def run_stage(
    argv: Sequence[str],
    *,
    log_path: Path,
    timeout: float,
    grace: float,
    silence_warning: float,
    env: Mapping[str, str] | None = None,
    on_start: Callable[[int], None] = _noop,
    on_output: Callable[[str], None] = _noop,
    on_message: Callable[[protocol.Message], None] = _noop,
    on_silence: Callable[[float], None] = _noop,
    on_note: Callable[[str], None] = _noop,
    on_log_error: Callable[[OSError], None] = _noop,
    launcher: WarmLauncher | None = None,
    on_launcher: Report = _noop,
) -> StageOutcome:
    """Run one stage process to its end and judge it.

    ``argv`` is the command; free-text lines go to ``log_path`` and ``on_output``; structured
    messages to ``on_message``; ``on_silence(seconds)`` fires after ``silence_warning`` seconds
    without output (and again after each further period); ``on_note`` receives what the engine
    itself did (timeout, kill). With a ``launcher`` the process is forked by it (when it can;
    otherwise, and after what ``on_launcher(text, data)`` is told, a plain subprocess); all the
    rest is the same. Returns the :class:`StageOutcome`. Raises the cancellation exception when
    the caller is cancelled — after the process group is gone.
    """
    full_env = stage_env(env)
    token = full_env[TOKEN_VAR]
    log = _StageLog(log_path)
    started = time.monotonic()
    last_output = started
    result: dict[str, Any] | None = None
    exit_code: int | None = None
    exited = anyio.Event()
    eof = anyio.Event()
    result_seen = anyio.Event()
    proc: anyio.abc.Process | WarmProcess | None = None

    def note(text: str) -> None:
        log.write(f"[qtsw] {text}\n")
        log.flush()
        on_note(text)

    def log_failed(exc: OSError) -> None:
        on_note(f"the log {log_path} cannot be written ({exc.strerror or exc}); output is not logged")
        on_log_error(exc)

    log.on_failure = log_failed
    if log.error is not None:  # it could not even be opened
        log_failed(log.error)

    def handle_line(raw: bytes) -> None:
        nonlocal result
        text = raw.decode("utf-8", errors="replace")
        if text.endswith("\r"):
            text = text[:-1]
        msg = protocol.parse(text)
        if msg is None:
            # where a stage's text enters the engine, it is escaped once: no name from a file,
            # no escape sequence reaches a terminal, a log, an event or the console
            text = safe(text)
            log.write(text + "\n")
            on_output(text)
            return
        msg = protocol.Message(msg.type, safe_data(msg.body))
        if msg.type == "result":
            result = dict(msg.body)
            result_seen.set()
        on_message(msg)

    async def read_output() -> None:
        nonlocal last_output
        assert proc is not None and proc.stdout is not None
        buf = bytearray()
        try:
            async for chunk in proc.stdout:
                last_output = time.monotonic()
                scan_from = len(buf)
                buf += chunk
                start = 0
                handled = 0
                while True:
                    i = buf.find(b"\n", scan_from)
                    if i < 0:
                        break
                    handle_line(bytes(buf[start:i]))
                    start = scan_from = i + 1
                    handled += 1
                    if handled % YIELD_LINES == 0:
                        await anyio.lowlevel.checkpoint()
                if start:
                    del buf[:start]
                log.flush()
                # a read from a full pipe returns without yielding: let the engine's other tasks
                # (its socket's clients, a hosting console) run during a flood of output
                await anyio.lowlevel.checkpoint()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        if buf:
            handle_line(bytes(buf))
            log.flush()
        eof.set()

    async def wait_exit() -> None:
        nonlocal exit_code
        assert proc is not None
        exit_code = await proc.wait()
        exited.set()

    async def watch_silence() -> None:
        warned_at = started
        while True:
            base = max(last_output, warned_at)
            wait = base + silence_warning - time.monotonic()
            if wait > 0:
                await anyio.sleep(wait)
                continue
            warned_at = time.monotonic()
            on_silence(warned_at - last_output)

    timed_out = hung = cancelled = False
    try:
        if launcher is not None:
            got = await launcher.spawn(argv, full_env, on_launcher)
            if isinstance(got, WarmProcess):
                proc = got
        if proc is None:
            proc = await anyio.open_process(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
            )
        pgid = proc.pid  # a new session: the child leads its own process group
        on_start(proc.pid)
        async with anyio.create_task_group() as tg:
            tg.start_soon(read_output)
            tg.start_soon(wait_exit)
            tg.start_soon(watch_silence)
            with anyio.move_on_after(timeout) as deadline:
                async with anyio.create_task_group() as first:
                    # whichever comes first: the exit, or the result

                    async def until(ev: anyio.Event) -> None:
                        await ev.wait()
                        first.cancel_scope.cancel()

                    first.start_soon(until, exited)
                    first.start_soon(until, result_seen)
                if not exited.is_set():
                    with anyio.move_on_after(grace):
                        await exited.wait()
                    hung = not exited.is_set()
                if exited.is_set():
                    with anyio.move_on_after(min(DRAIN_SECONDS, grace)):
                        await eof.wait()
            timed_out = deadline.cancelled_caught
            if timed_out or hung:
                what = await terminate_group(pgid, grace)
                if timed_out:
                    note(f"timed out after {timeout:g} s: process group {pgid} {what}")
                else:
                    note(
                        f"reported its result but did not exit within {grace:g} s: "
                        f"process group {pgid} {what}"
                    )
                with anyio.move_on_after(grace + 5):
                    await exited.wait()
                with anyio.move_on_after(min(DRAIN_SECONDS, grace)):
                    await eof.wait()
            tg.cancel_scope.cancel()
    except BaseException as exc:
        if proc is not None and isinstance(exc, anyio.get_cancelled_exc_class()):
            cancelled = True
            note("cancelled: stopping the stage's processes")
        raise
    finally:
        with anyio.CancelScope(shield=True):
            if proc is not None:
                what = await terminate_group(proc.pid, grace)
                if what != "gone" and cancelled:
                    note(f"stopped: process group {proc.pid} {what} as asked")  # the expected end of a cancel
                elif what != "gone" and not (timed_out or hung):
                    note(f"process group {proc.pid} still running at the end: {what}")
                escaped = await kill_escaped(token, grace)
                if escaped:
                    note(f"killed {len(escaped)} process(es) that had left the group: {escaped}")
                with anyio.move_on_after(grace + 5):
                    exit_code = await proc.wait()
                with contextlib.suppress(Exception):
                    await proc.aclose()
            if isinstance(proc, WarmProcess) and proc.launcher_lost:
                note(f"the warm launcher ended while the stage ran: process group {proc.pid} "
                     "was killed with it; its exit status is unknown")
            log.flush()
            log.close()

    out = judge(
        exit_code,
        result,
        timed_out=timed_out,
        hung=hung,
        timeout=timeout,
        grace=grace,
        pid=proc.pid,
        duration=time.monotonic() - started,
    )
    if isinstance(proc, WarmProcess) and proc.launcher_lost and out.status == "failure":
        out.error = f"the warm launcher ended while the stage ran (stage killed); {out.error}"
    return out


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exit code {code}"


def judge(
    exit_code: int | None,
    result: dict[str, Any] | None,
    *,
    timed_out: bool = False,
    hung: bool = False,
    timeout: float = 0.0,
    grace: float = 0.0,
    pid: int | None = None,
    duration: float = 0.0,
) -> StageOutcome:
    """Apply the success contract: exit 0 *and* a result saying success/partial."""
    counts = dict((result or {}).get("counts") or {})
    rmsg = str((result or {}).get("msg") or "")
    rstatus = (result or {}).get("status")
    rerror = (result or {}).get("error")
    out = StageOutcome(
        status="failure",
        exit_code=exit_code,
        msg=rmsg,
        result=result,
        counts=counts,
        timed_out=timed_out,
        hung_after_result=hung,
        pid=pid,
        duration=duration,
    )
    if timed_out:
        out.error = f"timed out after {timeout:g} s (process group killed)"
    elif hung:
        out.error = (
            f"reported {rstatus!s} but did not exit within {grace:g} s after its result; killed"
        )
    elif result is None:
        out.error = f"{_describe_exit(exit_code)} without a result"
    elif exit_code != 0:
        detail = f": {rerror}" if rerror else (f": {rmsg}" if rmsg else "")
        out.error = f"{_describe_exit(exit_code)}, result {rstatus}{detail}"
    elif rstatus in ("success", "partial"):
        out.status = rstatus
        out.error = str(rerror) if rerror else None
    else:
        out.error = str(rerror or rmsg or "result says failure")
    if not out.msg:
        out.msg = out.error or ""
    return out


def python_command(module: str, *args: str) -> list[str]:
    """``python -X utf8 -m <module> <args>`` with this interpreter."""
    return [sys.executable, "-X", "utf8", "-m", module, *args]
