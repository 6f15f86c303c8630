"""PII redaction for free text (search queries) and keyed pseudonymization of user ids.

``redact_text`` replaces e-mail addresses, phone numbers, IP addresses and payment-card numbers by
typed placeholders (``[EMAIL]``, ``[PHONE]``, ``[IP]``, ``[CARD]``) and counts what it replaced. It
runs on every event's query at ingestion, so text without a digit, ``@`` or ``:`` returns after one
cheap scan, and the patterns are tuned to leave ordinary shop queries alone ("iphone 15 pro 256gb",
"2024-05-01", "19.99", "rtx 4090"): phone numbers need a ``+`` country code, a ``(area)``/separated
North-American shape or a ``0`` trunk prefix with 9+ digits; cards need 13-19 digits in groups of 3+
that pass the Luhn check; IP addresses must be valid (checked with :mod:`ipaddress`).

Detectors run in a fixed order (e-mail, IPv6, IPv4, card, phone) so that the most specific shape
wins: a card number is never half-eaten as a phone number, nor an IP address.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections import Counter
from collections.abc import Callable

PII_TYPES = ("email", "phone", "ip", "card")
PLACEHOLDERS = {"email": "[EMAIL]", "phone": "[PHONE]", "ip": "[IP]", "card": "[CARD]"}
PSEUDONYM_PREFIX = "p_"
PSEUDONYM_HEX_CHARS = 24  # 96 bits: collisions are negligible for any realistic user count

# Cheap pre-check: every detector needs one of these characters; most queries have none.
_MAYBE_PII = re.compile(r"[0-9@:]")
_DIGITS = "0123456789"

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![A-Za-z0-9])"
)

# Candidates only; ipaddress decides. Up to 8 colon-separated hex groups, optionally ending in an
# embedded IPv4 (::ffff:1.2.3.4). Not part of a longer word, number or time.
_IPV6_CANDIDATE = re.compile(
    r"(?<![0-9A-Za-z:.])"
    r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f]{1,4})?"
    r"(?![0-9A-Za-z:]|\.[0-9])"
)
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?<![0-9A-Za-z.]){_OCTET}(?:\.{_OCTET}){{3}}(?![0-9A-Za-z]|\.[0-9])")

# Runs of digit groups (3+ digits each) joined by single spaces or dashes; the callback picks the
# span of 13-19 digits that passes Luhn.
_CARD_CANDIDATE = re.compile(
    r"(?<![0-9A-Za-z.,+])(?<![0-9A-Za-z]-)[0-9]{3,}(?:[ \-][0-9]{3,})*(?![0-9A-Za-z]|-[0-9A-Za-z])"
)
_CARD_SEPARATOR = re.compile(r"[ \-]")

# A phone number never continues a hyphen-joined token: "07685387-7876-4bee-..." is a UUID.
_PHONE = re.compile(
    r"(?<![0-9A-Za-z+])(?<![0-9A-Za-z]-)(?:"
    # International: +<country code> then digit groups, optionally "(0)" or "(30)".
    r"\+[1-9][0-9]{0,3}(?:[ .\-/]?(?:\([0-9]{1,4}\)|[0-9]++))++"
    # North American: optional 1, area code (in brackets or not), exchange, 4-digit line.
    r"|(?:1[ .\-]?)?(?:\([2-9][0-9]{2}\)[ .\-]?|[2-9][0-9]{2}[ .\-])[0-9]{3}[ .\-][0-9]{4}"
    # National with trunk prefix 0: "0171 2345678", "(030) 1234567", "030/12345678".
    r"|(?:\(0[0-9]{1,4}\)|0[0-9]{1,4})(?:[ /\-]?[0-9]{2,8}){1,3}"
    r")(?![0-9A-Za-z]|-[0-9A-Za-z])"
)
_INTERNATIONAL_DIGITS = (7, 15)  # E.164 allows at most 15 digits
_NATIONAL_DIGITS = (9, 13)


def _digit_count(text: str) -> int:
    return sum(map(text.count, _DIGITS))


def luhn_valid(digits: str) -> bool:
    """True if the digit string passes the Luhn checksum (used by payment cards)."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _replace_email(match: re.Match[str], counts: Counter[str]) -> str:
    counts["email"] += 1
    return PLACEHOLDERS["email"]


def _replace_ipv6(match: re.Match[str], counts: Counter[str]) -> str:
    candidate = match.group(0)
    if candidate.count(":") < 2 or not candidate.strip(":"):  # a bare "::" is punctuation here
        return candidate
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return candidate
    counts["ip"] += 1
    return PLACEHOLDERS["ip"]


def _replace_ipv4(match: re.Match[str], counts: Counter[str]) -> str:
    counts["ip"] += 1
    return PLACEHOLDERS["ip"]


def _replace_card(match: re.Match[str], counts: Counter[str]) -> str:
    """Replace the longest run of whole digit groups (13-19 digits, Luhn-valid) in the candidate."""
    candidate = match.group(0)
    groups = _CARD_SEPARATOR.split(candidate)
    separators = _CARD_SEPARATOR.findall(candidate)
    output: list[str] = []
    start = 0
    while start < len(groups):
        found_end = None
        digits = ""
        for end in range(start, len(groups)):
            digits += groups[end]
            if len(digits) > 19:
                break
            if len(digits) >= 13 and luhn_valid(digits):
                found_end = end
        if found_end is None:
            output.append(groups[start])
            end_of_piece = start
        else:
            counts["card"] += 1
            output.append(PLACEHOLDERS["card"])
            end_of_piece = found_end
        if end_of_piece < len(separators):
            output.append(separators[end_of_piece])
        start = end_of_piece + 1
    return "".join(output)


def _replace_phone(match: re.Match[str], counts: Counter[str]) -> str:
    candidate = match.group(0)
    digits = _digit_count(candidate)
    if candidate[0] == "+":
        low, high = _INTERNATIONAL_DIGITS
    elif candidate.lstrip("(")[0] == "0":
        low, high = _NATIONAL_DIGITS
    else:  # North American shape: the pattern fixes the digit count
        low, high = 10, 11
    if not low <= digits <= high:
        return candidate
    counts["phone"] += 1
    return PLACEHOLDERS["phone"]


def _redact_once(text: str, counts: Counter[str]) -> str:
    def apply(pattern: re.Pattern[str], replace: Callable[[re.Match[str], Counter[str]], str]) -> None:
        nonlocal text
        text = pattern.sub(lambda match: replace(match, counts), text)

    if "@" in text:
        apply(_EMAIL, _replace_email)
    if text.count(":") >= 2:
        apply(_IPV6_CANDIDATE, _replace_ipv6)
    digits = _digit_count(text)
    if digits >= 4 and "." in text:
        apply(_IPV4, _replace_ipv4)
        digits = _digit_count(text)
    if digits >= 13:
        apply(_CARD_CANDIDATE, _replace_card)
        digits = _digit_count(text)
    if digits >= 7:
        apply(_PHONE, _replace_phone)
    return text


def redact_text(text: str) -> tuple[str, Counter[str]]:
    """Replace e-mails, phones, IPs and card numbers by typed placeholders; count them by type.

    Idempotent: redacting the result again changes nothing (the pass repeats until nothing more is
    found, which terminates because every replacement removes a digit, ``@`` or ``:``).
    """
    counts: Counter[str] = Counter()
    if not text or not _MAYBE_PII.search(text):
        return text, counts
    while True:
        before = sum(counts.values())
        text = _redact_once(text, counts)
        if sum(counts.values()) == before:
            return text, counts


def contains_pii(text: str) -> bool:
    """True if ``redact_text`` would replace anything in ``text``."""
    return bool(redact_text(text)[1])


def pseudonymize(user_id: str, key: bytes) -> str:
    """A stable pseudonym for ``user_id``: ``p_`` + truncated hex HMAC-SHA256 under ``key``.

    Deterministic for one key (joins across days still work) and unlinkable without the key.
    """
    if not isinstance(key, bytes | bytearray):
        raise TypeError(f"pseudonymization key must be bytes, got {type(key).__name__}")
    if not key:
        raise ValueError("pseudonymization key is empty; set LOOPLINE_PSEUDONYMIZATION_KEY to a secret")
    digest = hmac.new(bytes(key), user_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:PSEUDONYM_HEX_CHARS]
