"""Storage of captured threads and of the loop's results (SQLModel; SQLite or PostgreSQL)."""

from ._store import DEFAULT_URL, Store

__all__ = ["DEFAULT_URL", "Store"]
