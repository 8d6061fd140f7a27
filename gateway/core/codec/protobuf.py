"""Protobuf (proto3) schemas and Confluent-framed Protobuf values, on the policy's Avro-shaped model.

A `.proto` file is compiled once, at start-up, by protoc (the one bundled with grpcio-tools) into
descriptors; the first top-level message is the record. The policy lives in the schema like Avro's:
a field option `(gateway.privacy)` and a message option `(gateway.record_privacy)` from the shipped
`gateway/privacy.proto`, each a string holding what the Avro attribute `privacy` holds (an action
name or a JSON object). A custom option, not Confluent's `confluent.field_meta` tags: tags are
labels, while an action carries parameters (a token domain, a mask, a DP aggregate), and one
string in the Avro annotation's own syntax keeps one policy language across formats.

The message becomes the Avro-shaped schema the compiler, operators, quality rules and DP stages
already read (`avro_schema`), so the whole policy model applies unchanged:

    double, float, bool, string, bytes -> the same Avro primitive
    int32, sint32, sfixed32            -> int      int64, sint64, sfixed64, uint32, fixed32 -> long
    uint64, fixed64                    -> long (a value above 2**63-1 is dead-lettered)
    enum                               -> enum (its names; an undeclared number is dead-lettered)
    message                            -> ["null", record]         optional scalar -> ["null", T]
    repeated T                         -> array                    map<K, V> -> map (keys as strings)
    google.protobuf.Timestamp          -> ["null", long timestamp-micros]
    google.protobuf.*Value wrappers    -> ["null", T]
    oneof members                      -> each ["null", T]; at most one is set

Wire format (Confluent): magic byte 0, the 4-byte registry id, the message-index path of the
message in its file (a zig-zag varint count, then each index; the single byte 0 for the first
message), then the message. Decoding never puts a value into an error message.

The sanitized schema goes back out as a `.proto` derived from the raw file and the plan's sanitized
Avro schema (`SanitizedProto`): kept fields keep their Protobuf type, a field whose type the
operator changed (encrypted -> bytes, tokenized -> string) takes the type the sanitized schema
gives it, field numbers stay the raw ones, and the numbers of removed fields are `reserved`, so a
consumer's generated classes evolve as Protobuf's rules expect.
"""

from __future__ import annotations

import base64
import binascii
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2, unknown_fields
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import DecodeError, EncodeError, Message
from grpc_tools import _protoc_compiler, protoc

from gateway.errors import PolicyError, RejectedEvent

# the options of gateway/privacy.proto
PRIVACY_OPTION = 50601  # FieldOptions: the field's annotation
RECORD_PRIVACY_OPTION = 50602  # MessageOptions: the record-level block
OPTIONS_FILE = "gateway/privacy.proto"
_OPTIONS_ROOT = Path(__file__).resolve().parents[3]  # the directory holding the gateway package
TIMESTAMP = "google.protobuf.Timestamp"
_WRAPPERS = {
    "google.protobuf.DoubleValue": "double", "google.protobuf.FloatValue": "float",
    "google.protobuf.Int64Value": "long", "google.protobuf.UInt64Value": "long",
    "google.protobuf.Int32Value": "int", "google.protobuf.UInt32Value": "long",
    "google.protobuf.BoolValue": "boolean", "google.protobuf.StringValue": "string",
    "google.protobuf.BytesValue": "bytes",
}
_T = FieldDescriptor
_AVRO_OF = {
    _T.TYPE_DOUBLE: "double", _T.TYPE_FLOAT: "float", _T.TYPE_BOOL: "boolean", _T.TYPE_STRING: "string",
    _T.TYPE_BYTES: "bytes", _T.TYPE_INT32: "int", _T.TYPE_SINT32: "int", _T.TYPE_SFIXED32: "int",
    _T.TYPE_INT64: "long", _T.TYPE_SINT64: "long", _T.TYPE_SFIXED64: "long", _T.TYPE_UINT32: "long",
    _T.TYPE_FIXED32: "long", _T.TYPE_UINT64: "long", _T.TYPE_FIXED64: "long",
}
_PROTO_NAME = {
    _T.TYPE_DOUBLE: "double", _T.TYPE_FLOAT: "float", _T.TYPE_BOOL: "bool", _T.TYPE_STRING: "string",
    _T.TYPE_BYTES: "bytes", _T.TYPE_INT32: "int32", _T.TYPE_SINT32: "sint32", _T.TYPE_SFIXED32: "sfixed32",
    _T.TYPE_INT64: "int64", _T.TYPE_SINT64: "sint64", _T.TYPE_SFIXED64: "sfixed64", _T.TYPE_UINT32: "uint32",
    _T.TYPE_FIXED32: "fixed32", _T.TYPE_UINT64: "uint64", _T.TYPE_FIXED64: "fixed64",
}
_AVRO_TO_PROTO = {"string": "string", "bytes": "bytes", "int": "int32", "long": "int64", "float": "float",
                  "double": "double", "boolean": "bool"}
_ZERO = {"double": 0.0, "float": 0.0, "boolean": False, "string": "", "bytes": b"", "int": 0, "long": 0}
_UNSIGNED_64 = (_T.TYPE_UINT64, _T.TYPE_FIXED64)
_INT64_MAX = 2**63 - 1
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


# ---------------------------------------------------------------- the Confluent message-index path

def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def write_message_indexes(indexes: tuple[int, ...]) -> bytes:
    """Confluent's message-index path: [0] (the first message) is the single byte 0."""
    if indexes == (0,):
        return b"\x00"
    return _varint(_zigzag(len(indexes))) + b"".join(_varint(_zigzag(i)) for i in indexes)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    try:
        return _wire_varint(data, pos, len(data))
    except (_Truncated, _BadWireType):
        raise RejectedEvent("protobuf_bad_message_index", "the Confluent message-index path is truncated "
                            "or malformed") from None


def read_message_indexes(data: bytes, pos: int) -> tuple[tuple[int, ...], int]:
    """(message-index path, position after it) read at `pos`; RejectedEvent when malformed."""
    raw, pos = _read_varint(data, pos)
    count = (raw >> 1) ^ -(raw & 1)
    if count == 0:
        return (0,), pos
    if count < 0 or count > 64:
        raise RejectedEvent("protobuf_bad_message_index", "the Confluent message-index path has an impossible length")
    indexes = []
    for _ in range(count):
        raw, pos = _read_varint(data, pos)
        indexes.append((raw >> 1) ^ -(raw & 1))
    return tuple(indexes), pos


# ---------------------------------------------------------------- compiling .proto files

def compile_proto(path: Path, include: tuple[Path, ...] = ()) -> descriptor_pb2.FileDescriptorSet:
    """The file and everything it imports as a FileDescriptorSet, by protoc (grpcio-tools). Include
    paths: the file's directory, `include`, the gateway's options file and the well-known types."""
    path = Path(path)
    if not path.is_file():
        raise PolicyError(f"{path}: cannot read schema: no such file")
    wkt = Path(protoc.__file__).parent / "_proto"
    roots = [path.parent, *include, _OPTIONS_ROOT, wkt]
    args = [f"-I{root}" for root in roots]
    try:  # get_protos reports errors as values (protoc.main prints them): run it first for the message
        _protoc_compiler.get_protos(path.name.encode(), [str(r).encode() for r in roots])
    except _protoc_compiler.ProtocErrors as exc:
        problems = "; ".join(f"line {e.line + 1}:{e.column + 1}: {e.message.decode(errors='replace')}"
                             for e in exc.errors()[:5])
        raise PolicyError(f"{path}: not a valid .proto file ({problems})") from None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        code = protoc.main(["protoc", *args, "--include_imports", f"--descriptor_set_out={out}", path.name])
        if code != 0 or not out.is_file():
            raise PolicyError(f"{path}: protoc could not compile it (exit {code})")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _option_string(options: Message, number: int) -> str | None:
    """A string option by number, read from the options' unknown fields (the options file's
    extensions are not registered in the runtime's default pool, and need not be)."""
    for fd, value in options.ListFields():  # a runtime that knows the extension has parsed it
        if fd.is_extension and fd.number == number and isinstance(value, str):
            return value
    for unknown in unknown_fields.UnknownFieldSet(options):
        if unknown.field_number == number and unknown.wire_type == 2:
            data = unknown.data
            return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)
    return None


def _annotation(text: str | None, where: str) -> Any:
    """The option's string as the Avro attribute would hold it: JSON when it is an object, else the name."""
    if text is None:
        return None
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        try:
            return orjson.loads(stripped)
        except orjson.JSONDecodeError as exc:
            raise PolicyError(f"{where}: the privacy option is not valid JSON ({exc})") from None
    return stripped


@dataclass
class ProtoSchema:
    """One raw `.proto` compiled: its descriptors, its root message and the Avro-shaped schema."""

    path: Path
    text: str
    files: descriptor_pb2.FileDescriptorSet
    pool: descriptor_pool.DescriptorPool
    root: Descriptor
    avro: dict[str, Any]
    # Avro record full name -> message, for every message the Avro schema holds
    messages: dict[str, Descriptor] = field(default_factory=dict)

    @property
    def file(self) -> descriptor_pb2.FileDescriptorProto:
        return self.files.file[-1]  # protoc lists imports first


def load_proto(path: Path, include: tuple[Path, ...] = ()) -> ProtoSchema:
    """Compile `path` and derive the Avro-shaped schema the policy compiler reads (module docstring)."""
    path = Path(path)
    files = compile_proto(path, include)
    pool = descriptor_pool.DescriptorPool()
    for proto in files.file:
        pool.Add(proto)
    main = files.file[-1]
    if main.syntax != "proto3":
        raise PolicyError(f"{path}: only proto3 schemas are supported (syntax is '{main.syntax or 'proto2'}')")
    if not main.message_type:
        raise PolicyError(f"{path}: the file declares no message (its first message is the record)")
    root = pool.FindMessageTypeByName(_full(main.package, main.message_type[0].name))
    schema = ProtoSchema(path, path.read_text(encoding="utf-8"), files, pool, root, {})
    schema.avro = _Converter(path, schema.messages).record(root, top=True)
    return schema


def _full(package: str, name: str) -> str:
    return f"{package}.{name}" if package else name


class _Converter:
    """Descriptors -> Avro-shaped schema; a message or enum used twice is defined once, then named."""

    def __init__(self, path: Path, messages: dict[str, Descriptor]) -> None:
        self.path = path
        self.messages = messages
        self.defined: set[str] = set()

    def record(self, message: Descriptor, top: bool = False) -> Any:
        if message.full_name in self.defined:
            return message.full_name
        self.defined.add(message.full_name)
        self.messages[message.full_name] = message
        out: dict[str, Any] = {"type": "record", "name": message.full_name, "fields": []}
        if top:
            privacy = _annotation(_option_string(message.GetOptions(), RECORD_PRIVACY_OPTION),
                                  f"{self.path}: message {message.name}")
            if privacy is not None:
                out["privacy"] = privacy
        for fd in message.fields:
            out["fields"].append(self.field(message, fd))
        return out

    def field(self, message: Descriptor, fd: FieldDescriptor) -> dict[str, Any]:
        where = f"{self.path}: {message.name}.{fd.name}"
        if fd.type == _T.TYPE_GROUP:
            raise PolicyError(f"{where}: groups are not supported")
        out: dict[str, Any] = {"name": fd.name}
        if _is_map(fd):
            value_fd = fd.message_type.fields_by_name["value"]
            out["type"], out["default"] = {"type": "map", "values": self.value_type(value_fd)}, {}
        elif fd.is_repeated:
            out["type"], out["default"] = {"type": "array", "items": self.value_type(fd)}, []
        elif fd.type == _T.TYPE_MESSAGE or fd.has_presence:
            out["type"], out["default"] = ["null", self.value_type(fd)], None
        else:
            inner = self.value_type(fd)
            out["type"] = inner
            out["default"] = inner["symbols"][0] if isinstance(inner, dict) and inner.get("type") == "enum" \
                else _ZERO[_AVRO_OF[fd.type]]
        privacy = _annotation(_option_string(fd.GetOptions(), PRIVACY_OPTION), where)
        if privacy is not None:
            out["privacy"] = privacy
        return out

    def value_type(self, fd: FieldDescriptor) -> Any:
        if fd.type == _T.TYPE_MESSAGE:
            name = fd.message_type.full_name
            if name == TIMESTAMP:
                return {"type": "long", "logicalType": "timestamp-micros"}
            if name in _WRAPPERS:
                return _WRAPPERS[name]
            return self.record(fd.message_type)
        if fd.type == _T.TYPE_ENUM:
            enum = fd.enum_type
            if enum.full_name in self.defined:
                return enum.full_name
            self.defined.add(enum.full_name)
            return {"type": "enum", "name": enum.full_name, "symbols": [v.name for v in enum.values]}
        return _AVRO_OF[fd.type]


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.type == _T.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry


# ---------------------------------------------------------------- decoding

_Convert = Callable[[Any], Any]


class ProtoDecoder:
    """Decodes a message of the root type into the Avro-shaped record, compiled once per schema.

    Protobuf skips fields it does not know, so a newer producer's message decodes with the policy's
    schema: its new fields are reported (as `#<number>` paths) and dropped, as privacy by default
    wants. A known field number arriving with another wire type is dead-lettered."""

    def __init__(self, root: Descriptor) -> None:
        self.root = root
        self.message_class = message_factory.GetMessageClass(root)
        self._readers: dict[str, Callable[[Message], dict[str, Any]]] = {}
        self._read = self._reader(root)

    def decode(self, payload: bytes) -> tuple[dict[str, Any], tuple[str, ...]]:
        """(record, unknown field paths) of the message `payload`; RejectedEvent when it is not one."""
        message = self.message_class()
        try:
            message.ParseFromString(payload)
        except DecodeError:
            raise _classify(payload, self.root) from None
        # the runtime keeps fields it does not know: whether there are any is a size comparison (cheap,
        # in C); only then are they walked, on a fresh parse, to name them or refuse a wrong wire type
        size = message.ByteSize()
        message.DiscardUnknownFields()
        if message.ByteSize() == size:
            return self._read(message), ()
        unknown = _unknown_paths(self.message_class.FromString(payload), "")
        if isinstance(unknown, RejectedEvent):
            raise unknown
        return self._read(message), tuple(unknown)

    def _reader(self, message: Descriptor) -> Callable[[Message], dict[str, Any]]:
        name = message.full_name
        if name in self._readers:
            return self._readers[name]
        steps: list[tuple[str, bool, _Convert]] = []

        def read(msg: Message) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for fname, presence, convert in steps:
                if presence and not msg.HasField(fname):
                    out[fname] = None
                else:
                    out[fname] = convert(getattr(msg, fname))
            return out

        self._readers[name] = read  # before the fields: a message may hold itself
        for fd in message.fields:
            presence = not fd.is_repeated and (fd.type == _T.TYPE_MESSAGE or fd.has_presence)
            steps.append((fd.name, presence, self._converter(message, fd)))
        return read

    def _converter(self, message: Descriptor, fd: FieldDescriptor) -> _Convert:
        if _is_map(fd):
            value = self._value_converter(message, fd.message_type.fields_by_name["value"])
            return lambda container: {str(k): value(v) for k, v in container.items()}
        value = self._value_converter(message, fd)
        if fd.is_repeated:
            return lambda container: [value(v) for v in container]
        return value

    def _value_converter(self, message: Descriptor, fd: FieldDescriptor) -> _Convert:
        where = f"field '{fd.name}' of {message.full_name}"
        if fd.type == _T.TYPE_MESSAGE:
            name = fd.message_type.full_name
            if name == TIMESTAMP:
                return lambda ts: ts.seconds * 1_000_000 + ts.nanos // 1000
            if name in _WRAPPERS:
                return _wrapper_value
            return self._reader(fd.message_type)
        if fd.type == _T.TYPE_ENUM:
            return _enum_converter(fd.enum_type, where)
        if fd.type in _UNSIGNED_64:
            def unsigned(v: int) -> int:
                if v > _INT64_MAX:
                    raise RejectedEvent("protobuf_value_out_of_range", f"{where} holds a 64-bit unsigned number "
                                        "above the largest long the policy's schema can hold")
                return v
            return unsigned
        return _identity


def _identity(value: Any) -> Any:
    return value


def _wrapper_value(wrapper: Any) -> Any:
    return wrapper.value


def _enum_converter(enum: EnumDescriptor, where: str) -> _Convert:
    names = {v.number: v.name for v in enum.values}

    def convert(number: int) -> str:
        try:
            return names[number]
        except KeyError:
            raise RejectedEvent("protobuf_unknown_enum_value", f"{where} holds a number that {enum.full_name} does "
                                "not declare (a newer producer's enum value: add it to the policy's schema)") from None
    return convert


def _unknown_paths(message: Message, prefix: str) -> list[str] | RejectedEvent:
    """Unknown fields of `message` and the messages it holds, as `#<number>` paths; a RejectedEvent
    when an unknown field has a number the schema declares (it came with another wire type)."""
    found: list[str] = []
    descriptor = message.DESCRIPTOR
    for unknown in unknown_fields.UnknownFieldSet(message):
        if unknown.field_number in descriptor.fields_by_number:
            fd = descriptor.fields_by_number[unknown.field_number]
            return RejectedEvent("protobuf_wrong_wire_type", f"field '{prefix}{fd.name}' of "
                                 f"{descriptor.full_name} arrived with wire type {unknown.wire_type}, not the "
                                 "one its type is written with")
        found.append(f"{prefix}#{unknown.field_number}")
    for fd, value in message.ListFields():
        if fd.type != _T.TYPE_MESSAGE or fd.message_type.full_name == TIMESTAMP:
            continue
        if _is_map(fd):
            if fd.message_type.fields_by_name["value"].type != _T.TYPE_MESSAGE:
                continue
            children = [(f"{prefix}{fd.name}{{}}.", v) for v in value.values()]
        elif fd.is_repeated:
            children = [(f"{prefix}{fd.name}[].", v) for v in value]
        else:
            children = [(f"{prefix}{fd.name}.", value)]
        for child_prefix, child in children:
            inner = _unknown_paths(child, child_prefix)
            if isinstance(inner, RejectedEvent):
                return inner
            found.extend(p for p in inner if p not in found)
    return found


def _classify(payload: bytes, root: Descriptor) -> RejectedEvent:
    """Why protoc's runtime refused `payload`: walk its tags to tell a truncated message, an invalid
    wire type and invalid UTF-8 apart (the runtime's DecodeError does not say)."""
    try:
        _walk(payload, 0, len(payload), root, 0)
    except _Truncated:
        return RejectedEvent("protobuf_truncated", f"the {root.full_name} message ended before a field was complete")
    except _BadWireType:
        return RejectedEvent("protobuf_wrong_wire_type", f"the {root.full_name} message holds a tag with an "
                             "invalid or mismatched wire type")
    except _BadUtf8:
        return RejectedEvent("invalid_utf8", f"the {root.full_name} message holds a string that is not valid UTF-8")
    return RejectedEvent("protobuf_decode_error", f"the payload is not a valid {root.full_name} message")


class _Truncated(Exception):
    pass


class _BadWireType(Exception):
    pass


class _BadUtf8(Exception):
    pass


def _wire_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """A base-128 varint at `pos`, before `end`: (value, position after it). At most ten bytes, as
    protobuf writes them (an eleventh is malformed: _BadWireType)."""
    result = shift = 0
    while True:
        if pos >= end:
            raise _Truncated
        if shift > 63:
            raise _BadWireType
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def _walk(data: bytes, pos: int, end: int, message: Descriptor | None, depth: int) -> None:
    while pos < end:
        tag, pos = _wire_varint(data, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0 or wire in (6, 7):
            raise _BadWireType
        fd = message.fields_by_number.get(number) if message is not None else None
        if wire == 0:
            _, pos = _wire_varint(data, pos, end)
        elif wire == 1 or wire == 5:
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise _Truncated
        elif wire == 2:
            length, pos = _wire_varint(data, pos, end)
            if pos + length > end:
                raise _Truncated
            if fd is not None and fd.type == _T.TYPE_STRING:
                try:
                    data[pos:pos + length].decode("utf-8")
                except UnicodeDecodeError:
                    raise _BadUtf8 from None
            elif fd is not None and fd.type == _T.TYPE_MESSAGE and depth < 64:
                _walk(data, pos, pos + length, fd.message_type, depth + 1)
            pos += length
        else:  # groups (3, 4) are not in proto3
            raise _BadWireType


# ---------------------------------------------------------------- the sanitized .proto and its encoder

class SanitizedProto:
    """The sanitized schema as a `.proto`: derived from the raw file and the plan's sanitized Avro
    schema; its first message is the record (message index [0]). `text` is what is registered
    (schemaType PROTOBUF); `encode` writes a sanitized record as that message.

    Messages are declared at the top level of package `<raw package>.<view>` under their raw names
    with the dots of nesting turned into underscores (Payment.Address -> Payment_Address); enums
    keep their values and numbers, inside their message's counterpart when the raw one is nested."""

    def __init__(self, raw: ProtoSchema, sanitized: dict[str, Any], view: str = "sanitized") -> None:
        self.raw = raw
        self.view = view
        main = raw.file
        self.package = f"{main.package}.{view}" if main.package else view
        self.file = descriptor_pb2.FileDescriptorProto(name=f"{self.package.replace('.', '/')}/"
                                                       f"{Path(main.name).stem}.proto",
                                                       package=self.package, syntax="proto3")
        self._names: dict[str, str] = {}  # raw message/enum full name -> sanitized message/enum name
        self._timestamp = False
        self._millis: set[tuple[str, str]] = set()  # (message, field): a Timestamp the record holds in ms
        self._enum_names: set[str] = set()  # raw full names of the enums in the file
        self._message(sanitized)
        if self._timestamp:
            self.file.dependency.append("google/protobuf/timestamp.proto")
        pool = descriptor_pool.DescriptorPool()
        if self._timestamp:
            pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
        try:
            pool.Add(self.file)
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"{raw.path}: the sanitized .proto is not valid ({exc})") from None
        self.root = pool.FindMessageTypeByName(f"{self.package}.{self.file.message_type[0].name}")
        self.message_class = message_factory.GetMessageClass(self.root)
        self.text = proto_text(self.file)
        self._writers: dict[str, Callable[[Message, dict[str, Any]], None]] = {}
        self._write = self._writer(self.root)

    # -- deriving the file
    def _raw_message(self, avro_name: str) -> Descriptor:
        namespace, _, name = avro_name.rpartition(".")
        suffix = "." + self.view
        if namespace == self.view:
            namespace = ""
        elif namespace.endswith(suffix):
            namespace = namespace[: -len(suffix)]
        raw_name = f"{namespace}.{name}" if namespace else name
        try:
            return self.raw.messages[raw_name]
        except KeyError:
            raise PolicyError(f"{self.raw.path}: the sanitized record {avro_name} has no message in the raw "
                              ".proto") from None

    def _local(self, full_name: str, package: str) -> str:
        local = full_name[len(package) + 1:] if package and full_name.startswith(package + ".") else full_name
        return local.replace(".", "_")

    def _message(self, record: dict[str, Any]) -> str:
        raw = self._raw_message(record["name"])
        name = self._local(raw.full_name, raw.file.package)
        self._names[raw.full_name] = name
        out = self.file.message_type.add(name=name)
        kept: set[int] = set()
        for avro_field in record["fields"]:
            fd = raw.fields_by_name.get(avro_field["name"])
            if fd is None:
                raise PolicyError(f"{self.raw.path}: sanitized field '{avro_field['name']}' of {raw.full_name} is "
                                  "not in the raw .proto")
            kept.add(fd.number)
            self._field(out, raw, fd, avro_field)
        for fd in raw.fields:
            if fd.number not in kept:  # dropped: its number is never reused for another meaning
                out.reserved_range.add(start=fd.number, end=fd.number + 1)
        return name

    def _field(self, out: descriptor_pb2.DescriptorProto, raw: Descriptor, fd: FieldDescriptor,
               avro_field: dict[str, Any]) -> None:
        where = f"{self.raw.path}: {raw.name}.{fd.name}"
        ftype = avro_field["type"]
        nullable = isinstance(ftype, list) and "null" in ftype
        if nullable:
            branches = [t for t in ftype if t != "null"]
            if len(branches) != 1:
                raise PolicyError(f"{where}: the sanitized type is a union Protobuf cannot express")
            ftype = branches[0]
        inner = ftype.get("items", ftype) if isinstance(ftype, dict) and ftype.get("type") == "array" else ftype
        if isinstance(inner, dict) and inner.get("logicalType") == "timestamp-millis":
            self._millis.add((out.name, fd.name))  # an operator's millisecond output (truncated dates)
        new = out.field.add(name=fd.name, number=fd.number, json_name=fd.json_name)
        new.label = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
        kind = ftype.get("type") if isinstance(ftype, dict) else ftype
        if kind == "map":
            entry = out.nested_type.add(name=_map_entry_name(fd.name))
            entry.options.map_entry = True
            key_type = (fd.message_type.fields_by_name["key"].type if _is_map(fd) else _T.TYPE_STRING)
            entry.field.add(name="key", number=1, type=key_type, json_name="key",
                            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
            value_raw = fd.message_type.fields_by_name["value"] if _is_map(fd) else fd
            value = entry.field.add(name="value", number=2, json_name="value",
                                    label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
            self._scalar_or_message(value, value_raw, ftype["values"], where)
            new.label = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
            new.type = _T.TYPE_MESSAGE
            new.type_name = f".{self.package}.{out.name}.{entry.name}"
            return
        if kind == "array":
            new.label = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
            self._scalar_or_message(new, fd, ftype["items"], where)
            return
        self._scalar_or_message(new, fd, ftype, where)
        if nullable and new.type not in (_T.TYPE_MESSAGE,):
            # proto3 `optional`: a synthetic oneof gives the scalar presence
            new.proto3_optional = True
            new.oneof_index = len(out.oneof_decl)
            out.oneof_decl.add(name=f"_{fd.name}")

    def _scalar_or_message(self, new: descriptor_pb2.FieldDescriptorProto, fd: FieldDescriptor, avro: Any,
                           where: str) -> None:
        """Set `new`'s type from the sanitized Avro type: the raw field's Protobuf type when the
        operator kept it, the Avro type's own Protobuf type when it changed it."""
        if isinstance(avro, list):
            raise PolicyError(f"{where}: the sanitized type is a union Protobuf cannot express")
        if isinstance(avro, str) and avro in _AVRO_TO_PROTO:
            same = fd.type in _AVRO_OF and _AVRO_OF[fd.type] == avro
            new.type = fd.type if same else _proto_type(avro)
            return
        if isinstance(avro, str):  # a named type defined earlier: an enum or a record
            return self._named_reference(new, avro, where)
        kind = avro.get("type")
        if kind == "record":
            new.type = _T.TYPE_MESSAGE
            new.type_name = f".{self.package}.{self._message(avro)}"
            return
        if kind == "enum":
            new.type = _T.TYPE_ENUM
            new.type_name = f".{self.package}.{self._enum(avro, where)}"
            return
        if kind == "long" and str(avro.get("logicalType", "")).startswith("timestamp-"):
            new.type = _T.TYPE_MESSAGE
            new.type_name = f".{TIMESTAMP}"
            self._timestamp = True
            return
        if isinstance(kind, str) and kind in _AVRO_TO_PROTO:
            same = fd.type in _AVRO_OF and _AVRO_OF[fd.type] == kind
            new.type = fd.type if same else _proto_type(kind)
            return
        raise PolicyError(f"{where}: the sanitized type {kind} has no Protobuf form")

    def _named_reference(self, new: descriptor_pb2.FieldDescriptorProto, avro_name: str, where: str) -> None:
        for raw_name, local in self._names.items():
            if raw_name == avro_name or self._sanitized_avro_name(raw_name) == avro_name:
                is_enum = raw_name in self._enum_names
                new.type = _T.TYPE_ENUM if is_enum else _T.TYPE_MESSAGE
                new.type_name = f".{self.package}.{local}"
                return
        raise PolicyError(f"{where}: the sanitized type {avro_name} is not defined before its use")

    def _sanitized_avro_name(self, raw_name: str) -> str:
        namespace, _, name = raw_name.rpartition(".")
        return f"{namespace}.{self.view}.{name}" if namespace else f"{self.view}.{name}"

    def _enum(self, avro: dict[str, Any], where: str) -> str:
        full = avro["name"]
        try:
            raw = self.raw.pool.FindEnumTypeByName(full)
        except KeyError:
            raise PolicyError(f"{where}: enum {full} is not in the raw .proto") from None
        parent = raw.containing_type
        parent_local = self._names.get(parent.full_name) if parent is not None else None
        if parent_local is not None:
            # inside its message's sanitized counterpart, as in the raw file: enum values are scoped to
            # the enclosing message, so two messages' enums may share value names (UNKNOWN = 0)
            (holder,) = [m for m in self.file.message_type if m.name == parent_local]
            out = holder.enum_type.add(name=raw.name)
            name = f"{parent_local}.{raw.name}"
        else:
            name = self._local(raw.full_name, raw.file.package)
            out = self.file.enum_type.add(name=name)
        self._names[raw.full_name] = name
        self._enum_names.add(raw.full_name)
        for value in raw.values:
            out.value.add(name=value.name, number=value.number)
        return name

    # -- encoding
    def encode(self, record: dict[str, Any]) -> bytes:
        """The sanitized record as the sanitized message's bytes (without framing)."""
        message = self.message_class()
        self._write(message, record)
        try:
            return message.SerializeToString()
        except EncodeError as exc:
            raise PolicyError(f"the sanitized {self.root.full_name} message cannot be written ({exc})") from None

    def _writer(self, message: Descriptor) -> Callable[[Message, dict[str, Any]], None]:
        name = message.full_name
        if name in self._writers:
            return self._writers[name]
        steps: list[Callable[[Message, dict[str, Any]], None]] = []

        def write(msg: Message, record: dict[str, Any]) -> None:
            for step in steps:
                step(msg, record)

        self._writers[name] = write
        for fd in message.fields:
            steps.append(self._field_writer(fd))
        return write

    def _field_writer(self, fd: FieldDescriptor) -> Callable[[Message, dict[str, Any]], None]:
        fname = fd.name
        if _is_map(fd):
            key_fd, value_fd = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
            to_key = _key_parser(key_fd)
            if value_fd.type == _T.TYPE_MESSAGE:
                inner = self._value_writer(value_fd)

                def write_message_map(msg: Message, record: dict[str, Any]) -> None:
                    container = getattr(msg, fname)
                    for k, v in (record.get(fname) or {}).items():
                        inner(container[to_key(k)], v)
                return write_message_map
            scalar = self._scalar(value_fd)

            def write_map(msg: Message, record: dict[str, Any]) -> None:
                container = getattr(msg, fname)
                for k, v in (record.get(fname) or {}).items():
                    container[to_key(k)] = scalar(v)
            return write_map
        if fd.is_repeated:
            if fd.type == _T.TYPE_MESSAGE:
                inner = self._value_writer(fd)

                def write_messages(msg: Message, record: dict[str, Any]) -> None:
                    container = getattr(msg, fname)
                    for v in record.get(fname) or ():
                        inner(container.add(), v)
                return write_messages
            scalar = self._scalar(fd)

            def write_list(msg: Message, record: dict[str, Any]) -> None:
                getattr(msg, fname).extend(scalar(v) for v in record.get(fname) or ())
            return write_list
        if fd.type == _T.TYPE_MESSAGE:
            inner = self._value_writer(fd)

            def write_message(msg: Message, record: dict[str, Any]) -> None:
                value = record.get(fname)
                if value is not None:
                    inner(getattr(msg, fname), value)
            return write_message
        scalar = self._scalar(fd)

        def write_scalar(msg: Message, record: dict[str, Any]) -> None:
            value = record.get(fname)
            if value is not None:
                setattr(msg, fname, scalar(value))
        return write_scalar

    def _value_writer(self, fd: FieldDescriptor) -> Callable[[Message, Any], None]:
        if fd.message_type.full_name == TIMESTAMP:
            scale = 1000 if (fd.containing_type.name, fd.name) in self._millis else 1

            def write_timestamp(ts: Message, value: Any) -> None:
                micros = int(value) * scale
                ts.seconds, ts.nanos = micros // 1_000_000, (micros % 1_000_000) * 1000
            return write_timestamp
        return self._writer(fd.message_type)

    @staticmethod
    def _scalar(fd: FieldDescriptor) -> _Convert:
        if fd.type == _T.TYPE_ENUM:
            numbers = {v.name: v.number for v in fd.enum_type.values}
            return numbers.__getitem__
        return _identity


def _map_entry_name(field_name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in field_name.split("_")) + "Entry"


def _key_parser(key_fd: FieldDescriptor) -> _Convert:
    if key_fd.type == _T.TYPE_STRING:
        return _identity
    if key_fd.type == _T.TYPE_BOOL:
        return lambda k: k == "True" or k == "true"
    return int


def _proto_type(avro: str) -> int:
    return {"string": _T.TYPE_STRING, "bytes": _T.TYPE_BYTES, "int": _T.TYPE_INT32, "long": _T.TYPE_INT64,
            "float": _T.TYPE_FLOAT, "double": _T.TYPE_DOUBLE, "boolean": _T.TYPE_BOOL}[avro]


# ---------------------------------------------------------------- .proto text

def proto_text(file: descriptor_pb2.FileDescriptorProto) -> str:
    """A FileDescriptorProto as `.proto` source (the subset the sanitized files use: messages, map
    entries, enums, proto3 optional, reserved numbers, imports)."""
    lines = [f'syntax = "{file.syntax or "proto3"}";', ""]
    if file.package:
        lines += [f"package {file.package};", ""]
    for dep in file.dependency:
        lines.append(f'import "{dep}";')
    if file.dependency:
        lines.append("")
    for message in file.message_type:
        lines += _message_text(message, file.package, "")
        lines.append("")
    for enum in file.enum_type:
        lines += _enum_text(enum, "")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _type_text(f: descriptor_pb2.FieldDescriptorProto, package: str) -> str:
    if f.type in (_T.TYPE_MESSAGE, _T.TYPE_ENUM):
        name = f.type_name.lstrip(".")
        return name[len(package) + 1:] if package and name.startswith(package + ".") else name
    return _PROTO_NAME[f.type]


def _message_text(message: descriptor_pb2.DescriptorProto, package: str, indent: str) -> list[str]:
    lines = [f"{indent}message {message.name} {{"]
    entries = {f".{package}.{message.name}.{n.name}" if package else f".{message.name}.{n.name}": n
               for n in message.nested_type if n.options.map_entry}
    for f in message.field:
        if f.type_name in entries:
            entry = entries[f.type_name]
            key, value = entry.field[0], entry.field[1]
            lines.append(f"{indent}  map<{_type_text(key, package)}, {_type_text(value, package)}> "
                         f"{f.name} = {f.number};")
            continue
        label = "repeated " if f.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED else (
            "optional " if f.proto3_optional else "")
        lines.append(f"{indent}  {label}{_type_text(f, package)} {f.name} = {f.number};")
    if message.reserved_range:
        numbers = ", ".join(str(r.start) if r.end == r.start + 1 else f"{r.start} to {r.end - 1}"
                            for r in message.reserved_range)
        lines.append(f"{indent}  reserved {numbers};")
    for enum in message.enum_type:
        lines += _enum_text(enum, indent + "  ")
    lines.append(f"{indent}}}")
    return lines


def _enum_text(enum: descriptor_pb2.EnumDescriptorProto, indent: str) -> list[str]:
    lines = [f"{indent}enum {enum.name} {{"]
    lines += [f"{indent}  {v.name} = {v.number};" for v in enum.value]
    lines.append(f"{indent}}}")
    return lines


# ---------------------------------------------------------------- registered versions

def registered_file(text: str, where: str) -> descriptor_pb2.FileDescriptorProto:
    """A schema as a registry holds it: Confluent's serializers register the base64 of the file's
    FileDescriptorProto, the gateway and hand-written registrations the `.proto` text. PolicyError
    (naming `where`) when it is neither."""
    stripped = text.strip()
    if _BASE64.match(stripped):  # .proto text always holds a space or a ';'
        try:
            return descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(stripped, validate=True))
        except (binascii.Error, DecodeError, ValueError):
            pass
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "registered.proto"
        path.write_text(text, encoding="utf-8")
        try:
            return compile_proto(path).file[-1]
        except PolicyError as exc:
            raise PolicyError(f"{where}: not a Protobuf schema the gateway reads "
                              f"({str(exc).split(': ', 1)[-1]})") from None


def message_protos(file: descriptor_pb2.FileDescriptorProto) -> dict[str, tuple[descriptor_pb2.DescriptorProto,
                                                                               tuple[int, ...]]]:
    """Every message of a file by full name, with its Confluent message-index path."""
    out: dict[str, tuple[descriptor_pb2.DescriptorProto, tuple[int, ...]]] = {}

    def walk(messages: Any, prefix: str, path: tuple[int, ...]) -> None:
        for i, message in enumerate(messages):
            full = f"{prefix}.{message.name}" if prefix else message.name
            out[full] = (message, (*path, i))
            walk(message.nested_type, full, (*path, i))
    walk(file.message_type, file.package, ())
    return out


# types whose values read back as the same numbers under the other. Not string and bytes, which share
# a wire type: a string reader refuses a ciphertext's bytes (not UTF-8), so a field the policy starts
# encrypting, or stops, is a conflict for the consumers holding the other version.
_WIRE_GROUPS = [
    {_T.TYPE_INT32, _T.TYPE_INT64, _T.TYPE_UINT32, _T.TYPE_UINT64, _T.TYPE_BOOL},
    {_T.TYPE_SINT32, _T.TYPE_SINT64},
    {_T.TYPE_FIXED32, _T.TYPE_SFIXED32}, {_T.TYPE_FIXED64, _T.TYPE_SFIXED64},
]


def _type_label(f: descriptor_pb2.FieldDescriptorProto) -> str:
    if f.type in (_T.TYPE_MESSAGE, _T.TYPE_ENUM):
        return f.type_name.lstrip(".").rsplit(".", 1)[-1]
    return _PROTO_NAME.get(f.type, str(f.type))


def field_conflicts(new: descriptor_pb2.FileDescriptorProto, new_root: str, old: descriptor_pb2.FileDescriptorProto,
                    old_root: str) -> list[str]:
    """Fields whose number means another thing in `new` than in `old` (another type, or repeated in
    one only), walking the root messages and the messages their fields hold, matched by number:
    data written with one is misread with the other. Added and removed fields are Protobuf's
    ordinary evolution (a reader skips or defaults them)."""
    new_messages, old_messages = message_protos(new), message_protos(old)
    out: list[str] = []
    seen: set[tuple[str, str]] = set()

    def walk(new_name: str, old_name: str, path: str) -> None:
        if (new_name, old_name) in seen or new_name not in new_messages or old_name not in old_messages:
            return
        seen.add((new_name, old_name))
        old_fields = {f.number: f for f in old_messages[old_name][0].field}
        for f in new_messages[new_name][0].field:
            before = old_fields.get(f.number)
            if before is None:
                continue
            where = f"{path}{f.name}"
            repeated = (f.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
                        before.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)
            if repeated[0] != repeated[1]:
                out.append(f"field '{where}' (number {f.number}) is repeated in one version only")
                continue
            if f.type == _T.TYPE_MESSAGE and before.type == _T.TYPE_MESSAGE:
                walk(f.type_name.lstrip("."), before.type_name.lstrip("."), f"{where}.")
                continue
            same = f.type == before.type or any(f.type in g and before.type in g for g in _WIRE_GROUPS)
            if f.type == _T.TYPE_ENUM and before.type == _T.TYPE_ENUM:
                same = True
            if not same:
                out.append(f"field '{where}' (number {f.number}) changes type from {_type_label(before)} to "
                           f"{_type_label(f)}")
    walk(new_root, old_root, "")
    return out


def structure(file: descriptor_pb2.FileDescriptorProto) -> bytes:
    """The file without its options, JSON names and source info: two files with the same structure
    are the same schema whatever their annotations (Avro's Parsing Canonical Form, for Protobuf)."""
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(file)
    copy.ClearField("options")
    copy.ClearField("source_code_info")
    copy.ClearField("name")

    def clean(messages: Any) -> None:
        for message in messages:
            message.ClearField("options")
            for f in message.field:
                f.ClearField("options")
                f.ClearField("json_name")
            clean(message.nested_type)
    clean(copy.message_type)
    for enum in copy.enum_type:
        enum.ClearField("options")
    deps = sorted(d for d in copy.dependency if d != OPTIONS_FILE)
    copy.ClearField("dependency")
    copy.dependency.extend(deps)
    return copy.SerializeToString(deterministic=True)
