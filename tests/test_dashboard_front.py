"""The dashboard's Pareto front, in a real headless browser: a table of the front's trials and a scatter,
followed live as trials complete (``orchard serve`` as a real process, see tests/test_dashboard_live.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchard.storages import get_storage
from tests.test_dashboard_live import assert_offline_and_clean, request, screenshot, serving, wait_for

pytestmark = pytest.mark.slow

CONFIG = {"space": {"x": "uniform(0, 1)"}, "algorithm": "random", "max_trials": 20,
          "objectives": {"error": "min", "accuracy": "max"}, "constraints": ["memory_gb <= 16"]}
#: (x, error, accuracy, memory_gb): 0.3 is dominated by 0.1; 0.5 breaks the constraint.
RESULTS = [(0.1, 0.2, 0.8, 4.0), (0.2, 0.4, 0.9, 4.0), (0.3, 0.3, 0.7, 4.0), (0.5, 0.01, 0.99, 32.0)]


def complete(store: Any, exp_id: str, x: float, error: float, accuracy: float, memory: float) -> str:
    trial = store.register_trial(exp_id, {"x": x}, worker="host:1:a")
    store.complete_trial(trial.id, "host:1:a", error, {"error": error, "accuracy": accuracy, "memory_gb": memory})
    return str(trial.id)


def front_rows(b: Any) -> list[list[str]]:
    return b.execute_script(  # type: ignore[no-any-return]
        "return [...document.querySelectorAll('#front tbody tr')].map(r => [...r.cells].map(c => c.textContent));")


def scatter(b: Any) -> dict[str, int]:
    return b.execute_script(  # type: ignore[no-any-return]
        "const d = document.getElementById('plot-front').data || [];"
        "return Object.fromEntries(d.map(t => [t.name, t.x.length]));")


def test_the_experiment_page_shows_the_front_live(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    uri = str(tmp_path / "orchard.pkl")
    store = get_storage(uri)
    exp_id = store.create_experiment("front", CONFIG)
    for row in RESULTS:
        complete(store, exp_id, *row)
    single = store.create_experiment("one", {"space": {"x": "uniform(0, 1)"}, "algorithm": "random", "max_trials": 5})
    complete(store, single, 0.1, 1.0, 0.5, 1.0)
    with serving(uri, cwd=tmp_path) as served:
        assert request(served.url + "api/experiments/one")[1]["front"] is None  # one objective: no front
        status, detail = request(served.url + "api/experiments/front")
        assert status == 200 and [t["values"] for t in detail["front"]["trials"]] == [[0.2, 0.8], [0.4, 0.9]]
        browser.get(served.url + "experiments/front")
        wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#plot-front svg.main-svg"))
        rows = wait_for(browser, lambda b: len(front_rows(b)) == 2 and front_rows(b))
        assert [r[0] for r in rows] == ["1", "2"] and rows[0][-2:] == ["0.2", "0.8"]
        headers = browser.execute_script("return [...document.querySelectorAll('#front th')].map(h => h.textContent)")
        assert headers == ["#", "params", "error (min)", "accuracy (max)"]
        assert wait_for(browser, lambda b: scatter(b) == {"dominated": 1, "infeasible": 1, "front": 2})
        assert "memory_gb <= 16 (1 infeasible)" in browser.find_element(By.ID, "front-note").text
        assert browser.find_element(By.ID, "best").text == "2"  # the card counts the front: no single best
        refreshed = browser.find_element(By.ID, "updated").text
        wait_for(browser, lambda b: b.find_element(By.ID, "updated").text != refreshed)
        assert browser.find_element(By.ID, "best").text == "2"  # still, after a refresh that sent no front
        complete(store, exp_id, 0.6, 0.1, 0.95, 8.0)  # dominates both: the front becomes that one trial
        wait_for(browser, lambda b: [r[0] for r in front_rows(b)] == ["5"])
        assert wait_for(browser, lambda b: scatter(b) == {"dominated": 3, "infeasible": 1, "front": 1})
        screenshot(browser, "dashboard-front.png")
        assert_offline_and_clean(browser, served.url)
        browser.get(served.url + "experiments/one")
        wait_for(browser, lambda b: b.execute_script("return document.getElementById('name').textContent === 'one'"))
        assert browser.execute_script("return document.getElementById('front-section').hidden") is True
        browser.get("about:blank")
    store.close()


def test_the_scatter_leaves_out_and_names_objectives_beyond_1e300(browser: Any, tmp_path: Path) -> None:
    """An error of -1e308 (and an accuracy of 1e308) stretched the scatter's axes until the other trials
    sat on one spot, and plotly drew the front's line through NaN (errors in the console)."""
    from selenium.webdriver.common.by import By

    uri = str(tmp_path / "orchard.pkl")
    store = get_storage(uri)
    exp_id = store.create_experiment("huge", {**CONFIG, "constraints": []})
    for row in [*RESULTS[:3], (0.4, -1e308, 0.5, 1.0), (0.5, 0.5, 1e308, 1.0), (0.6, 1e301, 0.1, 1.0)]:
        complete(store, exp_id, *row)
    store.close()
    with serving(uri, cwd=tmp_path) as served:
        browser.get("about:blank")
        browser.get_log("browser")  # what earlier pages logged is theirs
        browser.get(served.url + "experiments/huge")
        wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#plot-front svg.main-svg"))
        assert wait_for(browser, lambda b: scatter(b) == {"dominated": 1, "infeasible": 0, "front": 2})
        said = "3 completed trials with an objective beyond ±1e300 left out of the scatter: #4, #5, #6"
        assert said in browser.find_element(By.ID, "front-note").text
        assert len(front_rows(browser)) == 4  # the table still lists every trial of the front
        assert_offline_and_clean(browser, served.url)
        browser.get("about:blank")
