"""Executor backends: they only spawn workers and keep them alive.

Each backend is a factory ``(n_workers, config) -> context manager yielding a
concurrent.futures.Executor``. The executor runs whole worker loops
(:func:`orchard.worker.run_worker`); no backend makes an optimization
decision.

========== =====================================================================
name       backend
========== =====================================================================
joblib     loky reusable process pool (default; alias ``loky``); cloudpickle ships
           functions defined in ``__main__`` or notebooks
process    standard library :class:`~concurrent.futures.ProcessPoolExecutor`
dask       ``dask.distributed``: ``config`` goes to ``Client`` (e.g. ``address``);
           without an address a ``LocalCluster`` of ``n_workers`` processes is started
thread     threads of this process (for ``memory://`` storages)
single     this thread, one worker (for debugging with pdb)
========== =====================================================================
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from orchard.errors import ConfigurationError, ExecutorError, OrchardError

__all__ = ["EXECUTORS", "InlineExecutor", "make_executor"]

ExecutorFactory = Callable[[int, Mapping[str, Any]], contextlib.AbstractContextManager[Executor]]


class InlineExecutor(Executor):
    """Runs each submitted call immediately in the calling thread."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:
            future.set_exception(err)
        return future


@contextlib.contextmanager
def _loky(n_workers: int, config: Mapping[str, Any]) -> Iterator[Executor]:
    from joblib.externals.loky import get_reusable_executor

    yield get_reusable_executor(max_workers=n_workers, **dict(config))


@contextlib.contextmanager
def _process(n_workers: int, config: Mapping[str, Any]) -> Iterator[Executor]:
    with ProcessPoolExecutor(max_workers=n_workers, **dict(config)) as pool:
        yield pool


@contextlib.contextmanager
def _thread(n_workers: int, config: Mapping[str, Any]) -> Iterator[Executor]:
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="orchard-worker") as pool:
        yield pool


@contextlib.contextmanager
def _single(n_workers: int, config: Mapping[str, Any]) -> Iterator[Executor]:
    if n_workers != 1:
        raise ConfigurationError(
            f"executor 'single' runs one worker in this thread, not {n_workers}; "
            "use executor='thread' or 'joblib' for several"
        )
    yield InlineExecutor()


@contextlib.contextmanager
def _dask(n_workers: int, config: Mapping[str, Any]) -> Iterator[Executor]:
    if importlib.util.find_spec("distributed") is None:
        raise ConfigurationError(
            "executor 'dask' needs dask.distributed, which is not installed; "
            "install it with: pip install 'orchard-hpo[dask]'"
        )
    from dask.distributed import Client, LocalCluster

    options = dict(config)
    with contextlib.ExitStack() as stack:
        if "address" in options or "scheduler_file" in options:
            client = stack.enter_context(Client(**options))
        else:
            cluster_options = {"n_workers": n_workers, "threads_per_worker": 1,
                               "processes": True, "dashboard_address": None, **options}
            try:
                cluster = stack.enter_context(LocalCluster(**cluster_options))
            except (RuntimeError, OSError, TimeoutError) as err:
                raise ExecutorError(
                    f"executor 'dask' could not start a LocalCluster of {n_workers} workers "
                    f"({type(err).__name__}: {err}). Dask starts workers with 'spawn', which re-imports "
                    "your script: put the code that calls workon under `if __name__ == \"__main__\":`, "
                    "or pass executor_config={'address': ...} to use a running scheduler"
                ) from err
            client = stack.enter_context(Client(cluster))
        yield client.get_executor(pure=False)


#: Executor name -> factory. Unknown names are an error listing these.
EXECUTORS: dict[str, ExecutorFactory] = {
    "joblib": _loky,
    "loky": _loky,
    "process": _process,
    "dask": _dask,
    "thread": _thread,
    "single": _single,
}


def make_executor(
    name: str, n_workers: int, config: Mapping[str, Any] | None = None
) -> contextlib.AbstractContextManager[Executor]:
    """Return a context manager yielding the executor ``name`` sized for ``n_workers``.

    Raises:
        ConfigurationError: unknown name, bad ``n_workers``, or a missing optional dependency.
    """
    factory = EXECUTORS.get(name)
    if factory is None:
        raise ConfigurationError(
            f"unknown executor {name!r}; valid executors: {', '.join(EXECUTORS)}"
        )
    if not isinstance(n_workers, int) or n_workers < 1:
        raise ConfigurationError(f"n_workers must be a positive integer, got {n_workers!r}")
    return _translated(factory(n_workers, config or {}), name)


@contextlib.contextmanager
def _translated(manager: contextlib.AbstractContextManager[Executor], name: str) -> Iterator[Executor]:
    try:
        with manager as executor:
            yield executor
    except OrchardError:
        raise
    except (OSError, RuntimeError) as err:
        raise ExecutorError(f"executor {name!r} failed: {type(err).__name__}: {err}") from err
