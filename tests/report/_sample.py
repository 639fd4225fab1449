"""A realistic :class:`ReportData` for the report tests: a SaaS support agent after two weeks.

The numbers are consistent with each other (intent sizes, matrix rates, diagnosis rates) and the
fix measurements come from the real measure stage (:func:`compare_rates`, Wilson intervals), so
the page shows what the loop would really show. One thread carries hostile text (``<script>``,
an ``onerror`` image, Markdown and raw HTML) to prove it is rendered as text.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from loop_middleware.measure._stats import compare_rates, wilson_interval
from loop_middleware.report._model import (
    FailureModeTimeline,
    FixMeasurement,
    HealthEvent,
    LoopHealth,
    MeasurementPoint,
    ReportData,
    SignalCell,
    Totals,
)
from loop_middleware.types import (
    Diagnosis,
    Evidence,
    Feedback,
    Fix,
    FixKind,
    Intent,
    LLMCall,
    Message,
    PromptVersion,
    Signal,
    Thread,
    ToolCall,
    Turn,
)

T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)

XSS_SCRIPT = "<script>window.__xss = 'script'</script>"
XSS_IMG = "<img src=x onerror=\"window.__xss = 'img'\">"
XSS_MARKDOWN = "**bold** [click me](javascript:window.__xss='md') <b>raw html</b>"
XSS_THREAD_ID = "th-xss-0007"
REFUND_THREAD_ID = "th-refund-0042"
REFUND_TEXT = "I was charged for the annual plan but I cancelled within 14 days"
REFUND_FOLLOWUP = "That's useless. The billing page says to contact support. You ARE support!!"


def _pv(name: str, text: str) -> PromptVersion:
    return PromptVersion(
        sha256=hashlib.sha256(text.encode()).hexdigest(), text=text, name=name,
        path=f"prompts/{name}.md", git_commit="3f2a9c1",
    )


SUPPORT_V1 = _pv("support", "You are Acme Cloud's support assistant. Be concise.")
SUPPORT_V2 = _pv(
    "support",
    "You are Acme Cloud's support assistant. Be concise.\n\n## Refunds\nAnnual plans cancelled "
    "within 14 days are refunded in full: call `issue_refund`.",
)
ROUTER_V1 = _pv("router", "Classify the user's request into one of: billing, tech, account.")


def _turn(
    thread_id: str, index: int, user: str, reply: str, at: datetime, *,
    tools: list[ToolCall] | None = None, pv: PromptVersion = SUPPORT_V1,
    llm_error: str | None = None,
) -> Turn:
    tools = tools or []
    messages = [Message(role="user", content=user)]
    seq = 0
    calls = [LLMCall(id=f"{thread_id}-{index}-r", seq=seq, model="gpt-4o-mini", provider="openai",
                     prompt_versions=[ROUTER_V1], input_tokens=180, output_tokens=4,
                     latency_ms=310.0, finish_reason="stop", started_at=at)]
    for tool in tools:
        seq += 1
        calls.append(LLMCall(
            id=f"{thread_id}-{index}-c{seq}", seq=seq, model="gpt-4o", provider="openai",
            prompt_versions=[pv], input_tokens=640, output_tokens=38, latency_ms=1180.0,
            finish_reason="tool_calls", started_at=at,
        ))
        messages.append(Message(role="assistant", content="",
                                tool_calls=[{"id": tool.tool_call_id, "name": tool.name,
                                             "args": tool.arguments}]))
        seq += 1
        tool.seq = seq
        messages.append(Message(role="tool", content=tool.error or tool.result or "",
                                tool_call_id=tool.tool_call_id, name=tool.name))
    seq += 1
    calls.append(LLMCall(
        id=f"{thread_id}-{index}-f", seq=seq, model="gpt-4o", provider="openai",
        prompt_versions=[pv], input_tokens=720, output_tokens=96, latency_ms=2150.0,
        finish_reason="stop" if llm_error is None else None, error=llm_error, started_at=at,
    ))
    messages.append(Message(role="assistant", content=reply))
    return Turn(id=f"{thread_id}-t{index}", thread_id=thread_id, index=index, messages=messages,
                llm_calls=calls, tool_calls=tools, started_at=at,
                ended_at=at + timedelta(seconds=4), latency_ms=3900.0)


def sample_threads() -> list[Thread]:
    """Five evidence threads: refund gap, webhook tool errors, SSO context loss, hostile text."""
    refund = Thread(thread_id=REFUND_THREAD_ID, user_id="u-311", created_at=T0 + timedelta(days=3),
                    turns=[
        _turn(REFUND_THREAD_ID, 0, REFUND_TEXT + ". Can I get my money back?",
              "I'm sorry, I can't help with refunds. Please check our billing page.",
              T0 + timedelta(days=3)),
        _turn(REFUND_THREAD_ID, 1, REFUND_FOLLOWUP,
              "I understand your frustration. I can't process refunds, but a human agent can.",
              T0 + timedelta(days=3, minutes=2)),
    ], feedback=[Feedback(id="fb-1", thread_id=REFUND_THREAD_ID, kind="feedback", score=0.0,
                          label="thumbs_down", comment="bot refused a valid refund")])
    refund2 = Thread(thread_id="th-refund-0057", user_id="u-902",
                     created_at=T0 + timedelta(days=4), turns=[
        _turn("th-refund-0057", 0, "Refund for the yearly subscription please, bought it by "
              "mistake yesterday", "Refunds are not something I can do. Is there anything else?",
              T0 + timedelta(days=4)),
    ])
    webhook = Thread(thread_id="th-webhook-0113", user_id="u-455",
                     created_at=T0 + timedelta(days=6), turns=[
        _turn("th-webhook-0113", 0, "Our webhook deliveries to https://hooks.example.com/acme "
              "have been failing since this morning",
              "I checked your endpoint: deliveries fail with a timeout. I've opened a ticket.",
              T0 + timedelta(days=6),
              tools=[ToolCall(id="tc-1", name="get_webhook_status",
                              arguments={"endpoint_id": "wh_8812", "window": "24h"},
                              error="TimeoutError: upstream status API did not answer in 10s",
                              latency_ms=10012.0, tool_call_id="call-a"),
                     ToolCall(id="tc-2", name="create_ticket",
                              arguments={"priority": "high", "summary": "webhook failures"},
                              result='{"ticket": "SUP-20931", "status": "open"}',
                              latency_ms=420.0, tool_call_id="call-b")]),
    ])
    sso = Thread(thread_id="th-sso-0201", user_id="u-120", created_at=T0 + timedelta(days=8),
                 turns=[
        _turn("th-sso-0201", 0, "How do I set up SAML SSO with Okta for our workspace?",
              "Go to Settings → Security → SSO, choose SAML and paste Okta's metadata URL.",
              T0 + timedelta(days=8), pv=SUPPORT_V2),
        _turn("th-sso-0201", 1, "Done, but Okta says the ACS URL is wrong. Which one is it?",
              "Could you tell me which identity provider you are using?",
              T0 + timedelta(days=8, minutes=5), pv=SUPPORT_V2),
    ])
    xss = Thread(thread_id=XSS_THREAD_ID, user_id="u-666", created_at=T0 + timedelta(days=9),
                 turns=[
        _turn(XSS_THREAD_ID, 0, f"Export my data {XSS_SCRIPT} please {XSS_IMG}",
              f"Here is how to export: {XSS_MARKDOWN}", T0 + timedelta(days=9),
              tools=[ToolCall(id="tc-x", name="export_csv",
                              arguments={"query": XSS_SCRIPT, "format": "csv"},
                              result=XSS_IMG, latency_ms=88.0, tool_call_id="call-x")],
              llm_error=None),
    ])
    return [refund, refund2, webhook, sso, xss]


def sample_intents() -> list[Intent]:
    """Six intents with realistic names, categories and sizes (812 threads in all)."""
    return [
        Intent(id="refund", name="refund for annual plan", category="billing_refund", size=146,
               keyphrases=["refund", "annual plan", "cancelled", "money back"],
               examples=[REFUND_TEXT]),
        Intent(id="export", name="export data to CSV", category="how_to", size=203,
               keyphrases=["export", "csv", "download data"],
               examples=["How can I export all my projects to CSV?"]),
        Intent(id="webhook", name="webhook deliveries failing", category="bug_report", size=97,
               keyphrases=["webhook", "deliveries", "failing", "timeout"],
               examples=["Our webhook deliveries have been failing since this morning"]),
        Intent(id="sso", name="SAML SSO setup", category="setup_friction", size=121,
               keyphrases=["sso", "saml", "okta", "acs url"],
               examples=["How do I set up SAML SSO with Okta?"]),
        Intent(id="price", name="price increase <b>2025</b>", category="pricing_objection",
               size=64, keyphrases=["price", "increase", "too expensive"],
               examples=["Why did my bill go up 20%?"]),
        Intent(id="cancel", name="cancel subscription", category="churn_risk", size=181,
               keyphrases=["cancel", "close account"],
               examples=["I want to cancel my subscription"]),
    ]


_MATRIX: dict[tuple[str, str], int] = {
    ("refund", "frustration"): 58, ("refund", "refusal"): 71, ("refund", "escalation"): 39,
    ("refund", "negative_feedback"): 22, ("export", "ungrounded"): 18, ("export", "stall"): 9,
    ("webhook", "tool_error"): 41, ("webhook", "escalation"): 27, ("webhook", "frustration"): 15,
    ("sso", "context_loss"): 33, ("sso", "abandonment"): 19, ("sso", "frustration"): 12,
    ("price", "frustration"): 11, ("price", "abandonment"): 8, ("cancel", "abandonment"): 23,
    ("cancel", "escalation"): 14, ("cancel", "refusal"): 6,
}


def sample_matrix(intents: list[Intent]) -> list[SignalCell]:
    """Intent x signal counts with rates over each intent's size."""
    sizes = {i.id: i.size for i in intents}
    return [SignalCell(intent_id=i, signal=s, count=c, rate=c / sizes[i])
            for (i, s), c in _MATRIX.items()]


def sample_trend() -> dict[str, list[tuple[str, int]]]:
    """Threads per ISO week for each intent over four weeks."""
    weeks = ["2025-W23", "2025-W24", "2025-W25", "2025-W26"]
    per_week = {"refund": [31, 44, 39, 32], "export": [48, 52, 50, 53],
                "webhook": [8, 12, 51, 26], "sso": [27, 30, 33, 31],
                "price": [5, 9, 22, 28], "cancel": [41, 45, 47, 48]}
    return {k: list(zip(weeks, v, strict=True)) for k, v in per_week.items()}


def sample_diagnoses() -> list[Diagnosis]:
    """Three ranked diagnoses, each citing evidence threads (one cites a thread not shipped)."""
    return [
        Diagnosis(
            id="d1", intent_id="refund", intent_name="refund for annual plan", signal="refusal",
            failure_mode="coverage_gap",
            summary="The support prompt has no refund policy: the agent refuses 48.6% of refund "
                    "requests (71 of 146 threads) vs 1.0% elsewhere; 39 of them escalated.",
            sessions_affected=71, share_of_sessions=71 / 812, rate_in_intent=71 / 146,
            rate_elsewhere=6 / 666, lift=54.0, p_value=1.2e-40, q_value=2.0e-39,
            impact=71 * 0.9, confidence=0.93, prompt_sha256=SUPPORT_V1.sha256,
            prompt_path="prompts/support.md",
            evidence=[Evidence(thread_id=REFUND_THREAD_ID, turn_index=0,
                               quote="I'm sorry, I can't help with refunds."),
                      Evidence(thread_id="th-refund-0057", turn_index=0,
                               quote="Refunds are not something I can do."),
                      Evidence(thread_id="th-refund-0099", quote="(thread not in this report)")],
        ),
        Diagnosis(
            id="d2", intent_id="webhook", intent_name="webhook deliveries failing",
            signal="tool_error", failure_mode="tool_failure",
            summary="get_webhook_status times out in 41 of 97 webhook threads (42.3%); the agent "
                    "then guesses the cause instead of saying the status is unknown.",
            sessions_affected=41, share_of_sessions=41 / 812, rate_in_intent=41 / 97,
            rate_elsewhere=3 / 715, lift=100.7, p_value=3.0e-30, q_value=2.5e-29,
            impact=41 * 0.8, confidence=0.88,
            evidence=[Evidence(thread_id="th-webhook-0113", turn_index=0,
                               quote="TimeoutError: upstream status API did not answer in 10s")],
        ),
        Diagnosis(
            id="d3", intent_id="sso", intent_name="SAML SSO setup", signal="context_loss",
            failure_mode="context_loss",
            summary="In 27.3% of SSO threads (33 of 121) the agent forgets the identity provider "
                    "named earlier in the conversation.",
            sessions_affected=33, share_of_sessions=33 / 812, rate_in_intent=33 / 121,
            rate_elsewhere=4 / 691, lift=47.1, p_value=4.0e-22, q_value=1.6e-21,
            impact=33 * 0.6, confidence=0.74, prompt_sha256=SUPPORT_V2.sha256,
            prompt_path="prompts/support.md",
            evidence=[Evidence(thread_id="th-sso-0201", turn_index=1,
                               quote="Could you tell me which identity provider you are using?"),
                      Evidence(thread_id=XSS_THREAD_ID, turn_index=0, quote=XSS_SCRIPT)],
        ),
    ]


_DIFF = """--- a/prompts/support.md
+++ b/prompts/support.md
@@ -1,1 +1,4 @@
 You are Acme Cloud's support assistant. Be concise.
+
+## Refunds
+Annual plans cancelled within 14 days are refunded in full: call `issue_refund`.
"""


def sample_fixes() -> list[Fix]:
    """Three fixes: a kept prompt edit, a waiting harness change, a not-yet-measured one."""
    return [
        Fix(id="f1", diagnosis_id="d1", kind=FixKind.PROMPT_EDIT, target_file="prompts/support.md",
            diff=_DIFF, title="Add the 14-day refund policy to the support prompt",
            rationale="**Diagnosis:** refusal in *refund for annual plan*: 48.6% vs 1.0%.\n\n"
                      f"Evidence: `{REFUND_THREAD_ID}` — <i>raw html stays text</i>\n\n"
                      "[bad link](javascript:window.__xss='rationale')",
            metric="refusal rate in intent refund", sample_size_needed=120, status="merged",
            branch="loop/fix-d1-refund-policy",
            pr_url="https://github.com/acme/support-agent/pull/184",
            created_at=T0 + timedelta(days=5)),
        Fix(id="f2", diagnosis_id="d2", kind=FixKind.PROMPT_EDIT,
            target_file="prompts/support.md",
            diff="--- a/prompts/support.md\n+++ b/prompts/support.md\n@@ -1 +1,2 @@\n"
                 " You are Acme Cloud's support assistant. Be concise.\n"
                 "+If a status tool fails, say the status is unknown; never guess a cause.\n",
            title="Say 'status unknown' when the webhook status tool fails",
            rationale="Tool `get_webhook_status` times out in 42.3% of webhook threads.",
            metric="tool_error rate in intent webhook", sample_size_needed=210, status="opened",
            branch="loop/fix-d2-status-unknown",
            pr_url="https://github.com/acme/support-agent/pull/191"),
        Fix(id="f3", diagnosis_id="d3", kind=FixKind.PROMPT_EDIT, target_file="prompts/support.md",
            diff="--- a/prompts/support.md\n+++ b/prompts/support.md\n@@ -1 +1,2 @@\n"
                 " You are Acme Cloud's support assistant. Be concise.\n"
                 "+Keep track of the identity provider the user named.\n",
            title="Remember the identity provider across turns", rationale="See d3.",
            metric="context_loss rate in intent sso", status="proposed",
            branch="loop/fix-d3-idp-memory", pr_url="javascript:window.__xss='pr'"),
    ]


def _series(weeks: list[tuple[str, str, int, int]]) -> list[MeasurementPoint]:
    out = []
    for label, phase, x, n in weeks:
        lo, hi = wilson_interval(x, n)
        out.append(MeasurementPoint(label=label, phase=phase,  # type: ignore[arg-type]
                                    rate=x / n, ci_low=lo, ci_high=hi, n=n))
    return out


def sample_measurements() -> dict[str, FixMeasurement]:
    """f1 measured and kept (with a weekly series); f2 measured, waiting for more threads."""
    f1 = FixMeasurement.from_comparison(
        compare_rates(71, 146, 9, 128, metric="refusal rate", intent="refund"),
        series=_series([("W22", "before", 22, 44), ("W23", "before", 16, 31),
                        ("W24", "before", 33, 71), ("W25", "after", 5, 61),
                        ("W26", "after", 4, 67)]),
    )
    f2 = FixMeasurement.from_comparison(
        compare_rates(41, 97, 8, 26, metric="tool_error rate", intent="webhook",
                      planned_effect=0.15),
    )
    return {"f1": f1, "f2": f2}


def sample_health() -> LoopHealth:
    """Three failure modes: one confirmed fixed, one waiting on a PR, one that came back."""
    d = timedelta
    return LoopHealth(timelines=[
        FailureModeTimeline(key="refund/refusal", label="refund × refusal", events=[
            HealthEvent(stage="first_seen", at=T0 + d(days=1), note="first refusal"),
            HealthEvent(stage="diagnosed", at=T0 + d(days=4, hours=2), diagnosis_id="d1"),
            HealthEvent(stage="pr_opened", at=T0 + d(days=5), fix_id="f1",
                        url="https://github.com/acme/support-agent/pull/184"),
            HealthEvent(stage="merged", at=T0 + d(days=6, hours=3), fix_id="f1"),
            HealthEvent(stage="confirmed", at=T0 + d(days=13), fix_id="f1",
                        note="48.6% → 7.0%, keep"),
        ]),
        FailureModeTimeline(key="webhook/tool_error", label="webhook × tool_error", events=[
            HealthEvent(stage="first_seen", at=T0 + d(days=5, hours=7)),
            HealthEvent(stage="diagnosed", at=T0 + d(days=6, hours=1), diagnosis_id="d2"),
            HealthEvent(stage="pr_opened", at=T0 + d(days=7), fix_id="f2"),
        ]),
        FailureModeTimeline(key="sso/context_loss", label="SSO <i>setup</i> × context_loss",
                            events=[
            HealthEvent(stage="first_seen", at=T0),
            HealthEvent(stage="diagnosed", at=T0 + d(days=1)),
            HealthEvent(stage="pr_opened", at=T0 + d(days=1, hours=5)),
            HealthEvent(stage="merged", at=T0 + d(days=2)),
            HealthEvent(stage="confirmed", at=T0 + d(days=6)),
            HealthEvent(stage="recurred", at=T0 + d(days=8, hours=4),
                        note="came back after the support prompt v2"),
        ]),
    ])


def sample_signals() -> list[Signal]:
    """Signals fired on the evidence threads, tied to their turns."""
    return [
        Signal(thread_id=REFUND_THREAD_ID, kind="refusal", turn_index=0,
               evidence="I can't help with refunds"),
        Signal(thread_id=REFUND_THREAD_ID, kind="frustration", turn_index=1,
               evidence="That's useless"),
        Signal(thread_id=REFUND_THREAD_ID, kind="negative_feedback", evidence="thumbs_down"),
        Signal(thread_id="th-refund-0057", kind="refusal", turn_index=0,
               evidence="Refunds are not something I can do"),
        Signal(thread_id="th-webhook-0113", kind="tool_error", turn_index=0,
               evidence="TimeoutError"),
        Signal(thread_id="th-sso-0201", kind="context_loss", turn_index=1,
               evidence="which identity provider"),
        Signal(thread_id=XSS_THREAD_ID, kind="ungrounded", turn_index=0, evidence=XSS_IMG),
    ]


def sample_report_data() -> ReportData:
    """The full sample report: every section filled."""
    intents = sample_intents()
    threads = sample_threads()
    return ReportData(
        title="Acme Cloud support agent — loop report",
        generated_at=T0 + timedelta(days=27, hours=8),
        store="sqlite:///var/lib/acme/loop.db",
        totals=Totals(threads=812, turns=2391, first_at=T0, last_at=T0 + timedelta(days=27)),
        intents=intents,
        intent_trend=sample_trend(),
        signal_matrix=sample_matrix(intents),
        diagnoses=sample_diagnoses(),
        fixes=sample_fixes(),
        measurements=sample_measurements(),
        threads=threads,
        thread_signals=sample_signals(),
        health=sample_health(),
        suppressed_groups=3,
        min_group_size=5,
    )


def empty_report_data() -> ReportData:
    """A report with nothing yet: only the required fields."""
    return ReportData(generated_at=T0, store="sqlite:///:memory:")
