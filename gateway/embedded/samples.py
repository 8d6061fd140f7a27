"""Realistic raw events for any annotated Avro schema, from a seed (demo, produce-samples, tests, benchmarks).

One generator, on Faker, driven by the schema and its annotations (SchemaSamples); SampleEvents holds one
per schema for a seed. The values are synthetic. The canaries are known PII strings that must never show up in plain
text in any sanitized, dead-letter or audit record or in a log.
"""

from __future__ import annotations

import datetime
import functools
import random
import re
import struct
import uuid
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import fastavro
import orjson
from faker import Faker

from gateway.core.avro import PRIMITIVES, fullname, lookup
from gateway.core.codec.encoding import frame_confluent
from gateway.core.codec.raw import EventDecoder, SchemaFile, strip_logical_types
from gateway.core.codec.writer import avro_bytes, json_bytes
from gateway.errors import RejectedEvent

CANARIES = {
    "email": "canary.person@example.org",
    "card": "4111111111111111",
    "name": "Zebulon Canaryfield",
    "ip": "203.0.113.77",
    "patient": "Philippa Canarywood",
}

_CANARY_KINDS = frozenset({"email", "card", "name", "ip"})  # a canary event never leaves these null
_GROUP_POOL = 5  # distinct values of a field an aggregate groups by: groups fill and pass key selection
SHIPPED_SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"  # the example schemas of the checkout


class SampleEvents:
    """One seed's sample events for any number of schemas: one SchemaSamples per schema, made on first
    use. `payment()` and `clinical_visit()` are the shipped example schemas' (read from the checkout's
    `schemas/`), for the tests and benchmarks that publish them."""

    def __init__(self, seed: int = 7, subjects: int = 200) -> None:
        self.seed = seed
        self.subjects = subjects
        self._generators: dict[str, SchemaSamples] = {}

    def for_schema(self, schema: Mapping[str, Any]) -> SchemaSamples:
        """The generator of a raw Avro record schema (one per full name: a second call continues its stream)."""
        key = fullname(str(schema.get("name", "")), schema.get("namespace"))
        generator = self._generators.get(key)
        if generator is None or generator.schema != schema:
            generator = self._generators[key] = SchemaSamples(schema, seed=self.seed, subjects=self.subjects)
        return generator

    def shipped(self, file: str) -> SchemaSamples:
        return self.for_schema(_shipped_schema(file))

    def payment(self, canary: bool = False) -> dict[str, Any]:
        return self.shipped("payments.avsc").event(canary)

    def clinical_visit(self, canary: bool = False) -> dict[str, Any]:
        return self.shipped("clinical_visits.avsc").event(canary)


@functools.lru_cache(maxsize=8)
def _shipped_schema(file: str) -> Mapping[str, Any]:
    return orjson.loads((SHIPPED_SCHEMAS / file).read_bytes())


def broken_payment_events(valid: dict[str, Any], schema_id: int, encode_avro: Any) -> list[tuple[str, bytes]]:
    """(expected reason, bytes) for a corpus of broken payment events built from a valid record.

    `encode_avro(record) -> bytes` encodes with the raw Payment schema. Every entry carries the
    canaries, so tests can prove that rejected events never leak them either.
    """
    avro = encode_avro(valid)
    framed = frame_confluent(schema_id, avro)
    name = valid["customer_name"].encode()
    bad_utf8 = avro.replace(name, b"\xff\xfe" + name[2:], 1)
    without_card = {k: v for k, v in valid.items() if k != "card_number"}
    return [
        ("avro_truncated", framed[:-1]),  # the last byte is always needed: a cut mid-string can fail as UTF-8 first
        ("bad_magic_byte", b"\x07" + framed[1:]),
        ("unknown_schema_id", frame_confluent(999, avro)),
        ("avro_trailing_bytes", framed + b"\x00trailing" + valid["email"].encode()),
        ("invalid_utf8", frame_confluent(schema_id, bad_utf8)),
        ("json_invalid", b'{"event_id": "' + valid["email"].encode() + b'", '),
        ("json_invalid", orjson.dumps([valid["email"], valid["card_number"]])),
        ("wrong_type", orjson.dumps(dict(valid, amount_minor=valid["card_number"]))),
        ("missing_field", orjson.dumps(without_card)),
        ("invalid_utf8", b'{"email": "\xff\xfe' + valid["email"].encode() + b'"}'),
        ("field_too_large", orjson.dumps(dict(valid, customer_name=valid["customer_name"] + "x" * 70_000))),
        ("record_too_large", orjson.dumps(dict(valid, user_agent=valid["email"] * 48_000))),
        ("empty_value", b""),
    ]


# ---- the generator -----------------------------------------------------------------------------
# Every schema, the shipped ones too, gets SchemaSamples: values by Avro type and logical type,
# shaped by the field's name (an `email` holds an address, a `country` two letters, a `pickup_at` a
# timestamp) and by its annotations (the subject from a pool, a field an aggregate groups by from a
# few values), from a seed, and always valid for the schema.

BASE_TIME_MS = 1_790_000_000_000  # the generators' epoch: seeded events do not depend on the clock
_COMPLEX = frozenset({"record", "error", "enum", "array", "map", "fixed"})
_INT_MAX = 2**31 - 1
_NULL_SHARE = 0.2  # nullable fields hold null this often (never the subject or the event id)
_PERSON_ROLES = frozenset({"user", "customer", "client", "driver", "rider", "passenger", "patient", "member",
                           "account", "employee", "person", "subject", "owner", "buyer", "seller", "student",
                           "guest", "player", "author", "contact", "recipient", "sender", "courier", "agent"})
_EVENT_IDS = frozenset({"event", "message", "msg", "request", "ride", "trip", "order", "transaction", "txn",
                        "payment", "booking", "visit", "session", "correlation", "trace", "span", "invoice",
                        "shipment", "delivery", "job", "run", "record"})
_ORGANIZATIONS = frozenset({"company", "merchant", "employer", "organization", "organisation", "business",
                            "vendor", "store", "shop", "brand", "supplier", "bank", "insurer", "carrier"})
_TIME_WORDS = frozenset({"ts", "timestamp", "time", "datetime", "created", "updated", "occurred", "modified",
                         "deleted", "started", "ended", "received", "sent", "expires", "when", "at"})
_TEXT_WORDS = frozenset({"note", "notes", "comment", "comments", "description", "text", "message", "body",
                         "remarks", "summary", "reason", "memo", "feedback", "review", "details", "content"})
_STATUSES = ("active", "pending", "completed", "cancelled", "failed")
_WORD_SPLIT = re.compile(r"[^0-9a-zA-Z]+|(?<=[a-z0-9])(?=[A-Z])")


def _words(name: str) -> list[str]:
    """`driverEmail`, `driver_email`, `driver-email` -> ["driver", "email"]."""
    return [w.lower() for w in _WORD_SPLIT.split(name) if w]


@functools.lru_cache(maxsize=4096)
def field_kind(name: str) -> str | None:
    """What a field's name says it holds (`email`, `phone`, `lat`, `amount`, `id`, `timestamp`, ...),
    or None when the name says nothing; the first matching rule wins."""
    words = _words(name)
    w, joined = set(words), "".join(words)
    last = words[-1] if words else ""
    rules: list[tuple[str, bool]] = [
        ("email", "email" in joined or "mail" in w),
        ("phone", bool(w & {"phone", "mobile", "tel", "telephone", "msisdn", "cell", "fax"})),
        ("ipv6", "ipv6" in w),
        ("ip", bool(w & {"ip", "ipv4"}) or "ipaddress" in joined or "ipaddr" in joined),
        ("iban", "iban" in w),
        ("swift", bool(w & {"bic", "swift"})),
        ("expiry", bool(w & {"expiry", "expiration", "exp"})),
        ("cvv", bool(w & {"cvv", "cvc", "cvv2", "csc"})),
        ("card_brand", ("card" in w or "cc" in w) and bool(w & {"type", "brand", "network", "provider", "scheme"})),
        ("name", "card" in w and "holder" in w or "cardholder" in joined),
        ("card", bool(w & {"card", "pan", "cc", "ccnumber", "creditcard"}) or "cardnumber" in joined),
        ("ssn", "ssn" in w or "socialsecurity" in joined),
        ("uuid", bool(w & {"uuid", "guid"})),
        ("lat", bool(w & {"lat", "latitude"})),
        ("lon", bool(w & {"lon", "lng", "long", "longitude"})),
        ("postal", bool(w & {"postal", "zip", "postcode", "zipcode"}) or "postalcode" in joined),
        ("country", "country" in w),
        ("city", bool(w & {"city", "town"})),
        ("state", bool(w & {"state", "province"}) and last != "status"),
        ("region", "region" in w),
        ("street", bool(w & {"street", "address", "addr"})),
        ("currency", "currency" in w),
        ("url", bool(w & {"url", "uri", "website", "link", "homepage"})),
        ("domain", bool(w & {"domain", "host", "hostname"})),
        ("user_agent", "agent" in w and ("user" in w or "browser" in w) or joined == "ua"),
        ("mac", "mac" in w),
        ("password", bool(w & {"password", "passwd", "pwd", "secret"})),
        ("username", bool(w & {"username", "login", "handle", "nickname"}) or joined == "username"),
        ("first_name", bool(w & {"first", "given", "firstname", "forename"}) and ("name" in w or last != "name")),
        ("last_name", bool(w & {"surname", "lastname", "family"}) or "last" in w and "name" in w),
        ("company", bool(w & _ORGANIZATIONS) and ("name" in w or last in _ORGANIZATIONS)),
        ("file_name", "file" in w and "name" in w or "filename" in w),
        ("name", bool(w & {"name", "fullname"})),
        ("birth_date", bool(w & {"dob", "birth", "birthday", "birthdate"})),
        ("plate", bool(w & {"plate", "license", "licence"})),
        ("vin", "vin" in w),
        ("gender", bool(w & {"gender", "sex"})),
        ("language", bool(w & {"lang", "language", "locale"})),
        ("color", bool(w & {"color", "colour"})),
        ("status", "status" in w),
        ("amount", bool(w & {"amount", "price", "total", "fare", "cost", "balance", "fee", "tip", "subtotal",
                             "tax", "revenue", "salary", "charge", "minor", "cents"})),
        ("age", "age" in w),
        ("count", bool(w & {"count", "qty", "quantity", "items", "passengers", "seats"})),
        ("rating", bool(w & {"rating", "score", "stars"})),
        ("distance", bool(w & {"distance", "km", "miles", "meters", "mileage"})),
        ("duration", bool(w & {"duration", "seconds", "secs", "minutes", "elapsed", "latency", "ms"})),
        ("percent", bool(w & {"percent", "pct", "percentage", "ratio"})),
        ("job", bool(w & {"job", "occupation", "title", "position"})),
        ("text", bool(w & _TEXT_WORDS)),
        ("timestamp", bool(w & _TIME_WORDS) or last in ("at", "on")),
        ("date", bool(w & {"date", "day"})),
        ("year", "year" in w),
        ("code", last in ("code", "codes")),
        ("id", last in ("id", "ids", "identifier", "key", "ref", "reference", "number", "no", "code")),
    ]
    return next((kind for kind, matched in rules if matched), None)


def _letters(draw: Callable[[], str]) -> str:
    """A name of letters only (drawn again until it is): e-mail addresses are built from it."""
    while not (name := draw()).isalpha() or not name.isascii():
        pass
    return name


class SchemaSamples:
    """Realistic raw events for any Avro record schema, from a seed.

    Values follow the Avro type and logical type (records, arrays, maps, unions, enums, fixed,
    bytes, date, time and timestamp millis/micros, uuid, decimal) and the field's name
    (`field_kind`), in the base types the gateway decodes to: a timestamp is a long, a date an int
    of days, a decimal its two's-complement bytes. The record's `privacy.subject` is never null
    and comes from a pool of `subjects` identities, so tokens and per-subject keys repeat the way
    they do in production; timestamps in one event increase in field order (a `pickup_at` before a
    `dropoff_at`). `event(canary=True)` puts CANARIES into the email, card, name and IP fields.
    """

    def __init__(self, schema: Mapping[str, Any], seed: int = 7, subjects: int = 200,
                 base_time_ms: int = BASE_TIME_MS) -> None:
        if not isinstance(schema, Mapping) or schema.get("type") != "record":
            raise ValueError("SchemaSamples needs an Avro record schema")
        self.schema = schema
        self.subjects = subjects
        self.base_time_ms = base_time_ms
        mixed = seed ^ zlib.crc32(str(schema.get("name", "")).encode())
        self.rng = random.Random(mixed)
        self.fake = Faker("en_US")
        self.fake.seed_instance(mixed)
        privacy = schema.get("privacy") if isinstance(schema.get("privacy"), Mapping) else {}
        self.subject_field: str | None = privacy.get("subject")
        self.event_id_field: str | None = privacy.get("event_id") or (
            "event_id" if any(f.get("name") == "event_id" for f in schema.get("fields", [])) else None)
        people = Faker("en_US")  # the pool of data subjects: its own stream, the same for any field order
        people.seed_instance(mixed + 1)
        self._people = [(_letters(people.first_name), _letters(people.last_name)) for _ in range(subjects)]
        self.group_fields = frozenset(
            str(g) for a in privacy.get("aggregates") or [] if isinstance(a, Mapping) for g in a.get("group_by") or [])
        self._group_pools: dict[str, list[Any]] = {}
        rng, fake = self.rng, self.fake  # the kinds that are one call each, bound once
        self._simple: dict[str, Callable[[], str]] = {
            "uuid": lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "iban": fake.iban, "swift": fake.swift, "expiry": fake.credit_card_expire,
            "cvv": fake.credit_card_security_code, "card_brand": lambda: rng.choice(["VISA", "MASTERCARD", "AMEX"]),
            "ssn": fake.ssn, "postal": fake.postcode, "country": fake.country_code, "city": fake.city,
            "state": fake.state_abbr, "region": lambda: rng.choice(["north", "south", "east", "west"]),
            "street": fake.street_address, "currency": lambda: rng.choice(["EUR", "USD", "GBP", "JPY", "CHF"]),
            "url": fake.url, "domain": fake.domain_name, "user_agent": fake.user_agent, "mac": fake.mac_address,
            "password": lambda: fake.password(length=16), "username": fake.user_name,
            "first_name": fake.first_name, "last_name": fake.last_name, "company": fake.company,
            "file_name": fake.file_name, "plate": fake.license_plate, "vin": fake.vin,
            "gender": lambda: rng.choice(["female", "male", "non-binary", "unknown"]),
            "language": lambda: rng.choice(["en", "de", "fr", "es", "pt", "ja"]), "color": fake.color_name,
            "status": lambda: rng.choice(_STATUSES), "job": fake.job, "text": fake.sentence,
            "code": lambda: fake.bothify("?##.#").upper(),
        }
        self._named: dict[str, Mapping[str, Any]] = {}
        self._register(schema, None)
        self._canary = False
        self._clock = base_time_ms

    # -- public
    def event(self, canary: bool = False) -> dict[str, Any]:
        self._canary = canary
        self._clock = self.base_time_ms + self.rng.randint(0, 86_400_000)
        namespace = fullname(str(self.schema["name"]), self.schema.get("namespace")).rpartition(".")[0]
        return self._record(self.schema, namespace or None, depth=0, top=True)

    __call__ = event

    # -- types
    def _register(self, schema: Any, namespace: str | None) -> None:
        """Every named type the schema defines, by full name (references may come before use in a
        branch this generator skips)."""
        if isinstance(schema, list):
            for branch in schema:
                self._register(branch, namespace)
            return
        if not isinstance(schema, Mapping):
            return
        if schema.get("type") in ("record", "error", "enum", "fixed"):
            full = fullname(str(schema["name"]), schema.get("namespace") or namespace)
            self._named.setdefault(full, schema)
            namespace = full.rpartition(".")[0] or None
        for key in ("type", "items", "values"):
            if key in schema and not isinstance(schema[key], str):
                self._register(schema[key], namespace)
        for f in schema.get("fields", []):
            self._register(f.get("type"), namespace)

    def _resolve(self, schema: Any, namespace: str | None) -> tuple[Any, str | None]:
        """(definition, its namespace) for a type, named references looked up."""
        if isinstance(schema, str) and schema not in PRIMITIVES:
            found = lookup(schema, self._named, namespace)
            if found is None:
                raise ValueError(f"unknown Avro type '{schema}'")
            schema = found
        if isinstance(schema, Mapping) and schema.get("type") in ("record", "error", "enum", "fixed"):
            full = fullname(str(schema["name"]), schema.get("namespace") or namespace)
            namespace = full.rpartition(".")[0] or None
        return schema, namespace

    def _value(self, schema: Any, namespace: str | None, name: str, kind: str | None, depth: int,
               required: bool = False, hints: Mapping[str, str] | None = None) -> Any:
        schema, namespace = self._resolve(schema, namespace)
        if isinstance(schema, list):
            others = [b for b in schema if b != "null"]
            if not others or ("null" in schema and not required
                              and (depth > 6 or self.rng.random() < _NULL_SHARE)):
                return None
            return self._value(self.rng.choice(others), namespace, name, kind, depth, required, hints)
        if isinstance(schema, str):
            return self._primitive(schema, None, {}, name, kind)
        avro_type = schema["type"]
        if not isinstance(avro_type, str) or avro_type not in PRIMITIVES | _COMPLEX:
            return self._value(avro_type, namespace, name, kind, depth, required, hints)  # {"type": {...}}
        if avro_type in ("record", "error"):
            return self._record(schema, namespace, depth + 1, hints=hints)
        if avro_type == "enum":
            return self.rng.choice(list(schema["symbols"]))
        if avro_type == "array":
            count = 0 if depth > 6 else self.rng.randint(0, 3)
            return [self._value(schema["items"], namespace, name, kind, depth + 1, hints=hints)
                    for _ in range(count)]
        if avro_type == "map":
            count = 0 if depth > 6 else self.rng.randint(1, 3)
            return {self.fake.word(): self._value(schema["values"], namespace, name, kind, depth + 1, hints=hints)
                    for _ in range(count)}
        if avro_type == "fixed":
            return self._fixed(schema, kind)
        return self._primitive(avro_type, schema.get("logicalType"), schema, name, kind)

    def _record(self, schema: Mapping[str, Any], namespace: str | None, depth: int, top: bool = False,
                hints: Mapping[str, str] | None = None) -> dict[str, Any]:
        """A record; `hints` override the kind of some of its fields (a geohash'd point's lat/lon)."""
        out: dict[str, Any] = {}
        for f in schema["fields"]:
            fname, privacy = f["name"], f.get("privacy")
            kind = (hints or {}).get(fname) or field_kind(fname)
            inner: dict[str, str] | None = None
            if isinstance(privacy, Mapping):
                if "redact" in privacy:
                    kind = "redact_text"
                options = privacy.get("generalize")
                if isinstance(options, Mapping) and "geohash" in options:
                    inner = {str(options.get("lat", "lat")): "lat", str(options.get("lon", "lon")): "lon"}
            required = top and fname in (self.subject_field, self.event_id_field) or (
                self._canary and kind in _CANARY_KINDS)
            if top and fname == self.event_id_field and kind in (None, "id"):
                kind = "uuid"
            if top and fname == self.subject_field:
                kind = f"subject:{kind or 'id'}"
            if top and fname in self.group_fields and fname != self.subject_field:
                pool = self._group_pools.get(fname)
                if pool is None:  # a few values drawn once: every group gets events (the canary's too)
                    pool = self._group_pools[fname] = [self._value(f["type"], namespace, fname, kind, depth,
                                                                   required, inner) for _ in range(_GROUP_POOL)]
                out[fname] = self.rng.choice(pool)
                continue
            out[fname] = self._value(f["type"], namespace, fname, kind, depth, required, inner)
        return out

    def _fixed(self, schema: Mapping[str, Any], kind: str | None) -> bytes:
        size = int(schema["size"])
        logical = schema.get("logicalType")
        if logical == "decimal":
            return self._decimal(schema, size)
        if logical == "duration" and size == 12:
            return struct.pack("<III", self.rng.randint(0, 12), self.rng.randint(0, 30),
                               self.rng.randint(0, 86_400_000))
        if kind == "uuid" and size == 16:
            return uuid.UUID(int=self.rng.getrandbits(128), version=4).bytes
        return self.rng.randbytes(size)

    def _decimal(self, schema: Mapping[str, Any], size: int | None = None) -> bytes:
        precision, scale = int(schema.get("precision", 10)), int(schema.get("scale", 0))
        high = min(10**precision - 1, 100_000 * 10**scale)
        if size is not None:
            high = min(high, 2 ** (8 * size - 1) - 1)
        unscaled = self.rng.randint(0, high)
        length = size if size is not None else max(1, (unscaled.bit_length() + 8) // 8)
        return unscaled.to_bytes(length, "big", signed=True)

    # -- primitives
    def _tick(self) -> int:
        """The event's clock in ms: each timestamp field a little later than the one before."""
        now = self._clock
        self._clock += self.rng.randint(60_000, 1_800_000)
        return now

    def _days(self, kind: str | None) -> int:
        today = self.base_time_ms // 86_400_000
        if kind == "birth_date":
            return today - self.rng.randint(18 * 365, 90 * 365)
        return self._clock // 86_400_000 - self.rng.randint(0, 365)

    def _primitive(self, avro_type: str, logical: str | None, schema: Mapping[str, Any], name: str,
                   kind: str | None) -> Any:
        rng = self.rng
        if avro_type == "null":
            return None
        if avro_type == "boolean":
            return rng.random() < 0.5
        if avro_type == "bytes":
            if logical == "decimal":
                return self._decimal(schema)
            return rng.randbytes(16 if kind == "uuid" else 32)
        if avro_type == "string":
            if logical == "uuid":
                return str(uuid.UUID(int=rng.getrandbits(128), version=4))
            return self._string(kind, name)
        if logical in ("timestamp-millis", "local-timestamp-millis"):
            return self._tick()
        if logical in ("timestamp-micros", "local-timestamp-micros"):
            return self._tick() * 1000 + rng.randint(0, 999)
        if logical in ("timestamp-nanos", "local-timestamp-nanos"):
            return self._tick() * 1_000_000 + rng.randint(0, 999_999)
        if logical == "date":
            return self._days(kind)
        if logical == "time-millis":
            return rng.randint(0, 86_399_999)
        if logical == "time-micros":
            return rng.randint(0, 86_399_999_999)
        if avro_type in ("int", "long"):
            return self._integer(kind.partition(":")[2] or "id" if kind and kind.startswith("subject:") else kind,
                                 avro_type == "long")
        return self._number(kind)  # float, double

    def _integer(self, kind: str | None, long: bool) -> int:
        rng = self.rng
        if kind == "id":
            return rng.randint(1, self.subjects)
        if kind == "timestamp":
            return self._tick() if long else self._tick() // 1000
        if kind in ("date", "birth_date"):
            return self._days(kind)
        ranges = {"amount": (100, 250_000), "age": (18, 90), "count": (1, 6), "rating": (1, 5),
                  "distance": (1, 40), "duration": (30, 3600), "percent": (0, 100), "year": (1950, 2026),
                  "lat": (-90, 90), "lon": (-180, 180), "postal": (10000, 99999)}
        low, high = ranges.get(kind or "", (0, 1_000_000 if long else 1000))
        return min(rng.randint(low, high), _INT_MAX)

    def _number(self, kind: str | None) -> float:
        rng = self.rng
        ranges = {"lat": (-90.0, 90.0, 6), "lon": (-180.0, 180.0, 6), "amount": (1.0, 500.0, 2),
                  "percent": (0.0, 100.0, 2), "rating": (1.0, 5.0, 1), "distance": (0.5, 40.0, 2),
                  "duration": (1.0, 3600.0, 1), "age": (18.0, 90.0, 1)}
        low, high, digits = ranges.get(kind or "", (0.0, 1000.0, 3))
        return round(rng.uniform(low, high), digits)

    def _person(self, index: int | None = None) -> tuple[str, str, int]:
        n = self.rng.randint(1, self.subjects) if index is None else index
        first, last = self._people[n - 1]
        return first, last, n

    def _string(self, kind: str | None, name: str) -> str:
        rng, fake, canary = self.rng, self.fake, self._canary
        if kind is not None and kind.startswith("subject:"):  # the data subject: one of a pool
            first, last, n = self._person()
            inner = kind.partition(":")[2]
            if inner == "email":
                return f"{first}.{last}{n}@example.com".lower()
            if inner == "name":
                return f"{first} {last}"
            if inner == "phone":
                return f"+1-202-555-{n % 10_000:04d}"
            role = next((w for w in _words(name)[:-1] if w), "subject")
            return f"{role}-{n:05d}"
        if kind == "email":
            if canary:
                return CANARIES["email"]
            first, last, n = self._person()
            return f"{first}.{last}{rng.randint(1, 99)}@example.com".lower()
        if kind == "phone":
            return f"+1-{rng.randint(201, 989)}-555-01{rng.randint(0, 99):02d}"
        if kind == "ip":
            return CANARIES["ip"] if canary else fake.ipv4_public()
        if kind == "ipv6":
            return fake.ipv6()
        if kind == "card":
            return CANARIES["card"] if canary else fake.credit_card_number(card_type="visa16")
        if kind == "name":
            if canary:
                return CANARIES["patient"] if "patient" in _words(name) else CANARIES["name"]
            first, last, _ = self._person()
            return f"{first} {last}"
        if kind == "redact_text":
            email = CANARIES["email"] if canary else fake.safe_email()
            return f"{fake.sentence()} Reach me at {email} or +1-202-555-01{rng.randint(10, 99)}."
        if kind == "id":
            words = _words(name)
            role = "-".join(words[:-1]) or "id"
            if set(words[:-1]) & _EVENT_IDS or not words[:-1]:
                return str(uuid.UUID(int=rng.getrandbits(128), version=4))
            if set(words[:-1]) & _PERSON_ROLES:
                return f"{role}-{rng.randint(1, self.subjects):05d}"
            return f"{role}-{rng.randint(1, 500):04d}"
        if kind == "timestamp":  # a string timestamp: ISO 8601 in UTC
            ms = self._tick()
            return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(timespec="milliseconds")
        if kind in ("date", "birth_date"):
            return (datetime.date(1970, 1, 1) + datetime.timedelta(days=self._days(kind))).isoformat()
        if kind in ("amount", "lat", "lon", "percent", "rating", "distance", "duration"):
            return f"{self._number(kind)}"
        if kind in ("age", "count", "year"):
            return str(self._integer(kind, long=False))
        return self._simple.get(kind or "", fake.word)()


def json_encodable(schema: Any) -> bool:
    """Whether events of `schema` survive the gateway's JSON input (no bytes or fixed anywhere:
    JSON has no bytes, and the gateway reads JSON strings as strings)."""
    if isinstance(schema, list):
        return all(json_encodable(s) for s in schema)
    if isinstance(schema, Mapping):
        if schema.get("type") in ("fixed", "bytes"):
            return False
        return all(json_encodable(schema[k]) for k in ("type", "items", "values") if k in schema) and all(
            json_encodable(f.get("type")) for f in schema.get("fields", []) if isinstance(f, Mapping))
    return schema not in ("bytes",)


def sample_maker(schema: SchemaFile, samples: SampleEvents) -> Callable[..., dict[str, Any]]:
    """The generator of a schema's events for `samples`' seed: `make(canary=False) -> record`."""
    return samples.for_schema(schema.raw).event


def _top_fields(schema: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(name, non-null type, annotation) of each top-level field."""
    out = []
    for f in schema.get("fields", []):
        avro_type = f.get("type")
        if isinstance(avro_type, list):
            others = [t for t in avro_type if t != "null"]
            avro_type = others[0] if len(others) == 1 else avro_type
        if isinstance(avro_type, Mapping) and isinstance(avro_type.get("type"), str) and len(avro_type) == 1:
            avro_type = avro_type["type"]
        out.append((f["name"], avro_type, f.get("privacy")))
    return out


def broken_events(valid: dict[str, Any], schema: SchemaFile, schema_id: int | None, input_mode: str = "auto",
                  max_record_bytes: int = 1_048_576) -> list[tuple[str, bytes]]:
    """(expected reason, bytes) for a corpus of broken events of any schema, built from a valid one.

    The same reasons as broken_payment_events where the schema allows them: the Confluent-framed
    ones need a schema id, the field-level ones a top-level string field. Every entry is checked
    against the gateway's decoder for `input_mode`, so an entry that would decode (or fail for
    another reason) for this schema is left out rather than mislabelled."""
    parsed = fastavro.parse_schema(strip_logical_types(schema.raw))
    avro = avro_bytes(parsed, valid)
    framed = frame_confluent(schema_id, avro) if schema_id is not None else None
    whole = framed if framed is not None else avro
    fields = _top_fields(schema.raw)
    strings = [name for name, t, _p in fields if t == "string" and isinstance(valid.get(name), str)]
    checked = [name for name, t, p in fields if t == "string" and isinstance(valid.get(name), str)
               and p not in (None, "drop")]
    text = next((valid[n] for n in strings if len(valid[n]) >= 3), "canary.person@example.org")
    required = [f["name"] for f in schema.raw.get("fields", []) if "default" not in f]
    decoder_level: list[tuple[str, bytes]] = [
        ("avro_truncated", whole[: len(whole) // 2]),
        ("avro_trailing_bytes", whole + b"\x00trailing" + text.encode()),
        ("json_invalid", b'{"' + fields[0][0].encode() + b'": "' + text.encode() + b'", '),
        ("json_invalid", orjson.dumps([valid[n] for n in strings[:2]] or [text])),
        ("invalid_utf8", b'{"' + fields[0][0].encode() + b'": "\xff\xfe' + text.encode() + b'"}'),
        ("record_too_large", orjson.dumps({fields[0][0]: text * (max_record_bytes // len(text) + 1)})),
        ("empty_value", b""),
    ]
    if framed is not None:
        decoder_level += [("bad_magic_byte", b"\x07" + framed[1:]),
                          ("unknown_schema_id", frame_confluent(999 if schema_id != 999 else 998, avro))]
    for name in strings:
        value = valid[name].encode()
        if len(value) >= 3 and avro.count(value) == 1:
            corrupt = avro.replace(value, b"\xff\xfe" + value[2:], 1)
            decoder_level.append(("invalid_utf8", frame_confluent(schema_id, corrupt) if schema_id is not None
                                  else corrupt))
            break
    if fields:
        name, avro_type, _ = fields[0]
        decoder_level.append(("wrong_type", json_bytes(dict(valid, **{name: 12345 if avro_type == "string"
                                                                        else text}))))
    if required:
        decoder_level.append(("missing_field", json_bytes({k: v for k, v in valid.items() if k != required[0]})))
    decoder = EventDecoder(schema, input_mode, schema_id, max_record_bytes)
    out: list[tuple[str, bytes]] = []
    for reason, value in decoder_level:
        try:
            decoder.decode(value)
        except RejectedEvent as exc:
            if exc.reason == reason:
                out.append((reason, value))
    if checked:  # decodes, and the worker refuses the oversized field (max_field_bytes, default 64 KiB)
        big = avro_bytes(parsed, dict(valid, **{checked[0]: valid[checked[0]] + "x" * 70_000}))
        value = frame_confluent(schema_id, big) if schema_id is not None else big
        try:
            decoder.decode(value)
            out.append(("field_too_large", value))
        except RejectedEvent:
            pass
    return out
