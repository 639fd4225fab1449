"""The phrase lists the built-in detectors match, and the regex builder that compiles them.

What frustrated users, escalating users and deflecting agents actually write, in English,
Spanish, French, German and Portuguese, kept together in one place so a new phrase (or a new
language) is added next to its siblings rather than hunted down in a detector. Several lists are
shared: the "thanks, that worked" phrases decide abandonment, stalls and :func:`went_well`; the
refusal phrases mark both refusals and the deflections that end a thread.

Every list is compiled once at import, through :func:`_rx` / :func:`_rx_groups`, which add the
word-start guard below (same matches, about twice as fast).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any


def _rx(*patterns: str) -> re.Pattern[str]:
    """One case-insensitive regex from alternatives; a plain ``'`` also matches a curly ``’``."""
    return _word_start_guard(
        re.compile("|".join(f"(?:{p})" for p in patterns).replace("'", "['’]"), re.IGNORECASE)
    )


def _rx_groups(groups: Mapping[str, Sequence[str]]) -> re.Pattern[str]:
    """One regex with a named group per reason, so ``match.lastgroup`` tells which one fired."""
    body = "|".join(f"(?P<{name}>{'|'.join(f'(?:{p})' for p in pats)})" for name, pats in groups.items())
    return _word_start_guard(re.compile(body.replace("'", "['’]"), re.IGNORECASE))


# --- speed: a cheap guard in front of the phrase regexes ---------------------------------------
# A phrase regex is a long alternation whose branches start with ``\b``; ``re`` cannot skip ahead
# on a ``\b``, so it tries every branch at every position of the text. When *every* branch
# provably starts at a word start (``\b`` followed by a word character, or ``^``), no match can
# start right after a word character, and a leading ``(?<!\w)`` lets ``re`` reject those
# positions at once: the same matches (spans, groups), about twice as fast. The proof is done on
# the parsed pattern at import; a pattern it cannot prove is left exactly as written.

_WORD_CHAR = re.compile(r"\w")


def _word_start_guard(rx: re.Pattern[str]) -> re.Pattern[str]:
    if rx.flags & (re.MULTILINE | re.VERBOSE):
        return rx
    try:
        from re import _parser  # type: ignore[attr-defined]  # the stdlib's own regex parser

        parsed = list(_parser.parse(rx.pattern, rx.flags))
        if not _starts_at_word_start(parsed, _parser):
            return rx
        return re.compile(rf"(?<!\w)(?:{rx.pattern})", rx.flags)
    except Exception:  # noqa: BLE001 - private parser API changed: keep the regex as is
        return rx


def _starts_at_word_start(seq: list[Any], p: Any) -> bool:
    """Every match of ``seq`` starts at 0 (``^``) or at a word boundary before a word character."""
    if not seq:
        return False
    op, av = seq[0]
    if op is p.AT:
        if av in (p.AT_BEGINNING, p.AT_BEGINNING_STRING):
            return True
        return av is p.AT_BOUNDARY and _consumes_word_char(seq[1:], p)
    if op is p.BRANCH:
        return all(_starts_at_word_start(list(b) + seq[1:], p) for b in av[1])
    if op is p.SUBPATTERN and not av[1] and not av[2]:  # (group, add flags, del flags, body)
        return _starts_at_word_start(list(av[3]) + seq[1:], p)
    return False


def _consumes_word_char(seq: list[Any], p: Any) -> bool:
    """The first character any match of ``seq`` consumes is a word character."""
    if not seq:
        return False
    op, av = seq[0]
    rest = seq[1:]
    if op is p.LITERAL:
        return _WORD_CHAR.match(chr(av)) is not None
    if op is p.IN:
        return all(_word_set_item(o, a, p) for o, a in av)
    if op in (p.MAX_REPEAT, p.MIN_REPEAT):
        low, _high, body = av
        first = _consumes_word_char(list(body) + rest, p)
        return first if low >= 1 else first and _consumes_word_char(rest, p)
    if op is p.BRANCH:
        return all(_consumes_word_char(list(b) + rest, p) for b in av[1])
    if op is p.SUBPATTERN and not av[1] and not av[2]:
        return _consumes_word_char(list(av[3]) + rest, p)
    if op in (p.AT, p.ASSERT, p.ASSERT_NOT):  # zero-width: the next item consumes first
        return _consumes_word_char(rest, p)
    return False


def _word_set_item(op: Any, av: Any, p: Any) -> bool:
    if op is p.LITERAL:
        return _WORD_CHAR.match(chr(av)) is not None
    if op is p.RANGE:
        low, high = av
        return high - low < 4096 and all(_WORD_CHAR.match(chr(c)) for c in range(low, high + 1))
    if op is p.CATEGORY:
        return av in (p.CATEGORY_WORD, p.CATEGORY_DIGIT, p.CATEGORY_UNI_WORD, p.CATEGORY_UNI_DIGIT)
    return False


# --- phrase lists --------------------------------------------------------------------------------
# Written as support conversations are actually worded; a plain ' matches ’ too (see _rx).

_GIVE_UP = (
    # "Never mind, I found it" is the user solving it themselves, not giving up.
    r"\b(?:forget it|never ?mind(?!\W+(?:i|we) (?:found|figured|got|fixed|solved))|i give up|i'?ll (?:just )?(?:go|look|shop) (?:elsewhere|somewhere else))\b",
    r"^\W*(?:ok(?:ay)?\W+)?whatever\b",
    r"\b(?:olv[ií]dalo|d[eé]jalo|da igual|me rindo)\b",
    r"\b(?:laisse[zr]? tomber|tant pis|oubliez[- ](?:ça|le)|j'abandonne)\b",
    r"\b(?:vergiss es|vergessen sie es|schon gut|ich gebe auf)\b",
    r"\b(?:esquece|deixa (?:pra|para) l[aá]|desisto)\b",
)
_GIVE_UP_RX = _rx(*_GIVE_UP)

_FRUSTRATION_RX = _rx_groups({
    "not_what_i_asked": (
        r"\b(?:that|this|it)(?:'s| is| was) not what i (?:asked|meant|wanted|said|need)",
        r"\bnot what i asked\b",
        r"\beso no es lo que (?:pregunt|ped|dij|quer)\w*",
        r"\bce n'est pas ce que (?:j'ai|je) (?:demand|dit|voulu|veux)\w*",
        r"\bdas (?:ist|war) nicht(?:,)? was ich (?:gefragt|gemeint|wollte|gesagt)",
        r"\bn[aã]o (?:foi|[eé]) (?:isso )?o que eu (?:perguntei|pedi|disse|quis)",
    ),
    "repeating": (
        r"\bi(?:'ve| have)? already (?:told|gave|given|said|sent|explained|mentioned|provided)\b",
        r"\bwhy (?:do|does|are|did) you keep (?:asking|saying|repeating|telling|sending)",
        r"\bfor the (?:second|third|fourth|fifth|tenth|last|hundredth|\d+(?:st|nd|rd|th)) time\b",
        r"\bya (?:te |se |le )?(?:lo )?(?:dije|he dicho|di|envi[eé]|expliqu[eé])\b",
        r"\bje (?:vous |te )?l'ai d[ée]j[àa] (?:dit|donn[ée]|envoy[ée]|expliqu[ée])",
        r"\b(?:schon|bereits) (?:\w+ ){0,2}(?:gesagt|geschrieben|mitgeteilt|angegeben|erkl[äa]rt)\b",
        r"\beu j[aá] (?:te |lhe )?(?:disse|falei|informei|passei|expliquei|mandei)\b",
    ),
    "insult": (
        r"\b(?:this|that|it)(?:'s| is| was) (?:so |just |completely |absolutely )?(?:ridiculous|absurd|useless|pointless|a joke|unacceptable|insane|frustrating|annoying|terrible|pathetic)\b",
        r"\byou(?:'re| are) (?:so |completely |totally |absolutely )?(?:useless|not helping|not listening|no help|stupid|an idiot|hopeless|terrible|worthless|pathetic|incompetent)\b",
        r"\b(?:useless|stupid|dumb|worthless) (?:bot|ai|assistant|machine|chatbot|robot)\b",
        r"\b(?:waste of (?:my )?time|what a joke|worst (?:service|support|experience|bot|company)|(?:not|isn't|wasn't) help(?:ful|ing) at all)\b",
        r"\bi(?:'m| am) (?:so |really |very )?(?:frustrated|annoyed|angry|furious|fed up|sick of|tired of)\b",
        r"\b(?:are you|r u) (?:even|actually) (?:listening|reading)\b",
        r"\b(?:esto|eso) es (?:un |una )?(?:rid[ií]culo|absurdo|in[uú]til|broma|inaceptable|verg[uü]enza)\b",
        r"\b(?:eres|es usted) (?:un |una )?(?:in[uú]til|est[uú]pid[oa]|tont[oa])\b",
        r"\bno (?:me )?sirve(?:s)? (?:para|de) nada\b",
        r"\bestoy (?:hart[oa]|cansad[oa] de|frustrad[oa]|enojad[oa]|molest[oa])\b",
        r"\bp[eé]rdida de tiempo\b",
        r"\bc'est (?:vraiment |compl[èe]tement )?(?:ridicule|absurde|inutile|n'importe quoi|nul|inadmissible|inacceptable)\b",
        r"\b(?:vous [êe]tes|tu es|t'es) (?:vraiment |compl[èe]tement )?(?:nul(?:le)?|inutile|incomp[ée]tent|stupide)\b",
        r"\bj'en ai marre\b|\bperte de temps\b|\b(?:ça|cela) ne m'aide pas\b",
        r"\b(?:das ist|ist das) (?:doch |echt |v[öo]llig )?(?:l[äa]cherlich|absurd|nutzlos|unm[öo]glich|eine frechheit|eine zumutung|inakzeptabel)\b",
        r"\b(?:du bist|sie sind) (?:v[öo]llig |total )?(?:nutzlos|unf[äa]hig|dumm|bl[öo]d)\b",
        r"\bich bin (?:so |total |echt )?(?:genervt|frustriert|sauer|w[üu]tend)\b|\bzeitverschwendung\b",
        r"\bhilft (?:mir )?(?:[üu]berhaupt |gar )?nicht\b",
        r"\b(?:isso|isto) [eé] (?:um |uma )?(?:rid[ií]culo|absurdo|in[uú]til|piada|inaceit[aá]vel)\b",
        r"\b(?:voc[eê]|vc) [eé] (?:muito )?(?:in[uú]til|burr[oa]|idiota)\b",
        r"\bestou (?:muito )?(?:cansad[oa]|irritad[oa]|frustrad[oa]|chatead[oa])\b|\bperda de tempo\b",
        r"\bn[aã]o (?:est[aá] )?(?:me )?ajudando\b",
    ),
    "profanity": (
        r"\b(?:f+u+c+k\w*|shit\w*|bullshit|crap|damn(?:it)?|goddamn\w*|wtf|ffs|stfu)\b",
        r"\b(?:mierda|joder|jodid[oa]|put[oa] madre|co[ñn]o|carajo|pendej[oa])\b",
        r"\b(?:merde|putain|bordel|connard|fait chier)\b",
        r"\b(?:schei(?:ß|ss)e?\w*|verdammt\w*|kacke|arschloch)\b",
        r"\b(?:porra|caralho|merda|vaffanculo|cazzo)\b",
    ),
    "give_up": _GIVE_UP,
})
_FRUSTRATION_CONFIDENCE = {
    "not_what_i_asked": 0.9,
    "repeating": 0.85,
    "insult": 0.85,
    "profanity": 0.8,
    "give_up": 0.75,
}

_ESCALATION_RX = _rx_groups({
    "human": (
        r"\b(?:speak|talk|chat) (?:to|with) (?:a |an |the |your |some )?(?:real |actual |live |human )?(?:human|person|agent|representative|rep|manager|supervisor|operator|someone|somebody|customer service)\b",
        r"\b(?:real|live|actual) (?:person|human|agent)\b|\bhuman (?:agent|being|support|representative)\b",
        r"\b(?:transfer|connect|put|escalate) (?:me|this|it)\b[^.?!]{0,20}\b(?:human|manager|supervisor|agent|representative|person|someone)\b",
        r"\b(?:get|give) me (?:a |an |the |your )?(?:human|manager|supervisor|representative|real person)\b",
        r"\bhablar con (?:una persona|un humano|un agente|un asesor|un representante|el gerente|un supervisor|alguien)\b|\bpersona real\b",
        r"\bparler (?:[àa]|avec) (?:un |une |le |la )?(?:vraie? )?(?:humain|personne|conseill[eè]re?|agent|responsable|superviseur|manager)\b",
        r"\bparler (?:[àa]|avec) quelqu'un\b|\bvraie personne\b",
        r"\bmit (?:einem|einer|dem|der|ihrem|ihren) (?:echten |richtigen )?(?:menschen|mitarbeiter\w*|person|vorgesetzten|manager|berater\w*|kundenberater\w*|supervisor)\b|\bechten menschen\b",
        r"\bfalar com (?:um |uma |o |a )?(?:humano|pessoa|atendente|agente|gerente|supervisor|representante|algu[eé]m)\b|\bpessoa real\b",
    ),
    "cancel": (
        r"\bcancel (?:my|the|our) (?:\w+ )?(?:subscription|account|membership|plan|service|contract)\b",
        r"\b(?:close|delete) (?:my|our) account\b",
        r"\bcancelar (?:mi|la|mis|minha|a|o meu) (?:suscripci[oó]n|cuenta|membres[ií]a|plan|assinatura|conta|plano|inscri[cç][aã]o)\b|\bdar(?:me)? de baja\b",
        r"\b(?:r[ée]silier|annuler|supprimer) mon (?:abonnement|compte|contrat)\b",
        r"\b(?:abo|abonnement|konto|vertrag|mitgliedschaft) (?:\w+ ){0,2}k[üu]ndigen\b|\bk[üu]ndig(?:en|e|ung)\b",
    ),
    "complaint": (
        r"\b(?:file|make|lodge|submit) a (?:formal )?complaint\b",
        r"\b(?:poner|presentar) una (?:queja|reclamaci[oó]n)\b",
        r"\b(?:porter plainte|d[ée]poser (?:une )?(?:plainte|r[ée]clamation))\b",
        r"\bbeschwerde (?:einreichen|einlegen)\b",
        r"\b(?:fazer|abrir|registrar) uma reclama[cç][aã]o\b",
    ),
})
_ESCALATION_CONFIDENCE = {"human": 0.9, "cancel": 0.8, "complaint": 0.75}

_REFUSAL_RX = _rx_groups({
    "cannot_help": (
        r"\bi(?: can't| cannot| can not| am unable to|'m unable to| am not able to|'m not able to| won't be able to) (?:help|assist|provide|answer|process|support|discuss|share|do that|transfer you|connect you|put you through|escalate (?:this|that|your|it))\b",
        r"\bthat(?:'s| is) (?:outside|beyond) (?:my|the) (?:scope|capabilities)\b",
        r"\bi(?:'m| am) not (?:allowed|permitted|authorized) to\b",
        r"\bno (?:puedo|podemos) (?:ayudar(?:te|le)?|asistir(?:te|le)?)\b|\blo siento,? (?:pero )?no puedo\b",
        r"\bje ne (?:peux|pourrai) pas (?:vous |t')?(?:aider|r[ée]pondre)\b|\bje ne suis pas en mesure de\b",
        r"\bich kann (?:ihnen |dir )?(?:dabei |damit |hier |leider )*nicht (?:helfen|weiterhelfen)\b|\bleider (?:kann ich|ist es mir nicht m[öo]glich)\b",
        r"\bn[aã]o (?:posso|consigo|podemos) (?:te |lhe )?ajudar\b|\bdesculpe,? (?:mas )?n[aã]o posso\b",
    ),
    "no_information": (
        r"\b(?:i|we) (?:don't|do not) have (?:any )?(?:information|access|details|data|knowledge) (?:about|on|regarding|to|for)\b",
        r"\bno tengo (?:informaci[oó]n|acceso|datos) (?:sobre|acerca|de|a)\b",
        r"\bje n'ai pas (?:d'informations?|acc[èe]s|de donn[ée]es)\b",
        r"\bich habe keine (?:informationen|daten|zugriff)\b",
        r"\bn[aã]o tenho (?:informa[cç](?:[oõ]es|[aã]o)|acesso|dados) (?:sobre|a|de)\b",
    ),
    "contact_support": (
        r"\b(?:contact|reach out to|get in touch with|call) (?:our |the |your )?(?:customer )?(?:support|service|care|help ?desk)\b",
        r"\b(?:contacte|contacta|comun[ií]quese|comun[ií]cate|p[oó]ngase en contacto)(?: con)? (?:el |nuestro |al |con el )?(?:soporte|servicio|equipo)\b",
        r"\b(?:veuillez|merci de) contacter (?:le |notre |votre )?(?:support|service|[ée]quipe)\b|\bcontactez (?:le |notre )?(?:support|service client)\b",
        r"\b(?:wenden sie sich|wende dich) (?:bitte )?an (?:den |unseren |unser )?(?:support|kundenservice|kundendienst|service)\b|\bkontaktieren sie (?:bitte )?(?:den |unseren )?(?:support|kundenservice|kundendienst)\b",
        r"\b(?:entre|entra) em contato com (?:o |nosso |a nossa |a )?(?:suporte|atendimento|equipe|servi[cç]o)\b",
    ),
})
_REFUSAL_CONFIDENCE = {"cannot_help": 0.9, "no_information": 0.8, "contact_support": 0.6}

_AGENT_ERROR_RX = _rx(
    r"\bsomething went wrong\b|\ban? (?:unexpected |internal |technical )?error (?:has )?occurred\b",
    r"\b(?:encountered|ran into|hit) an? (?:\w+ )?error\b|\btechnical (?:issue|difficulties|problem)s?\b",
    r"\b(?:temporarily )?unavailable\b|\btry again later\b",
    r"\balgo sali[oó] mal\b|\b(?:ha ocurrido|ocurri[oó]) un error\b|\bint[ée]ntalo (?:de nuevo )?m[aá]s tarde\b",
    r"\bune erreur (?:s'est produite|est survenue)\b|\bquelque chose s'est mal pass[ée]\b|\br[ée]essayez plus tard\b",
    r"\bein fehler ist aufgetreten\b|\betwas ist schiefgelaufen\b|\bversuchen sie es sp[äa]ter\b",
    r"\balgo deu errado\b|\bocorreu um erro\b|\btente novamente mais tarde\b",
)

_COURTESY_QUESTION_RX = _rx(
    r"\banything else\b|\bsomething else i can\b|\bother questions?\b|\bhelp (?:you )?with (?:anything|something) else\b",
    r"\balgo m[aá]s\b|\botra cosa\b",
    r"\bautre chose\b|\bd'autres questions\b",
    r"\bnoch etwas\b|\bsonst noch\b|\bweitere fragen\b",
    r"\bmais alguma coisa\b|\boutra coisa\b|\balgo mais\b",
)

_RESOLVED_RX = _rx(
    r"\b(?:thanks?|thank you|thx|perfect|that worked|it works|it worked|solved|resolved|got it|all good|found it|figured it out)\b",
    r"\b(?:gracias|perfecto|funcion[oó]|resuelto)\b",
    r"\b(?:merci|parfait|[çc]a marche|r[ée]solu)\b",
    r"\b(?:danke|perfekt|funktioniert|gel[öo]st)\b",
    r"\b(?:obrigad[oa]|perfeito|funcionou|resolvido|valeu)\b",
)
_NOT_RESOLVED_RX = _rx(
    r"\bthanks (?:for nothing|anyway)\b|\bno,? thanks\b|\bnot (?:solved|resolved|working)\b",
    r"\bgracias de todos modos\b|\bmerci quand m[êe]me\b|\btrotzdem danke\b|\bobrigad[oa] mesmo assim\b",
)

_ADMITS_NOT_FOUND_RX = _rx(
    r"\b(?:couldn't|could not|can't|cannot|wasn't able to|was not able to|unable to|didn't|did not) (?:find|locate|retrieve|confirm|verify|see)\b",
    r"\bno (?:results?|matching|matches|records?|information|info|data|details|entries|documents?)\b",
    r"\b(?:i|we) (?:don't|do not) (?:have|know|see)\b|\bnot sure\b|\bnot found\b|\b(?:doesn't|does not) (?:exist|appear)\b",
    r"\bno (?:encontr\w+|pude encontrar|he encontrado|hay resultados|tengo informaci[oó]n)\b|\bno encuentro\b",
    r"\bn'ai (?:pas|rien) trouv[ée]\b|\baucun(?:e)? (?:r[ée]sultat|[ée]l[ée]ment|enregistrement|information)\b|\bintrouvable\b|\bje ne trouve pas\b",
    r"\b(?:nicht|keine \w+) gefunden\b|\bkeine (?:ergebnisse|informationen|daten|treffer)\b|\bfinde (?:ich )?(?:keine|nicht)\b",
    r"\bn[aã]o (?:encontrei|consegui encontrar|achei|localizei|tenho informa[cç](?:[oõ]es|[aã]o))\b|\bnenhum resultado\b",
)

_EMPTY_RESULT_RX = re.compile(
    r"\s*(?:|\[\s*\]|\{\s*\}|\(\s*\)|null|none|nil|\"\"|''|n/?a"
    r"|(?:no|0|zero) (?:relevant |matching )?(?:results?|matches|documents?|docs|records?|items?|data|entries|hits|articles?|orders?)"
    r"(?: (?:were |was )?(?:found|returned|available))?(?: for [^\n]{0,80})?"
    r"|(?:not found|nothing found|no match(?:es)?|empty)(?: for [^\n]{0,80})?)\s*[.!]?\s*",
    re.IGNORECASE,
)

_TOOL_ERROR_RX = _rx_groups({
    "traceback": (r"traceback \(most recent call last\)", r"\b[a-z]\w*(?:error|exception): "),
    "server_error": (
        r"\b(?:http|status(?: code)?|error)\W{0,3}5\d\d\b",
        r"\b(?:internal server error|bad gateway|service unavailable|gateway time-?out)\b",
    ),
    "timeout": (r"\b(?:timed out|timeout error|connection (?:refused|reset|error|aborted)|econnrefused|etimedout)\b",),
    "client_error": (
        r"\b(?:http|status(?: code)?)\W{0,3}(?:401|403|429)\b|\b(?:unauthorized|forbidden|rate limit(?:ed)? exceeded|too many requests)\b",
    ),
    "error_field": (r"\"(?:error|exception|err)\"\s*:(?!\s*(?:null\b|false\b|\"\"|\{\s*\}|\[\s*\]|0\b))", r"\"status\"\s*:\s*\"(?:error|failed|failure)\""),
    "error_prefix": (r"^[\s\[*(]{0,3}(?:error|exception|fatal|failed|failure)\b",),
})
# Speed: every branch of _TOOL_ERROR_RX contains one of these words (case-insensitively), so a
# result without any of them cannot match and skips the regex (most tool results). KEEP IN SYNC
# when adding a branch above. ``re.IGNORECASE`` also matches ASCII letters to 4 non-ASCII ones
# (ſ K İ ı) that ``str.lower`` keeps apart: they are folded first, so the check never misses.
_TOOL_ERROR_WORDS = (
    "err", "exception", "traceback", "http", "status", "gateway", "unavailable", "time", "conn",
    "unauthorized", "forbidden", "rate limit", "too many requests", "fatal", "fail",
)
_RE_ASCII_FOLD = str.maketrans({"ſ": "s", "K": "k", "İ": "i", "ı": "i"})


def _may_be_tool_error(result: str) -> bool:
    low = result[:4000].translate(_RE_ASCII_FOLD).lower()
    return any(w in low for w in _TOOL_ERROR_WORDS)


_TOOL_ERROR_CONFIDENCE = {
    "traceback": 0.9,
    "server_error": 0.9,
    "timeout": 0.85,
    "client_error": 0.75,
    "error_field": 0.8,
    "error_prefix": 0.8,
}

# context_loss: what the agent asks for, and how a user gives it.
_ASK_ENTITY_RX = _rx_groups({
    "id": (
        r"\b(?:order|tracking|reference|confirmation|booking|reservation|account|invoice|ticket|case|customer) ?(?:number|no\.|#|id|code)\b",
        r"\bn[uú]mero de (?:pedido|orden|seguimiento|referencia|reserva|cuenta|factura|cliente)\b",
        r"\bnum[ée]ro de (?:commande|suivi|r[ée]f[ée]rence|r[ée]servation|compte|facture|client)\b",
        r"\b(?:bestell|auftrags|sendungs|referenz|buchungs|kunden|rechnungs|konto)(?:nummer|-nr\.?)\b",
        r"\bn[uú]mero d[oa] (?:pedido|encomenda|rastreamento|refer[eê]ncia|reserva|conta|fatura|cliente)\b",
    ),
    "email": (
        r"\be-?mail(?: address)?\b|\bcorreo(?: electr[oó]nico)?\b|\badresse (?:e-?mail|[ée]lectronique)\b|\bcourriel\b",
        r"\be-mail-adresse\b|\bendere[cç]o de e-?mail\b",
    ),
    "phone": (
        r"\b(?:phone|telephone|mobile)(?: number)?\b|\bn[uú]mero de tel[eé]fono\b|\btel[eé]fono\b",
        r"\bnum[ée]ro de t[ée]l[ée]phone\b|\btelefonnummer\b|\btelefone\b",
    ),
})
_ASK_VERB_RX = _rx(
    r"\b(?:could|can|would) you (?:please )?(?:provide|share|send|give|tell|confirm|let me know)\b",
    r"\bplease (?:provide|share|send|give|tell|confirm|enter)\b|\bmay i (?:have|get)\b|\bwhat(?:'s| is) (?:your|the)\b",
    r"\bi(?:'ll| will)? need (?:your|the)\b",
    r"\bpuede(?:s)? (?:darme|dar|proporcionar|indicar|decirme|facilitar)\b|\bproporci[oó]n(?:e|a)(?:me)?\b|\bind[ií]ca(?:me)?\b|\bcu[aá]l es (?:su|tu)\b",
    r"\bpourriez-vous\b|\bpouvez-vous\b|\bveuillez (?:fournir|indiquer|me donner|pr[ée]ciser)\b|\bquel est votre\b",
    r"\bk[öo]nnten sie\b|\bk[öo]nnen sie\b|\bbitte (?:geben|teilen|nennen)\b|\bwie lautet\b",
    r"\bpoderia\b|\bpode (?:me )?(?:informar|passar|fornecer|enviar)\b|\bqual (?:[eé] )?(?:o )?seu\b|\binforme\b",
)
_ID_KEYWORD_RX = _rx(
    r"\b(?:order|tracking|reference|ref|confirmation|booking|reservation|account|invoice|ticket|case|parcel|package|shipment)",
    r"\b(?:pedido|orden|seguimiento|referencia|reserva|cuenta|factura|encomenda|rastreamento|conta|fatura)\b",
    r"\b(?:commande|suivi|r[ée]f[ée]rence|compte|facture|colis)\b",
    r"(?:bestell|auftrag|sendung|referenz|buchung|kunden|rechnung|konto|paket)",
    r"#",
)
_DIGIT_RX = re.compile(r"\d")
_DIGITS3_RX = re.compile(r"\d{3}")  # every _ID_VALUE_RX match has 3 digits in a row
_ID_VALUE_RX = re.compile(r"(?<![\w@.#])(?:#\s?\w{0,4}-?\d{3,}|[A-Za-z]{1,4}-?\d{4,}|\d{5,})(?![\w@])")
_EMAIL_VALUE_RX = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE_VALUE_RX = re.compile(r"(?<![\w+])\+?\d[\d\s().-]{5,}\d(?!\w)")
# "I couldn't find that order, could you double-check the order number?" is not forgetting.
_RECHECK_RX = _rx(
    r"\b(?:double[- ]?check|re-?check|verify|confirm|correct|valid|typo|mistyped)\b",
    r"\b(?:verifica\w*|comprueba|confirma\w*|corrig\w*|v[ée]rifi\w*|[üu]berpr[üu]f\w*|best[äa]tig\w*|pr[üu]fen)\b",
)

# An LLM that lost the conversation makes the user say so.
_USER_SAYS_LOST_RX = _rx(
    r"\bi(?:'ve| have)? already (?:told|gave|given|said|sent|mentioned|provided)\b",
    r"\b(?:as i|like i) (?:said|told you|mentioned)\b|\byou (?:forgot|don't remember|already asked)\b",
    r"\bya (?:te |se |le )?(?:lo )?(?:dije|he dicho|di)\b|\bcomo (?:te )?dije\b",
    r"\bje (?:vous |te )?l'ai d[ée]j[àa] (?:dit|donn[ée])\b|\bcomme je (?:l'ai|vous l'ai) dit\b",
    r"\b(?:schon|bereits) (?:\w+ ){0,2}(?:gesagt|mitgeteilt|angegeben)\b|\bwie (?:ich )?(?:schon )?gesagt\b",
    r"\beu j[aá] (?:te |lhe )?(?:disse|falei|informei|passei)\b|\bcomo eu (?:j[aá] )?disse\b",
)

_NEGATIVE_COMMENT_RX = _rx(
    r"(?<!not )(?<!not so )\b(?:useless|terrible|awful|horrible|wrong|incorrect|bad|worst|unhelpful|frustrat\w*|annoying|rude|slow|broken|garbage|rubbish)\b",
    r"\b(?:didn't|did not|doesn't|does not|not) (?:help|work|answer|solve|helpful|useful)\b",
    r"\b(?:in[uú]til|p[eé]sim[oa]|malo|mala|incorrect[oa]|no sirve|no me ayud[oó]|horrible)\b",
    r"\b(?:nul(?:le)?|inutile|pas utile|n'a pas aid[ée]|mauvais(?:e)?|faux)\b",
    r"\b(?:nutzlos|schlecht|hilft nicht|unbrauchbar|falsch)\b",
    r"\b(?:p[eé]ssim[oa]|ruim|n[aã]o ajudou|errad[oa])\b",
)
_NEGATIVE_LABELS = frozenset({
    "thumbs_down", "thumbsdown", "thumb_down", "negative", "bad", "dislike", "downvote", "-1",
    "unhelpful", "not_helpful", "incorrect", "wrong",
})
_NEGATIVE_OUTCOMES = frozenset({
    "churned", "churn", "escalated", "abandoned", "cancelled", "canceled", "refunded", "complaint",
    "unresolved", "failed", "lost",
})
_POSITIVE_OUTCOMES = frozenset({"converted", "resolved", "success", "succeeded", "solved", "retained"})
