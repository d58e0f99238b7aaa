"""The command template of ``orchard hunt``: the search space in a command, and one trial's argv.

The command given to ``hunt`` is a template. Tokens that carry a prior define
the search space, and are replaced by the trial's value when it runs:

=============================  =====================  =================================
token                          dimension              rendered as
=============================  =====================  =================================
``--lr~'loguniform(1e-5, 1)'``  ``lr``                 ``--lr=0.0031``
``-lr~'loguniform(1e-5, 1)'``   ``lr``                 ``-lr 0.0031`` (two tokens)
``lr~'loguniform(1e-5, 1)'``    ``lr``                 ``lr=0.0031`` (Hydra-style override)
=============================  =====================  =================================

Dashes and dots in an option name become underscores in the dimension name
(``--learning-rate~…`` is the dimension ``learning_rate`` but is still rendered
as ``--learning-rate=…``). The bare form is only recognised when what follows
``~`` looks like a prior call, so paths such as ``~/data`` are left alone.
The placeholders ``{trial.id}``, ``{trial.working_dir}``,
``{trial.parent_working_dir}`` and ``{exp.name}`` are substituted in every
other token (``{trial.parent_working_dir}`` is empty unless the trial is a
multi-fidelity promotion); any other ``{trial.…}`` or ``{exp.…}`` is refused, since
it would reach every trial's script as it is written.

:func:`resolve_program` checks, before anything is stored, that the program
(and the script an interpreter runs) exist and can run — not empty, not a
directory, an interpreter not left to read its empty standard input — and
makes them absolute: each trial runs in its own folder.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from orchard.errors import ConfigurationError, SpaceError
from orchard.storages._uri import redact
from orchard.terminal import storable_text

if TYPE_CHECKING:  # pragma: no cover
    from orchard.priors import Prior

__all__ = ["COMMAND_KEY", "PLACEHOLDERS", "CommandTemplate", "redacted", "relative_files", "resolve_program"]

#: The experiment configuration key holding the command of the first hunt that worked on it: a record,
#: not a setting (never compared on join; :meth:`ExperimentConfig.from_dict` ignores it).
COMMAND_KEY = "hunt_command"
#: The placeholders replaced in every literal token of the command, for each trial.
PLACEHOLDERS = ("trial.id", "trial.working_dir", "trial.parent_working_dir", "exp.name")

#: a name is a Python identifier once - and . are _, as the Python API takes it (--α~uniform(0, 1) too)
_DIMENSION = re.compile(r"^(?P<dashes>-{0,2})(?P<option>[^\W\d][\w.-]*)~(?P<prior>.*)$", re.DOTALL)
_PRIOR_CALL = re.compile(r"^\s*[A-Za-z_]\w*\s*\(")
# looks like a dimension (dashes or a bare word, then ~prior(...)) but its name is empty or invalid; the bare
# word (not a path, not a Hydra value) was passed to the script as text: 2x~uniform(0, 1)
_BAD_DIMENSION = re.compile(r"^(-{1,2}[^=~]*|[^-=~\s/][^=~\s/]*|)~\s*[A-Za-z_]\w*\s*\(")
# --x=~uniform(0, 1), x=~uniform(0, 1): an = before the ~ made the token the script's text, its prior not
# searched
_EQUALS_TILDE = re.compile(
    r"^(?P<option>(?P<dashes>-{0,2})[^=~\s]+)=~\s*(?P<prior>(?P<call>[A-Za-z_]\w*)\s*\(.*)$", re.DOTALL)
_INTERPRETERS = re.compile(r"^(python[\d.]*|pypy[\d.]*|bash|sh|zsh|Rscript|julia|node|perl|ruby)$")
#: An interpreter's options whose value is the next token (``python -X dev train.py``, ``julia -t 4 x.jl``):
#: taken for the script, it left the real one relative, and every trial broke on "can't open file".
_VALUED_OPTIONS = {"python": {"-X", "-W", "--check-hash-based-pycs"}, "pypy": {"-X", "-W"},
                   "bash": {"-o", "-O", "+o", "+O"}, "sh": {"-o", "+o"}, "zsh": {"-o", "+o"},
                   "julia": {"-t", "--threads", "-p", "--procs", "-J", "--sysimage", "-C", "--cpu-target",
                             "--machine-file"},
                   "node": {"-r", "--require", "--import", "--loader", "--experimental-loader", "-C",
                            "--conditions"},
                   "ruby": {"-I", "-r", "-C"}, "perl": {"-I"}, "Rscript": set()}
_SUFFIX_INTERPRETERS = {".py": "python", ".sh": "bash", ".R": "Rscript", ".r": "Rscript", ".jl": "julia",
                        ".js": "node", ".pl": "perl", ".rb": "ruby"}
_SCRIPT_SUFFIXES = tuple(_SUFFIX_INTERPRETERS)
# what a placeholder looks like ({trial.hash}, {exp.working_dir}): an unknown one is a typo, not text
_SHOWN_DIMENSION = re.compile(r"^(-{1,2}[^=]+=)?<\w+>$")  # a dimension's token in CommandTemplate.shown()
_PLACEHOLDER = re.compile(r"\{((?:trial|exp)\.[^{}\s]*)\}")


@dataclasses.dataclass(frozen=True)
class _Slot:
    """One token of the command: literal text, or a dimension rendered per trial."""

    text: str
    dimension: str | None = None
    dashes: str = ""


@dataclasses.dataclass(frozen=True)
class CommandTemplate:
    """A parsed ``hunt`` command: its tokens and the search space they define."""

    slots: tuple[_Slot, ...]
    space: dict[str, str]

    @classmethod
    def parse(cls, tokens: Sequence[str]) -> CommandTemplate:
        """Find the ``name~prior`` tokens of a command.

        Raises:
            SpaceError: a prior cannot be parsed, or a dimension is defined twice.
            ConfigurationError: the command is empty.
        """
        from orchard.space import parse_prior

        if not tokens:
            raise ConfigurationError(
                "no command given to run; put it after the hunt options, "
                "e.g. orchard hunt -n exp python train.py --lr~'loguniform(1e-5, 1)'"
            )
        slots: list[_Slot] = []
        space: dict[str, str] = {}
        for index, token in enumerate(tokens):
            match = _DIMENSION.match(token)
            if match is not None and not _named(match["option"]):
                match = None  # x²: a word character that no name holds
            if match is None:
                _refuse_equals_tilde(token)
            if match is None and _BAD_DIMENSION.match(token):
                raise _nameless(token, "'prior'")
            if match is None or (not match["dashes"] and not _PRIOR_CALL.match(match["prior"])):
                _check_placeholders(token)
                slots.append(_Slot(token))
                continue
            name = re.sub(r"[-.]", "_", match["option"])
            if name in space:
                raise SpaceError(f"dimension {name!r} is defined twice in the command (token {token!r})")
            try:
                prior = parse_prior(name, match["prior"])  # fail early, naming the dimension
            except SpaceError as err:
                hint = _split_or_quoted(match["dashes"] + match["option"], match["prior"], tokens[index + 1:])
                raise SpaceError(f"{err}{hint}") from None
            _check_texts(name, prior)
            space[name] = match["prior"]
            slots.append(_Slot(match["option"], name, match["dashes"]))
        return cls(tuple(slots), space)

    def unnamed_prior(self) -> str | None:
        """A token of the command that is a prior with no name (``--x uniform(0, 1)``), else ``None``."""
        from orchard.space import PRIORS

        calls = (slot.text for slot in self.slots if slot.dimension is None)
        return next((text for text in calls if (m := _PRIOR_CALL.match(text)) and m[0].strip(" (") in PRIORS),
                    None)

    def with_dimensions(self, space: Mapping[str, str]) -> CommandTemplate:
        """Return a template that also passes the dimensions of ``space`` it lacks, as ``--name=value``.

        Raises:
            SpaceError: a prior cannot be parsed, or two of its choices reach the script as one text.
        """
        from orchard.space import parse_prior

        extra = [_Slot(name, name, "--") for name in space if name not in self.space]
        for slot in extra:
            _check_texts(slot.text, parse_prior(slot.text, space[slot.text]))
        merged = {**self.space, **{name: space[name] for name in space if name not in self.space}}
        return CommandTemplate(self.slots + tuple(extra), merged)

    def with_program(self, program: str, script: tuple[int, str] | None = None) -> CommandTemplate:
        """Return a template whose first token (and script token ``(index, path)``) are replaced."""
        slots = list(self.slots)
        slots[0] = _Slot(program)
        if script is not None:
            slots[script[0]] = _Slot(script[1])
        return dataclasses.replace(self, slots=tuple(slots))

    @property
    def tokens(self) -> list[str]:
        """The literal tokens (dimension slots as their option names)."""
        return [slot.text for slot in self.slots]

    def shown(self) -> str:
        """The command as a shell takes it, each dimension as ``<name>`` where its value goes, and the
        password of a URI in it hidden: the experiment records it, and its readers are not all the
        readers of the script's database."""
        tokens: list[str] = []
        for slot in self.slots:
            if slot.dimension is None:
                tokens.append(redact(slot.text))
            elif slot.dashes == "-":
                tokens += [f"-{slot.text}", f"<{slot.dimension}>"]
            else:
                tokens.append(f"{slot.dashes}{slot.text}=<{slot.dimension}>")
        return storable_text(shlex.join(tokens))

    def runs_like(self, shown: str) -> bool:
        """Whether the command :meth:`shown` as ``shown`` runs the same program with the same fixed tokens.

        Dimensions may come in another order: a hunt whose command gives no prior passes the stored
        dimensions after its tokens.
        """
        def split(tokens: list[str]) -> tuple[list[str], list[str]]:
            fixed = [token for token in tokens if not _SHOWN_DIMENSION.match(token)]
            return fixed, sorted(token for token in tokens if _SHOWN_DIMENSION.match(token))

        try:
            return split(shlex.split(redacted(shown))) == split(shlex.split(self.shown()))
        except ValueError:  # not shlex's: another program wrote it
            return False

    def render(self, params: Mapping[str, Any], placeholders: Mapping[str, str]) -> list[str]:
        """Return the argv of one trial: values in place of priors, placeholders substituted."""
        argv: list[str] = []
        for slot in self.slots:
            if slot.dimension is None:
                argv.append(_substitute(slot.text, placeholders))
            elif slot.dashes == "-":
                argv += [f"-{slot.text}", _format_value(params[slot.dimension])]
            else:
                argv.append(f"{slot.dashes}{slot.text}={_format_value(params[slot.dimension])}")
        return argv


def redacted(command: str) -> str:
    """A recorded ``command`` with the password of each URI in it hidden (an older release recorded them)."""
    try:
        return shlex.join(redact(token) for token in shlex.split(command))
    except ValueError:  # not shlex's: another program wrote it
        return redact(command)


def _check_texts(name: str, prior: Prior) -> None:
    """Refuse choices a script receives as one text: ``'1'`` and ``1``, ``'True'`` and ``True``.

    Each is a trial of its own, but their commands were the same: the script ran one point twice
    and the two results were recorded as if they were of different points.
    """
    from orchard.priors import Choices  # numpy: not imported by every command line (orchard status)

    if not isinstance(prior, Choices):
        return
    texts: dict[str, Any] = {}
    for value in prior.values:
        text = _format_value(value)
        if text in texts:
            raise SpaceError(f"dimension {name!r}: choices {texts[text]!r} and {value!r} both reach the "
                             f"script as the text {text!r}, so it cannot tell their trials apart; keep one")
        texts[text] = value


def _split_or_quoted(whole: str, prior: str, after: Sequence[str]) -> str:
    """What went wrong with the prior of option ``whole`` (``--lr``): cut at a space, or quoted, else ``""``.

    ``after``: the tokens after it, where the rest of a prior cut at a space is.
    """
    joined = prior
    for part in after[:3] if prior.count("(") > prior.count(")") else ():  # 'uniform(0,' then '1)'
        joined += f" {part}"
        if joined.count("(") <= joined.count(")"):
            return (f"; the prior was cut at a space: quote it whole so that it stays one word, "
                    f"{whole}~'{joined}' (from Python, one list item)")
    if len(prior) > 1 and prior[0] == prior[-1] and prior[0] in "'\"":  # ["--lr~'uniform(0, 1)'"] from Python
        return f"; its quotes reached hunt as part of it: they are for the shell only, e.g. " \
               f"{whole}~{prior[1:-1]}"
    return ""


def _refuse_equals_tilde(token: str) -> None:
    """Refuse ``--x=~uniform(0, 1)`` and ``x=~uniform(0, 1)``, whose right-hand side calls a prior Orchard
    knows: given to the script as that text, its prior was never searched. ``--expr=~f(x)``, ``a=~b(c)`` and
    ``dir/x=~uniform(0,1)`` stay the script's text.

    Raises:
        SpaceError: naming the token and the form to write.
    """
    from orchard.space import PRIORS

    slip = _EQUALS_TILDE.match(token)
    if slip is None or slip["call"] not in PRIORS:
        return
    option, prior = slip["option"], slip["prior"]
    if not _named(option.lstrip("-")):
        if not slip["dashes"]:
            return
        raise _nameless(token, repr(prior))
    if slip["dashes"]:
        raise SpaceError(f"token {token!r} is no dimension (an = before its ~); write {option}~{prior!r}: "
                         "a dimension is --name~'prior', e.g. --lr~'uniform(0, 1)'")
    raise SpaceError(f"token {token!r} is no dimension (an = before its ~); write --{option}~{prior!r} "
                     f"(the script gets --{option}=VALUE) or {option}~{prior!r} (it gets {option}=VALUE)")


def _named(option: str) -> bool:
    """Whether an option's name (``lr``, ``batch-size``, ``opt.lr``) can name a dimension."""
    return re.sub(r"[-.]", "_", option).isidentifier()


def _nameless(token: str, prior: str) -> SpaceError:
    """The error for a token that defines a dimension whose name is empty or invalid."""
    return SpaceError(f"token {token!r} defines a dimension without a valid name; write --name~{prior} with a "
                      "name of letters, digits and _ (e.g. --lr~'uniform(0, 1)')")


def _check_placeholders(token: str) -> None:
    """Refuse a ``{trial.…}``/``{exp.…}`` that hunt does not replace: every script would get it verbatim."""
    unknown = [name for name in _PLACEHOLDER.findall(token) if name not in PLACEHOLDERS]
    if unknown:
        known = ", ".join("{" + name + "}" for name in PLACEHOLDERS)
        raise ConfigurationError(
            f"token {token!r} names the placeholder {{{unknown[0]}}}, which hunt does not replace; the "
            f"placeholders are {known} (a dimension's value reaches the script through its --name~'prior' "
            "token)")


def _substitute(text: str, placeholders: Mapping[str, str]) -> str:
    if "{" not in text:
        return text
    for key, value in placeholders.items():
        text = text.replace("{" + key + "}", value)
    return text


def _format_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def relative_files(template: CommandTemplate, cwd: str) -> list[tuple[str, str]]:
    """``(token, absolute path)`` of the tokens after the program naming a file of ``cwd`` by a relative path.

    Such as ``data.csv`` or ``--data=data.csv``. Each trial runs in its own folder, where the path finds
    nothing: a script behind a wrapper (``env python train.py``, ``srun python train.py``) or a data file
    breaks every trial.
    """
    found = []
    for slot in template.slots[1:]:
        if slot.dimension is not None or "{" in slot.text:
            continue
        path = slot.text.split("=", 1)[1] if slot.text.startswith("-") and "=" in slot.text else slot.text
        if path and not path.startswith("-") and not os.path.isabs(path) \
                and os.path.isfile(os.path.join(cwd, path)):
            found.append((slot.text, os.path.abspath(os.path.join(cwd, path))))
    return found


def resolve_program(tokens: Sequence[str], cwd: str | None = None) -> tuple[str, tuple[int, str] | None]:
    """Check that a command's program (and the script an interpreter runs) exist.

    Args:
        tokens: the command's tokens.
        cwd: the directory relative paths are resolved against (default: the current one).

    Returns:
        The program's absolute path, and ``(index, absolute path)`` of the script
        token when the program is an interpreter such as ``python`` (else ``None``).

    Raises:
        ConfigurationError: the program or script does not exist or cannot be executed.
    """
    here = cwd or os.getcwd()
    program = tokens[0]
    if not program.strip():
        raise ConfigurationError(f"the command's program is empty ({program!r}); start the command given to hunt "
                                 "with the program to run, e.g. 'python train.py ...'")
    found = shutil.which(program)
    if os.sep in program or (found is None and os.path.exists(os.path.join(here, program))):
        found = _check_file(program, here)
    if found is None:
        raise ConfigurationError(
            f"command {program!r} not found on PATH nor as a file in {here}; "
            "check the command given to hunt, e.g. 'python train.py ...'"
        )
    script = _find_script(tokens, here) if _INTERPRETERS.match(os.path.basename(program)) else None
    return os.path.abspath(found), script


def _check_file(program: str, here: str) -> str:
    path = os.path.join(here, program)
    if os.path.isdir(path):
        raise ConfigurationError(f"the program {program!r} is a directory, not a file that can run; "
                                 "check the command given to hunt")
    if not os.path.isfile(path):
        raise ConfigurationError(f"script {program!r} not found (no such file in {here}); check the command")
    if not os.access(path, os.X_OK):
        raise ConfigurationError(
            f"script {program!r} is not executable; run 'chmod +x {program}' "
            f"or start it through its interpreter, e.g. "
            + " or ".join(f"'{interpreter} {program}'" for interpreter in _interpreters_of(path))
        )
    problem = _interpreter_problem(path, program)
    if problem is not None:  # exec refuses it, and every trial breaks: 'Exec format error', 'No such file'
        raise ConfigurationError(f"script {program!r} {problem}")
    return path


def _interpreters_of(path: str) -> list[str]:
    """The interpreter a script names in its ``#!`` line (``#!/usr/bin/env python3``: ``python3``), else the
    one its suffix says (``.sh``: ``bash``), else the usual two: a shell script not executable was told to
    run as 'python x.sh'."""
    line = _shebang(_head(path) or b"")
    words = line.split() if line is not None else []
    if words and os.path.basename(words[0]) == b"env":
        words = [word for word in words[1:] if not word.startswith(b"-")]
    if words:
        return [os.fsdecode(os.path.basename(words[0]))]
    suffix = os.path.splitext(path)[1]
    return [_SUFFIX_INTERPRETERS[suffix]] if suffix in _SUFFIX_INTERPRETERS else ["bash", "python"]


def _interpreter_problem(path: str, program: str) -> str | None:
    """What keeps a text file from running as a program: no ``#!`` line (a shell runs it as a shell script,
    ``exec`` does not), a ``#!`` line ending in a carriage return, or naming no interpreter here (``exec``
    then says the *script* does not exist). A binary (ELF, Mach-O, a format the kernel was taught) passes."""
    head = _head(path)
    if head is None:
        return None  # executable but unreadable: exec may still run it
    line = _shebang(head)
    if line is None:
        if b"\0" in head or not _is_text(head):
            return None
        return (f"has no '#!' line naming its interpreter, so it cannot run as a program (a shell runs "
                f"it as a shell script, Orchard does not): make its first line e.g. '#!/bin/bash', or "
                f"start it through its interpreter, e.g. 'bash {program}'")
    if line.endswith(b"\r"):
        return ("has Windows line ends: its '#!' line ends with a carriage return, so the interpreter it "
                f"names is not found; convert it, e.g. 'dos2unix {program}'")
    interpreter = os.fsdecode(line.split()[0]) if line.split() else ""
    if len(head) > len(line) + 2 and not (os.path.isfile(interpreter) and os.access(interpreter, os.X_OK)):
        return (f"names the interpreter {interpreter!r} in its '#!' line, which does not exist here or "
                f"cannot run; fix that line (e.g. '#!/usr/bin/env python3'), or start the script through "
                f"its interpreter")
    return None


def _head(path: str) -> bytes | None:
    """The first 512 bytes of the file at ``path`` (``None``: it cannot be read)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(512)
    except OSError:
        return None


def _shebang(head: bytes) -> bytes | None:
    """What follows ``#!`` on the first line of ``head``, if it starts with one."""
    return head[2:].split(b"\n", 1)[0] if head.startswith(b"#!") else None


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start >= len(head) - 3  # a character cut at the end of what was read
    return True


def _find_script(tokens: Sequence[str], here: str) -> tuple[int, str] | None:
    """The interpreter's script argument, made absolute (trials run in their own folders).

    An interpreter given nothing to run would read its empty standard input and
    break every trial: an empty script, a directory that is not a runnable Python
    package, or only dimensions after the interpreter are refused.
    """
    interpreter = os.path.basename(tokens[0])
    valued = _VALUED_OPTIONS[re.sub(r"[\d.]+$", "", interpreter)]
    rest = tokens[1:]
    if all(_DIMENSION.match(token) for token in rest):
        raise ConfigurationError(f"{interpreter} is given no script to run; name it after the interpreter, "
                                 f"e.g. '{interpreter} train.py --lr~\"loguniform(1e-5, 1)\"'")
    value_next = False
    for index, token in enumerate(rest, start=1):
        if token in ("-m", "-c", "-e", "--eval"):
            return None
        if value_next or token.startswith("-") or "~" in token or token in valued:
            value_next = token in valued
            continue
        path = os.path.join(here, token)
        if not token.strip():
            raise ConfigurationError(f"the script {interpreter} should run is empty ({token!r}); name it after "
                                     f"the interpreter, e.g. '{interpreter} train.py'")
        runnable_folder = interpreter.startswith(("python", "pypy")) and os.path.isfile(
            os.path.join(path, "__main__.py"))  # python runs a folder with a __main__.py
        if os.path.isfile(path) or runnable_folder:
            return index, os.path.abspath(path)
        if os.path.isdir(path):
            raise ConfigurationError(f"the script {token!r} is a directory, which {interpreter} cannot run; "
                                     "check the command given to hunt")
        if token.endswith(_SCRIPT_SUFFIXES):
            raise ConfigurationError(f"script {token!r} not found in {here}; check the command given to hunt")
        return None
    return None
