"""`output_compression`: the sanitize worker's batches reach the broker compressed, on every topic it
writes, and everything still reads back, decrypts and verifies. The broker runs here with a data
directory of the test's own, so the test reads the codec from the stored record batches themselves."""

from __future__ import annotations

import struct
from pathlib import Path

import orjson
import pytest

from gateway.core.audit import verify_chains
from gateway.embedded.broker import EmbeddedBroker
from gateway.embedded.demo import encode_raw
from gateway.embedded.samples import SampleEvents
from gateway.runtime.reader import read_topic

from .conftest import Deployment, cli

pytestmark = pytest.mark.integration

N = 120
CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}  # record batch attributes, bits 0-2
CONTROL = 0x20  # attributes bit 5: a commit or abort marker, never compressed


def batch_codecs(segment: Path) -> list[str]:
    """The codec of every data batch in a log segment (magic v2: attributes at byte 21 of the batch)."""
    data, codecs, at = segment.read_bytes(), [], 0
    while at + 23 <= len(data):
        length = struct.unpack_from(">i", data, at + 8)[0]
        attributes = struct.unpack_from(">h", data, at + 21)[0]
        if not attributes & CONTROL:
            codecs.append(CODECS[attributes & 0x07])
        at += 12 + length
    return codecs


def topic_codecs(log_dir: Path, topic: str) -> set[str]:
    return {codec for segment in log_dir.glob(f"{topic}-*/*.log") for codec in batch_codecs(segment)}


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_output_is_stored_compressed_and_reads_back(tmp_path: Path, codec: str) -> None:
    """lz4 by default, without the option; zstd when asked."""
    with EmbeddedBroker(data_dir=tmp_path / "kafka") as broker:
        root = tmp_path / "deployment"
        root.mkdir()
        d = Deployment(broker.bootstrap, root, "compressed")
        samples = SampleEvents(seed=5)
        published = [samples.payment() for _ in range(N)]
        values = [encode_raw(d.payments, p, "confluent") for p in published]
        worker = d.start_worker(codec, extra=() if codec == "lz4" else ("--output-compression", codec))
        try:
            d.produce(d.payments.source_topic, [*values, b"\x00not an event"])  # and one dead letter
            d.wait_for_audit(N + 1)
        finally:
            assert worker.stop() == 0
        log_dir = tmp_path / "kafka" / "log"
        for topic in (d.payments.sanitized_topic, d.audit_topic, d.payments.dlq_topic):
            assert topic_codecs(log_dir, topic) == {codec}, topic
        # the raw input, from the test's own producer, is not: the setting is the worker's
        assert topic_codecs(log_dir, d.payments.source_topic) == {"none"}

        report = verify_chains((r.partition, r.offset, r.value or b"") for r in d.read(d.audit_topic))
        assert report.ok and report.events == N + 1
        assert len(read_topic({"bootstrap.servers": broker.bootstrap}, d.payments.dlq_topic)) == 1
        dumped = cli("dump", "--bootstrap", broker.bootstrap, "--topic", d.payments.sanitized_topic,
                     "--schemas", str(d.schemas))
        assert dumped.returncode == 0, dumped.stderr.decode()
        opened = cli("decrypt", "--keyring", str(d.keyring), "--schemas", str(d.schemas),
                     "--topic", d.payments.sanitized_topic, stdin=dumped.stdout)
        assert opened.returncode == 0, opened.stderr.decode()
        cards = {r["event_id"]: r["card_number"] for r in map(orjson.loads, opened.stdout.splitlines())}
        assert cards == {p["event_id"]: p["card_number"] for p in published}
