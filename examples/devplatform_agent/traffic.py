"""Simulated production traffic for the Kestrel Cloud developer-support agent.

:func:`simulate` runs simulated developers against :func:`~examples.devplatform_agent.agent.build_agent`.
Each opens with one of a set of hand-written developer questions (no data set needed) and then
*reacts to the agent's actual replies*: says thanks and leaves when helped, and otherwise pushes
back, restates the question, asks for their language, or just leaves, depending on their temper.
Because developers react to what the agent says, a fixed prompt or config really changes the
conversations. Deterministic given ``seed`` (one ``random.Random`` per thread).

=============  ======  =================================================================
intent         weight  what the developer asks
=============  ======  =================================================================
how_to          0.40   API keys, rollbacks (long docs pages), webhooks, custom domains, env
                       vars, build cache (short pages)
quota           0.12   rate limits, 429 errors, quota increases
sso_setup       0.15   setting up SAML single sign-on for an organisation
project         0.23   the state of one project (``prj-1234``)
how_to_intl     0.10   API keys or rollbacks, asked in Spanish, German or Portuguese
=============  ======  =================================================================

Tempers: 50% complain or restate the question (once), 50% leave (80% of them with "Forget it."). Feedback:
thumbs-down on 40% of failed threads, thumbs-up on 15% of solved ones.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AnyMessage, HumanMessage, ToolMessage

from loop_middleware import Store
from loop_middleware.errors import ConfigError

from .agent import DEFAULT_PROMPT_DIR, build_agent

__all__ = ["INTENT_MIX", "SimulatedThread", "TrafficSummary", "simulate"]

INTENT_MIX: tuple[tuple[str, float], ...] = (
    ("how_to", 0.40), ("quota", 0.12), ("sso_setup", 0.15), ("project", 0.23), ("how_to_intl", 0.10),
)

# topic -> (docs page title that answers it, openings)
_HOW_TO: dict[str, tuple[str, tuple[str, ...]]] = {
    "api_key": ("Rotate an API key", (
        "How do I rotate an API key? I think ours leaked in a public repo.",
        "A former contractor still knows our API key. How can I revoke it and get a new key?",
        "What's the procedure to rotate the API key our CI pipeline uses?",
    )),
    "rollback": ("Roll back a deploy", (
        "Our last deploy broke production. How do I roll back to the previous deploy?",
        "How can I revert a bad release to the deploy before it?",
        "Is there a way to roll back a deploy without rebuilding?",
    )),
    "domain": ("Add a custom domain", (
        "How do I add a custom domain to my project?",
        "What DNS record do I need to point my own domain at my app?",
        "How do I set up https on a custom domain?",
    )),
    "env": ("Set environment variables", (
        "How do I set environment variables for production?",
        "I changed a secret env var but the app still uses the old value. How do I set env vars properly?",
        "Where do I configure environment variables for my app?",
    )),
    "webhook": ("Receive deploy webhooks", (
        "How can I get a webhook when a deploy fails?",
        "How do I verify the signature of your deploy webhooks?",
        "Can I send deploy events to a webhook for our Slack bot?",
    )),
    "cache": ("Clear the build cache", (
        "My build fails with missing modules after I changed dependencies. How do I clear the build cache?",
        "How do I force a build without the cache? I'm getting a stale build.",
        "Builds keep serving old assets. Is there a build cache I can clear?",
    )),
}
_QUOTA = (
    "We're getting 429 Too Many Requests from the API since this morning. What can we do?",
    "How do I get a quota increase for API requests?",
    "Our integration is being throttled by the rate limit. How do we handle that?",
    "What are the rate limits of the API and how do I request more?",
    "We keep hitting the rate limit during our nightly sync. Can the quota be raised?",
)
_SSO = (
    "How do I set up SAML SSO for our organisation?",
    "We want everyone to log in with Okta. How do I configure single sign-on?",
    "What are the steps to enable SAML single sign-on with Azure AD?",
    "How can I enforce SSO for all members of our org?",
)
_PROJECT = (
    "Can you check project {pid}? The last deploy seems stuck.",
    "What plan is {pid} on, and did its last deploy succeed?",
    "Is something wrong with {pid}? Requests look slow.",
)
_INTL: dict[str, dict[str, tuple[str, ...]]] = {
    "es": {"api_key": ("¿Cómo puedo rotar la clave de API de mi proyecto? Creo que se filtró.",),
           "rollback": ("Mi último despliegue rompió la web. ¿Cómo vuelvo al despliegue anterior?",)},
    "de": {"api_key": ("Wie rotiere ich den API-Schlüssel meines Projekts? Ich glaube, er ist geleakt.",),
           "rollback": ("Mein letzter Deploy ist kaputt. Wie kann ich auf den vorherigen Deploy zurück?",)},
    "pt": {"api_key": ("Como faço para rotacionar a chave de API do meu projeto? Acho que ela vazou.",),
           "rollback": ("Meu último deploy quebrou o site. Como posso voltar para o deploy anterior?",)},
}
_NO_ENGLISH = {
    "es": "Perdón, no entiendo bien el inglés. ¿Puede responder en español, por favor?",
    "de": "Entschuldigung, ich verstehe Englisch nicht gut. Können Sie bitte auf Deutsch antworten?",
    "pt": "Desculpe, não entendo bem inglês. Pode responder em português, por favor?",
}
_GIVEUP = {"en": "Forget it.", "es": "Olvídalo.", "de": "Vergiss es.", "pt": "Esquece."}
_THANKS = {"en": "Thanks, that works!", "es": "¡Gracias!", "de": "Danke!", "pt": "Obrigado!"}
_PROJECTS = tuple(f"prj-{1200 + i * 17}" for i in range(20))

P_THUMBS_DOWN_ON_FAILURE = 0.40
P_THUMBS_UP_ON_SUCCESS = 0.15
MAX_TURNS = 8


@dataclass(frozen=True)
class SimulatedThread:
    """One simulated conversation and its ground truth (for scoring the loop)."""

    thread_id: str
    intent: str
    """The traffic intent (see :data:`INTENT_MIX`)."""
    category: str
    """The topic (``api_key``, ``rollback`` ...; ``quota``, ``sso``, ``project``)."""
    language: str
    transcript: tuple[tuple[str, str], ...]
    tool_calls: tuple[str, ...]
    resolved: bool
    failures: tuple[str, ...]
    """What went wrong, from the agent's actual behaviour: ``truncated_answer`` (a docs page cut
    before its steps), ``upsold`` (a sales pitch instead of help), ``wrong_language`` (an English
    reply to a developer writing another language), ``sso_step_missing`` (SSO steps without the
    domain verification)."""
    feedback: bool | None


@dataclass
class TrafficSummary:
    """What :func:`simulate` did."""

    threads: list[SimulatedThread]
    seed: int
    prompt_dir: str
    elapsed_s: float
    feedback_written: int = 0

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


def _weighted(rng: random.Random, options: Sequence[tuple[str, float]]) -> str:
    x = rng.random() * sum(w for _, w in options)
    for name, w in options:
        x -= w
        if x < 0:
            return name
    return options[-1][0]


def _is_cut_off(reply: str) -> bool:
    """The agent said the page it got was cut off (in any of the simulated languages)."""
    return "cut off" in reply or "cortada" in reply or "abgeschnitten" in reply


class _Developer:
    """A simulated developer: decides the next message from the agent's last reply."""

    def __init__(self, index: int, seed: int) -> None:
        self.rng = rng = random.Random(f"{seed}:{index}")
        self.intent = _weighted(rng, INTENT_MIX)
        self.lang = "en"
        self.pid = rng.choice(_PROJECTS)
        if self.intent == "how_to":
            self.topic = rng.choice(sorted(_HOW_TO))
            self.opening = rng.choice(_HOW_TO[self.topic][1])
        elif self.intent == "how_to_intl":
            self.lang = rng.choice(sorted(_INTL))
            self.topic = rng.choice(sorted(_INTL[self.lang]))
            self.opening = rng.choice(_INTL[self.lang][self.topic])
        elif self.intent == "quota":
            self.topic, self.opening = "quota", rng.choice(_QUOTA)
        elif self.intent == "sso_setup":
            self.topic, self.opening = "sso", rng.choice(_SSO)
        else:
            self.topic, self.opening = "project", rng.choice(_PROJECT).format(pid=self.pid)
        self.patient = rng.random() < 0.5
        self.turns = 0
        self.complaints = 0
        self.solved = False
        self.failures: list[str] = []

    def _fail(self, kind: str) -> None:
        if kind not in self.failures:
            self.failures.append(kind)

    def _unhappy(self, complaint: str) -> str | None:
        self.complaints += 1
        if self.complaints > 1 or not self.patient:
            return _GIVEUP[self.lang] if self.rng.random() < 0.8 else None
        return complaint

    def next_message(self, reply: str | None) -> str | None:
        """The developer's next message (None: they leave)."""
        if reply is None:
            return self.opening
        self.turns += 1
        if self.turns >= MAX_TURNS or reply.startswith(("You're welcome", "Sorry I couldn't")):
            return None
        if self._solves(reply):
            self.solved = True
            return _THANKS[self.lang] if self.rng.random() < 0.8 else None
        if self.lang != "en" and reply.startswith(("From the docs", "It sounds like", "Here is", "I couldn't")):
            self._fail("wrong_language")
            return self._unhappy(_NO_ENGLISH[self.lang])
        if "upgrading to the team plan" in reply.lower():
            self._fail("upsold")
            return self._unhappy("That's not what I asked. I don't want to upgrade, I asked how to deal with the limit on my "
                                 "current plan: " + self.opening)
        if _is_cut_off(reply):
            self._fail("truncated_answer")
            if self.lang != "en":
                return self._unhappy(self.opening)
            return self._unhappy("That's not what I asked, I need the exact steps. " + self.opening)
        if self.intent == "sso_setup" and "SAML" in reply:
            self._fail("sso_step_missing")
            return self._unhappy("That didn't work. I followed those steps exactly and the SAML login "
                                 "still fails with 'domain not verified'. This is so frustrating, what step am I missing?")
        return self._unhappy("That's not what I asked. " + self.opening)

    def _solves(self, reply: str) -> bool:
        if self.intent == "project":
            return self.pid in reply
        if self.intent == "quota":
            return "Request a quota increase" in reply
        if self.intent == "sso_setup":
            return "Verify your email domain" in reply or "verify your email domain" in reply
        title = _HOW_TO[self.topic][0]
        if self.lang == "en":
            return title in reply and reply.startswith("From the docs") and not _is_cut_off(reply)
        return title in reply and not reply.startswith("From the docs") and not _is_cut_off(reply)

    def feedback(self) -> bool | None:
        if self.failures and not self.solved:
            return False if self.rng.random() < P_THUMBS_DOWN_ON_FAILURE else None
        if self.solved and not self.failures:
            return True if self.rng.random() < P_THUMBS_UP_ON_SUCCESS else None
        return None


def _last_turn(messages: Sequence[AnyMessage]) -> tuple[str, list[str]]:
    start = max(i for i, m in enumerate(messages) if isinstance(m, HumanMessage))
    tools = [m.name or "" for m in messages[start + 1:] if isinstance(m, ToolMessage)]
    last = messages[-1]
    reply = last.content if isinstance(last.content, str) and not isinstance(last, ToolMessage) else ""
    return reply, tools


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
    progress: Callable[[int, int], None] | None = None,
) -> TrafficSummary:
    """Run ``n_threads`` simulated developers against the agent built from ``prompt_dir``.

    Same contract as ``examples.support_agent.simulate``: ``callbacks`` (e.g. a
    ``LoopCallbackHandler``) see every turn; feedback goes to ``store`` (by default the store of
    the first callback that has one); thread ids are ``{prefix}-{index:05d}``.

    Raises:
        ConfigError: An agent file is missing, or ``n_threads`` is negative.
    """
    if n_threads < 0:
        raise ConfigError(f"n_threads must be >= 0, got {n_threads}")
    graph = build_agent(prompt_dir, config_path, model=model)
    prefix = thread_prefix or f"dev{seed}"
    if store is None:
        store = next((s for cb in callbacks if isinstance(s := getattr(cb, "store", None), Store)), None)
    started = time.perf_counter()
    threads: list[SimulatedThread] = []
    for i in range(n_threads):
        dev = _Developer(i, seed)
        thread_id = f"{prefix}-{i:05d}"
        cfg: Any = {"configurable": {"thread_id": thread_id}, "callbacks": list(callbacks)}
        transcript: list[tuple[str, str]] = []
        tool_names: list[str] = []
        reply: str | None = None
        while (text := dev.next_message(reply)) is not None:
            out = graph.invoke({"messages": [("user", text)]}, cfg, durability="exit")
            reply, tools = _last_turn(out["messages"])
            transcript.append((text, reply))
            tool_names.extend(tools)
        threads.append(SimulatedThread(
            thread_id=thread_id, intent=dev.intent, category=dev.topic, language=dev.lang,
            transcript=tuple(transcript), tool_calls=tuple(tool_names), resolved=dev.solved,
            failures=tuple(dev.failures), feedback=dev.feedback(),
        ))
        if progress is not None:
            progress(i + 1, n_threads)
    elapsed = time.perf_counter() - started
    written = 0
    if store is not None:
        for cb in callbacks:  # feedback arrives after the conversation: threads first
            flush = getattr(cb, "flush", None)
            if callable(flush):
                flush()
        for t in threads:
            if t.feedback is not None:
                store.add_feedback(t.thread_id, thumbs=t.feedback)
                written += 1
    return TrafficSummary(threads=threads, seed=seed, prompt_dir=str(prompt_dir), elapsed_s=elapsed,
                          feedback_written=written)
