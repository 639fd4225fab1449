"""The exceptions loop-middleware raises, as one small tree.

::

    LoopError
    ├── ConfigError          bad settings or arguments (a clear message says which)
    ├── StoreError           the database cannot be reached or written
    ├── IngestError          a malformed trace record (names the record and field)
    ├── ExtractionError      signals or intents could not be computed
    ├── LLMError             a configured LLM failed (the offline path is used instead)
    └── PatchError           a fix could not be made or shipped
        ├── PathNotAllowedError     a patch tried to touch a file outside the allowed globs
        ├── ContractViolationError  a patch would drop template variables or required sections
        └── GitHubError             GitHub refused a request; the local branch/patch is kept

Capture never raises any of these into the host agent: errors inside the callback handler and
the middleware are counted and logged instead.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ContractViolationError",
    "ExtractionError",
    "GitHubError",
    "IngestError",
    "LLMError",
    "LoopError",
    "PatchError",
    "PathNotAllowedError",
    "StoreError",
]


class LoopError(Exception):
    """Base class of every error loop-middleware raises."""


class ConfigError(LoopError):
    """Invalid configuration or arguments."""


class StoreError(LoopError):
    """The store (database) could not be reached, read or written.

    ``transient`` is True when retrying later may succeed (connection refused, locked, disk
    full) and False when the database refused the data itself.
    """

    def __init__(self, message: str, *, transient: bool = True):
        self.transient = transient
        super().__init__(message)


class IngestError(LoopError):
    """A trace record could not be ingested.

    Attributes:
        record: Where the bad record is (file and index, or span id).
        field: The offending field, when known.
    """

    def __init__(self, message: str, *, record: str | None = None, field: str | None = None):
        self.record = record
        self.field = field
        where = ", ".join(
            p for p in (f"record {record}" if record else "", f"field {field!r}" if field else "") if p
        )
        super().__init__(f"{message} ({where})" if where else message)


class ExtractionError(LoopError):
    """Signals or intents could not be extracted."""


class LLMError(LoopError):
    """A configured LLM failed to answer in the expected shape."""


class PatchError(LoopError):
    """A fix could not be prepared, committed or shipped."""


class PathNotAllowedError(PatchError):
    """A patch targeted a file outside the host's allowed globs."""


class ContractViolationError(PatchError):
    """A patch would break the prompt's contract (template variables, required sections)."""


class GitHubError(PatchError):
    """GitHub refused a request. ``status`` is the HTTP status; the local branch is kept."""

    def __init__(self, message: str, *, status: int | None = None):
        self.status = status
        super().__init__(message)
