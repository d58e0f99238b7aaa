"""Orchard's exceptions: one root, one leaf per thing a user can act on.

Every error Orchard raises on purpose is an :class:`OrchardError`. Driver
errors (pymongo, filelock, OS errors) are translated at the storage boundary
with ``raise ... from err`` so callers never need to import a driver to catch
a failure. Messages say what happened, to which object, and what to try.

::

    OrchardError
    ├── ConfigurationError            bad user input: options, URIs, algorithm names
    │   └── SpaceError                a prior string that cannot be parsed
    ├── StorageError                  anything the shared storage could not do
    │   ├── StorageUnavailableError   unreachable server, lock not obtained in time
    │   ├── StorageCorruptedError     unreadable, foreign or tampered storage file
    │   ├── DuplicateTrialError       params already registered in the experiment
    │   ├── ReservationLostError      the worker no longer owns the trial it writes
    │   └── TrialNotFoundError        no trial with that id
    ├── BudgetExhaustedError          every unit of ``max_trials`` is taken
    ├── ExperimentError
    │   ├── ExperimentNotFoundError   no experiment with that name in the storage
    │   ├── ExperimentConflictError   joined with a different space or algorithm
    │   └── ExperimentBrokenError     ``max_broken`` trials failed
    ├── AlgorithmError
    │   └── SpaceExhaustedError       the algorithm has nothing new to suggest
    └── ExecutorError                 an executor backend could not run the workers
"""

from __future__ import annotations

__all__ = [
    "AlgorithmError",
    "BudgetExhaustedError",
    "ConfigurationError",
    "DuplicateTrialError",
    "ExecutorError",
    "ExperimentBrokenError",
    "ExperimentConflictError",
    "ExperimentError",
    "ExperimentNotFoundError",
    "OrchardError",
    "ReservationLostError",
    "SpaceError",
    "SpaceExhaustedError",
    "StorageCorruptedError",
    "StorageError",
    "StorageUnavailableError",
    "TrialNotFoundError",
]


class OrchardError(Exception):
    """Root of every error Orchard raises on purpose."""


class ConfigurationError(OrchardError):
    """An option, URI or name given by the user is invalid."""


class SpaceError(ConfigurationError):
    """A search-space definition (a prior string) is invalid."""


class StorageError(OrchardError):
    """The storage could not carry out an operation."""


class StorageUnavailableError(StorageError):
    """The storage cannot be reached (server down, lock not obtained in time)."""


class StorageCorruptedError(StorageError):
    """The storage holds data Orchard cannot read safely."""


class DuplicateTrialError(StorageError):
    """A trial with the same params already exists in the experiment."""


class ReservationLostError(StorageError):
    """The worker does not own the reservation it tried to write to."""


class TrialNotFoundError(StorageError):
    """No trial with the given id exists."""


class BudgetExhaustedError(OrchardError):
    """No unit of the experiment's ``max_trials`` budget is left to claim."""


class ExperimentError(OrchardError):
    """Base class for errors about an experiment as a whole."""


class ExperimentNotFoundError(ExperimentError):
    """No experiment with the given name exists in the storage."""


class ExperimentConflictError(ExperimentError):
    """An experiment was joined with a configuration that differs from the stored one."""


class ExperimentBrokenError(ExperimentError):
    """The experiment reached ``max_broken`` broken trials and stops."""


class AlgorithmError(OrchardError):
    """An optimization algorithm could not produce a suggestion."""


class SpaceExhaustedError(AlgorithmError):
    """The algorithm has no unseen point left to suggest (e.g. a finished grid)."""


class ExecutorError(OrchardError):
    """An executor backend could not start or run the workers."""
