"""The companion improvement graph: a LangGraph agent that runs the loop over the store.

::

    load_threads -> measure -> extract_signals -> assign_intents -> diagnose -> propose_fixes
        -> human_review (interrupt: approve / edit / reject each fix) -> open_prs -> record

The store is the source of truth: nodes read what earlier stages stored and write their own
results back, and the state carries only small summaries (ids, numbers, diffs), so a run is cheap
to checkpoint and can be resumed. Every node is a plain function of ``(state, config)`` usable
on its own. ``graph`` (compiled without a checkpointer: ``langgraph dev`` and LangGraph Platform
add their own) is what ``integrations/langgraph.json`` serves; :func:`build_graph` takes a
checkpointer for local use.

Settings come from :class:`~loop_middleware.config.LoopConfig` (``LOOP_*`` environment
variables, overridable per run with ``config={"configurable": {"loop": {...}}}``).
"""

from __future__ import annotations

import importlib
import logging
import operator
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from .config import LoopConfig
from .errors import ConfigError, LoopError
from .store import Store
from .types import Diagnosis, Fix

__all__ = ["LoopState", "build_graph", "graph"]

logger = logging.getLogger("loop_middleware.graph")


class LoopState(TypedDict, total=False):
    """What flows between the nodes (summaries; the store holds the full data)."""

    threads_total: int
    """Threads in the store."""
    threads_new: int
    """Threads captured or updated since the last run."""
    signals: int
    """Signals detected in the new threads."""
    intents: list[dict[str, Any]]
    """Intent summaries: id, name, category, size."""
    new_intents: list[str]
    diagnoses: list[dict[str, Any]]
    """Diagnoses, ranked by impact (full models, as JSON)."""
    suppressed: int
    """Diagnoses hidden by aggregation privacy (too few threads)."""
    fixes: list[dict[str, Any]]
    """Proposed fixes (full models, as JSON), updated by review and publishing."""
    measurements: list[dict[str, Any]]
    """Keep/revert decisions on fixes already shipped."""
    published: list[dict[str, Any]]
    """Where each approved fix went: branch, patch file, PR URL, GitHub error."""
    log: Annotated[list[str], operator.add]
    """One line per node: what it did."""


def _store(cfg: LoopConfig) -> Store:
    return Store(cfg.database_url)


# --- nodes --------------------------------------------------------------------------------------


def load_threads(state: LoopState, config: RunnableConfig) -> LoopState:
    """Count the threads in the store and those new since the last extraction."""
    from .extract._extract import WATERMARK_KEY

    cfg = LoopConfig.resolve(config)
    store = _store(cfg)
    mark = store.get_meta(WATERMARK_KEY)
    from datetime import datetime

    new = len(store.thread_ids(since=datetime.fromisoformat(mark) if mark else None))
    total = store.count_threads()
    return {"threads_total": total, "threads_new": new,
            "log": [f"load_threads: {total} threads in the store, {new} new since the last run"]}


def measure(state: LoopState, config: RunnableConfig) -> LoopState:
    """Measure shipped fixes on the cohorts that followed them: keep, revert or wait."""
    cfg = LoopConfig.resolve(config)
    store = _store(cfg)
    from .measure import measure_all, measurement_summary

    results = measure_all(store, alpha=cfg.alpha)
    out = [{"fix_id": r.fix_id, **measurement_summary(r)} for r in results]
    decided = {r.decision for r in results}
    return {"measurements": out,
            "log": [f"measure: {len(out)} shipped fixes measured ({', '.join(sorted(d for d in decided if d)) or 'none'})"]}


def _executor(cfg: LoopConfig) -> Any:
    """Ray when configured (units as Ray tasks), else None: ``workers`` decides (inline or a
    spawned process pool)."""
    if not cfg.ray_address:
        return None
    from .scale import RayExecutor

    local = cfg.ray_address == "local"
    return RayExecutor(None if local else cfg.ray_address, num_cpus=cfg.workers if local else None)


def extract_signals_node(state: LoopState, config: RunnableConfig) -> LoopState:
    """Detect failure signals in the new threads (stored)."""
    from .extract import extract_signals

    cfg = LoopConfig.resolve(config)
    n, signals = extract_signals(_store(cfg), workers=cfg.workers, executor=_executor(cfg))
    return {"signals": len(signals),
            "log": [f"extract_signals: {len(signals)} signals in {n} new or updated threads"]}


def assign_intents_node(state: LoopState, config: RunnableConfig) -> LoopState:
    """Discover intents (first run) or assign new threads to the stable intents (stored)."""
    from .extract import assign_intents

    cfg = LoopConfig.resolve(config)
    intents, _assignments, new_ids, emb = assign_intents(_store(cfg), mode=cfg.embedder,
                                                         workers=cfg.workers, executor=_executor(cfg))
    summary = [{"id": i.id, "name": i.name, "category": i.category, "size": i.size,
                "parent_id": i.parent_id} for i in intents]
    return {"intents": summary, "new_intents": new_ids,
            "log": [f"assign_intents: {sum(1 for i in intents if i.parent_id is None)} intents "
                    f"({len(new_ids)} new) with {emb}"]}


def diagnose_node(state: LoopState, config: RunnableConfig) -> LoopState:
    """Root causes per intent x failure signal, ranked by impact (stored)."""
    from .diagnose import DiagnoseConfig, diagnose_store

    cfg = LoopConfig.resolve(config)
    store = _store(cfg)
    # Counts from the database, threads from a bounded sample: flat cost at any store size.
    found = diagnose_store(store, config=DiagnoseConfig(alpha=cfg.alpha), llm=_diagnosis_writer(cfg),
                           sample_size=cfg.diagnose_sample_size)
    # Aggregation privacy: a diagnosis covering too few threads is neither shown nor shipped.
    shown = [d for d in found if d.sessions_affected >= cfg.min_group_size]
    store.save_diagnoses(shown)
    return {"diagnoses": [d.model_dump(mode="json") for d in shown],
            "suppressed": len(found) - len(shown),
            "log": [f"diagnose: {len(shown)} diagnoses"
                    + (f" ({len(found) - len(shown)} below {cfg.min_group_size} threads hidden)"
                       if len(found) > len(shown) else "")]}


def _diagnosis_writer(cfg: LoopConfig) -> Any:
    if not cfg.llm_model:
        return None
    try:
        import instructor

        from .diagnose import DiagnosisWriter

        client = instructor.from_provider(cfg.llm_model)
        return DiagnosisWriter(client, model=cfg.llm_model.split("/", 1)[-1])
    except Exception as exc:  # noqa: BLE001 - the offline path is always there
        logger.warning("LLM %s unavailable (%s); using offline diagnoses", cfg.llm_model, exc)
        return None


def _factory(spec: str) -> Callable[..., Any]:
    module, _, attr = spec.partition(":")
    if not attr:
        raise ConfigError(f"agent_factory must be 'module:function', got {spec!r}")
    try:
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load agent factory {spec!r}: {exc}") from None


def _fix_thread_ids(store: Store, diagnoses: list[Diagnosis], sample_size: int) -> list[str]:
    """The threads fixes are drafted and replayed from: each diagnosis's affected and evidence
    threads, and a uniform sample of the rest (other threads for the replay's regression check),
    never the whole store."""
    from .diagnose import sample_thread_ids

    wanted = {tid for d in diagnoses for tid in d.details.get("affected_thread_ids", [])}
    wanted |= {e.thread_id for d in diagnoses for e in d.evidence if e.thread_id}
    ids = store.thread_ids()  # oldest first, the order list_threads() gives
    wanted |= set(sample_thread_ids(ids, sample_size))
    return [tid for tid in ids if tid in wanted]


def propose_fixes_node(state: LoopState, config: RunnableConfig) -> LoopState:
    """A minimal, contract-checked diff per diagnosis, replayed against the agent when a
    factory is configured; fixes already proposed for a diagnosis are not proposed again."""
    from .patch import AllowedPaths
    from .patch._propose import ProposeConfig, propose_fixes

    cfg = LoopConfig.resolve(config)
    store = _store(cfg)
    diagnoses = [Diagnosis.model_validate(d) for d in state.get("diagnoses", [])]
    done = {f.diagnosis_id for f in store.load_fixes() if f.status not in ("rejected",)}
    # A diagnosis merged across intents keeps its strongest member's id; its other members'
    # earlier ids (``details["merged_ids"]``) may already have a fix: the cause is acted on.
    todo = [d for d in diagnoses
            if d.id not in done and not done & set(d.details.get("merged_ids") or ())]
    replay = None
    if cfg.agent_factory:
        from .patch._replay import ReplayGuard

        cfg_path = Path(cfg.repo_dir) / cfg.agent_config if cfg.agent_config else None
        replay = ReplayGuard(_factory(cfg.agent_factory), config_path=cfg_path)
    threads = store.list_threads(thread_ids=_fix_thread_ids(store, todo, cfg.diagnose_sample_size),
                                 llm_inputs=False) if todo else []
    # Earlier prompt versions, so a regression can be fixed by restoring what was lost.
    previous = {pv.sha256: pv.text for pv in store.prompt_versions()}
    fixes = propose_fixes(
        todo, repo_dir=Path(cfg.repo_dir), allowed=AllowedPaths(cfg.allowed_globs),
        config=ProposeConfig(required_sections=cfg.required_sections or None,
                             config_files=cfg.config_files),
        threads=threads, replay=replay, assignments=store.load_assignments(),
        previous_text=previous.get,
    )
    return {"fixes": [f.model_dump(mode="json") for f in fixes],
            "log": [f"propose_fixes: {len(fixes)} fixes for {len(todo)} new diagnoses "
                    f"({len(diagnoses) - len(todo)} already had one)"]}


def human_review(state: LoopState, config: RunnableConfig) -> LoopState:
    """Pause for a human: approve, edit or reject each fix (LangGraph ``interrupt``).

    Resume with ``Command(resume=...)`` where the value is ``"approve_all"``, ``"reject_all"``,
    or ``{fix_id: "approve" | "reject" | {"diff": "<edited unified diff>"}}``.
    """
    fixes = [Fix.model_validate(f) for f in state.get("fixes", [])]
    if not fixes:
        return {"log": ["human_review: nothing to review"]}
    answer = interrupt({
        "question": "Approve, edit or reject each proposed fix. Nothing is merged automatically.",
        "fixes": [{"id": f.id, "title": f.title, "kind": str(f.kind), "target_file": f.target_file,
                   "diff": f.diff, "metric": f.metric, "sample_size_needed": f.sample_size_needed,
                   "rationale": f.rationale} for f in fixes],
    })
    decisions = _decisions(answer, fixes)
    cfg = LoopConfig.resolve(config)
    out = []
    for f in fixes:
        d = decisions.get(f.id, "reject")
        if isinstance(d, dict):
            f = _edited(f, str(d.get("diff", "")), cfg)
        elif d == "approve":
            f = f.model_copy(update={"status": "approved"})
        else:
            f = f.model_copy(update={"status": "rejected"})
        out.append(f)
    n_ok = sum(1 for f in out if f.status == "approved")
    return {"fixes": [f.model_dump(mode="json") for f in out],
            "log": [f"human_review: {n_ok} approved, {len(out) - n_ok} rejected"]}


def _decisions(answer: Any, fixes: list[Fix]) -> dict[str, Any]:
    if answer in ("approve_all", True) or (isinstance(answer, dict) and answer.get("approve_all")):
        return {f.id: "approve" for f in fixes}
    if answer in ("reject_all", False, None):
        return {}
    if isinstance(answer, dict):
        inner = answer.get("decisions", answer)
        if isinstance(inner, dict):
            return dict(inner)
    raise ConfigError(f"cannot read the review answer {answer!r}: see human_review's docstring")


def _edited(fix: Fix, diff: str, cfg: LoopConfig) -> Fix:
    """A reviewer's edited diff, checked like any other (allowed paths, contract)."""
    from .patch import AllowedPaths, apply_unified_diff, check_file_contract

    try:
        allowed = AllowedPaths(cfg.allowed_globs)
        target = allowed.check_diff(diff, fix.target_file)
        before = (Path(cfg.repo_dir) / target).read_text(encoding="utf-8")
        after = apply_unified_diff(before, diff)
        check_file_contract(target, before, after, cfg.required_sections or None)
    except (LoopError, OSError) as exc:
        logger.warning("edited diff for %s rejected: %s", fix.id, exc)
        return fix.model_copy(update={"status": "rejected",
                                      "details": {**fix.details, "review_error": str(exc)}})
    return fix.model_copy(update={"diff": diff, "status": "approved",
                                  "details": {**fix.details, "edited_by_reviewer": True}})


def open_prs(state: LoopState, config: RunnableConfig) -> LoopState:
    """Ship each approved fix: a local branch + .patch + PR body; with a token, a draft PR."""
    from .patch import AllowedPaths, GitHubPublisher, publish_fix

    cfg = LoopConfig.resolve(config)
    allowed = AllowedPaths(cfg.allowed_globs)
    github = None
    if cfg.github_repo and cfg.github_token:
        github = GitHubPublisher(cfg.github_repo, cfg.github_token.get_secret_value(),
                                 allowed=allowed, base_url=cfg.github_base_url,
                                 base_branch=cfg.base_branch or "main")
    fixes = [Fix.model_validate(f) for f in state.get("fixes", [])]
    published: list[dict[str, Any]] = []
    out: list[Fix] = []
    for f in fixes:
        if f.status != "approved":
            out.append(f)
            continue
        try:
            res = publish_fix(f, repo_dir=Path(cfg.repo_dir), allowed=allowed,
                              out_dir=Path(cfg.out_dir) if cfg.out_dir else None, github=github,
                              base_branch=cfg.base_branch)
        except LoopError as exc:
            logger.error("could not publish %s: %s", f.id, exc)
            published.append({"fix_id": f.id, "error": str(exc)})
            out.append(f.model_copy(update={"details": {**f.details, "publish_error": str(exc)}}))
            continue
        out.append(res.apply_to(f))
        published.append({"fix_id": f.id, "branch": res.branch, "patch": str(res.patch_path),
                          "body": str(res.body_path), "pr_url": res.pr_url,
                          "github_error": res.github_error})
    return {"fixes": [f.model_dump(mode="json") for f in out], "published": published,
            "log": [f"open_prs: {len(published)} fixes shipped"
                    + (" (local branches; no GitHub configured)" if github is None else "")]}


def record(state: LoopState, config: RunnableConfig) -> LoopState:
    """Save every reviewed fix with its status in the store."""
    cfg = LoopConfig.resolve(config)
    fixes = [Fix.model_validate(f) for f in state.get("fixes", [])]
    _store(cfg).save_fixes(fixes)
    return {"log": [f"record: {len(fixes)} fixes saved"]}


# --- wiring ---------------------------------------------------------------------------------------


def _after_propose(state: LoopState) -> str:
    return "human_review" if state.get("fixes") else "record"


def build_graph(checkpointer: Any = None) -> Any:
    """Compile the improvement graph (pass a checkpointer to pause and resume locally)."""
    g: StateGraph[LoopState] = StateGraph(LoopState)
    g.add_node("load_threads", load_threads)
    g.add_node("measure", measure)
    g.add_node("extract_signals", extract_signals_node)
    g.add_node("assign_intents", assign_intents_node)
    g.add_node("diagnose", diagnose_node)
    g.add_node("propose_fixes", propose_fixes_node)
    g.add_node("human_review", human_review)
    g.add_node("open_prs", open_prs)
    g.add_node("record", record)
    g.add_edge(START, "load_threads")
    g.add_edge("load_threads", "measure")
    g.add_edge("measure", "extract_signals")
    g.add_edge("extract_signals", "assign_intents")
    g.add_edge("assign_intents", "diagnose")
    g.add_edge("diagnose", "propose_fixes")
    g.add_conditional_edges("propose_fixes", _after_propose, ["human_review", "record"])
    g.add_edge("human_review", "open_prs")
    g.add_edge("open_prs", "record")
    g.add_edge("record", END)
    return g.compile(checkpointer=checkpointer, name="loop-middleware")


graph = build_graph()
"""The compiled improvement graph (no checkpointer: the LangGraph server provides one)."""
