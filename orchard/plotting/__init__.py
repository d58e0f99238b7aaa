"""Figures of an experiment: regret, parallel coordinates, the worker timeline and the rungs.

Each builder (:func:`regret`, :func:`parallel`, :func:`timeline`, :func:`rungs`) is a pure
function of a list of trials that returns a small, backend-neutral figure
record. :func:`save` draws the record with the library its file suffix asks
for:

========  ==========================================================
suffix    output
========  ==========================================================
``.html`` interactive plotly page, plotly.js inlined (works offline)
``.png``  static matplotlib image (Agg canvas, no display needed)
========  ==========================================================

Both libraries are optional (``pip install 'orchard-hpo[plot]'``) and are
imported only when a figure is saved, so building figures and importing this
module stay cheap. An experiment without results still gives a figure: an
empty one carrying a note that says why.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from orchard.errors import ConfigurationError
from orchard.plotting._libs import INSTALL_HINT
from orchard.plotting._mpl import write_png
from orchard.plotting._plotly import write_html
from orchard.plotting.figures import (
    STATUS_COLORS,
    Axis,
    Bar,
    ParallelFigure,
    RegretFigure,
    TimelineFigure,
    parallel,
    regret,
    timeline,
)
from orchard.plotting.curves import CurvesFigure, curves
from orchard.plotting.rungs import RungsFigure, rungs
from orchard.space import Space
from orchard.trial import Trial

__all__ = [
    "FIGURES",
    "FORMATS",
    "INSTALL_HINT",
    "STATUS_COLORS",
    "Axis",
    "Bar",
    "CurvesFigure",
    "Figure",
    "ParallelFigure",
    "RegretFigure",
    "RungsFigure",
    "TimelineFigure",
    "check_output",
    "curves",
    "make_figure",
    "parallel",
    "regret",
    "rungs",
    "save",
    "timeline",
]

Figure = RegretFigure | ParallelFigure | TimelineFigure | RungsFigure | CurvesFigure

#: Figure kind -> builder taking ``(trials, name, space)``.
FIGURES: dict[str, Callable[[Sequence[Trial], str, Space | None], Figure]] = {
    "regret": lambda trials, name, space: regret(trials, name),
    "parallel": parallel,
    "timeline": lambda trials, name, space: timeline(trials, name),
    "rungs": rungs,
    "curves": curves,
}


def make_figure(kind: str, trials: Sequence[Trial], name: str, space: Space | None = None) -> Figure:
    """Build the figure called ``kind`` (a key of :data:`FIGURES`).

    Raises:
        ConfigurationError: ``kind`` is not a known figure; the message lists them.
    """
    try:
        builder = FIGURES[kind]
    except KeyError:
        raise ConfigurationError(f"unknown plot {kind!r}; choose one of {', '.join(FIGURES)}") from None
    return builder(trials, name, space)


# -- saving --------------------------------------------------------------------------


def check_output(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a :class:`~pathlib.Path` if a plot can be written there.

    Raises:
        ConfigurationError: unknown suffix (the message lists ``.html`` and
            ``.png``), or the folder does not exist.
    """
    out = Path(path)
    if out.suffix.lower() not in FORMATS:
        raise ConfigurationError(
            f"cannot tell how to write plot {str(out)!r}: unknown suffix {out.suffix or '(none)'!r}; "
            f"use {' or '.join(FORMATS)}"
        )
    if not out.parent.is_dir():
        raise ConfigurationError(
            f"cannot write plot {str(out)!r}: folder {str(out.parent)!r} does not exist; create it first"
        )
    return out


def save(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Draw ``figure`` into ``path``: ``.html`` with plotly, ``.png`` with matplotlib.

    The file is written to a temporary name next to ``path`` and then renamed,
    so a reader never sees half a plot.

    Args:
        figure: a record built by :func:`regret`, :func:`parallel` or :func:`timeline`.
        path: the output file.

    Returns:
        The path written.

    Raises:
        ConfigurationError: unknown suffix, plotting library missing (with the
            install hint), or the file cannot be written.
    """
    out = check_output(path)
    render = FORMATS[out.suffix.lower()]
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    try:
        render(figure, tmp)
        os.replace(tmp, out)
    except OSError as err:
        raise ConfigurationError(
            f"cannot write plot {str(out)!r}: {err.strerror or err}; check that the folder is writable"
        ) from err
    finally:
        tmp.unlink(missing_ok=True)
    return out


#: Output suffix -> the function that draws a figure into such a file.
FORMATS: dict[str, Callable[[Figure, Path], None]] = {".html": write_html, ".png": write_png}
