"""Executor backends: they only spawn workers and keep them alive.

Each backend is a factory ``(n_workers, config) -> context manager yielding a
concurrent.futures.Executor``. The executor runs whole worker loops
(:func:`orchard.executors.task.run_worker`); no backend makes an optimization
decision.

========== =====================================================================
name       backend
========== =====================================================================
joblib     loky reusable process pool (default; alias ``loky``); cloudpickle ships
           functions defined in ``__main__`` or notebooks
process    standard library :class:`~concurrent.futures.ProcessPoolExecutor`, started
           with ``fork`` where safe (not macOS): cheapest start for many local workers
dask       ``dask.distributed``: ``config`` goes to ``Client`` (e.g. ``address``);
           without an address a ``LocalCluster`` of ``n_workers`` processes is started;
           ``worker_timeout`` and ``resources`` are Orchard's (see :func:`make_executor`)
thread     threads of this process (for ``memory://`` storages)
single     this thread, one worker (for debugging with pdb)
========== =====================================================================

An executor instance the caller already has (a ``concurrent.futures.Executor``
such as ``mpi4py.futures.MPIPoolExecutor``, or a ``dask.distributed.Client``)
is used as it is and left open.
"""

from __future__ import annotations

import contextlib
import importlib.util
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from orchard.errors import ConfigurationError, ExecutorError, OrchardError
from orchard.executors.capacity import check_capacity, check_n_workers, counted_as
from orchard.executors.remote import offering, worker_timeout
from orchard.forks import end_children_at_exit, outlive_threads_at_exit
from orchard.interruption import deferred, pool_handlers
from orchard.resources import OUT_OF_FILES

__all__ = ["EXECUTORS", "InlineExecutor", "check_executor_config", "is_dask_client", "make_executor",
           "outlasts_workon", "reaches_local_processes", "shares_environment"]

ExecutorFactory = Callable[[int, Mapping[str, Any]], contextlib.AbstractContextManager[Executor]]


class InlineExecutor(Executor):
    """Runs each submitted call immediately in the calling thread."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:  # noqa: BLE001 - a Future carries any exception, as a pool's does
            future.set_exception(err)
        return future


@contextlib.contextmanager
def _loky(n_workers: int, config: Mapping[str, Any]) -> Iterator[Executor]:
    # loky imports its modules as the first pool is made: an interruption among them would leave them
    # half-imported for the rest of the process (every later workon failing with an ImportError)
    with deferred():
        from joblib.externals.loky import get_reusable_executor

        try:
            pool = get_reusable_executor(max_workers=n_workers, **_watching_their_parent(config))
        except (TypeError, ValueError) as err:
            raise _pool_refused("joblib", "get_reusable_executor", err) from err
    yield pool


def _fork_context() -> multiprocessing.context.BaseContext | None:
    """``fork`` where it is safe (Linux and other POSIX systems but macOS), else ``None`` (the default).

    A forked worker starts as a copy of this process, which has imported numpy
    and Orchard already: a few milliseconds of CPU each, against ~0.2 s for an
    interpreter that imports them (``spawn``; ``forkserver``, Python 3.14's
    default on Linux, imports them in each worker too, unless preloaded).
    macOS's system libraries are not fork-safe, so it keeps ``spawn`` there.
    """
    if sys.platform == "darwin" or "fork" not in multiprocessing.get_all_start_methods():
        return None
    _preload()
    return multiprocessing.get_context("fork")


def _preload() -> None:
    """Import here, once, what every worker loop imports, so that the forked workers share it.

    Orchard imports numpy only where a generator is made (``orchard status`` needs none): a
    caller that had not imported it left each forked worker to import it again, 75 ms of CPU
    and 6 MiB of its own memory per worker (38 s and 3 GiB at 512).
    """
    import numpy.random  # noqa: F401


#: Seconds between two looks of a pool's worker at whether the caller is still alive.
ORPHAN_LOOK = 0.5


def _stop_when_orphaned(parent: int, initializer: Callable[..., object] | None, *initargs: Any) -> None:
    """In a pool's worker (``process``, ``joblib``): SIGTERM ourselves, again and again, once ``parent`` is gone.

    A caller killed with SIGKILL cannot stop its pool: the workers would run its
    experiment on as orphans (and the standard library's then wait for ever for work), as would a worker
    that starts (a loky interpreter importing for a second) after its caller died. The first SIGTERM
    stops a running worker loop as an interruption does (its trial is given back;
    copies are ignored while it does); one after the loop has ended ends the idle
    process. The multiprocessing children an objective left running end as the process exits
    (:func:`~orchard.forks.end_children_at_exit`), not hold the pool's shutdown for ever, nor do
    its threads (:func:`~orchard.forks.outlive_threads_at_exit`); and in
    a loky process, ``multiprocessing.Process`` starts processes with this platform's default
    method again (loky's own, which loky sets there, fails with "'Process' object has no attribute 'env'").
    Runs the user's own ``initializer`` after.
    """
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_LOOK)
        while True:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(ORPHAN_LOOK)

    pool_handlers()  # not the caller's, inherited through fork: each worker loop installs its own
    end_children_at_exit()
    outlive_threads_at_exit()
    if multiprocessing.get_start_method(allow_none=True) == "loky":  # loky's, which multiprocessing.Process cannot use
        multiprocessing.set_start_method(None, force=True)  # the objective's processes start as they would at home
    if os.getppid() == parent or _gone(parent):  # a caller killed as its pool started: orphaned already
        threading.Thread(target=watch, name="orchard-orphan-watch", daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended: no such pid, or a zombie (Linux; a pid taken by another process
    since, or a parent that is not the caller, under ``forkserver``, counts as alive)."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except ProcessLookupError:
        return True
    except (OSError, IndexError):  # another user's process took the pid; no /proc
        return False
    return state == "Z"


def _watching_their_parent(config: Mapping[str, Any]) -> dict[str, Any]:
    """A pool's options with :func:`_stop_when_orphaned` as its initializer (wrapping the user's own)."""
    options = dict(config)
    options["initargs"] = (os.getpid(), options.pop("initializer", None), *options.pop("initargs", ()))
    options["initializer"] = _stop_when_orphaned
    return options


@contextlib.contextmanager
def _process(n_workers: int, config: Mapping[str, Any]) -> Iterator[Executor]:
    options = dict(config)
    try:
        if "mp_context" not in options:
            options["mp_context"] = _fork_context()
        elif isinstance(options["mp_context"], str):  # a start method's name, as multiprocessing takes it
            options["mp_context"] = multiprocessing.get_context(options["mp_context"])
        pool = ProcessPoolExecutor(max_workers=n_workers, **_watching_their_parent(options))
    except (TypeError, ValueError, AttributeError) as err:  # AttributeError: an mp_context that is no context
        raise _pool_refused("process", "ProcessPoolExecutor", err) from err
    stranded: list[multiprocessing.process.BaseProcess] = []
    try:
        with pool:
            try:
                yield pool
            finally:
                stranded = _stranded(pool)
    finally:
        for process in stranded:  # never handed any work: killed, and waited for without a timeout (a file)
            with contextlib.suppress(OSError, ValueError):
                process.kill()
                process.join()


def _stranded(pool: ProcessPoolExecutor) -> list[multiprocessing.process.BaseProcess]:
    """The processes of a pool that failed to start them all (``os.fork``: "Too many open files").

    The pool starts its thread that hands out work, and stops the processes at shutdown, only once all
    have started: those started before the failure waited for work for ever, and the interpreter waited
    for them at exit (``workon`` raised, then the script never ended). Private attributes, read with defaults.
    """
    if getattr(pool, "_executor_manager_thread", True) is not None:
        return []
    return list((getattr(pool, "_processes", None) or {}).values())


def _pool_refused(executor: str, taker: str, err: Exception) -> ConfigurationError:
    """The local pool ``taker`` of ``executor`` refused the options of executor_config."""
    return ConfigurationError(
        f"executor {executor!r}: {taker} refused executor_config ({type(err).__name__}: {err}); give it "
        f"{taker}'s own options, but max_workers: n_workers gives max_workers")


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


_DASK_ORCHARD_KEYS = ("worker_timeout", "resources")


@contextlib.contextmanager
def _dask(n_workers: int, config: Mapping[str, Any]) -> Iterator[Executor]:
    if importlib.util.find_spec("distributed") is None:
        raise ConfigurationError(
            "executor 'dask' needs dask.distributed, which is not installed; "
            "install it with: pip install 'orchard-hpo[dask]'"
        )
    with deferred():  # as loky's (see _loky)
        from dask.distributed import Client, LocalCluster

    options = {k: v for k, v in config.items() if k not in _DASK_ORCHARD_KEYS}
    with contextlib.ExitStack() as stack:
        if "address" in options or "scheduler_file" in options:
            try:
                client = stack.enter_context(Client(**options))  # type: ignore[no-untyped-call]
            except (TypeError, ValueError) as err:  # an option it does not take, a value it cannot use
                raise _refused("Client", err) from err
            except OSError as err:  # no scheduler answered within the timeout
                where = options.get("address") or f"of {options.get('scheduler_file')}"
                raise ExecutorError(
                    f"cannot reach the Dask scheduler {where} ({type(err).__name__}: {err}); check that it "
                    "runs and that this host reaches it (address, port, firewall), or raise "
                    "executor_config's 'timeout'") from err
        else:
            cluster_options = {"n_workers": n_workers, "threads_per_worker": 1, "processes": True,
                               "dashboard_address": None, "resources": config.get("resources"), **options}
            if cluster_options["dashboard_address"] is None:  # its HTTP server (health, metrics) listens anyway:
                # on a free port, not on 8787, which a Dask dashboard of the user's (or a second run) holds
                scheduler = {"dashboard_address": "127.0.0.1:0", **(cluster_options.get("scheduler_kwargs") or {})}
                cluster_options["scheduler_kwargs"] = scheduler
            try:
                with deferred():  # interrupted half-built, its close at exit fails ("AssertionError: Status.init")
                    cluster = stack.enter_context(LocalCluster(**cluster_options))  # type: ignore[no-untyped-call]
            except (TypeError, RuntimeError, OSError, TimeoutError) as err:
                cause = _root_cause(err)  # a worker process that failed to start says why only there
                if isinstance(cause, TypeError):  # LocalCluster passes the options it does not know on to its workers
                    raise _refused("LocalCluster", cause) from err
                raise ExecutorError(
                    f"executor 'dask' could not start a LocalCluster of {n_workers} workers "
                    f"({type(err).__name__}: {err}). Dask starts workers with 'spawn', which re-imports "
                    "your script: put the code that calls workon under `if __name__ == \"__main__\":`, "
                    "or pass executor_config={'address': ...} to use a running scheduler"
                ) from err
            client = stack.enter_context(Client(cluster))  # type: ignore[no-untyped-call]
        yield _dask_executor(client, config)


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def _refused(taker: str, err: BaseException) -> ConfigurationError:
    """Dask's ``taker`` (``Client`` or ``LocalCluster``) refused the options of executor_config."""
    return ConfigurationError(
        f"executor 'dask': dask.distributed.{taker} refused executor_config ({type(err).__name__}: {err}); "
        "it takes Client's options with an address or a scheduler_file, LocalCluster's and its workers' "
        f"without them, and Orchard's {' and '.join(_DASK_ORCHARD_KEYS)}")


def _dask_executor(client: Any, config: Mapping[str, Any]) -> Executor:
    """The client's executor, once a worker has joined (else one clear error, not a hang).

    ``config["resources"]`` (e.g. ``{"GPU": 1}``) is what each Orchard worker needs:
    Dask runs it only on a Dask worker that offers it.
    """
    timeout = worker_timeout(config)
    if timeout is not None:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError as err:
            raise ExecutorError(
                f"no Dask worker joined the scheduler {client.scheduler.address} within {timeout:g} s; "
                "start workers (dask worker ADDRESS, or cluster.scale(N)), check that they can reach "
                "the scheduler, or raise executor_config={'worker_timeout': SECONDS}"
            ) from err
    resources = config.get("resources")
    if resources and timeout is not None:
        _wait_for_resources(client, dict(resources), timeout)
    return client.get_executor(pure=False, **({"resources": dict(resources)} if resources else {}))  # type: ignore[no-any-return]


def _wait_for_resources(client: Any, resources: dict[str, float], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for a Dask worker that offers ``resources``: Dask holds a task no worker
    can run for ever, silently (workers started without ``--resources GPU=1``)."""
    deadline = time.monotonic() + timeout
    while True:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
        if offering(workers, resources):
            return
        if time.monotonic() >= deadline:
            seen = [dict(worker.get("resources") or {}) for worker in workers.values()]
            offers = ", ".join(sorted({str(has) for has in seen if has})) or "none"
            raise ExecutorError.unoffered(client.scheduler.address, resources, timeout, offers)
        time.sleep(0.5)


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
    executor: str | Executor | Any, n_workers: int, config: Mapping[str, Any] | None = None
) -> contextlib.AbstractContextManager[Executor]:
    """Return a context manager yielding the executor to run ``n_workers`` worker loops on.

    Args:
        executor: a name of :data:`EXECUTORS`; or an executor the caller already has, used
            as it is and left open: a :class:`concurrent.futures.Executor` (a thread or process
            pool, ``mpi4py.futures.MPIPoolExecutor``, ...) or a ``dask.distributed.Client``.
        n_workers: how many worker loops will be submitted.
        config: options of a named executor; for Dask (a name or a client) also
            ``worker_timeout`` (seconds to wait for a worker: a first one, and a new one once
            all have left, see :class:`~orchard.executors.fleet.Fleet`; default 300, ``None``
            waits forever) and ``resources`` (what each worker loop needs, e.g. ``{"GPU": 1}``).

    Raises:
        ConfigurationError: unknown name, bad ``n_workers`` (for a local executor, more workers
            than this machine holds: :mod:`orchard.executors.capacity`), or a missing optional dependency.
    """
    check_n_workers(n_workers)
    check_executor_config(executor, config)
    if isinstance(executor, str):
        check_capacity(counted_as(executor, config or {}), n_workers)
    if is_dask_client(executor):
        return _translated(_borrowed(_dask_executor(executor, config or {})), "dask client")
    if isinstance(executor, Executor):
        return _translated(_borrowed(executor), type(executor).__name__)
    factory = EXECUTORS.get(executor) if isinstance(executor, str) else None
    if factory is None:
        raise ConfigurationError(
            f"unknown executor {executor!r}; valid executors: {', '.join(EXECUTORS)}, "
            "or a concurrent.futures.Executor or dask.distributed.Client instance"
        )
    return _translated(factory(n_workers, config or {}), executor)


def check_executor_config(executor: str | Executor | Any, config: Mapping[str, Any] | None) -> None:
    """Refuse options that no executor would use: ``thread`` and ``single`` dropped them without a word.

    Raises:
        ConfigurationError: ``config`` is not empty and ``executor`` is ``thread``, ``single`` or an
            executor instance other than a Dask client.
    """
    if not config:
        return
    given = ", ".join(map(str, config))
    if executor in ("thread", "single"):
        raise ConfigurationError(
            f"executor {executor!r} takes no executor_config (given: {given}); drop it, or name an executor "
            "that takes options: joblib, process or dask")
    if isinstance(executor, Executor) and not is_dask_client(executor):
        raise ConfigurationError(
            f"executor_config (given: {given}) is not used with an executor of your own "
            f"({type(executor).__name__}): configure that executor itself and drop executor_config")


def is_dask_client(executor: object) -> bool:
    """Whether ``executor`` is a ``dask.distributed.Client`` (checked without importing Dask)."""
    return type(executor).__module__.startswith("distributed.") and hasattr(executor, "get_executor")


def shares_environment(executor: str | Executor | Any, config: Mapping[str, Any] | None = None) -> bool:
    """Whether the executor runs worker loops as threads of one process (one shared ``os.environ``)."""
    in_process_dask = executor == "dask" and (config or {}).get("processes") is False
    return executor == "thread" or in_process_dask or isinstance(executor, ThreadPoolExecutor)


def reaches_local_processes(executor: str | Executor | Any) -> bool:
    """Whether the executor runs worker loops in this thread or in child processes of this process.

    Those are the loops an interruption of this process can stop (:mod:`orchard.interruption`);
    threads cannot be interrupted, and Dask or MPI workers may run anywhere.
    """
    if isinstance(executor, str):
        return executor in ("joblib", "loky", "process", "single")
    module = type(executor).__module__
    return isinstance(executor, (ProcessPoolExecutor, InlineExecutor)) or module.startswith(
        ("joblib.externals.loky", "loky."))


def outlasts_workon(executor: str | Executor | Any, config: Mapping[str, Any] | None = None) -> bool:
    """Whether the executor's workers may run on once ``workon`` has closed it.

    A Dask cluster Orchard did not start (a scheduler ``address`` or ``scheduler_file``, a client of the
    caller's own) and any executor of the caller's own (left open) do; a pool or a ``LocalCluster``
    Orchard started ends with its workers.
    """
    if isinstance(executor, str):
        return executor == "dask" and any(key in (config or {}) for key in ("address", "scheduler_file"))
    return True


@contextlib.contextmanager
def _borrowed(executor: Executor) -> Iterator[Executor]:
    """Use an executor the caller owns without shutting it down."""
    yield executor


@contextlib.contextmanager
def _translated(manager: contextlib.AbstractContextManager[Executor], name: str) -> Iterator[Executor]:
    try:
        with manager as executor:
            yield executor
    except OrchardError:
        raise
    except (OSError, RuntimeError) as err:
        raise ExecutorError(f"executor {name!r} failed: {_described(err)}") from err
    except Exception as err:
        cause = err.__context__  # loky raises an UnboundLocalError over its failed os.pipe
        if cause is not None and _out_of_files(cause):
            raise ExecutorError(f"executor {name!r} failed: {_described(cause)}") from err
        raise


def _out_of_files(err: BaseException | None) -> bool:
    return isinstance(err, OSError) and err.errno in OUT_OF_FILES


def _described(err: BaseException) -> str:
    """``err`` for a message; one of running out of open files says which limit and what to do."""
    said = f"{type(err).__name__}: {err}"
    if _out_of_files(err):
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        said += (f"; this process may have {soft} files open (ulimit -n) and each worker takes a few: "
                 "raise the limit (ulimit -n 4096) or run fewer workers")
    return said
