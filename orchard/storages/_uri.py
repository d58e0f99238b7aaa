"""Parsing and redaction of storage URIs (no driver imports here)."""

from __future__ import annotations

import os
import re
import urllib.parse
from typing import Any

from orchard.errors import ConfigurationError

__all__ = [
    "UNEXPANDED", "lend_password", "names_storage", "password_of", "pickle_file", "pickle_path", "redact",
    "redact_all", "split_options",
]

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/*")
#: A ``$NAME`` or ``${NAME}`` a shell would have expanded: in a path from a config file, a variable or
#: single quotes, nothing expands it, and a folder named ``$SCRATCH`` is made in each worker's directory.
UNEXPANDED = re.compile(r"\$(\{[A-Za-z_]\w*\}|[A-Za-z_]\w*)")


def _user_info(uri: str) -> tuple[int, int] | None:
    """Where the password of ``uri`` lies (start, end), or ``None`` when it has none.

    Read the way a careless URI still hides it: the user-info ends at the *last* ``@``, so an
    unescaped ``@`` or ``/`` in the password (``mongodb://u:p@ss@host``) stays inside it, and a
    scheme typed wrong (``mongodb:/``, ``mongodb//``) or left out (``u:pass@host``) does not
    expose it. A ``:`` of a host's port before an ``@`` in the options makes it hide more than
    the password: never less.
    """
    at = uri.rfind("@")
    if at < 0:
        return None
    scheme = _SCHEME.match(uri)
    start = scheme.end() if scheme and scheme.end() <= at else 0
    colon = uri.find(":", start, at)
    if colon >= 0:
        return colon + 1, at
    escaped = uri.lower().find("%3a", start, at)  # "user:pass" escaped whole (quote_plus): the driver wants a password
    if escaped >= 0:
        return escaped + 3, at
    if scheme and "/" not in scheme.group() and start:  # "user:secret@host": read as a scheme "user:"
        return start, at
    return None


#: Options whose value is a secret: ``tlsCertificateKeyFilePassword``, ``authMechanismProperties``
#: (it may hold ``AWS_SESSION_TOKEN``), and ``password=`` written as an option by mistake.
_SECRET_OPTION = re.compile(r"(?P<key>[?&;](?:[^=&;#]*(?:password|secret|token)[^=&;#]*|authmechanismproperties)=)"
                            r"(?P<value>[^&;#]*)", re.IGNORECASE)


def redact(uri: str) -> str:
    """Return ``uri`` with the password of its user-info, and the value of every option that holds a
    secret (a password, a token), replaced by ``***``."""
    found = _user_info(uri)
    shown = uri if found is None else uri[:found[0]] + "***" + uri[found[1]:]
    return _SECRET_OPTION.sub(lambda m: m.group("key") + "***", shown)


def redact_all(value: Any) -> Any:
    """``value`` with the password of every URI in it hidden (a warm-start source names its storage)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_all(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_all(item) for item in value]
    return value


def password_of(uri: str) -> str:
    """The text :func:`redact` hides in ``uri`` (``""`` when it hides nothing)."""
    found = _user_info(uri)
    return "" if found is None else uri[found[0]:found[1]]


def _account(uri: str) -> tuple[str, str, str]:
    """The scheme, ``user:***@hosts`` and authentication database of ``uri`` (case-blind scheme and hosts)."""
    base, options = split_options(redact(uri))
    scheme, _, rest = base.partition("://")
    hosts, _, database = rest.partition("/")
    source = next((value for key, value in options.items() if key.lower() == "authsource"), None)
    user, at, names = hosts.rpartition("@")
    return scheme.lower(), user + at + names.lower(), source or database or "admin"


def lend_password(uri: str, donor: str) -> str:
    """``uri`` with its hidden password (``***``) taken from ``donor`` when both log the same user in to the
    same hosts (scheme, user, hosts and authentication database alike); else ``uri`` as it is.

    A warm-start source is stored with its password hidden; the experiment's own storage URI,
    given again to every worker, holds the password of a source kept on the same server.
    """
    if password_of(uri) != "***" or not password_of(donor) or _account(uri) != _account(donor):
        return uri
    start, end = _user_info(uri) or (0, 0)
    return uri[:start] + password_of(donor) + uri[end:]


def split_options(uri: str) -> tuple[str, dict[str, str]]:
    """Split ``base?key=value&...`` into the base and a dict of its query options."""
    base, _, query = uri.partition("?")
    options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    return base, options


def pickle_file(uri: str) -> tuple[str, dict[str, str]]:
    """The file path and query options of the pickle storage ``uri``.

    Raises:
        ConfigurationError: the URI names no file, or a folder (a path ending with a slash).
    """
    path, options = pickle_path(uri) or split_options(uri)
    if not path or path.endswith(("/", os.sep)):  # a folder would become a file of its name
        what = "a folder; give a file in it," if path else "no file; use"
        example = f"pickle://{path or 'runs/'}orchard.pkl"
        raise ConfigurationError(f"storage URI {uri!r} names {what} e.g. {example}")
    return path, options


def pickle_path(uri: str) -> tuple[str, dict[str, str]] | None:
    """The file path and query options of a pickle storage, or ``None`` when ``uri`` names another kind.

    A pickle storage is ``pickle://PATH[?options]`` (any path; the scheme in any case) or a
    plain ``PATH.pkl[?options]``; ``pickle:///abs.pkl`` gives the absolute path ``/abs.pkl``.
    """
    base, options = split_options(uri)
    scheme, sep, rest = base.partition("://")
    if sep:
        return (rest, options) if scheme.lower() == "pickle" else None
    return (base, options) if base.endswith(".pkl") else None


def names_storage(text: str) -> bool:
    """Whether ``text`` reads as a storage: a URI (``SCHEME://…``) or a pickle file's path (``….pkl``)."""
    return "://" in text or pickle_path(text) is not None
