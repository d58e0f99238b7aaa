"""``orchard insert -n NAME x=1 y=2 [--objective V]`` / ``--file rows.csv``: add points or evaluations.

Without ``--objective`` (or ``--result``), the point becomes a ``new`` trial that
the next free worker evaluates first. With it, or with ``--file``, each row is
an evaluation made elsewhere, recorded ``completed`` (``origin=inserted``);
it uses no unit of the budget unless ``--count-in-budget``.

A file is CSV (a header row) or JSON Lines (one object per line, ``.jsonl``);
``--file -`` reads standard input, JSON Lines if it starts with ``{``, else CSV:
in each row, the columns named like a dimension of the space are the params,
``objective`` is the objective and every other column is a result (with
several objectives, each is a column named after it); Optuna's
``trials_dataframe()`` and Orchard's ``to_pandas()`` are read as their columns mean
(:mod:`orchard.cli._exports`).
Every row is checked first; one bad row stores nothing and the message names the row and the column.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchard.cli._args import (
    GivenOnce,
    UsageError,
    add_common,
    add_name,
    each_key_once,
    format_params,
    open_experiment,
    parse_literal,
)
from orchard.cli._exports import exported
from orchard.cli._output import print_stored
from orchard.report import read_at_most
from orchard.terminal import is_utf8

if TYPE_CHECKING:  # pragma: no cover
    from orchard.experiment import Experiment
    from orchard.objective import Outcome
    from orchard.trial import Trial

__all__ = ["MAX_FILE_BYTES", "add_parser", "parse_assignments", "read_rows", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``insert`` on the CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "insert", help="add a trial at given params (the next free worker evaluates it first), or record "
                       "evaluations made elsewhere (--objective, --file)",
        description="Values are read as Python literals (1, 0.5, True, 'a'); other text is a string. "
                    "Every dimension of the space must be given. With --objective/--result or --file the "
                    "trials are recorded completed, as evidence for the algorithm, apart from the budget "
                    "unless --count-in-budget.",
    )
    add_name(parser)
    parser.add_argument("params", nargs="*", metavar="NAME=VALUE", help="one value per dimension")
    parser.add_argument("--objective", metavar="VALUE", type=_objective, action=GivenOnce,
                        help="the objective this point reached (minimized; with one declared objective, such as "
                        "acc:max, its value as the script reports it)")
    parser.add_argument("--result", metavar="NAME=VALUE", action="append", default=[],
                        help="an extra metric (repeatable); with several objectives, one per objective")
    parser.add_argument("--file", metavar="ROWS", type=Path,
                        help="evaluations to record: a CSV file with a header, or JSON Lines (.jsonl), - for "
                             "standard input (JSON Lines if it starts with {, else CSV); columns named after "
                             "dimensions are params, 'objective' the objective, others results; Optuna's "
                             "trials_dataframe() and Orchard's to_pandas() are read as their columns mean")
    parser.add_argument("--count-in-budget", action="store_true",
                        help="recorded trials use units of max_trials (default: they are extra evidence)")
    add_common(parser)
    parser.set_defaults(func=run)
    return parser


def _objective(text: str) -> float:
    """``--objective``'s value, a finite number (``nan`` was refused as 'text, not the number')."""
    value = parse_literal(text.strip())
    try:
        number = float(value)  # nan, inf, 1e999 are text to parse_literal
    except (TypeError, ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; e.g. --objective 0.25") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number; e.g. --objective 0.25")
    return value if isinstance(value, (int, float)) else number


def parse_assignments(tokens: list[str], what: str = "dimension") -> dict[str, Any]:
    """Turn ``["x=1", "opt=adam"]`` into ``{"x": 1, "opt": "adam"}``.

    Raises:
        UsageError: a token is not ``NAME=VALUE`` or a name is given twice.
    """
    params: dict[str, Any] = {}
    for token in tokens:
        name, sep, text = token.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"insert expects NAME=VALUE, got {token!r}; e.g. orchard insert -n exp x=1 y=2")
        if name in params:
            raise UsageError(f"{what} {name!r} is given twice")
        if not is_utf8(token):
            raise UsageError(f"{token!r} holds bytes that are not UTF-8 text; write it in UTF-8")
        if not text.strip():  # `--result loss=$LOSS` with LOSS unset stored the text '' as the result
            raise UsageError(f"{what} {name!r} has no value ({token!r}: an unset shell variable?); give "
                             f"{name}=VALUE ({name}='\"\"' for an empty text)")
        params[name] = _literal(text.strip(), f"{what} {name!r}")
    return params


#: Digits with commas between them, which Python reads as a tuple: a decimal comma (0,93) or a thousands
#: separator (1,000), as a spreadsheet of another locale writes them. Stored, 0,93 became the list [0, 93].
_COMMA_NUMBER = re.compile(r"[+-]?\d+(?:,\d+)+")


def _literal(text: str, what: str) -> Any:
    """``text`` read as a literal (:func:`parse_literal`); a number written with a comma is refused."""
    if _COMMA_NUMBER.fullmatch(text):
        raise UsageError(f"{what} is {text!r}, digits with a comma between them, which would be read as a "
                         "list; write a number with a decimal point and no thousands separator (0.93, 1000), "
                         "or a list as [0, 93]; nothing was stored")
    return parse_literal(text)


#: Bytes of rows one ``insert --file`` reads at most (about a million rows of a few params).
MAX_FILE_BYTES = 64 << 20


def source(path: Path) -> str:
    """How messages name ``--file``'s rows: the path, or ``stdin`` for ``-``."""
    return "stdin" if str(path) == "-" else str(path)


def _read_text(path: Path) -> str:
    """The text of ``--file`` (``-``: standard input), read up to :data:`MAX_FILE_BYTES`.

    Bounded: /dev/zero or a data set given by mistake must not fill memory.
    """
    try:
        if str(path) != "-":
            with path.open("rb") as handle:
                data: bytes | str | None = read_at_most(handle, MAX_FILE_BYTES)
        elif sys.stdin is None:  # started with <&-
            raise UsageError("--file -: standard input is closed; pipe the rows in, or give a file")
        else:  # the bytes, when there are any: the text layer's encoding may be the locale's, not UTF-8
            data = read_at_most(getattr(sys.stdin, "buffer", sys.stdin), MAX_FILE_BYTES)
        if data is None:
            raise UsageError(f"--file {source(path)} holds more than {MAX_FILE_BYTES >> 20} MiB, more rows than one "
                             "insert takes (is it the right file?); split it and insert the parts one by one")
        return data.decode("utf-8-sig") if isinstance(data, bytes) else data.removeprefix("\ufeff")
    except OSError as err:
        raise UsageError(f"cannot read --file {source(path)}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"cannot read --file {source(path)}: it is not UTF-8 text (byte {err.start}); "
                         "give a CSV or JSON Lines file") from None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV (with a header) or JSON Lines file, as dicts; CSV cells are read as literals.

    ``-`` reads standard input: JSON Lines if its first character (but blanks) is ``{`` (or
    ``[``, refused as a JSON array), else CSV. A column named twice, or a CSV row with more
    cells than the header names, is refused: one of the values would be dropped silently.
    A UTF-8 byte order mark (Excel) is skipped.

    Raises:
        UsageError: the file cannot be read as UTF-8 text or holds more than ``MAX_FILE_BYTES``,
            a line is not a JSON object, a name is given twice, or a row has more cells than the header.
    """
    text = _read_text(path)
    if str(path) == "-" and not text.strip():  # "--file - holds no rows" hid the cause
        raise UsageError("--file -: nothing came on stdin: did the command before the pipe fail?; nothing was "
                         "stored")
    shown = source(path)
    if (text.lstrip()[:1] in ("{", "[") if str(path) == "-"
            else path.suffix.lower() in (".jsonl", ".ndjson", ".json")):
        _one_document(text, str(path))
        return [_json_row(line, f"line {number} of {shown}") for number, line in enumerate(text.splitlines(), 1)
                if line.strip()]
    reader = csv.reader(text.splitlines())
    header = next(reader, [])
    if len(header) == 1 and (separator := next((c for c in ";\t|" if c in header[0]), None)):
        raise UsageError(f"the header of {shown} is one column, {header[0]!r}: its columns are separated by "
                         f"{separator!r}, not commas; save it as CSV with commas, or as JSON Lines (.jsonl)")
    twice = sorted({name for name in header if name and header.count(name) > 1})
    if twice:
        raise UsageError(f"the header of {shown} names column(s) {', '.join(map(repr, twice))} twice; keep one")
    rows = []
    for number, cells in enumerate(reader, 1):
        if not any(cell.strip() for cell in cells):  # a blank line, or a ",,," row a spreadsheet leaves
            continue
        if len(cells) > len(header):
            raise UsageError(f"row {number} of {shown} has {len(cells)} cells but the header names {len(header)} "
                             "columns; quote a value that holds a comma, or name every column")
        rows.append({name: _cell(name, cell, f"row {number} of {shown}: column {name!r}")
                     for name, cell in zip(header, cells) if name and cell != ""})
    return rows


def _cell(column: str, text: str, what: str) -> Any:
    """A CSV cell as a literal; an objective of ``nan`` or ``inf`` (as spreadsheets write them) as that float.

    Read as text, it was refused as 'text, not the number', when the number itself is what is wrong.
    """
    value = _literal(text, what)
    if column == "objective" and isinstance(value, str) and value.strip().lower().lstrip("+-") in _NOT_FINITE:
        return float(value)
    return value


_NOT_FINITE = frozenset({"nan", "inf", "infinity"})


def _one_document(text: str, path: str) -> None:
    """Refuse a file that is one JSON document, not JSON Lines: a dump said "line 1 of dump.json is not JSON
    (Expecting property name enclosed in double quotes)", an array "line 1 ... is not a JSON object"."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return  # JSON Lines of several rows, or a line that is wrong: said for that line
    if isinstance(document, dict) and document.get("format") == "orchard-dump":
        raise UsageError(f"--file {path} is an Orchard dump (orchard db dump), not rows of evaluations; "
                         f"restore it with 'orchard db load {path}'")
    if isinstance(document, list):
        raise UsageError(f"--file {path} is one JSON array, not JSON Lines: write one object per line, e.g. "
                         f"jq -c '.[]' {path} > rows.jsonl")
    if isinstance(document, dict) and len(text.strip().splitlines()) > 1:
        raise UsageError(f"--file {path} is one JSON object written over several lines; JSON Lines holds "
                         "each row on one line")


def _json_row(line: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line, object_pairs_hook=each_key_once)
    except json.JSONDecodeError as err:
        raise UsageError(f"{where} is not JSON ({err.msg})") from None
    except ValueError as err:  # a key twice
        raise UsageError(f"{where}: {err}") from None
    except RecursionError:
        raise UsageError(f"{where} is nested too deeply to be a row") from None
    if not isinstance(row, dict):
        raise UsageError(f"{where} is not a JSON object such as {{\"x\": 1, \"objective\": 0.3}}")
    return row


def _split_row(row: dict[str, Any], dimensions: set[str]) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    params = {k: v for k, v in row.items() if k in dimensions}
    results = {k: v for k, v in row.items() if k not in dimensions and k != "objective"}
    return params, row.get("objective"), results


def _record_file(experiment: Experiment, path: Path, count_in_budget: bool) -> tuple[int, int, str]:
    """Check every row of ``path``, then record them all; nothing is stored if one is bad.

    A row that an earlier insert recorded already (the same params, objective and results, and
    budget) is skipped, so the same command run again after a Ctrl-C records the rest. Optuna's and
    Orchard's exports are read as their columns mean (:mod:`orchard.cli._exports`).
    Returns how many rows were recorded and how many were skipped, and what else was skipped.
    """
    from orchard.errors import DuplicateTrialError, Interrupted, SpaceError
    from orchard.recording import check_evaluation
    from orchard.space import params_hash

    read = read_rows(path)
    if not read:
        raise UsageError(f"--file {source(path)} holds no rows")
    dimensions = set(experiment.space)
    export = exported(read, dimensions, experiment.settings.objectives, f"--file {source(path)}")
    rows: list[dict[str, Any] | None] = list(read)  # an export's rows not evaluated are None
    not_complete = ""
    if export is not None:
        rows, not_complete = export
    stored = {params_hash(t.params): t for t in experiment.fetch_trials()}
    taken: dict[str, str] = {}
    checked, skipped = [], 0
    for number, row in enumerate(rows, 1):
        if row is None:
            continue
        label = f"row {number} of {source(path)}"
        params, objective, results = _split_row(row, dimensions)
        try:
            point = experiment.space.validate(params)
        except SpaceError as err:
            raise SpaceError(f"{label}: {err}") from None
        outcome = check_evaluation(objective, results, experiment.settings.objectives, label)
        digest = params_hash(point)
        there = stored.get(digest)
        if there is not None and _recorded_as(there, outcome, count_in_budget):
            skipped += 1
            continue
        if there is not None or digest in taken:
            raise DuplicateTrialError(f"{label}: experiment {experiment.name!r} already has a trial at "
                                      f"{format_params(point)} ({f'trial {there.id}' if there else taken[digest]}); "
                                      "nothing was stored")
        taken[digest] = label
        checked.append((point, objective, results))
    if count_in_budget:
        _check_room(experiment, path, len(checked))
    done = 0
    try:
        for point, objective, results in checked:
            experiment.insert(point, objective, results, count_in_budget)
            done += 1
    except KeyboardInterrupt as err:
        raise Interrupted(f"at least {done} of the {len(checked)} rows to record were recorded; run the same "
                          "command again to record the rest (rows already recorded are skipped)",
                          terminated=isinstance(err, Interrupted) and err.terminated) from None
    return done, skipped, not_complete


def _check_room(experiment: Experiment, path: Path, rows: int) -> None:
    """Refuse rows to record in the budget that it has no room for, before the first is stored.

    Raises:
        BudgetExhaustedError: fewer units of ``max_trials`` are free than rows; nothing was stored.
    """
    from orchard.errors import BudgetExhaustedError
    from orchard.recording import budget_held

    budget = experiment.settings.max_trials
    if budget is None:
        return
    room = max(budget - budget_held(experiment.storage, experiment.id), 0)
    if rows > room:  # the rows before the one refused were stored, and the error said nothing of them
        raise BudgetExhaustedError(
            f"--file {source(path)} has {rows} rows to record in the budget, but experiment {experiment.name!r} has "
            f"room for {room} (max_trials={budget}); raise max_trials to at least {budget + rows - room}, or "
            "record them apart from the budget (without --count-in-budget); nothing was stored")


def _recorded_as(trial: Trial, outcome: Outcome, count_in_budget: bool) -> bool:
    """Whether ``trial`` is the record an earlier insert made of this row.

    Compared as stored (``outcome``, what the row becomes): the row's own values missed a ``"max"``
    objective (stored negated) and several objectives (given in results), so a rerun was refused.
    """
    from orchard.trial import TrialStatus

    same_values = trial.objective == outcome.objective and all(
        trial.results.get(k) == v for k, v in outcome.results.items())
    return (trial.origin == "inserted" and trial.status is TrialStatus.COMPLETED and same_values
            and bool(trial.in_budget) == count_in_budget)


def _check_objective_flag(experiment: Experiment, params: dict[str, Any], results: dict[str, Any] | None,
                          objective: float | None) -> None:
    """Refuse an objective given other than with ``--objective``, saying so in the command's words.

    The API's advice ("give the objective as objective=...") sent users to a param ``objective=0.3``,
    which was refused as not a dimension of the space.
    """
    where = "a param, objective=..." if "objective" in params and "objective" not in experiment.space else \
        "--result objective=..." if "objective" in (results or {}) else None
    if where is not None:
        raise UsageError(f"insert into experiment {experiment.name!r}: the objective is given as {where}; "
                         "give it with --objective VALUE (e.g. --objective 0.25)")
    if results is not None and objective is None and experiment.settings.objectives is None:
        raise UsageError(f"insert into experiment {experiment.name!r}: --result without --objective; an "
                         "evaluated trial needs --objective VALUE (e.g. --objective 0.25); params alone "
                         "insert a point to run")


def run(args: argparse.Namespace) -> int:
    """Validate the params against the experiment's space and add a trial, or record evaluations.

    Raises:
        SpaceError: the params are not a point of the space.
        ConfigurationError: an objective is missing or not a finite number.
        DuplicateTrialError: a trial with those params exists.
        BudgetExhaustedError: the budget is fully used.
    """
    if args.file is not None and (args.params or args.objective is not None or args.result):
        raise UsageError("give either --file ROWS or NAME=VALUE params (with --objective/--result), not both")
    if args.file is None and not args.params:
        raise UsageError("insert needs NAME=VALUE params or --file ROWS; e.g. orchard insert -n exp x=1 y=2")
    experiment = open_experiment(args)
    budget = "counted in the budget" if args.count_in_budget else "apart from the budget"
    if args.file is not None:
        recorded, skipped, not_complete = _record_file(experiment, args.file, args.count_in_budget)
        rows = ("1 row recorded before was skipped" if skipped == 1
                else f"{skipped} rows recorded before were skipped")
        print_stored(f"recorded {recorded} evaluated trial{'' if recorded == 1 else 's'} in experiment "
                     f"{experiment.name!r} ({budget})" + (f"; {rows}" if skipped else "")
                     + (f"; {not_complete}" if not_complete else ""))
        return 0
    from orchard.objectives import Shown

    params = parse_assignments(args.params)
    results = parse_assignments(args.result, "result") if args.result else None
    objective = args.objective
    _check_objective_flag(experiment, params, results, objective)
    if objective is None and results is None:
        trial = experiment.insert(params)
        print_stored(f"inserted trial {trial.id} in experiment {experiment.name!r}: {format_params(trial.params)}")
        return 0
    trial = experiment.insert(params, objective, results or {}, args.count_in_budget)
    shown = Shown.of(experiment.settings.objectives)  # as given: accuracy 0.97, not its stored -0.97
    print_stored(f"recorded trial {trial.id} in experiment {experiment.name!r}: {format_params(trial.params)}, "
                 f"{shown.name} {shown.value(trial.objective or 0.0):.6g} ({budget})")
    return 0
