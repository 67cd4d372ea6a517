"""Serving the viewer: `tissuestack view`, :func:`tissuestack.view`, and who may connect.

The viewer is a Bokeh server application (tornado underneath): every browser tab gets its own document (see
:mod:`tissuestack.viewer._app`) while all share one :class:`~tissuestack.viewer._engine.ViewerEngine`, so data
read for one tab is not read again for the next.

Access: bound to a loopback address (the default, ``127.0.0.1``) the viewer is reachable from this machine
only (over an SSH port forward from elsewhere). Bound to any other address it requires a random token: the URL
printed at start carries it (``?token=...``); the first request with the right token sets a cookie for the
session and its websocket, every other request is refused with HTTP 403. Saving is disabled by ``read_only``
and always for stores that are not local directories.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tissuestack._container import SpatialData

__all__ = ["Viewer", "make_server", "view"]

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_COOKIE = "tissuestack_viewer"


def _is_remote(path: str | None) -> bool:
    return path is not None and "://" in str(path) and not str(path).startswith("file://")


def _auth_provider(token: str) -> Any:
    from bokeh.server.auth_provider import AuthProvider

    class TokenAuth(AuthProvider):
        """Accepts requests that carry the token (query argument or the cookie set from it)."""

        @property
        def get_user(self) -> Any:
            def get_user(handler: Any) -> str | None:
                given = handler.get_argument("token", None)
                if given is not None and hmac.compare_digest(given, token):
                    handler.set_cookie(_COOKIE, token, httponly=True, samesite="Strict")
                    return "viewer"
                cookie = handler.get_cookie(_COOKIE)
                if cookie is not None and hmac.compare_digest(cookie, token):
                    return "viewer"
                return None

            return get_user

        @property
        def login_url(self) -> str:
            return "/denied"

    return TokenAuth()


def _denied_handler() -> Any:
    from tornado.web import RequestHandler

    class Denied(RequestHandler):
        def get(self) -> None:
            self.set_status(403)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(
                "403: this tissuestack viewer needs the token of the URL it printed when it started "
                "(http://HOST:PORT/?token=...)\n"
            )

    return Denied


def _document_maker(
    sdata: SpatialData, read_only: bool, width: int, height: int, warm: str | None
) -> Callable[[Any], None]:
    """The function that builds one browser session's document; all sessions share one engine (its caches).
    ``warm``: read what the first view needs now, in a background thread, or not (``None``)."""
    from tissuestack.viewer._app import ViewerSession
    from tissuestack.viewer._engine import ViewerEngine

    read_only = read_only or _is_remote(sdata.path)  # a remote store is never written
    engine = ViewerEngine(sdata)
    if warm == "now":
        engine.warm(width=width, height=height)
    elif warm == "background":
        threading.Thread(target=engine.warm, kwargs={"width": width, "height": height}, daemon=True,
                         name="tissuestack-viewer-warm").start()  # fmt: skip
    title = f"tissuestack viewer — {sdata.path}" if sdata.path else "tissuestack viewer"

    def make_document(doc: Any) -> None:
        ViewerSession(doc, engine, read_only=read_only, width=width, height=height, title=title)

    return make_document


def make_server(
    sdata: SpatialData,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    read_only: bool = False,
    token: str | None = None,
    io_loop: Any = None,
    width: int = 900,
    height: int = 700,
    warm: str | None = "background",
) -> tuple[Any, str]:
    """A started-but-not-running Bokeh server for ``sdata`` and the URL to open (with the token when one is
    needed). ``port=0`` picks a free port. ``warm``: read what the first view needs (point coordinates and
    colours, polygon rings, extent) before returning (``"now"``), in a background thread (``"background"``:
    the first page may then wait for it), or not at all (``None``)."""
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.server.server import Server

    make_document = _document_maker(sdata, read_only, width, height, warm)
    loopback = host in _LOOPBACK
    if not loopback and token is None:
        token = secrets.token_urlsafe(24)
    kwargs: dict[str, Any] = {}
    if token is not None:
        kwargs["auth_provider"] = _auth_provider(token)
        kwargs["extra_patterns"] = [("/denied", _denied_handler())]
    server = Server(
        {"/": Application(FunctionHandler(make_document))},
        address=host,
        port=port,
        io_loop=io_loop,
        allow_websocket_origin=["*"] if not loopback else None,
        websocket_max_message_size=256 * 1024 * 1024,
        **kwargs,
    )
    server.start()
    real_port = server.port
    if real_port == 0:  # resolved from the listening socket
        real_port = next(iter(server._http._sockets.values())).getsockname()[1]
    shown = "localhost" if loopback else (host if host not in ("0.0.0.0", "::") else _hostname())
    url = f"http://{shown}:{real_port}/"
    if token is not None:
        url += f"?token={token}"
    return server, url


def _hostname() -> str:
    import socket

    return socket.gethostname()


@dataclass
class Viewer:
    """A viewer served in a background thread (from :func:`tissuestack.view` outside Jupyter)."""

    url: str
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        """Stop serving."""
        loop = self.server.io_loop
        loop.add_callback(self.server.stop)
        loop.add_callback(loop.stop)
        self.thread.join(timeout=10)

    def __repr__(self) -> str:
        return f"Viewer({self.url})"


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def view(
    sdata: SpatialData,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    read_only: bool = False,
    open_browser: bool | None = None,
    notebook: bool | None = None,
    width: int = 900,
    height: int = 700,
) -> Viewer | None:
    """Show ``sdata`` in the interactive viewer.

    In Jupyter (``notebook=None`` detects it) the viewer appears in the output cell. Elsewhere it is served in a
    background thread and a :class:`Viewer` with its ``url`` is returned (``viewer.stop()`` ends it); the
    browser is opened when ``open_browser`` (default: when not in a notebook and a display is available).
    See ``tissuestack view --help`` for serving a store from the shell.
    """
    try:
        import bokeh  # noqa: F401
    except ImportError as err:
        raise ImportError(
            'the viewer needs bokeh: pip install "tissuestack[viewer]"'
        ) from err
    if notebook is None:
        notebook = _in_notebook()
    if notebook:
        from bokeh.io import output_notebook, show

        output_notebook(hide_banner=True)
        show(_document_maker(sdata, read_only, width, height, warm="background"))
        return None
    ready = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        import asyncio

        from tornado.ioloop import IOLoop

        asyncio.set_event_loop(asyncio.new_event_loop())
        loop = IOLoop.current()
        try:
            box["server"], box["url"] = make_server(
                sdata, host=host, port=port, read_only=read_only, io_loop=loop, width=width, height=height
            )
        except BaseException as err:
            box["error"] = err
            ready.set()
            return
        ready.set()
        loop.start()

    thread = threading.Thread(target=run, name="tissuestack-viewer", daemon=True)
    thread.start()
    ready.wait(60)
    if "error" in box:
        raise box["error"]
    viewer = Viewer(box["url"], box["server"], thread)
    if open_browser:
        import webbrowser

        webbrowser.open(viewer.url)
    return viewer
