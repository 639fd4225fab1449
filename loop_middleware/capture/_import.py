"""Import conversation history (transcripts, LangSmith or Langfuse exports) into Threads.

``import_transcripts(store, "history.jsonl")`` reads JSON or JSON Lines files (or records
already in memory) in three formats, detected per file unless ``format`` says which:

* ``openai``: OpenAI-style message lists, one conversation per record (:mod:`._import_openai`);
* ``langsmith``: LangSmith run exports (:mod:`._import_langsmith`);
* ``langfuse``: Langfuse traces, observations and scores (:mod:`._import_langfuse`).

Every format goes through the live-capture turn rule (:func:`._import_model.conversation_rows`),
prompt versions are matched against the registry, private data is redacted as capture does,
and rows are upserted by ids derived from the export's own ids (or a hash of the content), so
importing the same file twice changes nothing. A bad record is skipped with a message naming it
and the field; an unreadable file stops the import before anything is written; a store that
fails mid-way raises after the conversations written so far (each complete) and says so.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, IngestError, StoreError
from ..privacy import Redactor
from ..prompts import PromptRegistry
from ..store import Store
from . import _import_langfuse as langfuse
from . import _import_langsmith as langsmith
from . import _import_openai as openai
from ._import_model import Conversation, ImportContext, conversation_rows
from ._import_read import RECORD_ERRORS, note, say
from ._writer import Row

__all__ = ["FORMATS", "ImportFormat", "ImportReport", "import_transcripts"]

logger = logging.getLogger("loop_middleware.import")

ImportFormat = Literal["auto", "openai", "langsmith", "langfuse"]
FORMATS: tuple[str, ...] = ("openai", "langsmith", "langfuse")
_NAMES = {"openai": "OpenAI-style message lists", "langsmith": "LangSmith runs",
          "langfuse": "Langfuse traces/observations/scores"}
_LOOKS: dict[str, Callable[[Any], bool]] = {
    "openai": openai.looks_like, "langsmith": langsmith.looks_like, "langfuse": langfuse.looks_like}
# Keys under which an export wraps its records: an API page ({"data": [...]}) or a dump.
_WRAPPERS = ("data", "runs", "traces", "observations", "scores", "feedback", "conversations",
             "records", "items")
_CHUNK = 100  # conversations per transaction
DEFAULT_MAX_MESSAGE_CHARS = 2_000_000

Progress = Callable[[str, int, int], None]


@dataclass
class ImportReport:
    """What an import did."""

    files: dict[str, str] = field(default_factory=dict)
    """Each input (file, or ``<records>``) and the format it was read as."""
    records: int = 0
    """Records read (conversations, runs, traces, observations, scores...)."""
    threads: int = 0
    turns: int = 0
    llm_calls: int = 0
    tool_calls: int = 0
    feedback: int = 0
    duplicates: int = 0
    """Records that repeat a conversation already in this import (stored once)."""
    skipped: list[str] = field(default_factory=list)
    """One clear message per record not imported (where, which field, why)."""
    warnings: list[str] = field(default_factory=list)
    """Imported, but something was off (a tool call without a result, ...)."""

    def __str__(self) -> str:
        s = (f"{self.records} records -> {self.threads} threads, {self.turns} turns, "
             f"{self.llm_calls} LLM calls, {self.tool_calls} tool calls, {self.feedback} feedback")
        extra = [f"{len(self.skipped)} records skipped" if self.skipped else "",
                 f"{self.duplicates} duplicates" if self.duplicates else "",
                 f"{len(self.warnings)} warnings" if self.warnings else ""]
        return s + "".join(f"; {e}" for e in extra if e)


# --- reading ---------------------------------------------------------------------------------


def _unwrap(doc: Any, where: str) -> list[tuple[str, Any]]:
    """The records of one decoded JSON value."""
    if isinstance(doc, list):
        if doc and all(openai.message_like(m) for m in doc):
            return [(where, doc)]  # a JSON file holding one conversation
        return [(f"{where}[{i}]", r) for i, r in enumerate(doc)]
    if isinstance(doc, Mapping) and not any(look(doc) for look in _LOOKS.values()):
        lists = [(k, doc[k]) for k in _WRAPPERS if isinstance(doc.get(k), list)]
        if lists:
            return [(f"{where} {k}[{i}]", r) for k, items in lists for i, r in enumerate(items)]
    return [(where, doc)]


def _decode(data: bytes, name: str, skipped: list[str]) -> list[tuple[str, Any]]:
    """Records of a JSON document or of JSON Lines; bad lines are named in ``skipped``.

    Raises:
        IngestError: Nothing in the file could be read (empty, not JSON, not UTF-8).
    """
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            data = data.decode("utf-16").encode("utf-8", "surrogatepass")
        except UnicodeError as exc:
            raise IngestError(f"not valid UTF-16 ({exc})", record=name) from None
    elif data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    if not data.strip():
        raise IngestError("empty file: nothing to import", record=name)
    text: str | None
    bad: UnicodeDecodeError | None = None
    whole: json.JSONDecodeError | None = None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        text, bad = None, exc
    if text is not None:
        try:
            return _unwrap(json.loads(text), name)
        except json.JSONDecodeError as exc:
            whole = exc  # perhaps JSON Lines
        except RecursionError:
            raise IngestError("JSON nested too deeply to read", record=name) from None
    records: list[tuple[str, Any]] = []
    notes: list[str] = []
    structured = False
    for n, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name}:{n}"
        try:
            doc = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            notes.append(note(f"not valid UTF-8 (byte {exc.start + 1} of the line)", where) + "; line skipped")
            continue
        except (ValueError, RecursionError) as exc:
            notes.append(note(f"not valid JSON ({exc})", where) + "; line skipped")
            continue
        structured = structured or isinstance(doc, (list, dict))
        records.extend(_unwrap(doc, where))
    if not structured:  # not JSON Lines either: say what is wrong with the document
        if bad is not None:
            line_no = data.count(b"\n", 0, bad.start) + 1
            col = bad.start - (data.rfind(b"\n", 0, bad.start) + 1) + 1
            raise IngestError(f"not valid UTF-8 at line {line_no}, column {col} (byte offset "
                              f"{bad.start}); convert the file to UTF-8", record=name)
        assert whole is not None
        raise IngestError(f"not valid JSON or JSON Lines: {whole.msg} at line {whole.lineno}, "
                          f"column {whole.colno}", record=name)
    skipped.extend(notes)
    return records


def _detect(records: list[tuple[str, Any]], name: str) -> str:
    """The one format the file's records are in.

    Raises:
        IngestError: No record is in a known format, or records look like different formats.
    """
    seen: dict[str, list[str]] = {f: [] for f in FORMATS}
    both: list[tuple[str, list[str]]] = []
    for where, rec in records:
        hits = [f for f in FORMATS if _LOOKS[f](rec)]
        if len(hits) == 1:
            seen[hits[0]].append(where)
        elif hits:
            both.append((where, hits))
    found = [f for f in FORMATS if seen[f]]
    if len(found) == 1 and all(found[0] in h for _, h in both):
        return found[0]
    if not found and not both:
        first = records[0][1] if records else None
        shape = (f"an object with keys {', '.join(sorted(map(str, first))[:8])}"
                 if isinstance(first, Mapping) else f"a {type(first).__name__}")
        raise IngestError(
            "no record is an OpenAI-style conversation (a list of messages, or an object with "
            "'messages'), a LangSmith run ('run_type') or a Langfuse trace/observation/score "
            f"(the first is {shape})", record=name)
    parts = [f"{len(seen[f])} look like {_NAMES[f]} (first: {seen[f][0]})" for f in found]
    parts += [f"{where} looks like {' and '.join(_NAMES[h] for h in hits)}" for where, hits in both[:2]]
    raise IngestError("cannot tell the format: " + "; ".join(parts)
                      + "; say which with --format (format= in Python)", record=name)


def _inputs(source: Any) -> list[tuple[str, Path | None, Any]]:
    """``(name, path or None, records or None)`` for every input."""
    if isinstance(source, (str, os.PathLike)):
        return [(str(source), Path(source), None)]
    if isinstance(source, Mapping):
        return [("<records>", None, [source])]
    if isinstance(source, Iterable):
        items = list(source)
        if items and all(isinstance(x, (str, os.PathLike)) for x in items):
            return [(str(x), Path(x), None) for x in items]
        return [("<records>", None, items)]
    raise ConfigError(f"import_transcripts takes file paths or records, not {type(source).__name__}")


# --- the import ------------------------------------------------------------------------------


def import_transcripts(
    store: Store,
    source: str | os.PathLike[str] | Iterable[Any] | Mapping[str, Any],
    *,
    format: ImportFormat = "auto",  # shadows the builtin: it is the CLI option's name
    registry: PromptRegistry | None = None,
    redact: bool | Redactor = True,
    max_message_chars: int | None = DEFAULT_MAX_MESSAGE_CHARS,
    thread_prefix: str = "",
    progress: Progress | None = None,
) -> ImportReport:
    """Import conversation history into ``store`` as Threads (``source`` = ``"import"``).

    Args:
        store: Where the threads go.
        source: A file path, a list of paths, or records in memory (a list of conversations /
            runs / traces, or one record). Files are JSON (one document: a list of records, a
            record, or a wrapper such as ``{"data": [...]}``) or JSON Lines (a record per line).
        format: ``auto`` (detect per file; an error when records look like different formats),
            ``openai``, ``langsmith`` or ``langfuse``.
        registry: Prompt registry the system messages are matched against (default: the
            process-wide one :func:`~loop_middleware.load_prompt` registers into).
        redact: Redact private data before it is stored, as live capture does: True (default
            settings), False, or a configured :class:`~loop_middleware.privacy.Redactor`.
        max_message_chars: A message (or a tool call's arguments) longer than this makes its
            record skipped with a message; None or 0 for no limit.
        thread_prefix: Prepended to every thread id (to keep imported ids apart from others).
        progress: Called as ``progress("import", done, total)`` while writing.

    Returns:
        An :class:`ImportReport`: counts, one message per skipped record, warnings.

    Raises:
        IngestError: An input is unreadable as a whole (missing, empty, not JSON, not UTF-8, no
            record in a known format, formats mixed under ``auto``); nothing was written.
        StoreError: The store failed; the conversations written before are complete, and the
            message says how many (importing again is safe: it is idempotent).
        ConfigError: Bad arguments.
    """
    if format != "auto" and format not in FORMATS:
        raise ConfigError(f"format must be auto, {', '.join(FORMATS)}; got {format!r}")
    report = ImportReport()
    now = datetime.now(UTC)
    by_format: dict[str, list[tuple[str, Any]]] = {f: [] for f in FORMATS}
    base_time: dict[str, datetime] = {}
    # Read everything first: an unreadable file stops the import before anything is written.
    for name, path, records in _inputs(source):
        if path is not None:
            try:
                data = path.read_bytes()
                mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            except OSError as exc:
                raise IngestError(f"cannot read {path}: {exc.strerror or exc}", record=name) from None
            records = _decode(data, name, report.skipped)
        else:
            mtime = now
            records = _unwrap(records, name) if len(records or []) != 1 else _unwrap(records[0], name)
        fmt = format if format != "auto" else _detect(records, name) if records else "openai"
        report.files[name] = fmt
        report.records += len(records)
        by_format[fmt].extend(records)
        for where, _ in records:
            base_time[where] = mtime
    ctx = ImportContext(
        registry=registry, redactor=redact if isinstance(redact, Redactor) else Redactor() if redact else None,
        max_chars=max_message_chars or None, default_time=now, imported_at=now)
    convs: list[Conversation] = []
    for where, rec in by_format["openai"]:
        try:
            convs.append(openai.conversation(rec, where, prefix=thread_prefix))
        except RECORD_ERRORS as exc:
            report.skipped.append(f"{say(exc, where)}; skipped")
    if by_format["langsmith"]:
        convs += langsmith.conversations(by_format["langsmith"], prefix=thread_prefix,
                                         skipped=report.skipped, registry=registry)
    if by_format["langfuse"]:
        convs += langfuse.conversations(by_format["langfuse"], prefix=thread_prefix, skipped=report.skipped)
    built = _build(convs, ctx, base_time, report)
    report.warnings.extend(ctx.warnings)
    _write(store, built, report, progress)
    if report.skipped:
        logger.warning("import skipped %d records; first: %s", len(report.skipped), report.skipped[0])
    return report


def _same(a: Conversation, b: Conversation) -> str:
    """``same``, ``prefix`` (a is the start of b), ``longer`` (b the start of a), or ``other``."""
    ka = [(s.msg["role"], s.msg["content"], json.dumps(s.msg["tool_calls"], sort_keys=True, default=str))
          for s in a.steps]
    kb = [(s.msg["role"], s.msg["content"], json.dumps(s.msg["tool_calls"], sort_keys=True, default=str))
          for s in b.steps]
    if ka == kb:
        return "same"
    if kb[: len(ka)] == ka:
        return "prefix"
    if ka[: len(kb)] == kb:
        return "longer"
    return "other"


def _build(convs: list[Conversation], ctx: ImportContext, base_time: dict[str, datetime],
           report: ImportReport) -> list[tuple[Conversation, list[Row], dict[str, int]]]:
    """Rows per conversation; one conversation per thread id (a repeat is stored once, a
    longer snapshot of the same conversation replaces a shorter one, a clash is skipped)."""
    kept: dict[str, Conversation] = {}
    for c in convs:
        prev = kept.get(c.thread_id)
        if prev is None:
            kept[c.thread_id] = c
            continue
        rel = _same(prev, c)
        if rel == "same":
            report.duplicates += 1
            report.warnings.append(note(f"repeats {prev.record}; stored once", c.record))
        elif rel == "prefix":
            report.duplicates += 1
            report.warnings.append(note(f"continues {prev.record} (same id {c.thread_id!r}); the "
                                        "longer one is stored", c.record))
            kept[c.thread_id] = c
        elif rel == "longer":
            report.duplicates += 1
            report.warnings.append(note(f"is an earlier part of {prev.record} (same id "
                                        f"{c.thread_id!r}); the longer one is stored", c.record))
        else:
            report.skipped.append(note(f"thread id {c.thread_id!r} is already used by {prev.record} "
                                       "for a different conversation", c.record, "id") + "; skipped")
    out = []
    for c in kept.values():
        ctx.default_time = base_time.get(c.record, ctx.imported_at)
        try:
            rows, counts = conversation_rows(c, ctx)
        except RECORD_ERRORS as exc:
            report.skipped.append(f"{say(exc, c.record)}; skipped")
            continue
        out.append((c, rows, counts))
    return out


def _count(report: ImportReport, counts: dict[str, int]) -> None:
    report.threads += 1
    for k, v in counts.items():
        setattr(report, k, getattr(report, k) + v)


def _write(store: Store, built: list[tuple[Conversation, list[Row], dict[str, int]]],
           report: ImportReport, progress: Progress | None) -> None:
    total = len(built)
    done = 0

    def down(exc: StoreError) -> StoreError:
        return StoreError(
            f"the store failed after {report.threads} of {total} conversations were written "
            f"(each of those is complete; nothing of the others was): {exc}. Importing again is "
            "safe: rows are upserted by id", transient=True)

    for i in range(0, total, _CHUNK):
        chunk = built[i : i + _CHUNK]
        try:
            store.write_rows([r for _, rows, _ in chunk for r in rows])
            for _, _, counts in chunk:
                _count(report, counts)
        except StoreError as exc:
            if exc.transient:
                raise down(exc) from exc
            # The database refused some values: find the conversations at fault, keep the rest.
            for conv, rows, counts in chunk:
                try:
                    store.write_rows(rows)
                    _count(report, counts)
                except StoreError as one:
                    if one.transient:
                        raise down(one) from one
                    report.skipped.append(note(f"refused by the store ({one})", conv.record) + "; skipped")
        done += len(chunk)
        if progress is not None:
            progress("import", done, total)
