"""The one interface every field action implements.

An operator is compiled once per field when the policy compiles (``compile``: options checked
against the field's Avro type, errors raised as `OperatorError` and reported with schema and field),
says what the sanitized schema holds in the field's place (``sanitized_type``), and contributes one
step to the per-record sanitizer (``build``), a function bound to everything an event does not
change. Consumers' tools call ``open`` on the sanitized value (only encryption opens anything).

Records are decoded with their logical types stripped (``gateway.core.codec.raw.strip_logical_types``), so an
operator sees a date as days since the epoch (int) and a timestamp as a long, whatever the encoding.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from gateway.keys.envelope import DataKey
from gateway.keys.tokens import DomainTokenizer

# How the compiled sanitizer handles a non-null field value (the first item of a `Step`).
COPY = 0  # it passes as it is (numbers, booleans, arrays and maps holding no records)
CHECK_STR = 1  # a string (or enum symbol): it passes unless longer than max_field_bytes / 4 characters
CALL = 2  # the step's function returns the output value: fn(value, event) -> value

StepFn = Callable[[Any, "SanitizeResult"], Any]
Step = tuple[int, Any]  # (mode, function): COPY -> None, CHECK_STR -> fn(value), CALL -> fn(value, event)

class OperatorError(ValueError):
    """A parameter of an action does not fit the field: the message names the problem, and the
    policy compiler adds schema and field."""


@dataclass(frozen=True)
class FieldContext:
    """What an operator's compile step knows about its field."""

    schema: str  # the schema's file, for messages
    path: str  # dotted field path ("billing.city", "items[].sku")
    field: dict[str, Any]  # the field as written (name, type, default, doc)
    nullable: bool  # the type is a union with null
    type: Any  # the type without null, as written (named types by name)
    resolved: Any  # the same with every named type inlined (parses on its own)
    keep_type: Callable[[Any, str], tuple[Shape | None, Any]]  # the compiler's walk into kept records
    retention_days: int | None = None  # the record-level retention, for encrypted fields without their own

    @property
    def base(self) -> str:
        """The Avro base type without null: 'string', 'long', 'record', 'array', 'union', ..."""
        t = self.resolved
        if isinstance(t, list):
            return "union"
        if isinstance(t, dict):
            return str(t.get("type"))
        return str(t)

    @property
    def logical(self) -> str | None:
        t = self.resolved
        return t.get("logicalType") if isinstance(t, dict) else None

    def type_label(self) -> str:
        return type_label(self.field["type"])


class BuildEnv(Protocol):
    """What the per-record sanitizer offers an operator while it builds its step (once per plan)."""

    topic: str  # the sanitized topic: part of every ciphertext's associated data
    max_field_bytes: int
    max_str_chars: int
    dek_max_uses: int
    subject_path: str | None  # the subject field's path, if the record has one

    def tokenizer(self, domain: str) -> DomainTokenizer: ...
    def current_dek(self, path: str) -> Callable[[], DataKey]: ...
    def subject_key(self, path: str, roles: tuple[str, ...] = ()) -> Callable[[str], DataKey]: ...
    def role_dek(self, path: str, roles: tuple[str, ...]) -> Callable[[], DataKey]: ...
    def period_dek(self, path: str, days: int, per_subject: bool,
                   roles: tuple[str, ...] = ()) -> Callable[[int, str], DataKey]: ...
    def string_check(self, path: str) -> Callable[[str], None]: ...
    def value_check(self, path: str) -> Callable[[Any], None]: ...
    def compile_record(self, plan: RecordPlan) -> StepFn: ...
    def shape_step(self, shape: Shape, path: str) -> StepFn: ...
    def too_large(self, path: str, size: int) -> None: ...


class Opener(Protocol):
    """The consumer's side while it walks a sanitized record (gateway.core.decrypt)."""

    def open_ciphertext(self, value: Any, path: str, decode: Callable[[bytes], Any]) -> Any:
        """The opened value (`decode` of the plaintext), or `value` itself if it cannot be opened;
        the outcome goes into the report under `path`."""
        ...

    def walk(self, value: Any, shape: Shape) -> Any: ...


class Operator:
    """Base of every field action. Subclasses set `name` and implement `compile` and `build`."""

    name: ClassVar[str] = ""
    can_be_subject: bool = False  # its output may key records and bind ciphertexts (subject, event_id)
    needs_subject: bool = False  # its output depends on the event's subject
    drops: bool = False  # the field leaves no trace in the sanitized record
    in_clear: bool = False  # the value passes unchanged (aggregates may group by it; the leak sentinel watches it)
    # equal inputs give equal outputs (a ciphertext does not): a quasi-identifier or sensitive field
    # whose classes the re-identification risk measure counts must be deterministic
    deterministic: bool = True

    @classmethod
    def compile(cls, options: dict[str, Any], ctx: FieldContext) -> Operator:
        """Check `options` against the field and return the compiled operator (raise OperatorError)."""
        raise NotImplementedError

    # ---- the sanitized schema ---------------------------------------------------------------
    def output_type(self, ctx: FieldContext) -> Any:
        """The sanitized type of a non-null value."""
        raise NotImplementedError

    def sanitized_field(self, ctx: FieldContext) -> dict[str, Any]:
        """The field as the sanitized schema declares it (null kept nullable, a null default kept)."""
        out: dict[str, Any] = {"name": ctx.field["name"]}
        doc = self.doc(ctx)
        if doc:
            out["doc"] = doc
        out_type = self.output_type(ctx)
        out["type"] = ["null", out_type] if ctx.nullable else out_type
        if ctx.nullable and ctx.field.get("default", "absent") is None:
            out["default"] = None
        return out

    def doc(self, ctx: FieldContext) -> str | None:
        return ctx.field.get("doc")

    @property
    def label(self) -> str:
        """The action as the audit events and `gateway policy show` name it."""
        return self.name

    @property
    def token_domains(self) -> frozenset[str]:
        """Domains whose keys this operator uses (the keyring makes them at start-up)."""
        return frozenset()

    @property
    def token_normalizers(self) -> dict[str, str | None]:
        """Token domains this operator tokenizes values into, with the normalizer spec it applies
        (gateway.keys.normalize.spec): one domain must use one normalizer everywhere, or tokens of one
        identifier would differ by field and `gateway forget` could not know which to erase."""
        return {}

    @property
    def per_subject_key(self) -> bool:
        """True when values are encrypted under the subject's own key (needs a tokenized subject)."""
        return False

    @property
    def shape(self) -> Shape | None:
        """Records nested inside the value that are sanitized field by field (keep only)."""
        return None

    # ---- the hot path -----------------------------------------------------------------------
    def build(self, fp: FieldPlan, env: BuildEnv) -> Step:
        raise NotImplementedError

    def subject_value(self, fp: FieldPlan, env: BuildEnv) -> Callable[[Any], str]:
        """How the subject appears in the sanitized record (operators with can_be_subject)."""
        raise NotImplementedError

    # ---- the consumer's side ----------------------------------------------------------------
    @property
    def opens(self) -> bool:
        """`open` does something (decrypt visits only such fields)."""
        return False

    def open(self, value: Any, fp: FieldPlan, opener: Opener) -> Any:
        return value

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}>"


def type_label(t: Any) -> str:
    if isinstance(t, list):
        return "[" + ", ".join(type_label(x) for x in t) + "]"
    if isinstance(t, dict):
        return str(t.get("logicalType") or t.get("type"))
    return str(t)


def reject_unknown(options: dict[str, Any], known: set[str], action: str) -> None:
    unknown = sorted(set(options) - known)
    if unknown:
        raise OperatorError(f"unknown {action} option(s) {unknown} (known: {', '.join(sorted(known)) or 'none'})")


def int_option(options: dict[str, Any], key: str, default: int | None = None, minimum: int = 0,
               maximum: int | None = None) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
            maximum is not None and value > maximum):
        upper = f" and {maximum}" if maximum is not None else ""
        raise OperatorError(f"option '{key}' must be an integer between {minimum}{upper}" if upper
                            else f"option '{key}' must be an integer of at least {minimum}")
    return value


# ---- the plan's leaf types and the per-event result: here, below the compiler and the sanitizer that use them,
# so the operators need neither (the policy compiler and the sanitizer import the operators)
@dataclass(frozen=True)
class Shape:
    """How to reach nested records inside a kept value: record, array, map, or nullable wrapper."""

    kind: str  # "record" | "array" | "map"
    record: RecordPlan | None = None
    inner: Shape | None = None


@dataclass(frozen=True)
class FieldPlan:
    """One field that reaches the sanitized record, with its compiled operator (dropped fields are
    not in the plan)."""

    name: str
    path: str
    operator: Operator
    nullable: bool = False

    @property
    def action(self) -> str:
        return self.operator.name

    @property
    def shape(self) -> Shape | None:
        return self.operator.shape


@dataclass(frozen=True)
class RecordPlan:
    fullname: str
    fields: tuple[FieldPlan, ...]
    dropped: tuple[str, ...]


class SanitizeResult:
    """The sanitized record, its subject and the DEK used; also the per-event state the field
    operators share while the record is built (one object per event)."""

    __slots__ = ("record", "subject", "timestamp_ms", "dek_key_id", "other_key_ids", "dek", "subject_aad",
                 "entities", "out_timestamp_ms", "record_ref", "record_prefix", "position", "out_key", "out_headers")

    def __init__(self, subject: str, timestamp_ms: int = 0, record_ref: str = "",
                 record_prefix: bytes = b"") -> None:
        self.record: dict[str, Any] = {}
        self.subject = subject  # the subject as it appears in the sanitized record ("" if none)
        self.timestamp_ms = timestamp_ms  # the event's time (its Kafka timestamp)
        self.dek_key_id: str | None = None  # the shared (format v1) DEK used, if any field was encrypted
        self.other_key_ids: set[str] | None = None  # per-subject (v2), role (v3) and period (v4) keys, for the audit
        self.dek: DataKey | None = None  # the shared DEK this event encrypts under
        self.subject_aad: bytes | None = None  # the subject's and the record's part of the associated data
        self.record_ref = record_ref  # what binds its ciphertexts to the record: event id or source (format v5)
        self.record_prefix = record_prefix  # the v5 prefix naming which of the two
        self.position = b""  # the array indexes and map keys down to the value being sanitized
        self.entities: Counter[tuple[str, str]] | None = None  # redact: (field path, entity) -> count
        # the output record's Kafka timestamp as the policy treats it (0: processing time, the pipeline's batch's)
        self.out_timestamp_ms = 0
        # the raw key's and named headers' results as the policy treats them (gateway/core/policy/key_headers.py)
        self.out_key: bytes | None = None
        self.out_headers: list[tuple[str, bytes | None]] | None = None

    def __repr__(self) -> str:
        return f"<SanitizeResult subject={self.subject!r} dek={self.dek_key_id!r} fields={len(self.record)}>"

    def add_key_id(self, key_id: str) -> None:
        """A per-subject or role key this event's fields were encrypted under (the audit names every one)."""
        if self.other_key_ids is None:
            self.other_key_ids = {key_id}
        else:
            self.other_key_ids.add(key_id)
