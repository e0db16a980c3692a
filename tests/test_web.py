"""``qtsw web``: the console in a browser, attached to a real headless engine.

The browser tests drive headless Chromium with Playwright: keys go in through the page (the
terminal's text area, as a person types), and the screen is read from the bytes the page
receives over its WebSocket — the same bytes its terminal draws — by a terminal emulator
(pyte) sized as the page's terminal. Everything runs on 127.0.0.1; the browser is kept off any
other address. Waits poll with a deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from processes import alive, children_of, priorities, wait_until
from test_control import clean_env, start_engine, stop_engine

from pipeline_core import history
from pipeline_core.control import Connection, NoEngine, socket_path
from pipeline_core.sample import write_samples
from pipeline_core.settings import load_settings

DEADLINE = 60.0
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # no name reaches the network
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qtsw(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qtsw_tui", *args], capture_output=True, text=True,
                          env=clean_env(), timeout=timeout)


def poll(cond: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    return wait_until(cond, what, timeout)


def launch_web(root: Path, *extra: str) -> subprocess.Popen[str]:
    """``qtsw web`` on a free port; ``.url``, ``.port``, ``.out`` (its output); see :func:`listening`."""
    port = free_port()
    out = root.parent / f"web-{port}.out"
    with open(out, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "qtsw_tui", "web", "--root", str(root),
                                 "--port", str(port), *extra],
                                stdout=fh, stderr=subprocess.STDOUT, text=True, env=clean_env())
    proc.url = f"http://127.0.0.1:{port}/"  # type: ignore[attr-defined]
    proc.port = port  # type: ignore[attr-defined]
    proc.out = out  # type: ignore[attr-defined]
    return proc


def listening(proc: subprocess.Popen[str]) -> subprocess.Popen[str]:
    def up() -> bool:
        assert proc.poll() is None, f"qtsw web exited {proc.returncode}: {proc.out.read_text()}"  # type: ignore[attr-defined]
        try:
            socket.create_connection(("127.0.0.1", proc.port), timeout=1).close()  # type: ignore[attr-defined]
            return True
        except OSError:
            return False

    poll(up, "qtsw web to listen", 30)
    return proc


def end(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def consoles_of(web: subprocess.Popen[str]) -> list[int]:
    """The tab consoles ``qtsw web`` runs (its children running qtsw_tui.webconsole)."""
    out = []
    for pid in children_of(web.pid):
        try:
            if b"qtsw_tui.webconsole" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            pass
    return out


# --- without a browser --------------------------------------------------------------------------


def test_web_refuses_what_it_must(tmp_path: Path) -> None:
    """Another address without --public, a missing data root, a port in use: one line, exit 4."""
    root = tmp_path / "root"
    load_settings(root=root, env={}).ensure_dirs()
    def run(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "qtsw_tui", "web", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=clean_env())

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        hosts = ("0.0.0.0", "::", "10.1.2.3")  # refused before anything listens
        runs = [run("--root", str(root), "--host", host) for host in hosts]
        missing = run("--root", str(tmp_path / "missing"))
        in_use = run("--root", str(root), "--port", str(port))
        said = {p: p.communicate(timeout=30) for p in [*runs, missing, in_use]}
    for host, proc in zip(hosts, runs, strict=True):
        out, err = said[proc]
        assert proc.returncode == 4 and out == "", (host, err)
        [line] = err.splitlines()
        assert host in line and "--public" in line and "ssh -L" in line, line
    out, err = said[missing]
    assert missing.returncode == 4 and str(tmp_path / "missing") in err and len(err.splitlines()) == 1
    out, err = said[in_use]
    assert in_use.returncode == 4, err
    [line] = err.splitlines()
    assert f"port {port}" in line and "in use" in line and "--port" in line, line


def http_get(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """(status, headers) of a GET to ``qtsw web`` with exactly these headers."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        got = conn.getresponse()
        return got.status, dict(got.getheaders())
    finally:
        conn.close()


def http_status(port: int, path: str, headers: dict[str, str]) -> int:
    return http_get(port, path, headers)[0]


@pytest.mark.anyio
async def test_read_only_console_refuses_to_steer_and_waits_for_an_engine(tmp_path: Path) -> None:
    """A tab's console in Pilot: with no engine it says how to start one; every key that
    steers the engine is refused with a note saying read-only, the rest works; it attaches
    by itself once an engine is up, and stays read-only."""
    from pipeline_core.remote import RemoteEngine
    from qtsw_tui.app import build_app
    from qtsw_tui.screens.results import ResultsScreen
    from qtsw_tui.widgets.footer_fit import KeyFooter
    from qtsw_tui.widgets.header import StatusHeader

    root = tmp_path / "root"
    settings = load_settings(root=root, env={})
    settings.ensure_dirs()
    write_samples(settings, days=3, instruments=["ES"], end=date(2025, 11, 26))
    app = build_app(settings, RemoteEngine(settings, reconnect_seconds=0.1, read_only=True),
                    {"web": True, "read_only": True})

    def header() -> str:
        return str(app.query_one("#header", StatusHeader).render())

    def notes() -> list[str]:
        return [str(n.message) for n in app._notifications]

    async def until(cond: Callable[[], object], what: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; header {header()!r}"
            await pilot.pause(0.05)

    engine = None
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await until(lambda: any("No engine is running" in n for n in notes()), "the no-engine note")
            [note] = [n for n in notes() if "No engine is running" in n]
            assert f"qtsw --no-ui --root {root}" in note and "systemd" in note
            assert "web read-only · no engine running" in header()
            assert "r run now" not in header()  # the hint names what works here
            footer = str(app.query_one(KeyFooter).render())
            assert "pause" not in footer and "cancel" not in footer and "help" in footer, footer
            for key in ("r", "t", "a", "m", "p", "c"):
                app.clear_notifications()
                await pilot.press(key)
                assert any(n.startswith("read-only") and "--allow-control" in n for n in notes()), key
            await pilot.press("s")
            await until(lambda: isinstance(app.screen, ResultsScreen), "the results screen")
            await pilot.press("escape")
            engine = start_engine(root)
            await until(lambda: f"web read-only · attached pid {engine.pid}" in header(), "the console to attach")
            assert not any("No engine is running" in n for n in notes()), "the note has gone"
            app.clear_notifications()
            await pilot.press("r")
            assert any(n.startswith("read-only") for n in notes())
            assert app.engine.request_run("manual") is False  # its engine connection refuses too
            assert "read-only" in app.engine.last_refusal
        assert history.read_runs(settings) == []
    finally:
        if engine is not None:
            stop_engine(engine)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- the browser (last in this file: Playwright's sync API holds this thread's event loop while
# its module-wide browser is open, so the Pilot test runs before) ------------------------------------------------------------------------------


class Tab:
    """A page of ``qtsw web`` in Chromium, and the terminal screen it shows."""

    def __init__(self, context: Any, url: str) -> None:
        import pyte

        self.screen = pyte.Screen(80, 24)
        self.stream = pyte.ByteStream(self.screen)
        self.messages: list[Any] = []
        self.logged: list[str] = []  # what the page says in its console (a refused load, an error)
        self.page = context.new_page()
        self.page.on("console", lambda message: self.logged.append(message.text))
        self.page.on("websocket", self._websocket)
        self.page.goto(url, wait_until="domcontentloaded")

    def _websocket(self, ws: Any) -> None:
        size = parse_qs(urlparse(ws.url).query)
        self.screen.resize(int(size["height"][0]), int(size["width"][0]))

        def received(payload: str | bytes) -> None:
            if isinstance(payload, bytes):  # the terminal's output
                self.stream.feed(payload)
            else:  # the server's word to the page (open a URL, a download, a pong)
                self.messages.append(json.loads(payload))

        def sent(payload: str | bytes) -> None:
            msg = json.loads(payload) if isinstance(payload, str) else None
            if msg and msg[0] == "resize":  # the page fits its terminal to the window
                self.screen.resize(msg[1]["height"], msg[1]["width"])

        ws.on("framereceived", received)
        ws.on("framesent", sent)

    def text(self) -> str:
        return "\n".join(self.screen.display)

    def wait_for(self, cond: Callable[[str], object], what: str, timeout: float = DEADLINE) -> str:
        """The screen's text once ``cond`` holds for it."""
        return self.until(lambda: (lambda t: t if cond(t) else None)(self.text()), what, timeout)

    def until(self, cond: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            got = cond()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the page shows:\n{self.text()}")
            self.page.wait_for_timeout(50)  # lets the page's events in

    def press(self, key: str) -> None:
        self.page.focus("textarea.xterm-helper-textarea")  # where a person's typing goes
        self.page.keyboard.press(key)


def chromium_path(playwright: Any) -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    try:
        own = playwright.chromium.executable_path  # Playwright's own download, if installed
    except Exception:  # noqa: BLE001 - no browser of its own
        return None
    return own if own and Path(own).exists() else None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        path = chromium_path(p)
        if path is None:
            pytest.skip("no Chromium: apt-get install chromium (or 'playwright install chromium')")
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1000, "height": 640}, accept_downloads=True)

    def local_only(route: Any) -> None:  # the page asks for a web font elsewhere: not from here
        host = urlparse(route.request.url).hostname
        route.continue_() if host == "127.0.0.1" else route.abort()

    ctx.route("**/*", local_only)
    try:
        yield ctx
    finally:
        ctx.close()


class Served:
    """A data root with sample exports, and on it: ``qtsw web`` read-only and with control,
    both started before the engine (they serve with none, saying so), then the engine."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        # the sample data is old: no stale-data notices over the panes when the market is open
        (root / "qtsw.toml").write_text("[alerts.rules]\nstale_data = false\n")
        self.settings = load_settings(root=root, env={})
        self.settings.ensure_dirs()
        write_samples(self.settings, days=5, instruments=["ES"], end=date(2025, 11, 26))
        self.read_only = listening(launch_web(root))
        self.control = launch_web(root, "--allow-control")
        self.engine = start_engine(root)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    it = Served(tmp_path_factory.mktemp("web") / "root")
    try:
        def serving() -> bool:
            assert it.engine.poll() is None, "the engine exited"
            try:
                Connection(socket_path(it.settings)).close()
                return True
            except NoEngine:
                return False

        poll(serving, "the engine's socket", 30)
        listening(it.control)
        yield it
    finally:
        end(it.read_only)
        end(it.control)
        stop_engine(it.engine)


def test_public_serves_with_a_warning(tmp_path: Path) -> None:
    """--public: served on every address with a warning on stderr; any name reaches it, and a
    console still opens only from a page of its own."""
    root = tmp_path / "root"
    load_settings(root=root, env={}).ensure_dirs()
    web = listening(launch_web(root, "--host", "0.0.0.0", "--public"))
    try:
        port = web.port  # type: ignore[attr-defined]
        assert http_status(port, "/", {"Host": f"qtsw.example:{port}"}) == 200
        upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
        assert http_status(port, "/ws", {**upgrade, "Host": f"qtsw.example:{port}",
                                         "Origin": "http://attacker.example"}) == 403
    finally:
        assert end(web, signal.SIGINT) == 0
    said = web.out.read_text()  # type: ignore[attr-defined]
    [warning] = [line for line in said.splitlines() if "WARNING" in line]
    assert "NO authentication" in warning and f"ssh -L {port}:127.0.0.1:{port}" in warning, warning


def check_origin_and_host(port: int) -> None:
    """A page of another site cannot open a console (its Origin is not this server's), and a
    name other than a loopback one (a DNS-rebinding page) gets nothing."""
    here = f"127.0.0.1:{port}"
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    status, page = http_get(port, "/", {"Host": here})
    assert status == 200
    assert page["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in page["Content-Security-Policy"]
    assert http_status(port, "/", {"Host": f"localhost:{port}"}) == 200  # the end of an ssh -L
    assert http_status(port, "/", {"Host": f"attacker.example:{port}"}) == 403
    assert http_status(port, "/ws", {**upgrade, "Host": here, "Origin": "http://attacker.example"}) == 403
    assert http_status(port, "/ws", {**upgrade, "Host": here}) == 403  # no Origin: no page of ours


STAGES = ("Translator", "Analyzer", "Merger")


def test_browser_console_is_read_only(served: Served, context: Any) -> None:
    settings, engine, web = served.settings, served.engine, served.read_only
    said = web.out.read_text()  # type: ignore[attr-defined]
    assert "no engine is running on data root" in said and f"qtsw --no-ui --root {settings.root}" in said
    try:
        check_origin_and_host(web.port)  # type: ignore[attr-defined]
        tab, other = Tab(context, web.url), Tab(context, web.url)  # two tabs: two consoles
        shown = tab.wait_for(lambda t: f"attached pid {engine.pid}" in t and all(s in t for s in STAGES),
                             "the header and the stage panes")
        assert "web read-only" in shown
        # the page loaded nothing from elsewhere: its only refusal is the web font it asks for
        refused = [m for m in tab.logged if "Content Security Policy" in m]
        assert all("fonts.googleapis.com" in m for m in refused), refused
        tab.press("r")
        tab.wait_for(lambda t: "read-only" in t and "--allow-control" in t, "the refusal")
        assert history.read_runs(settings) == []
        assert Connection(socket_path(settings)).snapshot()["current"] is None
        # navigation still works: the results screen, and back
        tab.press("s")
        tab.wait_for(lambda t: "Matrix" in t and "Equity" in t, "the results screen")
        tab.press("Escape")
        tab.wait_for(lambda t: all(s in t for s in STAGES), "the main screen again")
        # a tab closes: its console ends, the other's stays
        other.wait_for(lambda t: f"attached pid {engine.pid}" in t, "the second tab")
        consoles = poll(lambda: (lambda c: c if len(c) == 2 else None)(consoles_of(web)), "two consoles")
        # each tab's console steps back once it shows the engine, every thread of it
        # (console.attached_nice; the idle policy is not the default)
        lowest = {(min(19, os.nice(0) + 19), os.sched_getscheduler(0))}
        poll(lambda: all(priorities(c) == lowest for c in consoles), "the tabs' consoles to step back")
        tab.page.close()
        [left] = poll(lambda: (lambda c: c if len(c) == 1 else None)([c for c in consoles if alive(c)]),
                      "the closed tab's console to end", 20)
        # qtsw web killed outright: the other console ends too
        end(web, signal.SIGKILL)
        poll(lambda: not alive(left), "the console to end with qtsw web", 20)
    finally:
        end(web)
    assert engine.poll() is None, "the engine runs on"


def test_browser_console_with_control_runs_and_downloads(served: Served, context: Any) -> None:
    settings, engine, web = served.settings, served.engine, served.control
    before = len(history.read_runs(settings))
    try:
        tab = Tab(context, web.url)
        tab.wait_for(lambda t: f"web control · attached pid {engine.pid}" in t, "the console to attach")
        tab.press("r")
        runs = poll(lambda: history.read_runs(settings)[before:], "the engine to record a run")
        assert runs[0]["trigger"] == "manual" and runs[0]["status"] == "success", runs
        # save as CSV: the browser downloads the file; nothing is written on the server's disk
        tab.press("s")
        tab.wait_for(lambda t: all(w in t for w in ("Stream", "Total", "ES1")), "the results of the run")

        def exports() -> list[Path]:
            return sorted(settings.exports_dir.iterdir()) if settings.exports_dir.exists() else []

        before_export = exports()
        with tab.page.expect_download(timeout=DEADLINE * 1000) as started:  # the page asks for it
            tab.press("x")
        download = started.value
        name = download.suggested_filename
        assert name.startswith("results_") and name.endswith(".csv"), name
        year = name.split("_")[1]
        got = Path(download.path()).read_text()
        assert got == qtsw("results", "--root", str(settings.root), "--csv", "--year", year).stdout
        assert "ES1" in got
        assert exports() == before_export, "nothing written on the server"
        [console] = consoles_of(web)
        assert end(web, signal.SIGTERM) == 0  # a tab still open
        poll(lambda: not alive(console), "the console to end with qtsw web", 20)
    finally:
        end(web)
    assert engine.poll() is None, "the engine runs on"
