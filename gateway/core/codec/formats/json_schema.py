"""JSON Schema as a format family: Confluent-framed JSON (magic byte 0, the 4-byte registry id, a JSON
document), validated against the registered JSON Schema, with the same policy model as Avro.

The policy sits in the schema: a `privacy` keyword on a property (the same annotation as an Avro field's
`privacy`), and the record-level `privacy` block on the top-level schema; a property's `quality` rules
sit beside it as on an Avro field. At load time the schema becomes its Avro-shaped equivalent (the
policy model): `title` names the record, each property a field (string -> string, integer -> long,
number -> double, boolean, object with properties -> a nested record, object with only
additionalProperties -> map, array -> array); a property that is not required, or whose type admits
null, is nullable (default null). Local `$ref`s (`#/$defs/...`, `#/definitions/...`) are inlined.

The sanitized schema is derived from the plan's sanitized record: ciphertexts become base64 strings
(`contentEncoding: base64`), tokens strings, dropped properties are gone, every published property is
required (a missing optional value is written as null) and `additionalProperties` is false, since a
sanitized record holds exactly what the policy publishes.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import fastavro
import orjson
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.validators import Draft202012Validator, validator_for

from gateway.core.codec.encoding import CONFLUENT_HEADER_BYTES, Encoding, SchemaFormat
from gateway.core.codec.formats.base import Decoded, RegisteredWriter, RegistryFramedDecoder
from gateway.core.codec.raw import NO_FIELDS, SchemaFile
from gateway.core.codec.writer import json_bytes
from gateway.errors import PolicyError, RejectedEvent

POLICY_KEYWORDS = ("privacy", "quality")  # the gateway's keywords on a schema node (not JSON Schema's own)
_AVRO_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_AVRO_FULLNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_PRIMITIVES = {"string": "string", "integer": "long", "number": "double", "boolean": "boolean"}
_MAX_CONSTRAINT_CHARS = 80  # a constraint quoted in a dead letter's message (schema-side text only)


class ConversionError(Exception):
    """A JSON Schema construct with no place in the policy model; the message names the property."""


# ---- the JSON Schema -> the policy model ------------------------------------------------------------
class _Converter:
    """One JSON Schema document as its Avro-shaped record (names of nested records made unique)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.names: set[str] = set()
        self.resolving: list[str] = []

    def unique(self, name: str) -> str:
        """A named type's name, made unique in the record (Avro names its records and enums)."""
        if name in self.names:
            name = f"{name}_{len(self.names)}"
        self.names.add(name)
        return name

    def record(self, node: dict[str, Any], name: str, path: str) -> dict[str, Any]:
        name = self.unique(name)
        properties = node.get("properties") or {}
        if not isinstance(properties, dict):
            raise ConversionError(f"{path or '(record)'}: 'properties' must be an object")
        required = set(node.get("required") or ())
        fields: list[dict[str, Any]] = []
        for prop, sub in properties.items():
            where = f"{path}.{prop}" if path else prop
            if not _AVRO_NAME.match(prop):
                raise ConversionError(f"{where}: a property name must be letters, digits and '_' (not starting "
                                      "with a digit) to be annotated as a field")
            if not isinstance(sub, dict):
                raise ConversionError(f"{where}: a property's schema must be an object")
            sub = self.resolve(sub, where)
            avro, nullable = self.type_of(sub, f"{name}_{prop}", where)
            field: dict[str, Any] = {"name": prop, "type": avro}
            if nullable or prop not in required:
                field["type"], field["default"] = ["null", avro], None
            for keyword in POLICY_KEYWORDS:
                if keyword in sub:
                    field[keyword] = sub[keyword]
            if isinstance(sub.get("description"), str):
                field["doc"] = sub["description"]
            fields.append(field)
        return {"type": "record", "name": name, "fields": fields}

    def resolve(self, node: dict[str, Any], where: str) -> dict[str, Any]:
        """A node with its local `$ref` inlined (the node's own keywords, e.g. `privacy`, win)."""
        ref = node.get("$ref")
        if ref is None:
            return node
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise ConversionError(f"{where}: only local references ('#/$defs/...') are supported, not '{ref}'")
        if ref in self.resolving:
            raise ConversionError(f"{where}: the recursive reference '{ref}' has no place in a record")
        target: Any = self.document
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise ConversionError(f"{where}: reference '{ref}' names nothing in the schema")
            target = target[part]
        if not isinstance(target, dict):
            raise ConversionError(f"{where}: reference '{ref}' is not a schema object")
        self.resolving.append(ref)
        try:
            resolved = self.resolve(target, where)
        finally:
            self.resolving.pop()
        return {**resolved, **{k: v for k, v in node.items() if k != "$ref"}}

    def type_of(self, node: dict[str, Any], hint: str, where: str) -> tuple[Any, bool]:
        """(the Avro type of a property's schema, whether it admits null)."""
        declared = node.get("type")
        if declared is None and "enum" in node and all(isinstance(v, str) for v in node["enum"]):
            declared = "string"
        if declared is None and "properties" in node:
            declared = "object"
        types = [declared] if isinstance(declared, str) else list(declared or ())
        nullable = "null" in types
        types = [t for t in types if t != "null"]
        if len(types) != 1:
            raise ConversionError(f"{where}: a property needs one type (besides null) to carry a policy; it has "
                                  f"{', '.join(map(str, types)) or 'none'}")
        (kind,) = types
        symbols = node.get("enum")
        if kind == "string" and isinstance(symbols, list) and symbols and all(
                isinstance(s, str) and _AVRO_NAME.match(s) for s in symbols) and len(set(symbols)) == len(symbols):
            return {"type": "enum", "name": self.unique(hint), "symbols": list(symbols)}, nullable
        if kind in _PRIMITIVES:
            return _PRIMITIVES[kind], nullable
        if kind == "array":
            items = node.get("items")
            if not isinstance(items, dict):
                raise ConversionError(f"{where}: an array needs one 'items' schema")
            item, item_nullable = self.type_of(self.resolve(items, f"{where}[]"), f"{hint}_item", f"{where}[]")
            return {"type": "array", "items": ["null", item] if item_nullable else item}, nullable
        if kind == "object":
            if node.get("properties"):
                return self.record(node, hint, where), nullable
            values = node.get("additionalProperties")
            if isinstance(values, dict):
                value, value_nullable = self.type_of(self.resolve(values, f"{where}{{}}"), f"{hint}_value",
                                                     f"{where}{{}}")
                return {"type": "map", "values": ["null", value] if value_nullable else value}, nullable
            raise ConversionError(f"{where}: an object needs 'properties' (a record) or an 'additionalProperties' "
                                  "schema (a map)")
        raise ConversionError(f"{where}: type '{kind}' has no place in the policy model")


def to_policy_model(document: dict[str, Any]) -> dict[str, Any]:
    """The Avro-shaped record of a top-level JSON Schema (raises ConversionError naming the property)."""
    title = document.get("title")
    if not isinstance(title, str) or not _AVRO_FULLNAME.match(title):
        raise ConversionError("the top-level schema needs a 'title' that names the record (letters, digits, '_', "
                              "dots between namespace parts), e.g. \"com.example.Signup\"")
    if document.get("type") != "object":
        raise ConversionError("the top-level schema must be of type 'object'")
    record = _Converter(document).record(document, title, "")
    if "privacy" in document:
        record["privacy"] = document["privacy"]
    if isinstance(document.get("description"), str):
        record["doc"] = document["description"]
    return record


def strip_policy(node: Any) -> Any:
    """A schema without the gateway's keywords (what producers may register: the same schema, unannotated)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in POLICY_KEYWORDS:
                continue
            if key in ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas") \
                    and isinstance(value, dict):
                out[key] = {k: strip_policy(v) for k, v in value.items()}
            elif key in ("items", "additionalProperties", "not", "if", "then", "else", "contains"):
                out[key] = strip_policy(value)
            elif key in ("anyOf", "oneOf", "allOf", "prefixItems") and isinstance(value, list):
                out[key] = [strip_policy(v) for v in value]
            else:
                out[key] = value
        return out
    return node


def _canonical(document: Any) -> bytes:
    return orjson.dumps(strip_policy(document), option=orjson.OPT_SORT_KEYS)


def _validator(document: dict[str, Any]) -> Any:
    """The validator of a schema document by its `$schema` (draft 2020-12 when it names none); raises
    SchemaError for a document that is not a valid JSON Schema. Formats are not asserted (as Confluent's)."""
    cls = validator_for(document, default=Draft202012Validator)
    cls.check_schema(document)
    return cls(document)


def _declared_names(node: Any, out: set[str]) -> set[str]:
    """Every property name a schema declares anywhere: the only data keys a dead letter's path may show."""
    if isinstance(node, dict):
        properties = node.get("properties")
        if isinstance(properties, dict):
            out.update(k for k in properties if isinstance(k, str))
        for value in node.values():
            _declared_names(value, out)
    elif isinstance(node, list):
        for value in node:
            _declared_names(value, out)
    return out


# ---- a fast check of the common keywords ------------------------------------------------------------
# jsonschema walks a document through a new validator object per keyword and value (about 80% of the
# per-event cost of a small schema). Most event schemas use a few keywords, whose meaning is simple: for
# those a straight check is built once, which says True only when jsonschema would find the document
# valid; when it says False (or the schema uses any other keyword: no fast check) jsonschema decides and
# names the violation. The two are compared on generated documents in tests/unit/test_format_json_schema.py.
_FAST_DRAFTS = ("Draft7Validator", "Draft201909Validator", "Draft202012Validator")  # numeric exclusiveMinimum
_ANNOTATIONS = frozenset({"title", "description", "$schema", "$id", "$comment", "default", "examples", "format",
                          "contentEncoding", "contentMediaType", "deprecated", "readOnly", "writeOnly",
                          *POLICY_KEYWORDS})  # no assertion (format is not asserted, as in Confluent's serde)
_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float)
                                                                              and v.is_integer()),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def fast_check(node: Any) -> Callable[[Any], bool] | None:
    """A function document -> True when it is valid against `node` (False: not sure), or None when the
    node uses a keyword without a fast check."""
    if node is True or node == {}:
        return lambda _v: True
    if not isinstance(node, dict):
        return None
    checks: list[Callable[[Any], bool]] = []
    for keyword, arg in node.items():
        if keyword in _ANNOTATIONS:
            continue
        check = _keyword_check(keyword, arg, node)
        if check is None:
            return None
        checks.append(check)
    if len(checks) == 1:
        return checks[0]
    return lambda v: all(check(v) for check in checks)


def _keyword_check(keyword: str, arg: Any, node: dict[str, Any]) -> Callable[[Any], bool] | None:
    if keyword == "type":
        names = [arg] if isinstance(arg, str) else arg
        if not isinstance(names, list) or not names or any(n not in _TYPES for n in names):
            return None
        tests = [_TYPES[n] for n in names]
        return tests[0] if len(tests) == 1 else (lambda v: any(t(v) for t in tests))
    if keyword == "enum":
        if not isinstance(arg, list) or not arg or not all(isinstance(x, str) for x in arg):
            return None
        symbols = frozenset(arg)
        return lambda v: isinstance(v, str) and v in symbols
    if keyword in ("minLength", "maxLength", "minItems", "maxItems") and isinstance(arg, int) \
            and not isinstance(arg, bool):
        kind = str if keyword.endswith("Length") else list
        if keyword.startswith("min"):
            return lambda v: not isinstance(v, kind) or len(v) >= arg
        return lambda v: not isinstance(v, kind) or len(v) <= arg
    if keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") and _is_number(arg):
        compare = {"minimum": lambda v: v >= arg, "maximum": lambda v: v <= arg,
                   "exclusiveMinimum": lambda v: v > arg, "exclusiveMaximum": lambda v: v < arg}[keyword]
        return lambda v: not _is_number(v) or compare(v)
    if keyword == "pattern" and isinstance(arg, str):
        try:
            search = re.compile(arg).search
        except re.error:
            return None
        return lambda v: not isinstance(v, str) or search(v) is not None
    if keyword == "required" and isinstance(arg, list) and all(isinstance(x, str) for x in arg):
        names = tuple(arg)
        return lambda v: not isinstance(v, dict) or all(n in v for n in names)
    if keyword == "properties" and isinstance(arg, dict):
        subs = {}
        for name, sub in arg.items():
            check = fast_check(sub)
            if check is None:
                return None
            subs[name] = check
        pairs = tuple(subs.items())
        return lambda v: not isinstance(v, dict) or all(n not in v or c(v[n]) for n, c in pairs)
    if keyword == "additionalProperties":
        if "patternProperties" in node:
            return None
        declared = frozenset(node.get("properties") or ())
        if arg is True:
            return lambda _v: True
        if arg is False:
            return lambda v: not isinstance(v, dict) or all(k in declared for k in v)
        values = fast_check(arg)
        if values is None:
            return None
        return lambda v: not isinstance(v, dict) or all(k in declared or values(x) for k, x in v.items())
    if keyword == "items":
        items = fast_check(arg) if isinstance(arg, dict) else None
        if items is None:
            return None
        return lambda v: not isinstance(v, list) or all(items(x) for x in v)
    return None


# ---- events -------------------------------------------------------------------------------------------
class _Version:
    """One schema version as the decoder reads it: its validator (with the fast check of its common keywords,
    when it has only those) and the names a dead letter may show."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.validator = _validator(document)
        self.fast = fast_check(document) if type(self.validator).__name__ in _FAST_DRAFTS else None
        self.names = frozenset(_declared_names(document, set()))
        properties = document.get("properties")
        self.properties = tuple(properties) if isinstance(properties, dict) else ()


class JsonSchemaDecoder(RegistryFramedDecoder):
    """Decodes one topic's Confluent-framed JSON events: the framing, the registry id (the policy's, or a
    registered writer version's), JSON, validation against that id's schema, then the record in the
    policy model (fields the policy does not name are dropped: a writer version's are said in the audit)."""

    family = "JSON Schema"
    # a policy that names no id, read offline by `policy test` or `scan`: its own schema, as the sanitized
    # decoder assumes (the worker always knows the raw subject's ids)
    own_when_unnamed = True

    def __init__(self, schema: SchemaFile, schema_id: int | None, max_record_bytes: int,
                 writers: dict[int, RegisteredWriter] | None = None) -> None:
        super().__init__(schema, schema_id, max_record_bytes, writers)
        self.own = _Version(orjson.loads(schema.native or "{}"))
        self.conform = _conformer(schema.raw, schema.parsed.get("__named_schemas", {}))

    def decode_event(self, value: bytes | None) -> Decoded:
        _, writer = self._version(value)
        assert value is not None  # _version refused an empty one
        version, unannotated = (self.own, NO_FIELDS) if writer is None else (writer.reader, writer.unannotated)
        try:
            document = orjson.loads(value[CONFLUENT_HEADER_BYTES:])
        except orjson.JSONDecodeError as exc:
            if "utf-8" in str(exc).lower() or "surrogate" in str(exc).lower():
                raise RejectedEvent("invalid_utf8", "the JSON after the Confluent header is not valid UTF-8") from None
            raise RejectedEvent("json_invalid", "the JSON after the Confluent header is not valid JSON "
                                f"(at character {exc.pos})") from None
        if not isinstance(document, dict):
            raise RejectedEvent("json_invalid", f"the JSON event is a {type(document).__name__}, not an object")
        fast = version.fast
        error = None if fast is not None and fast(document) else best_match(version.validator.iter_errors(document))
        if error is not None:
            raise RejectedEvent("json_schema_violation", f"the event violates {self.schema.fullname}'s JSON Schema "
                                f"at {_safe_path(error.absolute_path, version.names)}: {_constraint(error)}")
        return self.conform(document), Encoding.JSON_SCHEMA.value, unannotated


def _safe_path(path: Iterable[Any], names: frozenset[str]) -> str:
    """The data path of a violation with only schema-declared names (a map's keys may be values: '*')."""
    out = "$"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if part in names else ".*"
    return out


def _constraint(error: Any) -> str:
    """The violated keyword and the schema's side of it (never the event's value)."""
    text = f"'{error.validator}'"
    if error.validator in ("type", "required", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                           "minLength", "maxLength", "minItems", "maxItems", "format", "multipleOf",
                           "minProperties", "maxProperties"):
        text += f" {orjson.dumps(error.validator_value).decode()[:_MAX_CONSTRAINT_CHARS]}"
    return text


def _conformer(model: dict[str, Any], named: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A function: a validated JSON document -> the record in the policy model (declared fields in order,
    a missing optional one as None, numbers of double fields as floats, undeclared keys left out)."""
    def of(avro: Any) -> Callable[[Any], Any] | None:
        if isinstance(avro, str):
            if avro == "double":
                return lambda v: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
            if avro in named:
                return of(named[avro])
            return None
        if isinstance(avro, list):
            inner = [of(branch) for branch in avro if branch != "null"]
            one = inner[0] if inner else None
            return None if one is None else (lambda v: None if v is None else one(v))
        kind = avro.get("type")
        if kind == "record":
            return record_of(avro)
        if kind == "array":
            item = of(avro["items"])
            return None if item is None else (lambda v: [item(x) for x in v])
        if kind == "map":
            value = of(avro["values"])
            return None if value is None else (lambda v: {k: value(x) for k, x in v.items()})
        return None

    def record_of(avro: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
        fields = [(f["name"], of(f["type"]), "default" in f) for f in avro["fields"]]

        def conform(document: dict[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for name, convert, optional in fields:
                if name in document:
                    value = document[name]
                    out[name] = value if convert is None or value is None else convert(value)
                elif optional:
                    out[name] = None
                else:
                    raise RejectedEvent("missing_field", f"required field '{name}' is missing")
            return out
        return conform
    return record_of(model)


# ---- the sanitized schema ---------------------------------------------------------------------------
def sanitized_document(schema: SchemaFile, sanitized: dict[str, Any]) -> dict[str, Any]:
    """The sanitized JSON Schema of a plan's sanitized (Avro-shaped) record. The raw schema gives its draft
    and each object's content model: an object closed there (`additionalProperties: false`) is closed in
    the sanitized schema too, others stay open. A non-nullable field is required; a nullable one is always
    written (null when absent) but not required, so that a policy change that adds or removes it keeps
    the sanitized topic's consumers reading, as a field with a default does in Avro."""
    raw = orjson.loads(schema.native or "{}")
    document: dict[str, Any] = {}
    if isinstance(raw.get("$schema"), str):
        document["$schema"] = raw["$schema"]
    document["title"] = sanitized["name"]
    document.update(_Sanitized(raw).of(sanitized, raw))
    return document


class _Sanitized:
    """The sanitized schema's nodes, walked beside the raw schema's (for each object's content model)."""

    _SIMPLE: dict[str, dict[str, Any]] = {
        "string": {"type": "string"}, "bytes": {"type": "string", "contentEncoding": "base64"},
        "long": {"type": "integer"}, "int": {"type": "integer"}, "double": {"type": "number"},
        "float": {"type": "number"}, "boolean": {"type": "boolean"}, "null": {"type": "null"}}

    def __init__(self, raw: dict[str, Any]) -> None:
        self.converter = _Converter(raw)
        self.named: dict[str, dict[str, Any]] = {}

    def raw_node(self, node: Any, *path: str) -> dict[str, Any]:
        """The raw schema's node under `node` along `path` (keywords and property names), {} when absent."""
        for part in path:
            if not isinstance(node, dict):
                return {}
            try:
                node = self.converter.resolve(node, "")
            except ConversionError:
                return {}
            node = node.get(part)
        if not isinstance(node, dict):
            return {}
        try:
            return self.converter.resolve(node, "")
        except ConversionError:
            return {}

    def of(self, avro: Any, raw: dict[str, Any]) -> dict[str, Any]:
        if isinstance(avro, str):
            if avro in self._SIMPLE:
                return dict(self._SIMPLE[avro])
            found = self.named.get(avro) or next((v for k, v in self.named.items() if k.rsplit(".", 1)[-1] == avro),
                                                 {})
            return copy.deepcopy(found)
        if isinstance(avro, list):
            branches = [b for b in avro if b != "null"]
            inner = self.of(branches[0], raw) if len(branches) == 1 else {"anyOf": [self.of(b, raw)
                                                                                    for b in branches]}
            if "null" not in avro:
                return inner
            if isinstance(inner.get("type"), str) and "enum" not in inner:
                return {**inner, "type": [inner["type"], "null"]}
            return {"anyOf": [inner, {"type": "null"}]}
        kind = avro.get("type")
        if isinstance(kind, dict | list):
            return self.of(kind, raw)
        if "logicalType" in avro and kind not in ("record", "enum", "fixed"):
            return self.of(kind, raw)
        if kind == "record":
            out: dict[str, Any] = {"type": "object"}
            if avro.get("doc"):
                out["description"] = avro["doc"]
            properties = {}
            for f in avro["fields"]:
                prop = self.of(f["type"], self.raw_node(raw, "properties", f["name"]))
                if f.get("doc"):
                    prop["description"] = f["doc"]
                properties[f["name"]] = prop
            out["properties"] = properties
            out["required"] = [f["name"] for f in avro["fields"] if not _nullable(f["type"])]
            if raw.get("additionalProperties") is False:
                out["additionalProperties"] = False
            self.named[avro["name"]] = out
            return out
        if kind == "array":
            return {"type": "array", "items": self.of(avro["items"], self.raw_node(raw, "items"))}
        if kind == "map":
            return {"type": "object", "additionalProperties": self.of(avro["values"],
                                                                      self.raw_node(raw, "additionalProperties"))}
        if kind == "enum":
            out = {"type": "string", "enum": list(avro["symbols"])}
            self.named[avro["name"]] = out
            return out
        if kind == "fixed":
            out = {"type": "string", "contentEncoding": "base64"}
            self.named[avro["name"]] = out
            return out
        return self.of(kind, raw)


def _nullable(avro: Any) -> bool:
    return isinstance(avro, list) and "null" in avro


def _types(node: dict[str, Any]) -> set[str] | None:
    """The JSON types a sanitized node admits (None: any, e.g. an anyOf)."""
    declared = node.get("type")
    if isinstance(declared, str):
        return {declared}
    if isinstance(declared, list):
        return set(declared)
    return None


def incompatibilities(reader: Any, writer: Any, path: str = "$") -> list[str]:
    """Why a consumer validating with the sanitized schema `reader` may reject a record the gateway wrote
    under the sanitized schema `writer` (both derived by sanitized_document): a property the reader requires
    that the writer may leave out, a property the writer writes that a closed reader does not allow, or a
    type the reader does not admit. Paths name properties, never values."""
    if not isinstance(reader, dict) or not isinstance(writer, dict):
        return []
    out: list[str] = []
    read_types, write_types = _types(reader), _types(writer)
    if read_types is not None and (write_types is None or not write_types <= read_types):
        return [f"{path} is {'/'.join(sorted(write_types or {'any type'}))} in the records, "
                f"{'/'.join(sorted(read_types))} for the reader"]
    if "object" in (write_types or ()) and ("properties" in reader or "properties" in writer):
        theirs, ours = writer.get("properties") or {}, reader.get("properties") or {}
        for name in reader.get("required") or ():
            if name not in (writer.get("required") or ()):
                out.append(f"{path}.{name} is required by the reader, and the records may lack it")
        for name in theirs:
            if name not in ours and reader.get("additionalProperties") is False:
                out.append(f"{path}.{name} is in the records, and the reader does not allow it "
                           "(additionalProperties false)")
        if reader.get("additionalProperties") is False and writer.get("additionalProperties") is not False:
            out.append(f"{path} is closed for the reader and open in the records")
        for name, node in ours.items():
            if name in theirs:
                out += incompatibilities(node, theirs[name], f"{path}.{name}")
    if "array" in (write_types or ()):
        out += incompatibilities(reader.get("items"), writer.get("items"), f"{path}[]")
    if isinstance(reader.get("additionalProperties"), dict) and isinstance(writer.get("additionalProperties"), dict):
        out += incompatibilities(reader["additionalProperties"], writer["additionalProperties"], f"{path}{{}}")
    return out


def evolution_problems(new: dict[str, Any], previous: Sequence[tuple[str, dict[str, Any]]], mode: str) -> list[str]:
    """As gateway.core.codec.evolution.evolution_problems, for sanitized JSON Schemas: backward (the new
    schema validates every earlier record), forward (each earlier version validates the new records), full."""
    out: list[str] = []
    if mode == "none":
        return out
    for label, old in previous:
        if mode in ("backward", "full"):
            out += [f"backward ({label}, validated with the new schema): {p}" for p in incompatibilities(new, old)]
        if mode in ("forward", "full"):
            out += [f"forward (the new records, validated with {label}): {p}" for p in incompatibilities(old, new)]
    return out


# ---- the codec ------------------------------------------------------------------------------------
def _load_document(text: str | bytes, where: str) -> dict[str, Any]:
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise PolicyError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise PolicyError(f"{where}: a JSON Schema document must be an object")
    try:
        _validator(document)
    except SchemaError as exc:
        raise PolicyError(f"{where}: not a valid JSON Schema (at {'/'.join(map(str, exc.path)) or 'the top'}: "
                          f"'{exc.validator}')") from None
    return document


def _shape(avro: Any) -> Any:
    """An Avro type without nullability and record names, to compare a writer's field with the policy's."""
    if isinstance(avro, list):
        branches = [b for b in avro if b != "null"]
        return _shape(branches[0]) if len(branches) == 1 else [_shape(b) for b in branches]
    if isinstance(avro, dict):
        kind = avro.get("type")
        if kind == "record":
            return ("record", tuple((f["name"], _shape(f["type"])) for f in avro["fields"]))
        if kind == "array":
            return ("array", _shape(avro["items"]))
        if kind == "map":
            return ("map", _shape(avro["values"]))
        return _shape(kind)
    return avro


class JsonSchemaCodec:
    format = SchemaFormat.JSON_SCHEMA
    suffixes = (".schema.json",)
    registry_type = "JSON"
    encoding = Encoding.JSON_SCHEMA

    def load(self, path: Path) -> SchemaFile:
        try:
            text = Path(path).read_bytes()
        except OSError as exc:
            raise PolicyError(f"{path}: cannot read schema: {exc.strerror}") from None
        document = _load_document(text, str(path))
        try:
            raw = to_policy_model(document)
        except ConversionError as exc:
            raise PolicyError(f"{path}: {exc}") from None
        try:
            parsed = fastavro.parse_schema(raw)
        except Exception as exc:  # fastavro raises several types
            raise PolicyError(f"{path}: its record form is not valid ({exc})") from None
        return SchemaFile(Path(path), raw, parsed, SchemaFormat.JSON_SCHEMA, text.decode())

    def decoder(self, schema: SchemaFile, input_mode: str, schema_id: int | None, max_record_bytes: int,
                writers_by_id: dict[int, Any], writers_by_fingerprint: dict[bytes, Any]) -> JsonSchemaDecoder:
        return JsonSchemaDecoder(schema, schema_id, max_record_bytes, writers_by_id)

    def same_schema(self, schema: SchemaFile, registered: str) -> bool:
        try:
            return _canonical(orjson.loads(registered)) == _canonical(orjson.loads(schema.native or "{}"))
        except orjson.JSONDecodeError:
            return False

    def writer(self, schema: SchemaFile, registered: str, label: str) -> RegisteredWriter:
        """A registered version: its events are validated against it, then read as the policy's record. It
        is readable when every field the policy requires is required there with the same shape, and every
        field the policy has that it also has is of the same shape; its other properties are dropped."""
        try:
            document = _load_document(registered, label)
            version = _Version(document)
            model = to_policy_model(document)
        except (PolicyError, ConversionError) as exc:
            return RegisteredWriter(label, None, (), f"not a schema the policy can read ({exc})")
        theirs = {f["name"]: f for f in model["fields"]}
        ours = {f["name"]: f for f in schema.raw["fields"]}
        unannotated = tuple(name for name in version.properties if name not in ours)
        for name, field in ours.items():
            other = theirs.get(name)
            if other is None:
                if "default" not in field:
                    return RegisteredWriter(label, version, unannotated, f"it lacks field '{name}', which the "
                                            "policy requires (make it optional in the policy)")
                continue
            if _shape(other["type"]) != _shape(field["type"]):
                return RegisteredWriter(label, version, unannotated, f"field '{name}' has another type there")
            if "default" in other and "default" not in field:
                return RegisteredWriter(label, version, unannotated, f"field '{name}' is optional there and "
                                        "required by the policy (make it optional in the policy)")
        return RegisteredWriter(label, version, unannotated)

    def sanitized_schema(self, schema: SchemaFile, sanitized: dict[str, Any]) -> str:
        return orjson.dumps(sanitized_document(schema, sanitized)).decode()

    def sanitized_problems(self, text: str, previous: Sequence[tuple[str, str]], compatibility: str) -> list[str]:
        """Checked here (then by the registry's own JSON Schema rule): earlier versions that are not JSON are
        another format's, which no JSON consumer could have read."""
        problems: list[str] = []
        versions: list[tuple[str, dict[str, Any]]] = []
        for label, old in previous:
            try:
                versions.append((label, orjson.loads(old)))
            except orjson.JSONDecodeError:
                problems.append(f"{label} is not a JSON Schema: the subject holds another format's schemas")
        return problems + evolution_problems(orjson.loads(text), versions, compatibility)

    def encoder(self, schema: SchemaFile, sanitized: dict[str, Any]) -> Callable[[dict[str, Any]], bytes]:
        return json_bytes

    def reader(self, schema: SchemaFile, sanitized: dict[str, Any]) -> Callable[[bytes], dict[str, Any]]:
        def read(payload: bytes) -> dict[str, Any]:
            record = orjson.loads(payload)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            return record
        return read
