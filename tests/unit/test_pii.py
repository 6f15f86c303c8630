"""PII redaction: what must be replaced, what must stay, and properties over generated text."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.pii import PII_TYPES, PLACEHOLDERS, contains_pii, luhn_valid, pseudonymize, redact_text

POSITIVE = [
    # (text, expected output, expected counts)
    ("mail me at john.doe+shop@example.co.uk now", "mail me at [EMAIL] now", {"email": 1}),
    ("ANNA_K@Mail.DE", "[EMAIL]", {"email": 1}),
    ("call +49 30 1234567", "call [PHONE]", {"phone": 1}),
    ("+49 (0)30 1234567", "[PHONE]", {"phone": 1}),
    ("+44 20 7946 0958 please", "[PHONE] please", {"phone": 1}),
    ("+1-202-555-0143", "[PHONE]", {"phone": 1}),
    ("tel:+4930123456", "tel:[PHONE]", {"phone": 1}),
    ("(555) 123-4567", "[PHONE]", {"phone": 1}),
    ("555-123-4567", "[PHONE]", {"phone": 1}),
    ("555.123.4567", "[PHONE]", {"phone": 1}),
    ("1-800-555-0199", "[PHONE]", {"phone": 1}),
    ("0171 2345678", "[PHONE]", {"phone": 1}),
    ("(030) 1234567", "[PHONE]", {"phone": 1}),
    ("030/12345678", "[PHONE]", {"phone": 1}),
    ("from 192.168.0.1.", "from [IP].", {"ip": 1}),
    ("10.0.0.255 and 8.8.8.8", "[IP] and [IP]", {"ip": 2}),
    ("2001:db8::1", "[IP]", {"ip": 1}),
    ("host fe80::1ff:fe23:4567:890a here", "host [IP] here", {"ip": 1}),
    ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", "[IP]", {"ip": 1}),
    ("::ffff:192.0.2.1", "[IP]", {"ip": 1}),
    ("card 4111 1111 1111 1111", "card [CARD]", {"card": 1}),
    ("4111-1111-1111-1111", "[CARD]", {"card": 1}),
    ("4111111111111111", "[CARD]", {"card": 1}),
    ("amex 3782 822463 10005", "amex [CARD]", {"card": 1}),
    ("order 12 4111 1111 1111 1111 thanks", "order 12 [CARD] thanks", {"card": 1}),
    ("pay 5555555555554444 or mail a@b.io", "pay [CARD] or mail [EMAIL]", {"card": 1, "email": 1}),
    ("a@b.io 555-123-4567 1.2.3.4", "[EMAIL] [PHONE] [IP]", {"email": 1, "phone": 1, "ip": 1}),
]

NEGATIVE = [
    "red dress size 38",
    "iphone 15 pro 256gb",
    "nike air max 90",
    "tv 55 inch 4k",
    "2 for 1 socks",
    "19.99",
    "price 1,299.00",
    "2024",
    "rtx 4090",
    "2024-05-01",
    "01.05.2024",
    "2024-05-01T12:34:56Z",
    "12:30:45",
    "10:30 - 11:45",
    "std::vector",
    "a :: b",
    "v1.2.3.4",
    "isbn 978-3-16-148410-0",
    "1234567890123",  # 13 digits, fails Luhn
    "4111 1111 1111 1112",  # card-shaped, fails Luhn
    "size 38 40 42 44 46",
    "zip 01067 dresden",
    "c++ 11",
    "2+1",
    "+1 year warranty",
    "socks @ 3 for 10",
    "@home 24/7",
    "",
    "no digits here at all",
    "größe 38 weiß",
]


@pytest.mark.parametrize(("text", "expected", "counts"), POSITIVE)
def test_redacts_each_kind(text: str, expected: str, counts: dict[str, int]) -> None:
    redacted, found = redact_text(text)
    assert redacted == expected
    assert dict(found) == counts
    assert contains_pii(text)


@pytest.mark.parametrize("text", NEGATIVE)
def test_leaves_ordinary_queries_alone(text: str) -> None:
    redacted, found = redact_text(text)
    assert redacted == text
    assert not found
    assert not contains_pii(text)


def test_card_is_not_taken_for_a_phone_nor_an_ip() -> None:
    redacted, found = redact_text("4111 1111 1111 1111")
    assert found == {"card": 1}
    redacted, found = redact_text("192.168.100.200")
    assert (redacted, dict(found)) == ("[IP]", {"ip": 1})


def test_constants_cover_every_type() -> None:
    assert set(PII_TYPES) == set(PLACEHOLDERS)
    assert all(re.fullmatch(r"\[[A-Z]+\]", p) for p in PLACEHOLDERS.values())


@pytest.mark.parametrize(
    ("digits", "valid"),
    [("4111111111111111", True), ("378282246310005", True), ("4111111111111112", False), ("0", True)],
)
def test_luhn(digits: str, valid: bool) -> None:
    assert luhn_valid(digits) is valid


# --- properties -----------------------------------------------------------------------------

# Text dense in the characters the detectors look at, so hypothesis reaches the tricky cases.
DENSE = st.text(alphabet=string.digits + " .:-+()@/abcdefxyz", max_size=60)
WORDS = st.lists(st.sampled_from(["red", "dress", "call", "me", "at", "size", "pro", "and", "the"]), max_size=3).map(
    " ".join
)


def _luhn_complete(body: str) -> str:
    for check in string.digits:
        if luhn_valid(body + check):
            return body + check
    raise AssertionError("unreachable")


emails = st.builds(
    lambda local, domain, tld: f"{local}@{domain}.{tld}",
    st.from_regex(r"[a-z0-9][a-z0-9._]{0,10}[a-z0-9]", fullmatch=True),
    st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True),
    st.from_regex(r"[a-z]{2,6}", fullmatch=True),
)
ipv4s = st.ip_addresses(v=4).map(str)
ipv6s = st.ip_addresses(v=6).map(str).filter(lambda a: a != "::")
cards = st.builds(
    lambda body, sep: sep.join(re.findall(".{1,4}", _luhn_complete(body))),
    st.from_regex(r"4[0-9]{14}", fullmatch=True),
    st.sampled_from(["", " ", "-"]),
)
phones = st.one_of(
    st.builds(
        lambda cc, area, number: f"+{cc} {area} {number}",
        st.integers(1, 999),
        st.from_regex(r"[1-9][0-9]{1,3}", fullmatch=True),
        st.from_regex(r"[0-9]{5,8}", fullmatch=True),
    ),
    st.builds(
        lambda area, exchange, line: f"({area}) {exchange}-{line}",
        st.from_regex(r"[2-9][0-9]{2}", fullmatch=True),
        st.from_regex(r"[0-9]{3}", fullmatch=True),
        st.from_regex(r"[0-9]{4}", fullmatch=True),
    ),
)
KIND_VALUES = st.one_of(
    emails.map(lambda v: ("email", v)),
    ipv4s.map(lambda v: ("ip", v)),
    ipv6s.map(lambda v: ("ip", v)),
    cards.map(lambda v: ("card", v)),
    phones.map(lambda v: ("phone", v)),
)


@given(st.text(max_size=200))
def test_never_raises_and_returns_text(text: str) -> None:
    redacted, found = redact_text(text)
    assert isinstance(redacted, str)
    assert set(found) <= set(PII_TYPES)
    assert all(count > 0 for count in found.values())
    if not found:
        assert redacted == text


@given(st.one_of(DENSE, st.text(max_size=80)))
@settings(max_examples=400)
def test_idempotent(text: str) -> None:
    once, _ = redact_text(text)
    twice, found_again = redact_text(once)
    assert twice == once
    assert not found_again


@given(WORDS, KIND_VALUES, WORDS)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_detected_value_never_survives(prefix: str, kind_value: tuple[str, str], suffix: str) -> None:
    kind, value = kind_value
    text = f"{prefix} {value} {suffix}"
    redacted, found = redact_text(text)
    assert value not in redacted
    assert found[kind] >= 1
    assert PLACEHOLDERS[kind] in redacted
    assert redact_text(redacted)[0] == redacted


# --- pseudonymize -----------------------------------------------------------------------------


def test_pseudonym_format_and_determinism() -> None:
    first = pseudonymize("user-42", b"secret")
    assert re.fullmatch(r"p_[0-9a-f]{24}", first)
    assert pseudonymize("user-42", b"secret") == first
    assert pseudonymize("user-43", b"secret") != first
    assert pseudonymize("user-42", b"other") != first


def test_pseudonym_rejects_empty_or_text_key() -> None:
    with pytest.raises(ValueError, match="empty"):
        pseudonymize("user-42", b"")
    with pytest.raises(TypeError, match="bytes"):
        pseudonymize("user-42", "secret")  # type: ignore[arg-type]


@given(st.text(max_size=40), st.binary(min_size=1, max_size=32), st.binary(min_size=1, max_size=32))
def test_pseudonym_properties(user_id: str, key: bytes, other_key: bytes) -> None:
    pseudonym = pseudonymize(user_id, key)
    assert pseudonym == pseudonymize(user_id, key)
    assert pseudonym.startswith("p_") and len(pseudonym) == 26
    assert user_id not in pseudonym[2:] or len(user_id) < 3
    if other_key != key:
        assert pseudonymize(user_id, other_key) != pseudonym


def test_uuids_are_never_taken_for_phone_numbers():
    import random
    import uuid

    from loopline.pii import contains_pii

    generator = random.Random(0)
    flagged = [
        text for text in (str(uuid.UUID(int=generator.getrandbits(128))) for _ in range(50_000)) if contains_pii(text)
    ]
    assert flagged == []
    assert contains_pii("07685387-7876-4bee-8a3c-000000000000 or call 0171 2345678")
