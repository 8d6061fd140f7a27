"""Privacy annotations in an Avro schema -> a compiled plan and the derived sanitized schema.

Record level: ``"privacy": {"subject": FIELD, "source_topic": T, "sanitized_topic": T, ...}``.
Field level: an action, ``"name"`` or ``{"name": {options}}``: one operator of gateway/core/operators/
(keep, drop, tokenize, encrypt, mask, generalize, shift_date, redact). Beside it, an optional
``"quality"`` key holds the field's data-quality rules; ``"quality"`` in the record-level privacy
settings holds the checks across fields, duplicates, freshness and the re-identification risk
(gateway/core/quality/).
Unannotated fields are dropped (privacy by default). A kept field whose type holds records
descends into them; their fields follow their own annotations.

Compilation happens once at start-up; every problem is collected so `gateway policy lint`
can list them all, and start-up fails naming schema, field and problem.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import fastavro
import orjson
from fastavro.schema import expand_schema

from gateway.consent.purposes import PurposeSpec, parse_basis, parse_purposes
from gateway.core import operators
from gateway.core.avro import PRIMITIVES, lookup, named_types
from gateway.core.codec.encoding import Encoding, SchemaFormat, input_modes, output_modes
from gateway.core.codec.evolution import WriterSchema, fingerprint, resolve_writer
from gateway.core.codec.raw import (
    SchemaFile,
    strip_logical_types,
)
from gateway.core.operators.base import FieldContext, FieldPlan, Operator, OperatorError, RecordPlan, Shape
from gateway.core.policy.key_headers import compile_key_headers
from gateway.core.policy.plan import Plan, Problem, Purpose
from gateway.core.policy.timestamp import KEEP, PATH, TimestampMode, compile_timestamp
from gateway.core.quality.spec import compile_quality
from gateway.dp.declarations import budget_key, compile_aggregates, compile_budget, kept_top_level
from gateway.errors import PolicyError
from gateway.keys.period_keys import retention_problem
from gateway.values import TOPIC_NAME

RECORD_SETTINGS = {"subject", "source_topic", "sanitized_topic", "input", "output", "schema_id",
                   "sanitized_schema_id", "event_id", "aggregates", "leak_sentinel", "budget", "quality",
                   "writer_schemas", "purposes", "retention_days", "timestamp", "key", "headers", "basis"}
LEAK_SENTINEL_MODES = ("observe", "enforce", "off")
UNANNOTATED = "no privacy annotation"  # the warning's opening for a field dropped by default (the DPIA finds it)


def policy_hash(raw_schema: dict[str, Any]) -> str:
    canonical = orjson.dumps(raw_schema, option=orjson.OPT_SORT_KEYS)
    return "sha256:" + hashlib.sha256(canonical).hexdigest()[:32]


def _hashed(schema: SchemaFile) -> dict[str, Any]:
    """What a policy's hash covers: the policy model, and another family's own schema text (its constraints,
    which validate events, are not all in the model)."""
    return schema.raw if schema.native is None else {**schema.raw, "native": schema.native}


# ---- compiler --------------------------------------------------------------------------------
class _Compiler:
    def __init__(self, schema: SchemaFile, view: str = "sanitized") -> None:
        self.view = view  # the namespace part of derived record names: "sanitized", or a purpose's name
        self.schema = schema
        self.label = str(schema.path)
        self.problems: list[Problem] = []
        self.domains: set[str] = set()
        self.actions: dict[str, str] = {}
        self.per_subject_paths: list[str] = []
        self.subject_paths: list[str] = []  # fields whose operator needs the event's subject
        self.failed: set[str] = set()  # fields whose annotation is an error (already reported)
        self.key_uses: dict[str, dict[str, str]] = {}  # domain -> what its key makes ("tokens", "shift_date") -> path
        self.normalizers: dict[str, dict[str | None, str]] = {}  # token domain -> normalizer spec -> first path
        self.emitted_names: set[str] = set()
        self.in_progress: set[str] = set()
        self.expanded = expand_schema(schema.raw)
        self.retention_days: int | None = None  # the record-level retention of encrypted fields (operators/encrypt.py)
        self.operators: list[tuple[str, Operator]] = []  # every published field's (path, operator), nested too

    def error(self, where: str, message: str) -> None:
        self.problems.append(Problem("error", self.label, where, message))

    def warn(self, where: str, message: str) -> None:
        self.problems.append(Problem("warning", self.label, where, message))

    # Each walk returns (plan piece, sanitized schema piece).
    def record(self, node: dict[str, Any], path: str) -> tuple[RecordPlan, Any]:
        """Compile a record at `path`. A named type used twice gets a plan per use (its field paths
        bind ciphertexts), but is defined once in the sanitized schema and referenced after."""
        fullname = node["name"]
        new_name = _sanitized_name(fullname, self.view)
        if fullname in self.in_progress:
            self.error(path.rstrip(".") or "(record)", f"recursive record type '{fullname}' is not supported")
            return RecordPlan(fullname, (), ()), new_name
        self.in_progress.add(fullname)
        plans: list[FieldPlan] = []
        dropped: list[str] = []
        out_fields: list[dict[str, Any]] = []
        for f in node["fields"]:
            fpath = f"{path}{f['name']}"
            compiled = self.field(f, fpath)
            if compiled is None:
                dropped.append(f["name"])
                continue
            plan, out_field = compiled
            plans.append(plan)
            out_fields.append(out_field)
        self.in_progress.discard(fullname)
        plan = RecordPlan(fullname, tuple(plans), tuple(dropped))
        if fullname in self.emitted_names:
            return plan, new_name
        self.emitted_names.add(fullname)
        out = {"type": "record", "name": new_name, "fields": out_fields}
        if node.get("doc"):
            out["doc"] = node["doc"]
        return plan, out

    def field(self, f: dict[str, Any], path: str) -> tuple[FieldPlan, dict[str, Any]] | None:
        """Compile one field through its operator (gateway/core/operators/); None if it is dropped."""
        if "quality" in f and ("." in path or "[" in path or "{" in path):
            self.error(path, "quality rules are supported on top-level fields only (a nested field's rule would "
                             "never run)")
        annotation = f.get("privacy")
        if annotation is None:
            self.warn(path, f"{UNANNOTATED}: the field is dropped (annotate it \"keep\", "
                            "{\"tokenize\": {\"domain\": D}}, \"encrypt\", another action, or \"drop\" to say so)")
            self.actions[path] = "drop"
            return None
        parsed = self._parse_action(annotation, path)
        if parsed is None:
            return None
        operator_class, options = parsed
        nullable, inner = _split_nullable(f["type"])
        try:
            resolved = self._expanded_inner(path)
        except (StopIteration, KeyError, TypeError):  # a path through a union of records: as written
            resolved = inner
        ctx = FieldContext(self.label, path, f, nullable, inner, resolved, self.keep_type, self.retention_days)
        try:
            operator = operator_class.compile(options, ctx)
        except OperatorError as exc:
            self.error(path, str(exc))
            self.failed.add(path)
            return None
        self.actions[path] = operator.label
        if operator.drops:
            return None
        self.operators.append((path, operator))
        self.adopt(path, operator)
        return FieldPlan(f["name"], path, operator, nullable), operator.sanitized_field(ctx)

    def adopt(self, path: str, operator: Operator) -> None:
        """What the plan records of a published operator: its token domains, normalizers and key uses, and
        whether it needs the subject (a field's, the record key's or a header's)."""
        self.domains |= operator.token_domains
        for domain, spec in operator.token_normalizers.items():
            self.normalizers.setdefault(domain, {}).setdefault(spec, path)
        for domain in operator.token_domains:
            use = "tokens" if domain in operator.token_normalizers else operator.name
            self.key_uses.setdefault(domain, {}).setdefault(use, path)
        if operator.per_subject_key:
            self.per_subject_paths.append(path)
        if operator.needs_subject:
            self.subject_paths.append(path)

    def _expanded_inner(self, path: str) -> Any:
        """The field's type with every named type inlined (so it parses on its own)."""
        node: Any = self.expanded
        for part in path.split("."):
            node = _strip_containers(node)
            node = next(f for f in node["fields"] if f["name"] == part.rstrip("[]{}"))["type"]
        return _split_nullable(node)[1]

    def keep_type(self, ftype: Any, path: str) -> tuple[Shape | None, Any]:
        """Sanitized type of a kept field, and the shape to reach records inside it (if any)."""
        if isinstance(ftype, list):
            record_branches = [t for t in ftype if _is_record(t, self.schema.parsed)]
            if len(record_branches) > 1:
                self.error(path, "a union of several record types cannot be kept field by field; "
                                 "use encrypt or drop")
            shape = None
            out: list[Any] = []
            for branch in ftype:
                branch_shape, branch_out = self.keep_type(branch, path)
                shape = shape or branch_shape
                out.append(branch_out)
            return shape, out
        if isinstance(ftype, str):
            if ftype in PRIMITIVES:
                return None, ftype
            named = lookup(ftype, named_types(self.schema.parsed))
            if named is None:
                return None, ftype
            if named["type"] == "record":
                plan, out = self.record(named, path + ".")
                return Shape("record", record=plan), out
            return None, self._named_passthrough(named)
        kind = ftype.get("type")
        if kind == "record":
            plan, out = self.record(ftype, path + ".")
            return Shape("record", record=plan), out
        if kind == "array":
            inner_shape, items = self.keep_type(ftype["items"], path + "[]")
            out = dict(ftype, items=items)
            return (Shape("array", inner=inner_shape) if inner_shape else None), out
        if kind == "map":
            inner_shape, values = self.keep_type(ftype["values"], path + "{}")
            out = dict(ftype, values=values)
            return (Shape("map", inner=inner_shape) if inner_shape else None), out
        if kind in ("enum", "fixed"):
            return None, self._named_passthrough(ftype)
        return None, {k: v for k, v in ftype.items() if k != "privacy"}

    def _named_passthrough(self, named: dict[str, Any]) -> Any:
        if named["name"] in self.emitted_names:
            return named["name"]
        self.emitted_names.add(named["name"])
        return {k: v for k, v in named.items() if k != "privacy"}

    def _parse_action(self, annotation: Any, path: str) -> tuple[type[Operator], dict[str, Any]] | None:
        """`"name"` or `{"name": {options}}` -> (operator class, options); None (an error) otherwise."""
        known = operators.registry()
        if isinstance(annotation, str):
            action, options = annotation, {}
        elif isinstance(annotation, dict) and len(annotation) == 1:
            (action, options), = annotation.items()
            if options is None:
                options = {}
            if not isinstance(options, dict):
                self.error(path, f"options of '{action}' must be an object")
                self.failed.add(path)
                return None
        else:
            self.error(path, "privacy annotation must be an action name or {\"action\": {options}}")
            self.failed.add(path)
            return None
        if action not in known:
            self.error(path, f"unknown action '{action}' (expected one of {', '.join(sorted(known))})")
            self.failed.add(path)
            return None
        return known[action], options


def _sanitized_name(fullname: str, view: str = "sanitized") -> str:
    namespace, _, name = fullname.rpartition(".")
    return f"{namespace}.{view}.{name}" if namespace else f"{view}.{name}"


def _split_nullable(ftype: Any) -> tuple[bool, Any]:
    if isinstance(ftype, list) and "null" in ftype:
        rest = [t for t in ftype if t != "null"]
        return True, rest[0] if len(rest) == 1 else rest
    return False, ftype


def _strip_containers(node: Any) -> Any:
    while True:
        _, node = _split_nullable(node)
        if isinstance(node, list):  # a union: descend into its (single) record branch
            records = [t for t in node if isinstance(t, dict) and t.get("type") == "record"]
            if len(records) != 1:
                return node
            node = records[0]
        elif isinstance(node, dict) and node.get("type") == "array":
            node = node["items"]
        elif isinstance(node, dict) and node.get("type") == "map":
            node = node["values"]
        else:
            return node


def _is_record(t: Any, parsed: dict[str, Any]) -> bool:
    if isinstance(t, dict):
        return t.get("type") == "record"
    if isinstance(t, str):
        named = lookup(t, named_types(parsed))
        return bool(named and named["type"] == "record")
    return False


def compile_plan(schema: SchemaFile) -> Plan:
    """Compile one schema's annotations; raise PolicyError listing every error."""
    plan, problems = compile_schema(schema)
    errors = [p for p in problems if p.severity == "error"]
    if errors or plan is None:
        raise PolicyError("invalid privacy policy:\n  " + "\n  ".join(str(p) for p in errors))
    return plan


def compile_schema(schema: SchemaFile, view: str = "sanitized") -> tuple[Plan | None, list[Problem]]:
    c = _Compiler(schema, view)
    settings = schema.privacy
    if settings is None:
        c.error("(record)", "no record-level \"privacy\" block: add at least {\"sanitized_topic\": ...}")
        return None, c.problems
    if not isinstance(settings, dict):
        c.error("(record)", "record-level \"privacy\" must be an object")
        return None, c.problems
    if "quality" in schema.raw:
        c.error("(record)", "the record-level \"quality\" block belongs in the privacy settings "
                            "(\"privacy\": {..., \"quality\": {...}}); a field's rules sit beside its annotation")
    for key in sorted(set(settings) - RECORD_SETTINGS):
        c.error("(record)", f"unknown privacy setting '{key}' (known: {', '.join(sorted(RECORD_SETTINGS))})")
    source_topic = settings.get("source_topic", schema.fullname)
    sanitized_topic = settings.get("sanitized_topic", f"{source_topic}.sanitized")
    for key, topic in (("source_topic", source_topic), ("sanitized_topic", sanitized_topic)):
        if not isinstance(topic, str) or not TOPIC_NAME.match(topic):
            c.error("(record)", f"{key} '{topic}' is not a valid Kafka topic name")
    if source_topic == sanitized_topic:
        c.error("(record)", "sanitized_topic must differ from source_topic")
    input_mode = settings.get("input", "auto")
    if input_mode not in input_modes(schema.format):
        c.error("(record)", f"input '{input_mode}' is not one of {', '.join(input_modes(schema.format))}")
    basis = parse_basis(settings.get("basis"), c.error)
    leak_sentinel = settings.get("leak_sentinel", "observe")
    if leak_sentinel not in LEAK_SENTINEL_MODES:
        c.error("(record)", f"leak_sentinel '{leak_sentinel}' is not one of {', '.join(LEAK_SENTINEL_MODES)}")
    output = settings.get("output", "same")
    if output not in output_modes(schema.format):
        c.error("(record)", f"output '{output}' is not one of {', '.join(output_modes(schema.format))}")
    elif output == "same" and "output" in settings and input_mode == "auto":
        # only when written out: the default (same, auto) is documented in docs/policy/writing.md
        c.warn("(record)", "output 'same' with input 'auto': each sanitized record takes its event's encoding, "
                           "so the sanitized topic mixes Avro and JSON records when producers do; set output to "
                           "'avro', 'confluent' or 'json' to give consumers one encoding")
    schema_id = settings.get("schema_id")
    sanitized_schema_id = settings.get("sanitized_schema_id")
    # "registry": the worker resolves the id at start-up (gateway/runtime/registry.py)
    schema_id_from_registry = schema_id == "registry"
    sanitized_from_registry = sanitized_schema_id == "registry"
    schema_id = None if schema_id_from_registry else schema_id
    sanitized_schema_id = None if sanitized_from_registry else sanitized_schema_id
    for key, value in (("schema_id", schema_id), ("sanitized_schema_id", sanitized_schema_id)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            c.error("(record)", f"{key} must be a non-negative integer, or \"registry\" (resolved from the "
                                "schema registry at start-up)")
    if (schema.format is not SchemaFormat.AVRO and view == "sanitized" and schema_id is None
            and not schema_id_from_registry):  # its events are always framed with a registry id
        c.error("(record)", f"a {schema.format} schema's events are Confluent-framed: set schema_id (the registry "
                            "id producers frame events with, or \"registry\" to look it up at start-up)")
    if input_mode == Encoding.CONFLUENT and schema_id is None and not schema_id_from_registry:
        c.error("(record)", "input 'confluent' needs schema_id (the registry id producers frame events with, "
                            "or \"registry\" to look it up at start-up)")
    if ((schema_id is not None or schema_id_from_registry) and output in ("same", Encoding.CONFLUENT)
            and sanitized_schema_id is None and not sanitized_from_registry):
        c.error("(record)", "schema_id is set, so Confluent-framed output needs sanitized_schema_id "
                            "(an id, or \"registry\" to register the sanitized schema at start-up; or set output "
                            "to 'avro' or 'json')")

    if schema.format is not SchemaFormat.AVRO and settings.get("writer_schemas") is not None:
        c.error("(record)", f"writer_schemas names Avro schema files; a {schema.format} schema's other versions "
                            "come from the registry (\"schema_id\": \"registry\")")
    by_fingerprint, by_id = _writer_schemas(schema, settings.get("writer_schemas"), c.error)
    purpose_specs = parse_purposes(settings.get("purposes"), c.error)
    if "retention_days" in settings:  # every encrypted field without its own: keys erased by period
        problem = retention_problem(settings["retention_days"])
        if problem is not None:
            c.error("(record)", problem)
        else:
            c.retention_days = settings["retention_days"]
    record_plan, sanitized = c.record(schema.parsed, "")
    sanitized = dict(sanitized, doc=f"Sanitized by privacy-gateway from {schema.fullname}")

    subject = settings.get("subject")
    # the raw record's key and headers (core/policy/key_headers.py): dropped unless named
    key_headers = compile_key_headers(settings.get("key"), settings.get("headers"), c.label, subject,
                                      c.retention_days, c.adopt, c.error)
    c.actions.update(key_headers.actions)
    subject_tokenized = False
    if subject is not None:
        top = {f.name: f for f in record_plan.fields}
        raw_names = {f["name"] for f in schema.raw["fields"]}
        if subject not in raw_names:
            c.error("(record)", f"subject field '{subject}' does not exist (top-level fields only)")
        elif subject in c.failed:
            pass  # its own error says why
        elif subject not in top:
            c.error(subject, "the subject field must be kept or tokenized (it binds ciphertexts and keys "
                             "records), but it is dropped")
        elif top[subject].shape is not None:
            c.error(subject, "the subject field must be a string or a number, not a record")
        elif not top[subject].operator.can_be_subject:
            c.error(subject, f"the subject field must be kept or tokenized (its action is '{top[subject].action}')")
        else:
            subject_tokenized = bool(top[subject].operator.token_domains)
    subject_domain = None
    if subject_tokenized:
        (subject_domain,) = top[subject].operator.token_domains
    for path in c.subject_paths if subject is None else ():
        c.error(path, "this action derives its output from the event's subject: name the subject field in the "
                      "record's privacy settings (\"subject\": FIELD)")
    for path in c.per_subject_paths if not subject_tokenized else ():
        c.error(path, "per_subject encryption needs a tokenized subject field (\"subject\" in the record's "
                      "privacy settings, annotated {\"tokenize\": {\"domain\": D}}): subject keys are stored "
                      "under the subject's token, never the subject in clear")
    event_id = settings.get("event_id")
    if event_id is None:
        event_id = next((f.name for f in record_plan.fields if f.name == "event_id" and f.operator.in_clear), None)
    elif not any(f.name == event_id and f.operator.can_be_subject for f in record_plan.fields):
        c.error("(record)", f"event_id field '{event_id}' must be a kept or tokenized top-level field")

    risk_declared = isinstance(settings.get("quality"), dict) and settings["quality"].get("risk") is not None
    timestamp = compile_timestamp(settings.get("timestamp"), c.label, c.operators, subject, risk_declared, c.error,
                                  c.warn)
    if timestamp is not None and timestamp.shift is not None:  # its key is the domain's, for shift_date only
        c.domains.add(timestamp.shift.domain)
        c.key_uses.setdefault(timestamp.shift.domain, {}).setdefault("shift_date", PATH)
    quality = compile_quality(schema.raw["fields"], settings.get("quality"),
                              named_types(schema.parsed), event_id,
                              {f.name: f.operator.deterministic for f in record_plan.fields}, c.error)
    if quality is not None and quality.risk is not None and timestamp is not None and timestamp.quasi_identifier:
        # the published timestamp follows the event's time, which a reader may know: a quasi-identifier
        quality = replace(quality, risk=replace(quality.risk, timestamp=True))
    aggregates = compile_aggregates(
        settings.get("aggregates"), schema=schema.fullname, source_topic=source_topic,
        sanitized_topic=sanitized_topic, subject=subject,
        kept=kept_top_level(schema.raw["fields"], {f.name for f in record_plan.fields if f.operator.in_clear}),
        named=named_types(schema.parsed), error=c.error)
    aggregates = compile_budget(settings.get("budget"), aggregates, error=c.error, warn=c.warn,
                                key=budget_key(subject_domain, source_topic))
    if timestamp is not None and timestamp.mode is TimestampMode.SHIFT:
        for spec in aggregates:
            if spec.time_field is None:
                c.error("(record)", f"aggregate '{spec.name}' windows by the sanitized record's timestamp, which is "
                                    "shifted per subject (\"timestamp\"): its windows would mix days; give it a "
                                    "time_field (a kept timestamp field), or declare another \"timestamp\"")
    for domain, specs in sorted(c.normalizers.items()):
        if len(specs) > 1:
            c.error("(record)", f"token domain '{domain}' is tokenized with different normalizers ("
                    + ", ".join(f"{path}: {spec or 'none'}" for spec, path in specs.items())
                    + "): one identifier would get several tokens; use one normalizer per domain")
    for domain, uses in sorted(c.key_uses.items()):
        if len(uses) > 1:
            c.error("(record)", f"domain '{domain}' is used for " + " and for ".join(
                f"{use} ({path})" for use, path in uses.items()) + ": a published output of one use could "
                "reveal the other's secret values (a shift_date offset from a token); give each its own domain")
    if purpose_specs and quality is not None and quality.risk is not None and quality.risk.mode == "enforce":
        c.error("(record)", "purposes cannot be combined with an enforced re-identification risk measure yet: the "
                            "held window withholds the sanitized records only; set the risk's mode to measure")
    purposes = _compile_purposes(schema, purpose_specs, subject, subject_tokenized, output, input_mode,
                                 event_id, (source_topic, sanitized_topic), c.error)
    if any(p.severity == "error" for p in c.problems):
        return None, c.problems
    try:
        fastavro.parse_schema(sanitized)  # the published form must be valid Avro
        sanitized_parsed = fastavro.parse_schema(strip_logical_types(sanitized))
    except Exception as exc:
        c.error("(record)", f"the derived sanitized schema is not valid Avro ({exc})")
        return None, c.problems
    plan = Plan(
        schema=schema, record=record_plan, source_topic=source_topic, sanitized_topic=sanitized_topic,
        dlq_topic=f"{source_topic}.dlq", subject_field=subject, subject_tokenized=subject_tokenized,
        event_id_field=event_id, input_mode=input_mode, output=output, schema_id=schema_id,
        sanitized_schema_id=sanitized_schema_id, sanitized_schema=sanitized,
        sanitized_parsed=sanitized_parsed, policy_hash=policy_hash(_hashed(schema)),
        field_actions=dict(c.actions), token_domains=frozenset(c.domains),
        warnings=tuple(p for p in c.problems if p.severity == "warning"), aggregates=aggregates,
        subject_domain=subject_domain, per_subject=bool(c.per_subject_paths),
        token_normalizers={d: next(iter(specs)) for d, specs in c.normalizers.items()},
        leak_sentinel=leak_sentinel, quality=quality, schema_id_from_registry=schema_id_from_registry,
        sanitized_schema_id_from_registry=sanitized_from_registry,
        key_uses={d: next(iter(uses)) for d, uses in c.key_uses.items()},
        writers_by_fingerprint=by_fingerprint, writers_by_id=by_id, purposes=purposes,
        timestamp=timestamp or KEEP, key_headers=key_headers, basis=basis,
    )
    return plan, c.problems


def _compile_purposes(schema: SchemaFile, specs: list[PurposeSpec], subject: str | None, subject_tokenized: bool,
                      output: str, input_mode: str, event_id: str | None, taken: tuple[str, str],
                      error: Any) -> tuple[Purpose, ...]:
    """Each purpose's view compiled as a plan of its own: the raw schema with the view's actions on
    its top-level fields (the others dropped) and the record settings that shape outputs."""
    out: list[Purpose] = []
    topics = set(taken)
    names = {f["name"] for f in schema.raw["fields"]}
    for spec in specs:
        where = f"purpose '{spec.name}'"
        if spec.topic in topics or not TOPIC_NAME.match(spec.topic):
            error("(record)", f"{where}: topic '{spec.topic}' is not a valid topic name of its own (it must differ "
                              "from the source, sanitized and other purposes' topics)")
            continue
        topics.add(spec.topic)
        unknown = sorted(set(spec.fields) - names)
        if unknown:
            error("(record)", f"{where}: no top-level field {', '.join(unknown)} in the schema")
            continue
        if spec.needs_consent and not subject_tokenized:
            error("(record)", f"{where}: basis consent needs a tokenized subject (\"subject\" in the privacy "
                              "settings, annotated {\"tokenize\": {\"domain\": D}}): consent is kept per subject token")
            continue
        if subject is not None and subject not in spec.fields:
            error("(record)", f"{where}: the view must hold the subject field '{subject}' (it keys the records and "
                              "binds their ciphertexts); tokenize it")
            continue
        raw = {k: v for k, v in schema.raw.items() if k != "privacy"}
        raw["fields"] = [{**{k: v for k, v in f.items() if k not in ("privacy", "quality")},
                          "privacy": spec.fields.get(f["name"], "drop")} for f in schema.raw["fields"]]
        framed = output == Encoding.CONFLUENT or (output == "same" and input_mode == Encoding.CONFLUENT)
        view_output = spec.output or (Encoding.AVRO.value if framed else output)  # a view has no registry id of its own
        view_event_id = event_id if event_id in spec.fields else None
        raw["privacy"] = {k: v for k, v in (("subject", subject), ("event_id", view_event_id),
                                            ("retention_days", schema.privacy.get("retention_days")),
                                            ("timestamp", schema.privacy.get("timestamp"))) if v is not None}
        raw["privacy"].update(source_topic=taken[0], sanitized_topic=spec.topic, input=input_mode, output=view_output)
        try:
            view_schema = replace(schema, raw=raw, parsed=fastavro.parse_schema(raw))
        except Exception as exc:  # fastavro raises several types
            error("(record)", f"{where}: its view is not a valid schema ({type(exc).__name__})")
            continue
        plan, problems = compile_schema(view_schema, view=spec.name)
        for problem in problems:
            if problem.severity == "error":
                error(problem.where, f"{where}: {problem.message}")
        if plan is not None:
            out.append(Purpose(spec, plan))
    return tuple(out)


def _writer_schemas(schema: SchemaFile, declared: Any, error: Any) -> tuple[dict[bytes, WriterSchema],
                                                                            dict[int, WriterSchema]]:
    """The record-level "writer_schemas": other versions producers write with, each a schema file
    (relative to the policy's) or {"file": F, "schema_id": N} for Confluent framing with static ids.
    Each must resolve to the policy's schema by Avro's rules; events in single-object encoding are
    matched by fingerprint, Confluent-framed ones by id."""
    by_fingerprint: dict[bytes, WriterSchema] = {}
    by_id: dict[int, WriterSchema] = {}
    if declared is None:
        return by_fingerprint, by_id
    if not isinstance(declared, list):
        error("(record)", "writer_schemas must be a list of schema files (or {\"file\": F, \"schema_id\": N})")
        return by_fingerprint, by_id
    for entry in declared:
        name, schema_id = (entry, None) if isinstance(entry, str) else (
            (entry.get("file"), entry.get("schema_id")) if isinstance(entry, dict) else (None, None))
        if not isinstance(name, str) or (schema_id is not None and (
                not isinstance(schema_id, int) or isinstance(schema_id, bool) or schema_id < 0)):
            error("(record)", f"writer_schemas entry {orjson.dumps(entry).decode()} is not a file name or "
                              "{\"file\": F, \"schema_id\": N}")
            continue
        path = schema.path.parent / name
        try:
            raw = orjson.loads(path.read_bytes())
            fastavro.parse_schema(raw)
        except OSError as exc:
            error("(record)", f"writer schema {name}: cannot read it ({exc.strerror})")
            continue
        except Exception as exc:  # orjson and fastavro raise several types
            error("(record)", f"writer schema {name}: not a valid Avro schema ({type(exc).__name__})")
            continue
        writer = resolve_writer(schema.raw, raw, f"writer schema {name}")
        if writer.problem is not None:
            error("(record)", f"writer schema {name} cannot be read with this policy's schema: {writer.problem}")
            continue
        fp = fingerprint(raw)
        if fp != fingerprint(schema.raw):
            by_fingerprint[fp] = writer
        if schema_id is not None:
            by_id[schema_id] = writer
    return by_fingerprint, by_id
