"""Duplicate event ids: keyed fingerprints, the log record format, and the filter's committed,
tentative, expired and evicted state, down to a rebuild from the log."""

from __future__ import annotations

import hashlib
import hmac
import random

import pytest

from gateway.core.quality.dedup import (
    FINGERPRINT_BYTES,
    DuplicateFilter,
    fingerprint,
    fingerprint_key,
    log_key,
    pack,
    parse_log_key,
    unpack,
)

SECRET = bytes(range(32))
KEY = fingerprint_key(SECRET)
OTHER_KEY = fingerprint_key(bytes(range(1, 33)))


def _fps(n: int, seed: int) -> list[int]:
    rnd = random.Random(seed)
    return [rnd.getrandbits(64) for _ in range(n)]


# -- fingerprints ---------------------------------------------------------------------------------


def test_fingerprint_key_is_domain_separated() -> None:
    assert KEY == hmac.new(SECRET, b"gateway-quality-dedup-v1", hashlib.sha256).digest()
    assert len(KEY) == 32
    assert KEY != SECRET
    assert fingerprint_key(SECRET) == KEY


def test_fingerprint_pins_its_encoding() -> None:
    """Fingerprints outlive a process in the log: the encoding must not drift between versions."""
    message = (6).to_bytes(4, "big") + b"t.Demo" + b"s" + "évent-1".encode()
    expected = int.from_bytes(hashlib.blake2b(message, key=KEY, digest_size=8).digest(), "big")
    assert fingerprint(KEY, "t.Demo", "évent-1") == expected
    int_message = (6).to_bytes(4, "big") + b"t.Demo" + b"i42"
    assert fingerprint(KEY, "t.Demo", 42) == int.from_bytes(hashlib.blake2b(int_message, key=KEY,
                                                                            digest_size=8).digest(), "big")
    assert FINGERPRINT_BYTES == 8


def test_fingerprints_are_stable_and_separate_schema_type_and_key() -> None:
    fp = fingerprint(KEY, "t.Payment", "1")
    assert fingerprint(KEY, "t.Payment", "1") == fp
    assert fingerprint(KEY, "t.Order", "1") != fp
    assert fingerprint(KEY, "t.Payment", 1) != fp
    assert fingerprint(KEY, "t.Payment", b"1") != fp
    assert fingerprint(KEY, "t.Payment", 1) != fingerprint(KEY, "t.Payment", b"1")
    assert fingerprint(OTHER_KEY, "t.Payment", "1") != fp
    # the schema/id boundary is unambiguous
    assert fingerprint(KEY, "a", "bc") != fingerprint(KEY, "ab", "c")


def test_fingerprints_are_64_bit_and_spread() -> None:
    fps = [fingerprint(KEY, "t.Payment", f"evt-{i}") for i in range(5000)]
    assert all(0 <= fp < 2**64 for fp in fps)
    assert len(set(fps)) == len(fps)
    assert max(fps) > 2**63  # the whole range is used, not a truncated one


@pytest.mark.parametrize("bad", [True, 1.0, None, ["1"]])
def test_fingerprint_rejects_other_id_types(bad: object) -> None:
    with pytest.raises(TypeError):
        fingerprint(KEY, "t.Payment", bad)


# -- log records ----------------------------------------------------------------------------------


def test_pack_layout_and_round_trip() -> None:
    assert pack(1, [2, 2**64 - 1]) == (1).to_bytes(8, "big") + (2).to_bytes(8, "big") + b"\xff" * 8
    fps = _fps(300, 1)
    assert unpack(pack(1_700_000_000_123, fps)) == (1_700_000_000_123, fps)
    assert unpack(pack(5, [])) == (5, [])
    assert unpack(pack(7, iter(fps[:3]))) == (7, fps[:3])


@pytest.mark.parametrize("length", [0, 1, 7, 9, 15, 17])
def test_unpack_rejects_malformed_lengths(length: int) -> None:
    with pytest.raises(ValueError):
        unpack(b"\x00" * length)


def test_log_key_round_trip() -> None:
    key = log_key("orders.sanitized-v2", 3, 1_234_567)
    assert key == b"orders.sanitized-v2/3/1234567"
    assert parse_log_key(key) == ("orders.sanitized-v2", 3, 1_234_567)


@pytest.mark.parametrize("key", [b"", b"\xff\xfe/0/1", b"orders/1", b"orders/x/1", b"orders/1/-5", b"/0/1",
                                 b"orders/1/2.0"])
def test_parse_log_key_rejects_foreign_keys(key: bytes) -> None:
    assert parse_log_key(key) is None


# -- the filter -----------------------------------------------------------------------------------


def test_seen_after_apply_and_after_add_tentative() -> None:
    committed, tentative, never = _fps(3, 2), _fps(3, 3), _fps(3, 4)
    f = DuplicateFilter(horizon_ms=60_000, max_ids=1000)
    f.apply(log_key("src", 0, 0), pack(1000, committed))
    key = f.add_tentative("src", 1, 10, 1000, tentative)
    assert key == log_key("src", 1, 10)
    assert all(f.seen(fp) for fp in committed + tentative)
    assert not any(f.seen(fp) for fp in never)
    assert len(f) == 6


def test_none_and_malformed_values_are_ignored() -> None:
    f = DuplicateFilter(horizon_ms=60_000, max_ids=1000)
    f.apply(b"src/0/0", None)
    f.apply(b"src/0/1", b"\x00" * 12)
    assert len(f) == 0
    f.apply(b"src/0/2", pack(0, [5]))
    assert f.seen(5) and len(f) == 1


def test_apply_is_idempotent() -> None:
    f = DuplicateFilter(horizon_ms=60_000, max_ids=1000)
    records = [(log_key("src", 0, i * 10), pack(1000 + i, _fps(10, i))) for i in range(5)]
    for key, value in records:
        f.apply(key, value)
    probes = [fp for _, value in records for fp in unpack(value)[1]] + _fps(50, 99)
    state = (len(f), f.evicted, [f.seen(fp) for fp in probes])
    for key, value in reversed(records):
        f.apply(key, value)
    assert (len(f), f.evicted, [f.seen(fp) for fp in probes]) == state
    assert state == (50, 0, [True] * 50 + [False] * 50)


def test_apply_confirms_a_tentative_batch() -> None:
    fps = _fps(4, 5)
    f = DuplicateFilter(horizon_ms=60_000, max_ids=1000)
    key = f.add_tentative("src", 0, 100, 2000, fps)
    f.apply(key, pack(2000, fps))
    assert len(f) == 4  # moved from tentative to committed, not held twice
    assert f.drop_tentative([("src", 0)]) == 0  # confirmed: nothing left to drop
    assert all(f.seen(fp) for fp in fps)


def test_drop_tentative_removes_only_unconfirmed_batches_of_the_given_partitions() -> None:
    confirmed, p0_open, p0_later, p1_open, other_topic = (_fps(5, s) for s in range(10, 15))
    f = DuplicateFilter(horizon_ms=60_000, max_ids=1000)
    key = f.add_tentative("src", 0, 0, 1000, confirmed)
    f.apply(key, pack(1000, confirmed))
    f.add_tentative("src", 0, 50, 1100, p0_open)
    f.add_tentative("src", 0, 90, 1200, p0_later)
    f.add_tentative("src", 1, 0, 1100, p1_open)
    f.add_tentative("other", 0, 0, 1100, other_topic)
    assert f.drop_tentative([("src", 0)]) == 10
    assert all(f.seen(fp) for fp in confirmed + p1_open + other_topic)
    assert not any(f.seen(fp) for fp in p0_open + p0_later)
    assert len(f) == 15
    assert f.drop_tentative([("src", 0), ("src", 2)]) == 0
    assert f.drop_tentative(iter([("src", 1), ("other", 0)])) == 10
    assert len(f) == 5 and all(f.seen(fp) for fp in confirmed)


def test_a_batch_processed_again_replaces_its_tentative_fingerprints() -> None:
    first, again = _fps(3, 20), _fps(2, 21)
    f = DuplicateFilter(horizon_ms=60_000, max_ids=1000)
    f.add_tentative("src", 0, 7, 1000, first)
    f.add_tentative("src", 0, 7, 1500, again)
    assert len(f) == 2
    assert not any(f.seen(fp) for fp in first) and all(f.seen(fp) for fp in again)


def test_expire_drops_old_buckets_and_keeps_the_horizon() -> None:
    f = DuplicateFilter(horizon_ms=1000, max_ids=1000, buckets=10)  # buckets of 100 ms
    assert f.width_ms == 100
    stamps = {0: 1, 550: 2, 600: 3, 650: 4, 1590: 5}
    for ts, fp in stamps.items():
        f.apply(log_key("src", 0, ts), pack(ts, [fp]))
    f.expire(1600)  # horizon starts at 600
    assert [fp for fp in stamps.values() if f.seen(fp)] == [3, 4, 5]
    assert len(f) == 3
    f.apply(log_key("src", 1, 0), pack(500, [6]))  # a late record from before the horizon
    assert not f.seen(6) and len(f) == 3 and f.evicted == 0


def test_expire_never_falls_short_of_the_horizon() -> None:
    rnd = random.Random(7)
    for _ in range(200):
        horizon = rnd.randint(1, 10_000)
        f = DuplicateFilter(horizon_ms=horizon, max_ids=10**6, buckets=rnd.randint(1, 32))
        ts = rnd.randint(0, 10**6)
        f.apply(b"src/0/0", pack(ts, [42]))
        now = ts + rnd.randint(0, 3 * horizon)
        f.expire(now)
        if now - ts <= horizon:
            assert f.seen(42), (horizon, f.width_ms, ts, now)
        if now - ts >= horizon + f.width_ms:
            assert not f.seen(42), (horizon, f.width_ms, ts, now)


def test_bucket_width_is_at_least_one_ms() -> None:
    f = DuplicateFilter(horizon_ms=5, max_ids=10)
    assert f.width_ms == 1
    f.apply(b"src/0/0", pack(10, [1]))
    f.expire(15)
    assert f.seen(1)
    f.expire(16)
    assert not f.seen(1)


def test_max_ids_evicts_the_oldest_buckets_and_counts_them() -> None:
    f = DuplicateFilter(horizon_ms=1000, max_ids=10, buckets=10)
    batches = [_fps(3, 30 + i) for i in range(4)]
    for i, fps in enumerate(batches):  # buckets 0, 1, 2, 3 with 3 fingerprints each: 12 > 10
        f.apply(log_key("src", 0, i * 3), pack(i * 100, fps))
        assert len(f) <= 10
    assert f.evicted == 3
    assert len(f) == 9
    assert not any(f.seen(fp) for fp in batches[0])
    assert all(f.seen(fp) for fps in batches[1:] for fp in fps)
    # a late record older than the evicted bucket is not held again: counted instead
    f.apply(log_key("src", 1, 0), pack(50, [77, 78]))
    assert not f.seen(77) and f.evicted == 5 and len(f) == 9


def test_tentative_batches_push_committed_ones_out_but_are_kept() -> None:
    f = DuplicateFilter(horizon_ms=1000, max_ids=5, buckets=10)
    old, newer, in_flight = _fps(2, 40), _fps(2, 41), _fps(3, 42)
    f.apply(b"src/0/0", pack(0, old))
    f.apply(b"src/0/2", pack(100, newer))
    f.add_tentative("src", 0, 4, 200, in_flight)
    assert f.evicted == 2 and len(f) == 5
    assert not any(f.seen(fp) for fp in old)
    assert all(f.seen(fp) for fp in newer + in_flight)
    f.add_tentative("src", 1, 0, 200, _fps(6, 43))  # tentative alone over the cap: committed all gone
    assert f.evicted == 4 and len(f) == 9


@pytest.mark.parametrize("args", [(0, 10), (10, 0), (10, 10, 0)])
def test_filter_rejects_non_positive_bounds(args: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        DuplicateFilter(*args)


def test_a_filter_rebuilt_from_the_log_answers_the_same() -> None:
    """Two workers commit batches to the log (some of them abort), each following it; a third
    worker restores from the log after the fact and must report the same duplicates."""
    rnd = random.Random(11)
    horizon, now = 10_000, 0
    workers = {w: DuplicateFilter(horizon_ms=horizon, max_ids=10**6) for w in ("a", "b")}
    log: list[tuple[bytes, bytes]] = []
    written: list[int] = []
    aborted: list[int] = []
    offsets = {("src", 0): 0, ("src", 1): 0, ("src", 2): 0}
    for _ in range(120):
        now += rnd.randint(50, 300)
        name = rnd.choice("ab")
        worker = workers[name]
        source = rnd.choice(sorted(offsets))
        fps = [rnd.getrandbits(64) for _ in range(rnd.randint(0, 20))]
        key = worker.add_tentative(source[0], source[1], offsets[source], now, fps)
        if rnd.random() < 0.2:  # the transaction aborts: nothing written, the batch is forgotten
            assert worker.drop_tentative([source]) == len(set(fps))
            aborted.extend(fps)
            continue
        offsets[source] += len(fps) + 1
        log.append((key, pack(now, fps)))
        written.extend(fps)
        for w in workers.values():  # both follow the log and see the committed record
            w.apply(key, log[-1][1])
        for w in workers.values():
            w.expire(now)

    rebuilt = DuplicateFilter(horizon_ms=horizon, max_ids=10**6)
    rebuilt.expire(now)
    for key, value in log:
        rebuilt.apply(key, value)

    probes = written + aborted + [rnd.getrandbits(64) for _ in range(200)]
    expected = [workers["a"].seen(fp) for fp in probes]
    assert expected == [workers["b"].seen(fp) for fp in probes]
    assert expected == [rebuilt.seen(fp) for fp in probes]
    assert len(rebuilt) == len(workers["a"]) == len(workers["b"])
    # the horizon did something: early fingerprints expired, recent ones are duplicates
    assert not all(expected[: len(written)]) and any(expected[: len(written)])
    assert not any(rebuilt.seen(fp) for fp in aborted if fp not in set(written))
