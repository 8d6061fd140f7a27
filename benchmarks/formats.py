"""The per-event cost of each schema format family, beside Avro, in one process.

    python -m benchmarks.formats [--events 5000] [--reps 5]

One policy, written once as a JSON Schema (examples/schemas/json/signups.schema.json), once as the
Avro record it converts to and once as a .proto with the same annotations as options (the same fields,
annotations and operators), so the rows differ only in the format: Confluent-framed Avro (fastavro
decode, the generated writer), Confluent-framed JSON validated against the JSON Schema (orjson,
jsonschema, orjson) and Confluent-framed Protobuf (message indexes; the protobuf runtime's upb parser,
the record built from the message, the sanitized message written back). Each row is
TopicStage.transform, the whole per-event work before the audit entry: decode and validate, sanitize
(tokens, AES-GCM), encode. CPU seconds of this process, timed in pairs over the same chunks
(benchmarks.microbench.paired: the format under test on one side, Avro on the other), so the host's
changing speed hits both sides of a ratio; medians over the pairs.
`run(events, reps) -> dict` returns the figures (µs per event per format, and each format's ratio to Avro).
Another family adds its row in `_stages` (a plan of the same policy in its format, and its framed events).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from google.protobuf import message_factory

from benchmarks.microbench import paired, transform_fn
from gateway.app import tokenizers
from gateway.core.codec.encoding import frame_confluent
from gateway.core.codec.formats import load_schema_file
from gateway.core.codec.protobuf import load_proto
from gateway.core.codec.writer import avro_bytes
from gateway.core.pipeline import Pipeline
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.plan import Plan
from gateway.keys.keyring import Keyring
from gateway.settings import GatewayConfig

REPO = Path(__file__).resolve().parents[1]
JSON_SCHEMA = REPO / "examples" / "schemas" / "json" / "signups.schema.json"
RAW_ID, SANITIZED_ID = 1, 2


def _events(n: int) -> list[dict[str, Any]]:
    return [{"signup_id": f"s-{i}", "user_id": f"user-{i % 997}", "email": f"person{i}@example.org",
             "full_name": f"Person Number {i}", "phone": None if i % 3 == 0 else f"+4477009{i % 100000:05d}",
             "age": 18 + i % 60, "country": "GB", "plan": ("free", "pro", "team")[i % 3],
             "address": {"street": f"{i} High Street", "city": "London", "postcode": "E14 5AB"},
             "referrer_url": "https://example.org/", "marketing_opt_in": i % 2 == 0} for i in range(n)]


def _plans(workdir: Path) -> dict[str, Plan]:
    """The JSON Schema policy and the same policy as its Avro record, each with static registry ids."""
    document = orjson.loads(JSON_SCHEMA.read_bytes())
    document["privacy"].update(schema_id=RAW_ID, sanitized_schema_id=SANITIZED_ID,
                               source_topic="bench.json", sanitized_topic="bench.json.sanitized")
    (workdir / "signups.schema.json").write_bytes(orjson.dumps(document))
    json_plan = compile_plan(load_schema_file(workdir / "signups.schema.json"))
    avro = dict(json_plan.schema.raw)
    avro["privacy"] = dict(document["privacy"], source_topic="bench.avro", sanitized_topic="bench.avro.sanitized")
    (workdir / "signups.avsc").write_bytes(orjson.dumps(avro))
    (workdir / "signups.proto").write_text(_proto_text(avro, dict(document["privacy"], source_topic="bench.proto",
                                                                  sanitized_topic="bench.proto.sanitized")))
    return {"avro": compile_plan(load_schema_file(workdir / "signups.avsc")), "json_schema": json_plan,
            "protobuf": compile_plan(load_schema_file(workdir / "signups.proto"))}


_PROTO_TYPES = {"string": "string", "long": "int64", "int": "int32", "double": "double", "float": "float",
                "boolean": "bool", "bytes": "bytes"}


def _option(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _proto_text(record: dict[str, Any], privacy: dict[str, Any]) -> str:
    """The same policy as a .proto (gateway/privacy.proto's options), from the Avro record of the JSON
    Schema: each field numbered in order, a nullable scalar `optional`, a nested record a message."""
    def message(node: dict[str, Any], indent: str, record_privacy: dict[str, Any] | None) -> list[str]:
        name = str(node["name"]).rsplit(".", 1)[-1]
        lines = [f"{indent}message {name} {{"]
        if record_privacy is not None:
            lines.append(f"{indent}  option (gateway.record_privacy) = {_option(record_privacy)};")
        for number, field in enumerate(node["fields"], start=1):
            ftype = field["type"]
            nullable = isinstance(ftype, list)
            inner = [t for t in ftype if t != "null"][0] if nullable else ftype
            option = f" [(gateway.privacy) = {_option(field['privacy'])}]" if "privacy" in field else ""
            if isinstance(inner, dict) and inner.get("type") == "record":
                lines += message(inner, indent + "  ", None)
                lines.append(f"{indent}  {str(inner['name']).rsplit('.', 1)[-1]} {field['name']} = {number}{option};")
            elif isinstance(inner, dict) and inner.get("type") == "enum":  # its symbols are the value names
                enum_name = str(inner["name"]).rsplit(".", 1)[-1]
                lines += [f"{indent}  enum {enum_name} {{",
                          *(f"{indent}    {symbol} = {i};" for i, symbol in enumerate(inner["symbols"])),
                          f"{indent}  }}"]
                label = "optional " if nullable else ""
                lines.append(f"{indent}  {label}{enum_name} {field['name']} = {number}{option};")
            else:
                label = "optional " if nullable else ""
                lines.append(f"{indent}  {label}{_PROTO_TYPES[inner]} {field['name']} = {number}{option};")
        return [*lines, f"{indent}}}"]

    namespace = str(record["name"]).rpartition(".")[0]
    head = ['syntax = "proto3";', f"package {namespace};" if namespace else "", 'import "gateway/privacy.proto";']
    return "\n".join([*head, *message(record, "", privacy)]) + "\n"


def _message(cls: Any, values: dict[str, Any]) -> Any:
    """A Protobuf message of `cls` holding the event (None: unset)."""
    message = cls()
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, dict):
            getattr(message, name).CopyFrom(_message(type(getattr(message, name)), value))
        elif isinstance(value, str) and message.DESCRIPTOR.fields_by_name[name].enum_type is not None:
            setattr(message, name, message.DESCRIPTOR.fields_by_name[name].enum_type.values_by_name[value].number)
        else:
            setattr(message, name, value)
    return message


def _stages(plans: dict[str, Plan], events: list[dict[str, Any]],
            workdir: Path) -> dict[str, tuple[Callable[[bytes], Any], list[bytes]]]:
    """Each format's transform and its events (the same records), framed as its producers frame them."""
    config = GatewayConfig(keyring=workdir / "keyring.json", instance_id="bench-formats")
    keyring = Keyring.open(config.keyring)
    pipeline = Pipeline(list(plans.values()), keyring, config, 1, tokenizers(keyring, list(plans.values())))
    avro_parsed = plans["avro"].schema.parsed
    values = {"avro": [frame_confluent(RAW_ID, avro_bytes(avro_parsed, e)) for e in events],
              "json_schema": [frame_confluent(RAW_ID, orjson.dumps(e)) for e in events]}
    proto_class = message_factory.GetMessageClass(load_proto(plans["protobuf"].schema.path).root)
    # Confluent framing of Protobuf: the message-index path [0] (one byte 0) before the message
    values["protobuf"] = [frame_confluent(RAW_ID, b"\x00" + _message(proto_class, e).SerializeToString())
                          for e in events]
    return {name: (transform_fn(pipeline.stages[plan.source_topic], pipeline.max_output_bytes), values[name])
            for name, plan in plans.items()}


def run(events: int = 5000, reps: int = 5, chunk: int = 200) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="gateway-formats-"))
    stages = _stages(_plans(workdir), _events(events), workdir)
    avro, avro_values = stages["avro"]
    for fn, values in stages.values():  # warm-up, and every event must transform
        for value in values[:500]:
            fn(value)
    out: dict[str, Any] = {"events": events, "reps": reps}
    for name, (fn, values) in stages.items():
        if name == "avro":
            continue
        # Avro on the "floor" side of each pair, the format on the other, over the same records (by index,
        # so both sides pay the same indexing)
        pairs = {name: (lambda i, a=avro_values: avro(a[i]), lambda i, f=fn, v=values: f(v[i]),
                        list(range(len(values))))}
        seconds, ratios = paired(pairs, reps, chunk)
        out[name] = {"us_per_event": round(statistics.median(seconds[f"transforms {name}"]) * 1e6, 1),
                     "vs_avro": round(statistics.median(ratios[name]), 2)}
        out["avro"] = {"us_per_event": round(statistics.median(seconds[f"floor {name}"]) * 1e6, 1), "vs_avro": 1.0}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    figures = run(args.events, args.reps)
    print(f"{'format':<14}{'us/event':>10}{'vs Avro':>10}")
    for name, row in figures.items():
        if isinstance(row, dict):
            print(f"{name:<14}{row['us_per_event']:>10}{row['vs_avro']:>9}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
