"""Write the previous-release fixtures (run with the previous release on PYTHONPATH, not this tree).

    git worktree add /tmp/prev d09b582
    PYTHONPATH=/tmp/prev python tests/data/make_previous_release.py tests/data

Writes ``previous_release.pkl`` (a pickle storage) and ``previous_release_mongo.json``
(the raw MongoDB documents of the same experiment, written through mongomock, in
MongoDB extended JSON). Both hold one trial in each status of that release, and
a promoted trial (``parent`` set) of an ``asha`` experiment with a fidelity space.
"""

from __future__ import annotations

import os
import sys

from bson import json_util

import orchard
from orchard.storages import get_storage
from orchard.trial import Lease

SPACE = {"x": "uniform(0, 1)", "epochs": "fidelity(1, 9, base=3)"}


def fill(storage_uri: str) -> None:
    exp = orchard.build_experiment("previous", space=SPACE, algorithm="asha", storage=storage_uri,
                                   max_trials=20, seed=1)
    storage, eid = exp.storage, exp.id
    done = storage.register_trial(eid, {"x": 0.25, "epochs": 1}, worker="host-a:1:aaaa")
    storage.complete_trial(done.id, "host-a:1:aaaa", 0.5, {"acc": 0.9})
    promoted = storage.register_trial(eid, {"x": 0.25, "epochs": 3}, worker="host-a:1:aaaa", parent=done.id)
    storage.complete_trial(promoted.id, "host-a:1:aaaa", 0.4, {"acc": 0.95})
    failed = storage.register_trial(eid, {"x": 0.5, "epochs": 1}, worker="host-b:2:bbbb")
    storage.fail_trial(failed.id, "host-b:2:bbbb", {"type": "ValueError", "message": "boom"})
    storage.register_trial(eid, {"x": 0.75, "epochs": 1}, worker="host-c:3:cccc")  # reserved
    released = storage.register_trial(eid, {"x": 0.125, "epochs": 1}, worker="host-a:1:aaaa")
    storage.release_trial(released.id, "host-a:1:aaaa")  # interrupted
    lost = storage.register_trial(eid, {"x": 0.375, "epochs": 1}, worker="host-d:4:dddd")
    storage.release_lost(eid, {lost.id: Lease("host-d:4:dddd", lost.heartbeat or 0.0)}, 1)  # broken: lost
    storage.register_trial(eid, {"x": 0.625, "epochs": 1})  # new


def main(out: str) -> None:
    path = os.path.join(out, "previous_release.pkl")
    if os.path.exists(path):
        os.remove(path)
    fill(path)
    fill("mongomock://previous")
    db = get_storage("mongomock://previous")._db()  # type: ignore[attr-defined]
    docs = {"experiments": list(db.experiments.find()), "trials": list(db.trials.find())}
    with open(os.path.join(out, "previous_release_mongo.json"), "w") as f:
        f.write(json_util.dumps(docs, indent=1, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1])
