"""Experiment names, worker identities, and folder names derived from names and ids.

An experiment's name is also the name of its folder of trial folders
(``./orchard-runs/NAME`` by default), so a name must be one harmless path
component. A valid name:

- is 1 to :data:`MAX_NAME_LENGTH` characters long;
- uses only ASCII letters, digits and ``. _ - + = @``;
- starts with a letter, a digit or ``_`` (so never ``.``, ``..`` or a leading ``-``).

Anything that becomes a folder from a stored value (a name, a trial id) goes
through :func:`folder_in`, which refuses a value that would leave its base folder
even if the storage was written by something else.

A worker's identity, written into every reservation it holds, is
``host:pid:uuid`` (:func:`worker_name`): the host and pid say where it runs,
the uuid tells apart two workers of one process.
"""

from __future__ import annotations

import os
import re
import socket
import uuid

from orchard.errors import ConfigurationError

__all__ = ["MAX_NAME_LENGTH", "NAME_RULE", "check_experiment_name", "folder_in", "worker_name"]

MAX_NAME_LENGTH = 128
NAME_RULE = (f"1 to {MAX_NAME_LENGTH} characters among ASCII letters, digits and . _ - + = @, "
             "starting with a letter, a digit or _")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+=@-]*")


def check_experiment_name(name: object) -> str:
    """Return ``name`` if it is a valid experiment name.

    Args:
        name: the name given by the user.

    Returns:
        The name, unchanged.

    Raises:
        ConfigurationError: the name is empty, too long, or holds a character outside the
            documented set (``/``, spaces, a leading ``.`` or ``-``...).
    """
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"experiment name {name!r} is empty or not text; use {NAME_RULE}")
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigurationError(
            f"experiment name {name[:20]!r}... is {len(name)} characters long; use {NAME_RULE}"
        )
    if not _NAME.fullmatch(name):
        raise ConfigurationError(f"experiment name {name!r} is not allowed; use {NAME_RULE}")
    return name


def folder_in(base: str, part: str) -> str:
    """Return ``base/part``, where ``part`` must be one plain path component.

    Args:
        base: the parent folder.
        part: a name or id that becomes a folder name.

    Returns:
        The joined path.

    Raises:
        ConfigurationError: ``part`` is empty, ``.``/``..``, absolute, or holds a path separator.
    """
    separators = {os.sep, os.altsep or os.sep, "\0"}
    if not part or part in (".", "..") or any(sep in part for sep in separators):
        raise ConfigurationError(
            f"{part!r} cannot be used as a folder name under {base}: it is empty or leaves the folder; "
            "rename the experiment (see orchard.naming) or check the storage for tampered records"
        )
    return os.path.join(base, part)


def worker_name(token: str | None = None) -> str:
    """A unique worker identity: ``host:pid:uuid`` (``host:pid:TOKEN`` with a token of the caller's)."""
    return f"{socket.gethostname()}:{os.getpid()}:{token or uuid.uuid4().hex[:8]}"
