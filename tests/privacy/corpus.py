"""A labelled corpus of support-chat snippets for measuring redaction quality.

Positive cases mark each sensitive span inline as ``⟦kind|value⟧``; :func:`parse` removes the
markers and records ``(kind, start, end)``. The span is what must disappear: the whole key, card,
address or number, but only the *password* of a URL, only the *value* of ``password: ...``, only
the token after ``Bearer``. Negative cases carry no markers: nothing in them may be redacted.

Values that must be valid (Luhn for cards, mod-97 for IBANs, base64url JSON for JWTs) are built by
small generators below with a fixed seed; provider keys are random strings in each provider's
published format. None of them is a real credential.

Used by ``tests/privacy/test_redact.py`` and ``benchmarks/redaction_quality.py``.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "HOLDOUT_NEGATIVES",
    "HOLDOUT_POSITIVES",
    "NEGATIVES",
    "POSITIVES",
    "Case",
    "Score",
    "parse",
    "score",
]

_rng = random.Random(20240611)
_B62 = string.ascii_letters + string.digits
_B64URL = _B62 + "-_"
_B64 = _B62 + "+/"


def _rand(alphabet: str, n: int) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


def _mixed(alphabet: str, n: int) -> str:
    """A random string that has upper case, lower case and a digit (as real keys of that length do)."""
    while True:
        s = _rand(alphabet, n)
        if (
            any(c.isupper() for c in s)
            and any(c.islower() for c in s)
            and any(c.isdigit() for c in s)
        ):
            return s


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# --- generators -------------------------------------------------------------------------------


def openai_key(kind: str = "legacy") -> str:
    if kind == "proj":
        return "sk-proj-" + _mixed(_B64URL, 74) + "T3BlbkFJ" + _mixed(_B64URL, 74)
    if kind == "svcacct":
        return "sk-svcacct-" + _mixed(_B64URL, 60)
    return "sk-" + _mixed(_B62, 20) + "T3BlbkFJ" + _mixed(_B62, 20)


def anthropic_key() -> str:
    return "sk-ant-api03-" + _mixed(_B64URL, 93) + "AA"


def github_token(prefix: str = "ghp_") -> str:
    if prefix == "github_pat_":
        return "github_pat_" + _mixed(_B62, 22) + "_" + _mixed(_B62, 59)
    return prefix + _mixed(_B62, 36)


def aws_access_key() -> str:
    return "AKIA" + _rand(string.ascii_uppercase + "234567", 16)


def aws_secret_key() -> str:
    return _mixed(_B64, 40)


def google_api_key() -> str:
    return "AIza" + _mixed(_B64URL, 35)


def slack_token(prefix: str = "xoxb") -> str:
    return f"{prefix}-{_rand(string.digits, 12)}-{_rand(string.digits, 13)}-{_mixed(_B62, 24)}"


def stripe_key(prefix: str = "sk_live_") -> str:
    return prefix + _mixed(_B62, 24)


def jwt(claims: dict[str, object] | None = None) -> str:
    header = {"alg": "HS256", "typ": "JWT"}
    payload = claims or {"sub": str(_rng.randint(10**6, 10**7)), "iat": 1718000000, "role": "user"}
    return ".".join(
        (
            _b64url(json.dumps(header, separators=(",", ":")).encode()),
            _b64url(json.dumps(payload, separators=(",", ":")).encode()),
            _b64url(_rng.randbytes(32)),
        )
    )


def pem(kind: str = "RSA PRIVATE KEY", lines: int = 6, end: bool = True) -> str:
    body = "\n".join(_rand(_B64, 64) for _ in range(lines)) + "\n" + _rand(_B64, 24) + "=="
    block = f"-----BEGIN {kind}-----\n{body}"
    return block + (f"\n-----END {kind}-----" if end else "")


def luhn_complete(prefix: str, length: int) -> str:
    """A card number of ``length`` digits starting with ``prefix`` whose check digit is right."""
    digits = prefix + "".join(_rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        candidate = digits + check
        total = 0
        for i, ch in enumerate(reversed(candidate)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return candidate
    raise AssertionError("unreachable")


def luhn_break(number: str) -> str:
    """The same number with a wrong check digit."""
    last = int(number[-1])
    return number[:-1] + str((last + _rng.randint(1, 9)) % 10)


def group(number: str, sizes: Sequence[int], sep: str) -> str:
    out, i = [], 0
    for size in sizes:
        out.append(number[i : i + size])
        i += size
    if i < len(number):
        out.append(number[i:])
    return sep.join(out)


def iban(country: str, bban: str, spaced: bool = True) -> str:
    rearranged = bban + country + "00"
    value = int("".join(str(int(ch, 36)) for ch in rearranged))
    check = 98 - value % 97
    compact = f"{country}{check:02d}{bban}"
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4)) if spaced else compact


# --- the cases --------------------------------------------------------------------------------

_MARK = re.compile(r"⟦([a-z_]+)\|(.*?)⟧", re.S)


@dataclass(frozen=True, slots=True)
class Case:
    """A snippet and the spans that must be redacted in it (empty for negative cases)."""

    text: str
    spans: tuple[tuple[str, int, int], ...]


def parse(marked: str) -> Case:
    """Turn ``"mail ⟦email|a@b.co⟧ now"`` into the plain text and its labelled spans."""
    out: list[str] = []
    spans: list[tuple[str, int, int]] = []
    pos = 0
    length = 0
    for m in _MARK.finditer(marked):
        before = marked[pos : m.start()]
        out.append(before)
        length += len(before)
        value = m.group(2)
        spans.append((m.group(1), length, length + len(value)))
        out.append(value)
        length += len(value)
        pos = m.end()
    out.append(marked[pos:])
    return Case("".join(out), tuple(spans))


def _p(kind: str, value: str) -> str:
    return f"⟦{kind}|{value}⟧"


_ok = openai_key
_cards: list[str] = [
    group(luhn_complete("4", 16), (4, 4, 4, 4), " "),
    group(luhn_complete("4", 16), (4, 4, 4, 4), "-"),
    luhn_complete("4", 16),
    group(luhn_complete("53", 16), (4, 4, 4, 4), " "),
    group(luhn_complete("2221", 16), (4, 4, 4, 4), " "),
    group(luhn_complete("55", 16), (4, 4, 4, 4), "-"),
    group(luhn_complete("37", 15), (4, 6, 5), " "),
    luhn_complete("34", 15),
    group(luhn_complete("6011", 16), (4, 4, 4, 4), " "),
    group(luhn_complete("3530", 16), (4, 4, 4, 4), " "),
    group(luhn_complete("36", 14), (4, 6, 4), " "),
    group(luhn_complete("62", 19), (4, 4, 4, 4, 3), " "),
    luhn_complete("4", 13),
    "4111 1111 1111 1111",
    "5500-0000-0000-0004",
    "378282246310005",
]

_ibans = [
    iban("DE", "370400440532013000"),
    iban("GB", "WEST12345698765432"),
    iban("FR", "20041010050500013M02606"),
    iban("ES", "21000418450200051332", spaced=False),
    iban("NL", "ABNA0417164300"),
    iban("IT", "X0542811101000000123456"),
    iban("BE", "539007547034", spaced=False),
]

POSITIVE_MARKED: list[str] = [
    # --- OpenAI
    f"Hi, my integration broke. I'm using {_p('openai_key', _ok())} in the header, is that still valid?",
    f"OPENAI_API_KEY={_p('openai_key', _ok('proj'))}",
    f"I pasted the key {_p('openai_key', _ok('proj'))} into settings but it says unauthorized.",
    f'client = OpenAI(api_key="{_p("openai_key", _ok())}")',
    f"new service account key: {_p('openai_key', _ok('svcacct'))} — can you check its quota?",
    f"Is {_p('openai_key', _ok())} revoked? It worked yesterday.",
    f"export OPENAI_API_KEY='{_p('openai_key', _ok('proj'))}' then run the script",
    f"Error 401 with key={_p('openai_key', _ok())}&model=gpt-4o",
    # --- Anthropic
    f"My Claude key {_p('anthropic_key', anthropic_key())} returns 401 since this morning",
    f"ANTHROPIC_API_KEY={_p('anthropic_key', anthropic_key())}",
    f'headers = {{"x-api-key": "{_p("anthropic_key", anthropic_key())}"}}',
    f"here it is: {_p('anthropic_key', anthropic_key())}. please rotate it",
    f"El bot devuelve error con la clave {_p('anthropic_key', anthropic_key())}, ¿qué pasa?",
    f"anthropic.Anthropic(api_key='{_p('anthropic_key', anthropic_key())}')",
    # --- GitHub
    f"The deploy uses {_p('github_token', github_token('ghp_'))} to clone the repo",
    f"git clone https://{_p('github_token', github_token('ghp_'))}@github.com/acme/app.git fails",
    f"GITHUB_TOKEN={_p('github_token', github_token('ghs_'))}",
    f"oauth token {_p('github_token', github_token('gho_'))} expired?",
    f"I generated a fine-grained PAT {_p('github_token', github_token('github_pat_'))} with repo scope",
    f"Using user-to-server token {_p('github_token', github_token('ghu_'))} in the app",
    f"GH_TOKEN: {_p('github_token', github_token('ghp_'))}\nstill getting 403",
    f"refresh token is {_p('github_token', github_token('ghr_'))} according to the docs",
    # --- AWS
    f"aws configure asked for the id, I typed {_p('aws_access_key', aws_access_key())}",
    f"AWS_ACCESS_KEY_ID={_p('aws_access_key', aws_access_key())}\n"
    f"AWS_SECRET_ACCESS_KEY={_p('aws_secret_key', aws_secret_key())}",
    f"my access key {_p('aws_access_key', 'AKIAIOSFODNN7EXAMPLE')} and secret "
    f"{_p('aws_secret_key', 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY')} don't work with S3",
    f"aws_secret_access_key = {_p('aws_secret_key', aws_secret_key())}",
    f"[default]\naws_access_key_id = {_p('aws_access_key', aws_access_key())}\n"
    f"aws_secret_access_key = {_p('aws_secret_key', aws_secret_key())}",
    f"The IAM user key {_p('aws_access_key', aws_access_key())} was disabled by the admin",
    f'{{"AccessKeyId": "{_p("aws_access_key", aws_access_key())}", '
    f'"SecretAccessKey": "{_p("aws_secret_key", aws_secret_key())}"}}',
    # --- Google
    f"Maps stopped loading, key {_p('google_api_key', google_api_key())} is restricted?",
    f"GOOGLE_API_KEY={_p('google_api_key', google_api_key())}",
    f"https://maps.googleapis.com/maps/api/geocode/json?address=Paris&key={_p('google_api_key', google_api_key())}",
    f"gemini says API_KEY_INVALID for {_p('google_api_key', google_api_key())}",
    f'Firebase config: apiKey: "{_p("google_api_key", google_api_key())}"',
    # --- Slack
    f"Our bot token {_p('slack_token', slack_token('xoxb'))} can't post to #support",
    f"SLACK_BOT_TOKEN={_p('slack_token', slack_token('xoxb'))}",
    f"user token {_p('slack_token', slack_token('xoxp'))} has the wrong scopes",
    f"I used {_p('slack_token', slack_token('xoxa'))} for the legacy app",
    f"slack.WebClient(token='{_p('slack_token', slack_token('xoxb'))}')",
    # --- Stripe
    f"Charges fail with {_p('stripe_key', stripe_key('sk_live_'))} since the upgrade",
    f"STRIPE_SECRET_KEY={_p('stripe_key', stripe_key('sk_live_'))}",
    f"restricted key {_p('stripe_key', stripe_key('rk_live_'))} can't read invoices",
    f"in test mode I use {_p('stripe_key', stripe_key('sk_test_'))} and it works",
    f'stripe.api_key = "{_p("stripe_key", stripe_key("sk_live_"))}"',
    f"Le paiement échoue avec la clé {_p('stripe_key', stripe_key('rk_live_'))}",
    # --- JWT
    f"The API returns 401 for this token: {_p('jwt', jwt())}",
    f"Authorization: Bearer {_p('jwt', jwt())}",
    f"cookie session={_p('jwt', jwt({'sub': 'u_1829', 'email_verified': True}))}; Path=/",
    f"decoded {_p('jwt', jwt({'iss': 'acme', 'exp': 1718003600}))} and exp looks wrong",
    f"curl -H 'Authorization: Bearer {_p('jwt', jwt())}' https://api.acme.io/v1/me",
    f"id_token in the callback: {_p('jwt', jwt({'aud': 'web', 'nonce': 'n-0S6_WzA2Mj'}))}",
    # --- Bearer / Basic
    f"Authorization: Bearer {_p('bearer_token', _mixed(_B64URL, 40))}",
    f'curl -H "Authorization: Bearer {_p("bearer_token", _mixed(_B62, 32))}" https://api.acme.io/orders',
    f"I send 'bearer {_p('bearer_token', _mixed(_B64URL, 43))}' and get 403",
    f"Authorization: Basic {_p('bearer_token', base64.b64encode(b'admin:Winter2024!').decode())}",
    f"headers={{'Authorization': 'Bearer {_p('bearer_token', 'ya29.' + _mixed(_B64URL, 60))}'}}",
    f"the proxy strips Bearer {_p('bearer_token', _mixed(_B62, 24) + '.' + _mixed(_B62, 12))} from requests",
    # --- generic key/value secrets
    f"my password is {_p('secret_kv', 'hunter2')} and it says wrong password",
    f"password: {_p('secret_kv', 'Tr0ub4dor&3')}",
    f'{{"username": "maria", "password": "{_p("secret_kv", "Sommer2023!")}"}}',
    f"DB_PASSWORD={_p('secret_kv', 'pg_4dm1n_2024')}",
    f"api_key = '{_p('secret_kv', 'a81bc81b-dead-4e5d-abff-90865d1e13b1')}'",
    f"I reset it, the new password is {_p('secret_kv', 'Blue#Sky77')}.",
    f"mi contraseña es {_p('secret_kv', 'Gato2024!')} y no puedo entrar",
    f"mein Passwort ist {_p('secret_kv', 'Sonne#2023')}, das Login schlägt fehl",
    f"mon mot de passe est {_p('secret_kv', 'Soleil_88')} mais ça ne marche pas",
    f"a minha senha é {_p('secret_kv', 'Praia2022')} e não funciona",
    f"client_secret: {_p('secret_kv', 'd3adb33fc0ffee1234567890abcdef12')}",
    f'SECRET_KEY = "{_p("secret_kv", "django-insecure-7x!k2$qz")}"',
    f"webhook secret={_p('secret_kv', 'whsec_' + _mixed(_B62, 32))}",
    f"access_token={_p('secret_kv', _rand(string.ascii_lowercase + string.digits, 40))}&expires_in=3600",
    f"passwd: '{_p('secret_kv', 'summer')}'",
    f"The PIN is {_p('secret_kv', '4821')} right?",
    f"login: maria / pass: {_p('secret_kv', 'Qwerty!23')}",
    f"my pw is {_p('secret_kv', 'Summer2024')}",
    f"user: admin pw: {_p('secret_kv', 'Adm1n#2024')}",
    f"password was {_p('secret_kv', 'abc12345')} before the reset",
    f'{{"access_token":"{_p("jwt", jwt())}","token_type":"bearer"}}',
    f"token={_p('secret_kv', 'Xy7&Tk9')}&expires_in=3600",
    # --- PEM private keys
    f"Here is the key from the server:\n{_p('private_key', pem('RSA PRIVATE KEY'))}\nwhy does ssh reject it?",
    f"{_p('private_key', pem('PRIVATE KEY', 8))}",
    f"my deploy key\n{_p('private_key', pem('OPENSSH PRIVATE KEY', 5))}\nthanks",
    f"EC key: {_p('private_key', pem('EC PRIVATE KEY', 3))} (pasted from the console)",
    f"the log got cut: {_p('private_key', pem('ENCRYPTED PRIVATE KEY', 4, end=False))}",
    # --- URL passwords
    f"DATABASE_URL=postgres://app:{_p('url_password', 'S3cr3t!pass')}@db.internal:5432/shop",
    f"redis://default:{_p('url_password', 'Zx9kQ2mW')}@cache.acme.io:6379/0 times out",
    f"I connect with mongodb+srv://admin:{_p('url_password', 'hunter2')}@cluster0.mongodb.net/test",
    f"the proxy is http://john:{_p('url_password', 'p4ssw0rd')}@proxy.corp.local:3128",
    f"ftp://upload:{_p('url_password', 'Upl0ad!')}@files.example.org/incoming",
    f"amqp://guest:{_p('url_password', 'rabbit_pw_9')}@mq:5672// keeps refusing",
    f"mysql://root:{_p('url_password', 'p@ss')}@localhost/db",
    f"https://bob:{_p('url_password', 'correct-horse-battery')}@intranet.acme.com/wiki",
    f"REDIS_URL=redis://:{_p('url_password', 'onlyApassw0rd')}@redis.acme.io:6379",
    # --- high entropy (no provider prefix, no key name)
    f"The app shows this string after the crash: {_p('high_entropy', _mixed(_B62, 32))}",
    f"support told me to send {_p('high_entropy', _mixed(_B62, 40))} to reactivate",
    f"it printed {_p('high_entropy', _mixed(_B64, 44))} and then exited",
    f"vault wrapped value hvs.{_p('high_entropy', _mixed(_B62, 24))} — does it expire?",
    f"copy {_p('high_entropy', _mixed(_B64URL, 36))} into the field",
    f"the invite code was {_p('high_entropy', _mixed(_B62, 24))}",
    # --- cards
    *[
        s.format(card=_p("card", c))
        for s, c in zip(
            [
                "Please refund the charge on my card {card}, it was a duplicate.",
                "card number {card} exp 08/27",
                "I paid with {card} but the order shows unpaid",
                "Mi tarjeta es {card}, ¿podéis revisar el cobro?",
                "Ma carte {card} a été débitée deux fois",
                "Meine Kreditkarte {card} wurde abgelehnt",
                "use {card} for the subscription instead",
                "Amex {card}, CVV I can send separately",
                "Discover ending... full number {card}",
                "JCB card {card} doesn't go through",
                "Diners {card} is my company card",
                "UnionPay {card} declined",
                "old Visa {card} from 2015",
                "test card {card} works in sandbox but live fails",
                "Card: {card}",
                "my amex is {card}",
            ],
            _cards,
            strict=True,
        )
    ],
    # --- IBANs
    f"Please send the refund to {_p('iban', _ibans[0])}, thanks",
    f"My IBAN: {_p('iban', _ibans[1])}",
    f"IBAN {_p('iban', _ibans[2])} (Banque Populaire)",
    f"transfiere a {_p('iban', _ibans[3])} por favor",
    f"rekening {_p('iban', _ibans[4])} graag",
    f"bonifico su {_p('iban', _ibans[5])} entro venerdì",
    f"IBAN={_p('iban', _ibans[6])}",
    # --- emails
    f"You can reach me at {_p('email', 'maria.gonzalez@gmail.com')} anytime.",
    f"Please update my email to {_p('email', 'j.smith+billing@acme-corp.co.uk')}",
    f"Send the invoice to {_p('email', 'AP@Example.COM')}",
    f"my login is {_p('email', 'chen_wei1987@163.com')}",
    f"mailto:{_p('email', 'support.team@sub.domain.example.org')}",
    f"Mi correo es {_p('email', 'josé.garcía@correo.es')}",
    f"E-Mail: {_p('email', 'jürgen.müller@beispiel.de')}",
    "forward to " + _p("email", "o'brien@example.ie") + " please",
    f"<{_p('email', 'noreply@notifications.acme.io')}> bounced my message",
    f"two accounts: {_p('email', 'a.b@x.io')} and {_p('email', 'c_d@y.dev')}",
    f"{_p('email', 'first.last@university.edu')} is my school address",
    f"cc {_p('email', 'hr-team@company.com')}, {_p('email', 'legal@company.com')}",
    f'"email": "{_p("email", "user123@hotmail.fr")}"',
    f"contact ({_p('email', 'pierre.dupont@orange.fr')}) for details",
    f"I signed up as {_p('email', 'x@y.co')}.",
    f"my work email {_p('email', 'sanjay.patel@infosys.co.in')} gets no reset link",
    # --- phones
    f"Call me at {_p('phone', '+1 (415) 555-0132')} after 5pm",
    f"my number is {_p('phone', '+44 20 7946 0958')}",
    f"WhatsApp: {_p('phone', '+33 6 12 34 56 78')}",
    f"Tel. {_p('phone', '+49 30 12345678')}",
    f"llámame al {_p('phone', '+34 612 34 56 78')}",
    f"office {_p('phone', '+81 3-1234-5678')}",
    f"celular {_p('phone', '+55 11 91234-5678')}",
    f"mobile {_p('phone', '+91 98765 43210')}",
    f"from abroad dial {_p('phone', '0044 20 7946 0958')}",
    f"our store: {_p('phone', '(212) 555-0187')}",
    f"text {_p('phone', '212-555-0187')} when it ships",
    f"fax {_p('phone', '212.555.0199')}",
    f"hotline {_p('phone', '1-800-555-0199')}",
    f"ring me on {_p('phone', '020 7946 0958')} or {_p('phone', '07700 900123')}",
    f"mon portable: {_p('phone', '06 12 34 56 78')}",
    f"Festnetz {_p('phone', '030 12345678')}, mobil {_p('phone', '0151 23456789')}",
    f"Rückruf bitte unter {_p('phone', '089/1234567')}",
    f"my phone number is {_p('phone', '5551234567')}",
    f"E.164 format {_p('phone', '+15551234567')} is what the form wants",
    f"Telefono: {_p('phone', '+39 06 6982 1234')}",
    f"mobile: {_p('phone', '0412 345 678')}",
    f"my cell {_p('phone', '(650) 555-0100')} — sms is fine too",
    f"call me on {_p('phone', '415 555 0132')} tomorrow",
    f"Москва, тел. {_p('phone', '+7 (495) 123-45-67')}",
    f"我的电话是 {_p('phone', '+86 138 0013 8000')}",
    f"mob {_p('phone', '+61 412 345 678')}",
    f"ring {_p('phone', '+353 87 123 4567')} before noon",
    f"Pay with {_p('card', '4242424242424242')} in test mode?",
    f"debit card {_p('card', '4000 0566 5566 5556')} was charged",
]


_sha40 = "3f786850e387550fdab836ed7e6dc881de23001b"
NEGATIVE_TEXTS: list[str] = [
    # order, invoice, ticket and tracking numbers
    "Where is my order #4829301? It was supposed to arrive Monday.",
    "Order ORD-2024-0001234 shows delivered but I got nothing.",
    "Invoice INV-2023-11-0042 has the wrong VAT number.",
    "Ticket 2024-000123 is still open after a week.",
    "UPS tracking 1Z999AA10123456784 hasn't moved since Tuesday.",
    "USPS says 9400 1000 0000 0000 0000 00 is in transit.",
    "FedEx tracking number 1234 5678 9012, can you check?",
    "Amazon order 112-4567890-1234567 arrived damaged.",
    "DHL waybill 1234567890 stuck in customs",
    "Case number 00012345 was closed without a reply",
    "RMA 7734-22 approved, label attached",
    "Reference: 20240115-000873",
    "Your confirmation code is 8H2K9L.",
    "Booking ref QX7T2M for flight LH 454",
    "PO number 4500012345 needs approval",
    "SKU 400-123-45 is out of stock",
    "customer id 1029384756",
    "Account number ending in 4821",
    "member #55-0198-3321 since 2019",
    "serial no. SN-00A1-77B2-9C3D",
    # Luhn-failing 16-digit numbers (with card-like prefixes) and other long numbers
    *[
        f"Order number {luhn_break(luhn_complete(p, 16))} please check"
        for p in ("4", "4", "51", "53", "6011", "4")
    ],
    *[
        f"gift card {group(luhn_break(luhn_complete(p, 16)), (4, 4, 4, 4), ' ')} has no balance"
        for p in ("4", "55", "6011")
    ],
    f"transaction {luhn_break(luhn_complete('4', 16))} failed",
    "voucher 1234 5678 9012 3456 doesn't apply",
    "Your loyalty number is 9876543210123456",
    "ISBN 978-3-16-148410-0 is the book I ordered",
    "EAN 4006381333931 on the box",
    "IMEI 356938035643809 of my phone",
    # hashes, ids
    f"Deployed commit {_sha40} to production",
    f"git checkout {_sha40[:7]} fixed it",
    "Regression started at a1b2c3d4e5f6 (short sha)",
    "sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "Docker image digest sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "request id 123e4567-e89b-12d3-a456-426614174000 failed with 500",
    "trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7",
    "user UUID: f47ac10b-58cc-4372-a567-0e02b2c3d479",
    "MD5 of the file is d41d8cd98f00b204e9800998ecf8427e",
    "thread 6ba7b810-9dad-11d1-80b4-00c04fd430c8 lost context",
    'etag W/"5e8c1f2a9b3d" mismatch',
    "object id 507f1f77bcf86cd799439011 not found",
    # prices, amounts
    "The price went from $1,299.99 to $1,499.00 overnight!",
    "I was charged €49,90 twice",
    "Total: 1 234 567,89 EUR",
    "refund of USD 12,345.67 pending",
    "¥15000 for the annual plan?",
    "It costs 29.99/month or 299.90/year",
    # dates, times, timestamps
    "It happened on 2024-01-15 at 10:30:00",
    "Delivery window 15.01.2024 - 17.01.2024",
    "Due date 01/02/2024, paid on 03/02/2024",
    "timestamp 2024-06-11T14:22:05.123Z in the logs",
    "epoch 1718115725 and in ms 1718115725123",
    "Logged at 20240611 142205",
    "between 09:00 and 17:30 CET",
    "Mon, 10 Jun 2024 08:15:00 +0200",
    "the cron is 0 3 * * 1-5",
    "week 24 of 2024, Q2 FY2024",
    # versions
    "I'm on version 2.31.0 of the SDK",
    "After upgrading to v3.11.4 it crashes",
    "node v20.11.1, npm 10.2.4",
    "Windows 10.0.19045.3930",
    "build 2024.06.11+sha.3f78685",
    "langchain-core==0.3.15 and pydantic>=2.7.4",
    "v2.31.0-rc1+build.20240115",
    "iOS 17.5.1 (21F90)",
    "Chrome/125.0.6422.142 Safari/537.36",
    "API version 2023-10-16",
    # words in several languages
    "Donaudampfschifffahrtsgesellschaftskapitän is my favourite German word",
    "Rindfleischetikettierungsüberwachungsaufgabenübertragungsgesetz was repealed",
    "Finnish: lentokonesuihkuturbiinimoottoriapumekaanikkoaliupseerioppilas",
    "Dutch: kindercarnavalsoptochtvoorbereidingswerkzaamheden",
    "incomprehensibilities and antidisestablishmentarianism",
    "Hungarian: megszentségteleníthetetlenségeskedéseitekért",
    "Polish: konstantynopolitańczykowianeczka",
    "Turkish: Muvaffakiyetsizleştiricileştiriveremeyebileceklerimizdenmişsinizcesine",
    "Spanish: electroencefalografistas y otorrinolaringólogos",
    "French: anticonstitutionnellement, c'est le mot le plus long",
    "Russian: превысокомногорассмотрительствующий",
    "Japanese: 私のパスワードを忘れました。リセットできますか？",
    "Chinese: 我的订单还没有到，请帮我查一下物流信息",
    "Arabic: لم يصلني الطلب حتى الآن، أرجو المساعدة",
    "Portuguese: inconstitucionalissimamente",
    "Italian: precipitevolissimevolmente",
    "Swedish: nordväststatsvägsförvaltningsbyggnadsarbetare",
    "Greek: αντισυνταγματικότατος",
    "Korean: 비밀번호를 잊어버렸어요",
    "Hindi: मेरा ऑर्डर अभी तक नहीं आया",
    # URLs without passwords
    "See https://docs.acme.io/en/latest/guides/getting-started.html#install",
    "The page https://example.com:8080/path/to/resource?id=42&sort=desc is blank",
    "ssh://git@github.com/acme/app.git works but https doesn't",
    "https://user@gitlab.com/acme/app.git asks for a password",
    "http://localhost:3000/api/v1/orders/4829301",
    "ftp://ftp.example.org/pub/releases/app-2.31.0.tar.gz",
    "postgres://db.internal:5432/shop?sslmode=require",
    "https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=42s",
    "file:///C:/Users/Public/Documents/report-2024.pdf",
    "https://acme.zendesk.com/hc/en-us/articles/360001234567-How-to-reset",
    "mailto link was https://acme.io/contact?topic=billing",
    "https://maps.google.com/?q=48.8566,2.3522",
    "https://cdn.acme.io/assets/logo@2x.png",
    "wss://stream.acme.io:443/v2/events",
    "https://[2001:db8::1]:8443/health",
    # code snippets without secrets
    "api_key = os.environ['OPENAI_API_KEY']",
    "password = getpass.getpass()",
    "token = request.headers.get('Authorization')",
    "client = OpenAI(api_key=settings.openai_api_key)",
    "export API_KEY=${API_KEY}",
    "def check_password(password: str) -> bool:",
    "if token is None: raise AuthError()",
    "secret_key: str = Field(default_factory=generate_secret)",
    "password_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt())",
    "const token = await getAccessToken(userId);",
    "for (let i = 0; i < 1000000; i++) { total += prices[i]; }",
    "SELECT * FROM orders WHERE id = 4829301 AND status = 'shipped';",
    "docker run -p 8080:80 -e API_KEY=$API_KEY acme/app:2.31.0",
    "kubectl get pods -n production --field-selector=status.phase=Running",
    "response = requests.get(url, timeout=30, headers={'Authorization': f'Bearer {token}'})",
    "api_key: <your-api-key>",
    "PASSWORD=<set me> is what the template says",
    "token: null",
    "import numpy as np; arr = np.zeros((1024, 768), dtype=np.float32)",
    "getUserAccountBalanceForCustomerId(customerId, includePending=True)",
    "class OrderFulfillmentServiceV2Handler(BaseHandler):",
    "/usr/local/lib/python3.11/site-packages/langchain_core/runnables/base.py",
    "C:\\Program Files\\Acme\\bin\\acme-cli-2.31.0.exe",
    "color: #ff5733; margin: 0 auto; font-size: 14px;",
    "regex ^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\\.[A-Za-z]{2,}$ rejects my address",
    # prose mentioning secrets without containing one
    "I forgot my password, how do I reset it?",
    "My password is not working since the update",
    "The password is correct, I checked twice",
    "Where do I find my API key in the dashboard?",
    "The token expired, how do I refresh it?",
    "Is the secret key the same as the publishable key?",
    "My password: I don't remember it",
    "Bearer authentication keeps failing",
    "Basic plan or Pro plan, which one has SSO?",
    "what's the difference between sk_live and pk_live keys?",
    "ask-jeeves-legacy-search-engine-adapter is deprecated",
    "the task-management-dashboard-for-enterprise page is slow",
    # numbers that are not phones
    "IP 192.168.10.254 is blocked",
    "ZIP code 94107-1234",
    "The meeting is in room 0123 4567? no, room 12",
    "temperature 23.5 °C, humidity 45%",
    "coordinates 48.858844, 2.294351",
    "We sold 12 345 678 units in 2023",
    "Error code 0x80070005 when installing",
    "HTTP 503 after 30 seconds, retried 3 times",
    "score 1-2-3 in the last three games",
    "dimensions 120x80x45 cm, weight 12.5 kg",
    "between pages 100-120 of the manual",
    "my SMS code 482913 never arrived",
    "it took 1234567 ms to finish",
    "the call lasted 00:12:45",
    "lat/long 40.7128 -74.0060",
    # look-alikes for emails and handles
    "follow us @acme_support on Twitter",
    "npm install left-pad@1.3.0",
    "pip install requests==2.32.3",
    "user@localhost is not a real address",
    "the icon file is logo@2x.png",
    "ping me on Slack @maria.g",
    "decorator @functools.lru_cache(maxsize=128)",
    "git@github.com:acme/app.git is our remote",
    # look-alikes for IBANs and keys
    "Country codes DE, GB, FR and part numbers AB12 CDEF GHIJ",
    "model GB82-WEST is the router we sell",
    "The license is ACME-PRO-2024-XJ8K-99ZT",
    "sk-learn is a misspelling of scikit-learn",
    "error AKIA? no: AKS cluster name aks-prod-weu-001",
    "I have 4 eyJ-shaped stickers",
    "Boarding pass: QX7T2M for seat 14C",
    "Call us at 1-800-FLOWERS",
    "order 2024-06-11-0042 missing",
    "SSN format is XXX-XX-XXXX, never send it",
    "The error mentions api_key=None",
    "password: ********",
    "token=[REDACTED]",
    "set OPENAI_API_KEY in your .env file",
    'File "/app/handlers/orders.py", line 42, in get_order',
    "<OrderService object at 0x7f3b2c1d4e50>",
    "Model claude-3-5-sonnet-20241022 and gpt-4o-mini-2024-07-18",
    "arn:aws:iam::123456789012:role/MyAppRole-Prod2024",
    "aws s3 cp s3://acme-prod/uploads/2024/06/AbCdEfGh12345678XyZ.pdf .",
    "mi contraseña es muy larga y no la recuerdo",
    "das Passwort ist falsch, sagt die App",
    "le mot de passe est incorrect",
]

POSITIVES: list[Case] = [parse(t) for t in POSITIVE_MARKED]
NEGATIVES: list[Case] = [Case(t, ()) for t in NEGATIVE_TEXTS]


# --- scoring ----------------------------------------------------------------------------------


@dataclass
class Score:
    """Counts for one kind (or overall)."""

    tp: int = 0
    """Predicted spans that overlap an expected span (of the same kind, per kind)."""
    fp: int = 0
    """Predicted spans that overlap no expected span."""
    found: int = 0
    """Expected spans fully covered by predictions."""
    missed: int = 0
    """Expected spans not fully covered."""

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.found / (self.found + self.missed) if self.found + self.missed else 1.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "tp": self.tp,
            "fp": self.fp,
            "found": self.found,
            "missed": self.missed,
        }


def _covered(start: int, end: int, spans: Iterable[tuple[int, int]]) -> bool:
    pos = start
    for s, e in sorted(spans):
        if s <= pos < e:
            pos = e
        if pos >= end:
            return True
    return pos >= end


def score(
    cases: Iterable[Case], predict: Callable[[str], Iterable[tuple[str, int, int]]]
) -> tuple[dict[str, Score], Score, list[tuple[str, str, str]]]:
    """Score a ``predict(text) -> list[(kind, start, end)]`` function on cases.

    Per kind: a predicted span of kind K is a true positive when it overlaps an expected span of
    kind K; an expected span is found when predicted spans of its kind cover every character.
    Overall: the same, ignoring kinds (what matters for privacy is that the characters are gone).

    Returns the per-kind scores, the overall score and a list of mistakes
    ``(what, kind, snippet)`` for the report.
    """
    per_kind: dict[str, Score] = {}
    overall = Score()
    mistakes: list[tuple[str, str, str]] = []
    for case in cases:
        predicted: list[tuple[str, int, int]] = list(predict(case.text))
        for kind, s, e in predicted:
            sc = per_kind.setdefault(kind, Score())
            if any(k == kind and s < ee and ss < e for k, ss, ee in case.spans):
                sc.tp += 1
            else:
                sc.fp += 1
                mistakes.append(("false_positive(kind)", kind, case.text[max(0, s - 20) : e + 20]))
            if any(s < ee and ss < e for _k, ss, ee in case.spans):
                overall.tp += 1
            else:
                overall.fp += 1
        for kind, s, e in case.spans:
            sc = per_kind.setdefault(kind, Score())
            if _covered(s, e, [(ps, pe) for pk, ps, pe in predicted if pk == kind]):
                sc.found += 1
            else:
                sc.missed += 1
                mistakes.append(("missed(kind)", kind, case.text[max(0, s - 20) : e + 20]))
            if _covered(s, e, [(ps, pe) for _pk, ps, pe in predicted]):
                overall.found += 1
            else:
                overall.missed += 1
    return per_kind, overall, mistakes


# --- a held-out set -------------------------------------------------------------------------------
# Written after the detectors were tuned on the cases above and scored once, as they were, without
# changing the detectors afterwards: the benchmark reports it separately as an out-of-sample
# estimate (the tests assert only on the main corpus).

HOLDOUT_MARKED: list[str] = [
    f"hey can u check acct {_p('email', 'tom.baker77@yahoo.co.uk')} pls",
    f"Reach our billing desk: {_p('phone', '+1 212 555 0143')}",
    f"Tel: {_p('phone', '+49 (0)89 1234567')}",
    f"My number changed to {_p('phone', '(312) 555-0178')}.",
    f"numéro: {_p('phone', '+33 1 23 45 67 89')}",
    f"whatsapp me {_p('phone', '+52 55 1234 5678')}",
    f"charged twice on {_p('card', group(luhn_complete('4', 16), (4, 4, 4, 4), ' '))} yesterday",
    f"cc# {_p('card', luhn_complete('51', 16))} exp 11/26 cvv 123",
    f"Visa {_p('card', group(luhn_complete('4', 16), (4, 4, 4, 4), '-'))} please void",
    f"key leaked in our logs: {_p('openai_key', openai_key('proj'))}",
    f"`{_p('github_token', github_token('ghp_'))}` was committed by mistake",
    f"x-api-key: {_p('anthropic_key', anthropic_key())}",
    f"set SLACK_TOKEN to {_p('slack_token', slack_token('xoxp'))}",
    f"Stripe says invalid API key provided: {_p('stripe_key', stripe_key('sk_live_'))}",
    f"jwt={_p('jwt', jwt())}",
    f"DB: mysql://shop:{_p('url_password', 'Sh0pP4ss')}@10.0.0.5:3306/shop",
    f"pwd={_p('secret_kv', 'Kx9!rt')}",
    f"My new password: {_p('secret_kv', 'Welcome123!')}",
    f"the passphrase is '{_p('secret_kv', 'correct horse battery staple')}'",
    # (The first version of this case had a 16-character Swiss BBAN, an invalid IBAN: fixed data.)
    f"IBAN: {_p('iban', iban('CH', '00762011623852957'))}",
    f"AKID {_p('aws_access_key', aws_access_key())} secret {_p('aws_secret_key', aws_secret_key())}",
    f"curl -u user -H 'Authorization: Bearer {_p('bearer_token', _mixed(_B64URL, 36))}'",
    f"here is my recovery string {_p('high_entropy', _mixed(_B62, 28))}",
    f"{_p('private_key', pem('PRIVATE KEY', 2))} <- from id_rsa",
]

HOLDOUT_NEGATIVE_TEXTS: list[str] = [
    "My order 7723-9921-004 never arrived",
    "Tracking: 1Z 999 AA1 01 2345 6784",
    "Your invoice #2024-00913 is attached",
    "Version 4.2.0-beta.3 broke the export",
    "commit a94a8fe5ccb19ba61c4c0873d391e987982fbbd3 reverted it",
    "price is 1.299,00 € incl. VAT",
    "appointment on 12/06/2024 at 3:45 PM",
    "serial 5CG1234XYZ on the laptop",
    "Go to Settings > Security > Password to change it",
    "the API key field is empty in the form",
    "https://status.acme.io/incidents/8kq2m1x9v7 shows it resolved",
    "kubectl logs deploy/api-7f9c8b6d5-x2k4p",
    "Unternehmenssteuerreformgesetz and Arbeitsunfähigkeitsbescheinigung",
    "the 16-digit code on the back: 6003 5500 1234 5678 (gift card)",
    "room 1204, building 3, floor 12",
    "call center hours 8-20",
    "user_id=8812734 session=expired",
    "2FA backup codes were regenerated",
    "Node.js v18.19.0, macOS 14.4.1 (23E224)",
    "sha1: 2fd4e1c67a2d28fced849ee1bb76e7391b93eb12",
]
HOLDOUT_POSITIVES: list[Case] = [parse(t) for t in HOLDOUT_MARKED]
HOLDOUT_NEGATIVES: list[Case] = [Case(t, ()) for t in HOLDOUT_NEGATIVE_TEXTS]
