"""How soon a DP release reaches a read_committed reader after its window closes.

    python -m benchmarks.dp_release [--bootstrap HOST:PORT] [--windows 8]

`gateway run` and `gateway aggregate` on the payments schema with two aggregates of 2-second windows
(grace 1 s, `dp_idle_close_s` 1 s): payments are published at a steady rate with their event time
`now` for half the windows, then the stream is idle for the other half. A window is due on the wall
clock at end + grace + dp_idle_close_s, data or not (gateway/dp/windows.py), and released in one
transaction with its `dp_release` audit event; the reader receives both at the same commit. So the
latency of every window (those with data and the idle ones alike) is measured on its audit event:
received - (end + grace + dp_idle_close_s); the aggregates topic's records (groups past the key
selection threshold) give the same figure for the windows that released groups.

Without --bootstrap an embedded broker is started. `run(bootstrap, windows) -> dict` returns the
figures (benchmarks/bench.py prints them in its latency section).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Message, Producer

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.events import REPO
from benchmarks.tail_reader import TailReader
from gateway.core.audit import record_entries
from gateway.core.policy.lint import load_plans
from gateway.embedded.demo import encode_raw
from gateway.embedded.samples import SampleEvents
from gateway.keys.keyring import Keyring
from gateway.runtime.topics import admin_client, create_topics

WINDOW_S, GRACE_S, IDLE_CLOSE_S = 2, 1, 1.0
RATE = 200  # payments per second while the stream is busy


def _schemas(root: Path, suffix: str) -> Path:
    """The shipped payments schema, its topics suffixed, with 2-second windows and a budget they fit."""
    target = root / "schemas"
    target.mkdir(parents=True)
    schema = orjson.loads((REPO / "schemas" / "payments.avsc").read_bytes())
    privacy = schema["privacy"]
    for key in ("source_topic", "sanitized_topic"):
        privacy[key] += f".{suffix}"
    for aggregate in privacy["aggregates"]:
        aggregate.update(window_s=WINDOW_S, grace_s=GRACE_S, period_s=3600, period_epsilon_cap=10_000.0)
    privacy["budget"] = {"period_s": 3600, "epsilon_cap": 10_000.0, "delta_cap": 0.5}
    (target / "payments.avsc").write_bytes(orjson.dumps(schema))
    return target


class _Reader(TailReader):
    """read_committed, from the partitions' current ends: (received ms, topic, record value) per record."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        super().__init__(bootstrap, topics, "dp-lat")
        self.received: list[tuple[float, str, bytes]] = []
        self.start()

    def received_batch(self, now_ms: float, messages: list[Message]) -> None:
        self.received += [(now_ms, m.topic(), m.value() or b"") for m in messages]


def _start(cmd: list[str], log: Path, ready: bytes, count: int = 1) -> subprocess.Popen[bytes]:
    handle = open(log, "wb")  # noqa: SIM115 - the process owns it until it exits
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    deadline = time.monotonic() + 120
    while log.read_bytes().count(ready) < count:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{cmd[3]} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc


def run(bootstrap: str, windows: int = 8) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="dp-release-"))
    suffix = uuid.uuid4().hex[:6]
    schemas = _schemas(root, suffix)
    plan = load_plans(schemas)[0]
    group, audit, ledger = f"dp-lat-{suffix}", f"privacy.audit.dp-lat-{suffix}", f"privacy.ledger.dp-lat-{suffix}"
    keyring = root / "keyring.json"
    Keyring.open(keyring)
    Keyring.open(keyring).export_audit(root / "audit-keys.json")
    outputs = sorted({a.output_topic for a in plan.aggregates})
    create_topics(admin_client({"bootstrap.servers": bootstrap}),
                  {t: 3 for t in (plan.source_topic, plan.sanitized_topic, audit, *outputs)})
    common = ["--bootstrap", bootstrap, "--schemas", str(schemas), "--audit-topic", audit, "--group-id", group,
              "--partitions", "3", "--session-timeout-ms", "6000"]
    procs = []
    try:
        procs.append(_start([sys.executable, "-m", "gateway", "run", *common, "--keyring", str(keyring),
                             "--instance-id", f"{group}-run", "--processes", "1"],
                            root / "run.log", b'"msg":"partitions assigned"'))
        procs.append(_start([sys.executable, "-m", "gateway", "aggregate", *common, "--keyring",
                             str(root / "audit-keys.json"), "--instance-id", f"{group}-agg", "--ledger-topic", ledger,
                             "--dp-idle-close-s", str(IDLE_CLOSE_S)],
                            root / "aggregate.log", b'"msg":"partitions owned"', count=2))
        reader = _Reader(bootstrap, [audit, *outputs])
        started_ms = time.time() * 1000
        samples = SampleEvents(seed=11)
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        busy_until = time.monotonic() + windows / 2 * WINDOW_S
        i = 0
        while time.monotonic() < busy_until:  # a steady stream, event time now
            e = samples.payment()
            e.update(user_id=f"subject-{i}", occurred_at=int(time.time() * 1000))
            producer.produce(plan.source_topic, encode_raw(plan, e, "avro"))
            i += 1
            producer.poll(0)
            time.sleep(1 / RATE)
        producer.flush(30)
        busy_end_ms = time.time() * 1000
        # idle: the windows after the last event close on the clock alone
        time.sleep(windows / 2 * WINDOW_S + GRACE_S + IDLE_CLOSE_S + 3)
        reader.stop()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    settle_ms = (GRACE_S + IDLE_CLOSE_S) * 1000
    by_window: dict[tuple[str, int], float] = {}  # (aggregate, window end) -> latency of its first partition
    busy, idle = [], []
    for received, topic, value in reader.received:
        if topic != audit:
            continue
        for entry in record_entries([value]):
            if entry.get("type") != "dp_release" or entry["window"]["end"] + settle_ms < started_ms:
                continue
            latency = received - (entry["window"]["end"] + settle_ms)
            (busy if entry["window"]["end"] <= busy_end_ms + GRACE_S * 1000 else idle).append(latency)
            key = (entry["aggregate"], entry["window"]["end"])
            by_window[key] = min(by_window.get(key, latency), latency)
    group_latencies = []
    for received, topic, value in reader.received:
        if topic in outputs:
            record = orjson.loads(value)
            end = record.get("window", {}).get("end")
            if isinstance(end, int):
                group_latencies.append(received - (end + settle_ms))
    every = busy + idle
    if not every:
        raise RuntimeError(f"no dp_release reached the reader: {(root / 'aggregate.log').read_text()[-2000:]}")

    def figures(values: list[float]) -> dict[str, Any]:
        return {"releases": len(values), "p50_ms": round(statistics.median(values)),
                "max_ms": round(max(values))} if values else {"releases": 0}

    return {"window_s": WINDOW_S, "grace_s": GRACE_S, "dp_idle_close_s": IDLE_CLOSE_S,
            "all": figures(every), "with_data": figures(busy), "idle": figures(idle),
            "aggregates_topic": figures(group_latencies), "within_1s": all(v <= 1000 for v in every)}


def print_figures(f: dict[str, Any]) -> None:
    print(f"DP release latency, window close (end + grace {f['grace_s']} s + dp_idle_close_s "
          f"{f['dp_idle_close_s']:g} s) to a read_committed reader, per stage-2 partition's release:")
    for name in ("with_data", "idle", "all", "aggregates_topic"):
        row = f[name]
        if row["releases"]:
            print(f"  {name:<17}{row['releases']:>4} releases  p50 {row['p50_ms']:>5} ms  max {row['max_ms']:>5} ms")
    print(f"  every release within 1 s of its window's close: {'yes' if f['within_1s'] else 'NO'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", help="an existing broker (default: start an embedded one)")
    parser.add_argument("--windows", type=int, default=8)
    args = parser.parse_args(argv)
    if args.bootstrap:
        print_figures(run(args.bootstrap, args.windows))
        return 0
    from gateway.embedded.broker import EmbeddedBroker

    with EmbeddedBroker(log_path=Path(tempfile.mkdtemp(prefix="dp-release-broker-")) / "broker.log") as broker:
        print_figures(run(broker.bootstrap, args.windows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
