"""Parsing and redaction of storage URIs (no driver imports here)."""

from __future__ import annotations

import re
import urllib.parse

__all__ = ["redact", "split_options"]

_PASSWORD = re.compile(r"(?P<head>^[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@]*:)(?P<secret>[^@/]*)(?P<tail>@)")


def redact(uri: str) -> str:
    """Return ``uri`` with the password of its user-info replaced by ``***``."""
    return _PASSWORD.sub(lambda m: m.group("head") + "***" + m.group("tail"), uri)


def split_options(uri: str) -> tuple[str, dict[str, str]]:
    """Split ``base?key=value&...`` into the base and a dict of its query options."""
    base, _, query = uri.partition("?")
    options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    return base, options
