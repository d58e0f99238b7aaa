"""The pickle-file backend: one locked, checksummed log file shared by the processes of one machine or NFS.

==============================  ===================================================
module                          job
==============================  ===================================================
:mod:`.storage`                 :class:`PickledStorage`, the verbs over the file lock
:mod:`.reader`                  replaying the file into a table (:class:`~.reader.LogReader`)
:mod:`.writer`                  appending frames and compacting (:class:`~.writer.LogFile`)
:mod:`.fileformat`                the bytes: header and checksummed frames
:mod:`.records`                 the shapes a loaded record must have
:mod:`.locks`                   kernel and soft (NFS) file locks
==============================  ===================================================
"""

from __future__ import annotations

from orchard.storages.pickled.storage import PickledStorage

__all__ = ["PickledStorage"]
