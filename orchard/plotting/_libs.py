"""Importing the optional plotting libraries, with the install hint when they are missing."""

from __future__ import annotations

from collections.abc import Sequence
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


def plotly_text(texts: Sequence[str]) -> list[str]:
    """``texts`` made literal for Plotly, which renders a subset of HTML (links, bold) in hover text.

    A param string such as ``<a href=...>`` is shown as typed, never as a working link.
    """
    import html

    return [html.escape(text, quote=False) for text in texts]
