"""Search queries, and the personal data (e-mail addresses, phone numbers) planted in some of them.

Ordinary queries are made of letters and spaces only (no digits, no ``@``), so any e-mail address or
phone number in the log is one the simulator planted and listed in its truth file.
"""

from __future__ import annotations

import random

import numpy as np

QUERY_NOUNS = {
    "electronics": ("headphones", "laptop", "usb charger", "smart watch", "bluetooth speaker", "webcam", "monitor"),
    "books": ("fantasy novel", "cookbook", "crime thriller", "history book", "poetry collection", "travel guide"),
    "fashion": ("rain jacket", "sneakers", "wool scarf", "summer dress", "leather belt", "denim jeans"),
    "home": ("desk lamp", "throw pillow", "coffee maker", "bath towels", "storage box", "wall clock"),
    "sports": ("yoga mat", "running shoes", "tennis racket", "water bottle", "cycling gloves", "dumbbells"),
    "beauty": ("face cream", "shampoo", "lip balm", "sunscreen", "hair dryer", "perfume"),
    "toys": ("building blocks", "puzzle", "plush bear", "board game", "toy car", "kite"),
    "grocery": ("green tea", "olive oil", "dark chocolate", "pasta", "coffee beans", "honey"),
    "garden": ("garden hose", "flower seeds", "pruning shears", "plant pot", "lawn chair", "bird feeder"),
    "automotive": ("car charger", "wiper blades", "seat covers", "tire inflator", "dash cam", "car wax"),
    "music": ("guitar strings", "vinyl record", "ukulele", "drum sticks", "microphone", "piano book"),
    "pets": ("dog leash", "cat litter", "pet bed", "chew toy", "bird seed", "aquarium filter"),
}
QUERY_MODIFIERS = ("", "", "", "cheap ", "best ", "wireless ", "organic ", "large ", "small ", "red ", "gift ")
QUERY_SUFFIXES = ("", "", "", " sale", " for kids", " set", " deal", " reviews", " near me", " free shipping")

FIRST_NAMES = (
    "anna",
    "ben",
    "carla",
    "david",
    "emma",
    "felix",
    "grace",
    "hugo",
    "ines",
    "jonas",
    "kate",
    "liam",
    "maria",
    "noah",
    "olga",
    "paul",
)
LAST_NAMES = (
    "smith",
    "mueller",
    "garcia",
    "rossi",
    "nowak",
    "dubois",
    "jensen",
    "silva",
    "kim",
    "novak",
    "brown",
    "schmidt",
    "martin",
    "weber",
)
EMAIL_DOMAINS = (
    "gmail.com",
    "yahoo.com",
    "outlook.com",
    "hotmail.co.uk",
    "web.de",
    "icloud.com",
    "proton.me",
    "gmx.net",
    "example.org",
    "mail.example.com",
)
EMAIL_FORMATS = (
    "{first}.{last}@{domain}",
    "{first}{last}{n2}@{domain}",
    "{f}{last}@{domain}",
    "{first}_{last}@{domain}",
    "{First}.{Last}@{domain}",
    "{first}+shop@{domain}",
    "{last}.{first}{n4}@{domain}",
)
PHONE_FORMATS = (
    "({a3}) {b3}-{c4}",
    "{a3}-{b3}-{c4}",
    "{a3}.{b3}.{c4}",
    "+1 {a3} {b3} {c4}",
    "+1-{a3}-{b3}-{c4}",
    "+44 20 {b4} {c4}",
    "07700 {b6}",
    "+49 30 {b8}",
    "0151 {b8}",
    "+33 6 {d2} {e2} {f2} {g2}",
)
PII_TEMPLATES = (
    "{query} {pii}",
    "{pii} {query}",
    "order status {pii}",
    "{query} contact {pii}",
    "call me at {pii} about {query}",
    "{query} - {pii}",
    "send receipt to {pii}",
)


def query_table(categories: tuple[str, ...], seed: int, per_category: int = 64) -> list[list[str]]:
    """A fixed list of ordinary queries per category (letters and spaces only)."""
    picker = random.Random(seed)
    table = []
    for category in categories:
        nouns = QUERY_NOUNS[category]
        table.append(
            [
                f"{picker.choice(QUERY_MODIFIERS)}{picker.choice(nouns)}{picker.choice(QUERY_SUFFIXES)}"
                for _ in range(per_category)
            ]
        )
    return table


def _digits(picker: random.Random, count: int) -> str:
    return "".join(picker.choice("0123456789") for _ in range(count))


def make_email(picker: random.Random) -> str:
    first, last = picker.choice(FIRST_NAMES), picker.choice(LAST_NAMES)
    return picker.choice(EMAIL_FORMATS).format(
        first=first,
        last=last,
        f=first[0],
        First=first.title(),
        Last=last.title(),
        domain=picker.choice(EMAIL_DOMAINS),
        n2=_digits(picker, 2),
        n4=_digits(picker, 4),
    )


def make_phone(picker: random.Random) -> str:
    return picker.choice(PHONE_FORMATS).format(
        a3=str(picker.randint(201, 989)),
        b3=str(picker.randint(200, 999)),
        c4=_digits(picker, 4),
        b4=_digits(picker, 4),
        b6=_digits(picker, 6),
        b8=str(picker.randint(1, 9)) + _digits(picker, 7),
        d2=_digits(picker, 2),
        e2=_digits(picker, 2),
        f2=_digits(picker, 2),
        g2=_digits(picker, 2),
    )


def plant_pii(query: str, picker: random.Random) -> tuple[str, list[tuple[str, str]]]:
    """Embed an e-mail address, a phone number, or (one time in ten) both into ``query``.

    Returns the new query and the planted ``(pii_type, value)`` pairs, in the order they appear.
    """
    roll = picker.random()
    planted: list[tuple[str, str]] = []
    if roll < 0.1:
        planted = [("email", make_email(picker)), ("phone", make_phone(picker))]
    elif roll < 0.55:
        planted = [("email", make_email(picker))]
    else:
        planted = [("phone", make_phone(picker))]
    text = " ".join(value for _, value in planted)
    return picker.choice(PII_TEMPLATES).format(query=query, pii=text), planted


def python_random(rng: np.random.Generator) -> random.Random:
    """A stdlib generator seeded from a numpy one (for the few per-line string choices)."""
    return random.Random(int(rng.integers(0, 2**63)))
