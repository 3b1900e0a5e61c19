"""Run independent tasks in-process, on a local dask cluster, or on an existing dask scheduler.

The one executor of every stage that fans out (tile, predict), so ``--workers`` and ``--scheduler``
mean the same everywhere: ``workers <= 1`` (and no scheduler) runs in-process, no dask;
``workers = N > 1`` starts a local ``dask.distributed`` cluster of N single-thread workers;
``scheduler = ADDRESS`` sends the tasks to an existing cluster (``workers`` is then ignored).
``local="threads"`` runs ``workers = N > 1`` local tasks on a plain thread pool instead of a dask
cluster (no start-up, no pickling, tasks share the caller's objects: for tasks that spend their time
in GIL-releasing code); ``local="fork"`` on a pool of N forked processes (POSIX; start-up in
milliseconds, tasks and results pickled, no GIL shared; the fork happens when the executor is
entered, so enter it before starting other threads that hold locks, e.g. zarr's I/O loop).

Results are yielded as they complete (``(key, result)`` pairs); callers that need determinism sort
by key. Tasks must be module-level functions taking one picklable argument, so the same code
runs in-process, in worker processes and on remote workers (which need geoseg installed and the
input/output paths visible, e.g. on a shared file system).

Failure modes, each one line: an unreachable scheduler is a :class:`~geoseg.errors.ConfigError`
after :data:`SCHEDULER_TIMEOUT_S`; a cluster left without any worker for :data:`NO_WORKERS_TIMEOUT_S`
(all workers killed or gone) is a :class:`~geoseg.errors.ClusterError` instead of a silent wait.
A worker lost while others remain changes nothing (dask reruns its tasks).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from geoseg.errors import ClusterError, ConfigError, GeosegError, first_line

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)

#: seconds to connect to ``--scheduler`` before a one-line error (dask's own default is 30 s, then a traceback)
SCHEDULER_TIMEOUT_S = 10.0
#: seconds a cluster may have no worker at all while tasks are pending before the run stops with a one-line
#: error; the environment variable ``GEOSEG_NO_WORKERS_TIMEOUT`` overrides it (read when a map starts)
NO_WORKERS_TIMEOUT_S = 30.0
#: how often (seconds) the worker count is polled while tasks are pending
POLL_S = 1.0

_DASK_LOGGERS = ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.worker", "distributed.core")


def is_distributed(workers: int, scheduler: str | None) -> bool:
    """Whether :class:`Executor` ``(workers, scheduler)`` uses dask (else it runs in-process)."""
    return scheduler is not None or int(workers) > 1


def _mp_methods() -> list[str]:
    import multiprocessing

    return multiprocessing.get_all_start_methods()


def no_workers_timeout() -> float:
    """:data:`NO_WORKERS_TIMEOUT_S`, or ``GEOSEG_NO_WORKERS_TIMEOUT`` (seconds) when set."""
    env = os.environ.get("GEOSEG_NO_WORKERS_TIMEOUT")
    if env is None:
        return NO_WORKERS_TIMEOUT_S
    try:
        return max(0.0, float(env))
    except ValueError:
        raise ConfigError(f"GEOSEG_NO_WORKERS_TIMEOUT={env!r}: give seconds, e.g. 30") from None


class Executor:
    """``with Executor(workers, scheduler) as ex: for key, res in ex.map(fn, items): ...``

    ``workers <= 1`` and no scheduler: in-process (``ex.distributed`` is False). ``workers = N > 1``:
    ``LocalCluster`` with N workers of one thread each (processes, or threads with ``processes=False``).
    ``scheduler``: ``Client(address)`` on an existing cluster. ``what`` names the tasks in errors;
    ``resumable`` adds "rerun with --resume" to the no-worker error.
    """

    def __init__(
        self,
        workers: int = 1,
        scheduler: str | None = None,
        *,
        processes: bool = True,
        what: str = "task",
        resumable: bool = False,
        local: str | None = None,
    ) -> None:
        self.workers = max(1, int(workers))
        self.scheduler = scheduler
        self.processes = processes
        use = local if scheduler is None and not processes and self.workers > 1 else None
        if use == "fork" and "fork" not in _mp_methods():
            use = "threads"  # (Windows) no fork: threads
        self.local = use
        self._pool: Any = None
        self.what = what
        self.resumable = resumable
        self.client: Any = None
        self._cluster: Any = None
        self._config: Any = None

    @property
    def distributed(self) -> bool:
        """Whether tasks go through dask (a local pool is not)."""
        return self.client is not None

    @property
    def parallel(self) -> bool:
        """Whether tasks may run concurrently (dask or a local pool)."""
        return self.client is not None or self._pool is not None

    @property
    def n_workers(self) -> int:
        """Workers connected now (1 in-process)."""
        if self.client is None:
            return self.workers if self._pool is not None else 1
        return len(self.client.scheduler_info()["workers"])

    def __enter__(self) -> Executor:
        if not is_distributed(self.workers, self.scheduler):
            return self
        if self.local == "threads":
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="geoseg-worker")
            return self
        if self.local == "fork":
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"))
            self._pool.submit(int).result()  # fork the workers now, not at the first task
            return self
        from dask.distributed import Client, LocalCluster

        verbose = logging.getLogger().isEnabledFor(logging.DEBUG)  # -v: dask's INFO lines too
        for name in _DASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
        if self.scheduler is not None:
            try:
                self.client = Client(self.scheduler, timeout=f"{SCHEDULER_TIMEOUT_S}s", set_as_default=False)
            except (OSError, TimeoutError, ValueError) as e:
                raise ConfigError(f"--scheduler {self.scheduler}: cannot connect ({first_line(e, 160)})") from None
            return self
        import dask

        # dask sets MALLOC_TRIM_THRESHOLD_=65536 in workers, which turns off glibc's dynamic mmap
        # threshold: every large array is then a fresh mmap + page faults (measured: ~3x the CPU
        # for tile's extract step). Workers here keep the glibc default.
        env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
        env.pop("MALLOC_TRIM_THRESHOLD_", None)
        self._config = dask.config.set({"distributed.nanny.pre-spawn-environ": env})
        try:
            self._cluster = LocalCluster(
                n_workers=self.workers,
                threads_per_worker=1,
                processes=self.processes,
                dashboard_address=None,
                silence_logs=logging.INFO if verbose else logging.ERROR,
                memory_limit=0,
            )
            self.client = Client(self._cluster, set_as_default=False)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self.client is not None:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()
        if self._config is not None:
            self._config.__exit__(None, None, None)
        self.client = self._cluster = self._config = None

    @property
    def _where(self) -> str:
        if self.scheduler is not None:
            return f"--scheduler {self.scheduler}"
        addr = getattr(self._cluster, "scheduler_address", "?")
        return f"the local dask cluster ({addr})"

    def map(self, fn: Callable[[T], R], items: Iterable[tuple[Any, T]]) -> Iterator[tuple[Any, R]]:
        """Yield ``(key, fn(item))`` for ``(key, item)`` pairs, in completion order.

        A :class:`GeosegError` raised in a task is re-raised here unchanged; any other is a
        ``RuntimeError`` naming ``what``. No worker for :func:`no_workers_timeout` seconds while tasks
        are pending: :class:`ClusterError` (the pending tasks are cancelled).
        """
        pairs = list(items)
        if self._pool is not None:
            yield from self._map_pool(fn, pairs)
            return
        if not self.distributed:
            for key, item in pairs:
                yield key, fn(item)
            return
        from dask.distributed import as_completed

        limit = no_workers_timeout()  # (here, not in the watchdog thread: a bad value is a one-line error)
        keys = {}
        futures = []
        for key, item in pairs:
            fut = self.client.submit(fn, item, pure=False)
            keys[fut.key] = key
            futures.append(fut)
        stop = threading.Event()
        gone: list[float] = []  # set by the watchdog (seconds without a worker) before it cancels the futures
        watchdog = threading.Thread(target=self._watch, args=(futures, limit, stop, gone), daemon=True)
        watchdog.start()
        try:
            with self.client.as_current():
                done = as_completed(futures)
            for fut in done:
                if gone:
                    raise ClusterError(
                        f"{self._where}: no dask worker left for {limit:g} s with {self.what}s pending; "
                        f"restart the workers, then rerun{' with --resume' if self.resumable else ''}"
                    )
                if fut.status == "error":
                    exc = fut.exception()
                    if isinstance(exc, GeosegError):
                        raise exc
                    raise RuntimeError(f"{self.what} failed: {exc!r}") from exc
                yield keys[fut.key], fut.result()
                fut.release()
        finally:
            stop.set()
            for fut in futures:
                fut.cancel()

    def _map_pool(self, fn: Callable[[T], R], pairs: list[tuple[Any, T]]) -> Iterator[tuple[Any, R]]:
        """:meth:`map` on the local pool: at most ``2 x workers`` tasks in flight (bounded memory)."""
        from concurrent.futures import FIRST_COMPLETED, Future, wait

        todo = iter(pairs)
        running: dict[Future[R], Any] = {}
        try:
            while True:
                while len(running) < 2 * self.workers:
                    nxt = next(todo, None)
                    if nxt is None:
                        break
                    running[self._pool.submit(fn, nxt[1])] = nxt[0]
                if not running:
                    return
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    key = running.pop(fut)
                    exc = fut.exception()
                    if exc is not None:
                        if isinstance(exc, GeosegError):
                            raise exc
                        raise RuntimeError(f"{self.what} failed: {exc!r}") from exc
                    yield key, fut.result()
        finally:
            for fut in running:
                fut.cancel()
            wait(running)

    def _watch(self, futures: list[Any], limit: float, stop: threading.Event, gone: list[float]) -> None:
        """Poll the worker count; after ``limit`` s with none, record it in ``gone`` and cancel ``futures``
        (which ends :meth:`map`'s wait). A failing poll (scheduler unreachable) counts as no worker."""
        since: float | None = None
        while not stop.wait(POLL_S):
            try:
                n = len(self.client.scheduler_info()["workers"])
            except Exception:  # the scheduler itself is gone or busy: that is no worker either
                n = 0
            if n:
                since = None
                continue
            now = time.monotonic()
            since = now if since is None else since
            if now - since >= limit:
                log.debug("%s: no worker for %.1f s; cancelling the pending tasks", self._where, now - since)
                gone.append(now - since)
                try:
                    self.client.cancel(futures)
                except Exception as e:  # (the scheduler is gone too: map's wait ends with the connection)
                    log.debug("cancelling on %s failed: %s", self._where, first_line(e))
                return
