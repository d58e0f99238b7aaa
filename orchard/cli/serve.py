"""``orchard serve [--host 127.0.0.1] [--port 8080] [--allowed-host NAME]``: the live, read-only dashboard.

Needs the ``dashboard`` extra; without it the command says, in one line, how
to install it. See :mod:`orchard.dashboard`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from orchard.cli._args import PROG, add_common, open_storage

__all__ = ["add_parser", "run"]

INSTALL_HINT = "orchard serve needs the dashboard extra: pip install 'orchard-hpo[dashboard]'"


def add_parser(subparsers: Any) -> None:
    """Register ``serve`` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "serve", help="a live, read-only dashboard of the storage's experiments (JSON under /api)",
        description="Serve a live, read-only dashboard of every experiment in the storage, and its JSON "
                    "API under /api/experiments, until Ctrl-C.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; anything else "
                             "lets whoever reaches it read every experiment)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a host name the dashboard is reached by, besides localhost, 127.0.0.1, [::1] and "
                             "--host (repeatable); requests naming any other host are refused, so a page from "
                             "another site cannot read it through DNS rebinding")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (0: any free port; default 8080)")
    add_common(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve the dashboard until Ctrl-C or SIGTERM; return 0.

    Raises:
        ConfigurationError: the dashboard extra is missing, or --host or --port is not an address
            this machine can listen on (taken by another program, a port below 1024).
        StorageError: the storage cannot be opened.
    """
    _require_extra()
    from orchard.dashboard import bind, is_loopback, serve

    _check_allowed_hosts(args.allowed_host)
    storage = open_storage(args)
    sock = bind(args.host, args.port)
    if not is_loopback(args.host):  # said once the address is known to be served
        print(f"{PROG}: WARNING: serving on {args.host}: everyone who can reach this address can read every "
              "experiment in the storage (there is no login); use --host 127.0.0.1 to keep it local",
              file=sys.stderr, flush=True)

    def announce(url: str) -> None:
        print(f"{PROG}: serving {storage.redacted_uri} (read-only) at {url}", flush=True)

    try:
        serve(storage, sock, announce=announce, allowed_hosts=[args.host, *args.allowed_host])
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a dashboard stops
    finally:
        sock.close()
        storage.close()
    return 0


def _check_allowed_hosts(names: list[str]) -> None:
    """Refuse an ``--allowed-host`` that no ``Host`` header names: empty, or with a scheme, a path or spaces.

    An empty one answered requests that name no host at all; ``http://lab`` allowed the host ``http``.
    """
    from orchard.errors import ConfigurationError

    for name in names:
        if not name.strip() or any(mark in name for mark in "/@?# \t"):
            raise ConfigurationError(f"--allowed-host {name!r} is not a host name; give the name alone, "
                                     "as in the address bar without scheme or path, e.g. --allowed-host lab.example.org")


def _require_extra() -> None:
    from orchard.errors import ConfigurationError

    try:
        import plotly  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ConfigurationError(INSTALL_HINT) from err
