"""``python -m examples.devplatform_agent``: simulate developer traffic on the Kestrel agent, capture it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from loop_middleware import LoopCallbackHandler, Store
from loop_middleware.errors import LoopError

from .agent import DEFAULT_PROMPT_DIR, V1_PROMPT_DIR
from .traffic import simulate


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (returns the exit status)."""
    p = argparse.ArgumentParser(
        prog="python -m examples.devplatform_agent",
        description="Run simulated developers against the Kestrel Cloud support agent with "
        "loop-middleware's LoopCallbackHandler and print what happened. Offline: the LLM is a "
        "scripted simulator.",
    )
    p.add_argument("--threads", type=int, default=50, help="conversations to simulate (default 50)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--db", default="loop.db", help="SQLite file or database URL (default loop.db)")
    p.add_argument("--v1", action="store_true", help=f"use the previous prompt version ({V1_PROMPT_DIR})")
    p.add_argument("--prompt-dir", default=None, help=f"prompt directory (default {DEFAULT_PROMPT_DIR})")
    p.add_argument("--config", default=None, help="harness config (default: the example's agent.yaml)")
    p.add_argument("--prefix", default=None, help="thread id prefix (default dev<seed>)")
    args = p.parse_args(argv)
    prompt_dir = args.prompt_dir or (V1_PROMPT_DIR if args.v1 else DEFAULT_PROMPT_DIR)
    try:
        store = Store(args.db)
        handler = LoopCallbackHandler(store, agent_name="kestrel-devsupport")
        summary = simulate(args.threads, seed=args.seed, prompt_dir=prompt_dir, config_path=args.config,
                           callbacks=[handler], store=store, thread_prefix=args.prefix)
        handler.close()
    except LoopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for t in summary.threads:
        print(f"── {t.thread_id} intent={t.intent} lang={t.language} failures={','.join(t.failures) or '-'}")
        for user, reply in t.transcript:
            print(f"   user : {' '.join(user.split())[:110]}")
            print(f"   agent: {' '.join(reply.split())[:110]}")
    print(f"\n{len(summary.threads)} threads, {summary.n_turns} turns in {summary.elapsed_s:.1f}s; "
          f"captured into {store.safe_url}")
    print("failures:", dict(summary.failures().most_common()), f"(resolved {summary.resolved_rate:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
