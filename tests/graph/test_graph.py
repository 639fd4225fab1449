"""The companion improvement graph on a real store and a real git repository."""

from __future__ import annotations

import subprocess
from typing import Any

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from loop_middleware import Store
from loop_middleware.graph import build_graph, diagnose_node, graph
from tests.graph.conftest import Host


def branches(repo: Any) -> list[str]:
    out = subprocess.run(["git", "branch", "--format=%(refname:short)"], cwd=repo,
                         capture_output=True, text=True, check=True).stdout
    return sorted(b for b in out.split() if b.startswith("loop/"))


def test_interrupt_review_and_resume_ship_only_approved_fixes(host: Host) -> None:
    g = build_graph(checkpointer=InMemorySaver())
    cfg: Any = {"configurable": {"thread_id": "t", "loop": host.config().model_dump()}}
    state = g.invoke({}, config=cfg)
    assert "__interrupt__" in state, state.get("log")
    assert state["diagnoses"], "no diagnosis on a store with planted defects"
    fixes = state["__interrupt__"][0].value["fixes"]
    assert len(fixes) >= 2
    head_before = subprocess.run(["git", "rev-parse", "HEAD"], cwd=host.repo, capture_output=True,
                                 text=True, check=True).stdout
    approve, reject = fixes[0]["id"], fixes[1]["id"]
    decisions = {f["id"]: "reject" for f in fixes} | {approve: "approve"}
    state = g.invoke(Command(resume=decisions), config=cfg)
    statuses = {f["id"]: f["status"] for f in state["fixes"]}
    assert statuses[approve] == "opened" and statuses[reject] == "rejected"
    assert len(branches(host.repo)) == 1
    [pub] = state["published"]
    assert pub["fix_id"] == approve and pub["branch"] in branches(host.repo)
    # the host's checkout is untouched: nothing is merged, HEAD did not move
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=host.repo, capture_output=True,
                          text=True, check=True).stdout == head_before
    stored = {f.id: f.status for f in Store(host.db_url).load_fixes()}
    assert stored[approve] == "opened" and stored[reject] == "rejected"
    assert [line.split(":")[0] for line in state["log"]] == [
        "load_threads", "measure", "extract_signals", "assign_intents", "diagnose",
        "propose_fixes", "human_review", "open_prs", "record"]

    # a second run proposes nothing new for diagnoses that already have an open fix
    g2 = build_graph(checkpointer=InMemorySaver())
    cfg2: Any = {"configurable": {"thread_id": "t2", "loop": host.config().model_dump()}}
    state2 = g2.invoke({}, config=cfg2)
    again = {f["diagnosis_id"] for f in state2.get("fixes", [])}
    assert fixes[0]["id"] not in {f["id"] for f in state2.get("fixes", [])}
    opened_dx = {f.diagnosis_id for f in Store(host.db_url).load_fixes() if f.status == "opened"}
    assert not (again & opened_dx)


def test_nodes_are_usable_on_their_own(host: Host) -> None:
    from loop_middleware.extract import extract

    extract(Store(host.db_url))
    cfg: Any = {"configurable": {"loop": host.config().model_dump()}}
    out = diagnose_node({}, cfg)
    assert out["diagnoses"] and out["log"][0].startswith("diagnose:")
    modes = {d["failure_mode"] for d in out["diagnoses"]}
    assert modes & {"coverage_gap", "ungrounded_answer", "regression", "context_loss"}
    # the exported graph has no checkpointer (the LangGraph server brings its own)
    assert graph.checkpointer is None
