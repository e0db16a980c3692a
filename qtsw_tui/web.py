"""``qtsw web``: the console in a browser, served with textual-serve.

Each browser tab gets its own console process (:mod:`qtsw_tui.webconsole`), attached to the
engine running on the data root through its control socket — never a second engine. The web
server itself takes no lock and runs no stage.

What a security reviewer asks of a web port, and what this one does:

- It listens on 127.0.0.1 unless told otherwise; any other address needs ``--public`` and is
  served with a warning: there is no authentication (``ssh -L`` is the safer way in).
- Read-only unless ``--allow-control``: a tab's console refuses run, stage, pause and cancel.
- A page from another site cannot drive a console: the WebSocket that starts a tab's console
  must come from a page of this server (its ``Origin`` is the address it was served from),
  and without ``--public`` only requests addressed to a loopback name are answered (a
  DNS-rebinding page reaches 127.0.0.1 under its own name, and is refused).
- The page loads nothing from elsewhere and may not be framed by another site
  (:data:`PAGE_HEADERS`).
- At most :data:`MAX_TABS` consoles at once; each ends with its tab, and all of them end when
  ``qtsw web`` does (SIGTERM/SIGINT, or the process killed: each console asks the kernel for
  SIGTERM when its parent goes).

This module does not import Textual (the tab's console does).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import logging
import shlex
import socket
import sys
from typing import Any

from pipeline_core.usage import EXIT_USAGE, UsageParser, command_settings, root_options

# The page loads only from this server (textual-serve's page also asks for a web font from
# elsewhere: refused, no request leaves), and no other site may frame it (a framed console
# would take keys a person meant for that site: clickjacking).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
MAX_TABS = 16  # consoles (processes) open at once; one more tab is refused
SHUTDOWN_SECONDS = 10.0  # how long stopping waits for the tabs' consoles to end

DESCRIPTION = """\
The qtsw console in a web browser. Each browser tab opens a console attached to the engine
running on the data root (start the engine with 'qtsw --no-ui' or the qtsw systemd service;
without one, the tab says so and attaches once it is up). 'qtsw web' never runs the pipeline.

The console in the browser is read-only: it shows everything, but run, stage, pause and cancel
are refused unless 'qtsw web' is started with --allow-control.

There is no login. It listens on 127.0.0.1 only; to reach it from another machine, forward
the port over SSH there ('ssh -L 8000:127.0.0.1:8000 HOST', then open
http://127.0.0.1:8000). --public listens on other addresses, for anyone who can reach them."""

EPILOG = """\
exit codes: 0 stopped (Ctrl+C or SIGTERM), 4 could not start (bad arguments or settings, a
missing data root, another address without --public, the port in use)"""


def build_parser() -> argparse.ArgumentParser:

    p = UsageParser(prog="qtsw web", description=DESCRIPTION, epilog=EPILOG,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    root_options(p)
    p.add_argument("--host", default="127.0.0.1", metavar="ADDRESS",
                   help="address to listen on (default: 127.0.0.1, this machine only); "
                   "any other needs --public")
    p.add_argument("--port", type=_port, default=8000, metavar="N", help="port (default: 8000)")
    p.add_argument("--public", action="store_true",
                   help="allow an address other machines can reach; there is no authentication")
    p.add_argument("--allow-control", action="store_true",
                   help="let the browser consoles run, pause and cancel (default: read-only)")
    return p


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (1-65535): {port}")
    return port


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1): only this machine reaches it."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def bind_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (one line), or None when it can."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot listen on {host}: {exc.strerror}"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return (f"port {port} on {host} is in use (another 'qtsw web'?): "
                            "choose another with --port")
                return f"cannot listen on {host} port {port}: {exc.strerror or exc}"
    return None


def console_command(args: argparse.Namespace, settings: Any) -> str:
    """The shell command textual-serve runs for each tab (``exec``: the console is the server's
    own child, so that it ends with it)."""
    words = [sys.executable, "-m", "qtsw_tui.webconsole", "--root", str(settings.root)]
    if args.config:
        words += ["--config", str(settings.config_file or args.config)]
    if args.allow_control:
        words.append("--allow-control")
    return "exec " + shlex.join(words)


def engine_running(settings: Any) -> bool:
    from pipeline_core.control import Connection, ControlError, socket_path

    try:
        Connection(socket_path(settings), timeout=5).close()
    except (ControlError, OSError):
        return False
    return True


def _say(text: str, *, err: bool = False) -> None:
    print(f"qtsw web: {text}", file=sys.stderr if err else sys.stdout, flush=True)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not is_loopback(args.host) and not args.public:
        _say(f"refusing to listen on {args.host}: other machines could reach a console with no "
             f"login; use 'ssh -L {args.port}:127.0.0.1:{args.port} HOST' instead, or add --public",
             err=True)
        return EXIT_USAGE
    settings = command_settings(args.root, args.config)
    if settings is None:
        return EXIT_USAGE
    problem = bind_problem(args.host, args.port)
    if problem:
        _say(problem, err=True)
        return EXIT_USAGE
    if not is_loopback(args.host):
        _say(f"WARNING: listening on {args.host} port {args.port} with NO authentication: anyone "
             "who can reach it sees the console"
             + (" and can run, pause and cancel the pipeline" if args.allow_control else "")
             + f". Prefer the default 127.0.0.1 and 'ssh -L {args.port}:127.0.0.1:{args.port} HOST'.",
             err=True)
    if not engine_running(settings):
        _say(f"no engine is running on data root {settings.root} yet: the consoles say so and "
             f"attach once one is up (start it with 'qtsw --no-ui --root {settings.root}' or "
             "the qtsw systemd service)")
    server = make_server(args, settings)
    server.serve()
    return 0


def make_server(args: argparse.Namespace, settings: Any) -> Any:
    from aiohttp import web
    from textual_serve.server import Server

    class WebServer(Server):
        """textual-serve's server, with the checks a console without login needs."""

        def __init__(self) -> None:
            super().__init__(console_command(args, settings), host=args.host, port=args.port,
                             title=f"qtsw · {settings.root}")
            self.tabs: set[asyncio.Task[Any]] = set()

        def initialize_logging(self) -> None:
            # plain lines on stderr (the journal when it runs as a service): requests, tabs
            logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                                format="qtsw web: %(message)s")

        def _refusal(self, request: web.Request, *, websocket: bool = False) -> str | None:
            host = request.url.host or ""
            if not args.public and not is_loopback(host):
                return f"this console answers only at a loopback address, not {host}"
            if websocket:
                origin = request.headers.get("Origin", "")
                if origin.lower() != f"{request.scheme}://{request.host}".lower():
                    return "a console opens only from a page of this server"
            return None

        async def handle_index(self, request: web.Request) -> Any:
            refusal = self._refusal(request)
            if refusal:
                raise web.HTTPForbidden(text=refusal)
            # the page's links go back to the address the browser used (127.0.0.1, or the
            # local end of an ssh -L tunnel on another port); set and read with no await between
            self.public_url = f"{request.scheme}://{request.host}"
            page = await super().handle_index(request)
            page.headers.update(PAGE_HEADERS)
            return page

        async def handle_download(self, request: web.Request) -> Any:
            refusal = self._refusal(request)
            if refusal:
                raise web.HTTPForbidden(text=refusal)
            return await super().handle_download(request)

        async def handle_websocket(self, request: web.Request) -> Any:
            refusal = self._refusal(request, websocket=True)
            if refusal:
                logging.getLogger("textual-serve").warning("refused a console: %s", refusal)
                raise web.HTTPForbidden(text=refusal)
            if len(self.tabs) >= MAX_TABS:
                raise web.HTTPServiceUnavailable(text=f"{MAX_TABS} consoles are open: close one")
            task = asyncio.current_task()
            assert task is not None
            self.tabs.add(task)
            try:
                return await super().handle_websocket(request)
            finally:
                self.tabs.discard(task)

        async def on_startup(self, app: web.Application) -> None:
            host = f"[{args.host}]" if ":" in args.host else args.host
            mode = ("with control: the consoles can run, pause and cancel" if args.allow_control
                    else "read-only (--allow-control lets the consoles run, pause and cancel)")
            _say(f"the console of data root {settings.root} at http://{host}:{args.port}/ "
                 f"— {mode}; Ctrl+C stops it")

        async def on_shutdown(self, app: web.Application) -> None:
            # each tab's handler ends its console (textual-serve tells it to quit and waits)
            tabs = list(self.tabs)
            for task in tabs:
                task.cancel()
            if tabs:
                await asyncio.wait(tabs, timeout=SHUTDOWN_SECONDS)

    return WebServer()
