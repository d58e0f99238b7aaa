"""What a program with write access to a storage can make Orchard show: its strings reach the
user's terminal only escaped."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from orchard.stopping import Ledger
from orchard.storages import get_storage

#: Clears the screen, sets the window title, then reverses the rest of the line (U+202E, U+2066).
HOSTILE = "\x1b[2J\x1b]0;pwned\x07\u202eRTL\u2066\rover"


def _drives_the_terminal(text: str) -> list[str]:
    """The control and bidirectional formatting characters in ``text`` (but line breaks and tabs)."""
    return [repr(ch) for ch in text if unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\n\t"]


def _hostile_storage(path: Path) -> str:
    """A pickle file another program wrote: an experiment named with escapes, a choices value and a
    worker name holding them, and a stopping rule that fired for a reason holding them."""
    storage = get_storage(str(path))
    ledger = Ledger(finished=1, completed=1)
    ledger.fired = {"rule": "target", "trial": "t" * 32, "finished": 1, "completed": 1, "reason": HOSTILE}
    config = {"space": {"c": f"choices([{HOSTILE!r}, 'b'])"}, "algorithm": "random", "max_trials": 3,
              "stop": {"target": 0.5}, "stop_state": ledger.to_dict()}
    storage.create_experiment("evil" + HOSTILE, config)
    storage.create_experiment("plain", config)
    return str(path)


@pytest.mark.parametrize("argv", [["list"], ["status"], ["status", "-n", "plain"], ["info", "-n", "plain"],
                                  ["hunt", "-n", "plain", "true"]])
def test_stored_names_reasons_and_bidi_controls_reach_the_terminal_escaped(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """`orchard list` printed an experiment's name raw (clearing the screen); every command printed
    U+202E raw, which shows the rest of the line reversed; hunt printed a stopping reason raw."""
    from orchard.cli import main

    storage = _hostile_storage(tmp_path / "o.pkl")
    main([*argv[:1], "--storage", storage, *argv[1:]])
    out, err = capsys.readouterr()
    assert _drives_the_terminal(out + err) == [], out + err
    assert "\\u202e" in out + err, out + err



@pytest.mark.parametrize("argv", [["list"], ["status"], ["info", "-n", "e"]])
def test_a_line_break_in_a_stored_name_or_value_does_not_split_a_row(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """A newline in an experiment's name (another program's) split its row of `orchard list` in two, the
    second looking like another experiment's; one in a worker's name or a choices value split status's and
    info's lines the same way."""
    from orchard.cli import main

    path = str(tmp_path / "o.pkl")
    storage = get_storage(path)
    config = {"space": {"c": "choices(['a\\nb', 'z'])"}, "algorithm": "random", "max_trials": 3}
    exp_id = storage.create_experiment("e", config)
    storage.create_experiment("two\nlines", config)
    worker = "host:1:w\nfake line"
    done = storage.register_trial(exp_id, {"c": "a\nb"}, worker=worker)
    storage.complete_trial(done.id, worker, 0.5)
    storage.register_trial(exp_id, {"c": "z"}, worker=worker)
    assert main([*argv[:1], "--storage", path, *argv[1:]]) == 0
    out = capsys.readouterr().out
    if argv == ["list"]:
        assert [line.split()[0] for line in out.splitlines()] == ["e", "two\\x0alines"]
    else:
        assert "c=a\\x0ab" in out and "host:1:w\\x0afake line" in out
    assert not [line for line in out.splitlines() if "fake line" in line and "host" not in line]
    assert not [line for line in out.splitlines() if line.startswith(("b ", "lines", "b\t"))]


# -- files Orchard writes -----------------------------------------------------------------


@pytest.mark.parametrize("argv", [["db", "dump", "-n", "plain", "-o"],
                                  ["plot", "regret", "-n", "plain", "-o"]])
def test_a_dump_or_plot_written_over_a_private_file_stays_private(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """Dumping (or plotting) again over a file its owner had made chmod 600 left it world-readable
    (the umask's 644): every trial's params, results, errors and host names."""
    import orchard
    from orchard.cli import main

    storage = str(tmp_path / "o.pkl")
    exp = orchard.build_experiment("plain", space={"x": "uniform(0, 1)"}, storage=storage)
    exp.insert({"x": 0.5}, objective=1.0)
    out = tmp_path / ("private.json" if argv[0] == "db" else "private.html")
    out.write_text("")
    out.chmod(0o600)
    assert main([*argv[:1], "--storage", storage, *argv[1:], str(out)]) == 0, capsys.readouterr()
    assert out.stat().st_mode & 0o777 == 0o600
    assert out.stat().st_size > 0


def test_hunt_without_priors_joining_a_space_stored_as_text_names_the_stored_configuration(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`orchard hunt -n NAME script` (priors taken from the stored experiment) ended with "unexpected
    TypeError: string indices must be integers" on a space another program stored as text."""
    from orchard.cli import main

    storage = str(tmp_path / "o.pkl")
    get_storage(storage).create_experiment("odd", {"space": "x", "algorithm": "random", "max_trials": 3})
    assert main(["hunt", "-n", "odd", "--storage", storage, "true"]) == 2
    err = capsys.readouterr().err
    assert "unusable stored configuration" in err and "orchard db rm -n odd" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_the_progress_bar_shows_a_stored_objective_name_escaped(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The bar of workon and hunt (on a terminal) wrote `best NAME=...` with the objective's name as
    stored: escapes in it cleared the screen and set the window title."""
    from orchard.monitor import ProgressMonitor

    storage = get_storage(str(tmp_path / "o.pkl"))
    exp = storage.create_experiment("bar", {"space": {"x": "uniform(0, 1)"},
                                            "objectives": {"acc" + HOSTILE: "max"}})
    trial = storage.register_trial(exp, {"x": 0.5}, worker="h:1:a")
    storage.complete_trial(trial.id, "h:1:a", -0.5, {"acc" + HOSTILE: 0.5})
    with ProgressMonitor(storage, exp, "bar", 3, show_bar=True):
        pass
    err = capsys.readouterr().err
    assert "best acc" in err, err
    assert not set(err) & {"\x1b", "\x07", "\u202e", "\u2066"}, err  # tqdm's own \r stay


@pytest.mark.slow  # a hunt with two loky worker processes
def test_warnings_of_hunts_worker_processes_quote_a_stored_worker_name_escaped(tmp_path: Path) -> None:
    """The worker processes of `hunt --n-workers 2` have no logging configuration: Python printed their
    warning "worker NAME stopped heartbeating it" raw, escape sequences of the stored name included."""
    import subprocess
    import sys

    storage = str(tmp_path / "o.pkl")
    store = get_storage(storage)
    exp = store.create_experiment("lost", {"space": {"x": "uniform(0, 1)"}, "algorithm": "random",
                                           "max_trials": 3, "heartbeat": 0.3})
    store.register_trial(exp, {"x": 0.5}, worker=f"gone{HOSTILE}:1:a")  # a worker gone: another releases it
    script = "import orchard; orchard.report_objective(1.0)"
    done = subprocess.run([sys.executable, "-m", "orchard", "hunt", "-n", "lost", "--storage", storage,
                           "--n-workers", "2", sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    said = done.stdout + done.stderr
    assert done.returncode == 0 and "stopped heartbeating" in said, said
    assert _drives_the_terminal(said) == [], said
