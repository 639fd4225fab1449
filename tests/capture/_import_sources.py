"""Exports to import, made by the real tools: a LangGraph agent traced by langsmith's own
``LangChainTracer`` (what it would send to LangSmith is kept instead of sent), and the same
runs captured live by ``LoopCallbackHandler`` to compare with."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from langchain_core.tracers.langchain import LangChainTracer
from langsmith import Client
from langsmith._internal._serde import dumps_json
from langsmith.schemas import Feedback

from loop_middleware import LoopCallbackHandler
from tests._fakes import fake_model, reply, tool_call
from tests.capture.test_handler import SYSTEM, build_graph, flaky_refund, order_lookup

__all__ = ["SYSTEM", "CapturingClient", "langsmith_export"]


class CapturingClient(Client):
    """langsmith's client, keeping each run it would POST (create) and PATCH (update)."""

    def __init__(self) -> None:
        super().__init__(api_key="test-key", api_url="http://127.0.0.1:9", auto_batch_tracing=False)
        self.captured: dict[str, dict[str, Any]] = {}

    def create_run(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        self.captured[str(kwargs["id"])] = dict(kwargs)

    def update_run(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        rid = str(kwargs.pop("run_id", args[0] if args else None))
        self.captured.setdefault(rid, {"id": rid}).update(kwargs)


# (thread id, [(user text, the host model's scripted messages for that turn)])
SCRIPT = [
    ("ls-conv-1", [
        ("Where is order 12?", [tool_call("order_lookup", {"order_id": "12"}, "call-a"),
                                reply("Order 12 shipped on Monday.")]),
        ("Then refund order 12 please, my card is 4111 1111 1111 1111",
         [tool_call("flaky_refund", {"order_id": "12"}, "call-b"),
          reply("Sorry, the refund service is down.")]),
    ]),
    ("ls-conv-2", [("hello, who are you?", [reply("I am the Acme support agent.")])]),
]


def langsmith_export(tmp_path: Path, *, live_url: str | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """Run the scripted conversations through a real LangGraph agent with a real
    ``LangChainTracer``; write the runs as ``list_runs()`` would return them (JSON Lines, one
    run per line, with the token counts and status the server adds) and feedback records.
    With ``live_url``, the same runs are also captured live by ``LoopCallbackHandler``."""
    client = CapturingClient()
    tracer = LangChainTracer(client=client, project_name="support-prod")
    handler = LoopCallbackHandler(live_url, emit_spans=False) if live_url else None
    for thread_id, turns in SCRIPT:
        graph = build_graph(fake_model(*(m for _, msgs in turns for m in msgs)),
                            [order_lookup, flaky_refund])
        for text, _ in turns:
            callbacks: list[Any] = [tracer] + ([handler] if handler else [])
            graph.invoke({"messages": [("user", text)]},
                         config={"callbacks": callbacks, "configurable": {"thread_id": thread_id}})
    tracer.wait_for_futures()
    if handler is not None:
        handler.flush()
        handler.close()
    project = str(uuid.uuid4())
    runs = []
    for raw in client.captured.values():
        run = json.loads(dumps_json(raw))
        run.pop("session_name", None)
        run["session_id"] = project  # the project's id, never a conversation's
        run["status"] = "error" if run.get("error") else "success"
        usage = (run.get("extra") or {}).get("metadata", {}).get("usage_metadata")
        if run["run_type"] == "llm" and usage:  # what the server derives from the same numbers
            run["prompt_tokens"], run["completion_tokens"] = usage["input_tokens"], usage["output_tokens"]
            run["total_tokens"] = usage["total_tokens"]
        runs.append(run)
    path = tmp_path / "langsmith_runs.jsonl"
    lines = [json.dumps(r) for r in runs]
    # Feedback on the first conversation's last turn, as list_feedback() returns it.
    last_root = max((r for r in runs if not r.get("parent_run_id") and
                     r["extra"]["metadata"].get("thread_id") == "ls-conv-1"),
                    key=lambda r: r["start_time"])
    fb = Feedback(id=uuid.uuid4(), run_id=uuid.UUID(last_root["id"]), trace_id=uuid.UUID(last_root["id"]),
                  key="user_score", score=0, comment="did not get my refund",
                  created_at=last_root["end_time"], modified_at=last_root["end_time"])
    lines.append(fb.model_dump_json())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, runs
