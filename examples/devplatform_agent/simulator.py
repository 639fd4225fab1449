"""``DevSupportSimulatorModel``: a scripted stand-in for the Kestrel support agent's LLM, offline.

It is **not** a language model: a small rule engine with a chat model's interface whose behaviour
is read from the *prompt text it receives* on every call (and from the tool results the harness
hands it), the way an instruction-following LLM's would be:

* an instruction to recommend upgrading when limits or quotas come up ("recommend upgrading") →
  quota and rate-limit questions get a sales pitch for the Team plan instead of help; without it,
  it searches the docs like for any how-to question;
* an instruction to always reply in one language ("Always reply in English") → every reply is in
  that language; without it, it answers in the developer's language when the docs page it found
  has a summary in that language (``summary_es:`` lines);
* an ``SSO setup`` section → SAML questions are answered with that section's numbered steps
  (whatever they are: a step missing there is missing in the answer);
* a docs page that reached it cut off (no ``Steps:`` line, a ``[truncated`` marker) → it says so
  and gives only the page's opening, as a careful LLM would.

Nothing is kept between calls: the output is a pure function of ``(messages, seed)``.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool

__all__ = ["MODEL_NAME", "DevSupportSimulatorModel", "PromptRules", "detect_intent", "guess_language"]

MODEL_NAME = "kestrel-support-simulator"

_HEADING_RX = re.compile(r"^#{1,6}\s*(.+?)\s*#*\s*$", re.MULTILINE)
_UPSELL_RX = re.compile(r"recommend (?:upgrading|an upgrade|the \w+ plan)", re.IGNORECASE)
_FORCED_RX = re.compile(r"\balways (?:reply|answer|respond|write)\s+(?:only\s+)?in\s+([A-Za-z]+)", re.IGNORECASE)
_LANG_NAMES = {"english": "en", "spanish": "es", "german": "de", "portuguese": "pt"}
PROJECT_RX = re.compile(r"\bprj-\d{4}\b", re.IGNORECASE)


@dataclass(frozen=True)
class PromptRules:
    """What the simulator takes from a system prompt."""

    upsell: bool
    """The prompt tells the agent to recommend an upgrade when limits come up."""
    forced_language: str | None
    """The language code every reply must be in, or None (follow the developer)."""
    sso_steps: tuple[str, ...] | None
    """The numbered steps of the ``SSO setup`` section, or None when there is none."""

    @classmethod
    def parse(cls, system: str) -> PromptRules:
        """Read the rules from the system prompt text."""
        sections: dict[str, str] = {}
        heads = list(_HEADING_RX.finditer(system))
        for i, m in enumerate(heads):
            end = heads[i + 1].start() if i + 1 < len(heads) else len(system)
            sections[m.group(1).strip().lower()] = system[m.end():end].strip()
        sso = next((b for n, b in sections.items() if "sso" in n or "single sign" in n), None)
        steps: list[str] = []
        for raw in (sso or "").splitlines():
            line = raw.strip()
            if re.match(r"^\d+[.)]\s", line):
                steps.append(re.sub(r"^\d+[.)]\s*", "", line))
            elif steps and line and raw.startswith(" "):
                steps[-1] = f"{steps[-1]} {line}"  # a wrapped step continues
        forced = _FORCED_RX.search(system)
        return cls(
            upsell=bool(_UPSELL_RX.search(system)),
            forced_language=_LANG_NAMES.get(forced.group(1).lower(), "en") if forced else None,
            sso_steps=tuple(steps) if sso is not None and steps else None,
        )


_LANG_WORDS = {
    "es": {"cómo", "como", "mi", "la", "el", "de", "una", "clave", "puedo", "qué", "por", "favor", "despliegue",
           "no", "entiendo", "hablo", "inglés", "quiero", "volver", "anterior", "es", "en", "español", "un"},
    "de": {"wie", "ich", "meinen", "mein", "den", "der", "die", "das", "und", "kann", "ist", "einen", "nicht",
           "bitte", "auf", "schlüssel", "verstehe", "englisch", "deutsch", "zurück", "kaputt", "rotiere"},
    "pt": {"como", "eu", "minha", "meu", "uma", "não", "de", "do", "da", "chave", "para", "em", "o", "entendo",
           "inglês", "português", "voltar", "faço", "posso", "quebrou", "anterior"},
}


def guess_language(text: str) -> str:
    """``es``, ``de``, ``pt`` or ``en``: the simulator's own tiny guess (stop-word counts)."""
    words = re.findall(r"\w+", text.lower())
    best, n = "en", 1
    for lang, vocab in _LANG_WORDS.items():
        hits = sum(w in vocab for w in words)
        if hits > n:
            best, n = lang, hits
    return best


_RX = {
    "giveup": re.compile(r"\b(?:forget it|never ?mind)\b|olvídalo|vergiss es|esquece", re.I),
    "thanks": re.compile(r"^\W*(?:thanks?|thank you|great|perfect|gracias|danke|obrigad)", re.I),
    "language": re.compile(r"no entiendo|verstehe .*nicht|não entendo", re.I),
    "sso": re.compile(r"\bsso\b|saml|single sign|okta|azure ad|domain not verified", re.I),
    "quota": re.compile(r"rate.?limit|quota|\b429\b|too many requests|throttl", re.I),
}


def detect_intent(text: str) -> str:
    """The intent of one message: ``giveup``, ``thanks``, ``language`` (asks for another reply
    language), ``project``, ``sso``, ``quota`` or ``how_to``."""
    words = len(text.split())
    for name in ("giveup", "thanks"):
        if _RX[name].search(text) and words < 12:
            return name
    if _RX["language"].search(text):
        return "language"
    if PROJECT_RX.search(text):
        return "project"
    for name in ("sso", "quota"):
        if _RX[name].search(text):
            return name
    return "how_to"


def _text(m: BaseMessage) -> str:
    c = m.content
    if isinstance(c, str):
        return c
    return " ".join(p if isinstance(p, str) else str(p.get("text", "")) for p in c)


_FROM_DOCS = {"en": "From the docs, “{title}”: {steps}", "es": "Según la documentación, «{title}»: {steps}",
              "de": "Laut Dokumentation, „{title}“: {steps}", "pt": "Segundo a documentação, “{title}”: {steps}"}
_UPSELL = {
    "en": "It sounds like you've outgrown your current plan. Upgrading to the Team plan gives you ten times "
          "the API limits and more build minutes; you can upgrade under Billing → Plans in a minute.",
    "es": "Parece que tu plan actual se te queda pequeño. Con el plan Team tienes diez veces más límite de API; "
          "puedes cambiar en Facturación → Planes.",
    "de": "Es klingt, als wäre dein aktueller Plan zu klein. Mit dem Team-Plan bekommst du das Zehnfache an "
          "API-Limits; upgraden kannst du unter Abrechnung → Pläne.",
    "pt": "Parece que o seu plano atual ficou pequeno. Com o plano Team você tem dez vezes mais limite de API; "
          "dá para mudar em Cobrança → Planos.",
}
_CUT_OFF = {"es": "la página que recibí estaba cortada, así que no tengo los pasos exactos.",
            "de": "die Seite, die ich bekommen habe, war abgeschnitten, daher habe ich die genauen Schritte nicht.",
            "pt": "a página que recebi estava cortada, então não tenho os passos exatos."}
"""What the simulator says, in the developer's language, when the page reached it cut off."""
_NOT_FOUND = "I couldn't find a docs page about that. Could you tell me more about what you are trying to do?"


class DevSupportSimulatorModel(BaseChatModel):
    """A scripted simulator of the Kestrel developer-support LLM. **Not an LLM.**

    Deterministic and instant; reads its instructions from the system message of each call (see
    the module docstring). Tool calls are proper ``AIMessage.tool_calls``; token usage is
    ``len(text) // 4``; latency is simulated (``response_metadata``), never slept.
    """

    model: str = MODEL_NAME
    seed: int = 0

    @property
    def _llm_type(self) -> str:
        return "scripted-simulator"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "seed": self.seed}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Accept the agent's tools (the simulator knows their names already)."""
        return self

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self.respond(messages))])

    def respond(self, messages: Sequence[BaseMessage]) -> AIMessage:
        """The next assistant message for ``messages`` (system prompt first)."""
        rules = PromptRules.parse("\n\n".join(_text(m) for m in messages if isinstance(m, SystemMessage)))
        convo = [m for m in messages if not isinstance(m, SystemMessage)]
        last_human = max((i for i, m in enumerate(convo) if isinstance(m, HumanMessage)), default=-1)
        results = {m.name: _text(m) for m in convo[last_human + 1:] if isinstance(m, ToolMessage) and m.name}
        humans = [_text(m) for m in convo if isinstance(m, HumanMessage)]
        user = humans[-1] if humans else ""
        # The request the conversation is about: the last message that is not about the language.
        request = next((h for h in reversed(humans) if detect_intent(h) != "language"), user)
        intent = detect_intent(user)
        lang = rules.forced_language or guess_language(user)
        if intent == "giveup":
            return self._reply(messages, "Sorry I couldn't help more. Good luck with your project.")
        if intent == "thanks":
            return self._reply(messages, "You're welcome! Happy shipping.")
        if intent == "language":
            intent = detect_intent(request)
        if intent == "project":
            pid = PROJECT_RX.findall(request)[-1]
            if "get_project" not in results:
                return self._call(messages, "get_project", {"project_id": pid})
            return self._reply(messages, f"Here is your project: {results['get_project']}")
        if intent == "quota" and rules.upsell:
            return self._reply(messages, _UPSELL.get(lang, _UPSELL["en"]))
        if intent == "sso" and rules.sso_steps is not None:
            steps = " ".join(f"{i}. {s}" for i, s in enumerate(rules.sso_steps, 1))
            return self._reply(messages, f"Here is how to set up SAML single sign-on: {steps}")
        if "search_docs" not in results:
            return self._call(messages, "search_docs", {"query": " ".join(request.split())[:200]})
        return self._reply(messages, self._from_page(results["search_docs"], lang))

    def _from_page(self, page: str, lang: str) -> str:
        if page.strip().startswith("No results"):
            return _NOT_FOUND
        head, _, body = page.partition("\n")
        title = re.sub(r"^\[[^\]]*\]\s*", "", head).strip()
        local = re.search(rf"^summary_{lang}:\s*(.+)$", body, re.MULTILINE) if lang != "en" else None
        if local:
            return _FROM_DOCS[lang].format(title=title, steps=local.group(1).strip())
        steps = re.search(r"^Steps:\s*(.+)$", body, re.MULTILINE)
        if steps and "[truncated" not in steps.group(1):
            return _FROM_DOCS["en"].format(title=title, steps=steps.group(1).strip())
        # The page reached the model cut off before its steps: say so, give what there is.
        opening = " ".join(re.split(r"(?<=[.!?])\s+", body.strip())[:1])
        opening = re.sub(r"…\s*\[truncated[^\]]*\]", "…", opening)
        if lang != "en":
            return _FROM_DOCS[lang].format(title=title, steps=_CUT_OFF[lang])
        return (f"From the docs, “{title}”: {opening} The page I received was cut off, so I don't "
                "have the exact steps.")

    # -- message construction ------------------------------------------------------------------

    def _digest(self, messages: Sequence[BaseMessage], salt: str = "") -> int:
        h = zlib.crc32(f"{self.seed}|{salt}".encode())
        for m in messages:
            h = zlib.crc32(_text(m).encode("utf-8", "surrogatepass"), h)
        return h

    def _usage(self, messages: Sequence[BaseMessage], out: str) -> dict[str, Any]:
        tokens_in = sum(len(_text(m)) for m in messages) // 4
        tokens_out = max(len(out) // 4, 1)
        return {"input_tokens": tokens_in, "output_tokens": tokens_out, "total_tokens": tokens_in + tokens_out}

    def _meta(self, usage: dict[str, Any], finish: str, messages: Sequence[BaseMessage]) -> dict[str, Any]:
        latency = 200 + usage["input_tokens"] * 0.04 + usage["output_tokens"] * 12 + self._digest(messages, "l") % 120
        return {"model_name": self.model, "finish_reason": finish, "simulated_latency_ms": round(latency, 1)}

    def _reply(self, messages: Sequence[BaseMessage], text: str) -> AIMessage:
        usage = self._usage(messages, text)
        return AIMessage(content=text, usage_metadata=usage, response_metadata=self._meta(usage, "stop", messages))

    def _call(self, messages: Sequence[BaseMessage], name: str, args: dict[str, Any]) -> AIMessage:
        usage = self._usage(messages, name + repr(args))
        return AIMessage(
            content="",
            tool_calls=[{"name": name, "args": args, "type": "tool_call",
                         "id": f"call_{self._digest(messages, name + repr(sorted(args.items()))):08x}"}],
            usage_metadata=usage, response_metadata=self._meta(usage, "tool_calls", messages),
        )
