"""The web application: pages, their scripts, and the JSON API (Starlette, read-only).

=====================================  ==============================================
path                                   what
=====================================  ==============================================
``/``                                  the experiments list (a page)
``/experiments/{name}``                one experiment (a page)
``/api/experiments``                   every experiment with its counts by status
``/api/experiments/{name}``            one experiment: summary, workers, rungs, front
                                       (``?since=V``: no front if nothing changed after V)
``/api/experiments/{name}/trials``     its trials, a page of at most ``limit`` (default 2,000) rows;
                                       ``?since=V`` only those changed after version V,
                                       ``&after=N`` those numbered above N (the next page)
``/static/…``                          the pages' scripts and styles, and plotly.js (gzipped
                                       to a client that takes it; 304 to one that has it)
=====================================  ==============================================

An experiment's name travels percent-encoded as one segment of the path (``a%2Fb``
for ``a/b``): routes match the path as sent and the handler decodes the name, so a
name holding ``/``, ``?``, ``#`` or ``%`` (one a storage written by another program
may hold) reaches its own experiment.

Every method but ``GET`` (and ``HEAD``) is refused with 405 before routing, so
nothing served can change the storage. A request naming a host the dashboard
does not serve (its ``Host`` header) is refused with 400 before routing too: a
page from ``http://evil.example:PORT`` whose name an attacker pointed at
127.0.0.1 (DNS rebinding) reads nothing. Pages load nothing from another origin:
the content security policy allows only this server, and plotly.js comes from
the installed ``plotly`` package.
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import logging
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from orchard.dashboard._payloads import RowCache, experiment_detail, experiment_summary, to_json
from orchard.dashboard._views import ExperimentView, StorageView
from orchard.errors import OrchardError

__all__ = ["LOCAL_NAMES", "build_app", "host_name", "plotly_bundle"]

STATIC = Path(__file__).with_name("static")
_SAFE_METHODS = ("GET", "HEAD")
_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
           "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'")
_NAMED_PREFIXES = ("/experiments/", "/api/experiments/")  # paths holding an experiment's name
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
PAGE_ROWS, MAX_PAGE_ROWS = 2_000, 20_000  # rows of trials per answer: by default, and at most
logger = logging.getLogger(__name__)


def plotly_bundle() -> Path:
    """The ``plotly.min.js`` shipped inside the installed ``plotly`` package.

    Raises:
        ConfigurationError: plotly is missing or ships no bundle.
    """
    from orchard.errors import ConfigurationError

    try:
        import plotly
    except ImportError as err:
        raise ConfigurationError("orchard serve needs plotly: pip install 'orchard-hpo[dashboard]'") from err
    bundle = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not bundle.is_file():
        raise ConfigurationError(f"the installed plotly has no {bundle}; reinstall it: pip install -U plotly")
    return bundle


def host_name(header: str) -> str:
    """The host name of a ``Host`` header, lower-case, without its port or IPv6 brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header[1:]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class ServedHosts:
    """ASGI middleware refusing with 400 every request whose ``Host`` header names a host not served."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((value.decode("latin-1") for key, value in scope.get("headers", []) if key == b"host"), "")
        if host_name(header) not in self.allowed:
            refusal = PlainTextResponse(
                f"orchard serve does not serve the host {header[:100]!r}; it answers only "
                f"{', '.join(sorted(self.allowed))} (add a name with --allowed-host)\n", status_code=400)
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


class EncodedNames:
    """ASGI middleware routing the experiment paths on the path as sent, its name still percent-encoded.

    The server hands the path decoded, where ``/experiments/a%2Fb`` has become
    ``/experiments/a/b``, which no route of one name matches.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw is not None:
            sent = raw.decode("latin-1")
            if sent.startswith(_NAMED_PREFIXES):
                scope = {**scope, "path": sent}
        await self.app(scope, receive, send)


class ReadOnly:
    """ASGI middleware refusing every HTTP method but GET and HEAD with 405, and adding safety headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] not in _SAFE_METHODS:
            refusal = PlainTextResponse("orchard serve is read-only: only GET is allowed\n", status_code=405,
                                        headers={"Allow": ", ".join(_SAFE_METHODS)})
            await refusal(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", _POLICY.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def build_app(view: StorageView, allowed_hosts: Iterable[str] = ()) -> ASGIApp:
    """The dashboard application reading through ``view``.

    Args:
        view: the folded storage to serve; its storage is never written.
        allowed_hosts: host names (or addresses) answered besides :data:`LOCAL_NAMES`; a request
            whose ``Host`` header names any other host is refused with 400.

    Returns:
        An ASGI application (Starlette, wrapped in :class:`EncodedNames`, :class:`ReadOnly` and
        :class:`ServedHosts`).

    Raises:
        ConfigurationError: plotly's bundle cannot be found.
    """
    bundle = plotly_bundle()
    uri = view.storage.redacted_uri
    rows = RowCache()

    def experiments(request: Request) -> Response:
        with view.reading():
            return _json(to_json([experiment_summary(v) for v in view.experiments()]))

    def experiment(request: Request) -> Response:
        since = _int_param(request, "since")
        return _with_experiment(view, request, lambda v: to_json(experiment_detail(v, uri, since)))

    def trials(request: Request) -> Response:
        since, after = _int_param(request, "since"), _int_param(request, "after")
        limit = min(_int_param(request, "limit") or PAGE_ROWS, MAX_PAGE_ROWS)
        return _with_experiment(view, request, lambda v: rows.trial_rows(v, since, after, limit))

    routes = [
        Route("/", _page("index.html")),
        Route("/experiments/{name}", _page("experiment.html")),
        Route("/api/experiments", experiments),
        Route("/api/experiments/{name}", experiment),
        Route("/api/experiments/{name}/trials", trials),
        Route("/static/plotly.min.js", _bundle_route(bundle)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={OrchardError: _storage_failed})
    allowed = frozenset(LOCAL_NAMES) | {host_name(host) for host in allowed_hosts}
    return ServedHosts(ReadOnly(EncodedNames(app)), allowed)


def _bundle_route(bundle: Path) -> Callable[[Request], Response]:
    """plotly.js (4.8 MB): gzipped (1.4 MB) to a client that takes gzip, compressed once and kept; and
    ``304 Not Modified`` to one that has it (``If-None-Match``), so a reload on a slow link costs nothing."""
    stat = bundle.stat()
    tag = hashlib.md5(f"{stat.st_mtime}-{stat.st_size}".encode(), usedforsecurity=False).hexdigest()
    modified = email.utils.formatdate(stat.st_mtime, usegmt=True)
    zipped: list[bytes] = []
    lock = threading.Lock()

    def serve_bundle(request: Request) -> Response:
        gzipped = _takes_gzip(request.headers.get("accept-encoding", ""))
        etag = f'"{tag}-gzip"' if gzipped else f'"{tag}"'
        headers = {"ETag": etag, "Last-Modified": modified, "Vary": "Accept-Encoding",
                   "Cache-Control": "no-cache"}  # the browser keeps its copy and asks each time if it holds
        asked = request.headers.get("if-none-match", "")
        known = {value.strip().removeprefix("W/") for value in asked.split(",")}
        if etag in known or "*" in known:
            return Response(status_code=304, headers=headers)
        if not gzipped:  # streamed from the file, with ranges
            return FileResponse(bundle, media_type="text/javascript", headers=headers)
        with lock:
            if not zipped:
                zipped.append(gzip.compress(bundle.read_bytes(), compresslevel=6, mtime=0))
        return Response(zipped[0], media_type="text/javascript",
                        headers={**headers, "Content-Encoding": "gzip"})

    return serve_bundle


def _takes_gzip(accepted: str) -> bool:
    """Whether an ``Accept-Encoding`` header takes gzip (``gzip``, ``gzip;q=0.5``; not ``gzip;q=0``)."""
    for coding in accepted.lower().split(","):
        name, _, params = coding.partition(";")
        if name.strip() == "gzip":
            quality = params.strip().removeprefix("q=").strip() if params.strip().startswith("q=") else "1"
            try:
                return float(quality) > 0
            except ValueError:
                return False
    return False


def _page(name: str) -> Callable[[Request], Response]:
    path = STATIC / name

    def page(request: Request) -> Response:
        return FileResponse(path, media_type="text/html", headers={"Cache-Control": "no-store"})

    return page


def _with_experiment(view: StorageView, request: Request, build: Callable[[ExperimentView], str]) -> Response:
    """Answer with ``build(view of the named experiment)``, a JSON text built while the view holds still."""
    name = urllib.parse.unquote(request.path_params["name"], errors="replace")
    with view.reading():
        found = view.experiment(name)
        if found is None:
            return _json(to_json({"error": f"no experiment named {name!r} in this storage; see /api/experiments"}),
                         404)
        return _json(build(found))


def _int_param(request: Request, key: str) -> int:
    try:
        return max(int(request.query_params.get(key, "0")), 0)
    except ValueError:
        return 0


def _json(body: str, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json", headers={"Cache-Control": "no-store"})


def _storage_failed(request: Request, err: Exception) -> Response:
    message = " ".join(str(err).split()) or type(err).__name__
    logger.warning("reading the storage failed: %s", message)
    return _json(to_json({"error": message}), 503)
