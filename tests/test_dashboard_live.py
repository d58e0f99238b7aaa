"""``orchard serve`` as a real process: its JSON API, and its pages in a real headless browser.

The server runs as ``python -m orchard serve --port 0`` against a pickle file
or the SecantusDB wire server; the URL it prints is parsed. The pages are
rendered by Debian's ``chromium`` through ``chromium-driver`` and Selenium,
and the test reads what a person would see. ``ORCHARD_SCREENSHOTS=DIR`` saves
a screenshot of each page there (how docs/img/ was made).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchard.storages import BaseStorage, get_storage

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,1700")
URL = re.compile(r"http://\S+/")
SLOW_TRAIN = r'''
import os, sys, time
import orchard
x = float(sys.argv[1].split("=")[1])
time.sleep(0.8)
orchard.report_objective((x - 0.3) ** 2)
'''


@dataclass
class Served:
    """A running ``orchard serve`` process, its URL and everything it printed."""

    proc: subprocess.Popen[str]
    url: str
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "\n".join(self.lines)


def _pump(stream: Any, sink: queue.Queue[str]) -> None:
    for line in stream:
        sink.put(line.rstrip("\n"))


@contextlib.contextmanager
def serving(storage: str, *extra: str, cwd: Path) -> Iterator[Served]:
    """Run ``orchard serve --port 0`` on ``storage`` for the block; Ctrl-C it afterwards (exit 0 expected)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    proc = subprocess.Popen([sys.executable, "-m", "orchard", "serve", "--storage", storage, "--port", "0", *extra],
                            cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while not any(URL.search(line) for line in seen):
        assert time.monotonic() < deadline and proc.poll() is None, f"serve did not start: {seen}"
        with contextlib.suppress(queue.Empty):
            seen.append(lines.get(timeout=0.5))
    served = Served(proc, next(m.group(0) for m in map(URL.search, seen) if m), seen)
    try:
        yield served
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        while not lines.empty():
            seen.append(lines.get())
    assert code == 0, served.output()


def request(url: str, method: str = "GET", host: str | None = None) -> tuple[int, Any]:
    """Status and decoded body (JSON when it is JSON) of one HTTP request (``host``: its ``Host`` header)."""
    headers = {"Host": host} if host is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method, headers=headers),
                                    timeout=30) as response:
            status, body, kind = response.status, response.read(), response.headers.get_content_type()
    except urllib.error.HTTPError as err:
        status, body, kind = err.code, err.read(), err.headers.get_content_type()
    text = body.decode()
    return status, json.loads(text) if kind == "application/json" else text


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def populate(store: BaseStorage, name: str = "dash") -> dict[str, str]:
    """An experiment with 3 completed, 1 broken, 1 reserved and 2 new trials; returns some ids."""
    exp_id = store.create_experiment(name, {"space": {"x": "uniform(0, 1)", "opt": "choices(['adam', 'sgd'])"},
                                            "algorithm": "random", "max_trials": 10, "heartbeat": 30})
    for x, value in ((0.1, 3.0), (0.2, 2.0), (0.3, 1.5)):
        trial = store.register_trial(exp_id, {"x": x, "opt": "adam"}, worker="host:1:a")
        store.complete_trial(trial.id, "host:1:a", value)
    broken = store.register_trial(exp_id, {"x": 0.4, "opt": "sgd"}, worker="host:1:a")
    store.fail_trial(broken.id, "host:1:a", {"type": "ValueError", "message": "loss exploded"})
    running = store.register_trial(exp_id, {"x": 0.5, "opt": "sgd"}, worker="host:2:b")
    store.register_trial(exp_id, {"x": 0.6, "opt": "adam"})
    store.register_trial(exp_id, {"x": 0.7, "opt": "sgd"})
    return {"id": exp_id, "running": running.id}


@pytest.fixture(params=["pickle", "mongodb"])
def storage_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "pickle":
        return str(tmp_path / "orchard.pkl")
    return str(request.getfixturevalue("mongo_db_uri"))


# -- the API -------------------------------------------------------------------------------------------


def test_api_serves_counts_follows_changes_and_refuses_writes(storage_uri: str, tmp_path: Path) -> None:
    store = get_storage(storage_uri)
    ids = populate(store)
    before = Path(storage_uri).read_bytes() if storage_uri.endswith(".pkl") else None
    with serving(storage_uri, cwd=tmp_path) as served:
        assert served.url.startswith("http://127.0.0.1:")
        status, experiments = request(served.url + "api/experiments")
        assert status == 200 and [e["name"] for e in experiments] == ["dash"]
        assert experiments[0]["counts"] == {"new": 2, "reserved": 1, "completed": 3, "broken": 1, "interrupted": 0,
                                            "pruned": 0}
        assert (experiments[0]["best_objective"], experiments[0]["live_workers"]) == (1.5, 1)

        status, detail = request(served.url + "api/experiments/dash")
        assert status == 200 and [w["worker"] for w in detail["workers"]] == ["host:2:b"]
        status, trials = request(served.url + "api/experiments/dash/trials")
        assert status == 200 and len(trials["trials"]) == 7
        assert request(served.url + f"api/experiments/dash/trials?since={trials['version']}")[1]["trials"] == []
        page = request(served.url + "api/experiments/dash/trials?limit=4")[1]
        rest = request(served.url + f"api/experiments/dash/trials?limit=4&after={page['after']}")[1]
        assert (page["more"], rest["more"]) == (True, False) and page["trials"] + rest["trials"] == trials["trials"]
        status, missing = request(served.url + "api/experiments/nope")
        assert status == 404 and "nope" in missing["error"]

        for method in ("POST", "PUT", "PATCH", "DELETE"):
            for path in ("api/experiments", "api/experiments/dash", "api/experiments/dash/trials", ""):
                assert request(served.url + path, method)[0] == 405, (method, path)
        if before is not None:
            assert Path(storage_uri).read_bytes() == before  # nothing the server did wrote to the file

        store.complete_trial(ids["running"], "host:2:b", 0.5)  # a worker finishes: the API follows
        eventually(lambda: request(served.url + "api/experiments")[1][0]["counts"]["completed"] == 4)
        status, delta = request(served.url + f"api/experiments/dash/trials?since={trials['version']}")
        assert [(t["id"], t["status"]) for t in delta["trials"]] == [(ids["running"], "completed")]
    store.close()


#: Names another program may have written into the storage (orchard's own names allow none of them).
URL_SPECIAL_NAMES = ("runs/2024", "q?x=1", "h#1", "50%41", "a b", "end/", "x/trials")


def test_names_holding_url_special_characters_reach_their_own_experiment(tmp_path: Path) -> None:
    """/api/experiments/runs%2F2024 answered 404: the name was decoded into two segments of the path."""
    store = get_storage(str(tmp_path / "orchard.pkl"))
    for number, name in enumerate(URL_SPECIAL_NAMES):
        exp_id = store.create_experiment(name, {"space": {"x": "uniform(0, 1)"}, "algorithm": "random"})
        for n in range(number + 1):  # a count of trials to tell the experiments apart by
            store.register_trial(exp_id, {"x": n / 10})
    store.close()
    with serving(str(tmp_path / "orchard.pkl"), cwd=tmp_path) as served:
        for number, name in enumerate(URL_SPECIAL_NAMES):
            quoted = urllib.parse.quote(name, safe="")
            status, detail = request(served.url + "api/experiments/" + quoted)
            assert (status, detail["name"], detail["counts"]["new"]) == (200, name, number + 1)
            status, rows = request(served.url + f"api/experiments/{quoted}/trials")
            assert (status, len(rows["trials"])) == (200, number + 1), name
            assert request(served.url + "experiments/" + quoted)[0] == 200
        status, missing = request(served.url + "api/experiments/runs%2F2025")
        assert status == 404 and "'runs/2025'" in missing["error"]


def test_a_pickle_lock_held_by_a_worker_does_not_block_the_dashboard(tmp_path: Path) -> None:
    import fcntl

    path = tmp_path / "orchard.pkl"
    store = get_storage(str(path))
    populate(store)
    store.close()
    with open(str(path) + ".lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # a worker in the middle of a write, for as long as it likes
        with serving(str(path), cwd=tmp_path) as served:
            started = time.monotonic()
            status, experiments = request(served.url + "api/experiments")
            status_trials, trials = request(served.url + "api/experiments/dash/trials")
            waited = time.monotonic() - started
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    assert (status, status_trials) == (200, 200) and experiments[0]["counts"]["completed"] == 3
    assert len(trials["trials"]) == 7 and waited < 10.0  # the storage's lock timeout is 60 s


def test_credentials_in_the_storage_uri_reach_no_page_and_no_log(tmp_path: Path) -> None:
    uri = "mongodb://orchard:s3cr3t-pass@127.0.0.1:1/db?serverSelectionTimeoutMS=300"
    with serving(uri, "--debug", cwd=tmp_path) as served:
        status, body = request(served.url + "api/experiments")
        assert status == 503 and "127.0.0.1:1" in body["error"]
        pages = [request(served.url + path)[1] for path in ("", "experiments/x", "api/experiments/x")]
    assert "s3cr3t" not in json.dumps([body, pages]) + served.output()


def test_a_host_other_than_loopback_prints_a_warning(tmp_path: Path) -> None:
    with serving(str(tmp_path / "o.pkl"), "--host", "0.0.0.0", cwd=tmp_path) as served:
        assert request(served.url.replace("0.0.0.0", "127.0.0.1") + "api/experiments") == (200, [])
    assert any("orchard: WARNING: serving on 0.0.0.0" in line for line in served.lines)


def test_a_request_naming_a_host_not_served_is_refused(tmp_path: Path) -> None:
    """DNS rebinding: a page from evil.example whose name now resolves to 127.0.0.1 reads nothing."""
    store = get_storage(str(tmp_path / "o.pkl"))
    populate(store)
    store.close()
    with serving(str(tmp_path / "o.pkl"), "--allowed-host", "orchard.lab", cwd=tmp_path) as served:
        port = served.url.rsplit(":", 1)[1].strip("/")
        api = served.url + "api/experiments"
        for forged in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", ""):
            status, body = request(api, host=forged)
            assert status == 400 and "does not serve the host" in body and "--allowed-host" in body, forged
        for served_name in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", f"orchard.lab:{port}",
                            "LOCALHOST"):
            status, body = request(api, host=served_name)
            assert status == 200 and body[0]["name"] == "dash", served_name


# -- pages in a real browser ------------------------------------------------------------------------------


def start_chromium() -> Any:
    """Headless Chromium driven by Selenium, keeping the console's log (bench/dashboard.py uses it too)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(browser: Any, check: Callable[[Any], Any], timeout: float = 30.0) -> Any:
    """Poll ``check`` until it is truthy. An element that the page re-rendered between finding it
    and reading it (stale) means: poll again, like an element not found yet."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.2,
                         ignored_exceptions=(StaleElementReferenceException,)).until(check)


def text_of(browser: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.CSS_SELECTOR, css).text)


def screenshot(browser: Any, name: str) -> None:
    """Save the page as ``$ORCHARD_SCREENSHOTS/name``, if that variable is set."""
    target = os.environ.get("ORCHARD_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(Path(target) / name))


def screenshot_both_pages(browser: Any, url: str) -> None:
    """Save this experiment page, and the list from a second tab (this page is left as it is)."""
    if not os.environ.get("ORCHARD_SCREENSHOTS"):
        return
    screenshot(browser, "dashboard-experiment.png")
    page = browser.current_window_handle
    size = browser.get_window_size()
    browser.switch_to.new_window("tab")
    browser.set_window_size(size["width"], 360)
    browser.get(url)
    wait_for(browser, lambda b: b.execute_script("return document.querySelectorAll('#experiments tbody tr').length"))
    screenshot(browser, "dashboard-experiments.png")
    browser.close()
    browser.switch_to.window(page)
    browser.set_window_size(size["width"], size["height"])


def assert_offline_and_clean(browser: Any, url: str) -> None:
    """Everything the page loaded came from the dashboard itself, and the console has no error."""
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith(url) for r in resources), resources
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []


def test_the_list_says_which_experiment_a_stopping_rule_stopped(browser: Any, tmp_path: Path) -> None:
    """`orchard list` said so and the experiment's page did, the list did not: a stopped experiment looked
    like one waiting for workers, its budget not used up."""
    from selenium.webdriver.common.by import By

    import orchard

    path = str(tmp_path / "orchard.pkl")
    halted = orchard.build_experiment("halted", space={"x": "uniform(0, 1)"}, storage=path, max_trials=8,
                                      stop={"target": 0.5})
    halted.workon(lambda x: 0.1, n_workers=1, executor="thread", progress=False)
    store = get_storage(path)
    populate(store)
    store.close()
    with serving(path, cwd=tmp_path) as served:
        rows = {row["name"]: row for row in request(served.url + "api/experiments")[1]}
        assert rows["halted"]["stopped"] == "target" and rows["dash"]["stopped"] is None
        browser.get(served.url)
        wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#experiments tr[data-name='dash']"))
        assert "stopped by target" in text_of(browser, "#experiments tr[data-name='halted']")
        assert "stopped" not in text_of(browser, "#experiments tr[data-name='dash']")
        browser.get("about:blank")


def test_the_list_and_the_page_say_max_broken_stopped_an_experiment(browser: Any, tmp_path: Path) -> None:
    """`orchard list` and `status` said "stopped: 2 broken trials (max_broken=2)"; the dashboard's JSON and
    pages said nothing (stopped: null), the experiment looking like one waiting for workers."""
    from selenium.webdriver.common.by import By

    import orchard

    def fail(x: float) -> float:
        raise ValueError("bad objective")

    path = str(tmp_path / "orchard.pkl")
    broken = orchard.build_experiment("broken", space={"x": "uniform(0, 1)"}, storage=path, max_trials=9,
                                      max_broken=2)
    with pytest.raises(orchard.errors.ExperimentBrokenError):
        broken.workon(fail, max_trials=9, progress=False)
    store = get_storage(path)
    populate(store)  # one broken trial of the default max_broken=3: not stopped
    store.close()
    with serving(path, cwd=tmp_path) as served:
        rows = {row["name"]: row for row in request(served.url + "api/experiments")[1]}
        assert rows["broken"]["broken_stop"]["max_broken"] == 2 and rows["dash"]["broken_stop"] is None
        detail = request(served.url + "api/experiments/broken")[1]
        assert detail["broken_stop"]["line"].startswith("stopped: 2 broken trials (max_broken=2); no worker")
        browser.get(served.url)
        wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#experiments tr[data-name='dash']"))
        row = text_of(browser, "#experiments tr[data-name='broken']")
        assert "stopped: 2 broken trials (max_broken=2)" in row, row
        assert "stopped" not in text_of(browser, "#experiments tr[data-name='dash']")
        browser.get(served.url + "experiments/broken")
        wait_for(browser, lambda b: "max_broken" in b.find_element(By.ID, "broken-stop").text)
        browser.get(served.url + "experiments/dash")
        wait_for(browser, lambda b: b.find_element(By.ID, "count-broken").text == "1")
        assert not browser.find_element(By.ID, "broken-stop").is_displayed()
        browser.get("about:blank")


def test_pages_show_an_objective_to_maximise_as_returned(browser: Any, tmp_path: Path) -> None:
    """objectives={"acc": "max"}: the list, the best card, the table and the best-so-far chart showed every
    accuracy negated (as stored, minimised), the best one as the lowest number, all named "objective"."""
    from selenium.webdriver.common.by import By

    import orchard

    path = str(tmp_path / "orchard.pkl")
    exp = orchard.build_experiment("acc", space={"x": "uniform(0, 1)"}, storage=path, max_trials=3,
                                   objectives={"acc": "max"})
    exp.workon(lambda x: {"acc": 0.5 + x / 4}, n_workers=1, executor="thread", progress=False)
    best = max(t.results["acc"] for t in exp.fetch_trials())
    with serving(path, cwd=tmp_path) as served:
        (row,) = request(served.url + "api/experiments")[1]
        assert row["shown"] == {"name": "acc", "label": "acc", "sign": -1.0} and row["best_objective"] == -best
        browser.get(served.url)
        wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#experiments tr[data-name='acc']"))
        assert float(text_of(browser, "#experiments tr[data-name='acc'] td:nth-child(4)")) == pytest.approx(best, abs=1e-5)
        browser.get(served.url + "experiments/acc")
        wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#plot-best svg.main-svg"))
        assert float(text_of(browser, "#best")) == pytest.approx(best, abs=1e-5)
        assert browser.find_element(By.ID, "best").find_element(By.XPATH, "preceding-sibling::*[1]").text == "best acc"
        assert "acc" in [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#trials th")]
        drawn = browser.execute_script("return document.getElementById('plot-best').data[1].y")
        assert max(drawn) == pytest.approx(best) and drawn == sorted(drawn)  # best so far rises
        browser.get("about:blank")


def test_pages_show_the_experiment_its_counts_and_its_plots(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    store = get_storage(str(tmp_path / "orchard.pkl"))
    populate(store)
    store.close()
    with serving(str(tmp_path / "orchard.pkl"), cwd=tmp_path) as served:
        browser.get(served.url)
        wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#experiments tr[data-name='dash']"))
        assert text_of(browser, "#experiments tr[data-name='dash'] td:first-child") == "dash"
        assert text_of(browser, "#experiments tr[data-name='dash'] .count-completed") == "3"
        assert "3 / 10" in text_of(browser, "#experiments tr[data-name='dash']")
        assert_offline_and_clean(browser, served.url)

        browser.find_element(By.LINK_TEXT, "dash").click()
        wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#plot-best svg.main-svg"))
        assert text_of(browser, "h1#name") == "dash"
        counts = {key: text_of(browser, f"#count-{key}") for key in ("completed", "reserved", "waiting", "broken")}
        assert counts == {"completed": "3", "reserved": "1", "waiting": "2", "broken": "1"}
        assert text_of(browser, "#best") == "1.5"
        wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#plot-parallel svg.main-svg"))
        wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#plot-timeline svg.main-svg"))
        assert "host:2:b" in text_of(browser, "#workers tbody")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#trials tbody tr")) == 7

        Select(browser.find_element(By.ID, "status-filter")).select_by_visible_text("broken")
        rows = browser.find_elements(By.CSS_SELECTOR, "#trials tbody tr")
        assert len(rows) == 1 and "ValueError: loss exploded" in rows[0].text
        Select(browser.find_element(By.ID, "status-filter")).select_by_visible_text("completed")
        browser.find_element(By.CSS_SELECTOR, "#trials th[data-key='objective']").click()
        objectives = [row.find_elements(By.TAG_NAME, "td")[4].text
                      for row in browser.find_elements(By.CSS_SELECTOR, "#trials tbody tr")]
        assert objectives == ["1.5", "2", "3"]
        assert_offline_and_clean(browser, served.url)


def test_markup_in_params_and_worker_names_is_drawn_as_text(browser: Any, tmp_path: Path) -> None:
    """Plotly turns <a href> in any text it draws into a working link: the charts must escape data."""
    from selenium.webdriver.common.by import By

    hostile = '<a href="https://evil.example/">click</a><b>bold</b>'
    store = get_storage(str(tmp_path / "orchard.pkl"))
    exp_id = store.create_experiment("dash", {"space": {"x": "uniform(0, 1)", "tag": "choices(['a', 'b'])"},
                                              "algorithm": "random", "max_trials": 10})
    for x, tag in ((0.1, hostile), (0.2, "plain")):
        trial = store.register_trial(exp_id, {"x": x, "tag": tag}, worker=f"{hostile}:1:a")
        store.complete_trial(trial.id, f"{hostile}:1:a", x)
    store.close()
    with serving(str(tmp_path / "orchard.pkl"), cwd=tmp_path) as served:
        browser.get(served.url + "experiments/dash")
        for plot in ("#plot-parallel", "#plot-timeline"):
            wait_for(browser, lambda b, plot=plot: b.find_elements(By.CSS_SELECTOR, f"{plot} svg.main-svg"))
        assert browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot a") == []  # no link anywhere in a chart
        assert browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot tspan[style*='bold']") == []
        drawn = " ".join(t.get_attribute("textContent") for t in browser.find_elements(By.CSS_SELECTOR, "#plot-parallel text"))
        assert "<b>bold</b>" in drawn  # the value is shown, as the text it is
        browser.get("about:blank")  # stop polling before the server stops: no error left for the next test


def test_a_page_loads_every_trial_when_they_come_in_several_pages(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    store = get_storage(str(tmp_path / "orchard.pkl"))
    populate(store)
    exp_id = store.require_experiment("dash").id
    for i in range(2_100):  # more than one page of 2,000 rows
        store.register_trial(exp_id, {"x": 0.8 + i / 1e5, "opt": "adam"})
    store.close()
    browser.get("about:blank")
    browser.get_log("browser")  # what earlier pages logged is theirs
    with serving(str(tmp_path / "orchard.pkl"), cwd=tmp_path) as served:
        browser.get(served.url + "experiments/dash")
        wait_for(browser, lambda b: "of 2107 trials" in b.find_element(By.ID, "shown").text)
        assert_offline_and_clean(browser, served.url)
        browser.get("about:blank")


def test_an_address_with_a_stray_percent_says_there_is_no_such_experiment(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with serving(str(tmp_path / "orchard.pkl"), cwd=tmp_path) as served:
        browser.get(served.url + "experiments/50%off")  # was a URIError: the page stayed blank
        wait_for(browser, lambda b: "no experiment named '50%off'" in b.find_element(By.ID, "problem").text)


def test_the_list_links_to_the_page_of_a_name_holding_a_slash(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    store = get_storage(str(tmp_path / "orchard.pkl"))
    populate(store, "runs/2024?#%")
    store.close()
    with serving(str(tmp_path / "orchard.pkl"), cwd=tmp_path) as served:
        browser.get(served.url)
        wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#experiments tbody a"))
        browser.find_element(By.CSS_SELECTOR, "#experiments tbody a").click()
        wait_for(browser, lambda b: b.find_element(By.ID, "count-completed").text == "3")  # was: not found
        assert text_of(browser, "#name") == "runs/2024?#%"
        browser.get("about:blank")


def test_counts_change_on_the_page_while_a_hunt_with_two_workers_runs(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    (tmp_path / "train.py").write_text(SLOW_TRAIN)
    storage = str(tmp_path / "orchard.pkl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    with serving(storage, cwd=tmp_path) as served:
        browser.get(served.url + "experiments/live")  # no such experiment yet: the page says so and retries
        wait_for(browser, lambda b: "no experiment named 'live'" in b.find_element(By.ID, "problem").text)
        browser.execute_script("window.loadedOnce = true")
        hunt = subprocess.Popen(
            [sys.executable, "-m", "orchard", "hunt", "-n", "live", "--storage", storage, "--max-trials", "24",
             "--n-workers", "2", "--executor", "process", sys.executable, "train.py", "--x~uniform(0, 1)"],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            seen: list[int] = []
            deadline = time.monotonic() + 180
            while (not seen or seen[-1] < 24) and time.monotonic() < deadline:
                shown = text_of(browser, "#count-completed")
                if shown.isdigit() and (not seen or int(shown) != seen[-1]):
                    seen.append(int(shown))
                    if len(seen) == 1:
                        browser.get_log("browser")  # drop the 404s logged while the experiment did not exist
                    if 6 <= seen[-1] and (len(seen) < 2 or seen[-2] < 6):
                        time.sleep(1.0)  # let the plots catch up with the counts
                        screenshot_both_pages(browser, served.url)
                time.sleep(0.2)
            assert hunt.wait(timeout=120) == 0, hunt.stderr.read() if hunt.stderr else ""
        finally:
            if hunt.poll() is None:
                hunt.kill()
        assert seen[-1] == 24 and seen == sorted(seen) and len(seen) >= 3, seen
        assert browser.execute_script("return window.loadedOnce === true")  # updated without a reload
        wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#plot-best svg.main-svg"))
        assert_offline_and_clean(browser, served.url)


def test_multi_fidelity_experiments_show_their_rungs(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    store = get_storage(str(tmp_path / "orchard.pkl"))
    exp_id = store.create_experiment("asha", {"space": {"lr": "loguniform(1e-4, 1)", "epochs": "fidelity(1, 9)"},
                                              "algorithm": {"asha": {}}, "max_trials": 20})

    def evaluate(lr: float, epochs: int, parent: str | None = None) -> str:
        trial = store.register_trial(exp_id, {"lr": lr, "epochs": epochs}, worker="host:1:a", parent=parent)
        store.complete_trial(trial.id, "host:1:a", abs(math.log10(lr) + 2) / epochs + 0.1)
        return trial.id

    low = {lr: evaluate(lr, 1) for lr in (3e-4, 1e-3, 3e-3, 6e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.3)}
    middle = {lr: evaluate(lr, 3, low[lr]) for lr in (6e-3, 1e-2, 2e-2)}
    store.register_trial(exp_id, {"lr": 1e-2, "epochs": 9}, worker="host:1:a", parent=middle[1e-2])
    store.close()
    with serving(str(tmp_path / "orchard.pkl"), cwd=tmp_path) as served:
        browser.get(served.url + "experiments/asha")
        expected = [["1", "9", "0", "0", "0", "0", "0.1"], ["3", "3", "0", "0", "0", "3", "0.1"],
                    ["9", "0", "0", "1", "0", "1", "-"]]
        rows: list[list[str]] = []

        def rungs_shown(b: Any) -> bool:
            rows[:] = [row.text.split() for row in b.find_elements(By.CSS_SELECTOR, "#rungs tbody tr")]
            return bool(b.find_element(By.ID, "rungs-section").is_displayed() and rows == expected)

        with contextlib.suppress(Exception):
            wait_for(browser, rungs_shown)
        assert rows == expected
        wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#plot-best svg.main-svg"))
        screenshot(browser, "dashboard-rungs.png")



def test_a_multi_fidelity_page_shows_rungs_and_the_best_as_status_does(browser: Any, tmp_path: Path) -> None:
    """The rungs table of fidelity(0.1, 0.9) showed its middle rung as 0.30000000000000004 (0.1 * 3), where
    status and info show 0.3; the best-so-far line kept a low rung's objective, where best_trial (and the
    page's own best card) give the best at the highest fidelity completed."""
    from selenium.webdriver.common.by import By

    store = get_storage(str(tmp_path / "orchard.pkl"))
    exp_id = store.create_experiment("f", {"space": {"x": "uniform(0, 1)", "b": "fidelity(0.1, 0.9)"},
                                          "algorithm": {"asha": {}}, "max_trials": 10})
    for budget, objective in [(0.1, 0.2), (0.1 * 3, 0.5), (0.1, 0.1), (0.9, 0.4)]:
        trial = store.register_trial(exp_id, {"x": objective, "b": budget}, worker="host:1:a")
        store.complete_trial(trial.id, "host:1:a", objective)
    store.close()
    with serving(str(tmp_path / "orchard.pkl"), cwd=tmp_path) as served:
        browser.get(served.url + "experiments/f")

        def rungs(b: Any) -> list[str]:
            return [row.text.split()[0] for row in b.find_elements(By.CSS_SELECTOR, "#rungs tbody tr")]

        assert wait_for(browser, lambda b: len(rungs(b)) == 3 and rungs(b)) == ["0.1", "0.3", "0.9"]
        wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#plot-best svg.main-svg"))
        line = browser.execute_script(
            "const d = document.getElementById('plot-best').data[1]; return [d.name, d.y]")
        assert line == ["best so far (at the highest b reached)", [0.2, 0.5, 0.5, 0.4]]
        assert browser.find_element(By.ID, "best").text == "0.4"


def test_the_experiment_page_draws_learning_curves_and_marks_pruned_trials(browser: Any, tmp_path: Path) -> None:
    """Reports show as one line per trial; a pruned trial's line ends in a cross; the page follows new reports."""
    from selenium.webdriver.common.by import By

    uri = str(tmp_path / "orchard.pkl")
    store = get_storage(uri)
    exp_id = store.create_experiment("curves", {"space": {"x": "uniform(0, 1)"}, "algorithm": "random",
                                                "max_trials": 10, "pruner": {"median": {}}})
    done = store.register_trial(exp_id, {"x": 0.1}, worker="host:1:a")
    for step in range(1, 6):
        store.report_trial(done.id, "host:1:a", step, 1.0 / step)
    store.complete_trial(done.id, "host:1:a", 0.2)
    cut = store.register_trial(exp_id, {"x": 0.9}, worker="host:1:a")
    store.report_trial(cut.id, "host:1:a", 1, 3.0)
    store.report_trial(cut.id, "host:1:a", 2, 2.9)
    store.prune_trial(cut.id, "host:1:a", {"pruner": "median", "reason": "worse than the median", "step": 2})
    running = store.register_trial(exp_id, {"x": 0.5}, worker="host:2:b")
    store.report_trial(running.id, "host:2:b", 1, 2.0)
    with serving(uri, cwd=tmp_path) as served:
        browser.get(served.url + "experiments/curves")
        wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#plot-curves svg.main-svg"))
        assert wait_for(browser, lambda b: b.execute_script(
            "return document.getElementById('count-pruned').textContent === '1'"))
        traces = lambda b: b.execute_script(
            "const d = document.getElementById('plot-curves').data || [];"
            "return d.map(t => [t.mode, t.x.length, t.marker ? t.marker.symbol : null]);")
        assert sorted(map(tuple, wait_for(browser, lambda b: len(traces(b)) == 4 and traces(b)))) == sorted(
            [("lines", 5, None), ("lines", 2, None), ("markers", 1, "x"), ("lines", 1, None)])
        store.report_trial(running.id, "host:2:b", 2, 1.8)  # the running trial reports again: the page follows
        wait_for(browser, lambda b: sum(t[0] == "lines" and t[1] == 2 for t in traces(b)) == 2)
        browser.get("about:blank")
    store.close()


def test_the_curves_drawn_are_the_lowest_and_a_long_one_is_a_sample(browser: Any, tmp_path: Path) -> None:
    """A curve ending in NaN (another program's) ranked as 0, among the lowest; long curves came whole."""
    from orchard.trial import Trial, TrialStatus

    uri = str(tmp_path / "orchard.pkl")
    store = get_storage(uri)
    exp_id = store.create_experiment("many", {"space": {"x": "uniform(0, 1)"}, "algorithm": "random",
                                              "max_trials": 500})
    trials = [Trial(id=f"{i:04d}", experiment=exp_id, params={"x": i / 1000}, status=TrialStatus.PRUNED,
                    objective=1.0, worker="host:1:a",
                    reports=[(1, 1.0), (2, math.nan if i < 200 else 0.5 + i / 1000)]) for i in range(400)]
    trials.append(Trial(id="long", experiment=exp_id, params={"x": 0.9}, status=TrialStatus.PRUNED,
                        objective=0.1, worker="host:1:a", reports=[(s, 1.0 / (1 + s)) for s in range(2_000)]))
    assert store.restore_trials(exp_id, trials) == 401
    store.close()
    with serving(uri, cwd=tmp_path) as served:
        browser.get(served.url + "experiments/many")
        lines = wait_for(browser, lambda b: b.execute_script(
            "const d = document.getElementById('plot-curves').data || [];"
            "return d.length && d.filter(t => t.mode === 'lines')"
            "  .map(t => [t.name, t.x.length, t.y[t.y.length - 1]]);"))
        ending_in_nan = [name for name, _, last in lines if last is None]
        assert len(lines) <= 301 and ending_in_nan == [], ending_in_nan[:3]
        (long,) = [(name, count) for name, count, _ in lines if "x=0.9" in name]
        assert long[1] <= 50 and f"({long[1]} of 2000 reports)" in long[0]
        browser.get("about:blank")


def restore_completed(store: BaseStorage, name: str, count: int, **config: Any) -> None:
    """An experiment of ``count`` completed trials, each with 2 reports, written in one go."""
    import uuid

    from orchard.trial import Trial, TrialStatus

    exp_id = store.create_experiment(name, {"space": {"x": "uniform(0, 1)"}, "algorithm": "random",
                                            "max_trials": count, **config})
    store.restore_trials(exp_id, [
        Trial(id=uuid.uuid4().hex, experiment=exp_id, params={"x": i / count}, status=TrialStatus.COMPLETED,
              objective=i / count, results={"a": i / count, "b": (i % 97) / 97}, worker=f"host:{i % 3}:w",
              submit_time=1e9 + i, start_time=1e9 + i, end_time=1e9 + i + 0.5, attempts=1,
              reports=[(1, 1.0 + i / count), (2, i / count)]) for i in range(count)])


def test_every_chart_that_leaves_trials_out_says_how_many_it_draws(browser: Any, tmp_path: Path) -> None:
    """With 5,010 trials only the best-so-far chart said how many it drew: the parallel coordinates,
    the timeline, the learning curves and the front's scatter dropped trials without a word."""
    from selenium.webdriver.common.by import By

    uri = str(tmp_path / "orchard.pkl")
    store = get_storage(uri)
    restore_completed(store, "many", 5_010)
    restore_completed(store, "front", 5_010, objectives={"a": "min", "b": "min"})
    restore_completed(store, "few", 10)
    store.close()
    notes = {"parallel-note": "5000 of 5010 completed trials drawn: the best ones",
             "timeline-note": "5000 of 5010 trials drawn: the latest started",
             "curves-note": "300 of 5010 curves drawn: the lowest last values, the latest trials "
                            "and the best"}
    with serving(uri, cwd=tmp_path) as served:
        for name, said in (("many", notes), ("few", dict.fromkeys(notes, ""))):
            browser.get(served.url + "experiments/" + name)
            wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#plot-timeline svg.main-svg"), 60)
            assert {key: browser.find_element(By.ID, key).text for key in notes} == said
        browser.get(served.url + "experiments/front")
        wait_for(browser, lambda b: "5000 of 5010 completed trials drawn: the front's and the latest"
                 in b.find_element(By.ID, "front-note").text, 60)
        browser.get("about:blank")


def completed_by(tmp_path: Path, name: str, space: dict[str, str],
                 rows: list[tuple[dict[str, Any], float, str]]) -> None:
    """An experiment in ``tmp_path/orchard.pkl``: a completed trial per (params, objective, worker) row."""
    store = get_storage(str(tmp_path / "orchard.pkl"))
    exp_id = store.create_experiment(name, {"space": space, "algorithm": "random"})
    for params, objective, worker in rows:
        trial = store.register_trial(exp_id, params, worker=worker)
        store.complete_trial(trial.id, worker, objective)
    store.close()


def test_a_page_of_a_hundred_params_keeps_the_objective_axis_a_short_best_card_and_table(
        browser: Any, tmp_path: Path) -> None:
    """Plotly draws 60 parallel axes and dropped the rest, the objective's (the last) first; the best card
    printed every param (10,000 of them filled screens), the table made a column of each; axes of values
    near 1e16 showed "×10<sup>16</sup>"."""
    from selenium.webdriver.common.by import By

    space = {f"p{i}": "uniform(0, 1e17)" for i in range(100)}
    completed_by(tmp_path, "wide", space, [({f"p{i}": n * 1e16 + i for i in range(100)}, n * 1e16, "h:1:a")
                                           for n in range(1, 4)])
    with serving(str(tmp_path / "orchard.pkl"), cwd=tmp_path) as served:
        browser.get(served.url + "experiments/wide")
        wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#plot-parallel .axis-title"))
        titles = browser.execute_script(
            "return [...document.querySelectorAll('#plot-parallel .axis-title')].map(t => t.textContent)")
        assert len(titles) == 60 and titles[-1] == "objective" and titles[:2] == ["p0", "p1"]
        assert "the first 59 of 100 parameters drawn" in browser.find_element(By.ID, "parallel-note").text
        ticks = browser.execute_script(
            "return [...document.querySelectorAll('#plot-parallel .tick text')].map(t => t.textContent)")
        assert ticks and not [t for t in ticks if "<" in t], ticks
        card = browser.find_element(By.ID, "best-params").text
        assert card.startswith("p0=10000000000000000, p1=") and card.endswith("(and 80 more)")
        assert "p20=" not in card
        # the table's columns: 10,000 params made each redraw of 30 rows take 3 s
        assert "the first 50 of 100 params as columns" in browser.find_element(By.ID, "shown").text
        heads = browser.execute_script(
            "return [...document.querySelectorAll('#trials th')].map(h => h.textContent)")
        assert heads[:3] == ["#", "status", "p0"] and heads[51:53] == ["p49", "objective"]
        browser.get("about:blank")


def test_a_timeline_of_many_workers_draws_those_that_started_last(browser: Any, tmp_path: Path) -> None:
    """A row each for 2,000 workers (a cluster's job array) made the timeline 68,000 px tall."""
    from selenium.webdriver.common.by import By

    completed_by(tmp_path, "many", {"x": "uniform(0, 1)"}, [({"x": n / 1000}, n / 1000, f"node{n}:1:a")
                                                            for n in range(150)])
    with serving(str(tmp_path / "orchard.pkl"), cwd=tmp_path) as served:
        browser.get(served.url + "experiments/many")
        wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#plot-timeline svg.main-svg"))
        rows = browser.execute_script(
            "return [...new Set(document.getElementById('plot-timeline').data.flatMap(t => t.y))]")
        assert len(rows) == 100 and "node149:1:a" in rows and "node49:1:a" not in rows
        assert "the 100 of 150 workers that started a trial last" in text_of(browser, "#timeline-note")
        assert browser.find_element(By.ID, "plot-timeline").size["height"] < 4_000
        browser.get("about:blank")


def test_objectives_beyond_1e300_are_left_out_of_the_charts_and_named(browser: Any, tmp_path: Path) -> None:
    """An objective of -1e308 took the best-so-far line off the chart (its axis could not reach it), and one
    of 1e308 squeezed every parallel line onto one point; orchard plot leaves them out and names them."""
    from selenium.webdriver.common.by import By

    objectives = [0.5, 0.3, -1e308, 0.2, 1e308]
    completed_by(tmp_path, "huge", {"x": "uniform(0, 1)"},
                 [({"x": n / 10}, objective, "h:1:a") for n, objective in enumerate(objectives)])
    with serving(str(tmp_path / "orchard.pkl"), cwd=tmp_path) as served:
        browser.get(served.url + "experiments/huge")
        wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#plot-parallel svg.main-svg"))
        best = browser.execute_script("return document.getElementById('plot-best').data.map(t => t.y)")
        assert best == [[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]]
        drawn = browser.execute_script(
            "return document.getElementById('plot-parallel').data[0].dimensions[1].values")
        assert drawn == [0.5, 0.3, 0.2]
        said = "2 completed trials with an objective beyond ±1e300 left out of the charts: #3, #5"
        assert said in text_of(browser, "#best-note")
        browser.get("about:blank")
