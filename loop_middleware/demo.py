"""``loopmw demo``: the whole loop, offline, on the example agent with planted defects.

cohort 1 (prompt v1, then the current v2) → analyze → diagnose → propose (branches in a
throw-away git copy of the example) → apply the approved fixes (standing in for a human merge) →
cohort 2 → measure → HTML report + ``summary.json``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .config import LoopConfig
from .errors import ConfigError, LoopError
from .store import Store
from .types import Fix

__all__ = ["DemoResult", "find_example", "run_demo"]

Say = Callable[[str], None]


@dataclass
class DemoResult:
    """Where the demo wrote its outputs, and what it found."""

    out_dir: Path
    report: Path
    summary: Path
    repo: Path
    data: dict[str, Any] = field(default_factory=dict)


def find_example(start: Path | None = None) -> Path:
    """The ``examples/support_agent`` folder of a loop-middleware checkout (searched upwards)."""
    here = (start or Path.cwd()).resolve()
    for base in (here, *here.parents):
        cand = base / "examples" / "support_agent"
        if (cand / "agent.py").exists():
            return cand
    pkg_root = Path(__file__).resolve().parents[1]
    cand = pkg_root / "examples" / "support_agent"
    if (cand / "agent.py").exists():
        return cand
    raise ConfigError("examples/support_agent not found: run the demo from a loop-middleware "
                      "checkout, or pass --example PATH")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=loop-demo", "-c", "user.email=demo@localhost",
         "-c", "commit.gpgsign=false", *args],
        cwd=repo, check=True, capture_output=True, text=True,
    ).stdout.strip()


def _package(example: Path) -> str:
    """The example's importable package (``examples.support_agent``): ``simulate`` and
    ``build_agent`` come from there."""
    return f"{example.parent.name}.{example.name}"


def _title(example: Path) -> str:
    """The example's name from its README's first heading ("Acme Pay: the example ..." -> "Acme
    Pay"), else its folder name."""
    readme = example / "README.md"
    if readme.is_file():
        for line in readme.read_text(encoding="utf-8").splitlines():
            if line.startswith("# "):
                return line[2:].split(":", 1)[0].strip()
    return example.name


def _host_config(example: Path) -> str:
    """The example's ``agent.yaml`` with each top-level setting that names one of the example's
    own data files or folders (``kb_dir: kb``) made absolute: the harness finds its data where it
    is, and the host repo holds only what a fix may change (prompts and harness settings)."""
    lines = []
    for line in (example / "agent.yaml").read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition(":")
        value = value.strip()
        if (sep and not line[:1].isspace() and not key.startswith("#") and value
                and not value.startswith(("[", "{", "/", "'", '"')) and value != "prompts"
                and (example / value).exists()):
            line = f"{key}: {example / value}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _host_repo(example: Path, repo: Path) -> None:
    """A throw-away git copy of the example's own files (prompts and harness config), with the
    prompt's history: v1 (``prompt_history/v1/``), then the current v2 that (by mistake)
    regressed."""
    if repo.exists():
        shutil.rmtree(repo)
    (repo / "prompts").mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    (repo / "agent.yaml").write_text(_host_config(example), encoding="utf-8")
    # Two fixes may edit the same prompt: a reviewer merging both keeps both (union merge).
    (repo / ".gitattributes").write_text("prompts/*.md merge=union\n", encoding="utf-8")
    for prompt in sorted((example / "prompt_history" / "v1").glob("*.md")):
        shutil.copy(prompt, repo / "prompts" / prompt.name)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", f"{_title(example)} agent, prompt v1")


def _review(fixes: list[Fix], example: Path, repo: Path, say: Say) -> dict[str, Any]:
    """The simulated reviewer's answer: approve each finished fix; where a drafted section asks
    for policy text (``Fix.placeholders``), write the example company's own policy in (from
    ``reviewer/policies.yaml`` of the example, which the loop never reads) and approve the
    edited diff; reject a fix whose policy the reviewer does not know."""
    import yaml

    from .patch import apply_unified_diff, make_diff

    path = example / "reviewer" / "policies.yaml"
    known: dict[str, list[str]] = {}
    if path.is_file():
        known = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out: dict[str, Any] = {}
    for f in fixes:
        if not f.placeholders:
            out[f.id] = "approve"
            continue
        before = (repo / f.target_file).read_text(encoding="utf-8")
        after = apply_unified_diff(before, f.diff)
        heading = next((ln[3:].strip() for ln in f.diff.splitlines() if ln.startswith("+## ")), "")
        policy = known.get(heading)
        if not policy:
            say(f"      reject {f.id}: it asks for '{heading}' text the reviewer does not have")
            out[f.id] = "reject"
            continue
        holes = {f"- {p}" for p in f.placeholders}
        lines, filled = [], False
        for line in after.splitlines(keepends=True):
            if line.rstrip("\r\n") in holes:
                if not filled:
                    lines += [f"- {item}\n" for item in policy]
                    filled = True
                continue
            lines.append(line)
        out[f.id] = {"diff": make_diff(f.target_file, before, "".join(lines))}
        say(f"      {f.id}: the loop left {len(f.placeholders)} placeholder(s) in '{heading}'; the "
            f"reviewer wrote the example's own policy in (from {path.relative_to(example.parent)}, "
            "which the loop never reads) and approved the edited diff")
    approved = sum(1 for v in out.values() if v != "reject")
    say(f"      {approved} of {len(fixes)} fixes approved")
    return out


def _ship_v2(example: Path, repo: Path) -> None:
    for prompt in sorted((example / "prompts").glob("*.md")):
        shutil.copy(prompt, repo / "prompts" / prompt.name)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "Tidy up the prompt (v2)")


def _simulate(example: Path, repo: Path, store: Store, n: int, seed: int, prefix: str) -> Any:
    import importlib

    from .capture import LoopCallbackHandler

    simulate = importlib.import_module(_package(example)).simulate

    handler = LoopCallbackHandler(store, emit_spans=False)
    try:
        summary = simulate(n, seed=seed, prompt_dir=repo / "prompts", config_path=repo / "agent.yaml",
                           callbacks=[handler], store=store, thread_prefix=prefix)
    finally:
        handler.close()
    return summary


def run_demo(
    out_dir: Path,
    *,
    threads: int = 400,
    seed: int = 0,
    embedder: str = "default",
    example: Path | None = None,
    say: Say = print,
) -> DemoResult:
    """Run the whole loop offline and write ``report.html`` and ``summary.json`` in ``out_dir``.

    Args:
        out_dir: Output folder (created; its earlier demo files are replaced).
        threads: Threads of the current prompt in cohort 1 (v1 gets half as many before it),
            and threads in cohort 2.
        seed: Simulation seed.
        embedder: Intent embeddings (``default``, ``fast``, ``tfidf``).
        example: The example agent folder (default: found from the current directory).
        say: Where progress lines go.
    """
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.types import Command

    from .graph import build_graph

    t_start = time.perf_counter()
    example = (example or find_example()).resolve()
    if str(example.parents[1]) not in sys.path:
        sys.path.insert(0, str(example.parents[1]))  # makes `examples.<example>` importable
    if not (example / "agent.yaml").is_file() or not (example / "prompt_history" / "v1").is_dir():
        raise ConfigError(f"{example} is not an example agent: it needs agent.yaml, prompts/ and "
                          "prompt_history/v1/ (see examples/support_agent)")
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    db = out_dir / "loop.db"
    for stale in out_dir.glob("loop.db*"):
        stale.unlink()
    repo = out_dir / "host_repo"
    _host_repo(example, repo)
    store = Store(f"sqlite:///{db}")
    timings: dict[str, float] = {}

    # 1. cohort 1: production traffic on prompt v1, then on the current v2
    t = time.perf_counter()
    n_v1 = max(threads // 2, 20)
    say(f"[1/7] cohort 1: {n_v1} conversations on prompt v1, then {threads} on v2 "
        "(simulated users; the agent's LLM is a labelled offline simulator)")
    _simulate(example, repo, store, n_v1, seed, "c1v1")
    _ship_v2(example, repo)
    _simulate(example, repo, store, threads, seed + 1, "c1v2")
    timings["cohort1_s"] = time.perf_counter() - t

    # 2-4. the companion graph: extract, diagnose, propose, then pause for review
    t = time.perf_counter()
    say("[2/7] analyze: failure signals, intents, root causes (companion LangGraph graph)")
    loop_cfg = LoopConfig(
        database_url=f"sqlite:///{db}", repo_dir=str(repo), embedder=embedder,  # type: ignore[arg-type]
        allowed_globs=["prompts/**/*.md", "agent.yaml"], config_files=["agent.yaml"],
        agent_factory=f"{_package(example)}:build_agent", agent_config="agent.yaml",
        out_dir=str(out_dir / "prs"),
    )
    graph = build_graph(checkpointer=InMemorySaver())
    run_cfg: dict[str, Any] = {"configurable": {"thread_id": "demo", "loop": loop_cfg.model_dump()}}
    state = graph.invoke({}, config=run_cfg)
    timings["analyze_propose_s"] = time.perf_counter() - t
    diagnoses = state.get("diagnoses", [])
    for i, d in enumerate(diagnoses[:8], 1):
        say(f"      {i}. [{d['failure_mode']}] {d.get('headline') or d['summary'][:220]}")
    fixes = state.get("fixes", [])
    say(f"[3/7] propose: {len(fixes)} fixes as reviewable diffs (replayed against the agent first)")
    for f in fixes:
        say(f"      - {f['title']} -> {f['target_file']} ({f['kind']})")

    # 5. human review (the demo stands in for the reviewer), open PRs as branches
    t = time.perf_counter()
    if "__interrupt__" in state:
        say("[4/7] human review: the demo stands in for a human reviewer")
        decisions = _review([Fix.model_validate(f) for f in fixes], example, repo, say)
        state = graph.invoke(Command(resume=decisions), config=run_cfg)
    published = state.get("published", [])
    for p in published:
        say(f"      branch {p.get('branch')}  patch {p.get('patch')}")
    timings["review_publish_s"] = time.perf_counter() - t

    # 6. merge (standing in for a human merge)
    say("[5/7] merge: applying the approved branches to main (the demo stands in for a human "
        "merge; nothing is ever merged by the loop itself)")
    from .prompts import sha256_text

    merged_at = datetime.now(UTC).isoformat()
    shipped: list[Fix] = []
    others: list[Fix] = []
    for f in store.load_fixes():
        if not (f.branch and f.status in ("approved", "opened")):
            others.append(f)
            continue
        try:
            _git(repo, "merge", "--no-ff", "-q", "-m", f"Merge {f.branch}: {f.title}", f.branch)
        except subprocess.CalledProcessError as exc:
            _git(repo, "merge", "--abort")
            say(f"      could not merge {f.branch}: {exc.stderr.strip()[:200]}")
            others.append(f)
            continue
        shipped.append(f)
    # Several fixes may land in one prompt file together: each one's "after" cohort is the
    # traffic served by the file as merged, its "before" cohort the version it was made against.
    final_fixes = others + [
        f.model_copy(update={"status": "merged", "details": {
            **f.details, "merged_at": merged_at,
            **({"after_sha256": sha256_text((repo / f.target_file).read_text(encoding="utf-8"))}
               if str(f.kind) in ("prompt_edit", "revert") else {}),
        }})
        for f in shipped
    ]
    store.save_fixes(final_fixes)

    # 7. cohort 2 on the merged prompt and config, then measure
    t = time.perf_counter()
    say(f"[6/7] cohort 2: {threads} conversations on the fixed agent")
    _simulate(example, repo, store, threads, seed + 2, "c2")
    timings["cohort2_s"] = time.perf_counter() - t
    t = time.perf_counter()
    from .extract import extract
    from .measure import measure_all

    extract(store, mode=embedder)  # type: ignore[arg-type]
    measurements = measure_all(store, alpha=loop_cfg.alpha)
    for m in measurements:
        say(f"      {m.decision.upper():6} {m.fix_id}: {m.reason}")
    timings["measure_s"] = time.perf_counter() - t

    t = time.perf_counter()
    from .report import render_report
    from .report._build import build_report_data

    report = render_report(build_report_data(store, title=f"loop-middleware demo: {_title(example)} agent",
                                             min_group_size=loop_cfg.min_group_size),
                           out_dir / "report.html")
    timings["report_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start

    by_fix = {m.fix_id: m for m in measurements}
    data = {
        "threads": store.count_threads(),
        "diagnoses": [
            {"id": d["id"], "intent": d["intent_name"], "intent_id": d["intent_id"],
             "failure_mode": d["failure_mode"], "signal": d["signal"],
             "share_of_sessions": d["share_of_sessions"], "sessions_affected": d["sessions_affected"],
             "summary": d["summary"]}
            for d in diagnoses
        ],
        "fixes": [
            {"id": f.id, "diagnosis_id": f.diagnosis_id, "kind": str(f.kind), "title": f.title,
             "target_file": f.target_file, "branch": f.branch, "status": f.status,
             "decision": by_fix[f.id].decision if f.id in by_fix else "wait",
             "delta": (by_fix[f.id].comparison.delta  # type: ignore[union-attr]
                       if f.id in by_fix and by_fix[f.id].comparison is not None else None),
             "reason": by_fix[f.id].reason if f.id in by_fix else "not measured"}
            for f in store.load_fixes()
        ],
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    summary = out_dir / "summary.json"
    summary.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    say(f"[7/7] report: {report}")
    say(f"      summary: {summary}   ({timings['total_s']:.0f} s)")
    return DemoResult(out_dir=out_dir, report=report, summary=summary, repo=repo, data=data)


def _check(result: DemoResult) -> None:  # pragma: no cover - used by the CLI
    if not result.report.exists():
        raise LoopError("the demo did not write its report")
