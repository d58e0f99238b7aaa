"""Joining a stored experiment while other workers join it too."""

from __future__ import annotations

import orchard
from orchard.joining import join_experiment
from orchard.storages import get_storage
from tests import workloads


def test_a_raise_of_max_trials_read_before_a_larger_one_never_lowers_it(tmp_path) -> None:
    """Joiners started at once with --max-trials 16 and 17 each read max_trials=5, then wrote their own value:
    the 16 landing last lowered the budget the other had raised to 17 (the docs: raised, never lowered)."""
    storage = str(tmp_path / "orchard.pkl")
    orchard.build_experiment("exp", space=workloads.SPACE, max_trials=5, storage=storage)
    store = get_storage(storage)
    read_by_the_slower = store.require_experiment("exp")
    orchard.build_experiment("exp", max_trials=17, storage=storage)  # the faster joiner's raise lands first

    joined = join_experiment(store, read_by_the_slower, None, None, {"max_trials": 16, "max_broken": 7})

    assert joined.config["max_trials"] == 17 and joined.config["max_broken"] == 7
    assert orchard.get_experiment("exp", storage=storage).max_trials == 17
    assert join_experiment(store, joined, None, None, {"max_trials": 20}).config["max_trials"] == 20
