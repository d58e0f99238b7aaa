"""Figures of an experiment: regret, parallel coordinates, the worker timeline, the rungs, the
learning curves, and with several objectives the Pareto front and its hypervolume.

Each builder (:func:`regret`, :func:`parallel`, :func:`timeline`, :func:`rungs`,
:func:`curves`, :func:`pareto`, :func:`hypervolume`) is a pure
function of a list of trials (and of what :class:`Subject` says of the
experiment) that returns a small, backend-neutral figure
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

import contextlib
import dataclasses
import errno
import os
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from orchard.errors import ConfigurationError
from orchard.plotting._libs import INSTALL_HINT
from orchard.plotting._mpl import write_png
from orchard.plotting._plotly import write_html
from orchard.plotting.curves import CurvesFigure, curves
from orchard.objectives import Shown
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
from orchard.plotting.fronts import HypervolumeFigure, ParetoFigure, hypervolume, pareto
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
    "HypervolumeFigure",
    "ParallelFigure",
    "ParetoFigure",
    "RegretFigure",
    "RungsFigure",
    "Subject",
    "TimelineFigure",
    "check_output",
    "curves",
    "hypervolume",
    "make_figure",
    "parallel",
    "pareto",
    "regret",
    "rungs",
    "save",
    "timeline",
]

Figure = RegretFigure | ParallelFigure | TimelineFigure | RungsFigure | CurvesFigure | ParetoFigure | HypervolumeFigure


@dataclasses.dataclass(frozen=True)
class Subject:
    """What a figure may need to know of its experiment besides the trials."""

    name: str
    space: Space | None = None
    objectives: Mapping[str, str] | None = None
    constraints: Sequence[str] | None = None


#: Figure kind -> builder taking ``(trials, subject)``.
FIGURES: dict[str, Callable[[Sequence[Trial], Subject], Figure]] = {
    "regret": lambda trials, s: regret(trials, s.name, Shown.of(s.objectives), s.constraints,
                                       s.space.fidelity[0] if s.space and s.space.fidelity else None),
    "parallel": lambda trials, s: parallel(trials, s.name, s.space, Shown.of(s.objectives)),
    "timeline": lambda trials, s: timeline(trials, s.name, Shown.of(s.objectives)),
    "rungs": lambda trials, s: rungs(trials, s.name, s.space, Shown.of(s.objectives)),
    "curves": lambda trials, s: curves(trials, s.name, s.space, Shown.of(s.objectives), s.constraints),
    "pareto": lambda trials, s: pareto(trials, s.name, s.objectives, s.constraints),
    "hypervolume": lambda trials, s: hypervolume(trials, s.name, s.objectives, s.constraints),
}


def make_figure(kind: str, trials: Sequence[Trial], name: str, space: Space | None = None,
                objectives: Mapping[str, str] | None = None, constraints: Sequence[str] | None = None) -> Figure:
    """Build the figure called ``kind`` (a key of :data:`FIGURES`).

    Args:
        kind: the figure's name.
        trials: the experiment's trials.
        name: the experiment's name.
        space: its space (parallel coordinates, rungs).
        objectives: its declared objectives, if any: every figure names the first and shows it in its
            own direction (a ``"max"`` one as returned, not negated); pareto and hypervolume need several.
        constraints: its constraints, if any (pareto, hypervolume).

    Raises:
        ConfigurationError: ``kind`` is not a known figure; the message lists them.
    """
    try:
        builder = FIGURES[kind]
    except KeyError:
        raise ConfigurationError(f"unknown plot {kind!r}; choose one of {', '.join(FIGURES)}") from None
    return builder(trials, Subject(name, space, objectives, constraints))


# -- saving --------------------------------------------------------------------------


def check_output(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a :class:`~pathlib.Path` if a plot can be written there.

    Raises:
        ConfigurationError: unknown suffix (the message lists ``.html`` and
            ``.png``), the folder does not exist, ``path`` is a folder or an Orchard
            storage file, or its name is longer than the folder's file system allows.
    """
    out = Path(path)
    if out.suffix.lower() not in FORMATS:
        raise ConfigurationError(
            f"cannot tell how to write plot {str(out)!r}: unknown suffix {out.suffix or '(none)'!r}; "
            f"use {' or '.join(FORMATS)}"
        )
    try:
        if not out.parent.is_dir():
            folder = repr(str(out.parent))
            problem = f"{folder} is a file, not a folder" if out.parent.exists() else \
                f"folder {folder} does not exist; create it first"
            raise ConfigurationError(f"cannot write plot {str(out)!r}: {problem}")
        longest = _longest_name(out.parent)
        if len(os.fsencode(out.name)) > longest:
            raise ConfigurationError(f"cannot write plot {str(out)[:60]!r}...: its name is longer than the "
                                     f"{longest} bytes this folder's file system allows; choose a shorter one")
        if out.is_dir():
            raise ConfigurationError(f"cannot write plot {str(out)!r}: it is a folder; name a file, "
                                     f"such as {str(out / ('plot' + out.suffix))!r}")
        from orchard.storages.pickled.fileformat import is_log_file

        if is_log_file(str(out)):  # a storage named st.html: the plot would replace it and its experiments
            raise ConfigurationError(f"cannot write plot {str(out)!r}: it is an Orchard storage file, which the "
                                     "plot would replace with every experiment in it; give a new file name, such "
                                     f"as {str(out.with_name(out.stem + '-plot' + out.suffix))!r}")
    except OSError as err:  # a folder's name too long, a folder this user may not enter
        raise ConfigurationError(f"cannot write plot {str(out)[:60]!r}: {err.strerror or err}; "
                                 "check the path") from None
    return out


def _longest_name(folder: Path) -> int:
    """The longest file name (in bytes) ``folder``'s file system takes (255 where it does not say)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # not POSIX, or the file system does not say
        return 255


def save(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Draw ``figure`` into ``path``: ``.html`` with plotly, ``.png`` with matplotlib.

    The file is written to a temporary name next to ``path`` and then renamed,
    so a reader never sees half a plot; a file replaced keeps its permissions.

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
    # a short name of its own (out's name plus a mark could pass the longest name the file system takes),
    # unpredictable and created exclusively: a link planted at a name known in advance is never written through
    # (tempfile.mkstemp would make it 0600: the plot is then readable by its owner only, whatever the umask)
    tmp: Path | None = None
    try:
        name = out.parent / f".orchard-plot.{secrets.token_hex(8)}.tmp{out.suffix}"
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        tmp = name
        with contextlib.suppress(FileNotFoundError):  # a plot replaced keeps its permissions (a chmod 600)
            shutil.copymode(out, tmp)
        render(figure, tmp)
        os.replace(tmp, out)
    except OSError as err:
        hint = "check that the folder is writable"
        if err.errno in _NO_ROOM:  # "No space left on device; check that the folder is writable" misled
            hint = "free space on its disk or write it elsewhere" + ("; the file there is unchanged"
                                                                    if out.exists() else "")
        raise ConfigurationError(f"cannot write plot {str(out)!r}: {err.strerror or err}; {hint}") from err
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):  # the error above is the one to tell
                tmp.unlink(missing_ok=True)
    return out


#: Write errors of a disk without room for the plot: full, over quota, or a file size limit (``ulimit -f``).
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

#: Output suffix -> the function that draws a figure into such a file.
FORMATS: dict[str, Callable[[Figure, Path], None]] = {".html": write_html, ".png": write_png}
