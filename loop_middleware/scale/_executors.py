"""Executors: run a function over work units here, in a local process pool, or on Ray.

Every executor returns the results in the order of the units, whatever order they finished in,
so a stage's results do not depend on where or how its units ran. Units are idempotent (see
``loop_middleware.extract._units``), which is what makes retrying one safe: a worker that dies
half way through a unit (killed, out of memory, a lost node) only costs that unit, run again.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, TypeVar, runtime_checkable

from ..errors import ConfigError

__all__ = ["Executor", "InlineExecutor", "ProcessExecutor", "RayExecutor", "executor_for"]

logger = logging.getLogger("loop_middleware.scale")

T = TypeVar("T")
R = TypeVar("R")
OnResult = Callable[[int, Any], None]
"""``on_result(index, result)``: called in the driver as each unit finishes (progress)."""


@runtime_checkable
class Executor(Protocol):
    """Runs ``fn(unit)`` for every unit and returns the results in unit order."""

    name: str
    parallel: bool
    """True when units run in other processes (``fn`` and the units must pickle)."""

    def map(self, fn: Callable[[T], R], units: Sequence[T], *,
            on_result: OnResult | None = None) -> list[R]:
        """``[fn(u) for u in units]``, possibly in parallel; raises the first unit's error."""
        ...

    def close(self) -> None:
        """Release workers (the executor may be reused until then)."""
        ...


class InlineExecutor:
    """Runs every unit in this process, one after the other."""

    name = "inline"
    parallel = False

    def map(self, fn: Callable[[T], R], units: Sequence[T], *,
            on_result: OnResult | None = None) -> list[R]:
        out = []
        for i, unit in enumerate(units):
            out.append(fn(unit))
            if on_result:
                on_result(i, out[-1])
        return out

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return "InlineExecutor()"


def _init_worker(threads: int) -> None:
    """A worker shares the machine with its siblings: one native thread pool each of
    ``threads`` threads, not one per core per worker (which oversubscribes the cores)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    if "torch" in sys.modules:  # pragma: no cover - only when the parent's import leaked in
        sys.modules["torch"].set_num_threads(threads)


class ProcessExecutor:
    """A local pool of worker processes started with ``spawn``.

    ``spawn`` (never ``fork``): a forked child inherits the parent's threads' locks (torch's,
    the capture writer's, an event loop's) in whatever state they were, which deadlocks; a
    spawned one starts clean, which is also what ``langgraph dev`` and macOS require. The price
    is a fresh interpreter per worker (about a second, paid once per executor).

    Args:
        workers: Worker processes (default: the cores).
        retries: Times a unit is run again after its worker died (the pool is rebuilt).
        threads_per_worker: Native threads (BLAS, torch) each worker may use; default
            ``cores // workers``, at least 1.
    """

    name = "processes"
    parallel = True

    def __init__(self, workers: int | None = None, *, retries: int = 2,
                 threads_per_worker: int | None = None) -> None:
        cores = os.cpu_count() or 1
        self.workers = int(workers or cores)
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers!r}")
        self.retries = retries
        self.threads_per_worker = threads_per_worker or max(1, cores // self.workers)
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(self.threads_per_worker,))
        return self._pool

    def map(self, fn: Callable[[T], R], units: Sequence[T], *,
            on_result: OnResult | None = None) -> list[R]:
        results: dict[int, R] = {}
        todo = list(range(len(units)))
        attempt = 0
        while todo:
            pool = self._get_pool()
            futures: dict[Future[R], int] = {pool.submit(fn, units[i]): i for i in todo}
            broken: BrokenProcessPool | None = None
            from concurrent.futures import as_completed

            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    results[i] = fut.result()
                except BrokenProcessPool as exc:
                    broken = exc
                    continue
                if on_result:
                    on_result(i, results[i])
            todo = [i for i in todo if i not in results]
            if not todo:
                break
            # A worker died (killed, out of memory): every unit that had not finished runs
            # again in a new pool. Units are idempotent, so a half-done one is simply redone.
            attempt += 1
            self._discard_pool()
            if attempt > self.retries:
                raise RuntimeError(f"{len(todo)} work units failed: worker processes kept dying "
                                   f"({broken})") from broken
            logger.warning("loop-middleware: a worker process died; retrying %d units (attempt %d)",
                           len(todo), attempt)
        return [results[i] for i in range(len(units))]

    def _discard_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ProcessExecutor(workers={self.workers})"


class RayExecutor:
    """The units as Ray tasks, on a local Ray or a cluster (``pip install 'loop-middleware[ray]'``).

    Args:
        address: ``None`` starts (or joins) a local Ray; ``"auto"`` joins the cluster this
            machine belongs to; ``"ray://head:10001"`` connects a Ray client to a remote one.
            Ignored when Ray is already initialised in this process.
        num_cpus: Cores of a local Ray started here (default: all).
        max_retries: Times Ray reruns a task whose worker or node died (units are idempotent).
        runtime_env: Passed to ``ray.init`` (e.g. ``{"pip": ["loop-middleware[postgres]"]}`` when
            the cluster's image lacks the package).
        **init_kwargs: Any other ``ray.init`` argument.

    Workers open the store from its URL, so on a cluster it must be a database every node
    reaches (PostgreSQL); a SQLite file only works when every worker sees the same file.
    """

    name = "ray"
    parallel = True

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 max_retries: int = 3, runtime_env: dict[str, Any] | None = None,
                 **init_kwargs: Any) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("the Ray executor needs Ray: pip install 'loop-middleware[ray]'") from None
        self.address = address
        self.max_retries = max_retries
        self._init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      **init_kwargs}
        if num_cpus is not None:
            self._init["num_cpus"] = num_cpus
        if runtime_env is not None:
            self._init["runtime_env"] = runtime_env
        self._remote: dict[Any, Any] = {}

    def _ensure(self) -> Any:
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, **self._init)
        return ray

    def map(self, fn: Callable[[T], R], units: Sequence[T], *,
            on_result: OnResult | None = None) -> list[R]:
        ray = self._ensure()
        remote = self._remote.get(fn)
        if remote is None:
            # One CPU per task; Ray then also caps each worker's OpenMP threads at 1.
            remote = self._remote[fn] = ray.remote(num_cpus=1, max_retries=self.max_retries)(fn)
        refs = [remote.remote(u) for u in units]
        index = {ref: i for i, ref in enumerate(refs)}
        results: dict[int, R] = {}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                i = index[ref]
                try:
                    results[i] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
                    for other in pending:
                        ray.cancel(other)
                    raise cause from exc
                if on_result:
                    on_result(i, results[i])
        return [results[i] for i in range(len(units))]

    def close(self) -> None:
        """Ray itself stays up (starting it costs seconds); ``ray.shutdown()`` stops it."""
        self._remote.clear()

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r})"


def executor_for(workers: int | None = None,
                 executor: Executor | str | None = None) -> tuple[Executor, bool]:
    """The executor for ``extract(..., workers=, executor=)`` and whether the caller owns it
    (and closes it when done): an :class:`Executor` as given; ``"ray"`` a :class:`RayExecutor`;
    else ``workers`` > 1 a :class:`ProcessExecutor`, otherwise :class:`InlineExecutor`."""
    if executor is not None and not isinstance(executor, str):
        if not isinstance(executor, Executor):
            raise ConfigError(f"executor must be an Executor or 'ray', got {type(executor).__name__}")
        return executor, False
    if executor == "ray":
        return RayExecutor(num_cpus=workers), True
    if executor not in (None, "processes", "inline"):
        raise ConfigError(f"unknown executor {executor!r} (an Executor, 'ray', 'processes' or 'inline')")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers!r}")
    if executor == "processes" or (executor is None and workers is not None and workers > 1):
        return ProcessExecutor(workers), True
    return InlineExecutor(), True
