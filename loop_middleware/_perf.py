"""Small speed helpers shared by the stages (private)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["gc_paused"]

_lock = threading.Lock()
_depth = 0
_we_disabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector for a bulk build of acyclic objects.

    Loading a few hundred threads builds hundreds of thousands of small pydantic models; every
    700 allocations the collector scans the young objects, and the long-lived heap now and then,
    which doubles the cost of the load (measured: 5.0 s vs 2.4 s for 10,000 threads). What we
    build holds no reference cycles, so reference counting frees all of it and nothing is lost
    by pausing; the collector resumes when the outermost pause ends (nested and concurrent
    pauses are counted), and a collector the application had switched off stays off.
    """
    global _depth, _we_disabled
    with _lock:
        if _depth == 0 and gc.isenabled():
            gc.disable()
            _we_disabled = True
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _we_disabled:
                _we_disabled = False
                gc.enable()
