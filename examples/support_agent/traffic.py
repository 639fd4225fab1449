"""Simulated production traffic for the Acme Pay support agent.

:func:`simulate` runs simulated customers against :func:`~examples.support_agent.agent.build_agent`.
Every customer opens with a real, human-written banking question from BANKING77 (PolyAI, CC BY 4.0)
and then *reacts to the agent's actual replies*: gives an order number when asked, says thanks and
leaves when helped, and otherwise rephrases angrily, asks for a human, or just leaves, depending on
their temper. Some switch language, paste a ~4,000-token error log, or run long threads. Because
users react to what the agent says, a fixed prompt really changes the conversations.

Everything is deterministic given ``seed`` (one ``random.Random`` per thread, seeded from
``(seed, index)``), so two runs with the same seed produce the same conversations.

The intent mix (weights of :data:`INTENT_MIX`, BANKING77 categories of the opening message):

=============  ======  ===================================================================
intent         weight  categories
=============  ======  ===================================================================
refund          0.22   request_refund, Refund_not_showing_up, transaction_charged_twice
order_status    0.18   card_arrival, card_delivery_estimate
how_to          0.26   change_pin, activate_my_card, automatic_top_up,
                       apple_pay_or_google_pay, lost_or_stolen_card, getting_virtual_card,
                       transfer_timing, exchange_via_app (help-center articles exist)
kb_miss         0.14   age_limit, country_support, visa_or_mastercard,
                       verify_source_of_funds, card_acceptance (no article)
wants_human     0.10   card_payment_not_recognised, compromised_card,
                       cash_withdrawal_not_recognised (then ask for a person)
cancel_account  0.06   terminate_account
error_log       0.04   top_up_failed (then paste a ~4,000-token log)
=============  ======  ===================================================================

Behaviours on top: 40% of order-status customers run long threads (their order number early, 8-10
other questions, then back to the order: context loss); 7% switch to Spanish, French or Japanese
after the first reply; 6% of order customers first mistype their order number; 5% have an order
on a backend that times out. Tempers: 40% rephrase in capitals ("THAT'S NOT WHAT I ASKED"), 25%
ask for a human, 35% leave (half silently, half with "Forget it."). Feedback: thumbs-down on 40% of
failed threads, thumbs-up on 15% of solved ones.
"""

from __future__ import annotations

import csv
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AnyMessage, HumanMessage, ToolMessage

from loop_middleware import Store
from loop_middleware.errors import ConfigError

from ._tools import NO_RESULTS
from .agent import DEFAULT_PROMPT_DIR, build_agent

__all__ = [
    "INTENT_MIX",
    "IntentSpec",
    "SimulatedThread",
    "TrafficSummary",
    "banking77_path",
    "load_banking77",
    "simulate",
]


# --- the data set -----------------------------------------------------------------------------------


def banking77_path() -> Path:
    """``<shared>/datasets/banking77/train.csv``; ``<shared>`` is ``$LOOP_SHARED_DIR`` or the
    ``shared`` folder next to the repository."""
    shared = os.environ.get("LOOP_SHARED_DIR")
    base = Path(shared) if shared else Path(__file__).resolve().parents[2].parent / "shared"
    return base / "datasets" / "banking77" / "train.csv"


def load_banking77(path: Path | str | None = None) -> dict[str, list[str]]:
    """BANKING77 training texts by category (in file order).

    Raises:
        ConfigError: The CSV is missing or has no ``text``/``category`` columns.
    """
    p = Path(path) if path is not None else banking77_path()
    if not p.is_file():
        raise ConfigError(
            f"BANKING77 not found at {p}: the simulated users start from its real customer "
            "questions. Put train.csv (columns text,category) there, or set LOOP_SHARED_DIR to the "
            "folder that holds datasets/banking77/train.csv."
        )
    by: dict[str, list[str]] = {}
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"text", "category"} <= set(reader.fieldnames):
            raise ConfigError(f"{p} must have the columns text,category (got {reader.fieldnames})")
        for row in reader:
            by.setdefault(row["category"], []).append(row["text"])
    return by


# --- the intent mix -------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntentSpec:
    """One intent of the traffic: its share and the BANKING77 categories its users open with."""

    name: str
    weight: float
    categories: tuple[str, ...]


INTENT_MIX: tuple[IntentSpec, ...] = (
    IntentSpec("refund", 0.22, ("request_refund", "Refund_not_showing_up", "transaction_charged_twice")),
    IntentSpec("order_status", 0.18, ("card_arrival", "card_delivery_estimate")),
    IntentSpec("how_to", 0.26, (
        "change_pin", "activate_my_card", "automatic_top_up", "apple_pay_or_google_pay",
        "lost_or_stolen_card", "getting_virtual_card", "transfer_timing", "exchange_via_app",
    )),
    IntentSpec("kb_miss", 0.14, (
        "age_limit", "country_support", "visa_or_mastercard", "verify_source_of_funds", "card_acceptance",
    )),
    IntentSpec("wants_human", 0.10, (
        "card_payment_not_recognised", "compromised_card", "cash_withdrawal_not_recognised",
    )),
    IntentSpec("cancel_account", 0.06, ("terminate_account",)),
    IntentSpec("error_log", 0.04, ("top_up_failed",)),
)
"""Documented weights; see the module docstring."""

# The help-center titles that really answer a category (what a customer would accept).
_GOOD_ARTICLES: dict[str, tuple[str, ...]] = {
    "change_pin": ("Change or reset your card PIN",),
    "activate_my_card": ("Activate your new card",),
    "automatic_top_up": ("Automatic top-up",),
    "apple_pay_or_google_pay": ("Add your card to Apple Pay or Google Pay", "Why did my top-up fail?"),
    "lost_or_stolen_card": ("Lost or stolen card",),
    "getting_virtual_card": ("Get a virtual card",),
    "transfer_timing": ("How long do transfers take?",),
    "exchange_via_app": ("Exchange currencies in the app",),
    "terminate_account": ("Close your Acme Pay account",),
    "top_up_failed": ("Why did my top-up fail?",),
    "card_arrival": ("When will my card arrive?",),
    "card_delivery_estimate": ("When will my card arrive?",),
}
_FILLER_CATEGORIES = INTENT_MIX[2].categories

_CARD_ORDERS = tuple(f"AP-{10101 + i * 37}" for i in range(20))
_TRANSACTIONS = tuple(f"AP-{20202 + i * 41}" for i in range(20))
_FLAKY = tuple(f"AP-{40404 + i * 13}" for i in range(4))

_TEMPERS = (("rephrase", 0.40), ("human", 0.25), ("leave", 0.35))
P_LONG_THREAD = 0.40  # of order-status users
P_SWITCH_LANGUAGE = 0.07
P_TYPO_ID = 0.06
P_FLAKY_ORDER = 0.05
P_THUMBS_DOWN_ON_FAILURE = 0.40
P_THUMBS_UP_ON_SUCCESS = 0.15
P_BELIEVES_MADE_UP = 0.45  # customers who take a confident made-up answer at face value
MAX_TURNS = 20


# --- what users say -------------------------------------------------------------------------------

_SAY: dict[str, dict[str, tuple[str, ...]]] = {
    "give_id": {
        "en": ("It's {oid}.", "My order number is {oid}.", "Sure, the order number is {oid}."),
        "es": ("Mi número de pedido es {oid}.",),
        "fr": ("Mon numéro de commande est {oid}.",),
        "ja": ("注文番号は{oid}です。",),
    },
    "already_gave": {
        "en": ("I ALREADY GAVE YOU MY ORDER NUMBER! It's {oid}.",
               "I already told you, it's {oid}. Why do you keep asking?"),
        "es": ("¡YA TE DI MI NÚMERO DE PEDIDO! Es {oid}.",),
        "fr": ("Je vous l'ai déjà donné ! C'est {oid}.",),
        "ja": ("注文番号はもう伝えました！{oid}です。",),
    },
    "thanks": {
        "en": ("Thanks!", "Thank you, that helps.", "Great, thanks a lot.", "Perfect, thank you!"),
        "es": ("¡Gracias!",),
        "fr": ("Merci beaucoup !",),
        "ja": ("ありがとうございました。",),
    },
    "human": {
        "en": ("Can I talk to a human, please?", "I want to speak to a real person.",
               "Let me talk to a human agent."),
        "es": ("Quiero hablar con una persona, por favor.",),
        "fr": ("Je voudrais parler à un conseiller, s'il vous plaît.",),
        "ja": ("担当者と話したいです。",),
    },
    "human_angry": {
        "en": ("I WANT TO TALK TO A REAL PERSON. THIS IS USELESS.",
               "Are you even listening? Let me speak to a human agent NOW."),
        "es": ("¡QUIERO HABLAR CON UNA PERSONA! ESTO ES INÚTIL.",),
        "fr": ("JE VEUX PARLER À UN CONSEILLER ! C'EST INUTILE.",),
        "ja": ("人間の担当者と話させてください！",),
    },
    "giveup": {
        "en": ("Forget it.", "Never mind, I'll figure it out myself."),
        "es": ("Olvídalo.",),
        "fr": ("Laisse tomber.",),
        "ja": ("もういいです。",),
    },
    "pushback": {
        "en": ("I looked and there is no such option in my app. That's not what I asked.",),
        "es": ("No encuentro esa opción en la app. Eso no es lo que pregunté.",),
        "fr": ("Je ne trouve pas cette option dans l'appli. Ce n'est pas ce que j'ai demandé.",),
        "ja": ("アプリにそのような項目はありません。質問したのはそういうことではありません。",),
    },
    "angry_prefix": {
        "en": ("THAT'S NOT WHAT I ASKED. ", "NO. THAT DOESN'T ANSWER MY QUESTION. "),
        "es": ("ESO NO ES LO QUE PREGUNTÉ. ",),
        "fr": ("CE N'EST PAS CE QUE J'AI DEMANDÉ. ",),
        "ja": ("質問したのはそういうことではありません。",),
    },
    "log_intro": {
        "en": ("I checked all of that and it still fails. Here is the log from the app:",),
        "es": ("Ya revisé todo y sigue fallando. Este es el registro de la app:",),
        "fr": ("J'ai tout vérifié et ça échoue toujours. Voici le journal de l'appli :",),
        "ja": ("全部確認しましたが、まだ失敗します。アプリのログです：",),
    },
    "long_return": {
        "en": ("And about my card order from earlier: has it shipped yet?",
               "Back to my card order from before, what's the status now?"),
    },
}
# In another language, the restated request (the customer cannot restate the English original).
_RESTATE: dict[str, dict[str, str]] = {
    "refund": {"es": "QUIERO MI REEMBOLSO.", "fr": "JE VEUX MON REMBOURSEMENT.", "ja": "返金してください。"},
    "order_status": {"es": "¿DÓNDE ESTÁ MI TARJETA? MI PEDIDO NO HA LLEGADO.",
                     "fr": "OÙ EST MA CARTE ? MA COMMANDE N'EST PAS ARRIVÉE.",
                     "ja": "カードはどこですか？注文がまだ届きません。"},
    "other": {"es": "NO ENTIENDO TU RESPUESTA.", "fr": "JE NE COMPRENDS PAS VOTRE RÉPONSE.",
              "ja": "その回答はよくわかりません。"},
}


def _error_log(rng: random.Random, target_tokens: int = 4000) -> str:
    """A realistic app log of about ``target_tokens`` tokens (len // 4), keyword-neutral."""
    comps = ("payments.topup", "acquirer.gateway", "risk.engine", "auth.3ds", "app.network")
    errs = (
        "authorisation declined code=05 do_not_honour",
        "3ds challenge failed status=N eci=07",
        "issuer unavailable code=91 retry_in=30s",
        "risk score above threshold score=0.93 rule=velocity_24h",
        "socket timeout after 15000ms host=api.acmepay.example",
        "card verification failed cvc_check=fail avs=unavailable",
    )
    lines = []
    size = 0
    sec = rng.randrange(3600)
    while size < target_tokens * 4:
        sec += rng.randrange(1, 9)
        level = rng.choice(("ERROR", "ERROR", "WARN", "INFO"))
        line = (f"2026-03-{rng.randint(10, 28):02d}T{sec // 3600 % 24:02d}:{sec // 60 % 60:02d}:"
                f"{sec % 60:02d}.{rng.randrange(1000):03d}Z {level:<5} [{rng.choice(comps)}] "
                f"{rng.choice(errs)} req_id={rng.getrandbits(64):016x} attempt={rng.randint(1, 3)}")
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)


# --- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulatedThread:
    """One simulated conversation and its ground truth (for scoring the loop)."""

    thread_id: str
    category: str
    """BANKING77 category of the opening message."""
    intent: str
    """The traffic intent (see :data:`INTENT_MIX`)."""
    behaviours: tuple[str, ...]
    """``long_thread``, ``switch_language:es``, ``error_log``, ``typo_id``, ``flaky_order``,
    ``temper:rephrase`` ..."""
    transcript: tuple[tuple[str, str], ...]
    """(user message, agent reply) per turn."""
    tool_calls: tuple[str, ...]
    """Names of the tools called, in order."""
    resolved: bool
    """The customer's problem was solved (or handed to a human) by the end."""
    failures: tuple[str, ...]
    """What went wrong, from the agent's actual behaviour: ``refund_deflected``, ``ungrounded``,
    ``context_loss``, ``escalation_refused``, ``tool_error``, ``wrong_article``."""
    feedback: bool | None
    """Thumbs given (True up, False down), or None."""


@dataclass
class TrafficSummary:
    """What :func:`simulate` did."""

    threads: list[SimulatedThread]
    seed: int
    prompt_dir: str
    elapsed_s: float
    feedback_written: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def thread_ids(self) -> list[str]:
        """The simulated thread ids, in order."""
        return [t.thread_id for t in self.threads]

    @property
    def n_turns(self) -> int:
        """Turns over all threads."""
        return sum(len(t.transcript) for t in self.threads)

    def intents(self) -> Counter[str]:
        """Threads per intent."""
        return Counter(t.intent for t in self.threads)

    def failures(self) -> Counter[str]:
        """Threads per failure kind."""
        return Counter(f for t in self.threads for f in t.failures)

    def failure_rate(self, failure: str, intent: str | None = None) -> float:
        """Share of threads (of ``intent``, or all) with ``failure``."""
        pool = [t for t in self.threads if intent is None or t.intent == intent]
        return sum(failure in t.failures for t in pool) / len(pool) if pool else 0.0

    @property
    def resolved_rate(self) -> float:
        """Share of threads whose problem was solved."""
        return sum(t.resolved for t in self.threads) / len(self.threads) if self.threads else 0.0


# --- one customer ---------------------------------------------------------------------------------


@dataclass
class _Turn:
    reply: str
    tools: list[tuple[str, str, bool]]  # (name, result, error)


def _classify(reply: str) -> str:
    low = reply.lower()
    if "double-check the order number" in low:
        return "recheck_id"
    if "order number?" in low:
        return "asks_id"
    if "passed your conversation to a human" in low:
        return "handed_off"
    if "not responding" in low or "try again later" in low:
        return "error"
    if "can't help" in low or "not able to transfer" in low:
        return "refused"
    if "couldn't find that in our help center" in low:
        return "not_found"
    if low.startswith(("you're welcome", "glad i could help", "i'm sorry i couldn't")):
        return "closing"
    return "answer"


class _Customer:
    """A simulated customer: decides the next message from the agent's last reply."""

    def __init__(self, index: int, seed: int, spec: IntentSpec, category: str, opening: str,
                 data: Mapping[str, list[str]]) -> None:
        self.rng = rng = random.Random(f"{seed}:{index}")
        self.spec, self.category, self.opening = spec, category, opening
        self.intent = spec.name
        self.temper = _weighted(rng, _TEMPERS)
        self.lang = rng.choice(("es", "fr", "ja")) if rng.random() < P_SWITCH_LANGUAGE else None
        self.long_thread = self.intent == "order_status" and not self.lang and rng.random() < P_LONG_THREAD
        pool = _TRANSACTIONS if self.intent == "refund" else _CARD_ORDERS
        self.flaky = self.intent in ("refund", "order_status") and rng.random() < P_FLAKY_ORDER
        self.order_id = rng.choice(_FLAKY) if self.flaky else rng.choice(pool)
        self.typo = self.intent in ("refund", "order_status") and rng.random() < P_TYPO_ID
        self.fillers = (
            [rng.choice(data[rng.choice(_FILLER_CATEGORIES)]) for _ in range(rng.randint(8, 10))]
            if self.long_thread else []
        )
        self.behaviours = tuple(b for b in (
            f"temper:{self.temper}",
            f"switch_language:{self.lang}" if self.lang else "",
            "long_thread" if self.long_thread else "",
            "error_log" if self.intent == "error_log" else "",
            "typo_id" if self.typo else "",
            "flaky_order" if self.flaky else "",
        ) if b)
        self.turns_done = 0
        self.gave_id = False
        self.unhelpful = 0
        self.asked_human = False
        self.log_sent = False
        self.solved = False
        self.returned = False
        self.misled = False
        self.repeats = 0
        self.failures: list[str] = []

    # -- utterances -----------------------------------------------------------------------------

    def _lang(self) -> str:
        # Switchers move to their language from their second message on.
        return self.lang if self.lang and self.turns_done >= 1 else "en"

    def say(self, kind: str, **kw: str) -> str:
        table = _SAY[kind]
        options = table.get(self._lang(), table["en"])
        return self.rng.choice(options).format(**kw)

    def _fail(self, kind: str) -> None:
        if kind not in self.failures:
            self.failures.append(kind)

    # -- the policy ------------------------------------------------------------------------------

    def next_message(self, turn: _Turn | None) -> str | None:
        """The customer's next message (None: they leave)."""
        if turn is None:
            return self.opening
        self.turns_done += 1
        self._record_failures(turn)
        kind = _classify(turn.reply)
        if kind == "closing" or self.turns_done >= MAX_TURNS:
            return None
        if kind == "recheck_id":
            self.gave_id = True
            return self.say("give_id", oid=self.order_id)
        if kind == "asks_id":
            if self.gave_id:
                self._fail("context_loss")
                self.repeats += 1
                if self.repeats > 1:
                    return self._unhappy()
                return self.say("already_gave", oid=self.order_id)
            oid = self.order_id
            if self.typo:  # swaps two digits; the agent will not find that order
                self.typo = False
                oid = oid[:-2] + oid[-1] + oid[-2] if oid[-1] != oid[-2] else oid[:-1] + "0"
            else:
                self.gave_id = True
            return self.say("give_id", oid=oid)
        if self.long_thread and self.solved and not self.returned:
            # A patient customer in a long thread: on to the next question, whatever the answer.
            return self._after_solved()
        if kind == "handed_off":
            self.solved = True
            return self.say("thanks")
        if kind == "error":
            return None  # "I'll come back later": the thread just ends
        if kind == "refused":
            if self.asked_human:
                self._fail("escalation_refused")
            return self._unhappy()
        if kind == "not_found":
            if self.intent == "wants_human" or self.temper == "human":
                return self._ask_human()
            return None
        # An answer: does it solve *this* customer's problem?
        if self.intent == "wants_human" and not self.asked_human:
            return self._ask_human()
        if self.intent == "error_log" and not self.log_sent:
            self.log_sent = True
            return f"{self.say('log_intro')}\n\n{_error_log(self.rng)}"
        if self._solves(turn.reply):
            return self._after_solved()
        made_up = any(name == "search_kb" and result.strip() == NO_RESULTS for name, result, _ in turn.tools)
        if made_up and self.unhelpful == 0 and self.rng.random() < P_BELIEVES_MADE_UP:
            self.misled = True  # takes the made-up answer at face value
            return self.say("thanks")
        if made_up and self.unhelpful == 0:
            self.unhelpful += 1
            return self.say("pushback")
        return self._unhappy()

    def _after_solved(self) -> str | None:
        self.solved = True
        if self.long_thread and not self.returned:
            if self.fillers:
                return self.fillers.pop(0)
            self.returned = True
            return self.say("long_return")
        if self.rng.random() < 0.8:
            return self.say("thanks")
        return None

    def _ask_human(self) -> str:
        self.asked_human = True
        return self.say("human")

    def _unhappy(self) -> str | None:
        """A reply that did not help: rephrase angrily, ask for a human, or leave."""
        self.solved = False
        self.unhelpful += 1
        leave = self.say("giveup") if self.rng.random() < 0.5 else None
        if self.asked_human:
            return self.say("human_angry") if self.unhelpful <= 2 and self.temper != "leave" else leave
        if self.unhelpful >= 2 or self.temper == "leave":
            return leave
        if self.temper == "human":
            return self._ask_human()
        lang = self._lang()
        if lang == "en":
            restated = self.opening.upper()
        else:
            restated = _RESTATE[self.intent if self.intent in _RESTATE else "other"][lang]
        return self.say("angry_prefix") + restated

    def _solves(self, reply: str) -> bool:
        if self.intent == "error_log" and self.log_sent:
            return False  # the same article again does not fix what the log shows
        if self.intent == "refund":
            return reply.startswith("Done:") and self.order_id in reply
        if self.intent == "order_status" and self.order_id in reply:
            return True
        titles = _GOOD_ARTICLES.get(self.category, ())
        return reply.startswith("From our help center") and any(t in reply for t in titles)

    def _record_failures(self, turn: _Turn) -> None:
        low = turn.reply.lower()
        if "can't help with refunds" in low:
            self._fail("refund_deflected")
        if any(err for _, _, err in turn.tools):
            self._fail("tool_error")
        searched_empty = any(n == "search_kb" and r.strip() == NO_RESULTS for n, r, _ in turn.tools)
        if searched_empty and "couldn't find" not in low:
            self._fail("ungrounded")
        if (low.startswith("from our help center") and not self.long_thread
                and not any(t in turn.reply for t in _GOOD_ARTICLES.get(self.category, ()))):
            self._fail("wrong_article")

    def feedback(self) -> bool | None:
        if self.failures and not self.solved and not self.misled:
            return False if self.rng.random() < P_THUMBS_DOWN_ON_FAILURE else None
        if self.failures:
            return False if self.rng.random() < P_THUMBS_DOWN_ON_FAILURE / 2 else None
        return True if self.rng.random() < P_THUMBS_UP_ON_SUCCESS else None


def _weighted(rng: random.Random, options: Sequence[tuple[str, float]]) -> str:
    x = rng.random() * sum(w for _, w in options)
    for name, w in options:
        x -= w
        if x < 0:
            return name
    return options[-1][0]


def _turn_from(messages: Sequence[AnyMessage]) -> _Turn:
    start = max(i for i, m in enumerate(messages) if isinstance(m, HumanMessage))
    tools = [
        (m.name or "", str(m.content), m.status == "error")
        for m in messages[start + 1 :] if isinstance(m, ToolMessage)
    ]
    last = messages[-1]
    reply = last.content if isinstance(last.content, str) and not isinstance(last, ToolMessage) else ""
    return _Turn(reply=reply, tools=tools)


# --- the driver -----------------------------------------------------------------------------------


def simulate(
    n_threads: int,
    *,
    seed: int,
    prompt_dir: Path | str = DEFAULT_PROMPT_DIR,
    config_path: Path | str | None = None,
    callbacks: Sequence[BaseCallbackHandler] = (),
    store: Store | None = None,
    model: BaseChatModel | None = None,
    thread_prefix: str | None = None,
    data_path: Path | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TrafficSummary:
    """Run ``n_threads`` simulated customers against the agent built from ``prompt_dir``.

    Args:
        n_threads: How many conversations.
        seed: Everything (customers, their words, their reactions) follows from it.
        prompt_dir: The prompt directory for :func:`build_agent` (the current v2 prompts by
            default; ``agent.V1_PROMPT_DIR`` for the previous version).
        config_path: The harness config (``agent.yaml`` by default).
        callbacks: Callback handlers for every turn, e.g. a ``LoopCallbackHandler``.
        store: Where explicit feedback (thumbs) goes; by default the ``store`` of the first
            callback that has one; no feedback is written when there is none.
        model: The chat model (the offline simulator by default).
        thread_prefix: Thread ids are ``{prefix}-{index:05d}``; default ``sim{seed}``. Use distinct
            prefixes for cohorts that share a database.
        data_path: The BANKING77 ``train.csv`` (see :func:`banking77_path`).
        progress: Called as ``progress(done, total)`` after each thread.

    Returns:
        A :class:`TrafficSummary` with every conversation and its ground truth.

    Raises:
        ConfigError: BANKING77 or an agent file is missing, or ``n_threads`` is negative.
    """
    if n_threads < 0:
        raise ConfigError(f"n_threads must be >= 0, got {n_threads}")
    data = load_banking77(data_path)
    missing = sorted({c for s in INTENT_MIX for c in s.categories} - set(data))
    if missing:
        raise ConfigError(f"BANKING77 file lacks the categories {missing}")
    graph = build_agent(prompt_dir, config_path, model=model)
    prefix = thread_prefix or f"sim{seed}"
    if store is None:
        store = next((s for cb in callbacks if isinstance(s := getattr(cb, "store", None), Store)), None)

    started = time.perf_counter()
    threads: list[SimulatedThread] = []
    weights = [(s.name, s.weight) for s in INTENT_MIX]
    specs = {s.name: s for s in INTENT_MIX}
    for i in range(n_threads):
        pick = random.Random(f"{seed}:{i}:opening")
        spec = specs[_weighted(pick, weights)]
        category = pick.choice(spec.categories)
        opening = pick.choice(data[category])
        user = _Customer(i, seed, spec, category, opening, data)
        thread_id = f"{prefix}-{i:05d}"
        cfg: Any = {"configurable": {"thread_id": thread_id}, "callbacks": list(callbacks)}
        transcript: list[tuple[str, str]] = []
        tool_names: list[str] = []
        turn: _Turn | None = None
        while (text := user.next_message(turn)) is not None:
            # Checkpoint once per turn, not per step: ~2x faster, same conversation.
            out = graph.invoke({"messages": [("user", text)]}, cfg, durability="exit")
            turn = _turn_from(out["messages"])
            transcript.append((text, turn.reply))
            tool_names.extend(name for name, _, _ in turn.tools)
        threads.append(SimulatedThread(
            thread_id=thread_id, category=category, intent=spec.name, behaviours=user.behaviours,
            transcript=tuple(transcript), tool_calls=tuple(tool_names), resolved=user.solved,
            failures=tuple(user.failures), feedback=user.feedback(),
        ))
        if progress is not None:
            progress(i + 1, n_threads)
    elapsed = time.perf_counter() - started

    written = 0
    if store is not None:
        # Feedback arrives after the conversation: let capture write the threads first.
        for cb in callbacks:
            flush = getattr(cb, "flush", None)
            if callable(flush):
                flush()
        for t in threads:
            if t.feedback is not None:
                store.add_feedback(t.thread_id, thumbs=t.feedback)
                written += 1
    return TrafficSummary(threads=threads, seed=seed, prompt_dir=str(prompt_dir),
                          elapsed_s=elapsed, feedback_written=written)
