"""Realistic raw events for the example schemas, from a fixed seed (demo, tests, benchmarks).

The values are synthetic. The canaries are known PII strings that must never show up in plain
text in any sanitized, dead-letter or audit record or in a log.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

CANARIES = {
    "email": "canary.person@example.org",
    "card": "4111111111111111",
    "name": "Zebulon Canaryfield",
    "ip": "203.0.113.77",
    "patient": "Philippa Canarywood",
}

_FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Leslie"]
_LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman"]
_CITIES = [("Berlin", "DE"), ("Paris", "FR"), ("Lisbon", "PT"), ("Dublin", "IE"), ("Austin", "US")]
_CATEGORIES = ["grocery", "travel", "electronics", "pharmacy", "books"]
_ICD10 = ["E11.9", "I10", "J45.909", "M54.5", "F41.1", "K21.9"]
_PROCEDURES = ["99213", "80053", "93000", "36415", "71046"]


class SampleEvents:
    def __init__(self, seed: int = 7, subjects: int = 200) -> None:
        self.rng = random.Random(seed)
        self.subjects = subjects

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _person(self) -> tuple[str, str]:
        first, last = self.rng.choice(_FIRST), self.rng.choice(_LAST)
        return f"{first} {last}", f"{first}.{last}{self.rng.randint(1, 99)}@example.com".lower()

    def payment(self, canary: bool = False) -> dict[str, Any]:
        name, email = self._person()
        city, country = self.rng.choice(_CITIES)
        card = "4" + "".join(str(self.rng.randint(0, 9)) for _ in range(15))
        return {
            "event_id": self._uuid(),
            "occurred_at": 1_790_000_000_000 + self.rng.randint(0, 86_400_000),
            "user_id": f"user-{self.rng.randint(1, self.subjects):05d}",
            "email": CANARIES["email"] if canary else email,
            "customer_name": CANARIES["name"] if canary else name,
            "card_number": CANARIES["card"] if canary else card,
            "card_expiry": (None if self.rng.random() < 0.2
                            else f"{self.rng.randint(1, 12):02d}/2{self.rng.randint(7, 9)}"),
            "ip_address": CANARIES["ip"] if canary else f"198.51.100.{self.rng.randint(1, 254)}",
            "user_agent": ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                           "Chrome/126.0 Safari/537.36"),
            "amount_minor": self.rng.randint(100, 250_000),
            "currency": self.rng.choice(["EUR", "USD", "GBP"]),
            "country": country,
            "billing_address": {"street": f"{self.rng.randint(1, 200)} Example Street", "postal_code":
                                f"{self.rng.randint(10000, 99999)}", "city": city, "country": country},
            "merchant": {"merchant_id": f"m-{self.rng.randint(1, 500):04d}",
                         "category": self.rng.choice(_CATEGORIES)},
        }

    def clinical_visit(self, canary: bool = False) -> dict[str, Any]:
        name, email = self._person()
        return {
            "visit_id": self._uuid(),
            "visit_time": 1_790_000_000_000 + self.rng.randint(0, 86_400_000),
            "patient_id": f"patient-{self.rng.randint(1, self.subjects):05d}",
            "patient_name": CANARIES["patient"] if canary else name,
            "email": CANARIES["email"] if canary else (email if self.rng.random() < 0.7 else None),
            "phone": f"+1-555-01{self.rng.randint(10, 99)}",
            "date_of_birth": self.rng.randint(-15_000, 18_000),
            "diagnosis_codes": self.rng.sample(_ICD10, self.rng.randint(1, 3)),
            "procedures": [{"code": self.rng.choice(_PROCEDURES),
                            "notes": None if self.rng.random() < 0.5 else "patient tolerated well"}
                           for _ in range(self.rng.randint(0, 2))],
            "clinic": {"clinic_id": f"c-{self.rng.randint(1, 40):03d}", "region": self.rng.choice(["north", "south"]),
                       "postal_code": f"{self.rng.randint(10000, 99999)}"},
            "location": None if self.rng.random() < 0.3 else {"lat": round(self.rng.uniform(40, 55), 5),
                                                              "lon": round(self.rng.uniform(-5, 20), 5)},
            "severity": self.rng.choice(["ROUTINE", "ROUTINE", "URGENT", "EMERGENCY"]),
            "insurer_member_id": f"INS{self.rng.randint(100000, 999999)}",
        }


def broken_payment_events(valid: dict[str, Any], schema_id: int, encode_avro: Any) -> list[tuple[str, bytes]]:
    """(expected reason, bytes) for a corpus of broken payment events built from a valid record.

    `encode_avro(record) -> bytes` encodes with the raw Payment schema. Every entry carries the
    canaries, so tests can prove that rejected events never leak them either.
    """
    import struct

    import orjson

    avro = encode_avro(valid)
    framed = b"\x00" + struct.pack(">I", schema_id) + avro
    name = valid["customer_name"].encode()
    bad_utf8 = avro.replace(name, b"\xff\xfe" + name[2:], 1)
    without_card = {k: v for k, v in valid.items() if k != "card_number"}
    return [
        ("avro_truncated", framed[: len(framed) // 2]),
        ("bad_magic_byte", b"\x07" + framed[1:]),
        ("unknown_schema_id", b"\x00" + struct.pack(">I", 999) + avro),
        ("avro_trailing_bytes", framed + b"\x00trailing" + valid["email"].encode()),
        ("invalid_utf8", b"\x00" + struct.pack(">I", schema_id) + bad_utf8),
        ("json_invalid", b'{"event_id": "' + valid["email"].encode() + b'", '),
        ("json_invalid", orjson.dumps([valid["email"], valid["card_number"]])),
        ("wrong_type", orjson.dumps(dict(valid, amount_minor=valid["card_number"]))),
        ("missing_field", orjson.dumps(without_card)),
        ("invalid_utf8", b'{"email": "\xff\xfe' + valid["email"].encode() + b'"}'),
        ("field_too_large", orjson.dumps(dict(valid, customer_name=valid["customer_name"] + "x" * 70_000))),
        ("record_too_large", orjson.dumps(dict(valid, user_agent=valid["email"] * 48_000))),
        ("empty_value", b""),
    ]
