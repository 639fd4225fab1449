"""The optional LLM root-cause writer, through a real ``openai.OpenAI`` client and instructor,
against a loopback chat-completions server replaying recorded responses."""

from __future__ import annotations

import json

import httpx
import instructor
import openai
import pytest
from pydantic import ValidationError

from loop_middleware.diagnose._diagnose import diagnose
from loop_middleware.diagnose._llm import DiagnosisWriter, RootCause, thread_texts
from loop_middleware.errors import ConfigError
from loop_middleware.types import Diagnosis, Evidence, Message, Thread, Turn
from tests._llm_server import FakeChatServer

# --- data ----------------------------------------------------------------------------------------


def support_thread(tid: str, user: str, reply: str, follow_up: str) -> Thread:
    return Thread(thread_id=tid, turns=[
        Turn(id=f"{tid}-0", thread_id=tid, index=0, messages=[
            Message(role="system", content="You are Acme's support assistant."),
            Message(role="user", content=user), Message(role="assistant", content=reply)]),
        Turn(id=f"{tid}-1", thread_id=tid, index=1, messages=[
            Message(role="user", content=follow_up),
            Message(role="assistant", content="I understand. Let me transfer you.")]),
    ])


THREADS = {t.thread_id: t for t in [
    support_thread("r1", "I want a refund for order #40101, the blender arrived broken.",
                   "I'm sorry, but I can't help with that request.",
                   "That's not acceptable, I want to talk to a real person."),
    support_thread("r2", "Can I get my money back? The kettle stopped working after two days.",
                   "I'm sorry, but I can't help with that request.",
                   "Seriously? Get me a human."),
    support_thread("r3", "I was charged twice for order 40103, please refund one payment.",
                   "I'm sorry, but I can't help with that request.",
                   "Fine, I'll dispute it with my bank."),
    support_thread("r4", "How do I get a refund for the cracked toaster lid?",
                   "I'm sorry, but I can't help with that request.", "Useless."),
]}

OFFLINE = ("'refund request' intent gets refusals because the prompt has no refund policy "
           "(terms 'refund', 'money back' absent from prompts/support.md @ d58f47cdca9b): "
           "10 sessions (17.9% of sessions); refusal rate 62.5% in the intent vs 2.5% elsewhere "
           "(lift 25.0x, q=7.4e-05)")


def make_diagnosis(**update: object) -> Diagnosis:
    d = Diagnosis(
        id="dx-1", intent_id="int-refund", intent_name="refund request", signal="refusal",
        failure_mode="coverage_gap", summary=OFFLINE, sessions_affected=10,
        share_of_sessions=10 / 56, rate_in_intent=0.625, rate_elsewhere=0.025, lift=25.0,
        p_value=1e-6, q_value=7.4e-5, impact=30.0, confidence=0.67,
        prompt_sha256="d58f47cdca9b" + "0" * 52, prompt_path="prompts/support.md",
        evidence=[Evidence(thread_id=tid, turn_index=0, quote=THREADS[tid].turns[0].user_text)
                  for tid in ("r1", "r2", "r3", "r4")],
        details={"missing_terms": ["refund", "money back"], "signals": ["refusal"],
                 "affected_thread_ids": ["r1", "r2", "r3", "r4"]},
    )
    return d.model_copy(update=update)


def answer(root_cause: str, *quotes: tuple[str, str]) -> str:
    return json.dumps({"root_cause": root_cause,
                       "quotes": [{"thread_id": t, "text": q} for t, q in quotes]})


GOOD = answer("Refund requests are refused because prompts/support.md has no refund policy, so the "
              "agent declines every refund: 10 sessions, 17.9% of sessions.",
              ("r1", "I want a refund for order #40101"),
              ("r2", "I'm sorry, but I can't help with that request."))
PARAPHRASED = answer("Refunds fail because the policy is missing (17.9% of sessions).",
                     ("r1", "I would like a refund for my broken blender"))  # not in the thread
WRONG_THREAD = answer("Refunds fail because the policy is missing (17.9% of sessions).",
                      ("r9", "I want a refund for order #40101"))


def writer_for(server: FakeChatServer, **kw: object) -> DiagnosisWriter:
    # max_retries=0 on the OpenAI client: HTTP retries would hide what instructor does.
    client = openai.OpenAI(base_url=server.base_url, api_key="test-key", max_retries=0)
    return DiagnosisWriter(instructor.from_openai(client, mode=instructor.Mode.JSON),
                           model="fake-model", **kw)  # type: ignore[arg-type]


# --- tests ---------------------------------------------------------------------------------------


def test_valid_answer_replaces_the_summary_and_adds_verbatim_quotes() -> None:
    with FakeChatServer([GOOD]) as server:
        out = writer_for(server).write(make_diagnosis(), THREADS)
    assert len(server.requests) == 1
    assert out.summary.startswith("Refund requests are refused because prompts/support.md")
    assert out.details["offline_summary"] == OFFLINE
    assert out.evidence[0] == Evidence(thread_id="r1", turn_index=0,
                                       quote="I want a refund for order #40101")
    assert out.evidence[1].quote == "I'm sorry, but I can't help with that request."
    assert len(out.evidence) <= 5
    for ev in out.evidence:
        assert any(ev.quote in s for s in thread_texts(THREADS[ev.thread_id]))
    # The request carried the numbers and the sampled transcripts (system prompt excluded).
    user_msg = server.requests[0]["messages"][-1]["content"]
    assert "17.9%" in user_msg and "### thread_id: r1" in user_msg
    assert "You are Acme's support assistant." not in user_msg


def test_invalid_quote_is_re_asked_and_the_second_valid_answer_is_accepted() -> None:
    with FakeChatServer([PARAPHRASED, GOOD]) as server:
        out = writer_for(server, max_retries=1).write(make_diagnosis(), THREADS)
    assert len(server.requests) == 2
    # instructor re-asked with our validator's message.
    retry_text = json.dumps(server.requests[1]["messages"])
    assert "does not appear verbatim in thread" in retry_text
    assert out.summary.startswith("Refund requests are refused")
    assert out.evidence[0].quote == "I want a refund for order #40101"


@pytest.mark.parametrize("bad", [[PARAPHRASED, WRONG_THREAD], [WRONG_THREAD, "not json at all"]])
def test_when_retries_are_exhausted_the_offline_summary_is_kept(bad: list[str]) -> None:
    with FakeChatServer(bad) as server:
        d = make_diagnosis()
        out = writer_for(server, max_retries=1).write(d, THREADS)  # 1 re-ask: 2 requests
    assert len(server.requests) == 2
    assert out.summary == OFFLINE and out.evidence == d.evidence
    assert "llm_error" in out.details and "offline_summary" not in out.details


def test_endpoint_errors_keep_the_offline_summary() -> None:
    with FakeChatServer([{"status": 503, "body": {"error": {"message": "overloaded",
                                                            "type": "server_error"}}}]) as server:
        out = writer_for(server, max_retries=0).write(make_diagnosis(), THREADS)
    assert len(server.requests) == 1
    assert out.summary == OFFLINE and "llm_error" in out.details


def test_same_input_is_served_from_the_cache() -> None:
    with FakeChatServer([GOOD, GOOD]) as server:
        writer = writer_for(server)
        first = writer.write(make_diagnosis(), THREADS)
        again = writer.write(make_diagnosis(), THREADS)
        assert len(server.requests) == 1 and writer.requests == 1
        assert again == first
        writer.write(make_diagnosis(sessions_affected=11), THREADS)  # a new input: a new call
        assert len(server.requests) == 2 and writer.requests == 2


def test_failures_are_cached_too() -> None:
    with FakeChatServer([PARAPHRASED]) as server:
        writer = writer_for(server, max_retries=0)
        writer.write(make_diagnosis(), THREADS)
        out = writer.write(make_diagnosis(), THREADS)
    assert len(server.requests) == 1 and out.summary == OFFLINE


def test_cost_cap_limits_sampled_threads_and_diagnoses() -> None:
    with FakeChatServer([GOOD]) as server:
        writer = writer_for(server, max_threads=2, max_diagnoses=1)
        out = writer.write_all([make_diagnosis(), make_diagnosis(id="dx-2")], THREADS)
    sent = server.requests[0]["messages"][-1]["content"]
    assert sent.count("### thread_id:") == 2
    assert "### thread_id: r1" in sent and "### thread_id: r3" not in sent
    assert len(server.requests) == 1
    assert out[1] == make_diagnosis(id="dx-2")  # beyond max_diagnoses: untouched


def test_root_cause_model_refuses_quotes_without_context() -> None:
    raw = {"root_cause": "Refunds fail: no policy.", "quotes": [{"thread_id": "r1", "text": "refund"}]}
    with pytest.raises(ValidationError, match="no thread texts"):
        RootCause.model_validate(raw)
    ctx = {"thread_texts": {"r1": thread_texts(THREADS["r1"])}}
    assert RootCause.model_validate(raw, context=ctx).quotes[0].text == "refund"


def test_writer_accepts_a_plain_openai_client_and_rejects_others() -> None:
    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=0,
                           http_client=httpx.Client())
    assert isinstance(DiagnosisWriter(client, model="m")._client, instructor.Instructor)
    with pytest.raises(ConfigError):
        DiagnosisWriter(object(), model="m")
    with pytest.raises(ConfigError, match="max_threads"):
        DiagnosisWriter(client, model="m", max_threads=0)
    client.close()


def test_diagnose_uses_the_writer_end_to_end() -> None:
    from .test_diagnose import INTENTS, SUPPORT_V1, refund_store

    threads, signals, assignments = refund_store(SUPPORT_V1)
    offline = diagnose(threads, signals, list(INTENTS.values()), assignments)
    ev = offline[0].evidence[0]
    good = answer("The refund intent fails because the support prompt has no refund policy "
                  "(17.9% of sessions).", (ev.thread_id, ev.quote[:30]))
    with FakeChatServer([good]) as server:
        out = diagnose(threads, signals, list(INTENTS.values()), assignments,
                       llm=writer_for(server))
    assert len(server.requests) == 1
    assert out[0].summary.startswith("The refund intent fails because the support prompt")
    assert out[0].id == offline[0].id and out[0].details["offline_summary"] == offline[0].summary
    assert out[0].evidence[0].quote == ev.quote[:30]
