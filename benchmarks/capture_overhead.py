"""Per-turn overhead of capture on a real LangGraph agent.

Times the same agent (fake chat model, one tool, checkpointer, multi-turn threads) for N turns:
bare; with ``LoopCallbackHandler``; with OpenInference's ``LangChainInstrumentor`` exporting to an
in-memory span exporter; and with ``LoopCallbackHandler`` on a deliberately slow database (every
write transaction sleeps), to show host latency never waits on the database. The same for a
langchain ``create_agent`` agent: bare, with ``LoopMiddleware``, and with OpenInference. Modes run in
interleaved blocks so machine drift hits them alike. Prints the per-turn median overhead of each
against the bare run, the ratio ours/OpenInference, p99s, and writes
``benchmarks/results/capture_overhead.json``.

    python benchmarks/capture_overhead.py --turns 400
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AnyMessage, SystemMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loop_middleware import LoopCallbackHandler, LoopMiddleware, Store  # noqa: E402

SYSTEM = "You are the support agent of Acme Pay. Answer briefly and politely.\n" * 5


class _Model(GenericFakeChatModel):
    def bind_tools(self, tools: Any, **kw: Any) -> _Model:  # type: ignore[override]
        return self


@tool
def lookup_order(order_id: str) -> str:
    """Look up an order."""
    return f"Order {order_id}: shipped on Monday, arriving Thursday."


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def build_agent() -> Any:
    script = itertools.cycle([
        AIMessage(content="", tool_calls=[{"name": "lookup_order", "args": {"order_id": "A-1"},
                                           "id": "c1", "type": "tool_call"}],
                  usage_metadata={"input_tokens": 120, "output_tokens": 12, "total_tokens": 132}),
        AIMessage(content="Your order A-1 shipped on Monday and arrives Thursday.",
                  usage_metadata={"input_tokens": 160, "output_tokens": 14, "total_tokens": 174}),
    ])
    model = _Model(messages=script)

    def agent(state: State) -> dict[str, Any]:
        return {"messages": [model.invoke([SystemMessage(SYSTEM), *state["messages"]])]}

    g = StateGraph(State)
    g.add_node("agent", agent)
    g.add_node("tools", ToolNode([lookup_order]))
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", tools_condition)
    g.add_edge("tools", "agent")
    return g.compile(checkpointer=InMemorySaver())


def build_create_agent(middleware: list[Any]) -> Any:
    """The same agent as a langchain ``create_agent`` agent (``LoopMiddleware``'s home)."""
    from langchain.agents import create_agent

    model = _Model(messages=itertools.cycle([
        AIMessage(content="", tool_calls=[{"name": "lookup_order", "args": {"order_id": "A-1"},
                                           "id": "c1", "type": "tool_call"}],
                  usage_metadata={"input_tokens": 120, "output_tokens": 12, "total_tokens": 132}),
        AIMessage(content="Your order A-1 shipped on Monday and arrives Thursday.",
                  usage_metadata={"input_tokens": 160, "output_tokens": 14, "total_tokens": 174}),
    ]))
    return create_agent(model, [lookup_order], system_prompt=SYSTEM, middleware=middleware,
                        checkpointer=InMemorySaver())


class SlowStore(Store):
    """A store whose every write transaction takes an extra ``delay`` seconds (a slow database)."""

    delay = 0.05

    def write_rows(self, rows: Any) -> None:
        time.sleep(self.delay)
        super().write_rows(rows)


def run_block(graph: Any, mode: str, turns: int, handler: LoopCallbackHandler | None,
              counter: itertools.count[int]) -> list[float]:
    out = []
    for i in range(turns):
        n = next(counter)
        cfg: dict[str, Any] = {"configurable": {"thread_id": f"{mode}-{n // 5}"}}
        if handler is not None:
            cfg["callbacks"] = [handler]
        t0 = time.perf_counter()
        graph.invoke({"messages": [("user", f"Where is my order A-1? (turn {i})")]}, config=cfg)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=400, help="turns per mode (default 400)")
    ap.add_argument("--blocks", type=int, default=8, help="interleaved blocks per mode (default 8)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "capture_overhead.json")
    args = ap.parse_args()

    from openinference.instrumentation.langchain import LangChainInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    tmp = Path(tempfile.mkdtemp(prefix="loop-bench-"))
    ours = LoopCallbackHandler(Store(f"sqlite:///{tmp / 'ours.db'}"), emit_spans=True)
    slow = LoopCallbackHandler(SlowStore(f"sqlite:///{tmp / 'slow.db'}"), emit_spans=True)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    oi = LangChainInstrumentor()

    graph = build_agent()
    mw = LoopMiddleware(Store(f"sqlite:///{tmp / 'mw.db'}"), emit_spans=True)
    agents = {"agent_bare": build_create_agent([]), "agent_loop_middleware": build_create_agent([mw]),
              "agent_openinference": build_create_agent([])}
    counter = itertools.count()
    # warm-up: imports, first-call caches
    run_block(graph, "warm", 30, None, counter)
    run_block(graph, "warm", 30, ours, counter)
    for a in agents.values():
        run_block(a, "warm", 30, None, counter)
    mw.flush(300)

    per = max(1, args.turns // args.blocks)
    samples: dict[str, list[float]] = {"bare": [], "loop": [], "openinference": [], "loop_slow_db": [],
                                       "agent_bare": [], "agent_loop_middleware": [],
                                       "agent_openinference": []}
    block_medians: dict[str, list[float]] = {k: [] for k in samples}
    drain_s = {"loop": 0.0, "loop_slow_db": 0.0, "agent_loop_middleware": 0.0}

    def block(mode: str) -> None:
        if mode in ("bare", "agent_bare"):
            samples[mode] += run_block(agents.get(mode, graph), mode, per, None, counter)
        elif mode in ("openinference", "agent_openinference"):
            oi.instrument(tracer_provider=provider)
            try:
                samples[mode] += run_block(agents.get(mode, graph), mode, per, None, counter)
            finally:
                oi.uninstrument()
            exporter.clear()
        elif mode == "agent_loop_middleware":
            samples[mode] += run_block(agents[mode], mode, per, None, counter)
            t0 = time.perf_counter()
            mw.flush(300)
            drain_s[mode] += time.perf_counter() - t0
        else:
            h = ours if mode == "loop" else slow
            samples[mode] += run_block(graph, mode, per, h, counter)
            # Drain the background writer before the next block, so its work is not charged
            # to another mode; the drain time is reported on its own.
            t0 = time.perf_counter()
            h.flush(300)
            drain_s[mode] += time.perf_counter() - t0

    modes = list(samples)
    for b in range(args.blocks):
        for mode in modes[b % len(modes):] + modes[: b % len(modes)]:  # rotate the order
            before = len(samples[mode])
            block(mode)
            block_medians[mode].append(statistics.median(samples[mode][before:]))
    stored = Store(f"sqlite:///{tmp / 'ours.db'}").count_threads()

    med = {k: statistics.median(v) for k, v in samples.items()}
    p99 = {k: pct(v, 99) for k, v in samples.items()}
    base = {"loop": "bare", "openinference": "bare", "loop_slow_db": "bare",
            "agent_loop_middleware": "agent_bare", "agent_openinference": "agent_bare"}
    over = {k: med[k] - med[b] for k, b in base.items()}
    ratio = over["loop"] / over["openinference"] if over["openinference"] > 0 else float("nan")
    mw_ratio = (over["agent_loop_middleware"] / over["agent_openinference"]
                if over["agent_openinference"] > 0 else float("nan"))
    # Paired by block (the modes of a block ran back to back): the spread shows the noise.
    paired = {k: sorted(m - b for m, b in zip(block_medians[k], block_medians[base[k]], strict=True))
              for k in base}
    spread = {k: (round(v[len(v) // 4], 3), round(v[(3 * len(v)) // 4], 3)) for k, v in paired.items()}
    result = {
        "turns_per_mode": len(samples["bare"]),
        "median_ms": {k: round(v, 4) for k, v in med.items()},
        "p99_ms": {k: round(v, 4) for k, v in p99.items()},
        "overhead_median_ms": {k: round(v, 4) for k, v in over.items()},
        "ratio_ours_over_openinference": round(ratio, 3),
        "ratio_middleware_over_openinference": round(mw_ratio, 3),
        "overhead_block_paired_iqr_ms": spread,
        "target_ratio_at_most": 0.5,
        "slow_db_write_delay_ms": SlowStore.delay * 1000,
        "slow_db_p99_minus_loop_p99_ms": round(p99["loop_slow_db"] - p99["loop"], 4),
        "writer_drain_ms_per_turn_after_blocks": {
            k: round(v * 1000 / len(samples[k]), 4) for k, v in drain_s.items()},
        "threads_stored": stored,
        "handler_errors": ours.errors + slow.errors,
        "middleware_errors": mw.errors,
        "middleware_threads_stored": Store(f"sqlite:///{tmp / 'mw.db'}").count_threads(),
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
    }
    print(f"turns per mode:               {result['turns_per_mode']}")
    for k in samples:
        print(f"{k:>14}: median {med[k]:7.3f} ms   p99 {p99[k]:7.3f} ms")
    print(f"overhead per turn (median):   loop {over['loop']:.3f} ms, "
          f"openinference {over['openinference']:.3f} ms, loop+slow db {over['loop_slow_db']:.3f} ms")
    print(f"ratio ours/openinference:     {ratio:.3f}  (target <= 0.5)")
    print(f"create_agent overhead (median): LoopMiddleware {over['agent_loop_middleware']:.3f} ms, "
          f"openinference {over['agent_openinference']:.3f} ms, ratio {mw_ratio:.3f}")
    print(f"block-paired overhead, interquartile range (ms): {spread}")
    print(f"slow database ({SlowStore.delay * 1000:.0f} ms per write): p99 {p99['loop_slow_db']:.3f} ms "
          f"vs {p99['loop']:.3f} ms on a fast one")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
