"""The coverage-gap edit: a drafted section about a topic the prompt does not cover.

The topic comes from the conversations, never from a built-in list: first what the agent itself
said it could not do ("I'm sorry, I can't help with refunds" -> *refunds*), then the terms the
diagnosis found in the intent's requests and nowhere in the prompt, then the intent's name. The
section's heading is ``## <Topic> policy``.

Its body states only facts from the host repository (:mod:`~loop_middleware.patch._facts`):
sentences about the topic found in other prompt files, docs and knowledge-base files, tool
docstrings, each with a ``<!-- source: path:line -->`` comment, and the tools whose names carry
the topic. Where the repository says nothing, the section holds ``<placeholders>`` and the fix
lists them (:attr:`ProposedEdit.placeholders`): the pull request is a draft labelled as needing
policy text, and its body says what the reviewer must write.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from loop_middleware._topics import phrase_words, refusal_topics, singular, topic_label
from loop_middleware.patch._edits import (
    DRAFT_MARKER,
    EditContext,
    ProposedEdit,
    _append_block,
    _draft,
    _has_heading,
    _safe_identifier,
    neutralise,
    read_text,
    resolve_prompt_path,
)
from loop_middleware.patch._facts import find_facts, invented_facts, stem
from loop_middleware.types import Diagnosis, FixKind, Thread

__all__ = ["coverage_gap_edit", "topic_heading", "topic_words"]

logger = logging.getLogger("loop_middleware.patch")

def _agent_said(quote: str, thread: Thread | None) -> bool:
    if thread is None or not quote:
        return False
    return any(m.role == "assistant" and quote in m.content for t in thread.turns for m in t.messages)


def topic_words(d: Diagnosis, threads: Mapping[str, Thread] | None = None) -> list[str]:
    """The words naming what the prompt does not cover, from this diagnosis's own data.

    In order: the object of the agent's own refusals ("can't help with refunds"), most frequent
    first, in its evidence quotes and in the replies of its affected threads; the terms missing
    from the prompt (``details["missing_terms"]``); then the intent's name.
    """
    threads = threads or {}
    replies = [ev.quote for ev in d.evidence if _agent_said(ev.quote, threads.get(ev.thread_id))]
    replies += [str(q) for q in d.details.get("agent_replies") or []]
    for tid in list(d.details.get("affected_thread_ids") or [])[:100]:
        t = threads.get(str(tid))
        if t is not None:
            replies += [m.content for turn in t.turns for m in turn.messages
                        if m.role == "assistant" and m.content]
    objects = refusal_topics(replies)
    if objects:
        best = sorted(objects.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        return list(best)
    for term in d.details.get("missing_terms") or []:  # the most distinctive first
        words = phrase_words(str(term))
        if words:
            return words[:2]
    return phrase_words(d.intent_name)[:2]


def topic_heading(d: Diagnosis, threads: Mapping[str, Thread] | None = None) -> str:
    """``"<Topic> policy"`` from :func:`topic_words` (``"Refund policy"``); letters, digits,
    spaces and hyphens only. ``"Unanswered requests"`` when nothing names the topic."""
    label = topic_label(topic_words(d, threads))
    return f"{label.capitalize()} policy" if label else "Unanswered requests"


def _tools_for(stems: set[str], prompt_text: str, threads: Mapping[str, Thread]) -> list[str]:
    """Tools named in the prompt (in backticks) or used in the threads whose name carries a
    topic stem (``request_refund`` for *refund*): facts of the host's own harness."""
    names: list[str] = re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)\s*(?:\(|`)", prompt_text)
    for t in threads.values():
        for turn in t.turns:
            names.extend(c.name for c in turn.tool_calls)
    out: list[str] = []
    for name in names:
        parts = {stem(p) for p in re.split(r"[_\W]+", name) if p}
        if parts & stems and _safe_identifier(name) and name not in out:
            out.append(name)
    return out[:3]


def _questions(d: Diagnosis, threads: Mapping[str, Thread], limit: int, chars: int) -> list[str]:
    """Up to ``limit`` distinct customer questions, neutralised: the opening request of each
    evidence thread (what the customer came for), then user-side evidence quotes that read like a
    request rather than a reaction to the failure ("Forget it.", a rephrase in capitals)."""
    seen: set[str] = set()
    out: list[str] = []

    def add(text: str) -> None:
        q = neutralise(text, chars)
        if q and q.casefold() not in seen and len(out) < limit:
            seen.add(q.casefold())
            out.append(q)

    def is_request(text: str) -> bool:
        letters = [c for c in text if c.isalpha()]
        shouting = bool(letters) and sum(c.isupper() for c in letters) > 0.6 * len(letters)
        return len(text.split()) >= 4 and not shouting

    for ev in d.evidence:
        t = threads.get(ev.thread_id)
        if t is not None and t.opening_request.strip():
            add(t.opening_request)
    for ev in d.evidence:
        t = threads.get(ev.thread_id)
        turn = (next((x for x in t.turns if x.index == ev.turn_index), None)
                if t is not None and ev.turn_index is not None else None)
        in_user_text = turn is not None and bool(ev.quote) and ev.quote in turn.user_text
        # Without the thread we cannot tell who said it; the evidence still shows what was asked.
        if (in_user_text or t is None) and ev.quote and is_request(ev.quote):
            add(ev.quote)
    return out


def _placeholders(topic: str) -> list[str]:
    return [f"<{topic} policy: what customers can get, and on which conditions>",
            f"<{topic} timing: how long it takes and what the customer will see>"]


def coverage_gap_edit(d: Diagnosis, repo_dir: Path, ctx: EditContext) -> ProposedEdit | None:
    """Append a marked ``## <Topic> policy`` section, built from the repository's own facts
    (cited) or placeholders, to the prompt that served the threads."""
    rel = resolve_prompt_path(d.prompt_path, repo_dir, d.prompt_sha256)
    text = read_text(repo_dir, rel)
    if text is None:
        return None
    heading = topic_heading(d, ctx.threads)
    if _has_heading(text, heading):
        logger.info("diagnosis %s: %s already has a %r section; no coverage edit", d.id, rel, heading)
        return None
    words = topic_words(d, ctx.threads)
    topic = " ".join(singular(w) for w in words) or "this topic"
    stems = {stem(w) for w in words}
    facts = find_facts(repo_dir, words, exclude=[rel], limit=ctx.config.max_quotes + 2)
    tools = _tools_for(stems, text, ctx.threads)
    lines = [f"- {neutralise(f.text, 300)} <!-- source: {f.source} -->" for f in facts]
    placeholders = [] if facts else _placeholders(topic)
    lines += [f"- {p}" for p in placeholders]
    if tools:
        lines.append("- Check the customer's case with the tools before answering: "
                     + ", ".join(f"`{t}`" for t in tools) + ".")
    questions = _questions(d, ctx.threads, ctx.config.max_quotes, ctx.config.max_quote_chars)
    offline = "\n".join(lines)
    body, by_llm = _draft(
        ctx,
        f"Rewrite the body of a new '{heading}' section of the agent's prompt. State ONLY the facts "
        "given in 'repository_facts' (keep their '<!-- source: ... -->' comments) and keep every "
        "'<placeholder>' as it is: never add a number, duration, URL or e-mail of your own.",
        {"intent": neutralise(d.intent_name, 80), "topic": topic,
         "repository_facts": [f"{f.text} (source: {f.source})" for f in facts],
         "tools": tools, "customer_questions": questions, "current_prompt": text[:6000]},
        offline,
    )
    if by_llm:
        invented = invented_facts(body, repo_dir, also_known=[text, offline])
        lost = [p for p in placeholders if p not in body]
        if invented or lost:
            logger.warning("diagnosis %s: the LLM's draft %s; using the offline section", d.id,
                           f"states facts not in the repository ({', '.join(invented[:5])})"
                           if invented else "dropped placeholders")
            body, by_llm = offline, False
    # No numbers here: the file states only the repository's facts; the PR body has the numbers.
    comment = [f"<!-- TODO(reviewer): {neutralise(d.intent_name, 80)} threads get "
               f"{neutralise(d.signal, 40)} (the pull request has the numbers)."]
    if placeholders:
        comment.append("     The repository states no policy for this topic: replace each "
                       "<placeholder> with the real policy (or drop the line), then delete this "
                       "comment and the marker.")
    else:
        comment.append("     Every line above is quoted from the file it cites: check it still "
                       "holds, then delete this comment and the marker.")
    if questions:
        comment.append("     What customers asked (from conversations, neutralised, untrusted):")
        comment.extend(f"       - \u201c{q}\u201d" for q in questions)
    comment.append("-->")
    block = "\n".join([f"## {heading}", DRAFT_MARKER, body.strip(), "", *comment]) + "\n"
    new = _append_block(text, block)
    what = (f"{len(placeholders)} placeholder(s) for the reviewer to fill in" if placeholders
            else f"{len(facts)} fact(s) quoted from the repository with their sources")
    return ProposedEdit(
        target_file=rel, old_text=text, new_text=new, kind=FixKind.PROMPT_EDIT,
        title=f"Add a drafted '{heading}' section to {rel}",
        description=f"appends a drafted '## {heading}' section ({what}) to {rel}",
        drafted_by="llm" if by_llm else "template",
        dedupe_key=f"section:{rel}:{heading.casefold()}",
        placeholders=tuple(placeholders),
        sources=tuple(f.source for f in facts),
    )


def placeholders_in(text: str, placeholders: Sequence[str]) -> list[str]:
    """The placeholders still present in ``text`` (a reviewer's edit removes them)."""
    return [p for p in placeholders if p in text]
