"""Stages 1 and 2: instrument every agent turn and capture whole threads."""

from ._handler import LoopCallbackHandler
from ._middleware import LoopMiddleware
from ._recorder import Recorder
from ._writer import BackgroundWriter, WriterStats

__all__ = ["BackgroundWriter", "LoopCallbackHandler", "LoopMiddleware", "Recorder", "WriterStats"]
