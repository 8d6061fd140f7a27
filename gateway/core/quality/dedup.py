"""Duplicate event ids within a horizon, in bounded memory, restorable from a log (pure: no Kafka here).

The filter holds keyed 64-bit fingerprints, never ids: the log it is restored from carries no
identifiers, and without the key a fingerprint cannot be tested against a guessed id. Each committed
batch writes one log record per source partition, keyed `topic/partition/first_offset` and valued
`pack(timestamp_ms, fingerprints)`. A worker restores the log at start and then follows it, so it
sees its own and the other workers' committed batches; its own batch in flight is *tentative* until
its record comes back through the log (confirmed) or its transaction aborts (dropped).

False positives: a new distinct id is reported as a duplicate when its fingerprint equals one of the
n held, with probability about n / 2**64 per event (1e6 held: ~5e-14; 1e8 held: ~5e-12).

Memory: ~70 to ~120 bytes per held fingerprint, so 1e6 of them take ~70-120 MB (CPython 3.11,
tracemalloc over filters of 5e4 to 2e6 fingerprints in 16 buckets: a 36-byte int object, plus a
16-byte set slot at a load between ~15% and 60% depending on where each bucket's set is between two
resizes; pymalloc's rounding of the int to 48 bytes comes on top). `max_ids` is the bound: past it the oldest committed
buckets are evicted whole and counted in `evicted`.

Restore: call `expire(now)` before applying the log, so records older than the horizon are skipped
instead of held and then evicted (which would count them in `evicted`).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable
from typing import Any

from gateway.core.quality.codegen import FunctionSource

FINGERPRINT_BYTES = 8
_DOMAIN = b"gateway-quality-dedup-v1"
_STAMP = struct.Struct(">q")
Source = tuple[str, int]  # (topic, partition)


def fingerprint_key(secret: bytes) -> bytes:
    """A key for fingerprints only: derived with a domain label, so no other use of `secret`
    (tokens, wrapping) ever computes the same MACs."""
    return hmac.digest(secret, _DOMAIN, hashlib.sha256)


def _encode_id(event_id: Any) -> bytes:
    """Tagged by type, so the string "1", the int 1 and the bytes b"1" are three different ids."""
    if isinstance(event_id, str):
        return b"s" + event_id.encode("utf-8", "surrogatepass")
    if isinstance(event_id, bool):  # bool is an int subclass: True would otherwise be the id 1
        raise TypeError("an event id is a str, int or bytes, not a bool")
    if isinstance(event_id, int):
        return b"i" + str(event_id).encode("ascii")
    if isinstance(event_id, bytes | bytearray | memoryview):
        return b"b" + bytes(event_id)
    raise TypeError(f"an event id is a str, int or bytes, not {type(event_id).__name__}")


def fingerprint(key: bytes, schema: str, event_id: Any) -> int:
    """64-bit keyed fingerprint (keyed BLAKE2b, RFC 7693's MAC mode, with an 8-byte digest) over an
    unambiguous encoding of schema and the event id: str, int or bytes, typed so "1" and 1 differ.
    Never the id itself: the log holds no identifiers. (BLAKE2b rather than HMAC-SHA256: one pass,
    about a third of the cost per event, and a PRF under its key all the same.)"""
    return Fingerprinter(key, schema).of(event_id)


class Fingerprinter:
    """`fingerprint` for one schema, per event: BLAKE2b states with the key, the schema prefix and (for a
    str id, the common case) the type tag already absorbed, copied per event. The same bytes reach the hash
    as in one call over the whole message, so the fingerprints (and the dedup log) are unchanged; the copy
    skips the key block's compression and the message's concatenation."""

    __slots__ = ("_any", "_str")

    def __init__(self, key: bytes, schema: str) -> None:
        name = schema.encode("utf-8")
        # the schema is length-prefixed and the id comes last, so no two (schema, id) pairs share an encoding
        self._any = hashlib.blake2b(len(name).to_bytes(4, "big") + name, key=key, digest_size=FINGERPRINT_BYTES)
        self._str = self._any.copy()
        self._str.update(b"s")

    def of(self, event_id: Any) -> int:
        if type(event_id) is str:
            state = self._str.copy()
            state.update(event_id.encode("utf-8", "surrogatepass"))
        else:
            state = self._any.copy()
            state.update(_encode_id(event_id))
        return int.from_bytes(state.digest(), "big")

    def emit(self, source: FunctionSource, depth: int, event_id: str, result: str) -> None:
        """`result = self.of(event_id)` as statements of a function being generated (the gate's check),
        the str case inline: the same states, the same bytes, so the same fingerprint."""
        blake = source.temp("blake")
        source.add(depth, f"if type({event_id}) is str:")
        source.add(depth + 1, f"{blake} = {source.const(self._str.copy)}()")
        source.add(depth + 1, f"{blake}.update({event_id}.encode('utf-8', 'surrogatepass'))")
        source.add(depth + 1, f"{result} = {source.const(int.from_bytes)}({blake}.digest(), 'big')")
        source.add(depth, "else:")
        source.add(depth + 1, f"{result} = {source.const(self.of)}({event_id})")

    def __repr__(self) -> str:
        return "Fingerprinter(<keyed>)"  # never the key material


def pack(timestamp_ms: int, fingerprints: Iterable[int]) -> bytes:
    """8-byte big-endian timestamp (ms), then 8 bytes per fingerprint."""
    fps = list(fingerprints)
    return _STAMP.pack(timestamp_ms) + struct.pack(f">{len(fps)}Q", *fps)


def unpack(value: bytes) -> tuple[int, list[int]]:
    if len(value) < 8 or len(value) % FINGERPRINT_BYTES:
        raise ValueError(f"a fingerprint record is 8 + 8n bytes, not {len(value)}")
    (timestamp_ms,) = _STAMP.unpack_from(value)
    return timestamp_ms, list(struct.unpack_from(f">{len(value) // 8 - 1}Q", value, 8))


def log_key(topic: str, partition: int, first_offset: int) -> bytes:
    return f"{topic}/{partition}/{first_offset}".encode()


def parse_log_key(key: bytes) -> tuple[str, int, int] | None:
    """(topic, partition, first offset), or None for a key `log_key` did not write. Kafka topic
    names hold no '/', but splitting from the right keeps the numbers right regardless."""
    try:
        topic, partition, offset = key.decode("utf-8").rsplit("/", 2)
    except ValueError:  # not UTF-8 (UnicodeDecodeError is a ValueError) or fewer than three parts
        return None
    if not topic or not all(p.isascii() and p.isdigit() for p in (partition, offset)):
        return None
    return topic, int(partition), int(offset)


class _Batch:
    """A processed batch of one source partition whose log record has not come back yet."""

    __slots__ = ("source", "timestamp_ms", "fps")

    def __init__(self, source: Source, timestamp_ms: int, fps: set[int]) -> None:
        self.source = source
        self.timestamp_ms = timestamp_ms
        self.fps = fps


class DuplicateFilter:
    """Fingerprints of events seen within `horizon_ms`, at most `max_ids` of them (oldest evicted first, counted).

    Committed fingerprints sit in time buckets (by their record's timestamp), so expiry and eviction
    drop whole sets instead of walking fingerprints. A bucket is kept while any part of it lies
    within the horizon: a fingerprint may outlive the horizon by up to one bucket width, never fall
    short of it. Once a bucket is expired or evicted, a record that would land in it or before it
    (a late one, or one re-read) is not held again: the window only moves forward.
    """

    def __init__(self, horizon_ms: int, max_ids: int, buckets: int = 16) -> None:
        if horizon_ms <= 0 or max_ids <= 0 or buckets <= 0:
            raise ValueError("horizon_ms, max_ids and buckets must be positive")
        self.horizon_ms = horizon_ms
        self.max_ids = max_ids
        self.width_ms = max(1, horizon_ms // buckets)
        self.evicted = 0
        self._buckets: dict[int, set[int]] = {}
        # (these two are bound into the gate's generated check (emit_seen): changed in place, never rebound)
        self._all: set[int] = set()  # the union of the buckets: one lookup per event, not one per bucket
        self._tentative_all: dict[int, int] = {}  # fingerprint -> how many tentative batches hold it
        self._tentative: dict[bytes, _Batch] = {}
        self._committed_n = 0
        self._tentative_n = 0
        self._expired_below: int | None = None  # buckets before these indexes are gone
        self._evicted_below: int | None = None

    def __len__(self) -> int:
        return self._committed_n + self._tentative_n

    def __repr__(self) -> str:
        return (f"<DuplicateFilter held={len(self)} tentative_batches={len(self._tentative)}"
                f" buckets={len(self._buckets)} evicted={self.evicted}>")

    def seen(self, fp: int) -> bool:
        if fp in self._all:
            return True
        return fp in self._tentative_all

    def emit_seen(self, source: FunctionSource, fp: str) -> str:
        """`self.seen(fp)` as an expression of a function being generated (the gate's check): two lookups in
        the filter's containers, which are therefore never rebound, only changed in place."""
        return f"({fp} in {source.const(self._all)} or {fp} in {source.const(self._tentative_all)})"

    def apply(self, key: bytes, value: bytes | None) -> None:
        """A record read from the log (restore or follow): its fingerprints become committed (under the record's
        timestamp_ms); a tentative batch with the same key is confirmed (removed from tentative). A None/malformed
        value is ignored. Idempotent: applying the same record twice changes nothing.

        (Nothing held, that is: a record refused because it is older than a bucket the cap evicted
        counts in `evicted` each time it is applied.)"""
        if value is None:
            return
        try:
            timestamp_ms, fps = unpack(value)
        except ValueError:
            return
        batch = self._tentative.pop(key, None)
        if batch is not None:
            self._untrack(batch)
        index = timestamp_ms // self.width_ms
        if self._expired_below is not None and index < self._expired_below:
            return  # older than the horizon already expired: `expire` would drop it at once
        if self._evicted_below is not None and index < self._evicted_below:
            # older than what the cap pushed out: lost to the cap as well (a re-read counts again)
            self.evicted += len(set(fps))
            return
        bucket = self._buckets.setdefault(index, set())
        before = len(bucket)
        bucket.update(fps)
        self._all.update(fps)
        self._committed_n += len(bucket) - before
        self._enforce_cap()

    def add_tentative(self, topic: str, partition: int, first_offset: int, timestamp_ms: int, fps: list[int]) -> bytes:
        """Hold a processed batch's fingerprints until its log record comes back; returns the log key to write."""
        key = log_key(topic, partition, first_offset)
        previous = self._tentative.pop(key, None)  # the same batch processed again after a rewind
        if previous is not None:
            self._untrack(previous)
        batch = _Batch((topic, partition), timestamp_ms, set(fps))
        self._tentative[key] = batch
        self._tentative_n += len(batch.fps)
        held = self._tentative_all
        if held.keys().isdisjoint(batch.fps):  # the common case, in C, in O(batch) (it probes the batch's ids)
            held.update(dict.fromkeys(batch.fps, 1))
        else:
            for fp in batch.fps:
                held[fp] = held.get(fp, 0) + 1
        self._enforce_cap()
        return key

    def drop_tentative(self, sources: Iterable[Source]) -> int:
        """Forget the unconfirmed batches of these partitions (the transaction aborted, the consumer
        rewound, the partition was revoked): their events will be read again, and are no duplicates
        of themselves. Returns how many fingerprints were dropped."""
        wanted = set(sources)
        dropped = 0
        for key in [k for k, b in self._tentative.items() if b.source in wanted]:
            batch = self._tentative.pop(key)
            dropped += len(batch.fps)
            self._untrack(batch)
        return dropped

    def _untrack(self, batch: _Batch) -> None:
        self._tentative_n -= len(batch.fps)
        held = self._tentative_all
        for fp in batch.fps:
            if held[fp] == 1:
                del held[fp]
            else:
                held[fp] -= 1

    def expire(self, now_ms: int) -> None:
        """Drop the committed buckets that lie wholly before `now_ms - horizon_ms`."""
        below = (now_ms - self.horizon_ms) // self.width_ms
        if self._expired_below is None or below > self._expired_below:
            self._expired_below = below
        for index in [i for i in self._buckets if i < below]:
            self._committed_n -= self._drop_bucket(index)

    def _enforce_cap(self) -> None:
        """Past `max_ids`, evict the oldest committed buckets whole. Tentative batches are never
        evicted: they are confirmed or dropped shortly, and evicting them would let a duplicate
        inside the batch in flight through."""
        while len(self) > self.max_ids and self._buckets:
            index = min(self._buckets)
            count = self._drop_bucket(index)
            self._committed_n -= count
            self.evicted += count
            self._evicted_below = index + 1

    def _drop_bucket(self, index: int) -> int:
        """Remove a committed bucket (and its fingerprints from the union, unless another bucket holds
        them too: a batch's record read again under a later timestamp); its size."""
        removed = self._buckets.pop(index)
        self._all.difference_update(removed)
        for other in self._buckets.values():
            self._all.update(other & removed)
        return len(removed)
