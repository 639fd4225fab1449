"""Storage of captured threads and of the loop's results (SQLModel; SQLite or PostgreSQL)."""

from ._aggregates import SessionCount, SignalCount
from ._store import DEFAULT_URL, Store

__all__ = ["DEFAULT_URL", "SessionCount", "SignalCount", "Store"]
