"""Command line: broker, run, policy lint/show, decrypt, dump, audit verify, demo."""

from __future__ import annotations

import argparse
import io
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fastavro
import orjson

from gateway.config import GatewayConfig
from gateway.errors import GatewayError

log = logging.getLogger("gateway.cli")


def _add_run_settings(p: argparse.ArgumentParser) -> None:
    """Options that map one-to-one onto GatewayConfig settings (env GATEWAY_<NAME> otherwise)."""
    p.add_argument("--bootstrap", help="Kafka bootstrap servers HOST:PORT[,...] (GATEWAY_BOOTSTRAP)")
    p.add_argument("--schemas", help="directory of annotated *.avsc schemas (GATEWAY_SCHEMAS)")
    p.add_argument("--keyring", help="local keyring file, created with mode 0600 on first run (GATEWAY_KEYRING)")
    p.add_argument("--audit-topic", dest="audit_topic", help="audit topic (default privacy.audit)")
    p.add_argument("--group-id", dest="group_id", help="consumer group id (default privacy-gateway)")
    p.add_argument("--instance-id", dest="instance_id", help="this worker's id (default HOST-PID)")
    p.add_argument("--partitions", type=int, help="partitions for topics the gateway creates (default 6)")
    p.add_argument("--no-create-topics", dest="create_topics", action="store_const", const=False,
                   help="fail instead of creating missing topics")
    p.add_argument("--batch-max-events", dest="batch_max_events", type=int)
    p.add_argument("--batch-timeout-s", dest="batch_timeout_s", type=float)
    p.add_argument("--fetch-queue-kbytes", dest="fetch_queue_kbytes", type=int,
                   help="bound on prefetched input per worker (default 16384)")
    p.add_argument("--max-record-bytes", dest="max_record_bytes", type=int)
    p.add_argument("--max-field-bytes", dest="max_field_bytes", type=int)
    p.add_argument("--dek-max-age-s", dest="dek_max_age_s", type=float)
    p.add_argument("--dek-max-uses", dest="dek_max_uses", type=int)
    p.add_argument("--session-timeout-ms", dest="session_timeout_ms", type=int)
    p.add_argument("--metrics-port", dest="metrics_port", type=int, help="serve /metrics, /healthz, /readyz")
    p.add_argument("--log-level", dest="log_level")


def _config(args: argparse.Namespace) -> GatewayConfig:
    names = GatewayConfig.__dataclass_fields__
    return GatewayConfig.load({k: v for k, v in vars(args).items() if k in names})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Kafka privacy gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker (Tansu) on 127.0.0.1")
    p.add_argument("--port", type=int, default=9092)

    p = sub.add_parser("run", help="run the sanitize worker (a consumer-group member)")
    _add_run_settings(p)

    policy = sub.add_parser("policy", help="check and explain policies").add_subparsers(dest="policy_cmd",
                                                                                       required=True)
    p = policy.add_parser("lint", help="list every problem in the policies of a directory")
    p.add_argument("directory", type=Path)
    p = policy.add_parser("show", help="print the compiled plan and the derived sanitized schema")
    p.add_argument("file", type=Path)

    keys = sub.add_parser("keys", help="key management").add_subparsers(dest="keys_cmd", required=True)
    p = keys.add_parser("init", help="create the keyring (mode 0600) with keys for every token domain")
    p.add_argument("--keyring", type=Path, default=None, help="keyring path (GATEWAY_KEYRING)")
    p.add_argument("--schemas", type=Path, default=None, help="schema directory (GATEWAY_SCHEMAS)")

    p = sub.add_parser("decrypt", help="decrypt sanitized records from stdin (JSON lines or Avro)")
    p.add_argument("--keyring", type=Path, default=None, help="keyring holding the KEK (GATEWAY_KEYRING)")
    p.add_argument("--schemas", type=Path, default=None, help="schema directory (GATEWAY_SCHEMAS)")
    p.add_argument("--topic", help="sanitized topic the records came from (needed with several policies)")

    p = sub.add_parser("dump", help="print a topic's records as JSON lines (sanitized, dlq or audit)")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--schemas", type=Path, default=None)
    p.add_argument("--limit", type=int, default=0, help="stop after N records (0 = all)")

    audit = sub.add_parser("audit", help="audit trail tools").add_subparsers(dest="audit_cmd", required=True)
    p = audit.add_parser("verify", help="walk the audit hash chains and report the first break")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", default="privacy.audit")

    p = sub.add_parser("demo", help="embedded broker + gateway + sample events, end to end")
    p.add_argument("--events", type=int, default=400, help="valid events per schema")
    p.add_argument("--schemas", type=Path, default=Path("schemas"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gateway.logs import setup_logging

    setup_logging(getattr(args, "log_level", None) or "INFO")
    try:
        handler = {"broker": cmd_broker, "run": cmd_run, "policy": cmd_policy, "decrypt": cmd_decrypt,
                   "dump": cmd_dump, "audit": cmd_audit, "demo": cmd_demo, "keys": cmd_keys}[args.command]
        return handler(args)
    except GatewayError as exc:
        print(f"gateway {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def cmd_broker(args: argparse.Namespace) -> int:
    from gateway.broker import EmbeddedBroker

    broker = EmbeddedBroker(args.port)
    stop = {"now": False}

    def _stop(signum: int, _frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with broker:
        print(f"broker listening on {broker.bootstrap} (Tansu, in-memory; log: {broker.log_path})", flush=True)
        assert broker.process is not None
        while not stop["now"] and broker.process.poll() is None:
            time.sleep(0.2)
        code = broker.process.poll()
    return 0 if code in (None, 0, -15) else int(code)


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.keys.keyring import Keyring
    from gateway.policy import load_plans
    from gateway.worker import Worker

    config = _config(args)
    plans = load_plans(config.require_schemas_dir())
    for plan in plans:
        for warning in plan.warnings:
            log.warning("policy", extra={"problem": str(warning)})
    keyring = Keyring.open(config.keyring, create=True)
    return Worker(config, plans, keyring).run()


def cmd_policy(args: argparse.Namespace) -> int:
    from gateway.policy import compile_plan, lint_directory, lint_file
    from gateway.schema import load_schema_file

    if args.policy_cmd == "lint":
        if not args.directory.is_dir():
            raise GatewayError(f"'{args.directory}' is not a directory")
        problems = lint_directory(args.directory)
        for problem in problems:
            print(problem)
        errors = sum(p.severity == "error" for p in problems)
        warnings = len(problems) - errors
        print(f"{errors} error(s), {warnings} warning(s)")
        return 1 if errors else 0
    problems = lint_file(args.file)
    errors = [p for p in problems if p.severity == "error"]
    for problem in problems:
        print(problem, file=sys.stderr)
    if errors:
        return 1
    plan = compile_plan(load_schema_file(args.file))
    print(f"schema:          {plan.name}")
    print(f"policy:          {plan.policy_hash}")
    print(f"topics:          {plan.source_topic} -> {plan.sanitized_topic} (dead letters: {plan.dlq_topic})")
    print(f"subject:         {plan.subject_field or '(none)'}")
    print(f"input / output:  {plan.input_mode} / {plan.output}")
    print("fields:")
    width = max(len(p) for p in plan.field_actions)
    for path, action in plan.field_actions.items():
        print(f"  {path:<{width}}  {action}")
    print("sanitized schema:")
    print(orjson.dumps(plan.sanitized_schema, option=orjson.OPT_INDENT_2).decode())
    return 0


def _schemas_dir(value: Path | None) -> Path:
    config = GatewayConfig.load({"schemas": value})
    return config.require_schemas_dir()


def cmd_keys(args: argparse.Namespace) -> int:
    from gateway.keys.keyring import Keyring
    from gateway.policy import load_plans

    config = GatewayConfig.load({"keyring": args.keyring, "schemas": args.schemas})
    plans = load_plans(config.require_schemas_dir())
    existed = config.keyring.exists()
    keyring = Keyring.open(config.keyring, create=True)
    domains = {d for p in plans for d in p.token_domains}
    keyring.ensure_token_domains(domains)
    state = "updated" if existed else "created"
    print(f"keyring {config.keyring} {state}: KEK {keyring.active_key_id()}, token domains "
          f"{', '.join(sorted(domains)) or '(none)'}")
    return 0


def cmd_decrypt(args: argparse.Namespace) -> int:
    from gateway.consume import SanitizedDecoder
    from gateway.decrypt import decrypt_record
    from gateway.keys.envelope import FieldDecryptor
    from gateway.keys.keyring import Keyring
    from gateway.policy import load_plans
    from gateway.schema import decoded_for_json

    config = GatewayConfig.load({"keyring": args.keyring, "schemas": args.schemas})
    plans = load_plans(config.require_schemas_dir())
    decoder = SanitizedDecoder(plans)
    decryptor = FieldDecryptor(Keyring.open(config.keyring, create=False))
    data = sys.stdin.buffer.read()
    failures = 0
    for n, (plan, record) in enumerate(_stdin_records(data, decoder, args.topic), start=1):
        opened, report = decrypt_record(record, plan, decryptor)
        for path, outcome in report.fields.items():
            if outcome != "decrypted":
                failures += 1
                print(f"record {n}: field '{path}': {outcome}", file=sys.stderr)
        sys.stdout.buffer.write(orjson.dumps(decoded_for_json(opened)) + b"\n")
    if failures:
        print(f"gateway decrypt: {failures} field(s) could not be decrypted", file=sys.stderr)
        return 1
    return 0


def _stdin_records(data: bytes, decoder: Any, topic: str | None) -> Any:
    if data.startswith(b"Obj\x01"):
        reader = fastavro.reader(io.BytesIO(data))
        plan = decoder.plan_for(topic, reader.writer_schema.get("name") if reader.writer_schema else None)
        for record in reader:
            yield plan, record
        return
    if data.lstrip()[:1] in (b"{", b""):
        plan = None
        for line in data.splitlines():
            if line.strip():
                plan = plan or decoder.plan_for(topic)
                yield plan, orjson.loads(line)
        return
    plan = decoder.plan_for(topic)
    buffer = io.BytesIO(data)
    while buffer.tell() < len(data):
        yield plan, fastavro.schemaless_reader(buffer, plan.sanitized_parsed, None)


def cmd_dump(args: argparse.Namespace) -> int:
    from gateway.consume import SanitizedDecoder, read_topic
    from gateway.policy import load_plans
    from gateway.schema import decoded_for_json

    decoder = None
    for record in read_topic(args.bootstrap, args.topic)[: args.limit or None]:
        if "gateway-schema" in record.headers:
            decoder = decoder or SanitizedDecoder(load_plans(_schemas_dir(args.schemas)))
            _, value = decoder.decode(record)
            sys.stdout.buffer.write(orjson.dumps(decoded_for_json(value)) + b"\n")
        else:
            sys.stdout.buffer.write((record.value or b"") + b"\n")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from gateway.audit import verify_chains
    from gateway.consume import read_topic

    records = read_topic(args.bootstrap, args.topic)
    report = verify_chains((r.partition, r.offset, r.value or b"") for r in records)
    for restart in report.restarts:
        print(f"note: {restart}")
    for problem in report.breaks:
        print(f"BREAK: {problem}")
    status = "OK" if report.ok else "BROKEN"
    print(f"audit chain {status}: {report.events} events in {report.chains} chains on '{args.topic}'")
    return 0 if report.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(args.schemas, args.events)
