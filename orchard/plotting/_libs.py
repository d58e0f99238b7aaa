"""Importing the optional plotting libraries, with the install hint when they are missing."""

from __future__ import annotations

from typing import Any

from orchard.errors import ConfigurationError

__all__ = ["INSTALL_HINT", "require"]

INSTALL_HINT = "pip install 'orchard-hpo[plot]'"


def require(module: str) -> Any:
    """Import ``module``; raise ``ConfigurationError`` with the install hint if it is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise ConfigurationError(f"plotting needs {top}, which is not installed: {INSTALL_HINT}") from None
