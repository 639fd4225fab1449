"""The replay guardrail: try a candidate fix on the real agent before anyone reviews it.

:class:`ReplayGuard` builds the host agent twice from its own factory, once from the current files
and once from a temporary copy with the fix applied, and replays conversations on both:

* the **evidence threads** of the diagnosis, user message by user message, up to the turn where
  the failure first showed (the user's later messages react to that failure, so they would not be
  said to a fixed agent);
* a sample of **other threads that passed**, whole, to catch a fix that breaks something else.

Replayed conversations are turned into :class:`~loop_middleware.types.Thread` objects directly
from the graph's messages (plus the inputs of each model call, recorded by a small callback), and
scored with the same detectors as production (:func:`~loop_middleware.extract._signals.detect_signals`).

Only signals the *agent* can change are counted: frustration, escalation, negative feedback,
a language switch, "I already told you" and "forget it" are the user's own (replayed, identical)
words, and abandonment only counts when the replay reached the thread's real end. When the
diagnosis' signals are all user-side, every agent-side signal is counted instead (``proxy``),
except the harness' own (:data:`HARNESS_KINDS`: a tool result it cut), which count only when the
fix targets them.

A fix is **worse** when its candidate cannot be built, when the target signal fires in more
evidence threads than before, or when other threads that passed with the current agent fail with
the candidate (more than ``max_regressions``). :func:`~loop_middleware.patch._propose.propose_fixes`
drops those and puts the replay's one-line summary into the rationale of the others.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel, ConfigDict, Field

from loop_middleware.errors import ConfigError, LoopError, PathNotAllowedError
from loop_middleware.extract._signals import DetectionContext, detect_signals
from loop_middleware.patch._contract import apply_unified_diff
from loop_middleware.patch._edits import read_text, resolve_prompt_path
from loop_middleware.types import (
    Diagnosis,
    Fix,
    FixKind,
    LLMCall,
    Message,
    Signal,
    Thread,
    ToolCall,
    Turn,
)

__all__ = ["AGENT_SIDE_EXCLUDED", "HARNESS_KINDS", "ReplayGuard", "ReplayResult", "agent_side",
           "sample_threads"]

logger = logging.getLogger("loop_middleware.patch")

AGENT_SIDE_EXCLUDED = frozenset({"frustration", "escalation", "negative_feedback",
                                 "language_switch", "latency_outlier"})
"""Signal kinds a replay never counts: the user's own words (replayed unchanged) or wall-clock
noise."""
_USER_REASONS = frozenset({("abandonment", "user_gave_up"), ("context_loss", "user_repeats")})
HARNESS_KINDS = frozenset({"tool_output_truncated"})
"""Signal kinds about what the *harness* did to a tool result (it cut it), not about the agent's
behaviour: a replay counts them only when the fix targets them (a config fix for the cut). A
prompt fix after which the agent calls a tool whose result the harness cuts did not make the
agent worse; the cut is its own root cause, with its own diagnosis and fix."""


def agent_side(signal: Signal, *, reached_end: bool = True) -> bool:
    """True when the agent's behaviour (not the replayed user text) can make ``signal`` fire.

    ``reached_end=False`` (the replay stopped before the thread's real end) also excludes
    abandonment: a replay cut after the agent asks a question looks abandoned by construction.
    """
    if signal.kind in AGENT_SIDE_EXCLUDED:
        return False
    if (signal.kind, signal.details.get("reason")) in _USER_REASONS:
        return False
    return not (signal.kind == "abandonment" and not reached_end)


class ReplayResult(BaseModel):
    """What replaying a candidate fix showed (stored in ``Fix.details["replay"]``)."""

    model_config = ConfigDict(extra="forbid")

    fix_id: str
    diagnosis_id: str
    ran: bool = True
    """False when the replay could not run (no threads, the current agent did not build, a
    harness code change): the fix is neither confirmed nor refuted."""
    target_signals: list[str] = Field(default_factory=list)
    """The diagnosis' signal kinds."""
    counted_signals: list[str] = Field(default_factory=list)
    """The kinds actually counted (agent-side); every agent-side kind when ``proxy``."""
    proxy: bool = False
    evidence_threads: int = 0
    evidence_failing_before: int = 0
    """Evidence threads where a counted signal fired with the current files."""
    evidence_failing_after: int = 0
    """... and with the candidate files."""
    other_threads: int = 0
    other_passing_before: int = 0
    """Other threads with no agent-side signal with the current files."""
    other_still_passing: int = 0
    """... of which still none with the candidate."""
    regressions: list[str] = Field(default_factory=list)
    """Ids of other threads that passed before and fail with the candidate."""
    regression_signals: dict[str, list[str]] = Field(default_factory=dict)
    """Thread id -> the signal kinds that newly fired there."""
    errors: list[str] = Field(default_factory=list)
    worse: bool = False
    """The candidate is worse: the fix must not be proposed."""
    improved: bool = False
    """The target signal fired in fewer evidence threads after than before."""
    reason: str = ""
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for a rationale: ``Replay: refusal fired in 5/5 evidence threads before, 0/5
        after; 10/10 other threads still pass.``"""
        if not self.ran:
            return f"Replay: not run ({self.reason})."
        what = "/".join(self.counted_signals) if not self.proxy else "an agent-side failure signal"
        line = (f"Replay: {what} fired in {self.evidence_failing_before}/{self.evidence_threads} "
                f"evidence threads before, {self.evidence_failing_after}/{self.evidence_threads} after")
        if self.other_threads:
            line += (f"; {self.other_still_passing}/{self.other_passing_before} other threads that "
                     "passed still pass")
        else:
            line += "; no other threads replayed"
        return line + (f" ({self.reason})." if self.reason else ".")


class _CallRecorder(BaseCallbackHandler):
    """Records the input of each chat-model call (to pair with the AI messages of a turn)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def on_chat_model_start(self, serialized: dict[str, Any] | None, messages: list[list[BaseMessage]],
                            **kwargs: Any) -> None:
        params = kwargs.get("invocation_params") or {}
        meta = kwargs.get("metadata") or {}
        model = params.get("model") or params.get("model_name") or meta.get("ls_model_name")
        self.calls.append({"input": list(messages[0]) if messages else [],
                           "model": str(model) if model else None})


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p if isinstance(p, str) else str(p.get("text", "")) if isinstance(p, dict) else ""
                       for p in content)
    return "" if content is None else str(content)


def _message(m: BaseMessage) -> Message:
    if isinstance(m, HumanMessage):
        return Message(role="user", content=_text(m.content), id=m.id)
    if isinstance(m, AIMessage):
        return Message(role="assistant", content=_text(m.content), id=m.id,
                       tool_calls=[{"id": tc.get("id"), "name": tc["name"], "args": tc.get("args", {})}
                                   for tc in m.tool_calls])
    if isinstance(m, ToolMessage):
        return Message(role="tool", content=_text(m.content), id=m.id, name=m.name,
                       tool_call_id=m.tool_call_id)
    if isinstance(m, SystemMessage):
        return Message(role="system", content=_text(m.content), id=m.id)
    return Message(role="other", content=_text(m.content), id=m.id)


def _turn(thread_id: str, index: int, msgs: Sequence[BaseMessage], calls: Sequence[dict[str, Any]],
          latency_ms: float, error: str | None) -> Turn:
    messages = [_message(m) for m in msgs]
    args: dict[str, tuple[str, Any]] = {}
    llm_calls: list[LLMCall] = []
    tool_calls: list[ToolCall] = []
    seq = 0
    ai_seen = 0
    for m in msgs:
        if isinstance(m, AIMessage):
            for tc in m.tool_calls:
                args[str(tc.get("id"))] = (tc["name"], tc.get("args"))
            call = calls[ai_seen] if ai_seen < len(calls) else {"input": [], "model": None}
            usage: Mapping[str, Any] = m.usage_metadata or {}
            llm_calls.append(LLMCall(
                id=f"{thread_id}-{index}-llm{ai_seen}", seq=seq, model=call["model"],
                input_messages=[_message(x) for x in call["input"]], output_messages=[_message(m)],
                input_tokens=usage.get("input_tokens"), output_tokens=usage.get("output_tokens")))
            ai_seen += 1
            seq += 1
        elif isinstance(m, ToolMessage):
            name, arguments = args.get(m.tool_call_id, (m.name or "tool", None))
            failed = getattr(m, "status", "success") == "error"
            tool_calls.append(ToolCall(
                id=f"{thread_id}-{index}-tool{seq}", seq=seq, name=m.name or name, arguments=arguments,
                result=None if failed else _text(m.content), error=_text(m.content) if failed else None,
                tool_call_id=m.tool_call_id))
            seq += 1
    return Turn(id=f"{thread_id}-{index}", thread_id=thread_id, index=index, messages=messages,
                llm_calls=llm_calls, tool_calls=tool_calls, latency_ms=latency_ms, error=error)


class _Side:
    """One built agent (current or candidate) and how to talk to it."""

    def __init__(self, graph: Any, label: str, recursion_limit: int, max_turns: int) -> None:
        self.graph = graph
        self.label = label
        self.recursion_limit = recursion_limit
        self.max_turns = max_turns
        self.has_checkpointer = getattr(graph, "checkpointer", None) not in (None, False)

    def replay(self, thread: Thread, upto: int | None) -> Thread:
        rec = _CallRecorder()
        tid = f"loop-replay-{self.label}-{uuid.uuid4().hex[:12]}"
        history: list[BaseMessage] = []
        turns: list[Turn] = []
        for orig in sorted(thread.turns, key=lambda t: t.index):
            if (upto is not None and orig.index > upto) or len(turns) >= self.max_turns:
                break
            text = orig.user_text
            if not text.strip():
                continue
            rec.calls.clear()
            human = HumanMessage(text)
            payload = {"messages": [human] if self.has_checkpointer else [*history, human]}
            config: dict[str, Any] = {"configurable": {"thread_id": tid}, "callbacks": [rec],
                                      "recursion_limit": self.recursion_limit}
            t0 = time.perf_counter()
            try:
                out = self.graph.invoke(payload, config)
            except Exception as exc:  # noqa: BLE001 - a crash is a replay outcome, not our error
                turns.append(_turn(thread.thread_id, orig.index, [human], [],
                                   (time.perf_counter() - t0) * 1000, f"{type(exc).__name__}: {exc}"))
                break
            msgs = list(out.get("messages", [])) if isinstance(out, Mapping) else []
            start = max((i for i, m in enumerate(msgs) if isinstance(m, HumanMessage)), default=0)
            history = msgs
            turns.append(_turn(thread.thread_id, orig.index, msgs[start:], list(rec.calls),
                               (time.perf_counter() - t0) * 1000, None))
        return Thread(thread_id=thread.thread_id, turns=turns,
                      metadata={"replay": self.label, "source_thread": thread.thread_id})


def _accepts(factory: Callable[..., Any]) -> tuple[set[str], bool, int]:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return set(), True, 2
    names = {n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    positional = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params.values())
    if any(p.kind == p.VAR_POSITIONAL for p in params.values()):
        positional = 99
    return names, var_kw, positional


_SKIP_COPY = shutil.ignore_patterns(".git", "node_modules", ".venv", "__pycache__", "*.pyc")


class ReplayGuard:
    """Replays a fix's evidence on the current and the candidate agent; see the module docs.

    Args:
        factory: Builds the host agent (a compiled LangGraph graph, or anything with
            ``invoke({"messages": [...]}, config)``) from a prompt directory:
            ``factory(prompt_dir)``, ``factory(prompt_dir, config_path)`` or with a
            ``config_path=`` keyword; a ``checkpointer=`` keyword, when accepted, gets a fresh
            ``InMemorySaver``. Without a checkpointer the history is passed on every turn.
        config_path: The harness config passed to the factory (absolute, or relative to the
            repository given to :meth:`evaluate`). A fix to that file is replayed on its patched
            copy.
        prompt_dir: The prompt directory to build from when the fix is a config change and the
            diagnosis names no prompt file inside the repository.
        max_threads: Evidence threads replayed, and other threads replayed (each).
        max_turns: User turns replayed per thread.
        max_regressions: Other threads allowed to go from pass to fail (0: none).
        detection: Detector settings for scoring replays (the defaults otherwise).
        recursion_limit: LangGraph's step limit per turn (a looping candidate fails fast).
    """

    def __init__(
        self,
        factory: Callable[..., Any],
        *,
        config_path: str | os.PathLike[str] | None = None,
        prompt_dir: str | os.PathLike[str] | None = None,
        max_threads: int = 20,
        max_turns: int = 30,
        max_regressions: int = 0,
        detection: DetectionContext | None = None,
        recursion_limit: int = 40,
    ) -> None:
        if not callable(factory):
            raise ConfigError("ReplayGuard needs a callable agent factory")
        if max_threads < 1 or max_turns < 1 or max_regressions < 0:
            raise ConfigError("ReplayGuard: max_threads and max_turns must be >= 1, "
                              "max_regressions >= 0")
        self.factory = factory
        self.config_path = Path(config_path) if config_path is not None else None
        self.prompt_dir = Path(prompt_dir) if prompt_dir is not None else None
        self.max_threads = max_threads
        self.max_turns = max_turns
        self.max_regressions = max_regressions
        self.detection = detection
        self.recursion_limit = recursion_limit

    def __repr__(self) -> str:
        return f"ReplayGuard({getattr(self.factory, '__qualname__', self.factory)!r})"

    # -- building ------------------------------------------------------------------------------

    def _build(self, prompt_dir: Path, config_path: Path | None) -> Any:
        names, var_kw, positional = _accepts(self.factory)
        kwargs: dict[str, Any] = {}
        args: list[Any] = [prompt_dir]
        if "checkpointer" in names or var_kw:
            from langgraph.checkpoint.memory import InMemorySaver

            kwargs["checkpointer"] = InMemorySaver()
        if config_path is not None:
            if "config_path" in names or var_kw:
                kwargs["config_path"] = config_path
            elif positional >= 2:
                args.append(config_path)
            else:
                raise ConfigError("the agent factory takes no config path, but the fix or the "
                                  "guard needs one")
        return self.factory(*args, **kwargs)

    # -- scoring -------------------------------------------------------------------------------

    def _signals(self, threads: Sequence[Thread]) -> dict[str, list[Signal]]:
        out: dict[str, list[Signal]] = {t.thread_id: [] for t in threads}
        for s in detect_signals(threads, context=self.detection):
            out.setdefault(s.thread_id, []).append(s)
        return out

    @staticmethod
    def _counted(sigs: Iterable[Signal], kinds: set[str] | None, reached_end: bool) -> set[str]:
        return {s.kind for s in sigs if agent_side(s, reached_end=reached_end)
                and (s.kind in kinds if kinds is not None else s.kind not in HARNESS_KINDS)}

    # -- the public entry ------------------------------------------------------------------------

    def evaluate(
        self,
        fix: Fix,
        diagnosis: Diagnosis,
        threads: Sequence[Thread],
        repo_dir: str | os.PathLike[str],
        *,
        other_threads: Sequence[Thread] = (),
    ) -> ReplayResult:
        """Replay ``threads`` (the evidence) and ``other_threads`` on the current and the
        candidate agent and compare.

        Args:
            fix: The candidate (its diff applies to ``repo_dir/fix.target_file``).
            diagnosis: What the fix is for: its signals are the target.
            threads: Evidence threads (the first ``max_threads`` are replayed).
            repo_dir: The host repository (read only; candidates live in a temporary copy).
            other_threads: Threads that passed in production, ideally from other intents (the
                first ``max_threads`` are replayed).

        Returns:
            A :class:`ReplayResult`; ``ran=False`` when it could not run (never raises for a
            misbehaving agent: a crash while replaying counts as that thread failing).
        """
        t0 = time.perf_counter()
        targets = sorted({*(diagnosis.details.get("signals") or []), diagnosis.signal})
        agent_kinds = {k for k in targets if k not in AGENT_SIDE_EXCLUDED}
        proxy = not agent_kinds or agent_kinds == {"abandonment"}
        kinds: set[str] | None = None if proxy else agent_kinds
        base = ReplayResult(fix_id=fix.id, diagnosis_id=diagnosis.id, target_signals=targets,
                            counted_signals=sorted(agent_kinds) if not proxy else ["*"], proxy=proxy)

        def not_run(reason: str, **extra: Any) -> ReplayResult:
            logger.info("replay of fix %s not run: %s", fix.id, reason)
            return base.model_copy(update={"ran": False, "reason": reason,
                                           "seconds": time.perf_counter() - t0, **extra})

        evidence = list(threads)[: self.max_threads]
        others = list(other_threads)[: self.max_threads]
        if not evidence:
            return not_run("no evidence threads to replay")
        if fix.kind == FixKind.HARNESS_CHANGE:
            return not_run("harness code changes are not replayed")
        root = Path(repo_dir).resolve()
        try:
            target = resolve_prompt_path(fix.target_file, root)
        except PathNotAllowedError as exc:
            return not_run(str(exc))
        before_text = read_text(root, target)
        if before_text is None:
            return not_run(f"{target} cannot be read")
        try:
            after_text = apply_unified_diff(before_text, fix.diff)
        except LoopError as exc:
            return not_run(f"the diff does not apply: {exc}")

        cfg_current = self._config_path(root)
        target_path = root / target
        is_config = fix.kind == FixKind.CONFIG_CHANGE or (
            cfg_current is not None and cfg_current.resolve() == target_path.resolve())

        with tempfile.TemporaryDirectory(prefix="loop-replay-") as tmp:
            tmpdir = Path(tmp)
            cfg_candidate: Path | None
            if is_config:
                found_dir = self._prompt_dir_for(diagnosis, root)
                if found_dir is None:
                    return not_run("no prompt directory to build the agent from (set prompt_dir)")
                prompt_dir = cand_prompt_dir = found_dir
                cfg_current = target_path
                # Same file name in a scratch folder: the factory reads the patched copy.
                patched = tmpdir / "config" / target_path.name
                patched.parent.mkdir()
                patched.write_bytes(after_text.encode("utf-8"))
                cfg_candidate = patched
            else:
                prompt_dir = target_path.parent
                cand_prompt_dir = tmpdir / "prompts"
                shutil.copytree(prompt_dir, cand_prompt_dir, symlinks=True, ignore=_SKIP_COPY)
                (cand_prompt_dir / target_path.name).write_bytes(after_text.encode("utf-8"))
                cfg_candidate = cfg_current
            try:
                current = _Side(self._build(prompt_dir, cfg_current), "current",
                                self.recursion_limit, self.max_turns)
            except Exception as exc:  # noqa: BLE001 - the host's factory can raise anything
                return not_run(f"the current agent did not build: {type(exc).__name__}: {exc}")
            try:
                candidate = _Side(self._build(cand_prompt_dir, cfg_candidate), "candidate",
                                  self.recursion_limit, self.max_turns)
            except Exception as exc:  # noqa: BLE001
                reason = f"the candidate agent did not build: {type(exc).__name__}: {exc}"
                logger.warning("replay of fix %s: %s", fix.id, reason)
                return base.model_copy(update={"worse": True, "reason": reason,
                                               "errors": [reason], "evidence_threads": len(evidence),
                                               "seconds": time.perf_counter() - t0})
            return self._compare(base, current, candidate, evidence, others, set(targets), kinds, t0)

    def _compare(self, base: ReplayResult, current: _Side, candidate: _Side, evidence: list[Thread],
                 others: list[Thread], targets: set[str], kinds: set[str] | None,
                 t0: float) -> ReplayResult:
        # Where each evidence thread first failed in production: replay up to that turn.
        orig = self._signals(evidence)
        upto: dict[str, int | None] = {}
        for t in evidence:
            idx = [s.turn_index for s in orig.get(t.thread_id, [])
                   if s.kind in targets and s.turn_index is not None]
            upto[t.thread_id] = min(idx) if idx else None

        def run(side: _Side, batch: Sequence[Thread], cut: Mapping[str, int | None]) -> list[Thread]:
            return [side.replay(t, cut.get(t.thread_id)) for t in batch]

        errors: list[str] = []
        ev_before = run(current, evidence, upto)
        ev_after = run(candidate, evidence, upto)
        other_cut: dict[str, int | None] = {}
        oth_before = run(current, others, other_cut)
        oth_after = run(candidate, others, other_cut)
        for th in (*ev_before, *ev_after, *oth_before, *oth_after):
            for turn in th.turns:
                if turn.error:
                    errors.append(f"{th.metadata.get('replay')} {th.thread_id} turn {turn.index}: {turn.error}")
        sig_b, sig_a = self._signals(ev_before), self._signals(ev_after)
        last = {t.thread_id: max((x.index for x in t.turns), default=0) for t in [*evidence, *others]}

        def reached(th: Thread) -> bool:
            return bool(th.turns) and th.turns[-1].index >= last.get(th.thread_id, 0)

        fail_b = [t for t in ev_before if self._counted(sig_b[t.thread_id], kinds, reached(t))]
        fail_a = [t for t in ev_after if self._counted(sig_a[t.thread_id], kinds, reached(t))]
        # A crash in the candidate is a failure whatever the detectors say.
        crashed = {t.thread_id for t in ev_after if any(x.error for x in t.turns)}
        n_after = len({t.thread_id for t in fail_a} | crashed)
        n_before = len(fail_b)

        osig_b, osig_a = self._signals(oth_before), self._signals(oth_after)
        passing = [t.thread_id for t in oth_before
                   if not any(x.error for x in t.turns)
                   and not self._counted(osig_b[t.thread_id], None, reached(t))]
        after_by_id = {t.thread_id: t for t in oth_after}
        regressions: dict[str, list[str]] = {}
        for tid in passing:
            th = after_by_id[tid]
            new = self._counted(osig_a[tid], None, reached(th))
            if new or any(x.error for x in th.turns):
                regressions[tid] = sorted(new) or ["error"]

        reasons: list[str] = []
        worse = False
        if n_after > n_before:
            worse = True
            reasons.append(f"the target signal fired in more evidence threads ({n_before} -> {n_after})")
        if len(regressions) > self.max_regressions:
            worse = True
            reasons.append(f"{len(regressions)} other thread(s) that passed now fail "
                           f"({', '.join(sorted({k for v in regressions.values() for k in v}))})")
        if not worse and n_before == 0:
            reasons.append("the failure did not reproduce in replay, so the fix is unconfirmed")
        result = base.model_copy(update={
            "evidence_threads": len(evidence), "evidence_failing_before": n_before,
            "evidence_failing_after": n_after, "other_threads": len(others),
            "other_passing_before": len(passing), "other_still_passing": len(passing) - len(regressions),
            "regressions": sorted(regressions), "regression_signals": regressions,
            "errors": errors[:20], "worse": worse, "improved": n_after < n_before,
            "reason": "; ".join(reasons), "seconds": round(time.perf_counter() - t0, 3),
        })
        logger.info("replay of fix %s: %s", base.fix_id, result.summary())
        return result

    def _config_path(self, root: Path) -> Path | None:
        if self.config_path is None:
            return None
        return self.config_path if self.config_path.is_absolute() else root / self.config_path

    def _prompt_dir_for(self, diagnosis: Diagnosis, root: Path) -> Path | None:
        try:
            rel = resolve_prompt_path(diagnosis.prompt_path, root, diagnosis.prompt_sha256)
        except PathNotAllowedError:
            rel = None
        if rel is not None and (root / rel).is_file():
            return (root / rel).parent
        if self.prompt_dir is not None:
            return self.prompt_dir if self.prompt_dir.is_absolute() else root / self.prompt_dir
        return None


def sample_threads(threads: Iterable[Thread], n: int, seed: str) -> list[Thread]:
    """``n`` threads in a deterministic pseudo-random order keyed by ``seed``."""
    def key(t: Thread) -> str:
        return hashlib.sha256(f"{seed}\x1f{t.thread_id}".encode()).hexdigest()

    return sorted(threads, key=key)[:n]
