"""``qtsw web``: the console in a browser, attached to a real headless engine.

The browser tests drive headless Chromium with Playwright: keys go in through the page (the
terminal's text area, as a person types), and the screen is read from the bytes the page
receives over its WebSocket — the same bytes its terminal draws — by a terminal emulator
(pyte) sized as the page's terminal. Everything runs on 127.0.0.1; the browser is kept off any
other address. Waits poll with a deadline.
"""

from __future__ import annotations

import json
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
from processes import alive, children_of
from test_control import clean_env, start_engine, stop_engine

from pipeline_core import history
from pipeline_core.control import Connection, NoEngine, socket_path
from pipeline_core.sample import write_samples
from pipeline_core.settings import Settings, load_settings

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
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_web(root: Path, *extra: str) -> subprocess.Popen[str]:
    """``qtsw web`` on a free port, once it accepts connections; ``.url``, ``.out`` (its output)."""
    port = free_port()
    out = root.parent / f"web-{port}.out"
    with open(out, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "qtsw_tui", "web", "--root", str(root),
                                 "--port", str(port), *extra],
                                stdout=fh, stderr=subprocess.STDOUT, text=True, env=clean_env())
    proc.url = f"http://127.0.0.1:{port}/"  # type: ignore[attr-defined]
    proc.out = out  # type: ignore[attr-defined]

    def up() -> bool:
        assert proc.poll() is None, f"qtsw web exited {proc.returncode}: {out.read_text()}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
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


# --- the browser ------------------------------------------------------------------------------


class Tab:
    """A page of ``qtsw web`` in Chromium, and the terminal screen it shows."""

    def __init__(self, context: Any, url: str) -> None:
        import pyte

        self.screen = pyte.Screen(80, 24)
        self.stream = pyte.ByteStream(self.screen)
        self.messages: list[Any] = []
        self.page = context.new_page()
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
    ctx = browser.new_context(viewport={"width": 1200, "height": 800}, accept_downloads=True)

    def local_only(route: Any) -> None:  # the page asks for a web font elsewhere: not from here
        host = urlparse(route.request.url).hostname
        route.continue_() if host == "127.0.0.1" else route.abort()

    ctx.route("**/*", local_only)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture(scope="module")
def engine_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, subprocess.Popen[str]]]:
    root = tmp_path_factory.mktemp("web") / "root"
    settings = load_settings(root=root, env={})
    settings.ensure_dirs()
    write_samples(settings, days=5, instruments=["ES"], end=date(2025, 11, 26))
    proc = start_engine(root)
    try:
        def serving() -> bool:
            assert proc.poll() is None, "the engine exited"
            try:
                Connection(socket_path(settings)).close()
                return True
            except NoEngine:
                return False

        poll(serving, "the engine's socket", 30)
        yield settings, proc
    finally:
        stop_engine(proc)


STAGES = ("Translator", "Analyzer", "Merger")


def test_browser_console_is_read_only(engine_root: tuple[Settings, Any], context: Any) -> None:
    settings, engine = engine_root
    web = start_web(settings.root)
    try:
        tab, other = Tab(context, web.url), Tab(context, web.url)  # two tabs: two consoles
        shown = tab.wait_for(lambda t: f"attached pid {engine.pid}" in t and all(s in t for s in STAGES),
                             "the header and the stage panes")
        assert "web read-only" in shown
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
        tab.page.close()
        [left] = poll(lambda: (lambda c: c if len(c) == 1 else None)([c for c in consoles if alive(c)]),
                      "the closed tab's console to end", 20)
        # qtsw web killed outright: the other console ends too
        end(web, signal.SIGKILL)
        poll(lambda: not alive(left), "the console to end with qtsw web", 20)
    finally:
        end(web)
    assert engine.poll() is None, "the engine runs on"


def test_browser_console_with_control_runs_and_downloads(engine_root: tuple[Settings, Any],
                                                         context: Any) -> None:
    settings, engine = engine_root
    before = len(history.read_runs(settings))
    web = start_web(settings.root, "--allow-control")
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
