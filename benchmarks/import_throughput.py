"""History import speed: an OpenAI-style JSON Lines file into a fresh SQLite store.

Writes ``--conversations`` synthetic support conversations (system prompt, 3 turns, one tool
round trip in the first, support-chat wording with e-mails and card numbers for the redactor),
imports them with :func:`loop_middleware.capture.import_transcripts` (redaction on, as by
default), then imports the same file again (every row an upsert), and reports conversations/s,
turns/s and MB/s for both. Writes ``benchmarks/results/import.json``.

    python benchmarks/import_throughput.py [--conversations 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loop_middleware import Store  # noqa: E402
from loop_middleware.capture import import_transcripts  # noqa: E402

SYSTEM = "You are the support agent of Acme Pay. Be brief and kind. Use track_order for orders.\n"
ASKS = ["Where is my order {n}? It has not arrived.", "I was charged twice for order {n}, my card is "
        "4111 1111 1111 1111", "Can you send the invoice for {n} to jo.bloggs@example.com?",
        "My refund for order {n} never showed up", "How do I change the address of order {n}?"]
FOLLOW = ["thanks", "that did not help at all", "ok, and when will it arrive?", "can I talk to a human?"]


def history(n: int, path: Path, seed: int = 0) -> int:
    rng = random.Random(seed)
    turns = 0
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            order = str(10_000 + i)
            msgs = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": rng.choice(ASKS).format(n=order)},
                    {"role": "assistant", "content": None, "tool_calls": [{
                        "id": f"call_{i}", "type": "function",
                        "function": {"name": "track_order", "arguments": json.dumps({"order_id": order})}}],
                     "usage": {"prompt_tokens": 420, "completion_tokens": 18}},
                    {"role": "tool", "tool_call_id": f"call_{i}", "content": f"{order}: shipped Monday via UPS"},
                    {"role": "assistant", "content": f"Order {order} shipped on Monday with UPS."}]
            for _ in range(2):
                msgs += [{"role": "user", "content": rng.choice(FOLLOW)},
                         {"role": "assistant", "content": "I understand. Let me check that for you."}]
            turns += 3
            f.write(json.dumps({"id": f"bench-{i}", "created_at": 1_700_000_000 + 60 * i,
                                "messages": msgs}) + "\n")
    return turns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--conversations", type=int, default=5000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "history.jsonl"
        turns = history(args.conversations, path)
        mb = path.stat().st_size / 1e6
        store = Store(f"sqlite:///{Path(d) / 'bench.db'}")
        runs = {}
        for label in ("first", "again"):
            t0 = time.perf_counter()
            report = import_transcripts(store, path)
            secs = time.perf_counter() - t0
            assert report.threads == args.conversations and not report.skipped, report
            runs[label] = {"seconds": round(secs, 2),
                           "conversations_per_s": round(args.conversations / secs, 1),
                           "turns_per_s": round(turns / secs, 1), "mb_per_s": round(mb / secs, 2)}
            print(f"{label:>5}: {args.conversations} conversations ({turns} turns, {mb:.1f} MB) "
                  f"in {secs:.1f} s = {args.conversations / secs:,.0f} conversations/s, "
                  f"{mb / secs:.2f} MB/s")
        assert store.count_threads() == args.conversations
    out = {"conversations": args.conversations, "turns": turns, "file_mb": round(mb, 2), **runs,
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "load_avg": [round(x, 2) for x in os.getloadavg()]}}
    res = ROOT / "benchmarks" / "results" / "import.json"
    res.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {res}")


if __name__ == "__main__":
    main()
