"""Stages 1 and 2: instrument every agent turn and capture whole threads."""

from ._handler import LoopCallbackHandler
from ._import import ImportReport, import_transcripts
from ._ingest import IngestReport, ingest_otlp, parse_otlp
from ._middleware import LoopMiddleware
from ._recorder import Recorder
from ._writer import BackgroundWriter, WriterStats

__all__ = [
    "BackgroundWriter",
    "ImportReport",
    "IngestReport",
    "LoopCallbackHandler",
    "LoopMiddleware",
    "Recorder",
    "WriterStats",
    "import_transcripts",
    "ingest_otlp",
    "parse_otlp",
]
