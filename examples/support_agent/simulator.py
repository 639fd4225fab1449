"""``SupportSimulatorModel``: a scripted stand-in for the support agent's LLM, for offline runs.

It is **not** a language model. It is a small rule engine with the interface of a LangChain chat
model, so the example agent, capture and the whole improvement loop run offline, fast and
deterministically. What makes it useful for the loop is that its behaviour is read from the
*prompt text it receives* on every call (the system message), the way an instruction-following
LLM's would be:

* a ``## Refund policy`` section → it handles refunds (``lookup_order`` then ``request_refund``)
  and quotes the policy; without one it deflects ("I'm sorry, I can't help with refunds");
* a grounding instruction ("... say you could not find it ...", "... don't know ...") → when
  ``search_kb`` finds nothing it says "I couldn't find that in our help center"; without one it
  answers confidently from nothing;
* an ``## Escalation`` section → a request for a human is handed over (``handoff_to_human``);
  without it, refused ("I'm not able to transfer you");
* it can only use an order number present in the messages it was sent: when the harness trimmed
  the turn that held it, it asks for it again.

Intents come from keyword rules on the user's text (English, plus a few Spanish, French and
Japanese words). Nothing is kept between calls: the output is a pure function of
``(messages, seed)``.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool

__all__ = [
    "HARNESS_RETRIES_EXHAUSTED",
    "MODEL_NAME",
    "PromptRules",
    "SupportSimulatorModel",
    "detect_intent",
]

MODEL_NAME = "acme-support-simulator"

HARNESS_RETRIES_EXHAUSTED = (
    "[harness] Tool retries exhausted for this turn: do not call tools again; apologise and ask "
    "the customer to try again later."
)
"""The note the agent harness appends to the system prompt when a tool kept failing."""

# Not \b: in "AP-10249です" the Japanese letter after the digits is a word character too.
ORDER_ID_RX = re.compile(r"(?<![A-Za-z0-9])AP-?\d{5}(?!\d)", re.IGNORECASE)

# --- reading the prompt ---------------------------------------------------------------------------

_HEADING_RX = re.compile(r"^#{1,6}\s*(.+?)\s*#*\s*$", re.MULTILINE)
_GROUNDING_RX = re.compile(
    r"\b(?:could ?n[o']?t|can ?n[o']?t|cannot|unable to) find\b|\b(?:don'?t|do not) know\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class PromptRules:
    """What the simulator takes from a system prompt."""

    refund_policy: str | None
    """The body of the ``Refund policy`` section, or None when the prompt has none."""
    escalation: bool
    """The prompt has an ``Escalation`` (hand-over to a human) section."""
    grounded: bool
    """The prompt tells the agent to say it could not find an answer instead of guessing."""
    retries_exhausted: bool
    """The harness told the model to stop calling tools for this turn."""

    @classmethod
    def parse(cls, system: str) -> PromptRules:
        """Read the rules from the system prompt text."""
        sections: dict[str, str] = {}
        heads = list(_HEADING_RX.finditer(system))
        for i, m in enumerate(heads):
            end = heads[i + 1].start() if i + 1 < len(heads) else len(system)
            sections[m.group(1).strip().lower()] = system[m.end() : end].strip()
        refund = next((body for name, body in sections.items() if "refund polic" in name), None)
        escalation = any(
            ("escalat" in name or "hand-off" in name or "handoff" in name or "human" in name)
            for name in sections
        )
        return cls(
            refund_policy=refund,
            escalation=escalation,
            grounded=bool(_GROUNDING_RX.search(system)),
            retries_exhausted=HARNESS_RETRIES_EXHAUSTED in system,
        )

    def refund_line(self) -> str:
        """The policy sentence quoted to the customer after a refund request: the bullet about
        when the money arrives (business days), else about days, else the first one."""
        items: list[str] = []
        for raw in (self.refund_policy or "").splitlines():
            line = raw.strip()
            if not line:
                continue
            if line[:1] in "-*•" or not items:
                items.append(line.lstrip("-*• ").strip())
            else:  # a wrapped bullet continues on the next line
                items[-1] = f"{items[-1]} {line}"
        for pattern in (r"business days?", r"\bdays?\b"):
            for item in items:
                if re.search(pattern, item, re.IGNORECASE):
                    return item
        return items[0] if items else ""


# --- reading the user -----------------------------------------------------------------------------

_RX: dict[str, re.Pattern[str]] = {
    "giveup": re.compile(
        r"\b(?:forget it|never ?mind|i give up)\b|olv[ií]dalo|laisse[zr]? tomber|もういい", re.I
    ),
    "human": re.compile(
        r"\b(?:speak|talk|chat) (?:to|with) (?:a |an |the |some |your )?(?:real |actual |live )?"
        r"(?:human|person|agent|someone|somebody|representative|manager|operator)"
        r"|\b(?:real|actual) (?:person|human)\b|\bhuman agent\b"
        r"|hablar con (?:una persona|un agente|alguien)|parler (?:à|a|avec) (?:un|une|quelqu)"
        r"|担当者|人間|オペレーター",
        re.I,
    ),
    "refund": re.compile(
        r"refund|money back|reimburs|charged (?:me )?(?:twice|double|two times)|double[- ]?charg"
        r"|twice|duplicat|charged (?:me )?2 times|repeat(?:ed)? charge|multiple times|several times"
        r"|many times|more than once|two of the same|cancel (?:a |my |this |the )?(?:previous )?purchase"
        r"|revers(?:e|ed|al)\b|return it|shouldn'?t have been (?:made|charged)"
        r"|reembols|devuelv|rembours|返金",
        re.I,
    ),
    "order_status": re.compile(
        r"\bwaiting (?:on|for) (?:my|the|a) (?:new )?card|card (?:has ?n[o']?t|did ?n[o']?t|still"
        r" has ?n[o']?t|never|is yet to|has yet to|not) (?:arrived|come|came|been delivered|shown up|arrive)"
        r"|\b(?:not|never|yet to|hasn'?t) (?:arrived|been received|received it)|\bwhere(?:'s| is) my (?:new )?card"
        r"|\bwhen (?:will|should|can) (?:i|my|the) (?:new )?(?:get|receive|expect|card)|\bdeliver|\btrack"
        r"|\bship|\bin the mail|\bcard order|\border status|\bmy order|\bexpedite"
        r"|\bcard\b[^.?!]{0,25}\b(?:still|isn'?t|not|yet) (?:here|coming|come|arrived|received)"
        r"|\b(?:received|receive|get) my (?:new )?card\b|\bsent (?:me |out )?my (?:new )?card"
        r"|\bcard\b[^.?!]{0,25}\b(?:arrive|get here|get to me)|\bwait\w* for (?:my|the) (?:new )?card"
        r"|pedido|tarjeta|commande|注文|届",
        re.I,
    ),
    "thanks": re.compile(
        r"^\W*(?:thanks?|thank you|thx|cheers|great|perfect|ok(?:ay)?|gracias|merci|ありがとう)", re.I
    ),
}


def detect_intent(text: str) -> str:
    """The intent of one user message: ``giveup``, ``human``, ``refund``, ``provide_id``,
    ``order_status``, ``thanks`` or ``how_to`` (anything else: a question for the help center)."""
    words = len(text.split())
    if _RX["giveup"].search(text) and words < 12:
        return "giveup"
    if _RX["human"].search(text):
        return "human"
    if _RX["refund"].search(text):
        return "refund"
    if ORDER_ID_RX.search(text) and words <= 20:
        return "provide_id"
    if _RX["order_status"].search(text):
        return "order_status"
    if _RX["thanks"].search(text) and words <= 12:
        return "thanks"
    return "how_to"


def _active_intent(humans: Sequence[str]) -> str:
    """The intent the conversation is on: the last message's, looking back past bare answers."""
    for text in reversed(humans):
        intent = detect_intent(text)
        if intent != "provide_id":
            return intent
    # A bare order number with nothing before it (it was trimmed away): it is about that order.
    return "order_status"


def _latest_order_id(messages: Sequence[BaseMessage]) -> str | None:
    for m in reversed(messages):
        if isinstance(m, (HumanMessage, ToolMessage)):
            found = ORDER_ID_RX.findall(_text(m))
            if found:
                return "AP-" + re.sub(r"\D", "", str(found[-1]))
    return None


def _text(m: BaseMessage) -> str:
    c = m.content
    if isinstance(c, str):
        return c
    return " ".join(p if isinstance(p, str) else str(p.get("text", "")) for p in c)


# --- the model ------------------------------------------------------------------------------------

_MADE_UP = (
    "Sure! You can do that directly in the Acme Pay app: go to Settings > {topic} and follow the "
    "steps on screen. It is available to every customer and takes effect immediately.",
    "Yes, that's possible. Open the app, tap Profile > {topic}, and confirm with your passcode; "
    "the change is applied right away and there is no fee.",
    "Good question! {topic} is fully supported: just enable it under Account > {topic} in the "
    "app. Most customers have it set up within two minutes.",
)


class SupportSimulatorModel(BaseChatModel):
    """A scripted simulator of the Acme Pay support LLM. **Not an LLM.**

    Offline, deterministic and instant: it follows keyword rules and reads its instructions from
    the system message of each call (see the module docstring for exactly which parts of the
    prompt change what it does). Tool calls are proper ``AIMessage.tool_calls``; token usage is
    estimated as ``len(text) // 4``; latency is simulated (reported in ``response_metadata``,
    never slept).

    Args:
        model: The model name reported to tracing (``acme-support-simulator``).
        seed: Varies the wording of some replies; the output is a pure function of
            ``(messages, seed)``.
    """

    model: str = MODEL_NAME
    seed: int = 0

    @property
    def _llm_type(self) -> str:
        return "scripted-simulator"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "seed": self.seed}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "simulator"
        params["ls_model_name"] = self.model
        return params

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Accept the agent's tools (the simulator knows their names already)."""
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        message = self.respond(messages)
        return ChatResult(generations=[ChatGeneration(message=message)])

    # -- the rules ---------------------------------------------------------------------------------

    def respond(self, messages: Sequence[BaseMessage]) -> AIMessage:
        """The next assistant message for ``messages`` (system prompt first)."""
        system = "\n\n".join(_text(m) for m in messages if isinstance(m, SystemMessage))
        rules = PromptRules.parse(system)
        convo = [m for m in messages if not isinstance(m, SystemMessage)]
        last_human = max((i for i, m in enumerate(convo) if isinstance(m, HumanMessage)), default=-1)
        turn = convo[last_human + 1 :]
        humans = [_text(m) for m in convo if isinstance(m, HumanMessage)]
        user = humans[-1] if humans else ""

        last = turn[-1] if turn else None
        if isinstance(last, ToolMessage) and last.status == "error":
            if rules.retries_exhausted:
                return self._reply(messages, "I'm sorry, our order system is not responding right "
                                   "now. Please try again later.")
            # Like an LLM would: try the same call again.
            prev = next(m for m in reversed(turn) if isinstance(m, AIMessage) and m.tool_calls)
            tc = prev.tool_calls[-1]
            return self._call(messages, tc["name"], dict(tc["args"]))

        results: dict[str, str] = {}
        for m in turn:
            if isinstance(m, ToolMessage) and m.status != "error" and m.name:
                results[m.name] = _text(m)

        intent = _active_intent(humans)
        if intent == "giveup":
            return self._reply(messages, "I'm sorry I couldn't be more helpful today.")
        if intent == "thanks":
            return self._reply(messages, self._pick(messages, (
                "You're welcome! Have a great day.",
                "Glad I could help. Have a nice day!",
            )))
        if intent == "human":
            if not rules.escalation:
                return self._reply(messages, "I'm sorry, I'm not able to transfer you to a human "
                                   "agent. I can keep helping you here.")
            if "handoff_to_human" not in results:
                return self._call(messages, "handoff_to_human", {"reason": _snippet(humans[0], 160)})
            ticket = re.search(r"HO-\d+", results["handoff_to_human"])
            return self._reply(messages, "I've passed your conversation to a human agent"
                               f"{f' (ticket {ticket.group(0)})' if ticket else ''}. They will "
                               "reply here shortly.")
        if intent == "refund" and rules.refund_policy is None:
            return self._reply(messages, "I'm sorry, I can't help with refunds. Please check the "
                               "Payments section of the app.")
        if intent in ("refund", "order_status"):
            return self._order_flow(messages, rules, intent, convo, results, humans)
        return self._how_to(messages, rules, user, results)

    def _order_flow(
        self, messages: Sequence[BaseMessage], rules: PromptRules, intent: str,
        convo: Sequence[BaseMessage], results: dict[str, str], humans: Sequence[str],
    ) -> AIMessage:
        oid = _latest_order_id(convo)
        if oid is None:
            what = "a refund" if intent == "refund" else "your card order"
            return self._reply(messages, f"I can help with {what}. Could you give me your order "
                               "number?")
        if "lookup_order" not in results:
            return self._call(messages, "lookup_order", {"order_id": oid})
        found = results["lookup_order"]
        if "not found" in found.lower():
            return self._reply(messages, f"I couldn't find order {oid}. Could you double-check "
                               "the order number?")
        if intent == "order_status":
            return self._reply(messages, f"Here is the latest on your order. {found}")
        if "request_refund" not in results:
            reason = next((h for h in reversed(humans) if detect_intent(h) == "refund"), humans[-1])
            return self._call(messages, "request_refund", {"order_id": oid,
                                                            "reason": _snippet(reason, 120)})
        done = results["request_refund"]
        if done.lower().startswith("refund rejected"):
            return self._reply(messages, f"I couldn't open a refund for that one: {done}")
        return self._reply(messages, f"Done: {done} {rules.refund_line()}".strip())

    def _how_to(
        self, messages: Sequence[BaseMessage], rules: PromptRules, user: str, results: dict[str, str]
    ) -> AIMessage:
        if "search_kb" not in results:
            # The question, not a log pasted under it: its first paragraph.
            return self._call(messages, "search_kb", {"query": _snippet(user.split("\n\n")[0], 300)})
        found = results["search_kb"].strip()
        if found and not found.lower().startswith("no results"):
            head, _, body = found.partition("\n")
            title = re.sub(r"^\[[^\]]*\]\s*", "", head)
            sentences = re.split(r"(?<=[.!?])\s+", body.strip())
            return self._reply(messages, f"From our help center, “{title}”: {' '.join(sentences[:2])}")
        if rules.grounded:
            offer = " I can hand you over to a human agent if you like." if rules.escalation else ""
            return self._reply(messages, f"I couldn't find that in our help center.{offer}")
        words = sorted(re.findall(r"[A-Za-z]{4,}", user), key=lambda w: (-len(w), w.lower()))
        topic = words[0].capitalize() if words else "Settings"
        return self._reply(messages, self._pick(messages, _MADE_UP).format(topic=topic))

    # -- message construction ----------------------------------------------------------------------

    def _digest(self, messages: Sequence[BaseMessage], salt: str = "") -> int:
        h = zlib.crc32(f"{self.seed}|{salt}".encode())
        for m in messages:
            h = zlib.crc32(_text(m).encode("utf-8", "surrogatepass"), h)
        return h

    def _pick(self, messages: Sequence[BaseMessage], options: Sequence[str]) -> str:
        return options[self._digest(messages, "pick") % len(options)]

    def _usage(self, messages: Sequence[BaseMessage], out: str) -> dict[str, Any]:
        tokens_in = sum(len(_text(m)) for m in messages) // 4
        tokens_out = max(len(out) // 4, 1)
        return {"input_tokens": tokens_in, "output_tokens": tokens_out,
                "total_tokens": tokens_in + tokens_out}

    def _meta(self, usage: dict[str, Any], finish: str, messages: Sequence[BaseMessage]) -> dict[str, Any]:
        # A plausible, deterministic latency: prefill + decode + jitter from the input.
        jitter = self._digest(messages, "latency") % 120
        latency = 180 + usage["input_tokens"] * 0.04 + usage["output_tokens"] * 12 + jitter
        return {"model_name": self.model, "finish_reason": finish,
                "simulated_latency_ms": round(latency, 1)}

    def _reply(self, messages: Sequence[BaseMessage], text: str) -> AIMessage:
        usage = self._usage(messages, text)
        return AIMessage(content=text, usage_metadata=usage,
                         response_metadata=self._meta(usage, "stop", messages))

    def _call(self, messages: Sequence[BaseMessage], name: str, args: dict[str, Any]) -> AIMessage:
        call_id = f"call_{self._digest(messages, name + repr(sorted(args.items()))):08x}"
        usage = self._usage(messages, name + repr(args))
        return AIMessage(
            content="",
            tool_calls=[{"name": name, "args": args, "id": call_id, "type": "tool_call"}],
            usage_metadata=usage,
            response_metadata=self._meta(usage, "tool_calls", messages),
        )


def _snippet(text: str, limit: int) -> str:
    """The first ``limit`` characters of ``text`` on one line (a pasted log is cut)."""
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 1].rstrip() + "…"
