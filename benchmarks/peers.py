"""What users would otherwise have: the per-event cost of the gateway's competitors, in process (issue 6).

Each approach applies the gateway's own policy (the compiled plans of ``schemas/payments.avsc`` and
``schemas/clinical_visits.avsc``: same records, same fields tokenized, encrypted and dropped) to
records from ``gateway.embedded.samples.SampleEvents``, with no Kafka in the way:

- ``naive_per_record``: hand-written Python as users write it without a DEK cache: stdlib ``json``,
  a fresh ``hmac.new`` per token, a data key asked from a KMS for every record (what the AWS
  Encryption SDK does without a caching materials manager; here boto3 against a local moto KMS
  server) and a fresh ``AESGCM`` per record.
- ``confluent_csfle``: confluent-kafka's client-side field-level encryption (AvroSerializer, an
  ENCRYPT rule on ``PII``-tagged fields, local KMS driver, in-process ``mock://`` registries).
- ``presidio``: Presidio's anonymizer operators (hash, encrypt, replace) field by field, with the
  analyzer results given, so only the operators are measured.

Every function takes ``{schema: [record dict, ...]}`` (schema named by file stem, record full name
or source topic), does all the work on every record inside the clock, checks on a sample that no
sensitive plaintext survived, and returns ``{"events", "seconds", "cpu_s", "bytes_out",
"thread_cpu_s", "per_schema"}`` (``cpu_s`` is the whole process; ``thread_cpu_s`` the calling thread
only, which leaves out the in-process KMS server's thread; ``per_schema`` maps each schema to its own
``{"events", "seconds", "cpu_s"}``). The input dicts are not modified. One warm-up record per schema
runs before the clock starts (connections, KEK/DEK registration, lazy imports): the figures are
steady-state costs.

Run: ``python -m benchmarks.peers [--events N] [--seed S]`` (needs the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
import orjson

from gateway.core.codec.raw import load_schema_file, strip_logical_types
from gateway.core.codec.writer import avro_bytes
from gateway.core.operators.base import FieldPlan, RecordPlan, Shape
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.plan import Plan
from gateway.embedded.samples import SampleEvents

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"
SCHEMA_STEMS = ("payments", "clinical_visits")
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
PII_TAG = "PII"
MIN_CHECKED_LEN = 8  # shorter sensitive strings (postal codes, "05/27") can occur in other output by chance

# Fixed benchmark keys (no secrets: synthetic data on 127.0.0.1).
_TOKEN_KEYS = {d: hashlib.sha256(b"bench-token-key:" + d.encode()).digest()
               for d in ("customer", "patient", "contact")}
_PRESIDIO_KEY = hashlib.sha256(b"bench-presidio-aes-key").digest()  # 32 bytes: AES-256
_PRESIDIO_SALT = b"bench-fixed-salt-0123456789"  # Presidio wants >= 16 bytes
_CSFLE_SECRET = "bench-local-kms-secret"  # noqa: S105 - confluent's local KMS derives its KEK from it

Result = dict[str, Any]
Tokenize = Callable[[str, FieldPlan], Any]
Encrypt = Callable[[Any, FieldPlan], Any]
Drop = Callable[[Any, str], Any]


# ---- records and plans -------------------------------------------------------------------------
@cache
def plans() -> dict[str, Plan]:
    """The gateway's compiled plans, by schema file stem."""
    return {stem: compile_plan(load_schema_file(SCHEMAS_DIR / f"{stem}.avsc")) for stem in SCHEMA_STEMS}


def plan_for(name: str) -> Plan:
    for stem, plan in plans().items():
        if name in (stem, plan.name, plan.source_topic):
            return plan
    raise KeyError(f"no example schema named {name!r} (use one of {', '.join(SCHEMA_STEMS)})")


def sample_records(n: int, seed: int = 7) -> dict[str, list[dict[str, Any]]]:
    """n raw records per example schema, from a fixed seed."""
    events = SampleEvents(seed)
    return {"payments": [events.payment() for _ in range(n)],
            "clinical_visits": [events.clinical_visit() for _ in range(n)]}


def _walk(record: dict[str, Any], rplan: RecordPlan, tokenize: Tokenize, encrypt: Encrypt,
          drop: Drop | None = None) -> dict[str, Any]:
    """Apply the plan to one record: a new dict without the dropped fields, unless `drop` maps them."""
    out: dict[str, Any] = {}
    for fp in rplan.fields:
        value = record.get(fp.name)
        if value is None:
            out[fp.name] = None
        elif fp.action == "tokenize":
            out[fp.name] = tokenize(value, fp)
        elif fp.action == "encrypt":
            out[fp.name] = encrypt(value, fp)
        elif fp.shape is not None:
            out[fp.name] = _walk_shape(value, fp.shape, tokenize, encrypt, drop)
        else:
            out[fp.name] = value
    if drop is not None:
        for name in rplan.dropped:
            value = record.get(name)
            if value is not None:
                out[name] = drop(value, name)
    return out


def _walk_shape(value: Any, shape: Shape, tokenize: Tokenize, encrypt: Encrypt, drop: Drop | None) -> Any:
    if shape.kind == "record" and isinstance(value, dict):
        assert shape.record is not None
        return _walk(value, shape.record, tokenize, encrypt, drop)
    if shape.kind == "array" and isinstance(value, list):
        assert shape.inner is not None
        return [_walk_shape(item, shape.inner, tokenize, encrypt, drop) for item in value]
    if shape.kind == "map" and isinstance(value, dict):
        assert shape.inner is not None
        return {k: _walk_shape(item, shape.inner, tokenize, encrypt, drop) for k, item in value.items()}
    return value


def _sensitive_strings(record: dict[str, Any], rplan: RecordPlan) -> list[str]:
    """Every string value the plan tokenizes, encrypts or drops (long enough to search for)."""
    found: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, str) and len(value) >= MIN_CHECKED_LEN:
            found.append(value)
        elif isinstance(value, list):
            for item in value:
                collect(item)
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)

    def visit(rec: dict[str, Any], rp: RecordPlan) -> None:
        for name in rp.dropped:
            collect(rec.get(name))
        for fp in rp.fields:
            value = rec.get(fp.name)
            if fp.action in ("tokenize", "encrypt"):
                collect(value)
            elif fp.shape is not None:
                shape: Shape | None = fp.shape
                items = [value]
                while shape is not None and shape.kind != "record":
                    items = [x for v in items if v for x in (v if isinstance(v, list) else v.values())]
                    shape = shape.inner
                if shape is not None and shape.record is not None:
                    for item in items:
                        if isinstance(item, dict):
                            visit(item, shape.record)

    visit(record, rplan)
    return found


def _check_no_plaintext(approach: str, samples: list[tuple[dict[str, Any], RecordPlan, bytes]]) -> None:
    """Cheap self-check that the measured path did its job: no sensitive value left in clear."""
    checked = 0
    for record, rplan, output in samples:
        values = _sensitive_strings(record, rplan)
        if "card_number" in record and record["card_number"] not in values:
            raise AssertionError(f"{approach}: the card number is not among the checked values")
        for value in values:
            if value.encode() in output:
                raise AssertionError(f"{approach}: a sensitive {rplan.fullname} value is in clear in the output")
            checked += 1
    if not checked:
        raise AssertionError(f"{approach}: no sensitive value to check")


def _run(approach: str, records_by_schema: dict[str, list[dict[str, Any]]], items: dict[str, list[Any]],
         one: Callable[[Any, str], bytes]) -> Result:
    """Warm up with one item per schema, then time `one(item, schema)` over every item.

    Returns the totals plus ``per_schema`` ({schema: {"events", "seconds", "cpu_s"}}) and checks the
    first output of each schema for surviving plaintext.
    """
    for name, batch in items.items():
        if batch:
            one(batch[0], name)
    outputs: list[bytes] = []
    per_schema: dict[str, dict[str, float | int]] = {}
    wall0, cpu0, thread0 = time.perf_counter(), time.process_time(), time.thread_time()
    for name, batch in items.items():
        wall, cpu = time.perf_counter(), time.process_time()
        for item in batch:
            outputs.append(one(item, name))
        per_schema[name] = {"events": len(batch), "seconds": time.perf_counter() - wall,
                            "cpu_s": time.process_time() - cpu}
    seconds, cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
    thread_cpu_s = time.thread_time() - thread0
    samples, at = [], 0
    for name, records in records_by_schema.items():
        if records:
            samples.append((records[0], plan_for(name).record, outputs[at]))
        at += len(records)
    _check_no_plaintext(approach, samples)
    return {"events": len(outputs), "seconds": seconds, "cpu_s": cpu_s, "bytes_out": sum(map(len, outputs)),
            "thread_cpu_s": thread_cpu_s, "per_schema": per_schema}


# ---- 1. naive per-record implementation, a KMS call per record ---------------------------------
@contextlib.contextmanager
def local_kms(port: int = 0) -> Iterator[tuple[str, str]]:
    """A moto KMS server on 127.0.0.1 in this process; yields (endpoint_url, key_id) of a fresh key."""
    import boto3
    from moto.server import ThreadedMotoServer

    for name, value in AWS_ENV.items():
        os.environ.setdefault(name, value)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        host, bound = server.get_host_and_port()
        endpoint = f"http://{host}:{bound}"
        yield endpoint, _create_key(_kms_client(boto3, endpoint))
    finally:
        server.stop()


def _create_key(kms: Any) -> str:
    return str(kms.create_key(Description="privacy-gateway benchmark")["KeyMetadata"]["KeyId"])


def _kms_client(boto3: Any, endpoint: str) -> Any:
    return boto3.client("kms", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106


def naive_per_record(records_by_schema: dict[str, list[dict[str, Any]]], kms_endpoint: str,
                     key_id: str | None = None) -> Result:
    """JSON in, JSON out; per record: json.loads, a KMS GenerateDataKey call, a fresh AESGCM, hmac.new
    per token, AES-256-GCM per encrypted field (JSON of the value, random nonce, field path as
    associated data), the wrapped data key carried in the record, json.dumps.

    Without `key_id`, a KMS key is created first (outside the clock).
    """
    import boto3
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    kms = _kms_client(boto3, kms_endpoint)  # one client, as anyone would
    if key_id is None:
        key_id = _create_key(kms)
    inputs = {name: [json.dumps(r).encode() for r in records] for name, records in records_by_schema.items()}
    rplans = {name: plan_for(name).record for name in records_by_schema}

    def tokenize(value: str, fp: FieldPlan) -> str:
        digest = hmac.new(_TOKEN_KEYS[fp.operator.domain], value.encode("utf-8"), hashlib.sha256).digest()
        return "tok_" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def one(blob: bytes, rplan: RecordPlan) -> bytes:
        record = json.loads(blob)
        data_key = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")
        aead = AESGCM(data_key["Plaintext"])

        def encrypt(value: Any, fp: FieldPlan) -> str:
            plaintext = value.encode("utf-8") if isinstance(value, str) else json.dumps(value).encode("utf-8")
            nonce = os.urandom(12)
            return base64.b64encode(nonce + aead.encrypt(nonce, plaintext, fp.path.encode())).decode("ascii")

        out = _walk(record, rplan, tokenize, encrypt)
        out["encrypted_data_key"] = base64.b64encode(data_key["CiphertextBlob"]).decode("ascii")
        return json.dumps(out).encode("utf-8")

    return _run("naive", records_by_schema, inputs, lambda blob, name: one(blob, rplans[name]))


# ---- 2. Confluent client-side field-level encryption -------------------------------------------
def csfle_schema(plan: Plan) -> dict[str, Any]:
    """The gateway's sanitized schema as a CSFLE producer would write it: dropped fields absent,
    token fields strings, encrypted fields tagged PII, strings left strings (CSFLE encrypts them to
    base64 text) and other types as bytes (CSFLE encrypts only strings and bytes)."""
    by_name: dict[str, RecordPlan] = {}

    def index(rp: RecordPlan) -> None:
        namespace, _, name = rp.fullname.rpartition(".")
        by_name[f"{namespace}.sanitized.{name}" if namespace else f"sanitized.{name}"] = rp
        for fp in rp.fields:
            shape = fp.shape
            while shape is not None:
                if shape.record is not None:
                    index(shape.record)
                shape = shape.inner

    def tag(node: Any) -> None:
        if isinstance(node, list):
            for branch in node:
                tag(branch)
        elif isinstance(node, dict):
            if node.get("type") == "record" and node.get("name") in by_name:
                fields = {fp.name: fp for fp in by_name[node["name"]].fields}
                for field in node["fields"]:
                    fp = fields[field["name"]]
                    if fp.action == "encrypt":
                        field["confluent:tags"] = [PII_TAG]
                        if fp.operator.plaintext_schema == "string":
                            field["type"] = ["null", "string"] if fp.nullable else "string"
                    else:
                        tag(field["type"])
            elif node.get("type") in ("array", "map"):
                tag(node.get("items", node.get("values")))

    index(plan.record)
    schema = json.loads(json.dumps(plan.sanitized_schema))
    tag(schema)
    return schema


def confluent_csfle(records_by_schema: dict[str, list[dict[str, Any]]], from_avro: bool = False) -> Result:
    """confluent-kafka's AvroSerializer with an ENCRYPT rule (Tink AES-256-GCM, one DEK per subject
    from the in-process DEK registry, KEK from the local KMS driver) on the PII-tagged fields.

    CSFLE cannot tokenize and does not drop, so, to do the same work as the gateway, Python code in
    the timed loop builds the record the serializer gets: HMAC-SHA256 tokens (a keyed HMAC copied per
    token, the fast way), dropped fields left out, and non-string encrypted values (an int date, an
    array, a record) Avro-encoded to bytes, since the rule encrypts only strings and bytes. The
    serializer then encrypts every tagged field and writes Confluent-framed Avro, one call per record.
    By default the input is the producer's dict (no decode: cheaper than the gateway's work); with
    `from_avro`, each record is first decoded from bare Avro with fastavro, as the gateway does.
    """
    from confluent_kafka.schema_registry import (
        Rule,
        RuleKind,
        RuleMode,
        RuleParams,
        RuleSet,
        Schema,
        SchemaRegistryClient,
    )
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.schema_registry.rule_registry import RuleRegistry
    from confluent_kafka.schema_registry.rules.encryption.encrypt_executor import FieldEncryptionExecutor
    from confluent_kafka.schema_registry.rules.encryption.localkms.local_driver import LocalKmsDriver
    from confluent_kafka.serialization import MessageField, SerializationContext

    LocalKmsDriver.register()
    rules = RuleRegistry()  # private: no global state shared between runs
    rules.register_executor(FieldEncryptionExecutor())
    registry = SchemaRegistryClient.new_client({"url": "mock://"})  # in-process schema and DEK registries
    rule = Rule("encrypt-pii", None, RuleKind.TRANSFORM, RuleMode.WRITEREAD, "ENCRYPT", [PII_TAG],
                RuleParams({"encrypt.kek.name": "bench-kek", "encrypt.kms.type": "local-kms",
                            "encrypt.kms.key.id": "bench-key"}), None, None, "ERROR,NONE", False)

    macs = {d: hmac.new(k, digestmod=hashlib.sha256) for d, k in _TOKEN_KEYS.items()}

    def tokenize(value: str, fp: FieldPlan) -> str:
        mac = macs[fp.operator.domain].copy()
        mac.update(value.encode("utf-8"))
        return "tok_" + base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode("ascii")

    def prepare(value: Any, fp: FieldPlan) -> Any:
        return value if fp.operator.plaintext_schema == "string" else avro_bytes(fp.operator.plaintext_schema, value)

    stages, inputs = {}, {}
    for name, records in records_by_schema.items():
        plan = plan_for(name)
        schema_str = json.dumps(csfle_schema(plan))
        registry.register_schema(f"{plan.sanitized_topic}-value",
                                 Schema(schema_str, "AVRO", rule_set=RuleSet(None, [rule])))
        serializer = AvroSerializer(registry, schema_str, conf={"auto.register.schemas": False,
                                                                "use.latest.version": True},
                                    rule_conf={"secret": _CSFLE_SECRET}, rule_registry=rules)
        ctx = SerializationContext(plan.sanitized_topic, MessageField.VALUE)
        reader = fastavro.parse_schema(strip_logical_types(plan.schema.raw))
        stages[name] = (plan.record, serializer, ctx, reader)
        inputs[name] = [avro_bytes(reader, r) for r in records] if from_avro else records

    def one(item: Any, name: str) -> bytes:
        rplan, serializer, ctx, reader = stages[name]
        record = fastavro.schemaless_reader(io.BytesIO(item), reader, None) if from_avro else item
        return serializer(_walk(record, rplan, tokenize, prepare), ctx)

    return _run("confluent_csfle", records_by_schema, inputs, one)


# ---- 3. Presidio anonymizer operators ----------------------------------------------------------
def presidio(records_by_schema: dict[str, list[dict[str, Any]]]) -> Result:
    """Presidio's AnonymizerEngine, one `anonymize` call per field with the field value as the text
    and one RecognizerResult covering it (no analyzer): "hash" (sha256, fixed salt) for token
    fields, "encrypt" (Presidio's AES-CBC with a fixed 256-bit key) for encrypted fields (non-string
    values as their JSON text), "replace" for dropped fields. Output: the record as JSON (orjson)."""
    from presidio_anonymizer import AnonymizerEngine
    from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

    engine = AnonymizerEngine()
    operators = {"TOKEN": OperatorConfig("hash", {"hash_type": "sha256", "salt": _PRESIDIO_SALT}),
                 "SECRET": OperatorConfig("encrypt", {"key": _PRESIDIO_KEY}),
                 "DROPPED": OperatorConfig("replace", {"new_value": "<dropped>"})}

    def run(entity: str, text: str) -> str:
        return engine.anonymize(text, [RecognizerResult(entity, 0, len(text), 1.0)], operators).text

    def tokenize(value: str, fp: FieldPlan) -> str:
        return run("TOKEN", value)

    def encrypt(value: Any, fp: FieldPlan) -> str:
        return run("SECRET", value if isinstance(value, str) else orjson.dumps(value).decode())

    def drop(value: Any, name: str) -> str:
        return run("DROPPED", value if isinstance(value, str) else orjson.dumps(value).decode())

    rplans = {name: plan_for(name).record for name in records_by_schema}
    return _run("presidio", records_by_schema, records_by_schema,
                lambda record, name: orjson.dumps(_walk(record, rplans[name], tokenize, encrypt, drop)))


# ---- command line ------------------------------------------------------------------------------
def run_all(events: int = 2000, seed: int = 7) -> dict[str, Result]:
    records = sample_records(events, seed)
    results: dict[str, Result] = {}
    with local_kms() as (endpoint, key_id):
        results["naive"] = naive_per_record(records, endpoint, key_id)
    results["confluent_csfle"] = confluent_csfle(records)
    results["confluent_csfle_from_avro"] = confluent_csfle(records, from_avro=True)
    results["presidio"] = presidio(records)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=2000, help="records per schema (default 2000)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    results = run_all(args.events, args.seed)
    schemas = list(next(iter(results.values()))["per_schema"])
    print(f"{'approach':<26} {'events':>6} {'events/s':>9} {'us/event':>9} {'cpu us/ev':>9} {'thread cpu':>10} "
          f"{'B/event':>7}  " + "  ".join(f"{name + ' us/ev':>20}" for name in schemas))
    for name, r in results.items():
        n = r["events"]
        per = "  ".join(f"{r['per_schema'][s]['seconds'] / max(r['per_schema'][s]['events'], 1) * 1e6:>20.1f}"
                        for s in schemas)
        print(f"{name:<26} {n:>6} {n / r['seconds']:>9,.0f} {r['seconds'] / n * 1e6:>9.1f} "
              f"{r['cpu_s'] / n * 1e6:>9.1f} {r['thread_cpu_s'] / n * 1e6:>10.1f} {r['bytes_out'] / n:>7.0f}  {per}")

if __name__ == "__main__":
    main()
