"""Figures: what the builders compute, and the files ``save`` and ``orchard plot`` write."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

import orchard
from orchard import plotting
from orchard.errors import ConfigurationError, ExperimentNotFoundError
from orchard.plotting.curves import MAX_CURVE_POINTS, MAX_CURVES
from orchard.space import Space
from orchard.trial import Trial, TrialStatus

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KINDS = list(plotting.FIGURES)
#: The figures that draw a single-objective experiment's trials (pareto needs several: tests/test_plotting_fronts.py).
DRAWN_KINDS = [kind for kind in KINDS if kind != "pareto"]
SPACE = {"lr": "loguniform(1e-4, 1.0)", "opt": "choices(['sgd', 'adam'])", "depth": "randint(1, 8)"}


def make_trial(n: int, status: TrialStatus = TrialStatus.COMPLETED, objective: float | None = None,
               worker: str = "h:1:a", start: float = 0.0, end: float | None = 1.0,
               **params: Any) -> Trial:
    return Trial(id=f"{n:032x}", experiment="e", params=params or {"x": float(n)}, status=status,
                 objective=objective, worker=worker, start_time=start, end_time=end)


# -- builders --------------------------------------------------------------------------


def test_regret_orders_by_completion_and_tracks_the_best() -> None:
    trials = [
        make_trial(1, objective=3.0, end=30.0),
        make_trial(2, objective=5.0, end=10.0),
        make_trial(3, TrialStatus.BROKEN, end=20.0),
        make_trial(4, objective=1.0, end=40.0),
        make_trial(5, TrialStatus.RESERVED, end=None),
    ]
    fig = plotting.regret(trials, "exp")
    assert fig.x == [1, 3, 4]
    assert fig.objectives == [5.0, 3.0, 1.0]
    assert fig.best == [5.0, 3.0, 1.0]
    assert fig.broken_x == [2]
    assert fig.broken_y == [5.0]  # on the best-so-far line when it broke
    assert fig.note is None
    assert "exp" in fig.title and "best 1" in fig.title


def test_regret_best_so_far_never_rises() -> None:
    objectives = [4.0, 2.0, 6.0, 1.5, 3.0]
    trials = [make_trial(i, objective=o, end=float(i)) for i, o in enumerate(objectives)]
    assert plotting.regret(trials, "exp").best == [4.0, 2.0, 2.0, 1.5, 1.5]


def test_regret_best_so_far_under_multi_fidelity_is_what_best_trial_said_then() -> None:
    """Its best so far was the lowest objective at any fidelity (a 1-epoch trial's 0.1), where best_trial,
    status and the dashboard give the best at the highest fidelity that has a result."""
    space = Space.from_config({"x": "uniform(0, 1)", "epochs": "fidelity(1, 9)"})
    runs = [(1, 0.2), (1, 0.5), (3, 0.4), (1, 0.1), (3, 0.3), (9, 0.35)]
    trials = [make_trial(i, objective=o, end=float(i), x=i / 10, epochs=e) for i, (e, o) in enumerate(runs)]
    fig = plotting.make_figure("regret", trials, "mf", space)
    assert isinstance(fig, plotting.RegretFigure)
    assert fig.objectives == [0.2, 0.5, 0.4, 0.1, 0.3, 0.35]  # every trial is drawn
    assert fig.best == [0.2, 0.2, 0.4, 0.4, 0.3, 0.35]
    assert "best 0.35 at epochs=9 after 6 completed" in fig.title
    assert fig.best_label == "best so far (at the highest epochs reached)"
    assert plotting.regret(trials, "mf").best[-1] == 0.1  # no fidelity named: the lowest of all, as before


def test_plot_regret_of_a_multi_fidelity_experiment_names_best_trials_best(tmp_path: Path) -> None:
    from orchard.cli import main

    storage = str(tmp_path / "o.pkl")
    exp = orchard.build_experiment("mf", space={"x": "uniform(0, 1)", "epochs": "fidelity(1, 9)"},
                                   algorithm="asha", storage=storage, max_trials=10)
    for x, epochs, objective in [(0.1, 1, 0.1), (0.2, 1, 0.5), (0.2, 3, 0.4), (0.2, 9, 0.3)]:
        exp.insert({"x": x, "epochs": epochs}, objective=objective)
    assert exp.best_trial is not None and exp.best_trial.objective == 0.3
    out = tmp_path / "regret.html"
    assert main(["plot", "regret", "-n", "mf", "--storage", storage, "-o", str(out)]) == 0
    html = out.read_text()
    assert "mf: regret (best 0.3 at epochs=9 after 4 completed, 0 broken)" in html
    assert "best so far (at the highest epochs reached)" in html


def test_parallel_maps_choices_to_indices_in_space_order() -> None:
    space = Space.from_config(SPACE)
    trials = [
        make_trial(1, objective=2.0, lr=1e-3, opt="adam", depth=3),
        make_trial(2, objective=1.0, lr=1e-1, opt="adam", depth=5),
        make_trial(3, TrialStatus.BROKEN, lr=1e-2, opt="sgd", depth=2),
    ]
    fig = plotting.parallel(trials, "exp", space)
    axes = {a.label: a for a in fig.axes}
    assert list(axes) == ["lr (log)", "opt", "depth", "objective"]
    assert axes["opt"].ticktext == ["sgd", "adam"]  # the space's order, even for unseen values
    assert axes["opt"].values == [1.0, 1.0]
    assert axes["lr (log)"].values == pytest.approx([-3.0, -1.0])
    assert axes["lr (log)"].ticktext == ["1e-4", "0.001", "0.01", "0.1", "1"]
    assert axes["depth"].ticks is None
    assert fig.objectives == [2.0, 1.0]  # worst first, so the best lines are drawn on top


def test_parallel_without_space_treats_strings_and_bools_as_categories() -> None:
    trials = [make_trial(1, objective=1.0, kind="b", flag=True, units=2),
              make_trial(2, objective=2.0, kind="a", flag=False, units=4)]
    axes = {a.label: a for a in plotting.parallel(trials, "exp").axes}
    assert axes["kind"].ticktext == ["a", "b"] and axes["kind"].values == [0.0, 1.0]  # worst first
    assert axes["flag"].ticktext == ["False", "True"]
    assert axes["units"].values == [4.0, 2.0] and axes["units"].ticks is None


def test_timeline_rows_bars_and_busy_fractions() -> None:
    trials = [
        make_trial(1, worker="nodeA:10:u1", start=100.0, end=104.0),
        make_trial(2, TrialStatus.BROKEN, worker="nodeA:10:u1", start=105.0, end=110.0),
        make_trial(3, worker="nodeB:20:u2", start=101.0, end=102.0),
        make_trial(4, worker="nodeB:20:u2", start=106.0, end=107.0),
        make_trial(5, TrialStatus.NEW, worker=None, start=None, end=None),  # type: ignore[arg-type]
    ]
    fig = plotting.timeline(trials, "exp")
    assert fig.rows == ["nodeA:10  busy 90%", "nodeB:20  busy 33%"]
    assert [(b.row, b.start, b.end, b.status) for b in fig.bars] == [
        (0, 0.0, 4.0, TrialStatus.COMPLETED),
        (0, 5.0, 10.0, TrialStatus.BROKEN),
        (1, 1.0, 2.0, TrialStatus.COMPLETED),
        (1, 6.0, 7.0, TrialStatus.COMPLETED),
    ]
    assert "2 workers" in fig.title and "busy 55%" in fig.title  # (9 + 2) / (2 * 10)


def test_timeline_running_trial_ends_at_its_heartbeat_and_overlaps_count_once() -> None:
    running = make_trial(1, TrialStatus.RESERVED, worker="w", start=0.0, end=None)
    running.heartbeat = 6.0
    overlapping = make_trial(2, worker="w", start=2.0, end=8.0)
    fig = plotting.timeline([running, overlapping], "exp")
    assert fig.bars[0].end == 6.0
    assert fig.rows == ["w  busy 100%"]


def test_timeline_keeps_full_worker_ids_when_short_ones_collide() -> None:
    trials = [make_trial(1, worker="h:1:aaa"), make_trial(2, worker="h:1:bbb")]
    assert [r.split()[0] for r in plotting.timeline(trials, "exp").rows] == ["h:1:aaa", "h:1:bbb"]


def test_a_timeline_of_thousands_of_workers_draws_those_that_started_last_and_counts_all(
        tmp_path: Path) -> None:
    """A row each for 2,000 workers (a cluster's job array) made the .png 77,000 pixels tall, in a minute."""
    trials = [make_trial(n, worker=f"node{n}:{n}:u", start=float(n), end=n + 5.0) for n in range(2_000)]
    fig = plotting.timeline(trials, "exp")
    assert len(fig.rows) == 100
    assert fig.rows[0].startswith("node1900:1900") and fig.rows[-1].startswith("node1999:")
    assert {b.row for b in fig.bars} == set(range(100)) and fig.bars[0].start == 1900.0
    assert "2000 workers over 2004 s" in fig.title and "the 100 that started last drawn" in fig.title
    out = plotting.save(fig, tmp_path / "timeline.png")
    height = int.from_bytes(out.read_bytes()[20:24], "big")  # the PNG header's height
    assert height < 5_000


def test_a_timeline_png_of_tens_of_thousands_of_trials_is_drawn_in_seconds(tmp_path: Path) -> None:
    """A patch per bar made orchard plot timeline -o x.png take 96 s for 50,000 trials (8 workers)."""
    import time

    trials = [make_trial(n, worker=f"h:{n % 8}:a", start=float(n), end=n + 7.5) for n in range(30_000)]
    fig = plotting.timeline(trials, "exp")
    started = time.monotonic()
    plotting.save(fig, tmp_path / "timeline.png")
    assert time.monotonic() - started < 20  # 55 s before, 2 s after, on 2 shared cores


@pytest.mark.parametrize("kind", KINDS)
def test_figures_of_no_trials_carry_a_note(kind: str) -> None:
    fig = plotting.make_figure(kind, [], "exp")
    assert fig.note and "yet" in fig.note


def test_unknown_figure_kind_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match="regret, parallel, timeline"):
        plotting.make_figure("heatmap", [], "exp")


# -- files -----------------------------------------------------------------------------


def storage_uri(tmp_path: Path) -> str:
    return str(tmp_path / "o.pkl")


@pytest.fixture
def experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Four completed and one broken trial on two workers, on a fake clock (1 s per step), two reports each."""
    exp = orchard.build_experiment("plot-exp", space=SPACE, storage=storage_uri(tmp_path))
    clock = itertools.count(1000.0)
    monkeypatch.setattr(exp.storage, "now", lambda: float(next(clock)))
    points = [(1e-3, "sgd", 2, 0.9), (1e-2, "adam", 3, 0.5), (1e-1, "sgd", 4, None),
              (0.3, "adam", 5, 0.7), (0.05, "adam", 6, 0.2)]
    for i, (lr, opt, depth, objective) in enumerate(points):
        worker = ("hostA:11:aaaa", "hostB:22:bbbb")[i % 2]
        trial = exp.storage.register_trial(exp.id, {"lr": lr, "opt": opt, "depth": depth}, worker=worker)
        for step in (1, 2):  # every trial reports two steps (the curves figure draws them)
            exp.storage.report_trial(trial.id, worker, step, 1.0 + depth / step)
        if objective is None:
            exp.storage.fail_trial(trial.id, worker, {"type": "ValueError", "message": "diverged"})
        else:
            exp.storage.complete_trial(trial.id, worker, objective)
    return exp


def figure_of(exp: Any, kind: str) -> plotting.Figure:
    return plotting.make_figure(kind, exp.fetch_trials(), exp.name, exp.space)


def plotly_traces(html: str) -> list[dict[str, Any]]:
    """The trace list plotly embeds in the page, as JSON."""
    match = re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\])\s*,\s*\{", html, re.DOTALL)
    assert match, "no Plotly.newPlot call in the page"
    return json.loads(match.group(1))  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", DRAWN_KINDS)
def test_html_is_self_contained_and_titled(experiment: Any, kind: str, tmp_path: Path) -> None:
    out = plotting.save(figure_of(experiment, kind), tmp_path / f"{kind}.html")
    html = out.read_text(encoding="utf-8")
    assert "plot-exp" in html
    assert "<script src=" not in html  # nothing fetched from a CDN
    assert "Plotly.newPlot" in html and len(html) > 1_000_000  # plotly.js is inlined
    assert plotly_traces(html), "the figure has no trace"


def test_html_traces_hold_the_trials(experiment: Any, tmp_path: Path) -> None:
    html = plotting.save(figure_of(experiment, "regret"), tmp_path / "r.html").read_text(encoding="utf-8")
    traces = {t["name"]: t for t in plotly_traces(html)}
    assert traces["objective"]["y"] == [0.9, 0.5, 0.7, 0.2]
    assert traces["best so far"]["y"] == [0.9, 0.5, 0.5, 0.2]
    assert traces["broken"]["x"] == [3]
    html = plotting.save(figure_of(experiment, "timeline"), tmp_path / "t.html").read_text(encoding="utf-8")
    rows = {y for t in plotly_traces(html) for y in t["y"]}
    assert {r.split()[0] for r in rows} == {"hostA:11", "hostB:22"}


HOSTILE = '<a href="https://evil.example/">click</a><b>bold</b>'


@pytest.mark.parametrize("kind", DRAWN_KINDS)
def test_html_draws_markup_in_values_as_text_not_links(kind: str) -> None:
    """Plotly renders <a href>, <b>, <span style> in any text it draws: user strings must reach it escaped."""
    from orchard.plotting._plotly import plotly_figure

    trials = [make_trial(n, objective=float(n), worker=f"{HOSTILE}:1:a", start=n, end=n + 1.0,
                         note=HOSTILE if n % 2 else "<i>x</i>", b=float(n)) for n in range(1, 5)]
    trials.append(make_trial(9, TrialStatus.BROKEN, worker="w:1:a", note=HOSTILE, b=1.0))
    for trial in trials:
        trial.reports = [(1, 2.0), (2, 1.0)]  # the curves figure draws what trials reported
    drawn = plotly_figure(plotting.make_figure(kind, trials, HOSTILE)).to_plotly_json()
    # Parallel coordinates draw their axes' labels and ticks as plain text (the dashboard's browser test shows it).
    texts = json.dumps([[{k: v for k, v in t.items() if k != "dimensions"} for t in drawn["data"]], drawn["layout"]])
    assert "<a href" not in texts and "<b>" not in texts and "<i>" not in texts
    assert texts.count("&lt;a href=") >= (1 if kind in ("parallel", "hypervolume") else 2)  # shown, as text


@pytest.mark.parametrize("kind", DRAWN_KINDS)
def test_png_is_a_valid_image(experiment: Any, kind: str, tmp_path: Path) -> None:
    out = plotting.save(figure_of(experiment, kind), tmp_path / f"{kind}.PNG")
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 800 and height >= 400
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


@pytest.mark.parametrize("suffix", [".html", ".png"])
def test_a_saved_plot_has_the_mode_the_umask_gives(tmp_path: Path, suffix: str) -> None:
    # orchard plot -o regret.html wrote a file of mode 0600 (tempfile.mkstemp's) under umask 022
    mask = os.umask(0o022)
    try:
        out = plotting.save(plotting.regret([], "exp"), tmp_path / f"plot{suffix}")
    finally:
        os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


@pytest.mark.parametrize("suffix", [".html", ".png"])
@pytest.mark.parametrize("kind", KINDS)
def test_empty_experiment_still_gives_a_figure(tmp_path: Path, kind: str, suffix: str) -> None:
    exp = orchard.build_experiment("empty", space=SPACE, storage=storage_uri(tmp_path))
    out = plotting.save(figure_of(exp, kind), tmp_path / f"{kind}{suffix}")
    assert out.stat().st_size > 10_000
    if suffix == ".html":
        assert "yet" in out.read_text(encoding="utf-8")


def test_unknown_suffix_lists_the_formats(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"'\.svg'.*\.html or \.png"):
        plotting.save(plotting.regret([], "exp"), tmp_path / "plot.svg")
    assert list(tmp_path.iterdir()) == []


def test_missing_folder_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="folder .*nowhere.* does not exist"):
        plotting.save(plotting.regret([], "exp"), tmp_path / "nowhere" / "plot.png")


@pytest.mark.parametrize("missing, suffix", [("plotly", ".html"), ("matplotlib", ".png")])
def test_missing_library_gives_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, missing: str, suffix: str
) -> None:
    for module in [m for m in sys.modules if m.split(".")[0] == missing] + [missing]:
        monkeypatch.setitem(sys.modules, module, None)  # None in sys.modules: import raises ImportError
    with pytest.raises(ConfigurationError, match=re.escape("pip install 'orchard-hpo[plot]'")):
        plotting.save(plotting.regret([], "exp"), tmp_path / f"plot{suffix}")


# -- the command -----------------------------------------------------------------------


def cli_args(**kwargs: Any) -> argparse.Namespace:
    from orchard.cli import plot as cli_plot

    parser = argparse.ArgumentParser(prog="orchard")
    cli_plot.add_parser(parser.add_subparsers(dest="command"))
    argv = ["plot", kwargs["kind"], "-n", kwargs["name"], "-o", kwargs["output"]]
    if "storage" in kwargs:
        argv += ["--storage", kwargs["storage"]]
    return parser.parse_args(argv)


def test_cli_kinds_match_the_figures() -> None:
    from orchard.cli import plot as cli_plot

    assert list(cli_plot.KINDS) == KINDS


@pytest.mark.parametrize("kind", KINDS)
def test_cli_run_writes_the_file_and_prints_its_path(
    experiment: Any, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / f"{kind}.png"
    args = cli_args(kind=kind, name="plot-exp", output=str(out), storage=experiment.storage.uri)
    assert args.func(args) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert capsys.readouterr().out.strip() == str(out)


def test_cli_run_with_a_plain_namespace(experiment: Any, tmp_path: Path) -> None:
    from orchard.cli.plot import run

    out = tmp_path / "p.html"
    args = argparse.Namespace(kind="parallel", name="plot-exp", output=str(out),
                              storage=experiment.storage.uri)
    assert run(args) == 0
    (trace,) = plotly_traces(out.read_text(encoding="utf-8"))
    assert trace["type"] == "parcoords"
    assert [d["label"] for d in trace["dimensions"]] == ["lr (log)", "opt", "depth", "objective"]


def test_cli_unknown_experiment_is_an_orchard_error(experiment: Any, tmp_path: Path) -> None:
    from orchard.cli.plot import run

    args = argparse.Namespace(kind="regret", name="nope", output=str(tmp_path / "r.png"),
                              storage=experiment.storage.uri)
    with pytest.raises(ExperimentNotFoundError, match="plot-exp"):
        run(args)


def test_cli_checks_the_suffix_before_opening_the_storage(tmp_path: Path) -> None:
    from orchard.cli.plot import run

    args = argparse.Namespace(kind="regret", name="x", output=str(tmp_path / "r.pdf"),
                              storage="mongodb://127.0.0.1:1/unreachable")
    with pytest.raises(ConfigurationError, match=r"\.html or \.png"):
        run(args)


def test_trials_from_suggest_and_observe_are_drawn(experiment: Any, tmp_path: Path) -> None:
    trial = experiment.suggest()
    experiment.observe(trial, 0.05)
    fig = plotting.regret(experiment.fetch_trials(), experiment.name)
    assert fig.best[-1] == 0.05 and len(fig.x) == 5
    timeline = plotting.timeline(experiment.fetch_trials(), experiment.name)
    assert len(timeline.rows) == 3  # the client is a third worker
    assert plotting.save(timeline, tmp_path / "t.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("kind", ["regret", "parallel", "rungs"])
def test_objectives_near_the_largest_float_are_named_and_the_rest_drawn(
        kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`orchard plot regret -o r.png` failed with "unexpected ValueError: arange: cannot compute length"
    (parallel: "Axis limits cannot be NaN or Inf", rungs as regret): an axis from -1e308 to 1.7e308 spans
    more than the largest float."""
    from orchard.cli import main

    uri = str(tmp_path / "db.pkl")
    exp = orchard.build_experiment("huge", space={"x": "uniform(0, 1)"}, storage=uri)
    values = [1e308, -1e308, 0.5, 1.7e308, -1.7e308, 0.25]
    for x, objective in enumerate(values):
        exp.insert({"x": x / 10}, objective)
    for suffix in (".png", ".html"):
        out = tmp_path / f"{kind}{suffix}"
        code = main(["plot", kind, "-n", "huge", "--storage", uri, "-o", str(out)])
        assert code == 0, capsys.readouterr().err
    fig = plotting.make_figure(kind, exp.fetch_trials(), "huge", exp.space)
    drawn = fig.objectives
    far = [t.id[:8] for t in exp.fetch_trials() if abs(t.objective or 0) > 1]
    assert sorted(drawn) == [0.25, 0.5] and fig.note is None
    named = f"4 trials ({', '.join(far[:3])} and 1 more)"
    assert fig.title.endswith(f"\nnot drawn, an objective beyond ±1e300: {named}"), fig.title


def test_curves_with_a_report_near_the_largest_float_are_named_and_the_rest_drawn(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`orchard plot curves -o c.png` failed with "unexpected ValueError: arange: cannot compute length"."""
    from orchard.cli import main
    from orchard.storages import get_storage

    uri = str(tmp_path / "db.pkl")
    exp = orchard.build_experiment("huge", space={"x": "uniform(0, 1)"}, storage=uri)
    storage = get_storage(uri)
    for i, reports in enumerate([[1e308, 1.0], [-1e308, 0.5], [0.3, 0.2]]):
        trial = storage.register_trial(exp.id, {"x": i / 10}, worker="w")
        for step, value in enumerate(reports):
            storage.report_trial(trial.id, "w", step, value)
        storage.complete_trial(trial.id, "w", reports[-1])
    for suffix in (".png", ".html"):
        code = main(["plot", "curves", "-n", "huge", "--storage", uri, "-o", str(tmp_path / f"c{suffix}")])
        assert code == 0, capsys.readouterr().err
    fig = plotting.make_figure("curves", exp.fetch_trials(), "huge", exp.space)
    assert [curve.values for curve in fig.curves] == [[0.3, 0.2]]
    far = ", ".join(t.id[:8] for t in exp.fetch_trials() if t.objective != 0.2)
    assert fig.title.endswith(f"\nnot drawn, a report beyond ±1e300: 2 trials ({far})")


def test_orchard_plot_through_the_command_line(
    experiment: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchard.cli import main

    uri = experiment.storage.uri
    out = tmp_path / "timeline.html"
    assert main(["plot", "timeline", "-n", "plot-exp", "-o", str(out), "--storage", uri, "--debug"]) == 0
    assert "hostA:11" in out.read_text(encoding="utf-8")
    assert main(["--storage", uri, "plot", "regret", "-n", "plot-exp", "-o", str(tmp_path / "r.svg")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ".html or .png" in err


def test_curves_draw_each_reporting_trial_and_mark_the_pruned(tmp_path: Path) -> None:
    trials = [
        Trial(id="a", experiment="e", params={"x": 1}, status=TrialStatus.COMPLETED, objective=0.2,
              reports=[(1, 0.9), (2, 0.5), (3, 0.2)]),
        Trial(id="b", experiment="e", params={"x": 2}, status=TrialStatus.PRUNED, objective=0.95,
              reports=[(1, 0.95)], verdict={"pruner": "asha"}),
        Trial(id="c", experiment="e", params={"x": 3}, status=TrialStatus.COMPLETED, objective=0.4),
    ]
    fig = plotting.make_figure("curves", trials, "exp")
    assert [c.steps for c in fig.curves] == [[1, 2, 3], [1]]
    assert [c.best for c in fig.curves] == [True, False]
    assert fig.curves[1].status is TrialStatus.PRUNED
    assert "1 pruned" in fig.title
    pytest.importorskip("plotly")
    pytest.importorskip("matplotlib")
    for suffix in (".html", ".png"):
        assert plotting.save(fig, tmp_path / f"curves{suffix}").stat().st_size > 1000
    empty = plotting.make_figure("curves", trials[2:], "exp")
    assert empty.note is not None and "orchard.report" in empty.note


def test_an_output_that_cannot_be_a_file_is_one_line_and_keeps_what_is_there(tmp_path: Path) -> None:
    (tmp_path / "old.html").mkdir()
    (tmp_path / "old.html" / "keep").write_text("mine")
    (tmp_path / "notes.txt").write_text("mine")
    cases = {  # before: 'Is a directory; check that the folder is writable', an OSError for the long names
        tmp_path / "old.html": "it is a folder; name a file, such as",
        tmp_path / ("a" * 300 + ".png"): "its name is longer than the 255 bytes",
        tmp_path / ("a" * 300) / "plot.png": "File name too long; check the path",
        tmp_path / "notes.txt" / "plot.png": "notes.txt' is a file, not a folder",
    }
    for path, expected in cases.items():
        with pytest.raises(ConfigurationError, match=re.escape(expected)):
            plotting.check_output(path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["keep", "notes.txt", "old.html"]


@pytest.mark.parametrize("existing", [False, True], ids=["new", "replaced"])
def test_a_plot_on_a_disk_without_room_says_to_free_space_and_keeps_the_old_file(
        tmp_path: Path, existing: bool) -> None:
    """On a full disk (here a file size limit, as `ulimit -f`) the .html said 'No space left on device;
    check that the folder is writable': the folder was writable, the disk full."""
    pytest.importorskip("plotly")
    import resource
    import subprocess

    storage = str(tmp_path / "o.pkl")
    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage=storage)
    exp.insert({"x": 0.5}, objective=1.0)
    out = tmp_path / "r.html"
    if existing:
        out.write_text("the plot of yesterday")
    limit = 1 << 20  # the page with plotly.js is about 5 MB

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(Path(orchard.__file__).parent.parent)}
    done = subprocess.run([sys.executable, "-m", "orchard", "plot", "regret", "-n", "e", "--storage", storage,
                           "-o", str(out)], capture_output=True, text=True, preexec_fn=limited, env=env,
                          timeout=120)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "File too large; free space on its disk or write it elsewhere" in done.stderr, done.stderr
    assert ("the file there is unchanged" in done.stderr) is existing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.pkl", "o.pkl.lock"] + ["r.html"] * existing
    assert not existing or out.read_text() == "the plot of yesterday"


def test_a_plot_never_replaces_an_orchard_storage_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """-o st.html with the storage pickle://st.html replaced the storage and its experiments with the plot."""
    from orchard.cli import main

    storage = tmp_path / "st.html"
    exp = orchard.build_experiment("e", space={"x": "uniform(0, 1)"}, storage=f"pickle://{storage}")
    exp.insert({"x": 0.5}, objective=1.0)
    assert main(["plot", "regret", "-n", "e", "--storage", f"pickle://{storage}", "-o", str(storage)]) == 2
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1 and "is an Orchard storage file" in line and "st-plot.html" in line, line
    assert [t.objective for t in orchard.get_experiment("e", storage=f"pickle://{storage}").fetch_trials()] == [1.0]


def test_a_plot_is_never_written_through_a_link_planted_at_its_temporary_name(tmp_path: Path) -> None:
    """The temporary name was '.orchard-plot.PID.N.tmp.html', known in advance: a symbolic link planted
    there by whoever can write the folder made the plot overwrite the link's target."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for n in range(64):  # this process's next temporary names, as they were
        (tmp_path / f".orchard-plot.{os.getpid()}.{n}.tmp.html").symlink_to(victim)
    out = plotting.save(plotting.regret([], "exp"), tmp_path / "plot.html")
    assert victim.read_text() == "keep me" and out.read_text().lstrip().startswith("<")


def test_a_name_near_the_longest_is_written_though_a_longer_temporary_name_would_not_fit(tmp_path: Path) -> None:
    out = tmp_path / ("a" * 250 + ".png")  # its temporary name was '.{stem}.{pid}.tmp.png': too long
    assert plotting.save(plotting.regret([], "exp"), out) == out
    assert out.read_bytes().startswith(PNG_MAGIC) and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_long_curves_are_drawn_from_a_bounded_sample_that_keeps_their_ends_and_lowest_point() -> None:
    """A trial with 100,000 reports made an 85 MB html file; a NaN objective stored elsewhere was 'best'."""
    long = [(step, 1.0 + (step % 7) / 10) for step in range(100_000)]
    long[61_234] = (61_234, 0.01)
    trials = [
        Trial(id="nan", experiment="e", params={"x": 0}, status=TrialStatus.COMPLETED, objective=math.nan,
              reports=[(1, math.nan)]),
        Trial(id="long", experiment="e", params={"x": 1}, status=TrialStatus.COMPLETED, objective=1.3,
              reports=long),
    ]
    fig = plotting.make_figure("curves", trials, "exp")
    drawn = {c.label.split()[1]: c for c in fig.curves}
    curve = drawn["long"]
    assert len(curve.steps) <= MAX_CURVE_POINTS
    assert curve.steps[0] == 0 and curve.steps[-1] == 99_999 and 61_234 in curve.steps
    assert curve.steps == sorted(curve.steps) and min(curve.values) == 0.01
    assert [c.best for c in (drawn["nan"], curve)] == [False, True]  # a NaN objective is never the best


def test_when_curves_are_thinned_those_ending_in_nan_rank_last() -> None:
    """At most 300 curves (400 were all drawn), the lowest last values first; one ending in NaN ranks last."""
    trials = [Trial(id=f"n{i:03d}", experiment="e", params={"x": i}, status=TrialStatus.PRUNED, objective=1.0,
                    reports=[(1, 1.0), (2, math.nan)]) for i in range(200)]
    trials += [Trial(id=f"f{i:03d}", experiment="e", params={"x": 1000 + i}, status=TrialStatus.PRUNED,
                     objective=1.0, reports=[(1, 1.0), (2, 0.5 + i / 1000)]) for i in range(200)]
    fig = plotting.make_figure("curves", trials, "exp")
    kept = {c.label.split()[1] for c in fig.curves}
    assert len(fig.curves) <= MAX_CURVES and {f"f{i:03d}" for i in range(MAX_CURVES // 2)} <= kept


def test_figures_show_an_objective_to_maximise_as_returned_and_named(tmp_path: Path) -> None:
    """objectives={"acc": "max"} drew every accuracy negated (stored minimised) as an "objective", its best the
    lowest: "best -0.96" in the regret plot, its curves and parallel coordinates upside down."""
    exp = orchard.build_experiment("acc", space={"x": "uniform(0, 1)"}, storage=str(tmp_path / "o.pkl"),
                                   max_trials=4, objectives={"acc": "max"})

    def train(x: float) -> dict[str, float]:
        for epoch in range(3):
            orchard.report(0.5 + x * epoch / 10, step=epoch)
        return {"acc": 0.5 + x * 0.2}

    exp.workon(train, n_workers=1, executor="thread", progress=False)
    trials = exp.fetch_trials()
    accuracies = sorted(t.results["acc"] for t in trials)
    settings = exp.settings

    def figure(kind: str) -> Any:
        return plotting.make_figure(kind, trials, exp.name, exp.space, settings.objectives, settings.constraints)

    regret = figure("regret")
    assert sorted(regret.objectives) == accuracies and regret.best[-1] == accuracies[-1] and regret.label == "acc"
    assert f"best acc {accuracies[-1]:.4g}" in regret.title
    parallel = figure("parallel")
    assert parallel.axes[-1].label == "acc" and sorted(parallel.objectives) == accuracies
    assert parallel.higher_is_better and "darker = higher acc" in parallel.title
    curves = figure("curves")
    assert all(v >= 0.5 for c in curves.curves for v in c.values) and curves.label == "acc"
    assert sorted(figure("rungs").objectives) == accuracies
    for kind in ("regret", "parallel", "curves"):
        saved = plotting.save(figure(kind), str(tmp_path / f"{kind}.html"))
        assert "acc" in Path(saved).read_text()


def test_parallel_axis_titles_with_markup_are_drawn_as_text() -> None:
    """Plotly reads a parallel-coordinates axis title as HTML (a parameter named <a href> was a working link
    in the .html plot); its tick labels it draws as plain text, so they stay as they are."""
    from orchard.plotting._plotly import plotly_figure

    trials = [make_trial(n, objective=float(n), **{HOSTILE: float(n), "tag": HOSTILE if n % 2 else "x"})
              for n in range(1, 4)]
    drawn = plotly_figure(plotting.parallel(trials, "exp")).to_plotly_json()
    dims = {d["label"]: d for d in drawn["data"][0]["dimensions"]}
    escaped = "&lt;a href=\"https://evil.example/\"&gt;click&lt;/a&gt;&lt;b&gt;bold&lt;/b&gt;"
    assert set(dims) == {escaped, "tag", "objective"}
    assert HOSTILE in dims["tag"]["ticktext"]  # plain text already: escaping it would show "&lt;"


def test_parallel_of_more_parameters_than_plotly_draws_keeps_the_objective_axis() -> None:
    """Plotly draws 60 axes of parallel coordinates and drops the rest: with 100 parameters the objective's
    axis (the last) was not drawn, and nothing said so."""
    from orchard.plotting._plotly import plotly_figure

    space = Space.from_config({f"p{i}": "uniform(0, 1)" for i in range(100)})
    trials = [make_trial(n, objective=float(n), **{f"p{i}": n / 10 for i in range(100)}) for n in range(1, 4)]
    fig = plotting.parallel(trials, "wide", space)
    assert [a.label for a in fig.axes] == [f"p{i}" for i in range(59)] + ["objective"]
    assert "the first 59 of 100 parameters" in fig.title
    dims = plotly_figure(fig).to_plotly_json()["data"][0]["dimensions"]
    assert len(dims) == 60 and dims[-1]["label"] == "objective"


def test_parallel_draws_the_other_lines_when_an_objective_is_nan() -> None:
    """A diverged trial's NaN objective, sorted first, made the colour scale NaN: the .png showed no line."""
    trials = [make_trial(n, objective=value) for n, value in enumerate([math.nan, 3.0, 1.0, 2.0, 0.5])]
    fig = plotting.parallel(trials, "exp")
    assert fig.objectives == [3.0, 2.0, 1.0, 0.5] and fig.axes[0].values == [1.0, 3.0, 2.0, 4.0]
    assert "4 completed trials" in fig.title and "1 with a NaN objective not drawn" in fig.title


def test_regret_best_so_far_skips_a_nan_objective_even_the_first() -> None:
    """A first trial with a NaN objective (a diverged run) led for good: the line was NaN, "best nan"."""
    values = [math.nan, 3.0, 1.0, 2.0]
    trials = [make_trial(n, objective=value, end=float(n)) for n, value in enumerate(values)]
    fig = plotting.regret(trials, "exp")
    assert fig.best[1:] == [3.0, 1.0, 1.0] and math.isnan(fig.best[0])
    assert "best 1 after 4 completed" in fig.title


def test_parallel_log_axis_of_extreme_bounds_labels_a_readable_number_of_powers_of_ten() -> None:
    """loguniform(1e-300, 1e300) labelled each of its 601 powers of ten: a black bar of overlapping text."""
    space = Space.from_config({"lr": "loguniform(1e-300, 1e300)"})
    trials = [make_trial(n, objective=float(n), lr=10.0 ** (n * 50)) for n in range(-5, 6)]
    axis = plotting.parallel(trials, "exp", space).axes[0]
    assert axis.ticktext == ["1e-300", "1e-200", "1e-100", "1", "1e100", "1e200", "1e300"]
    assert axis.ticks is not None
    assert min(axis.ticks) <= min(axis.values) and max(axis.values) <= max(axis.ticks)


def test_parallel_axis_of_many_choices_labels_those_the_trials_took() -> None:
    """choices of 200 models labelled all 200 on the axis: one black bar of overlapping text, in which the
    model of a line could not be read."""
    models = [f"model_{i:03d}" for i in range(200)]
    space = Space.from_config({"m": f"choices({models!r})"})
    taken = [make_trial(n, objective=float(n), m=models[n * 40 + 3]) for n in range(5)]
    axis = plotting.parallel(taken, "exp", space).axes[0]
    assert axis.ticktext == ["model_003", "model_043", "model_083", "model_123", "model_163"]
    assert axis.ticks == [3.0, 43.0, 83.0, 123.0, 163.0] and sorted(axis.values) == axis.ticks
    every = [make_trial(n, objective=float(n), m=model) for n, model in enumerate(models)]
    axis = plotting.parallel(every, "exp", space).axes[0]
    assert axis.ticks is not None and len(axis.ticks) == 30
    assert axis.ticktext is not None and axis.ticktext[0] == "model_000" and axis.ticktext[-1] == "model_199"


def test_parallel_tick_label_of_a_very_long_choice_is_shortened_keeping_its_ends() -> None:
    """A choice of 5,000 characters was its axis's tick label in full, drawn across the whole figure."""
    long = "/data/" + "x" * 5000 + "/train.csv"
    space = Space.from_config({"path": f"choices(['short', '{long}'])"})
    trials = [make_trial(1, objective=1.0, path=long), make_trial(2, objective=2.0, path="short")]
    axis = plotting.parallel(trials, "exp", space).axes[0]
    assert axis.ticktext is not None and axis.ticktext[0] == "short"
    shown = axis.ticktext[1]
    assert len(shown) <= 60 and "\u2026" in shown
    assert shown.startswith("/data/xx") and shown.endswith("xx/train.csv")


@pytest.mark.parametrize("kind", ["regret", "parallel", "rungs", "pareto", "hypervolume"])
def test_the_note_of_an_experiment_whose_every_trial_was_pruned_counts_them(kind: str) -> None:
    """Forty trials stopped by a pruner, and one broken, gave 'no completed trials yet' alone, as if
    nothing had run."""
    trials = [make_trial(n, TrialStatus.PRUNED) for n in range(40)] + [make_trial(40, TrialStatus.BROKEN)]
    objectives = {"a": "min", "b": "max"} if kind in ("pareto", "hypervolume") else None
    fig = plotting.make_figure(kind, trials, "exp", objectives=objectives)
    assert fig.note == "no completed trials yet (40 pruned, 1 broken)"


def test_parallel_ticks_of_large_values_are_numbers_not_markup() -> None:
    """Plotly's own format for 2e16 is "2×10<sup>16</sup>", which parallel coordinates (plain text) showed
    with its tags; every axis of numbers is given a plain format."""
    from orchard.plotting._plotly import plotly_figure

    trials = [make_trial(n, objective=n * 1e16, big=n * 1e17) for n in range(1, 4)]
    dims = plotly_figure(plotting.parallel(trials, "exp")).to_plotly_json()["data"][0]["dimensions"]
    assert [d.get("tickformat") for d in dims] == ["~g", "~g"]


@pytest.mark.parametrize("kind", DRAWN_KINDS)
def test_png_of_an_experiment_of_the_longest_name_keeps_its_title_inside_the_image(
        kind: str, tmp_path: Path) -> None:
    """The title of an experiment named with the 128 characters a name may have ran off both sides of the
    .png: 'aaaa...-bbbb: parallel coordinates of', without its start, its count or what darker means."""
    from matplotlib.text import Text

    from orchard.plotting._plotly import plotly_figure

    name = "a" * 60 + "-" + "b" * 67
    outside: list[str] = []
    real_draw = Text.draw

    def recording_draw(self: Any, renderer: Any) -> None:
        box, page = self.get_window_extent(renderer), self.figure.bbox
        if self.get_visible() and self.get_text() and (box.x0 < page.x0 or box.x1 > page.x1):
            outside.append(self.get_text())
        real_draw(self, renderer)

    trials = [make_trial(n, objective=float(n), start=n, end=n + 1.0, x=n / 10) for n in range(1, 5)]
    for trial in trials:
        trial.reports = [(1, 2.0), (2, 1.0)]
    fig = plotting.make_figure(kind, trials, name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Text, "draw", recording_draw)
        plotting.save(fig, tmp_path / f"{kind}.png")
    assert outside == []
    title = plotly_figure(fig).to_plotly_json()["layout"]["title"]["text"]
    assert title.replace("<br>", "").startswith(name)
    assert all(len(line) <= 100 for line in title.split("<br>"))


@pytest.mark.parametrize("kind", DRAWN_KINDS)
def test_png_draws_dollar_signs_in_values_as_text_not_formulas(kind: str, tmp_path: Path) -> None:
    """Matplotlib reads text between two $ as a formula: a choice or a worker named $\\frac{a}$ stopped
    the .png with a ValueError, and "$5-$10" lost its dollars; every text is drawn as written."""
    from matplotlib.text import Text

    drawn: list[str] = []
    real_draw = Text.draw

    def recording_draw(self: Any, renderer: Any) -> None:
        if self.get_visible() and self.get_text():
            formula = "" if self.get_parse_math() is False else "(as a formula) "
            drawn.append(formula + self.get_text())
        real_draw(self, renderer)

    formula = "$\\frac{a}$"
    trials = [make_trial(n, objective=float(n), worker=f"{formula}:1:a", start=n, end=n + 1.0,
                         price="$5-$10" if n % 2 else formula, b=float(n)) for n in range(1, 5)]
    for trial in trials:
        trial.reports = [(1, 2.0), (2, 1.0)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Text, "draw", recording_draw)
        plotting.save(plotting.make_figure(kind, trials, "exp"), tmp_path / f"{kind}.png")
    assert drawn and not [text for text in drawn if text.startswith("(as a formula)")]
