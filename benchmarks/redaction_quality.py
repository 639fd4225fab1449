"""Redaction quality and speed.

Runs :class:`loop_middleware.privacy.Redactor` (default settings) over the labelled corpus of
``tests/privacy/corpus.py`` and reports precision and recall per kind and overall (on the main
corpus, which the detectors were tuned on, and on a small held-out set written afterwards), then
times it on
a ~10 MB synthetic support-chat log (ordinary chat lines with the corpus snippets mixed in at 20%)
and reports throughput in MB/s (UTF-8 bytes). Writes ``benchmarks/results/redaction.json``.

    python benchmarks/redaction_quality.py [--mb 10] [--repeat 3]

Also times one line at a time (what capture does per message).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loop_middleware.privacy import Redactor  # noqa: E402
from tests.privacy.corpus import (  # noqa: E402
    HOLDOUT_NEGATIVES,
    HOLDOUT_POSITIVES,
    NEGATIVES,
    POSITIVES,
    score,
)

FILLER = [
    "Hi, I need help with my order, it hasn't arrived yet and the tracking page shows nothing.",
    "Sure! Could you share the order number so I can look it up for you?",
    "Thanks for waiting. I see the package left our warehouse on Tuesday, 2024-06-11 at 14:05.",
    "The refund of $49.90 was issued and should show up within 5-7 business days.",
    "Das Paket ist noch nicht angekommen, können Sie bitte nachsehen?",
    "¿Pueden reembolsar el cargo duplicado en mi cuenta? Gracias.",
    "Je n'arrive pas à me connecter depuis la mise à jour 2.31.0 de l'application.",
    "我的订单还没有到，请帮我查一下物流信息。",
    "Tool call lookup_order(order_id='4829301') returned status=shipped carrier=UPS.",
    "Error: HTTP 503 from https://api.acme.io/v1/orders/4829301 after 30s (request 7f3b2c1d).",
]


def synthetic_log(target_chars: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    snippets = [c.text for c in POSITIVES + NEGATIVES]
    parts: list[str] = []
    size = 0
    while size < target_chars:
        line = rng.choice(snippets) if rng.random() < 0.2 else rng.choice(FILLER)
        speaker = "user" if rng.random() < 0.5 else "assistant"
        parts.append(f"[{speaker}] {line}")
        size += len(parts[-1]) + 1
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=10.0, help="size of the synthetic log (MB)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (the median is reported)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/redaction.json")
    args = parser.parse_args()

    redactor = Redactor()
    per_kind, overall, mistakes = score(
        POSITIVES + NEGATIVES, lambda t: [(f.kind, f.start, f.end) for f in redactor.findings(t)]
    )
    print(
        f"corpus: {len(POSITIVES)} positive cases ({sum(len(c.spans) for c in POSITIVES)} spans), "
        f"{len(NEGATIVES)} negative cases"
    )
    print(f"{'kind':16s} {'precision':>9s} {'recall':>7s} {'tp':>4s} {'fp':>4s} {'missed':>6s}")
    for kind in sorted(per_kind):
        s = per_kind[kind]
        print(f"{kind:16s} {s.precision:9.3f} {s.recall:7.3f} {s.tp:4d} {s.fp:4d} {s.missed:6d}")
    print(
        f"{'OVERALL':16s} {overall.precision:9.3f} {overall.recall:7.3f} {overall.tp:4d} "
        f"{overall.fp:4d} {overall.missed:6d}"
    )
    for what, kind, snippet in mistakes:
        print(f"  {what:22s} {kind:14s} {snippet!r}")

    h_kind, h_overall, h_mistakes = score(
        HOLDOUT_POSITIVES + HOLDOUT_NEGATIVES,
        lambda t: [(f.kind, f.start, f.end) for f in redactor.findings(t)],
    )
    print(
        f"held-out set ({len(HOLDOUT_POSITIVES)} positive, {len(HOLDOUT_NEGATIVES)} negative "
        f"cases, written after tuning): precision {h_overall.precision:.3f}, "
        f"recall {h_overall.recall:.3f}"
    )
    for what, kind, snippet in h_mistakes:
        print(f"  {what:22s} {kind:14s} {snippet!r}")

    log = synthetic_log(int(args.mb * 1_000_000))
    size_mb = len(log.encode("utf-8")) / 1e6
    timings = []
    for _ in range(args.repeat):
        redactor.reset_stats()
        t0 = time.perf_counter()
        redactor.redact(log)
        timings.append(time.perf_counter() - t0)
    stats = redactor.stats
    median = statistics.median(timings)
    throughput = size_mb / median
    print(
        f"synthetic log: {size_mb:.1f} MB, median {median:.2f} s over {args.repeat} runs "
        f"-> {throughput:.2f} MB/s; findings per kind: {redactor.stats}"
    )

    # Capture redacts one message at a time: the per-call cost on short lines matters too.
    lines = log.split("\n")[:20_000]
    t0 = time.perf_counter()
    for line in lines:
        redactor.redact(line)
    per_message_us = (time.perf_counter() - t0) / len(lines) * 1e6
    mean_chars = sum(map(len, lines)) / len(lines)
    print(f"one line at a time: {per_message_us:.1f} µs per line (mean {mean_chars:.0f} chars)")

    result = {
        "corpus": {
            "positive_cases": len(POSITIVES),
            "positive_spans": sum(len(c.spans) for c in POSITIVES),
            "negative_cases": len(NEGATIVES),
        },
        "overall": overall.as_dict(),
        "per_kind": {k: v.as_dict() for k, v in sorted(per_kind.items())},
        "mistakes": [{"what": w, "kind": k} for w, k, _s in mistakes],
        "holdout": {
            "positive_cases": len(HOLDOUT_POSITIVES),
            "negative_cases": len(HOLDOUT_NEGATIVES),
            "overall": h_overall.as_dict(),
            "per_kind": {k: v.as_dict() for k, v in sorted(h_kind.items())},
            "mistakes": [{"what": w, "kind": k} for w, k, _s in h_mistakes],
        },
        "throughput": {
            "log_mb": round(size_mb, 2),
            "runs_s": [round(t, 3) for t in timings],
            "median_s": round(median, 3),
            "mb_per_s": round(throughput, 2),
            "findings_per_kind": stats,
            "per_line_us": round(per_message_us, 1),
            "per_line_mean_chars": round(mean_chars, 1),
        },
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
