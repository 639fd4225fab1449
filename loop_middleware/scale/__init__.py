"""Running the analysis past one process and one machine.

The stages split their work into idempotent units over ranges of thread ids
(``loop_middleware.extract._units``); an :class:`Executor` runs them:

- :class:`InlineExecutor`: in this process, one after the other (the default);
- :class:`ProcessExecutor`: a local pool of ``spawn``-ed worker processes (``workers=N``), safe
  beside torch and inside ``langgraph dev``; each worker opens its own store from the URL;
- :class:`RayExecutor`: the same units as Ray tasks (``pip install 'loop-middleware[ray]'``),
  on a local Ray or a cluster (``address="ray://head:10001"``), with PostgreSQL as the store
  every worker can reach.
"""

from ._executors import Executor, InlineExecutor, ProcessExecutor, RayExecutor, executor_for

__all__ = ["Executor", "InlineExecutor", "ProcessExecutor", "RayExecutor", "executor_for"]
