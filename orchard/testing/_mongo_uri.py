"""Pointing a MongoDB URI at another database (tests and benchmarks use one database each)."""

from __future__ import annotations

import urllib.parse

__all__ = ["with_database"]


def with_database(uri: str, database: str) -> str:
    """Return ``uri`` naming ``database``, keeping its options and credentials valid.

    When the URI carries credentials and no ``authSource``, the database in
    its path was also the authentication database; it is kept as
    ``authSource`` so the user still authenticates where it was defined.
    """
    parts = urllib.parse.urlsplit(uri)
    options = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    if "@" in parts.netloc and "authSource" not in options:
        options["authSource"] = parts.path.strip("/") or "admin"
    query = urllib.parse.urlencode(options)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + database, query, parts.fragment))
