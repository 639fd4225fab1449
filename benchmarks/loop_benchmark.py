"""Does the loop find the example agent's planted defects, and only those? How fast is one turn?

For each seed the whole loop runs offline on the Acme Pay example (``loop_middleware.demo.run_demo``:
cohort 1 = prompt v1 traffic then prompt v2 traffic, the companion graph extracts signals and
intents, diagnoses and proposes fixes, every fix is approved and merged, cohort 2 runs on the fixed
agent, each fix is measured). The simulator's ground truth (``TrafficSummary``: the true intent and
the true failures of every thread) is recorded on the side, and the loop is scored against it:

* **found / false in the top k** (k = 5): a diagnosis is *true* when its failure mode is the one
  that names a planted defect and its evidence is about that defect: the majority true intent of
  its affected threads (``details["affected_thread_ids"]``) is the defect's intent, or the majority
  of those threads really suffered the defect's failure (``SimulatedThread.failures``).

  ====  ==========================  =====================  ==========================
  id    planted defect              failure mode           intent / true failure
  ====  ==========================  =====================  ==========================
  a     no refund policy            ``coverage_gap``       refund / refund_deflected
  b     ungrounded answers          ``ungrounded_answer``  (any) / ungrounded
  c     context cut after turn 8    ``context_loss``       order_status / context_loss
  d     v2 dropped Escalation       ``regression``         wants_human / escalation_refused
  ====  ==========================  =====================  ==========================

  Two diagnoses of one defect (e.g. two refund sub-intents) are both true, but take two slots.
* **threads needed**: the analysis (signals, intents with the same embedder, diagnose) is rerun on
  growing prefixes of cohort 1 (``--prefixes``, steps of 100 by default, then the whole cohort),
  with the v1:v2 mix of the demo (1:2): the smallest prefix from which on the top k holds the
  defect *at every larger prefix* (a defect that shows at 400, drops out at 500 and is back at
  750 needs 750). ``first_found`` is the smallest prefix that holds it at all.
* **no-regression controls**, so that finding the regression is not bought with false ones:

  - *a prompt change that changes nothing*: cohort 1 is simulated again with prompt v1, then a
    v1 with one extra, behaviour-neutral line (the simulator reads only section headings and a
    grounding phrase), so there are two prompt versions and no regression. Every ``regression``
    diagnosis on any prefix is false (defects a-c are still planted and scored);
  - *version labels shuffled within intents* (``--shuffles`` per seed): the full cohort 1's
    signals and intents are kept and each thread's prompt version is permuted among the threads
    of its intent. The share of shuffles with any ``regression`` diagnosis estimates the chance
    of a false regression when a change did nothing (Benjamini-Hochberg caps it at 5%).
* **fix delta signs**: each fix's measured change of its failure rate, cohort 2 vs cohort 1
  (negative = fewer failures = right sign for a fix of a true diagnosis).
* **timing**: one loop iteration (the graph's extract_signals, assign_intents, diagnose and
  propose_fixes nodes, replay guard included) on a fresh store of 1k and 10k threads. The 1k
  store is simulated (1/3 prompt v1, 2/3 v2); larger stores are built by copying its threads with
  new ids in SQL (``INSERT ... SELECT`` with an id suffix), which costs seconds instead of the
  minutes a 10k simulation takes. Copies are exact, so the analysis work per thread is real
  (every thread is detected, embedded and clustered), only the conversations repeat.

Target (issue): every planted defect in the top 5 with at most 1 false diagnosis, from no more
than 500 threads, on every seed (at every prefix from there on).

**The second example** (``--agent devplatform``, or ``both``, the default): the Kestrel Cloud
developer-support agent (``examples/devplatform_agent/``, defects in its ``DEFECTS.md``: tool
output cut by ``agent.yaml``, an upsell instruction, a forced reply language, a v2 regression in
the SSO setup steps) through the same loop (``benchmarks/_example_loop.py``: host repo with v1
then v2, cohort 1, the companion graph, every fix merged, cohort 2, measure). A diagnosis is true
when most of its affected threads really suffered that defect (``SimulatedThread.failures``) and it
names the defect's mechanism (a ``truncated_tool_output``, ``prompt_instruction``,
``forced_language``, ``regression``); its fix must change the defect's file; target: all four in
the graph's top 5, <= 1 false, fixes on the right file, every measured delta negative. Results go
to the ``devplatform`` key of the same JSON (the support agent's numbers are kept when only
``--agent devplatform`` runs).

    python benchmarks/loop_benchmark.py                              # seeds 0,1,2; 500 threads
    python benchmarks/loop_benchmark.py --seeds 0 --threads 200 --sizes 1000
    python benchmarks/loop_benchmark.py --agent devplatform --seeds 0
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `examples.support_agent` and the package from the checkout

from _example_loop import DEVPLATFORM_DEFECTS, run_devplatform_seed  # noqa: E402

import loop_middleware.demo as demo  # noqa: E402
from loop_middleware.config import LoopConfig  # noqa: E402
from loop_middleware.diagnose import DiagnoseConfig, diagnose  # noqa: E402
from loop_middleware.diagnose._hypotheses import thread_main_prompt  # noqa: E402
from loop_middleware.extract import (  # noqa: E402
    build_intent_model,
    default_embedder,
    detect_signals,
    opening_text,
)
from loop_middleware.store import Store  # noqa: E402
from loop_middleware.types import Diagnosis, Intent, PromptVersion, Signal, Thread  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "loop.json"
console = Console(width=140)


# --- ground truth -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Defect:
    """A planted defect and what a diagnosis of it looks like."""

    key: str
    name: str
    failure_mode: str
    intents: frozenset[str]
    """True intents (``TrafficSummary``) the diagnosis may be about; empty = any."""
    failure: str
    """The ground-truth failure kind of a thread that suffered the defect."""


DEFECTS: tuple[Defect, ...] = (
    Defect("a", "no refund policy", "coverage_gap", frozenset({"refund"}), "refund_deflected"),
    Defect("b", "ungrounded answers", "ungrounded_answer", frozenset(), "ungrounded"),
    Defect("c", "context cut after turn 8", "context_loss", frozenset({"order_status"}), "context_loss"),
    Defect("d", "v2 dropped Escalation", "regression", frozenset({"wants_human"}), "escalation_refused"),
)

SUPPORT_FIX_FILES: Mapping[str, str] = {"a": "prompts/support.md", "b": "prompts/support.md",
                                        "c": "agent.yaml", "d": "prompts/support.md"}
"""The file each planted defect's fix must change (``examples/support_agent/DEFECTS.md``)."""

Truth = Mapping[str, Mapping[str, Any]]
"""thread id -> {"intent", "category", "failures", "cohort"}."""


def match_defect(failure_mode: str, thread_ids: Sequence[str], truth: Truth) -> str | None:
    """The key of the planted defect a diagnosis names, or None (a false diagnosis)."""
    known = [truth[t] for t in thread_ids if t in truth]
    if not known:
        return None
    intents = Counter(t["intent"] for t in known)
    top_intent, top_n = intents.most_common(1)[0]
    for d in DEFECTS:
        if d.failure_mode != failure_mode:
            continue
        if not d.intents:
            return d.key
        majority_intent = top_intent in d.intents and top_n * 2 > len(known)
        suffered = sum(d.failure in t["failures"] for t in known) * 2 > len(known)
        if majority_intent or suffered:
            return d.key
    return None


def score(diagnoses: Sequence[Diagnosis], truth: Truth, k: int) -> dict[str, Any]:
    """Found defects and false diagnoses among the first ``k`` diagnoses."""
    rows = []
    for d in diagnoses[:k]:
        tids = list(d.details.get("affected_thread_ids", []))
        known = [truth[t] for t in tids if t in truth]
        intents = Counter(t["intent"] for t in known)
        # What really went wrong in its sessions (the simulator's own failures, planted or not):
        # tells a false diagnosis that restates a planted defect from one about something else.
        failures = Counter(f for t in known for f in set(t["failures"]))
        rows.append({
            "failure_mode": d.failure_mode, "signal": d.signal, "intent": d.intent_name,
            "true_intent": intents.most_common(1)[0][0] if intents else None,
            "true_failures": {f: n for f, n in failures.most_common(3)}, "known": len(known),
            "sessions": d.sessions_affected, "defect": match_defect(d.failure_mode, tids, truth),
        })
    found = sorted({r["defect"] for r in rows if r["defect"]})
    return {"found": found, "false": sum(r["defect"] is None for r in rows), "top": rows}


# --- one seed -----------------------------------------------------------------------------------


@contextlib.contextmanager
def recording_truth() -> Iterator[dict[str, dict[str, Any]]]:
    """Record every simulated thread's ground truth while ``run_demo`` runs.

    ``run_demo`` drops the ``TrafficSummary`` of its cohorts; we wrap its simulation step (the
    same call, unchanged) to keep them.
    """
    truth: dict[str, dict[str, Any]] = {}
    original = demo._simulate

    def wrapped(example: Path, repo: Path, store: Store, n: int, seed: int, prefix: str) -> Any:
        summary = original(example, repo, store, n, seed, prefix)
        for t in summary.threads:
            truth[t.thread_id] = {"intent": t.intent, "category": t.category,
                                  "failures": list(t.failures), "cohort": prefix}
        return summary

    demo._simulate = wrapped
    try:
        yield truth
    finally:
        demo._simulate = original


def _quiet(_: str) -> None:
    pass


def run_loop(work: Path, seed: int, threads: int, embedder: str, reuse: bool) -> tuple[Path, dict[str, Any], Truth]:
    """The demo loop for one seed (or its saved outputs with ``reuse``)."""
    out = work / f"seed{seed}"
    truth_file, summary_file = out / "truth.json", out / "summary.json"
    if reuse and truth_file.exists() and summary_file.exists():
        return out, json.loads(summary_file.read_text()), json.loads(truth_file.read_text())
    with recording_truth() as truth, contextlib.redirect_stderr(io.StringIO()):
        result = demo.run_demo(out, threads=threads, seed=seed, embedder=embedder, say=_quiet)
    truth_file.write_text(json.dumps(truth))
    return out, result.data, truth


def cohort1(store: Store, truth: Truth, prefix: str = "c1") -> tuple[list[Thread], list[Thread]]:
    """Cohort 1's prompt-v1 and prompt-v2 threads, in simulation order."""
    v1 = sorted(t for t, v in truth.items() if v["cohort"] == f"{prefix}v1")
    v2 = sorted(t for t, v in truth.items() if v["cohort"] == f"{prefix}v2")
    return store.list_threads(thread_ids=v1), store.list_threads(thread_ids=v2)


Prepared = tuple[list[Signal], list[Intent], dict[str, str | None]]


def prepare(threads: Sequence[Thread], vectors: Mapping[str, Any], embedder: Any) -> Prepared:
    """What the graph's extraction does, on these threads only: signals, intents, assignments."""
    import numpy as np

    signals = detect_signals(threads)
    ids = [t.thread_id for t in threads if opening_text(t)]
    texts = [opening_text(t) for t in threads if opening_text(t)]
    model, top = build_intent_model(texts, embedder=embedder,
                                    embeddings=np.vstack([vectors[i] for i in ids]))
    return signals, model.intents(), dict(zip(ids, top, strict=True))


def run_diagnose(threads: Sequence[Thread], prepared: Prepared, min_group_size: int,
                 alpha: float) -> list[Diagnosis]:
    signals, intents, assignments = prepared
    found = diagnose(threads, signals, intents, assignments, config=DiagnoseConfig(alpha=alpha))
    return [d for d in found if d.sessions_affected >= min_group_size]


def analyse(threads: Sequence[Thread], vectors: Mapping[str, Any], embedder: Any,
            min_group_size: int, alpha: float) -> list[Diagnosis]:
    """What the graph's analysis does, on these threads only: signals, intents, diagnoses."""
    return run_diagnose(threads, prepare(threads, vectors, embedder), min_group_size, alpha)


def prefix_sizes(requested: Sequence[int], total: int) -> list[int]:
    return sorted({n for n in requested if n < total} | {total})


def stable_from(sizes: Mapping[int, bool]) -> int | None:
    """The smallest size from which on every larger size holds (``None``: not even the largest)."""
    out = None
    for n in sorted(sizes, reverse=True):
        if not sizes[n]:
            break
        out = n
    return out


def embed_all(threads: Sequence[Thread], emb: Any) -> dict[str, Any]:
    texts = [opening_text(t) for t in threads if opening_text(t)]
    return dict(zip([t.thread_id for t in threads if opening_text(t)], emb.embed(texts), strict=True))


# --- no-regression controls -----------------------------------------------------------------------


def serve_with(thread: Thread, version: PromptVersion) -> Thread:
    """The thread as if its main prompt (every call's version with ``version``'s path) had been
    ``version``: only the recorded version changes, the conversation stays."""
    turns = []
    for turn in thread.turns:
        calls = [c.model_copy(update={"prompt_versions": [version if pv.path == version.path else pv
                                                          for pv in c.prompt_versions]})
                 for c in turn.llm_calls]
        turns.append(turn.model_copy(update={"llm_calls": calls}))
    return thread.model_copy(update={"turns": turns})


def shuffled_versions(threads: Sequence[Thread], assignments: Mapping[str, str | None],
                      rng: random.Random) -> list[Thread]:
    """The threads with their main prompt versions permuted among the threads of each intent."""
    mains = [thread_main_prompt(t) for t in threads]
    by_intent: dict[str | None, list[int]] = {}
    for i, t in enumerate(threads):
        by_intent.setdefault(assignments.get(t.thread_id), []).append(i)
    out = list(threads)
    for idx in by_intent.values():
        labels = [mains[i] for i in idx]
        rng.shuffle(labels)
        for i, pv in zip(idx, labels, strict=True):
            old = mains[i]
            if pv is not None and old is not None and pv.sha256 != old.sha256:
                out[i] = serve_with(threads[i], pv)
    return out


def shuffle_null(threads: Sequence[Thread], prepared: Prepared, shuffles: int, seed: int,
                 min_group_size: int, alpha: float) -> dict[str, Any]:
    """Regression diagnoses when the version labels are shuffled within intents (a null)."""
    counts = []
    for i in range(shuffles):
        shuffled = shuffled_versions(threads, prepared[2], random.Random(seed * 100_003 + i))
        found = run_diagnose(shuffled, prepared, min_group_size, alpha)
        counts.append(sum(d.failure_mode == "regression" for d in found))
    return {"shuffles": shuffles, "runs_with_regression": sum(c > 0 for c in counts),
            "regressions": sum(counts)}


NEUTRAL_LINE = "- Thank the customer for their patience when a lookup takes a while.\n"
"""Appended to prompt v1 for the no-regression control: no section heading, no grounding phrase,
nothing the simulator reads, so the agent behaves the same on both versions."""


def run_control(work: Path, seed: int, threads: int, reuse: bool) -> tuple[Path, Truth]:
    """Cohort 1 of the no-regression control: prompt v1, then v1 plus :data:`NEUTRAL_LINE`."""
    out = work / f"control{seed}"
    truth_file = out / "truth.json"
    if reuse and truth_file.exists():
        return out, json.loads(truth_file.read_text())
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("loop.db*"):
        stale.unlink()
    example = demo.find_example(ROOT)
    repo = out / "host_repo"
    demo._host_repo(example, repo)
    store = Store(f"sqlite:///{out / 'loop.db'}")
    with recording_truth() as truth, contextlib.redirect_stderr(io.StringIO()):
        demo._simulate(example, repo, store, max(threads // 2, 20), seed, "k1v1")
        prompt = repo / "prompts" / "support.md"
        prompt.write_text(prompt.read_text(encoding="utf-8").rstrip("\n") + "\n" + NEUTRAL_LINE,
                          encoding="utf-8")
        demo._git(repo, "commit", "-qam", "Prompt v1 with a behaviour-neutral line")
        demo._simulate(example, repo, store, threads, seed + 1, "k1v2")
    store.close()
    truth_file.write_text(json.dumps(truth))
    return out, truth


def score_control(work: Path, seed: int, threads: int, emb: Any, k: int, prefixes: Sequence[int],
                  reuse: bool, min_group_size: int, alpha: float) -> dict[str, Any]:
    out, truth = run_control(work, seed, threads, reuse)
    store = Store(f"sqlite:///{out / 'loop.db'}")
    v1, v2 = cohort1(store, truth, "k1")
    every = v1 + v2
    versions = {pv.sha256 for t in every if (pv := thread_main_prompt(t)) is not None}
    assert len(versions) == 2, f"control seed {seed}: expected two prompt versions, got {len(versions)}"
    vectors = embed_all(every, emb)
    by_size: dict[int, dict[str, Any]] = {}
    for n in prefix_sizes(prefixes, len(every)):
        n1 = round(n * len(v1) / len(every))
        part = v1[:n1] + v2[: n - n1]
        found = analyse(part, vectors, emb, min_group_size, alpha)
        s = score(found, truth, k)
        regs = [d for d in found if d.failure_mode == "regression"]
        top_regs = sum(r["failure_mode"] == "regression" for r in s["top"])
        by_size[n] = {"found": [d for d in s["found"] if d != "d"],
                      # Any regression is false here, whatever its threads' truth.
                      "false": s["false"] + sum(r["failure_mode"] == "regression" and r["defect"] is not None
                                                for r in s["top"]),
                      "regressions": len(regs), "regressions_in_top": top_regs,
                      "regression_diagnoses": [f"{d.intent_name}:{d.signal}" for d in regs]}
    store.close()
    return {"threads_v1": len(v1), "threads_v2": len(v2), "prefixes": by_size,
            "regressions": sum(r["regressions"] for r in by_size.values())}


def run_seed(work: Path, seed: int, threads: int, embedder_mode: str, k: int,
             prefixes: Sequence[int], reuse: bool, control: bool = True,
             shuffles: int = 0) -> dict[str, Any]:
    t0 = time.perf_counter()
    out, data, truth = run_loop(work, seed, threads, embedder_mode, reuse)
    loop_s = time.perf_counter() - t0
    store = Store(f"sqlite:///{out / 'loop.db'}")
    cfg = LoopConfig()
    v1, v2 = cohort1(store, truth)
    emb = default_embedder(embedder_mode)  # type: ignore[arg-type]
    every = v1 + v2
    vectors = embed_all(every, emb)

    # The loop's own diagnoses (on all of cohort 1, intents as the graph assigned them), rescored
    # with the diagnose code as it is now: the stored assignments are those the demo used.
    full = diagnose(every, store.load_signals(thread_ids=[t.thread_id for t in every]),
                    store.load_intents(), store.load_assignments(), config=DiagnoseConfig(alpha=cfg.alpha))
    full = [d for d in full if d.sessions_affected >= cfg.min_group_size]
    loop_score = score(full, truth, k)

    by_size: dict[int, dict[str, Any]] = {}
    full_prep: Prepared | None = None
    for n in prefix_sizes(prefixes, len(every)):
        n1 = round(n * len(v1) / len(every))
        part = v1[:n1] + v2[: n - n1]
        prep = prepare(part, vectors, emb)
        if n == len(every):
            full_prep = prep
        s = score(run_diagnose(part, prep, cfg.min_group_size, cfg.alpha), truth, k)
        by_size[n] = {"found": s["found"], "false": s["false"],
                      "top": [f"{r['failure_mode']}:{r['signal']}@{r['true_intent']}"
                              + (f"={r['defect']}" if r["defect"] else "") for r in s["top"]]}
    # Needed: found at that prefix and at every larger one (a defect that comes and goes is not
    # found reliably until it stays).
    needed = {d.key: stable_from({n: d.key in r["found"] for n, r in by_size.items()}) for d in DEFECTS}
    first_found = {d.key: next((n for n in sorted(by_size) if d.key in by_size[n]["found"]), None)
                   for d in DEFECTS}
    # Target: from the first prefix of at most 500 threads on, every defect found, <= 1 false.
    ok = {n: len(r["found"]) == len(DEFECTS) and r["false"] <= 1 for n, r in by_size.items()}
    ok_from = stable_from(ok)

    fixes = []
    diag_defect = {}
    for d in store.load_diagnoses():
        diag_defect[d.id] = match_defect(d.failure_mode, list(d.details.get("affected_thread_ids", [])), truth)
    for f in data["fixes"]:
        delta = f.get("delta")
        defect = diag_defect.get(f["diagnosis_id"])
        fixes.append({"kind": f["kind"], "title": f["title"], "defect": defect,
                      "target_file": f["target_file"],
                      "right_file": None if defect is None else f["target_file"] == SUPPORT_FIX_FILES[defect],
                      "decision": f["decision"], "delta": delta,
                      "right_sign": None if delta is None else delta < 0})
    c1 = [v for v in truth.values() if v["cohort"].startswith("c1")]
    c2 = [v for v in truth.values() if v["cohort"] == "c2"]
    truth_rates = {
        "cohort1_failed": round(sum(bool(v["failures"]) for v in c1) / len(c1), 4),
        "cohort2_failed": round(sum(bool(v["failures"]) for v in c2) / len(c2), 4) if c2 else None,
    }
    return {
        "seed": seed, "threads_cohort1": len(every), "threads_v1": len(v1), "threads_v2": len(v2),
        "loop": {"found": loop_score["found"], "false": loop_score["false"], "top": loop_score["top"]},
        "prefixes": by_size, "threads_needed": needed, "first_found": first_found,
        "target_met": ok_from is not None and ok_from <= 500,
        "control": (score_control(work, seed, threads, emb, k, prefixes, reuse, cfg.min_group_size, cfg.alpha)
                    if control else None),
        "shuffle_null": (shuffle_null(every, full_prep, shuffles, seed, cfg.min_group_size, cfg.alpha)
                         if shuffles and full_prep is not None else None),
        "fixes": fixes, "truth": truth_rates, "loop_seconds": round(loop_s, 1),
        "demo_timings_s": data.get("timings_s", {}),
    }


# --- timing -------------------------------------------------------------------------------------

_COPY: dict[str, tuple[str, ...]] = {
    # table -> columns that hold ids to suffix (the rest is copied as is)
    "loop_thread": ("thread_id",),
    "loop_turn": ("id", "thread_id"),
    "loop_llm_call": ("id", "turn_id", "thread_id"),
    "loop_tool_call": ("id", "turn_id", "thread_id"),
    "loop_feedback": ("id", "thread_id", "turn_id"),
}


def grow_store(db: Path, copies: int) -> None:
    """Append ``copies - 1`` copies of every captured thread, ids suffixed ``~k``."""
    con = sqlite3.connect(db)
    try:
        for table, id_cols in _COPY.items():
            cols = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
            for k in range(1, copies):
                select = ", ".join(f"{c} || '~{k}'" if c in id_cols else c for c in cols)
                con.execute(f"INSERT INTO {table} ({', '.join(cols)}) SELECT {select} FROM {table} "
                            f"WHERE {id_cols[-1] if table == 'loop_thread' else 'thread_id'} NOT LIKE '%~%'")
        con.commit()
    finally:
        con.close()


def time_iteration(base: Path, repo: Path, size: int, base_size: int, embedder: str) -> dict[str, float]:
    """Seconds per node of one loop iteration on a fresh copy of the base store grown to ``size``."""
    from loop_middleware.graph import (
        assign_intents_node,
        diagnose_node,
        extract_signals_node,
        propose_fixes_node,
    )

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "loop.db"
        shutil.copy(base, db)
        grow_store(db, max(1, round(size / base_size)))
        prs = Path(tmp) / "prs"
        cfg = LoopConfig(database_url=f"sqlite:///{db}", repo_dir=str(repo), embedder=embedder,  # type: ignore[arg-type]
                         allowed_globs=["prompts/**/*.md", "agent.yaml"], config_files=["agent.yaml"],
                         agent_factory="examples.support_agent:build_agent", agent_config="agent.yaml",
                         out_dir=str(prs))
        run: Any = {"configurable": {"loop": cfg.model_dump()}}
        n = Store(f"sqlite:///{db}").count_threads()
        times: dict[str, float] = {"threads": float(n)}
        state: dict[str, Any] = {}
        for name, node in (("extract_signals", extract_signals_node), ("assign_intents", assign_intents_node),
                           ("diagnose", diagnose_node), ("propose_fixes", propose_fixes_node)):
            t = time.perf_counter()
            with contextlib.redirect_stderr(io.StringIO()):
                state.update(node(state, run))  # type: ignore[arg-type]
            times[f"{name}_s"] = round(time.perf_counter() - t, 2)
        times["total_s"] = round(sum(v for k, v in times.items() if k.endswith("_s")), 2)
        times["diagnoses"] = float(len(state.get("diagnoses", [])))
        times["fixes"] = float(len(state.get("fixes", [])))
        return times


def run_timing(work: Path, sizes: Sequence[int], embedder: str, seed: int = 7) -> dict[str, Any]:
    base_size = min(sizes)
    tdir = work / "timing"
    db = tdir / "base.db"
    repo = tdir / "host_repo"
    example = demo.find_example(ROOT)
    if not db.exists():
        tdir.mkdir(parents=True, exist_ok=True)
        demo._host_repo(example, repo)
        store = Store(f"sqlite:///{db}")
        t = time.perf_counter()
        n1 = base_size // 3
        demo._simulate(example, repo, store, n1, seed, "t1")
        demo._ship_v2(example, repo)
        demo._simulate(example, repo, store, base_size - n1, seed + 1, "t2")
        console.print(f"  simulated {base_size} threads in {time.perf_counter() - t:.0f} s")
        store.close()
    default_embedder(embedder).embed(["warm up"])  # type: ignore[arg-type]  # model load off the clock
    out: dict[str, Any] = {}
    for size in sizes:
        out[str(size)] = time_iteration(db, repo, size, base_size, embedder)
        console.print(f"  {size} threads: {out[str(size)]}")
    return {"base_threads": base_size, "growth": "SQL copies of the simulated base store, ids suffixed",
            "by_size": out}


# --- report -------------------------------------------------------------------------------------


def print_table(seeds: Sequence[dict[str, Any]], k: int) -> None:
    tab = Table(title=f"planted defects in the top {k}")
    for col in ("seed", "cohort 1", "found (loop)", "false", "needed a/b/c/d", "target", "fixes (delta<0)",
                "control: regressions / max false", "shuffles with a regression"):
        tab.add_column(col)
    for r in seeds:
        need = "/".join(str(r["threads_needed"][d.key] or "-") for d in DEFECTS)
        fx = r["fixes"]
        signs = f"{sum(bool(f['right_sign']) for f in fx)}/{sum(f['delta'] is not None for f in fx)}"
        ctl = r.get("control")
        ctl_s = (f"{ctl['regressions']} / {max(p['false'] for p in ctl['prefixes'].values())}"
                 if ctl else "-")
        nul = r.get("shuffle_null")
        nul_s = f"{nul['runs_with_regression']}/{nul['shuffles']}" if nul else "-"
        tab.add_row(str(r["seed"]), f"{r['threads_v1']}+{r['threads_v2']}",
                    ",".join(r["loop"]["found"]) or "-", str(r["loop"]["false"]), need,
                    "yes" if r["target_met"] else "no", signs, ctl_s, nul_s)
    console.print(tab)
    for r in seeds:
        console.print(f"seed {r['seed']} top {k}:")
        for row in r["loop"]["top"]:
            console.print(f"   {row['failure_mode']:18} {row['signal']:18} {row['intent'][:34]:34} "
                          f"true={row['true_intent']:13} n={row['sessions']:3}  -> {row['defect'] or 'FALSE'}"
                          + ("" if row["defect"] else f"  (true failures {_failures(row)})"))
        for n, p in r["prefixes"].items():
            console.print(f"   prefix {n:4}: found {','.join(p['found']) or '-':8} false {p['false']}")
        if r.get("control"):
            for n, p in r["control"]["prefixes"].items():
                console.print(f"   control {n:4}: found {','.join(p['found']) or '-':8} false {p['false']} "
                              f"regressions {p['regressions']} {p['regression_diagnoses']}")
        for f in r["fixes"]:
            d = f"{f['delta']:+.3f}" if f["delta"] is not None else "  n/a "
            console.print(f"   fix {f['kind']:14} defect={f['defect'] or '-'} delta={d} {f['decision']:6} {f['title'][:70]}")


def _failures(row: dict[str, Any]) -> str:
    got = row.get("true_failures") or {}
    return ", ".join(f"{k} {v}/{row.get('known', 0)}" for k, v in got.items()) or "none"


def print_devplatform(seeds: Sequence[dict[str, Any]], k: int) -> None:
    tab = Table(title=f"Kestrel Cloud (devplatform) planted defects in the top {k}")
    for col in ("seed", "cohort 1", "diagnoses", "found", "false", "fix on the right file", "fixes (delta<0)",
                "target"):
        tab.add_column(col)
    for r in seeds:
        fx = r["fixes"]
        signs = f"{sum(bool(f['right_sign']) for f in fx)}/{sum(f['delta'] is not None for f in fx)}"
        tab.add_row(str(r["seed"]), f"{r['threads_v1']}+{r['threads_v2']}", str(r["diagnoses"]),
                    ",".join(r["loop"]["found"]) or "-", str(r["loop"]["false"]),
                    ",".join(r["fixed_right_file"]) or "-", signs, "yes" if r["target_met"] else "no")
    console.print(tab)
    for r in seeds:
        console.print(f"seed {r['seed']} top {k}:")
        for row in r["loop"]["top"]:
            console.print(f"   {row['failure_mode']:18} {row['signal']:22} {row['intent'][:40]:40} "
                          f"n={row['sessions']:3}  -> {row['defect'] or 'FALSE'}")
        for f in r["fixes"]:
            d = f"{f['delta']:+.3f}" if f["delta"] is not None else "  n/a "
            console.print(f"   fix {f['kind']:12} {f['target_file']:20} defect={f['defect'] or '-'} "
                          f"delta={d} {f['decision']:6} {f['title'][:60]}")
        console.print(f"   true failure rates per cohort: {r['truth_failure_rates']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agent", default="both", choices=("both", "support", "devplatform"),
                    help="which example agent(s) to run the loop on (default both; the other agent's "
                         "numbers already in --out are kept)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated simulation seeds (default 0,1,2)")
    ap.add_argument("--threads", type=int, default=500,
                    help="threads per prompt-v2 cohort (v1 gets half as many before it; default 500)")
    ap.add_argument("--prefixes", default="100,200,300,400,500",
                    help="cohort-1 prefix sizes for 'threads needed' (the full cohort is added)")
    ap.add_argument("--sizes", default="1000,10000", help="store sizes timed for one loop iteration ('' = skip)")
    ap.add_argument("--k", type=int, default=5, help="top k diagnoses scored (default 5)")
    ap.add_argument("--embedder", default="default", choices=("default", "fast", "tfidf"))
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the simulated loops in --work (rescore with the current diagnose code)")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"results JSON (default {RESULTS})")
    ap.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                    help="run the no-regression control (a prompt change that changes nothing)")
    ap.add_argument("--shuffles", type=int, default=20,
                    help="version-label shuffles within intents per seed (a null; 0 = skip)")
    args = ap.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="loop-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    prefixes = [int(s) for s in args.prefixes.split(",") if s.strip()]
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    previous: dict[str, Any] = {}
    if args.out.exists():
        with contextlib.suppress(ValueError):
            previous = json.loads(args.out.read_text())
    out: dict[str, Any] = dict(previous) if args.agent == "devplatform" else {}
    if args.agent in ("both", "support"):
        results = []
        for seed in seeds:
            console.print(f"support seed {seed}: loop on {args.threads} threads ...")
            results.append(run_seed(work, seed, args.threads, args.embedder, args.k, prefixes, args.reuse,
                                    control=args.control, shuffles=args.shuffles))
        print_table(results, args.k)
        timing = run_timing(work, sizes, args.embedder) if sizes else {}
        # The support agent's numbers stay at the top level (the layout earlier results used).
        out = {
            "k": args.k, "threads": args.threads, "embedder": args.embedder,
            "target": "every planted defect in the top 5 with at most 1 false diagnosis, "
                      "from <= 500 threads, on every seed",
            "target_met": all(r["target_met"] for r in results),
            "no_regression_controls": {
                "control_regressions": (sum(r["control"]["regressions"] for r in results)
                                        if args.control else None),
                "shuffles_with_regression": (sum(r["shuffle_null"]["runs_with_regression"] for r in results)
                                             if args.shuffles else None),
                "shuffles": args.shuffles * len(results) if args.shuffles else 0,
            },
            "defects": {d.key: {"name": d.name, "failure_mode": d.failure_mode,
                                "intents": sorted(d.intents), "failure": d.failure} for d in DEFECTS},
            "seeds": results, "timing": timing,
            "machine": {"python": platform.python_version(), "platform": platform.platform()},
            "devplatform": previous.get("devplatform"),
        }
    if args.agent in ("both", "devplatform"):
        dev = []
        for seed in seeds:
            console.print(f"devplatform seed {seed}: loop on {args.threads} threads ...")
            dev.append(run_devplatform_seed(work, seed, args.threads, args.embedder, args.k))
        print_devplatform(dev, args.k)
        out["devplatform"] = {
            "k": args.k, "threads": args.threads, "embedder": args.embedder,
            "target": "every planted defect in the top 5 with its fix against the right file, <= 1 false "
                      "diagnosis in the top 5, every fix's measured delta the right sign",
            "target_met": all(r["target_met"] for r in dev),
            "defects": {d.key: {"name": d.name, "failure": d.failure, "target_file": d.target_file,
                                "failure_modes": sorted(d.failure_modes)} for d in DEVPLATFORM_DEFECTS},
            "seeds": dev,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str) + "\n")
    console.print(f"support target met: {out.get('target_met')}   devplatform target met: "
                  f"{(out.get('devplatform') or {}).get('target_met')}   results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
