"""Tests of the deterministic failure-signal detectors (loop_middleware.extract._signals)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loop_middleware.errors import ConfigError, ExtractionError
from loop_middleware.extract._signals import (
    BUILTIN_DETECTORS,
    DetectionContext,
    DetectorRegistry,
    default_registry,
    detect_language,
    detect_signals,
    detect_thread,
    latency_threshold,
    register_detector,
    truncation_sizes,
    turn_latency_ms,
    went_well,
)
from loop_middleware.types import Feedback, LLMCall, Message, Signal, Thread, ToolCall, Turn

# --- building threads ------------------------------------------------------------------------------

TurnSpec = tuple[Any, ...] | dict[str, Any]


def tool(name: str, result: str | None = None, *, args: Any = None, error: str | None = None) -> ToolCall:
    """A tool call; ids and seq are filled in by :func:`make_thread`."""
    return ToolCall(id="", name=name, arguments=args if args is not None else {}, result=result, error=error)


def turn(user: str = "", reply: str = "", tools: Sequence[ToolCall] = (), **kw: Any) -> dict[str, Any]:
    """A turn spec with extra Turn fields (``latency_ms``, ``error``, ``llm_calls`` ...)."""
    return {"user": user, "reply": reply, "tools": list(tools), **kw}


def make_thread(*turns: TurnSpec, thread_id: str = "t1", feedback: Sequence[Feedback] = ()) -> Thread:
    """A Thread from ``(user, reply)`` / ``(user, reply, tools)`` tuples or :func:`turn` dicts."""
    built: list[Turn] = []
    for i, spec in enumerate(turns):
        d = dict(spec) if isinstance(spec, dict) else turn(*spec)
        user, reply, tools = d.pop("user"), d.pop("reply"), d.pop("tools")
        tid = f"{thread_id}-{i}"
        messages = [Message(role="user", content=user)] if user else []
        calls = []
        for seq, t in enumerate(tools, start=1):
            call = t.model_copy(update={"id": f"{tid}-tool{seq}", "seq": seq})
            calls.append(call)
            messages.append(Message(role="assistant", content="", tool_calls=[{"id": call.id, "name": call.name, "args": call.arguments}]))
            messages.append(Message(role="tool", content=call.result or call.error or "", tool_call_id=call.id))
        if reply:
            messages.append(Message(role="assistant", content=reply))
        built.append(Turn(id=tid, thread_id=thread_id, index=i, messages=messages, tool_calls=calls, **d))
    return Thread(thread_id=thread_id, turns=built, feedback=list(feedback))


def fb(kind: str = "feedback", **kw: Any) -> Feedback:
    return Feedback(id=f"fb-{kind}-{kw.get('label')}-{kw.get('score')}", thread_id="t1", kind=kind, **kw)  # type: ignore[arg-type]


def only(kind: str) -> DetectorRegistry:
    return default_registry.select([kind])


def run(kind: str, thread: Thread, ctx: DetectionContext | None = None) -> list[Signal]:
    return detect_thread(thread, registry=only(kind), context=ctx)


def thread_texts(thread: Thread) -> list[str]:
    """Every piece of text a thread holds: where evidence may be quoted from."""
    out: list[str] = []
    for t in thread.turns:
        out += [m.content for m in t.messages]
        if t.error:
            out.append(t.error)
        for c in t.llm_calls:
            out += [m.content for m in c.input_messages + c.output_messages]
            if c.error:
                out.append(c.error)
        for tc in t.tool_calls:
            out += [x for x in (tc.name, tc.result, tc.error) if x]
            if isinstance(tc.arguments, str):
                out.append(tc.arguments)
            elif isinstance(tc.arguments, dict):  # e.g. the reason of a self-report
                out += [v for v in tc.arguments.values() if isinstance(v, str)]
    for f in thread.feedback:
        out += [x for x in (f.comment, f.label) if x]
    return out


def llm(n_input: int | None = None, *, model: str | None = None, inputs: Sequence[Message] = ()) -> LLMCall:
    return LLMCall(id=f"llm-{n_input}-{len(inputs)}", model=model, input_tokens=n_input, input_messages=list(inputs))


SYSTEM = Message(role="system", content="You are the support assistant of Acme Shop.")

# --- positive and negative cases per detector ------------------------------------------------------
# (detector, thread, expected reason or None, expected turn index)

_LONG_REPLY = (
    "Thanks for reaching out about your invoice. " * 12
    + "Unfortunately I'm sorry, but I can't help with that request, billing disputes go through another team. "
    + "In the meantime here is some general information about invoices and payment cycles. " * 8
)

POSITIVE: list[Any] = [
    # frustration
    pytest.param("frustration", make_thread(
        ("Where is my order? It was due Monday.", "Could you share your order number?"),
        ("I already told you my order number is 88123, why do you keep asking?", "Sorry! Let me check."),
    ), "repeating", 1, id="frustration-already-told"),
    pytest.param("frustration", make_thread(
        ("How do I change the delivery address?", "You can track your parcel on the Orders page."),
        ("That’s not what I asked. I want to change the address.", "Apologies, go to Settings > Addresses."),
    ), "not_what_i_asked", 1, id="frustration-curly-apostrophe"),
    pytest.param("frustration", make_thread(
        ("How do I change the shipping address on my order?", "Our shipping rates start at $4.99."),
        ("How can I change the shipping address for my order?", "Go to Orders > Edit."),
    ), "rephrase", 1, id="frustration-rephrase"),
    pytest.param("frustration", make_thread(
        ("I NEED MY MONEY BACK RIGHT NOW", "I understand. Let me look into the refund."),
    ), "shouting", 0, id="frustration-shouting"),
    pytest.param("frustration", make_thread(
        ("this fucking app logged me out again", "Sorry about that! Try clearing the cache."),
    ), "profanity", 0, id="frustration-profanity"),
    pytest.param("frustration", make_thread(
        ("¿Dónde está mi pedido?", "Puede consultar el estado en su cuenta."),
        ("Esto es ridículo, llevo una semana esperando.", "Lo siento mucho."),
    ), "insult", 1, id="frustration-es"),
    pytest.param("frustration", make_thread(
        ("Mon colis n'est pas arrivé.", "Avez-vous vérifié votre boîte aux lettres ?"),
        ("C'est n'importe quoi, ce n'est pas ce que j'ai demandé.", "Je suis désolé."),
    ), "not_what_i_asked", 1, id="frustration-fr"),
    pytest.param("frustration", make_thread(
        ("Das ist lächerlich, ich warte seit zwei Wochen auf mein Paket.", "Das tut mir leid."),
    ), "insult", 0, id="frustration-de"),
    pytest.param("frustration", make_thread(
        ("Qual o status do meu pedido?", "Qual é o número do pedido?"),
        ("Eu já te disse o número do pedido, é 55501.", "Desculpe!"),
    ), "repeating", 1, id="frustration-pt"),
    pytest.param("frustration", make_thread(
        ("Can I get a refund for the broken blender?", "Please contact support."),
        ("ok whatever, forget it", ""),
    ), "give_up", 1, id="frustration-give-up"),
    # abandonment
    pytest.param("abandonment", make_thread(
        ("Can you waive the late fee on my account?", "I'm sorry, but I can't help with that."),
    ), "refusal", 0, id="abandonment-refusal"),
    pytest.param("abandonment", make_thread(
        ("I want to upgrade.", "Sure! Which plan are you on right now, Basic or Plus?"),
    ), "unanswered_question", 0, id="abandonment-question-back"),
    pytest.param("abandonment", make_thread(
        ("Can I get a refund for the broken blender?", "Please contact support."),
        ("ok whatever, forget it", ""),
    ), "user_gave_up", 1, id="abandonment-give-up"),
    pytest.param("abandonment", make_thread(
        ("Can I pay in three instalments?", "Please contact support for payment plans."),
        ("forget it, thanks anyway", "You're welcome!"),
    ), "user_gave_up", 1, id="abandonment-thanks-anyway"),
    pytest.param("abandonment", make_thread(
        turn("Where is my parcel?", error="GraphRecursionError: Recursion limit of 25 reached"),
    ), "turn_error", 0, id="abandonment-turn-error"),
    pytest.param("abandonment", make_thread(
        ("¿Puedo cambiar mi método de pago?", "Lo siento, algo salió mal. Inténtalo más tarde."),
    ), "error_reply", 0, id="abandonment-es-error"),
    # escalation
    pytest.param("escalation", make_thread(
        ("My card was charged twice.", "I can see one charge of $30."),
        ("Can I speak to a real person please", "Let me transfer you."),
    ), "human", 1, id="escalation-real-person"),
    pytest.param("escalation", make_thread(("I want to cancel my subscription today.", "Sorry to see you go."),),
                 "cancel", 0, id="escalation-cancel"),
    pytest.param("escalation", make_thread(("Please transfer me to a human agent.", "One moment."),),
                 "human", 0, id="escalation-transfer"),
    pytest.param("escalation", make_thread(("Quiero hablar con una persona, no con un bot.", "Claro."),),
                 "human", 0, id="escalation-es"),
    pytest.param("escalation", make_thread(("Je veux parler à un conseiller tout de suite.", "Bien sûr."),),
                 "human", 0, id="escalation-fr"),
    pytest.param("escalation", make_thread(("Ich möchte mit einem Mitarbeiter sprechen.", "Gerne."),),
                 "human", 0, id="escalation-de"),
    pytest.param("escalation", make_thread(("Quero falar com um atendente agora.", "Claro."),),
                 "human", 0, id="escalation-pt"),
    pytest.param("escalation", make_thread(("Ich will mein Abo sofort kündigen.", "Schade."),),
                 "cancel", 0, id="escalation-de-cancel"),
    # refusal
    pytest.param("refusal", make_thread(("Can you change my billing date?", "I'm sorry, I can't help with that."),),
                 "cannot_help", 0, id="refusal-en"),
    pytest.param("refusal", make_thread(
        ("Does the warranty cover water damage?", "I don't have information about warranty coverage."),),
        "no_information", 0, id="refusal-no-info"),
    pytest.param("refusal", make_thread(("Why was I charged $30?", "For billing questions, please contact support."),),
                 "contact_support", 0, id="refusal-contact-support"),
    pytest.param("refusal", make_thread(("¿Me devuelven el dinero?", "Lo siento, no puedo ayudarte con eso."),),
                 "cannot_help", 0, id="refusal-es"),
    pytest.param("refusal", make_thread(("Remboursement ?", "Je ne peux pas vous aider avec cette demande."),),
                 "cannot_help", 0, id="refusal-fr"),
    pytest.param("refusal", make_thread(("Rückerstattung?", "Leider kann ich Ihnen dabei nicht helfen."),),
                 "cannot_help", 0, id="refusal-de"),
    pytest.param("refusal", make_thread(("Reembolso?", "Desculpe, não posso ajudar com isso."),),
                 "cannot_help", 0, id="refusal-pt"),
    pytest.param("refusal", make_thread(("Why is my invoice wrong?", _LONG_REPLY),), "cannot_help", 0,
                 id="refusal-long-reply"),
    pytest.param("refusal", make_thread(("Can you close my ticket?", "I'm unable to assist with tickets."),),
                 "cannot_help", 0, id="refusal-contraction"),
    # A refused hand-off is a refusal too (prompt v2 of the example agent lost its Escalation section).
    pytest.param("refusal", make_thread(("I want to talk to a person.",
                                         "I'm sorry, I'm not able to transfer you to a human agent."),),
                 "cannot_help", 0, id="refusal-handoff"),
    # tool_error
    pytest.param("tool_error", make_thread(("Where is order 88123?", "Sorry, our system is down.",
                                            [tool("get_order", error="ConnectionError: orders-api unreachable")]),),
                 "error", 0, id="tool-error-field"),
    pytest.param("tool_error", make_thread(("Where is order 88123?", "Let me try again.", [tool(
        "get_order", "Traceback (most recent call last):\n  File \"orders.py\", line 12\nKeyError: 'sku'")]),),
        "traceback", 0, id="tool-error-traceback"),
    pytest.param("tool_error", make_thread(("Refund please", "One moment.",
                                            [tool("create_refund", "HTTP 503 Service Unavailable")]),),
                 "server_error", 0, id="tool-error-5xx"),
    pytest.param("tool_error", make_thread(("Refund please", "One moment.",
                                            [tool("create_refund", '{"error": "upstream timeout", "id": null}')]),),
                 "error_field", 0, id="tool-error-json"),
    # self_report (the agent's own report through LoopMiddleware's report_problem tool)
    pytest.param("self_report", make_thread(("Change my delivery address", "I can't change it, sorry.",
        [tool("report_problem", "Reported.", args={"reason": "no tool can change a delivery address"})]),),
        None, 0, id="self-report"),
    # ungrounded
    pytest.param("ungrounded", make_thread(("Does the premium plan include phone support?",
        "Yes! The premium plan includes 24/7 phone support and a 60-day refund window.",
        [tool("search_kb", "[]", args={"query": "premium phone support"})]),), None, 0, id="ungrounded-empty-list"),
    pytest.param("ungrounded", make_thread(("What is the return policy for sale items?",
        "Sale items can be returned within 14 days for store credit.",
        [tool("lookup_policy", "No results found.", args={"q": "sale returns"})]),), None, 0, id="ungrounded-no-results"),
    pytest.param("ungrounded", make_thread(("Hi", "Hello! How can I help?"), ("Is the X200 waterproof?",
        "The X200 is rated IP68, so it is fully waterproof up to 2 meters.",
        [tool("product_search", '{"results": [], "total": 0}')]),), None, 1, id="ungrounded-json-empty"),
    # stall
    pytest.param("stall", make_thread(*[(f"The app still crashes when I open settings (try {i})", "Try reinstalling it.")
                                        for i in range(10)]), "too_many_turns", 8, id="stall-many-turns"),
    pytest.param("stall", make_thread(
        ("Where is order 88123?", "Checking.", [tool("get_order", "pending", args={"id": "88123", "v": 1})]),
        ("Any news?", "Still checking.", [tool("get_order", "pending", args='{"v": 1, "id": "88123"}')]),
        ("Hello??", "Checking again.", [tool("get_order", "pending", args={"v": 1, "id": "88123"})]),
    ), "repeated_tool_call", 2, id="stall-repeated-tool"),
    # context_loss
    pytest.param("context_loss", make_thread(
        ("My order number is 88123 and it hasn't arrived.", "Sorry to hear that, let me look."),
        ("When will it come?", "Could you please share your order number?"),
    ), "asks_again", 1, id="context-loss-order-number"),
    pytest.param("context_loss", make_thread(
        ("I can't log in, my email is ana.lopez@example.com", "I've sent a reset link."),
        ("Nothing arrived", "What is your email address?"),
    ), "asks_again", 1, id="context-loss-email"),
    pytest.param("context_loss", make_thread(
        ("Mi número de pedido es 45678, no ha llegado.", "Lo siento, lo reviso."),
        ("¿Alguna novedad?", "¿Cuál es su número de pedido?"),
    ), "asks_again", 1, id="context-loss-es"),
    pytest.param("context_loss", make_thread(
        turn("Summarise my last 20 invoices", "Here is the summary.", llm_calls=[llm(9_500)]),
    ), "token_budget", 0, id="context-loss-budget"),
    pytest.param("context_loss", make_thread(
        ("I'm moving to Berlin next month.", "Noted!"),
        ("Also I prefer DHL.", "Okay."),
        turn("So which shipping option fits me?", "Standard shipping is fine.", llm_calls=[
            llm(300, inputs=[SYSTEM, Message(role="user", content="So which shipping option fits me?")])]),
    ), "messages_dropped", 2, id="context-loss-dropped"),
    pytest.param("context_loss", make_thread(
        ("Where is my order?", "Could you share your order number?"),
        ("I already told you my order number is 88123, why do you keep asking?", "Sorry! Let me check."),
    ), "user_repeats", 1, id="context-loss-user-says"),
    # language_switch
    pytest.param("language_switch", make_thread(
        ("Hi, I need help with my order please", "Sure, what is the issue?"),
        ("注文がまだ届いていません。", "ご不便をおかけして申し訳ありません。"),
    ), None, 1, id="language-switch-ja"),
    pytest.param("language_switch", make_thread(
        ("Hello, where is my package? It is late.", "It left our warehouse yesterday."),
        ("طلبي لم يصل بعد، أين هو؟", "It should arrive tomorrow."),
    ), None, 1, id="language-switch-ar"),
    pytest.param("language_switch", make_thread(
        ("Hola, quiero cambiar la dirección de mi pedido.", "Claro, ¿cuál es la nueva dirección?"),
        ("Actually can you do this in English, it is easier for my husband", "Of course."),
    ), None, 1, id="language-switch-es-en"),
    # language_mismatch: the reply is not in the user's language (from the first turn on)
    pytest.param("language_mismatch", make_thread(
        ("¿Cómo puedo cambiar la dirección de mi pedido, por favor?",
         "You can change the delivery address in the app under Orders, then tap Edit address."),
    ), None, 0, id="language-mismatch-es-en"),
    pytest.param("language_mismatch", make_thread(
        ("Hello, where is my package? It is late.", "It left our warehouse yesterday."),
        ("注文がまだ届いていません。どうなっていますか？", "It should arrive tomorrow, sorry for the wait."),
    ), None, 1, id="language-mismatch-ja-en"),
    # tool_output_truncated: a tool result ending with a cut marker
    pytest.param("tool_output_truncated", make_thread(
        ("How do I rotate a key?", "The page was cut off.",
         [tool("search_docs", "Rotate a key. Keys belong to one project and " * 6
               + "… [truncated: 812 more characters]")]),
    ), None, 0, id="tool-output-truncated-marker"),
    pytest.param("tool_output_truncated", make_thread(
        ("Hi", "Hello!"),
        ("Show me the build log", "Here it is.", [tool("get_log", "line 1\nline 2\n... (1,234 more lines)")]),
    ), None, 1, id="tool-output-truncated-lines"),
    # latency_outlier (threshold given explicitly; the batch computation is tested below)
    pytest.param("latency_outlier", make_thread(
        turn("Where is my refund?", "It was issued today.", latency_ms=1800.0),
        turn("And the invoice?", "Sent to your email.", latency_ms=42_000.0),
    ), None, 1, id="latency-outlier"),
    # negative_feedback
    pytest.param("negative_feedback", make_thread(("Refund?", "Please contact support."),
                                                  feedback=[fb(score=0.0, label="thumbs_down")]),
                 "score", None, id="negative-feedback-thumbs-down"),
    pytest.param("negative_feedback", make_thread(("Refund?", "Please contact support."),
                                                  feedback=[fb(label="thumbs_down")]),
                 "label", None, id="negative-feedback-label"),
    pytest.param("negative_feedback", make_thread(("Refund?", "Please contact support."),
                                                  feedback=[fb(comment="the bot was useless, no refund")]),
                 "comment", None, id="negative-feedback-comment"),
    pytest.param("negative_feedback", make_thread(("Refund?", "Please contact support."),
                                                  feedback=[fb(kind="outcome", label="churned")]),
                 "outcome", None, id="negative-feedback-churned"),
]

NEGATIVE: list[Any] = [
    pytest.param("language_mismatch", make_thread(
        ("¿Dónde está mi pedido? Lo pedí hace una semana.", "Tu pedido salió ayer y llega mañana."),
        ("ok", "Great, have a nice day!"),  # too short to tell
    ), id="language-mismatch-same-language"),
    pytest.param("language_mismatch", make_thread(
        ("Hello, where is my package? It is late.", "Run `kestrel deploys list`"),
    ), id="language-mismatch-reply-unknown"),
    pytest.param("tool_output_truncated", make_thread(
        ("What does truncated mean in your logs?", "It means the output was shortened.",
         [tool("search_docs", "A result marked [truncated] was cut by the harness. See the limits page "
               "for the exact settings and how to raise them for your project; " * 3)]),
    ), id="tool-output-truncated-marker-inside-the-text"),
    pytest.param("frustration", make_thread(
        ("Hi, how do I reset my password?", "Click 'Forgot password' on the login page."),
        ("Thanks, that worked!", "Glad to help!"),
    ), id="frustration-polite"),
    pytest.param("frustration", make_thread(
        ("What's the status of order 88123?", "Shipped yesterday."),
        ("What's the status of order 88124?", "Delivered on Monday."),
    ), id="frustration-different-orders"),
    pytest.param("frustration", make_thread(
        ("My VPN and SSO login fail on the iOS app", "Let's check your SSO settings."),
        ("Yes", "OK"), ("Yes", "Done"),
    ), id="frustration-acronyms-and-short-repeats"),
    pytest.param("frustration", make_thread(
        ("How do I export my data?", "Could you tell me which app you are using?"),
        ("Never mind, I found it!", "Great!"),
    ), id="frustration-never-mind-found-it"),
    pytest.param("abandonment", make_thread(
        ("How do I reset my password?", "Use the reset link. Is there anything else I can help you with?"),
    ), id="abandonment-courtesy-question"),
    pytest.param("abandonment", make_thread(
        ("How do I export my data?", "Could you tell me which app you are using?"),
        ("Never mind, I found it!", "Great!"),
    ), id="abandonment-user-found-it"),
    pytest.param("abandonment", make_thread(
        ("Can you waive the fee?", "I'm sorry, I can't help with that."),
        ("Ok, how do I pay it then?", "Go to Billing > Pay now."),
        ("Thanks, that's all!", "You're welcome!"),
    ), id="abandonment-user-closed"),
    pytest.param("abandonment", make_thread(
        ("Which plan do I need?", "Which team size do you have?"),
        feedback=[fb(kind="outcome", label="converted")],
    ), id="abandonment-converted"),
    pytest.param("escalation", make_thread(
        ("How do I cancel an order I placed by mistake?", "Go to Orders > Cancel."),
        ("I'm the account manager for our team, how do I add seats?", "Use Admin > Seats."),
        ("The person who delivered it was very nice.", "Great to hear!"),
    ), id="escalation-benign"),
    pytest.param("refusal", make_thread(
        ("Can you change my billing date?", "I can help with that! Your billing date is now the 5th."),
        ("I can't help noticing the new logo", "Thanks, we like it too."),
    ), id="refusal-helpful"),
    pytest.param("refusal", make_thread(("I want to talk to a person.", "Of course, I'll transfer you to a human agent now."),),
                 id="refusal-handoff-granted"),
    pytest.param("refusal", make_thread(("When can you send the refund?", "I can transfer you the money today."),),
                 id="refusal-transfer-money"),
    pytest.param("tool_error", make_thread(("Where is order 88123?", "Delivered.", [
        tool("get_order", '{"error": null, "status": "shipped"}'),
        tool("get_order", "Order 88123: delivered on 2024-05-02, no errors reported"),
    ]),), id="tool-error-clean"),
    pytest.param("self_report", make_thread(("Where is order 88123?", "Delivered.", [
        tool("report_status", "ok", args={"reason": "the user asked"})]),), id="self-report-other-tool"),
    pytest.param("ungrounded", make_thread(
        ("Is the X200 waterproof?", "I couldn't find anything about that in our help center.",
         [tool("search_kb", "[]")]),
        ("What about the X300?", "No encontré información sobre ese producto.", [tool("search_kb", "no results")]),
        ("And the X400?", "Could you tell me the exact product name?", [tool("search_kb", "")]),
    ), id="ungrounded-admits"),
    pytest.param("ungrounded", make_thread(
        ("Is the X200 waterproof?", "Yes, the X200 is rated IP68.",
         [tool("search_kb", "[]", args={"q": "x200 water"}), tool("search_kb", "X200: IP68 rated.", args={"q": "x200"})]),
        ("Email me the manual", "Done, the manual is on its way to your inbox.", [tool("send_email", "")]),
    ), id="ungrounded-retry-found-and-non-retrieval"),
    pytest.param("stall", make_thread(
        *[(f"The app crashes when I open settings (try {i})", "Try reinstalling it.") for i in range(3)],
        ("Thanks, reinstalling worked!", "Great!"),
        *[(f"Another question number {i}", "Sure.") for i in range(6)],
    ), id="stall-resolved-early"),
    pytest.param("stall", make_thread(
        ("Where is order 88123?", "Checking.", [tool("get_order", "pending", args={"id": "88123"})]),
        ("And 88124?", "Checking.", [tool("get_order", "shipped", args={"id": "88124"})]),
        ("And 88125?", "Checking.", [tool("get_order", "shipped", args={"id": "88125"}),
                                     tool("get_order", "shipped", args={"id": "88123"})]),
    ), id="stall-different-args"),
    pytest.param("context_loss", make_thread(
        ("My parcel hasn't arrived.", "Could you share your order number?"),
        ("It's 88123", "I couldn't find order 88123. Could you double-check the order number?"),
        ("Sorry, 88132", "Found it! Is your order number 88132?"),
        turn("yes", "It arrives tomorrow.", llm_calls=[llm(12_000, model="openai:gpt-4o", inputs=[
            SYSTEM, Message(role="user", content="My parcel hasn't arrived."),
            Message(role="assistant", content="Could you share your order number?"),
            Message(role="user", content="It's 88123"),
            Message(role="assistant", content="I couldn't find order 88123. Could you double-check the order number?"),
            Message(role="user", content="Sorry, 88132"),
            Message(role="assistant", content="Found it! Is your order number 88132?"),
            Message(role="user", content="yes")])]),
    ), id="context-loss-clean"),
    pytest.param("language_switch", make_thread(
        ("Hi, I need help with my order please", "Sure, what is the issue?"),
        ("ok", "Take your time."),
        ("My order from ユニクロ has not arrived yet, can you check?", "Checking."),
        ("merci", "You're welcome."),
    ), id="language-switch-none"),
    pytest.param("latency_outlier", make_thread(
        turn("Where is my refund?", "It was issued today.", latency_ms=1800.0),
        turn("And the invoice?", "Sent to your email.", latency_ms=2500.0),
    ), id="latency-normal"),
    pytest.param("negative_feedback", make_thread(("Refund?", "Done."), feedback=[
        fb(score=1.0, label="thumbs_up"), fb(kind="outcome", label="converted"),
        fb(comment="not bad, quick answer"), fb(label="thumbs_up")]), id="negative-feedback-positive"),
]

CTX = DetectionContext(latency_threshold_ms=10_000.0)


@pytest.mark.parametrize(("kind", "thread", "reason", "turn_index"), POSITIVE)
def test_detector_fires(kind: str, thread: Thread, reason: str | None, turn_index: int | None) -> None:
    signals = run(kind, thread, CTX)
    assert signals, f"{kind} did not fire"
    assert all(s.kind == kind and s.thread_id == thread.thread_id for s in signals)
    match = [s for s in signals if reason is None or s.details.get("reason") == reason]
    assert match, f"no {kind} signal with reason {reason!r}: {[s.details for s in signals]}"
    assert match[0].turn_index == turn_index
    assert 0.0 < match[0].confidence <= 1.0


@pytest.mark.parametrize(("kind", "thread"), NEGATIVE)
def test_detector_stays_silent(kind: str, thread: Thread) -> None:
    assert run(kind, thread, CTX) == []


def _all_case_threads() -> Iterator[Thread]:
    for p in POSITIVE + NEGATIVE:
        yield p.values[1]


def test_evidence_is_verbatim_for_every_detector() -> None:
    threads = list(_all_case_threads())
    seen: set[str] = set()
    for thread in threads:
        texts = thread_texts(thread)
        for s in detect_thread(thread, context=CTX):
            seen.add(s.kind)
            assert s.evidence.strip(), s
            assert len(s.evidence) <= CTX.evidence_max_chars, s
            assert any(s.evidence in t for t in texts), f"{s.kind}: {s.evidence!r} is not a quote"
    # Not vacuous: every built-in fired at least once above.
    assert seen == set(BUILTIN_DETECTORS)


def test_evidence_quotes_the_relevant_words() -> None:
    long_case = next(p.values[1] for p in POSITIVE if p.id == "refusal-long-reply")
    (sig,) = run("refusal", long_case)
    assert "can't help with that" in sig.evidence and len(sig.evidence) <= 200
    dropped = next(p.values[1] for p in POSITIVE if p.id == "context-loss-dropped")
    (sig,) = run("context_loss", dropped)
    assert sig.evidence == "I'm moving to Berlin next month."  # the first message the LLM lost
    assert sig.details["expected"] == 5 and sig.details["sent"] == 1


_PHRASES_USER = [
    "Where is my order 88123?", "I already told you my email is bo@example.com!!", "Can I speak to a manager",
    "ok whatever, forget it", "WHY IS THIS STILL BROKEN", "注文がまだ届いていません", "¿Dónde está mi pedido?",
    "thanks", "", "Das ist lächerlich", "   ", "What is your order number?", "a" * 500 + " fuck " + "b" * 300,
]
_PHRASES_AGENT = [
    "I'm sorry, I can't help with that.", "Please contact support.", "What is your order number?",
    "Your order ships tomorrow.", "", "Something went wrong.", "x" * 400 + " I don't have information about that " + "y" * 400,
]
_RESULTS = ["[]", "", "null", "HTTP 502 Bad Gateway", "ok", "Traceback (most recent call last):\nValueError: x", None]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(_PHRASES_USER), st.sampled_from(_PHRASES_AGENT),
    st.lists(st.tuples(st.sampled_from(["search_kb", "get_order", "send_email"]), st.sampled_from(_RESULTS),
                       st.sampled_from([None, "boom"])), max_size=3),
    st.one_of(st.none(), st.floats(min_value=1, max_value=60_000)),
    st.one_of(st.none(), st.integers(min_value=0, max_value=20_000)),
), min_size=1, max_size=12))
def test_evidence_is_verbatim_on_random_threads(spec: list[tuple[Any, ...]]) -> None:
    thread = make_thread(*[
        turn(u, a, [tool(n, r, error=e) for n, r, e in tools], latency_ms=lat,
             llm_calls=[llm(tok)] if tok is not None else [])
        for u, a, tools, lat, tok in spec
    ])
    texts = thread_texts(thread)
    for s in detect_thread(thread, context=DetectionContext(latency_threshold_ms=5000.0)):
        assert s.evidence.strip() and len(s.evidence) <= 200
        assert any(s.evidence in t for t in texts), (s.kind, s.evidence)


# --- specific behaviour ----------------------------------------------------------------------------


def test_language_mismatch_and_truncation_details() -> None:
    es = next(p.values[1] for p in POSITIVE if p.id == "language-mismatch-es-en")
    (sig,) = run("language_mismatch", es)
    assert sig.details == {"user_language": "es", "reply_language": "en"}
    cut = next(p.values[1] for p in POSITIVE if p.id == "tool-output-truncated-marker")
    (sig,) = run("tool_output_truncated", cut)
    assert sig.details["tools"] == ["search_docs"]
    assert sig.details["cuts"][0]["kept_chars"] == len(("Rotate a key. Keys belong to one project and " * 6).rstrip())
    assert sig.evidence == "[truncated: 812 more characters]"
    assert sig.details["cuts"][0]["dropped"] == 812 and sig.details["cuts"][0]["unit"] == "characters"


@pytest.mark.parametrize(("marker", "sizes"), [
    ("[truncated: 828 more characters]", {"dropped": 828, "unit": "characters"}),
    ("… [truncated: 1,204 more chars]", {"dropped": 1204, "unit": "characters"}),
    ("(output truncated after 4,000 chars)", {"limit": 4000, "unit": "characters"}),
    ("truncated to 512 tokens", {"limit": 512, "unit": "tokens"}),
    ("... (1,234 more lines)", {"dropped": 1234, "unit": "lines"}),
    ("[truncated]", {}),
    ("<output truncated>", {}),
])
def test_truncation_sizes(marker: str, sizes: dict[str, Any]) -> None:
    assert truncation_sizes(marker) == sizes


def test_went_well_needs_positive_evidence() -> None:
    asked = ("How do I rotate my key?", "Open Settings, then Keys, then Rotate.")
    assert not went_well(make_thread(asked))  # silence says nothing
    assert went_well(make_thread(asked, ("Thanks, that works!", "You're welcome!")))
    assert went_well(make_thread(asked, ("¡Gracias!", "¡De nada!")))
    assert not went_well(make_thread(asked, ("That's not what I asked.", "Sorry.")))
    # Thanking in the opening message ("thanks in advance") is not a verdict on the answer.
    assert not went_well(make_thread(("Thanks in advance: how do I rotate my key?", "Open Settings.")))
    up = Feedback(id="f1", thread_id="t1", kind="feedback", score=1.0, label="thumbs_up")
    down = Feedback(id="f2", thread_id="t1", kind="feedback", score=0.0, label="thumbs_down")
    assert went_well(make_thread(asked, feedback=[up])) and not went_well(make_thread(asked, feedback=[down]))


def test_language_switch_details() -> None:
    thread = next(p.values[1] for p in POSITIVE if p.id == "language-switch-ja")
    (sig,) = run("language_switch", thread)
    assert sig.details["from"] == "en" and sig.details["to"] == "ja"
    assert sig.details["agent_followed"] is True


@pytest.mark.parametrize(("text", "lang"), [
    ("Hello, where is my order? It has not arrived yet.", "en"),
    ("¿Dónde está mi pedido? Lo pedí hace una semana.", "es"),
    ("Bonjour, je n'ai pas reçu ma commande.", "fr"),
    ("Hallo, ich habe meine Bestellung nicht bekommen.", "de"),
    ("Ciao, non ho ricevuto il mio ordine.", "it"),
    ("Olá, eu não recebi o meu pedido ainda.", "pt"),
    ("Hallo, ik heb mijn bestelling niet ontvangen.", "nl"),
    ("注文がまだ届いていません。", "ja"),
    ("我的订单还没到", "zh"),
    ("주문이 아직 도착하지 않았어요", "ko"),
    ("طلبي لم يصل بعد", "ar"),
    ("ההזמנה שלי עדיין לא הגיעה", "he"),
    ("Мой заказ ещё не пришёл", "ru"),
    ("Η παραγγελία μου δεν έφτασε", "el"),
    ("मेरा ऑर्डर अभी तक नहीं आया", "hi"),
    ("คำสั่งซื้อของฉันยังไม่มาถึง", "th"),
    ("ᏣᎳᎩ ᎦᏬᏂᎯᏍᏗ", "cherokee"),  # a script outside the table: named from Unicode
    ("My order 88123 の状況を教えてください", "ja"),
    ("ok", None),
    ("Yes", None),
    # Machine text (ids, hashes, key=value, hosts) says nothing about the writer's language: the
    # hex of a request id splits into "a", "d", "e" ..., which are French stop words.
    ("It still fails. Here is the log from the app:\n2026-03-15T00:08:08.949Z ERROR [acquirer.gateway] "
     "socket timeout after 15000ms host=api.acme.example req_id=5573e3ee28d80905 attempt=1", "en"),
    ("2026-03-15T00:08:08.949Z WARN [auth.3ds] cvc_check=fail req_id=2c1330bb5df8fe19 d=a c=e", None),
    ("C'est l'ordre d'achat que j'ai payé, réf. AP-10212.", "fr"),
])
def test_detect_language(text: str, lang: str | None) -> None:
    assert detect_language(text) == lang


def test_stall_details_and_threshold() -> None:
    many = make_thread(*[(f"still broken {i}", "Try again.") for i in range(5)])
    assert run("stall", many) == []
    (sig,) = run("stall", many, DetectionContext(max_turns=3))
    assert sig.turn_index == 3 and sig.details["unresolved_turns"] == 5


def test_context_budget_lookup() -> None:
    ctx = DetectionContext()
    assert ctx.context_budget("openai:gpt-4o-mini-2024-07-18") == 128_000
    assert ctx.context_budget("gpt-4-0613") == 8_192
    assert ctx.context_budget("my-local-model") == 8000
    assert ctx.context_budget(None) == 8000
    custom = DetectionContext(context_budgets={"acme": 2000}, default_context_budget=4000)
    assert custom.context_budget("acme-large") == 2000 and custom.context_budget("gpt-4o") == 4000
    thread = make_thread(turn("hi", "hello", llm_calls=[llm(3000, model="acme-large")]))
    (sig,) = run("context_loss", thread, custom)
    assert sig.details["budget"] == 2000 and sig.details["input_tokens"] == 3000


@pytest.mark.parametrize("kwargs", [
    {"max_turns": 0}, {"rephrase_jaccard": 0.0}, {"rephrase_ratio": 1.5}, {"latency_z": -1.0},
    {"latency_threshold_ms": 0.0}, {"retrieval_tool_pattern": "("}, {"evidence_max_chars": 0},
])
def test_context_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        DetectionContext(**kwargs)


# --- latency across a batch ------------------------------------------------------------------------


def _batch_with_one_slow_turn() -> list[Thread]:
    threads = []
    for i in range(30):
        lat = 1500.0 + (i % 7) * 120.0  # 1.5 s .. 2.2 s
        threads.append(make_thread(turn("Where is my order?", "On its way.", latency_ms=lat),
                                   turn("Thanks", "Welcome!", latency_ms=lat + 50), thread_id=f"b{i}"))
    threads[7].turns[1].latency_ms = 45_000.0
    return threads


def test_latency_threshold_statistics() -> None:
    assert latency_threshold([1000.0] * 50) is None  # nothing stands out
    assert latency_threshold([1000.0, 2000.0]) is None  # too few samples
    normal = [1000.0 + 20 * i for i in range(50)]
    thr = latency_threshold([*normal, 60_000.0])
    assert thr is not None and max(normal) < thr < 60_000.0
    # MAD 0 but not all equal: the mean absolute deviation stands in.
    thr0 = latency_threshold([1000.0] * 40 + [1100.0, 50_000.0])
    assert thr0 is not None and 1100.0 < thr0 < 50_000.0


def test_detect_signals_computes_batch_latency_threshold() -> None:
    threads = _batch_with_one_slow_turn()
    signals = [s for s in detect_signals(threads, registry=only("latency_outlier"))]
    assert [(s.thread_id, s.turn_index) for s in signals] == [("b7", 1)]
    assert signals[0].details["latency_ms"] == 45_000.0
    # One thread alone has no batch: no threshold, no signal.
    assert detect_thread(threads[7], registry=only("latency_outlier")) == []
    # The floor: a fast batch does not make a 900 ms turn an outlier.
    fast = [make_thread(turn("hi", "hello", latency_ms=100.0 + i), thread_id=f"f{i}") for i in range(30)]
    fast[0].turns[0].latency_ms = 900.0
    assert detect_signals(fast, registry=only("latency_outlier")) == []


def test_turn_latency_falls_back_to_timestamps() -> None:
    t0 = datetime(2024, 5, 1, 12, 0, 0)
    t = Turn(id="x", thread_id="t", started_at=t0, ended_at=t0 + timedelta(seconds=3))
    assert turn_latency_ms(t) == 3000.0
    assert turn_latency_ms(Turn(id="y", thread_id="t")) is None


# --- registry ------------------------------------------------------------------------------------


def test_default_registry_has_the_builtins_in_order() -> None:
    assert BUILTIN_DETECTORS == (
        "frustration", "abandonment", "escalation", "refusal", "tool_error", "ungrounded", "stall",
        "context_loss", "language_switch", "language_mismatch", "tool_output_truncated",
        "latency_outlier", "negative_feedback", "self_report",
    )
    assert all(name in default_registry for name in BUILTIN_DETECTORS)


def test_user_detector_is_registered_and_run() -> None:
    reg = default_registry.copy()

    @reg.register("coupon_leak")
    def coupon_leak(thread: Thread, ctx: DetectionContext) -> list[Signal]:
        out = []
        for t in thread.turns:
            i = t.reply_text.find("SAVE50")
            if i >= 0:
                out.append(Signal(thread_id=thread.thread_id, kind="coupon_leak", turn_index=t.index,
                                  evidence=t.reply_text[i:i + 6], details={"min": ctx.extra.get("min")}))
        return out

    thread = make_thread(("Any discount?", "Use code SAVE50 at checkout."))
    signals = detect_signals([thread], registry=reg, context=DetectionContext(extra={"min": 1}))
    leak = [s for s in signals if s.kind == "coupon_leak"]
    assert [(s.evidence, s.turn_index, s.details) for s in leak] == [("SAVE50", 0, {"min": 1})]
    assert "coupon_leak" not in default_registry  # the copy did not touch the default


def test_register_on_default_registry() -> None:
    def shouty(thread: Thread, ctx: DetectionContext) -> list[Signal]:
        return [Signal(thread_id=thread.thread_id, kind="shouty", evidence="x")]

    register_detector("shouty_test", shouty)
    try:
        assert default_registry.get("shouty_test") is shouty
        assert any(s.kind == "shouty" for s in detect_thread(make_thread(("x", "y"))))
    finally:
        default_registry.unregister("shouty_test")
    assert "shouty_test" not in default_registry


def test_registry_errors() -> None:
    reg = DetectorRegistry()

    def noop(thread: Thread, ctx: DetectionContext) -> list[Signal]:
        return []

    reg.register("a", noop)
    with pytest.raises(ConfigError, match="already registered"):
        reg.register("a", noop)
    reg.register("a", noop, replace=True)
    with pytest.raises(ConfigError):
        reg.register("", noop)
    with pytest.raises(ConfigError):
        reg.register("b", "not a function")  # type: ignore[call-overload]
    with pytest.raises(ConfigError, match="no detector named 'zzz'"):
        reg.get("zzz")
    with pytest.raises(ConfigError):
        reg.unregister("zzz")
    with pytest.raises(ConfigError):
        default_registry.select(["frustration", "nope"])
    assert default_registry.select(["refusal", "stall"]).names() == ["refusal", "stall"]


def test_failing_detectors_raise_extraction_error() -> None:
    reg = DetectorRegistry()

    @reg.register("broken")
    def broken(thread: Thread, ctx: DetectionContext) -> list[Signal]:
        raise KeyError("oops")

    with pytest.raises(ExtractionError, match=r"'broken' failed on thread 't1'"):
        detect_thread(make_thread(("hi", "hello")), registry=reg)

    bad = DetectorRegistry({"bad": lambda thread, ctx: "nope"})  # type: ignore[dict-item,return-value]
    with pytest.raises(ExtractionError, match="must return a list of Signal"):
        detect_thread(make_thread(("hi", "hello")), registry=bad)


def test_detect_signals_keeps_thread_order_and_is_deterministic() -> None:
    threads = [p.values[1].model_copy(update={"thread_id": f"c{i}"}) for i, p in enumerate(POSITIVE[:12])]
    first = detect_signals(threads, context=CTX)
    assert first == detect_signals(threads, context=CTX)
    order = [s.thread_id for s in first]
    assert order == sorted(order, key=lambda tid: int(tid[1:]))
