"""Run independent tasks serially, on a local dask cluster, or on an existing dask scheduler.

Results are yielded as they complete (``(key, result)`` pairs); callers that need determinism sort
by key. Tasks must be module-level functions taking one picklable argument, so the same code
runs in-process, in worker processes and on remote workers (which need geoseg installed and the
input/output paths visible, e.g. on a shared file system).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from geoseg.errors import ConfigError, GeosegError

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)


class Executor:
    """``workers <= 1`` and no scheduler: in-process. ``workers = N``: ``LocalCluster`` with N
    workers of one thread each (processes, or threads with ``processes=False``).
    ``scheduler``: ``Client(address)`` on an existing cluster (``workers`` is then ignored).
    """

    def __init__(self, workers: int = 1, scheduler: str | None = None, *, processes: bool = True) -> None:
        self.workers = max(1, int(workers))
        self.scheduler = scheduler
        self.processes = processes
        self.client: Any = None
        self._cluster: Any = None
        self._config: Any = None

    @property
    def distributed(self) -> bool:
        return self.client is not None

    def __enter__(self) -> Executor:
        if self.scheduler is None and self.workers <= 1:
            return self
        from dask.distributed import Client, LocalCluster

        if self.scheduler is not None:
            try:
                self.client = Client(self.scheduler, timeout="20s", set_as_default=False)
            except (OSError, TimeoutError, ValueError) as e:
                raise ConfigError(f"--scheduler {self.scheduler}: cannot connect ({e})") from None
        else:
            import dask

            # dask sets MALLOC_TRIM_THRESHOLD_=65536 in workers, which turns off glibc's dynamic mmap
            # threshold: every large array is then a fresh mmap + page faults (measured: ~3x the CPU
            # for the extract step). Workers here keep the glibc default.
            env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
            env.pop("MALLOC_TRIM_THRESHOLD_", None)
            self._config = dask.config.set({"distributed.nanny.pre-spawn-environ": env})
            self._cluster = LocalCluster(
                n_workers=self.workers,
                threads_per_worker=1,
                processes=self.processes,
                dashboard_address=None,
                silence_logs=logging.ERROR,
                memory_limit=0,
            )
            self.client = Client(self._cluster, set_as_default=False)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.client is not None:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()
        if self._config is not None:
            self._config.__exit__(None, None, None)
        self.client = self._cluster = self._config = None

    def map(self, fn: Callable[[T], R], items: Iterable[tuple[Any, T]]) -> Iterator[tuple[Any, R]]:
        """Yield ``(key, fn(item))`` for ``(key, item)`` pairs, in completion order.

        A :class:`GeosegError` raised in a task is re-raised here unchanged.
        """
        pairs = list(items)
        if not self.distributed:
            for key, item in pairs:
                yield key, fn(item)
            return
        from dask.distributed import as_completed

        keys = {}
        futures = []
        for key, item in pairs:
            fut = self.client.submit(fn, item, pure=False)
            keys[fut.key] = key
            futures.append(fut)
        try:
            with self.client.as_current():
                done = as_completed(futures)
            for fut in done:
                if fut.status == "error":
                    exc = fut.exception()
                    if isinstance(exc, GeosegError):
                        raise exc
                    raise RuntimeError(f"tile task failed: {exc!r}") from exc
                yield keys[fut.key], fut.result()
                fut.release()
        finally:
            for fut in futures:
                fut.cancel()
