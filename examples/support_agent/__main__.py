"""``python -m examples.support_agent``: simulate traffic on the Acme Pay agent, capture it, print it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from loop_middleware import LoopCallbackHandler, Store
from loop_middleware.errors import LoopError
from loop_middleware.types import Thread

from .agent import DEFAULT_PROMPT_DIR, V1_PROMPT_DIR
from .traffic import simulate


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _print_thread(t: Thread, width: int) -> None:
    versions = sorted({pv.short for turn in t.turns for pv in turn.prompt_versions})
    thumbs = [f.label for f in t.feedback if f.label]
    print(f"── {t.thread_id}  turns={len(t.turns)}  prompt={','.join(versions) or '-'}"
          f"{'  feedback=' + ','.join(thumbs) if thumbs else ''}")
    for turn in t.turns:
        tools = ", ".join(
            f"{c.name}({_one_line(str(c.arguments), 40)}){' ERROR' if c.error else ''}"
            for c in turn.tool_calls
        )
        print(f"   [{turn.index}] user : {_one_line(turn.user_text, width)}")
        if tools:
            print(f"       tools: {tools}")
        print(f"       agent: {_one_line(turn.reply_text, width)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (returns the exit status)."""
    p = argparse.ArgumentParser(
        prog="python -m examples.support_agent",
        description="Run simulated customers (seeded with real BANKING77 questions) against the "
        "Acme Pay support agent with loop-middleware's LoopCallbackHandler, then print the "
        "captured threads from the database. Offline: the LLM is a scripted simulator.",
    )
    p.add_argument("--threads", type=int, default=50, help="conversations to simulate (default 50)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--db", default="loop.db", help="SQLite file or database URL (default loop.db)")
    p.add_argument("--prompt-dir", default=None,
                   help=f"prompt directory (default {DEFAULT_PROMPT_DIR}, the current v2)")
    p.add_argument("--v1", action="store_true", help=f"use the previous prompt version ({V1_PROMPT_DIR})")
    p.add_argument("--config", default=None, help="harness config (default: the example's agent.yaml)")
    p.add_argument("--prefix", default=None, help="thread id prefix (default sim<seed>)")
    p.add_argument("--show", type=int, default=None, help="print at most this many threads (default all)")
    p.add_argument("--width", type=int, default=110, help="characters of each message to print")
    args = p.parse_args(argv)

    prompt_dir = args.prompt_dir or (V1_PROMPT_DIR if args.v1 else DEFAULT_PROMPT_DIR)
    try:
        store = Store(args.db)
        handler = LoopCallbackHandler(store, agent_name="acme-support")
        summary = simulate(args.threads, seed=args.seed, prompt_dir=prompt_dir,
                           config_path=args.config, callbacks=[handler], store=store,
                           thread_prefix=args.prefix)
        handler.close()
        ids = summary.thread_ids[: args.show] if args.show is not None else summary.thread_ids
        for t in store.list_threads(thread_ids=ids):
            _print_thread(t, args.width)
    except LoopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"\n{len(summary.threads)} threads, {summary.n_turns} turns simulated in "
          f"{summary.elapsed_s:.1f}s with prompts from {prompt_dir}; captured into {store.safe_url}")
    print("intents :", dict(summary.intents().most_common()))
    print("failures:", dict(summary.failures().most_common()), f"(resolved {summary.resolved_rate:.0%},"
          f" feedback rows {summary.feedback_written})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
