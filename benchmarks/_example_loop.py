"""The whole loop on an example agent other than the demo's, for ``loop_benchmark.py``.

The same steps as ``loop_middleware.demo.run_demo`` (whose host repo, v2 and simulation steps it
calls, on any example that follows ``loopmw demo --example``'s contract): a throw-away git host
repo with prompt v1 then v2, cohort 1 (v1 traffic, then v2), the companion graph (extract,
diagnose, propose with the replay guard), every fix approved and merged (standing in for the
reviewer; the demo's reviewer would reject a fix that asks for policy text it does not have),
cohort 2, measure; no report.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loop_middleware import demo
from loop_middleware.config import LoopConfig
from loop_middleware.store import Store
from loop_middleware.types import Fix

__all__ = ["ExampleSpec", "run_example_loop"]


@dataclass(frozen=True)
class ExampleSpec:
    """An example agent package (``loopmw demo --example`` contract: ``agent.yaml``, ``prompts/``,
    ``prompt_history/v1/``, ``simulate`` and ``build_agent``)."""

    package: str
    """Importable package (``examples.devplatform_agent``) with ``simulate`` and ``build_agent``."""
    folder: Path


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=loop-bench", "-c", "user.email=bench@localhost",
         "-c", "commit.gpgsign=false", *args],
        cwd=repo, check=True, capture_output=True, text=True,
    ).stdout.strip()


def run_example_loop(spec: ExampleSpec, out: Path, *, threads: int, seed: int, embedder: str,
                     on_summary: Callable[[str, Any], None]) -> dict[str, Any]:
    """The loop as ``run_demo`` runs it, on ``spec``; returns the demo's ``summary.json`` shape.

    ``on_summary(prefix, TrafficSummary)`` receives every cohort's ground truth.
    """
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.types import Command

    from loop_middleware.extract import extract
    from loop_middleware.graph import build_graph
    from loop_middleware.measure import measure_all
    from loop_middleware.prompts import sha256_text

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("loop.db*"):
        stale.unlink()
    repo = out / "host_repo"
    demo._host_repo(spec.folder, repo)  # the demo's steps, so the two loops cannot drift apart
    store = Store(f"sqlite:///{out / 'loop.db'}")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    n_v1 = max(threads // 2, 20)
    on_summary("c1v1", demo._simulate(spec.folder, repo, store, n_v1, seed, "c1v1"))
    demo._ship_v2(spec.folder, repo)
    on_summary("c1v2", demo._simulate(spec.folder, repo, store, threads, seed + 1, "c1v2"))
    timings["cohort1_s"] = time.perf_counter() - t

    t = time.perf_counter()
    cfg = LoopConfig(database_url=f"sqlite:///{out / 'loop.db'}", repo_dir=str(repo), embedder=embedder,  # type: ignore[arg-type]
                     allowed_globs=["prompts/**/*.md", "agent.yaml"], config_files=["agent.yaml"],
                     agent_factory=f"{spec.package}:build_agent", agent_config="agent.yaml",
                     out_dir=str(out / "prs"))
    graph = build_graph(checkpointer=InMemorySaver())
    run_cfg: dict[str, Any] = {"configurable": {"thread_id": "bench", "loop": cfg.model_dump()}}
    state = graph.invoke({}, config=run_cfg)
    diagnoses = state.get("diagnoses", [])
    if "__interrupt__" in state:
        state = graph.invoke(Command(resume="approve_all"), config=run_cfg)
    timings["analyze_propose_s"] = time.perf_counter() - t

    shipped: list[Fix] = []
    others: list[Fix] = []
    for f in store.load_fixes():
        if not (f.branch and f.status in ("approved", "opened")):
            others.append(f)
            continue
        try:
            _git(repo, "merge", "--no-ff", "-q", "-m", f"Merge {f.branch}", f.branch)
        except subprocess.CalledProcessError:
            _git(repo, "merge", "--abort")
            others.append(f)
            continue
        shipped.append(f)
    from datetime import UTC, datetime

    merged_at = datetime.now(UTC).isoformat()
    store.save_fixes(others + [
        f.model_copy(update={"status": "merged", "details": {
            **f.details, "merged_at": merged_at,
            **({"after_sha256": sha256_text((repo / f.target_file).read_text(encoding="utf-8"))}
               if str(f.kind) in ("prompt_edit", "revert") else {}),
        }})
        for f in shipped
    ])
    t = time.perf_counter()
    on_summary("c2", demo._simulate(spec.folder, repo, store, threads, seed + 2, "c2"))
    timings["cohort2_s"] = time.perf_counter() - t
    t = time.perf_counter()
    extract(store, mode=embedder)  # type: ignore[arg-type]
    measurements = {m.fix_id: m for m in measure_all(store, alpha=cfg.alpha)}
    timings["measure_s"] = time.perf_counter() - t
    data = {
        "threads": store.count_threads(),
        "diagnoses": [{"id": d["id"], "intent": d["intent_name"], "failure_mode": d["failure_mode"],
                       "signal": d["signal"], "sessions_affected": d["sessions_affected"],
                       "summary": d["summary"]} for d in diagnoses],
        "fixes": [
            {"id": f.id, "diagnosis_id": f.diagnosis_id, "kind": str(f.kind), "title": f.title,
             "target_file": f.target_file, "branch": f.branch, "status": f.status,
             "decision": measurements[f.id].decision if f.id in measurements else "wait",
             "delta": (measurements[f.id].comparison.delta  # type: ignore[union-attr]
                       if f.id in measurements and measurements[f.id].comparison is not None else None),
             "reason": measurements[f.id].reason if f.id in measurements else "not measured"}
            for f in store.load_fixes()
        ],
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    store.close()
    return data


# --- scoring the Kestrel Cloud example ------------------------------------------------------------


@dataclass(frozen=True)
class PlantedDefect:
    """A planted defect of ``examples/devplatform_agent`` (its ``DEFECTS.md``)."""

    key: str
    name: str
    failure: str
    """The ground-truth failure kind (``SimulatedThread.failures``) of a thread that suffered it."""
    target_file: str
    """The file its fix must change."""
    failure_modes: frozenset[str] = frozenset()
    """Failure modes a diagnosis of it may have (empty: any): the mechanism must be named, not
    only the sessions (the upsell read as "the prompt has no api request guidance" is not found)."""


DEVPLATFORM_DEFECTS: tuple[PlantedDefect, ...] = (
    PlantedDefect("a", "tool output cut at 300 chars (agent.yaml)", "truncated_answer", "agent.yaml",
                  frozenset({"truncated_tool_output"})),
    PlantedDefect("b", "prompt upsells instead of helping", "upsold", "prompts/support.md",
                  frozenset({"prompt_instruction"})),
    PlantedDefect("c", "prompt forces English replies", "wrong_language", "prompts/support.md",
                  frozenset({"forced_language"})),
    PlantedDefect("d", "v2 dropped the SSO domain-verification step", "sso_step_missing",
                  "prompts/support.md", frozenset({"regression"})),
)

DEVPLATFORM = ExampleSpec("examples.devplatform_agent",
                          Path(__file__).resolve().parents[1] / "examples" / "devplatform_agent")


def match_planted(failure_mode: str, thread_ids: list[str], truth: Mapping[str, Mapping[str, Any]],
                  defects: tuple[PlantedDefect, ...] = DEVPLATFORM_DEFECTS) -> str | None:
    """The defect a diagnosis names: most of its affected threads really suffered that defect
    (and its failure mode is one the defect allows); None = a false diagnosis."""
    known = [truth[t] for t in thread_ids if t in truth]
    if not known:
        return None
    best: tuple[int, str] | None = None
    for d in defects:
        if d.failure_modes and failure_mode not in d.failure_modes:
            continue
        n = sum(d.failure in t["failures"] for t in known)
        if n * 2 > len(known) and (best is None or n > best[0]):
            best = (n, d.key)
    return best[1] if best else None


def run_devplatform_seed(work: Path, seed: int, threads: int, embedder: str, k: int) -> dict[str, Any]:
    """The loop on the Kestrel Cloud example for one seed, scored against its ground truth."""
    truth: dict[str, dict[str, Any]] = {}

    def keep(prefix: str, summary: Any) -> None:
        for t in summary.threads:
            truth[t.thread_id] = {"intent": t.intent, "failures": list(t.failures), "cohort": prefix}

    t0 = time.perf_counter()
    out = work / f"devplatform-seed{seed}"
    data = run_example_loop(DEVPLATFORM, out, threads=threads, seed=seed, embedder=embedder, on_summary=keep)
    loop_s = time.perf_counter() - t0
    store = Store(f"sqlite:///{out / 'loop.db'}")
    by_id = {d.id: d for d in store.load_diagnoses()}
    store.close()
    rows = []
    for d in data["diagnoses"][:k]:
        dx = by_id.get(d["id"])
        tids = list(dx.details.get("affected_thread_ids", [])) if dx is not None else []
        rows.append({"failure_mode": d["failure_mode"], "signal": d["signal"], "intent": d["intent"],
                     "sessions": d["sessions_affected"], "defect": match_planted(d["failure_mode"], tids, truth),
                     "summary": d["summary"][:300]})
    diag_defect = {i: match_planted(dx.failure_mode, list(dx.details.get("affected_thread_ids", [])), truth)
                   for i, dx in by_id.items()}
    want_file = {d.key: d.target_file for d in DEVPLATFORM_DEFECTS}
    fixes = []
    for f in data["fixes"]:
        defect = diag_defect.get(f["diagnosis_id"])
        delta = f["delta"]
        fixes.append({"kind": f["kind"], "title": f["title"], "target_file": f["target_file"], "defect": defect,
                      "right_file": None if defect is None else f["target_file"] == want_file[defect],
                      "decision": f["decision"], "delta": delta,
                      "right_sign": None if delta is None else delta < 0})
    found = sorted({r["defect"] for r in rows if r["defect"]})
    fixed = sorted({f["defect"] for f in fixes if f["defect"] in found and f["right_file"]})
    rates: dict[str, dict[str, float]] = {}
    for cohort in ("c1v1", "c1v2", "c2"):
        pool = [v for v in truth.values() if v["cohort"] == cohort]
        rates[cohort] = {d.key: round(sum(d.failure in v["failures"] for v in pool) / max(len(pool), 1), 4)
                         for d in DEVPLATFORM_DEFECTS}
        rates[cohort]["any"] = round(sum(bool(v["failures"]) for v in pool) / max(len(pool), 1), 4)
    false = sum(r["defect"] is None for r in rows)
    return {
        "seed": seed, "threads_v1": sum(v["cohort"] == "c1v1" for v in truth.values()),
        "threads_v2": sum(v["cohort"] == "c1v2" for v in truth.values()),
        "diagnoses": len(data["diagnoses"]),
        "loop": {"found": found, "false": false, "top": rows},
        "fixed_right_file": fixed, "fixes": fixes, "truth_failure_rates": rates,
        "target_met": (len(found) == len(DEVPLATFORM_DEFECTS) and false <= 1
                       and fixed == found and all(f["right_sign"] is not False for f in fixes)),
        "loop_seconds": round(loop_s, 1), "timings_s": data["timings_s"],
    }
