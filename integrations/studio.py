"""Entry point of the LangGraph Studio project (``langgraph dev --config integrations/langgraph.json``).

The server loads this file by path, so it only re-exports the compiled improvement graph. Point it
at your data and repository with ``LOOP_DATABASE_URL``, ``LOOP_REPO_DIR`` and the other
``LOOP_*`` variables of :class:`loop_middleware.config.LoopConfig`.
"""

from loop_middleware.graph import graph

__all__ = ["graph"]
