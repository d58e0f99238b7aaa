"""Hostile data and careless input at the edges: MongoDB documents written by another program,
URIs with typos, and what the dashboard shows of them."""

from __future__ import annotations

import contextlib
import datetime
import uuid
from typing import Any

import pytest

import orchard
from orchard.storages import get_storage
from orchard.trial import TrialStatus

# -- trial documents another program wrote ------------------------------------------------

#: Trial documents no Orchard release writes, each breaking a reader that trusts the shape.
ODD_TRIALS: dict[str, dict[str, Any]] = {
    "no status": {"_id": "odd-no-status"},
    "a status Orchard does not know": {"_id": "odd-status", "status": "bogus"},
    "a status that is a number": {"_id": "odd-status-int", "status": 3},
    "an _id that is a dict": {"_id": {"made": "elsewhere"}, "status": "completed"},
    "a version that is a string": {"_id": "odd-version", "status": "completed", "version": "9"},
}


@pytest.mark.parametrize("case", list(ODD_TRIALS))
def test_odd_trial_documents_neither_stop_the_workers_nor_the_change_feed(case: str) -> None:
    exp = orchard.build_experiment("odd", space={"x": "uniform(0, 1)"}, algorithm="random", max_trials=4,
                                   storage="mongomock://")
    storage: Any = exp.storage
    _, cursor = storage.fetch_changes(exp.id)  # a reader already following the experiment
    doc = {"experiment": exp.id, "params": {"x": 0.5}, "objective": 1.0, "results": {},
           "mtime": datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None), **ODD_TRIALS[case]}
    storage._trials.insert_one(doc)  # written by another program
    storage.fetch_changes(exp.id, cursor)
    storage.fetch_changes(exp.id)
    assert sum(storage.count_trials(exp.id).values()) <= 1
    exp.workon(lambda x: x, n_workers=1)  # every worker used to die on the first read
    assert storage.count_trials(exp.id)[TrialStatus.COMPLETED] >= 4


@pytest.mark.slow  # the wire server: mongomock applies $inc to text without a word
@pytest.mark.parametrize("status", ["new", "reserved"])
@pytest.mark.parametrize("version", ["9", None])
def test_a_trial_whose_version_is_not_a_number_is_broken_not_fatal(
        mongo_db_uri: str, status: str, version: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Every write increments ``version``: on a version that is text, the server refuses the write."""
    from orchard.trial import Trial

    exp = orchard.build_experiment("odd", space={"x": "uniform(0, 1)"}, algorithm="random", max_trials=3,
                                   heartbeat=0.2, storage=mongo_db_uri)
    storage: Any = exp.storage
    doc = Trial(id="h" * 32, experiment=exp.id, params={"x": 0.5}, submit_time=0.0, status=TrialStatus(status),
                worker="gone:1:x" if status == "reserved" else None, heartbeat=1.0).to_dict()
    doc.update(_id=doc.pop("id"), version=version, mtime=datetime.datetime(2020, 1, 1))
    storage._trials.insert_one(doc)  # written by another program
    exp.workon(lambda x: x, n_workers=1)  # the first reservation (or release) used to kill every worker
    assert storage.count_trials(exp.id)[TrialStatus.COMPLETED] == 3
    assert "h" * 32 in caplog.text
    if status == "new":  # the only waiting trial left: a reservation breaks it instead of failing
        assert storage.reserve_trial(exp.id, "w") is None
        assert storage._trials.find_one({"_id": "h" * 32})["status"] == "broken"


#: Experiment documents no Orchard release writes.
ODD_EXPERIMENTS: dict[str, dict[str, Any]] = {
    "no name": {"_id": "odd-1", "config": {}, "created": 1.0},
    "no creation time": {"_id": "odd-2", "name": "odd-2", "config": {}},
    "a config that is a string": {"_id": "odd-3", "name": "odd-3", "config": "zzz", "created": 1.0},
    "a config that is a list": {"_id": "odd-4", "name": "odd-4", "config": [1, 2], "created": 1.0},
    "a name that is a number": {"_id": "odd-5", "name": 5, "config": {}, "created": 1.0},
}


@pytest.mark.parametrize("case", list(ODD_EXPERIMENTS))
def test_odd_experiment_documents_are_skipped_and_named_by_every_listing(
        case: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    from orchard.cli import main
    from orchard.errors import StorageCorruptedError

    uri = "mongomock://odd-experiments-" + uuid.uuid4().hex[:12]
    storage: Any = get_storage(uri)
    storage.create_experiment("kept", {"space": {"x": "uniform(0, 1)"}})
    doc = ODD_EXPERIMENTS[case]
    storage._db().experiments.insert_one(dict(doc))  # written by another program
    assert [record.name for record in storage.list_experiments()] == ["kept"]
    assert "not one Orchard writes" in caplog.text and repr(doc["_id"]) in caplog.text
    assert main(["list", "--storage", uri]) == 0 and "kept" in capsys.readouterr().out
    if isinstance(doc.get("name"), str):
        with pytest.raises(StorageCorruptedError, match="not one Orchard writes"):
            storage.get_experiment(doc["name"])


# -- careless storage URIs ---------------------------------------------------------------

SECRET = "Sx9-pw"


@pytest.mark.parametrize("uri", [
    f"mongodb://me:{SECRET}/x@127.0.0.1:1/db",  # an unescaped / in the password
    f"mongodb://me:{SECRET}@x@127.0.0.1:1/db",  # an unescaped @ in the password
    f"mongodb:/me:{SECRET}@127.0.0.1:1/db",  # a slash short
    f"mongodb//me:{SECRET}@127.0.0.1:1/db",  # the colon left out
    f"mongodb:me:{SECRET}@127.0.0.1:1/db",
    f"me:{SECRET}@127.0.0.1:27017/db",  # the scheme left out
])
def test_a_mistyped_uri_is_one_line_that_shows_no_part_of_the_password(
        uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    from orchard.cli import main

    assert main(["status", "--storage", uri]) != 0
    out, err = capsys.readouterr()
    said = out + err
    assert "error" in said and len(said.strip().splitlines()) == 1, said
    assert SECRET not in said and "x@127" not in said and "/x@" not in said, said


# -- what the dashboard shows of them ----------------------------------------------------

#: Settings another program could store in an experiment's configuration: none passes the checks
#: Orchard applies before storing one, and each used to break the dashboard for every experiment.
ODD_SETTINGS: dict[str, tuple[str, Any]] = {
    "a max_trials that is text": ("max_trials", "ten"),
    "a heartbeat that is text": ("heartbeat", "x"),
    "a space that is a list": ("space", [1, 2]),
    "an objective direction Orchard does not know": ("objectives", {"a": "min", "b": "sideways"}),
    "a constraint Orchard cannot read": ("constraints", ["mem<b> <= 3"]),  # with two objectives
    "a stopping rule that is text": ("stop", {"target": "x"}),
    "a stopping ledger that is text": ("_stop_ledger", "x"),
}


@pytest.mark.parametrize("case", list(ODD_SETTINGS))
def test_an_experiment_with_odd_settings_is_shown_with_its_problem_and_the_others_as_they_are(case: str) -> None:
    import json

    from orchard.dashboard import StorageView
    from orchard.dashboard._payloads import experiment_detail, experiment_summary, to_json, trial_rows
    from orchard.stopping import LEDGER_KEY

    key, value = ODD_SETTINGS[case]
    key = LEDGER_KEY if key == "_stop_ledger" else key
    storage = get_storage("memory://")
    good = storage.create_experiment("good", {"space": {"x": "uniform(0, 1)"}, "max_trials": 4})
    storage.complete_trial(storage.register_trial(good, {"x": 0.5}, worker="w").id, "w", 1.0)
    config = {"space": {"x": "uniform(0, 1)"}, "max_trials": 4, "stop": {"patience": 3}, key: value}
    if key == "constraints":  # read only with several objectives (which have no patience rule)
        config.update(objectives={"a": "min", "b": "min"}, stop=None)
    odd = storage.create_experiment("odd", config)  # the storage keeps what another program wrote
    storage.complete_trial(storage.register_trial(odd, {"x": 0.5}, worker="w").id, "w", 2.0, {"a": 2.0, "b": 1.0})
    view = StorageView(storage, min_interval=0)
    with view.reading():  # what /api/experiments, /api/experiments/NAME and its trials serve
        listed = json.loads(to_json([experiment_summary(v) for v in view.experiments()]))
        shown = view.experiment("odd")
        assert shown is not None
        detail = json.loads(to_json(experiment_detail(shown, "memory://")))
        rows = json.loads(to_json(trial_rows(shown)))
    assert [(row["name"], row["counts"]["completed"]) for row in listed] == [("good", 1), ("odd", 1)]
    assert listed[0]["problem"] is None
    assert key in listed[1]["problem"] and key in detail["problem"]
    assert detail["best_objective"] == 2.0 and len(rows["trials"]) == 1


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "http://127.0.0.1", "[127.0.0.1", "no-such-host.invalid",
                                  # 'unexpected UnicodeError' from the idna codec (exit 1)
                                  "a" * 64 + ".lab", "node7..lab", "node\udcff"])
def test_serve_on_a_mistyped_host_is_one_line_naming_it_and_no_warning_first(
        host: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from orchard.cli import main

    assert main(["serve", "--storage", str(tmp_path / "o.pkl"), "--host", host, "--port", "0"]) != 0
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and repr(host) in said[0] and "--port" in said[0], said


@pytest.mark.parametrize("name", ["", " ", "http://lab.example.org", "lab.example.org/dash"])
def test_serve_refuses_an_allowed_host_no_host_header_names(
        name: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """'' answered requests naming no host; 'http://lab' allowed the host 'http' and not the lab."""
    from orchard.cli import main

    assert main(["serve", "--storage", str(tmp_path / "o.pkl"), "--allowed-host", name, "--port", "0"]) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and f"--allowed-host {name!r} is not a host name" in said[0], said
    assert not (tmp_path / "o.pkl").exists()


def test_a_port_beyond_65535_is_refused_instead_of_another_port_served() -> None:
    from orchard.dashboard import bind
    from orchard.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="70000 is not a TCP port"):
        bind("127.0.0.1", 70000).close()


def test_a_port_another_program_listens_on_is_named_with_what_to_do(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """It printed '[Errno 98] Address already in use (OSError)': no address, nothing to do."""
    import socket

    from orchard.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", "--storage", str(tmp_path / "o.pkl"), "--port", str(port)]) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and f"cannot listen on 127.0.0.1:{port}" in said[0] and "--port 0" in said[0], said


def test_an_ipv6_address_in_brackets_is_the_address() -> None:
    from orchard.dashboard import bind, is_loopback

    assert is_loopback("[::1]")
    sock = bind("[::1]", 0)
    assert sock.getsockname()[0] == "::1"
    sock.close()


def test_the_dashboard_shows_a_warm_start_sources_uri_without_its_password() -> None:
    import json

    from orchard.dashboard import StorageView
    from orchard.dashboard._payloads import experiment_detail, to_json

    storage = get_storage("memory://")
    source = {"experiment": "old", "storage": f"mongodb://me:{SECRET}@db.example:27017/runs", "fill": {}}
    storage.create_experiment("new", {"space": {"x": "uniform(0, 1)"}, "warm_start": [source]})
    view = StorageView(storage).experiment("new")
    assert view is not None
    detail = to_json(experiment_detail(view, storage.redacted_uri))  # what /api/experiments/new serves
    assert SECRET not in detail
    assert json.loads(detail)["settings"]["warm_start"][0]["storage"] == "mongodb://me:***@db.example:27017/runs"


@pytest.mark.parametrize("options", [
    f"tls=true&tlsCertificateKeyFilePassword={SECRET}",  # a secret the driver takes in the URI
    f"authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:{SECRET}",
])
def test_secrets_in_uri_options_are_hidden_like_the_password(options: str) -> None:
    storage = get_storage(f"mongodb://127.0.0.1:1/db?{options}")
    assert SECRET not in storage.redacted_uri + repr(storage) and "***" in storage.redacted_uri


def test_a_password_written_as_an_option_is_not_printed_in_the_error(capsys: pytest.CaptureFixture[str]) -> None:
    from orchard.cli import main

    assert main(["status", "--storage", f"mongodb://127.0.0.1:1/db?username=me&password={SECRET}"]) != 0
    said = "".join(capsys.readouterr())
    assert "Unknown option" in said and SECRET not in said, said


@pytest.mark.slow
def test_the_pages_show_every_experiment_and_the_problem_of_an_odd_one(browser: Any, tmp_path: Any) -> None:
    from selenium.webdriver.common.by import By

    from tests.test_dashboard_live import serving, text_of, wait_for

    storage = get_storage(str(tmp_path / "o.pkl"))
    storage.create_experiment("good", {"space": {"x": "uniform(0, 1)"}, "max_trials": 4})
    storage.create_experiment("odd", {"space": {"x": "uniform(0, 1)"}, "max_trials": "ten"})  # another program's
    storage.close()
    with serving(str(tmp_path / "o.pkl"), cwd=tmp_path) as served:
        browser.get(served.url)
        wait_for(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#experiments tbody tr")) == 2)
        assert "odd settings" in text_of(browser, "#experiments tr[data-name='odd']")
        browser.get(served.url + "experiments/odd")
        wait_for(browser, lambda b: "max_trials" in b.find_element(By.ID, "config-problem").text)
        assert text_of(browser, "h1#name") == "odd"
        browser.get("about:blank")  # stop polling before the server stops


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_ctrl_c_stops_the_dashboard_while_a_client_has_stopped_reading(tmp_path: Any) -> None:
    import signal
    import socket
    import time

    from tests.test_dashboard_live import serving

    with serving(str(tmp_path / "o.pkl"), cwd=tmp_path) as served:
        port = int(served.url.rsplit(":", 1)[1].strip("/"))
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /static/plotly.min.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # and never read
        time.sleep(0.5)
        started = time.monotonic()
        served.proc.send_signal(signal.SIGINT)
        served.proc.wait(timeout=20)  # it used to wait for that client for ever
        assert time.monotonic() - started < 10
        stalled.close()


@pytest.mark.parametrize("params", [{"x": 10**30}, {"x": {"$where": "1"}}, {"x": [1, 2]}])
def test_restoring_a_trial_mongodb_would_skip_stores_nothing_and_says_which(params: dict[str, Any]) -> None:
    """A hand-edited dump loaded with ``orchard db load``: refused whole, not half-stored or stored unreadable."""
    from orchard.errors import StorageError
    from orchard.trial import Trial

    storage: Any = get_storage("mongomock://")
    exp = storage.create_experiment("exp", {"space": {"x": "uniform(0, 1)"}})
    fine = Trial(id="a" * 32, experiment=exp, params={"x": 0.5}, status=TrialStatus.COMPLETED, objective=1.0)
    odd = Trial(id="b" * 32, experiment=exp, params=params, status=TrialStatus.COMPLETED, objective=2.0)
    with pytest.raises(StorageError, match="not one Orchard writes"):
        storage.restore_trials(exp, [fine, odd])
    assert storage._trials.count_documents({}) == 0


def test_stored_strings_cannot_drive_the_terminal_status_info_and_errors_print_them_on(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A choices value or a script's error printed raw cleared the screen and set the window title."""
    from orchard.cli import main

    hostile = "\x1b[2J\x1b]0;pwned\x07\x9b"
    storage = str(tmp_path / "o.pkl")
    exp = orchard.build_experiment("esc", space={"c": f"choices([{hostile!r}, 'b'])"}, storage=storage,
                                   max_trials=3, max_broken=1)
    kept = exp.insert({"c": hostile}, objective=0.1)

    def fail(c: str) -> float:
        raise RuntimeError(f"\x1b[31m{c}\rdone")

    with pytest.raises(orchard.errors.ExperimentBrokenError):
        exp.workon(fail, n_workers=1, executor="thread")
    broken = next(t for t in exp.fetch_trials() if t.status is TrialStatus.BROKEN)
    capsys.readouterr()
    for argv in (["status"], ["info"], ["info", "--trial", broken.id], ["info", "--trial", kept.id], ["hunt", "true"]):
        main([argv[0], "--storage", storage, "-n", "esc", *argv[1:]])
        out, err = capsys.readouterr()
        shown = out + err
        assert not set(shown) & {"\x1b", "\x07", "\r", "\x9b"}, (argv, shown)
        assert "\\x1b" in shown, (argv, shown)


def test_insert_reads_a_bounded_amount_of_a_file_given_by_mistake(
        tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """--file /dev/zero (or a data set) was read whole: 4 GB of memory in 4 s, then the machine's."""
    from orchard.cli import insert, main

    store = str(tmp_path / "o.pkl")
    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage=store)
    rows = tmp_path / "rows.csv"
    rows.write_text("x,objective\n" + "".join(f"0.{i:03d},1\n" for i in range(200)))
    monkeypatch.setattr(insert, "MAX_FILE_BYTES", 1000, raising=False)
    assert main(["insert", "-n", "e", "--storage", store, "--file", str(rows)]) == 2
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1 and f"--file {rows} holds more than" in line and "split it" in line, line
    monkeypatch.undo()
    assert main(["insert", "-n", "e", "--storage", store, "--file", "/dev/zero"]) == 2
    assert "--file /dev/zero holds more than 64 MiB" in capsys.readouterr().err and exp.fetch_trials() == []


def test_an_error_quoting_a_huge_value_is_one_short_line_that_still_says_what_to_do(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """insert x=<5,000 digits> printed an error line of 5 KB, the value quoted whole."""
    from orchard.cli import main

    store = str(tmp_path / "o.pkl")
    orchard.build_experiment("e", space={"x": "uniform(0, 1)", "y": "uniform(0, 1)"}, storage=store)
    assert main(["insert", "-n", "e", "--storage", store, "x=" + "1" * 5000]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert len(line) < 1800 and "characters; --debug shows them" in line and "the space has x, y" in line, line


def test_json_output_is_standard_json_when_a_stored_result_is_not_finite(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """info --json wrote NaN and Infinity, which jq and strict JSON readers refuse."""
    import json

    from orchard.cli import main

    store = str(tmp_path / "o.pkl")
    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage=store)
    trial = exp.insert({"x": 0.5}, objective=0.1, results={"acc": float("nan"), "big": float("-inf")})
    for argv in (["info", "-n", "e"], ["info", "-n", "e", "--trial", trial.id], ["status", "-n", "e"], ["list"]):
        assert main([argv[0], "--storage", store, "--json", *argv[1:]]) == 0
        json.loads(capsys.readouterr().out, parse_constant=lambda constant: pytest.fail(f"{argv}: {constant}"))
    assert main(["info", "--storage", store, "--json", "-n", "e", "--trial", trial.id]) == 0
    assert json.loads(capsys.readouterr().out)["trial"]["results"] == {"acc": None, "big": None}


def test_db_load_reads_a_bounded_amount_of_a_file_given_by_mistake(
        tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """db load /dev/zero, a FIFO fed without end or stdin read whole: the memory filled until the machine's ran out."""
    import os
    import threading

    from orchard.cli import _dumps, main

    store = str(tmp_path / "o.pkl")
    monkeypatch.setattr(_dumps, "MAX_DUMP_BYTES", 1000, raising=False)
    huge = tmp_path / "huge.json"
    with huge.open("wb") as handle:  # sparse: refused by its size, unread
        handle.truncate(10**12)
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as writer, contextlib.suppress(BrokenPipeError):
            while True:
                writer.write(b" " * 65536)

    threading.Thread(target=feed, daemon=True).start()
    with open("/dev/zero") as zeros:
        monkeypatch.setattr("sys.stdin", zeros)
        for path in ("/dev/zero", str(huge), fifo, "-"):
            assert main(["db", "load", "--storage", store, path]) == 2
            (line,) = capsys.readouterr().err.strip().splitlines()
            assert f"dump {path} holds more than 1 KB" in line and "is it the right file?" in line, line
    assert not os.path.exists(store)  # nothing was loaded, no storage created


@pytest.mark.parametrize("verdict", [
    {"pruner": "median", "prune": True, "step": 1, "cutoff": "abc", "compared": 5},  # odd values of its own pruner
    {"pruner": "another", "reason": 7},  # a plugin's or another program's shape
    {"pruner": "median", "prune": False, "step": 0},  # before its first report: "unexpected IndexError"
])
def test_info_of_a_trial_shows_a_verdict_another_program_wrote(
        tmp_path: Any, capsys: pytest.CaptureFixture[str], verdict: dict[str, Any]) -> None:
    """info --trial of a pruned trial whose verdict is a dict Orchard's pruners never write failed with
    "unexpected TypeError" (recomputing it, and formatting its cut-off)."""
    from orchard.cli import main
    from orchard.storages import get_storage

    store = str(tmp_path / "o.pkl")
    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage=store, pruner="median")
    storage = get_storage(store)
    trial = storage.register_trial(exp.id, {"x": 0.5}, worker="w")
    storage.report_trial(trial.id, "w", 1, 0.5)
    storage.prune_trial(trial.id, "w", verdict)
    assert main(["info", "--storage", store, "-n", "e", "--trial", trial.id]) == 0
    out = capsys.readouterr().out
    assert f"pruned by: {verdict['pruner']}" in out and "not recomputed: the stored verdict is not one 'median'" in out
    assert main(["info", "--storage", store, "--json", "-n", "e", "--trial", trial.id]) == 0
    assert '"recomputed_verdict": null' in capsys.readouterr().out


@pytest.mark.parametrize("objective", [10**5000 - 1, "0.5x"], ids=["5000-digit-int", "text"])
@pytest.mark.parametrize("uri", ["memory://objective-{}", "pickle://{tmp}/o.pkl"])
def test_an_objective_no_float_holds_is_one_storage_error_and_the_trial_stays_reserved(
        objective: Any, uri: str, tmp_path: Any) -> None:
    """`complete_trial(id, w, 10**5000 - 1)` raised a bare OverflowError out of the storage."""
    storage = get_storage(uri.format(uuid.uuid4().hex, tmp=tmp_path))
    exp = storage.create_experiment("o", {})
    trial = storage.register_trial(exp, {"x": 1.0}, worker="w", budget=None)
    with pytest.raises(orchard.StorageError, match=r"cannot store objective .* a trial's objective is a float"):
        storage.complete_trial(trial.id, "w", objective)
    assert storage.get_trial(trial.id).status is TrialStatus.RESERVED  # nothing written: the worker may retry
    assert storage.complete_trial(trial.id, "w", 0.5).objective == 0.5
