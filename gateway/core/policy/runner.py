"""`gateway policy test`: a policy's example cases and a canary fuzz run through the compiled plan and the real
Pipeline, in process (no Kafka: the pipeline turns a batch into output records, which are read back here).

The bench (the pipeline, wired as the sanitize worker's is, with a throwaway local keyring, and the decryptors
that open its ciphertexts) is given by gateway.app.policy_bench; nothing here re-implements an operator.

- Cases (gateway.core.policy.cases): each input event becomes one raw event of one batch; what came out
  is observed (sanitized record, purpose views, dead letter, audit entry) and each expected field judged by
  what its output holds: absent (dropped), the input's value (keep), a token, a ciphertext that opens to
  the input (encrypted), or another value in clear (masked). A failure names the case, the path, the
  expected and the actual action; it quotes a value only where the output holds it in clear and the
  expectation says it may be (kept or masked), never one of a tokenized or encrypted field.
- Fuzz: N events from the sample generator, each field the policy does not keep in clear holding a
  canary (random, shaped like the generated value, so operators and validation see a plausible one);
  every byte string that comes out (sanitized record, purpose views, dead letters' clear parts, audit)
  is searched for any 8-character stretch of any canary of its batch. A mask that leaves too much of a
  value, or free text whose redaction misses an entity, is found; a mask that leaves four digits is not.
"""

from __future__ import annotations

import random
import re
import string
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.consent.table import ConsentChange, ConsentTable
from gateway.core.audit import record_entries
from gateway.core.codec.encoding import Encoding, SchemaFormat, frame_confluent
from gateway.core.codec.evolution import single_object_header
from gateway.core.codec.formats import codec_for
from gateway.core.codec.raw import decoded_for_json
from gateway.core.codec.sanitized import SanitizedDecoder, StoredRecord
from gateway.core.codec.writer import avro_bytes, json_bytes
from gateway.core.decrypt import decrypt_record
from gateway.core.pipeline import SOURCE_HEADER, Pipeline, RawEvent, parse_source_ref
from gateway.core.pipeline.outcome import SANITIZED, Outcome
from gateway.core.policy.cases import Action, Case, CaseFile, FieldExpectation, plan_path, values_at
from gateway.core.policy.plan import Plan
from gateway.errors import GatewayError, RejectedEvent
from gateway.keys.envelope import FieldDecryptor
from gateway.outputs import OutRecord

TOKEN = re.compile(r"^tok_v\d+_[A-Za-z0-9_-]{16,}$")
CASE_TIMESTAMP_MS = 1_790_000_000_000  # a case's raw event time when it names none (fixed: runs repeat)
WINDOW = 8  # a canary survives when any stretch of this many of its characters does
FUZZ_BATCH = 100  # fuzz events per pipeline batch
FUZZ_PARTITION = 1  # the fuzz events' source partition (the cases' are on 0: each keeps its own offsets)
Sampler = Callable[[Plan], Callable[..., dict[str, Any]]]  # a plan -> its sample generator: make(canary=False)


@dataclass(frozen=True)
class Bench:
    """What the runs are given: the pipeline over every plan and decryptors for its ciphertexts (the
    keyring's, then one per role a policy names)."""

    pipeline: Pipeline
    decryptors: tuple[FieldDecryptor, ...]


@dataclass(frozen=True)
class Failure:
    """One unmet expectation: where, what was expected and what was observed (actions, never values of
    tokenized or encrypted fields)."""

    path: str  # a field path, or "(outcome)", "(purposes)", "(audit)", "<purpose>:<path>"
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.path}: expected {self.expected}, actual {self.actual}"


@dataclass(frozen=True)
class CaseResult:
    schema: str
    file: str
    case: str
    failures: tuple[Failure, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class Leak:
    """A canary found in an output: the field it was planted in, the output, the event's index."""

    path: str
    where: str  # "sanitized", "purpose <name>", "dead letter", "audit"
    event: int

    def __str__(self) -> str:
        return f"canary of '{self.path}' (event {self.event}) survives in the {self.where}"


@dataclass(frozen=True)
class FuzzResult:
    schema: str
    events: int
    sanitized: int
    dead_lettered: int
    planted: dict[str, int]  # path -> canaries planted there
    unplanted: tuple[str, ...]  # paths not kept in clear that held no string to plant in
    leaks: tuple[Leak, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.leaks


@dataclass
class PolicyTestReport:
    cases: list[CaseResult] = field(default_factory=list)
    fuzz: list[FuzzResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cases) and all(f.ok for f in self.fuzz)


# ---- observing outputs ---------------------------------------------------------------------------------
@dataclass
class _Observed:
    """One event's outputs, decoded: the sanitized record (None: dead-lettered), its opened copy per
    decryptor, the purpose views by name, the dead letter's reason, the audit entries."""

    sanitized: Any = None
    source: bytes | None = None
    opened: list[tuple[Any, dict[str, str]]] = field(default_factory=list)
    views: dict[str, tuple[Any, list[tuple[Any, dict[str, str]]]]] = field(default_factory=dict)
    dead_letter: str | None = None
    audit: list[dict[str, Any]] = field(default_factory=list)


def raw_value(plan: Plan, record: Any, index: int = 0) -> bytes:
    """The raw event's bytes as a producer would write them: JSON where the policy's input takes it (and the
    record holds no bytes, which JSON cannot carry), else Avro, Confluent-framed where the policy has a
    registry id. A fuzz run alternates JSON and Avro by `index` where the input is `auto`. Another format
    family's events are written in it, Confluent-framed (gateway.core.codec.formats)."""
    if plan.schema.format is not SchemaFormat.AVRO:
        encode = codec_for(plan.schema.format).encoder(plan.schema, plan.schema.raw)
        return frame_confluent(plan.schema_id or 0, encode(record))
    if plan.input_mode == "auto":
        modes = [Encoding.JSON, Encoding.CONFLUENT if plan.schema_id is not None else Encoding.AVRO]
        mode = modes[index % 2] if not _has_bytes(record) else modes[1]
    else:
        mode = Encoding(plan.input_mode)
    if mode == Encoding.JSON:
        return json_bytes(record)
    payload = avro_bytes(plan.schema.parsed, record)
    if mode == Encoding.CONFLUENT and plan.schema_id is not None:
        return frame_confluent(plan.schema_id, payload)
    if mode == Encoding.SINGLE_OBJECT:
        return single_object_header(plan.schema.raw) + payload
    return payload


def _has_bytes(value: Any) -> bool:
    if isinstance(value, bytes):
        return True
    if isinstance(value, dict):
        return any(_has_bytes(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_bytes(v) for v in value)
    return False


class _Reader:
    """Decodes and opens what the pipeline put out for a set of plans and their purpose views."""

    def __init__(self, bench: Bench, plans: Sequence[Plan]) -> None:
        self.bench = bench
        views = [p.plan for plan in plans for p in plan.purposes]
        self.decoder = SanitizedDecoder([*plans, *views])
        self.purposes = {p.topic: (p.name, p.plan) for plan in plans for p in plan.purposes}
        self.sanitized = {plan.sanitized_topic: plan for plan in plans}
        self.dlq = {plan.dlq_topic for plan in plans}
        self.audit_topic = bench.pipeline.audit_topic

    def opened(self, record: Any, plan: Plan, source: bytes | None) -> list[tuple[Any, dict[str, str]]]:
        out = []
        for decryptor in self.bench.decryptors:
            copy, report = decrypt_record(record, plan, decryptor, source)
            out.append((copy, report.fields))
        return out

    def observe(self, records: list[OutRecord]) -> _Observed:
        seen = _Observed()
        for record in records:
            headers = dict(record.headers or [])
            if record.topic == self.audit_topic:
                seen.audit += record_entries([record.value])
            elif record.topic in self.dlq:
                seen.dead_letter = str(orjson.loads(record.value or b"{}").get("reason"))
            elif record.topic in self.sanitized or record.topic in self.purposes:
                plan, value = self.decoder.decode(StoredRecord(record.topic, 0, 0, record.key, record.value,
                                                               headers))
                value = decoded_for_json(value)
                source = headers.get(SOURCE_HEADER)
                if record.topic in self.purposes:
                    name, _ = self.purposes[record.topic]
                    seen.views[name] = (value, self.opened(value, plan, source))
                else:
                    seen.sanitized, seen.source = value, source
                    seen.opened = self.opened(value, plan, source)
        return seen


# ---- judging a field -----------------------------------------------------------------------------------
def _same(a: Any, b: Any) -> bool:
    if a == b:
        return True
    try:
        return orjson.dumps(decoded_for_json(a), option=orjson.OPT_SORT_KEYS) == orjson.dumps(
            decoded_for_json(b), option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return False


def _actions(path: str, given: Any, output: Any, opened: list[tuple[Any, dict[str, str]]]
             ) -> tuple[list[str], list[Any], list[Any]]:
    """The observed action of each element at `path` (with the output values and the opened ones)."""
    inputs = values_at(given, path) or []
    outputs = values_at(output, path)
    if outputs is None:
        return [Action.DROPPED.value] * max(1, len(inputs)), [], []
    opened_values: list[Any] = list(outputs)
    report_state: str | None = None
    for copy, report in opened:
        state = report.get(plan_path(path))
        if state is None:
            continue
        report_state = report_state or state
        if state == "decrypted":
            opened_values, report_state = values_at(copy, path) or [], state
            break
    actions = []
    for i, out in enumerate(outputs):
        given_value = inputs[i] if i < len(inputs) else None
        if report_state == "decrypted":
            actions.append(Action.ENCRYPTED.value)
        elif report_state is not None:
            actions.append(f"encrypted (does not open: {report_state.partition(':')[0]})")
        elif isinstance(out, str) and TOKEN.match(out) and not (isinstance(given_value, str)
                                                                and TOKEN.match(given_value)):
            actions.append(Action.TOKENIZED.value)
        elif _same(out, given_value):
            actions.append(Action.KEEP.value)
        else:
            actions.append(Action.MASKED.value)
    if len(outputs) != len(inputs):  # an array of another length: not the input's elements
        actions = [a if a != Action.KEEP.value else Action.MASKED.value for a in actions] or [Action.MASKED.value]
    return actions, outputs, opened_values


def judge_field(path: str, expected: FieldExpectation, given: Any, output: Any,
                opened: list[tuple[Any, dict[str, str]]], label: str = "") -> tuple[list[Failure], list[Any]]:
    """The failures of one field (and, for a tokenized one, its tokens for same_token_as)."""
    where = f"{label}{path}"
    actions, outputs, opened_values = _actions(path, given, output, opened)
    kinds = sorted(set(actions))
    actual = kinds[0] if len(kinds) == 1 else "mixed (" + ", ".join(kinds) + ")"
    if actual != expected.action.value:
        return [Failure(where, expected.action.value, actual)], []
    failures = []
    inputs = values_at(given, path) or []
    if expected.action is Action.ENCRYPTED and not all(
            _same(o, i) for o, i in zip(opened_values, inputs, strict=False)):
        failures.append(Failure(where, "encrypted, opening to the input's value",
                                "encrypted, opening to another value"))
    if expected.has_equals:
        want = expected.equals if isinstance(expected.equals, list) and "[]" in path else [expected.equals]
        if len(want) == 1 and len(outputs) > 1:
            want = want * len(outputs)
        if not (len(want) == len(outputs) and all(_same(o, w) for o, w in zip(outputs, want, strict=True))):
            shown = _shown(outputs, expected.action)
            failures.append(Failure(where, f"{expected.action.value} to {_quote(expected.equals)}",
                                    f"{actual} to {shown}"))
    return failures, outputs if expected.action is Action.TOKENIZED else []


def _shown(outputs: list[Any], action: Action) -> str:
    """An output value for a failure message: only a masked one (the sanitized record holds it in clear
    and it differs from the input); a kept one equals the input, which a message never repeats."""
    if action is Action.MASKED:
        return _quote(outputs[0] if len(outputs) == 1 else outputs)
    return "the input's value"


def _quote(value: Any) -> str:
    return orjson.dumps(decoded_for_json(value)).decode()


# ---- cases ---------------------------------------------------------------------------------------------
class CaseRunner:
    """Runs case files through the bench's pipeline, one batch per case."""

    def __init__(self, bench: Bench, plans: Sequence[Plan]) -> None:
        self.bench = bench
        self.reader = _Reader(bench, plans)
        self.offsets: dict[str, int] = {}

    def event(self, plan: Plan, value: bytes, timestamp_ms: int) -> RawEvent:
        offset = self.offsets.get(plan.source_topic, 0)
        self.offsets[plan.source_topic] = offset + 1
        return RawEvent(plan.source_topic, 0, offset, timestamp_ms, None, value, None)

    def run(self, files: Sequence[CaseFile], progress: Callable[[str], None] | None = None) -> list[CaseResult]:
        results: list[CaseResult] = []
        tokens: dict[tuple[str, str, str], list[Any]] = {}  # (file, case, path) -> its tokens
        pending: list[tuple[int, CaseFile, Case]] = []
        for cases in files:
            for case in cases.cases:
                started = time.perf_counter()
                failures = self.run_case(cases.plan, case, tokens, str(cases.path))
                results.append(CaseResult(cases.plan.name, str(cases.path), case.name, tuple(failures),
                                          time.perf_counter() - started))
                pending.append((len(results) - 1, cases, case))
        for index, cases, case in pending:  # equal tokens across cases: once every case ran
            extra = []
            for path, expected in case.expect.fields.items():
                ref = expected.same_token_as
                mine = tokens.get((str(cases.path), case.name, path))
                if ref is None or mine is None:
                    continue
                theirs = tokens.get((str(cases.path), ref.case or case.name, ref.path))
                if theirs is None:
                    extra.append(Failure(path, f"the token of '{ref.case or case.name}/{ref.path}'",
                                         "that case produced no token there"))
                elif set(mine) != set(theirs) or len(set(mine)) != 1:
                    extra.append(Failure(path, f"the token of '{ref.case or case.name}/{ref.path}'",
                                         "another token"))
            if extra:
                done = results[index]
                results[index] = CaseResult(done.schema, done.file, done.case, (*done.failures, *extra),
                                            done.seconds)
        if progress is not None:  # once the token checks across cases are in
            for result in results:
                progress(f"{'ok  ' if result.ok else 'FAIL'} {result.schema}: {result.case}")
        return results

    def run_case(self, plan: Plan, case: Case, tokens: dict[tuple[str, str, str], list[Any]],
                 file: str) -> list[Failure]:
        pipeline = self.bench.pipeline
        timestamp = case.timestamp_ms if case.timestamp_ms is not None else CASE_TIMESTAMP_MS
        pipeline.consent = consent_table(consent_changes(pipeline, plan, case.input, case.consent, timestamp))
        try:
            value = raw_value(plan, case.input)
        except Exception as exc:  # fastavro refuses a record the schema does not take (JSON takes anything)
            raise GatewayError(f"{file}: case '{case.name}': the input does not encode as {plan.input_mode} "
                               f"({type(exc).__name__}); this policy's input takes no JSON") from None
        result = pipeline.process([self.event(plan, value, timestamp)])
        seen = self.reader.observe(result.records)
        return self._judge(plan, case, seen, tokens, file)

    def _judge(self, plan: Plan, case: Case, seen: _Observed, tokens: dict[tuple[str, str, str], list[Any]],
               file: str) -> list[Failure]:
        expect = case.expect
        failures: list[Failure] = []
        outcome = f"dead letter {seen.dead_letter}" if seen.dead_letter is not None else "sanitized"
        wanted = f"dead letter {expect.dead_letter}" if expect.dead_letter is not None else "sanitized"
        if outcome != wanted:
            failures.append(Failure("(outcome)", wanted, outcome))
        entries = [e for e in seen.audit if e.get("type", "event") == "event"]
        audited = [Outcome.parse(e.get("outcome")) for e in entries]
        want_audit = Outcome.rejected(seen.dead_letter) if seen.dead_letter is not None else SANITIZED
        if audited != [want_audit]:
            failures.append(Failure("(audit)", f"one entry '{want_audit}'",
                                    f"{len(audited)} entries {[str(a) for a in audited]}"))
        if seen.dead_letter is not None or outcome != wanted:
            return failures
        for path, expected in expect.fields.items():
            found, out = judge_field(path, expected, case.input, seen.sanitized, seen.opened)
            failures += found
            if out:
                tokens[(file, case.name, path)] = out
        if expect.purposes is not None:
            published = sorted(seen.views)
            if published != sorted(expect.purposes):
                failures.append(Failure("(purposes)", f"published {sorted(expect.purposes)}",
                                        f"published {published}"))
        for purpose, fields in expect.purpose_fields.items():
            view = seen.views.get(purpose)
            if view is None:
                failures.append(Failure(f"{purpose}:(view)", "published", "withheld"))
                continue
            for path, expected in fields.items():
                failures += judge_field(path, expected, case.input, view[0], view[1], f"{purpose}:")[0]
        return failures


def consent_changes(pipeline: Pipeline, plan: Plan, record: Any, consent: Mapping[str, bool],
                    timestamp_ms: int) -> list[ConsentChange]:
    """The consent a case (or a fuzz event: every consent purpose granted) declares for its subject, as the
    consent topic would hold it, given just before the event's time."""
    if not consent or plan.subject_domain is None or plan.subject_field is None or not isinstance(record, dict):
        return []
    try:
        token = pipeline.stages[plan.source_topic].sanitizer.subject_token(record.get(plan.subject_field))
    except (RejectedEvent, TypeError, ValueError):
        return []  # no subject to consent: the event is refused anyway
    return [ConsentChange(plan.subject_domain, token, purpose, max(0, timestamp_ms - 1), granted, "policy-test")
            for purpose, granted in consent.items()]


def consent_table(changes: Sequence[ConsentChange]) -> ConsentTable:
    table = ConsentTable()
    for change in changes:
        table.apply(change.key(), change.value())
    return table


# ---- fuzz ----------------------------------------------------------------------------------------------
class Canaries:
    """Canary values from a seed: random letters and digits in the shape of the value they replace (an
    e-mail stays an e-mail, a card number digits), at least WINDOW of them, all distinct."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def like(self, value: str) -> str:
        rng = self.rng
        out = [rng.choice(string.ascii_lowercase) if c.islower() else rng.choice(string.ascii_uppercase)
               if c.isupper() else rng.choice(string.digits) if c.isdigit() else c for c in value]
        alnum = sum(c.isalnum() for c in value)
        if alnum < WINDOW:  # too short to find again: lengthened with its own kind of character
            pool = string.digits if value and all(c.isdigit() or not c.isalnum() for c in value) else \
                string.ascii_lowercase
            out += [rng.choice(pool) for _ in range(WINDOW + 2 - alnum)]
        return "".join(out)

    def email(self) -> str:
        rng = self.rng
        local = "".join(rng.choice(string.ascii_lowercase) for _ in range(10))
        host = "".join(rng.choice(string.ascii_lowercase) for _ in range(8))
        return f"{local}.{rng.randint(1000, 9999)}@{host}.org"


def clear_paths(plan: Plan) -> list[str]:
    """The paths whose values a sanitized record does not hold in clear: every leaf whose action is not
    keep (a kept record's own fields are named on their own)."""
    paths = list(plan.field_actions)
    return [p for p, action in plan.field_actions.items() if action != "keep"
            and not any(q.startswith(p + ".") or q.startswith(p + "[]") for q in paths)]


def plant(record: dict[str, Any], plan: Plan, canaries: Canaries) -> dict[str, list[str]]:
    """Canaries in place of every string value of every path not kept in clear (free text to redact gets
    an e-mail address appended, which its redaction must remove). Returns path -> canaries planted."""
    planted: dict[str, list[str]] = {}
    for path in clear_paths(plan):
        redact = plan.field_actions[path].split(":")[0] == "redact"
        segments = path.replace("[]", "").split(".")
        for parent in _parents(record, segments[:-1]):
            name = segments[-1]
            if name in parent:
                parent[name] = _planted(parent[name], canaries, redact, planted.setdefault(path, []))
        if not planted.get(path):
            planted.pop(path, None)
    return planted


def _parents(node: Any, segments: list[str]) -> Iterator[dict[str, Any]]:
    if isinstance(node, list):
        for item in node:
            yield from _parents(item, segments)
        return
    if not isinstance(node, dict):
        return
    if not segments:
        yield node
        return
    yield from _parents(node.get(segments[0]), segments[1:])


def _planted(value: Any, canaries: Canaries, redact: bool, found: list[str]) -> Any:
    if isinstance(value, str):
        if redact:
            canary = canaries.email()
            found.append(canary)
            return f"{value} Write to {canary} for details."
        canary = canaries.like(value)
        found.append(canary)
        return canary
    if isinstance(value, list):
        return [_planted(v, canaries, redact, found) for v in value]
    if isinstance(value, dict):
        return {k: _planted(v, canaries, redact, found) for k, v in value.items()}
    return value


def _windows(canary: str) -> list[bytes]:
    """The stretches of a canary whose presence anywhere means it survived (lower-cased: a transform that
    changes case does not hide it)."""
    text = canary.lower()
    if len(text) <= WINDOW:
        return [text.encode()]
    return [w.encode() for w in (text[i:i + WINDOW] for i in range(len(text) - WINDOW + 1))
            if sum(c.isalnum() for c in w) >= WINDOW - 2]


def _blobs(record: OutRecord) -> bytes:
    parts = [record.value or b"", record.key or b""]
    for name, value in record.headers or []:
        parts += [name.encode(), value]
    return b"\x00".join(parts).lower()


def fuzz(bench: Bench, plan: Plan, make: Callable[..., dict[str, Any]], count: int, seed: int,
         progress: Callable[[str], None] | None = None) -> FuzzResult:
    """`count` generated events of `plan` with canaries planted, through the pipeline in batches, every
    consent purpose granted (so every view is published and searched); any canary stretch found in any
    output is a leak."""
    started = time.perf_counter()
    pipeline = bench.pipeline
    canaries = Canaries(seed)
    purposes = {p.topic: p.name for p in plan.purposes}
    # a purpose view may keep in clear what the sanitized record does not (its legal basis allows it): there,
    # and only there, that field's canary is expected
    cleared = {p.topic: frozenset(path for path, action in p.plan.field_actions.items() if action == "keep")
               for p in plan.purposes}
    planted_counts: dict[str, int] = {}
    leaks: list[Leak] = []
    sanitized = dead = 0
    offset = 0
    consent = dict.fromkeys(plan.consent_purposes, True)
    per_event = {plan.sanitized_topic, plan.dlq_topic, *purposes}  # records of one event (its source header)
    for start in range(0, count, FUZZ_BATCH):
        size = min(FUZZ_BATCH, count - start)
        events: list[RawEvent] = []
        planted: list[dict[str, list[str]]] = []
        changes: list[ConsentChange] = []
        for i in range(start, start + size):
            record = make(canary=True)
            canaried = plant(record, plan, canaries)
            planted.append(canaried)
            for path, values in canaried.items():
                planted_counts[path] = planted_counts.get(path, 0) + len(values)
            changes += consent_changes(pipeline, plan, record, consent, CASE_TIMESTAMP_MS)
            events.append(RawEvent(plan.source_topic, FUZZ_PARTITION, offset, CASE_TIMESTAMP_MS, None,
                                   raw_value(plan, record, i), None))
            offset += 1
        pipeline.consent = consent_table(changes)
        result = pipeline.process(events)
        by_source: dict[int, list[OutRecord]] = {}
        shared: dict[str, list[OutRecord]] = {}  # the batch's other records (audit, quality): any event's canary
        for record in result.records:
            ref = parse_source_ref(dict(record.headers or []).get(SOURCE_HEADER, b""))
            if record.topic in per_event and ref is not None:
                by_source.setdefault(ref[2], []).append(record)
            else:
                where = "audit" if record.topic == pipeline.audit_topic else f"record on '{record.topic}'"
                shared.setdefault(where, []).append(record)
        for n, event in enumerate(events):
            for record in by_source.get(event.offset, []):
                searched = planted[n]
                if record.topic == plan.dlq_topic:
                    dead += 1
                    where = "dead letter"
                elif record.topic in purposes:
                    where = f"purpose {purposes[record.topic]}"
                    searched = {path: v for path, v in searched.items() if path not in cleared[record.topic]}
                else:
                    sanitized += 1
                    where = "sanitized"
                leaks += _search(_blobs(record), searched, where, start + n)
        for where, records in shared.items():
            blob = b"\x00".join(_blobs(r) for r in records)
            for n, canaried in enumerate(planted):
                leaks += _search(blob, canaried, where, start + n)
        if progress is not None:
            progress(f"fuzz {plan.name}: {start + size}/{count} events, {len(leaks)} leak(s)")
    unplanted = tuple(p for p in clear_paths(plan) if p not in planted_counts)
    return FuzzResult(plan.name, count, sanitized, dead, planted_counts, unplanted, tuple(leaks),
                      time.perf_counter() - started)


def _search(blob: bytes, planted: dict[str, list[str]], where: str, event: int) -> list[Leak]:
    leaks = []
    for path, values in planted.items():
        if any(w in blob for value in values for w in _windows(value)):
            leaks.append(Leak(path, where, event))
    return leaks


def run_policy_tests(bench: Bench, plans: Sequence[Plan], files: Sequence[CaseFile], fuzz_count: int,
                     sampler: Sampler, seed: int, progress: Callable[[str], None] | None = None
                     ) -> PolicyTestReport:
    """Every case of `files`, then (with `fuzz_count`) a fuzz run of each plan."""
    report = PolicyTestReport(CaseRunner(bench, plans).run(files, progress))
    if fuzz_count > 0:
        for plan in plans:
            report.fuzz.append(fuzz(bench, plan, sampler(plan), fuzz_count, seed, progress))
    return report
