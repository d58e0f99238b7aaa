"""The MongoDB backend: every verb one conditional update, for workers on many machines.

==============================  ===================================================
module                          job
==============================  ===================================================
:mod:`.storage`                 :class:`MongoStorage`, the verbs
:mod:`.client`                  clients, indexes, driver errors, documents
:mod:`.slots`                   budget slots that keep ``max_trials`` exact
:mod:`.changes`                 the change feed behind ``fetch_changes``
==============================  ===================================================
"""

from __future__ import annotations

from orchard.storages.mongodb.storage import MongoStorage

__all__ = ["MongoStorage"]
