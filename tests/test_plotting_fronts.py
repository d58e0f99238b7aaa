"""The figures of several objectives: ``orchard plot pareto`` and ``orchard plot hypervolume``."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import time
from pathlib import Path
from typing import Any

import pytest

import orchard
from orchard import plotting
from orchard.cli import main
from orchard.hypervolume import GrowingHypervolume, hypervolume, reference_point
from orchard.objectives import dominates
from orchard.trial import Trial, TrialStatus

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TWO = {"error": "min", "accuracy": "max"}
#: (error, accuracy, memory_gb): trial 3 is dominated by 1; trial 5 breaks memory_gb <= 16.
POINTS = [(0.2, 0.7, 4.0), (0.5, 0.9, 8.0), (0.3, 0.6, 2.0), (0.1, 0.5, 12.0), (0.05, 0.95, 32.0)]


def trial(n: int, error: float, accuracy: float, memory: float, end: float | None = None,
          name: str = "x") -> Trial:
    return Trial(id=f"{n:032x}", experiment="e", params={name: float(n)}, status=TrialStatus.COMPLETED,
                 objective=error, results={"error": error, "accuracy": accuracy, "memory_gb": memory},
                 start_time=0.0, end_time=float(n) if end is None else end)


def trials() -> list[Trial]:
    return [trial(n, *point) for n, point in enumerate(POINTS, start=1)]


def test_pareto_highlights_the_feasible_front_and_marks_infeasible_trials() -> None:
    fig = plotting.pareto(trials(), "mo", TWO, ["memory_gb <= 16"])
    (panel,) = fig.panels
    assert (panel.x_label, panel.y_label) == ("error (min)", "accuracy (max)")
    assert list(zip(panel.front.x, panel.front.y)) == [(0.1, 0.5), (0.2, 0.7), (0.5, 0.9)]  # by error
    assert list(zip(panel.others.x, panel.others.y)) == [(0.3, 0.6)]
    assert list(zip(panel.infeasible.x, panel.infeasible.y)) == [(0.05, 0.95)]
    assert "3 of 5 completed trials (1 infeasible)" in fig.title
    front = [(e, -a) for e, a in zip(panel.front.x, panel.front.y)]
    assert not any(dominates(a, b) for a in front for b in front)


def test_the_hover_labels_give_each_objective_in_its_own_direction() -> None:
    """Hovering over a point of the pareto page said "(objective -0.9)", the minimised first objective,
    and the timeline's bars "(objective -0.9)" for an accuracy of 0.9; both now name each objective as
    returned."""
    minimised = [dataclasses.replace(t, objective=-t.results["accuracy"]) for t in trials()]
    first = {"accuracy": "max", "error": "min"}
    (panel,) = plotting.make_figure("pareto", minimised, "mo", objectives=first).panels
    labels = panel.front.labels + panel.others.labels
    assert any("(accuracy 0.9, error 0.5) x=2" in label for label in labels)
    assert not any("objective" in label for label in labels)
    timed = [dataclasses.replace(t, worker="w") for t in minimised]
    bars = plotting.make_figure("timeline", timed, "mo", objectives=first).bars
    assert "(accuracy 0.9) x=2" in bars[1].label and not any("objective" in b.label for b in bars)


def test_three_objectives_give_three_pairwise_views_of_one_front() -> None:
    three = {"error": "min", "accuracy": "max", "memory_gb": "min"}
    fig = plotting.pareto(trials(), "mo", three)
    assert [(p.x_label.split()[0], p.y_label.split()[0]) for p in fig.panels] == [
        ("error", "accuracy"), ("error", "memory_gb"), ("accuracy", "memory_gb")]
    assert {len(p.front.x) for p in fig.panels} == {5}  # trial 3 uses the least memory: on the front in every view
    assert not any(p.joined for p in fig.panels)


@pytest.mark.parametrize(("objectives", "note"), [(None, "one objective"), (TWO, "yet")])
def test_pareto_without_two_objectives_or_results_says_why(objectives: Any, note: str) -> None:
    shown = trials() if objectives is None else []
    fig = plotting.pareto(shown, "mo", objectives)
    assert fig.panels == [] and fig.note is not None and note in fig.note


def test_hypervolume_never_falls_and_ends_at_the_experiments_figure(tmp_path: Path) -> None:
    exp = orchard.build_experiment("mo-hv", space={"x": "uniform(0, 1)"}, storage="memory://", max_trials=12,
                                   objectives=TWO, constraints=["memory_gb <= 16"], seed=1)
    exp.workon(lambda x: {"error": x, "accuracy": 1 - (x - 0.3) ** 2, "memory_gb": 40 * x}, progress=False)
    fig = plotting.hypervolume(exp.fetch_trials(), exp.name, TWO, ["memory_gb <= 16"])
    assert fig.x == list(range(1, 13)) and len(fig.seconds) == 12
    assert all(a <= b for a, b in zip(fig.volumes, fig.volumes[1:]))
    volume, reference = exp.hypervolume()
    assert fig.volumes[-1] == pytest.approx(volume) and "reference error=" in fig.title


def _sphere_trials(count: int, dims: int, seed: int = 0) -> list[Trial]:
    """``count`` trials on the front of ``dims`` objectives (a quarter sphere: none dominates another)."""
    rng = random.Random(seed)
    made = []
    for n in range(count):
        theta, phi = rng.random() * math.pi / 2, rng.random() * math.pi / 2
        point = [math.cos(theta) * math.cos(phi), math.cos(theta) * math.sin(phi), math.sin(theta)][:dims]
        if dims == 2:
            point = [math.cos(theta), math.sin(theta)]
        results = {f"f{i}": value for i, value in enumerate(point)}
        made.append(Trial(id=f"{n:032x}", experiment="e", params={"x": float(n)}, objective=point[0],
                          status=TrialStatus.COMPLETED, results=results, start_time=0.0, end_time=float(n)))
    return made


@pytest.mark.parametrize("dims", [2, 3])
def test_the_hypervolume_curve_of_3000_trials_on_the_front_takes_seconds_not_a_minute(dims: int) -> None:
    """The curve measured the whole front again after each trial: 41 s for 3,000 trials on the front."""
    trials = _sphere_trials(3000, dims)
    objectives = {f"f{i}": "min" for i in range(dims)}
    began = time.perf_counter()
    fig = plotting.hypervolume(trials, "e", objectives)
    assert time.perf_counter() - began < 5.0
    vectors = [tuple(t.results.values()) for t in trials]
    assert fig.volumes[-1] == pytest.approx(hypervolume(vectors, reference_point(vectors)), rel=1e-12)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_the_hypervolume_curve_is_the_volume_of_each_prefix_of_the_trials(dims: int) -> None:
    """Each point of the curve, updated by what a trial adds, is the volume measured on the trials so far:
    with dominated points, ties, repeated points and points beyond the reference among them."""
    rng = random.Random(dims)
    for _ in range(30):
        points = [tuple(float(rng.randint(0, 6)) for _ in range(dims)) for _ in range(rng.randint(1, 25))]
        reference = tuple(float(rng.choice([3, 5, 7])) for _ in range(dims))
        growing = GrowingHypervolume(reference)
        for k, point in enumerate(points, start=1):
            measured = hypervolume(points[:k], reference)
            assert growing.add(point) == pytest.approx(measured, rel=1e-12, abs=1e-12)
    trials = _sphere_trials(60, max(dims, 2), seed=dims)
    objectives = {f"f{i}": "min" for i in range(max(dims, 2))}
    fig = plotting.hypervolume(trials, "e", objectives)
    vectors = [tuple(t.results.values()) for t in trials]
    exact = reference_point(vectors)  # the figure's (its title shows 4 digits)
    assert fig.volumes == pytest.approx([hypervolume(vectors[:k], exact) for k in range(1, 61)], rel=1e-12)


def test_hypervolume_counts_only_feasible_trials_in_completion_order() -> None:
    late_best = trial(9, 0.01, 0.99, 1.0, end=100.0)
    fig = plotting.hypervolume([late_best, *trials()], "mo", TWO, ["memory_gb <= 16"])
    assert fig.x == [1, 2, 3, 4, 5, 6]
    assert fig.volumes[4] == fig.volumes[3]  # trial 5 is infeasible: nothing added
    assert fig.volumes[2] == fig.volumes[1]  # trial 3 is dominated: nothing added
    assert fig.volumes[5] > fig.volumes[4]  # the late trial dominates everything


def test_hypervolume_beyond_the_float_range_says_why_instead_of_drawing_infinity() -> None:
    edges = [trial(1, 1e308, -1e308, 1.0), trial(2, -1e308, 1e308, 1.0)]
    fig = plotting.hypervolume(edges, "mo", TWO)
    assert fig.volumes == [] and "beyond the largest float" in (fig.note or "")  # was [inf, inf]


def test_the_reason_a_hypervolume_is_not_drawn_is_read_whole_and_says_what_to_do(tmp_path: Path) -> None:
    """The .png drew the 200 characters of the reason on one line in large type: it ran off both sides and
    the reader saw '...float (about 1.8e308): the objectives span too wide a range; give a reference point
    closer to the fron', advice that orchard plot takes no option for."""
    pytest.importorskip("plotly")
    matplotlib_text = pytest.importorskip("matplotlib.text")
    from orchard.plotting._plotly import plotly_figure

    edges = [trial(1, 1e300, -1e300, 1.0), trial(2, -1e300, 1e300, 1.0)]
    fig = plotting.hypervolume(edges, "mo", TWO)
    assert fig.note is not None and "a logarithm" in fig.note and "give a reference point" not in fig.note
    outside: list[str] = []
    real_draw = matplotlib_text.Text.draw

    def recording_draw(self: Any, renderer: Any) -> None:
        box, page = self.get_window_extent(renderer), self.figure.bbox
        if self.get_visible() and self.get_text() and (box.x0 < page.x0 or box.x1 > page.x1):
            outside.append(self.get_text())
        real_draw(self, renderer)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(matplotlib_text.Text, "draw", recording_draw)
        plotting.save(fig, tmp_path / "hv.png")
    assert outside == []
    (note,) = plotly_figure(fig).to_plotly_json()["layout"]["annotations"]
    assert all(len(line) <= 60 for line in note["text"].split("<br>"))
    assert note["text"].replace("<br>", " ") == fig.note


@pytest.mark.parametrize("suffix", [".png", ".html"])
def test_pareto_of_objectives_near_the_largest_float_draws_the_rest_and_names_the_others(
        tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`orchard plot pareto -o f.png` failed with "unexpected ValueError: arange: cannot compute length": an
    axis from -1e308 to 1e308 spans more than the largest float. Such trials are left out, and named."""
    uri = str(tmp_path / "db.pkl")
    exp = orchard.build_experiment("huge", space={"x": "uniform(0, 1)"}, storage=uri, objectives=TWO)
    for x, error, accuracy in [(0.1, 1e308, 0.5), (0.2, -1.7e308, 0.6), (0.3, 0.2, 0.7), (0.4, 0.1, 0.6)]:
        exp.insert({"x": x}, results={"error": error, "accuracy": accuracy})
    out = tmp_path / f"pareto{suffix}"
    code = main(["plot", "pareto", "-n", "huge", "--storage", uri, "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    fig = plotting.pareto(exp.fetch_trials(), "huge", TWO)
    [panel] = fig.panels
    assert sorted(panel.front.x + panel.others.x) == [0.1, 0.2]
    far = [t.id[:8] for t in exp.fetch_trials() if abs(t.results["error"]) > 1]
    assert fig.title.endswith(f"\nnot drawn, an objective beyond ±1e300: 2 trials ({', '.join(far)})")
    assert fig.title.startswith("huge: Pareto front, 2 of 4 completed trials")  # -1.7e308 is on the front


def test_hypervolume_beyond_three_objectives_says_why() -> None:
    four = {"a": "min", "b": "min", "c": "min", "d": "min"}
    assert "up to 3 objectives" in (plotting.hypervolume([], "mo", four).note or "")


HOSTILE = '<a href="https://evil.example/">click</a>'


@pytest.mark.parametrize("suffix", [".html", ".png"])
@pytest.mark.parametrize("kind", ["pareto", "hypervolume"])
def test_cli_writes_both_figures_of_a_stored_experiment(tmp_path: Path, kind: str, suffix: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    uri = str(tmp_path / "db.pkl")
    exp = orchard.build_experiment("mo-plot", space={"x": "uniform(0, 1)"}, storage=uri, max_trials=8,
                                   objectives=TWO, constraints=["memory_gb <= 16"], seed=3)
    exp.workon(lambda x: {"error": x, "accuracy": 1 - (x - 0.3) ** 2, "memory_gb": 40 * x}, progress=False)
    out = tmp_path / f"{kind}{suffix}"
    assert main(["plot", kind, "-n", "mo-plot", "--storage", uri, "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    if suffix == ".png":
        assert out.read_bytes().startswith(PNG_MAGIC)
        return
    page = out.read_text(encoding="utf-8")
    match = re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\])\s*,\s*\{", page, re.DOTALL)
    assert match, "no Plotly.newPlot call in the page"
    names = {t.get("name") for t in json.loads(match.group(1))}
    assert names >= ({"front"} if kind == "pareto" else {"hypervolume"})


def test_pareto_draws_markup_in_values_as_text() -> None:
    from orchard.plotting._plotly import plotly_figure

    shown = [trial(n, *point, name=HOSTILE) for n, point in enumerate(POINTS, start=1)]
    drawn = json.dumps(plotly_figure(plotting.pareto(shown, HOSTILE, TWO, ["memory_gb <= 16"])).to_plotly_json())
    assert "<a href" not in drawn and drawn.count("&lt;a href=") >= 5


@pytest.mark.parametrize("suffix", [".html", ".png"])
def test_pareto_of_many_objectives_draws_the_pairs_of_the_first_six_in_rows(
        tmp_path: Path, suffix: str) -> None:
    """Six objectives give 15 panels: in one row, plotly stopped the .html with a ValueError (its spacing
    cannot fit 15 columns) and the .png squeezed them to nothing. 13 objectives would give 78."""
    names = [f"m{i}" for i in range(13)]
    rows = [Trial(id=f"{n:032x}", experiment="e", params={"x": float(n)}, status=TrialStatus.COMPLETED,
                  objective=float(n), results={m: float((n * (i + 1)) % 7) for i, m in enumerate(names)},
                  start_time=0.0, end_time=float(n)) for n in range(1, 8)]
    fig = plotting.pareto(rows, "many", {m: "min" for m in names})
    assert len(fig.panels) == 15
    assert fig.panels[-1].x_label.startswith("m4") and fig.panels[-1].y_label.startswith("m5")
    assert "the pairs of the first 6 of 13 objectives drawn" in fig.title
    out = plotting.save(fig, tmp_path / f"front{suffix}")
    if suffix == ".html":
        page = out.read_text()
        layout = re.search(r"Plotly\.newPlot\(.*?\]\s*,\s*(\{.*?\})\s*,\s*\{\"responsive", page, re.DOTALL)
        assert layout and '"yaxis15"' in layout.group(1)  # every panel has its axes
    else:
        width, height = (int.from_bytes(out.read_bytes()[at:at + 4], "big") for at in (16, 20))
        assert height > width  # five rows of three panels
