"""What binding a ciphertext to its record costs (format v5), per encrypted field, without a broker.

    python -m benchmarks.record_binding [--fields 20000] [--reps 21]

Both sides call `gateway.keys.envelope.encrypt_field` on the same 24-byte plaintexts under one DEK,
in alternating order, ``--reps`` times; times are this process's CPU time, medians of the pairs:

- **v1-v4**: the associated data before v5: header, topic, field path and subject.
- **v5**: the same plus the 2-byte prefix (in the header and the associated data), the record's
  event id (length-prefixed) and an array element's position, as the sanitizer builds them.

Also printed: the bytes a v5 ciphertext adds (the prefix). A bounded measurement, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from gateway.keys.envelope import (
    Binding,
    DekCache,
    context_prefix,
    encrypt_field,
    index_step,
    record_prefix,
    record_suffix,
    subject_suffix,
)
from gateway.keys.keyring import Keyring


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=21)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        key = DekCache(Keyring.open(Path(tmp) / "k.json"), 3600, 10**9).current()
    plaintext = b"x" * 24
    static = context_prefix("clinical.visits.sanitized", "procedures[].notes")
    subject = subject_suffix("tok_v1_" + "A" * 43)
    bound = subject + record_suffix("3f2b8c1e-9d4a-4e8b-a1c2-5d6e7f8a9b0c")
    prefix = record_prefix(Binding.EVENT_ID)
    position = index_step(3)

    def unbound() -> None:
        for _ in range(args.fields):
            encrypt_field(key, plaintext, static + subject)

    def v5() -> None:
        for _ in range(args.fields):
            encrypt_field(key, plaintext, static + bound + position, prefix)

    before: list[float] = []
    after: list[float] = []
    for rep in range(args.reps):
        for fn, out in ((unbound, before), (v5, after)) if rep % 2 == 0 else ((v5, after), (unbound, before)):
            start = time.process_time()
            fn()
            out.append((time.process_time() - start) / args.fields * 1e6)
    ratios = [a / b for a, b in zip(after, before, strict=True)]
    old, new = statistics.median(before), statistics.median(after)
    print(f"{args.fields} fields x {args.reps} repetitions; CPU time; medians")
    print(f"encrypt_field v1-v4 associated data   {old:6.2f} us/field")
    ratio = statistics.median(ratios)
    print(f"encrypt_field v5 (record-bound)       {new:6.2f} us/field   (+{new - old:.2f} us; {ratio:.3f}x per pair)")
    print(f"ciphertext size: +{len(prefix)} bytes per field (the v5 prefix)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
