"""Records of any gateway topic (sanitized, dead letters, audit) as JSON values, for `gateway dump`: the record
decoder behind the command, beside the reader that fetches the records."""

from __future__ import annotations

import base64
import re
from typing import Any

import orjson

from gateway.core.codec.encoding import CONFLUENT_HEADER_BYTES, SCHEMA_HEADER, Encoding, confluent_id
from gateway.core.codec.raw import decoded_for_json
from gateway.core.codec.sanitized import SanitizedDecoder, StoredRecord, UndecodableRecord, header_encoding, is_json
from gateway.core.policy.lint import load_plans
from gateway.errors import GatewayError
from gateway.runtime.registry import WriterSchemaLookup
from gateway.settings import GatewayConfig


class Dumper:
    """A topic's record -> JSON value (`gateway dump`): sanitized records decoded with the policies' schemas
    (and the registry's other versions), other values as they are; remembers the Avro records it could not decode."""

    def __init__(self, config: GatewayConfig, explicit: bool) -> None:
        self.config = config
        self.explicit = explicit  # --schemas or GATEWAY_SCHEMAS: a missing directory is an error
        self._decoder: SanitizedDecoder | bool | None = None  # False: no schemas
        self.undecoded: list[tuple[int, int, str]] = []  # (partition, offset, schema name)
        self.problem = ""
        self.problem_says_fix = False  # the decoder's message already says what to pass

    def _decoder_or_none(self) -> SanitizedDecoder | None:
        if self._decoder is None:
            if self.explicit or self.config.schemas.is_dir():
                writers = None
                if self.config.schema_registry_url:  # records of other sanitized schema versions
                    writers = WriterSchemaLookup(self.config.schema_registry_url)
                self._decoder = SanitizedDecoder(load_plans(self.config.require_schemas_dir()), writers)
            else:
                self._decoder = False
                self.problem = f"no schemas (no directory '{self.config.schemas}')"
        return self._decoder if isinstance(self._decoder, SanitizedDecoder) else None

    def line(self, record: StoredRecord) -> Any:
        name = record.headers.get(SCHEMA_HEADER)
        if name is None:
            return plain_value(record.value)
        value = record.value or b""
        if is_json(record):
            return plain_value(record.value)  # a JSON sanitized record needs no schema
        if header_encoding(record.headers) is Encoding.JSON_SCHEMA and confluent_id(value) is not None:
            return plain_value(value[CONFLUENT_HEADER_BYTES:])  # nor does Confluent-framed JSON (JSON Schema)
        decoder = self._decoder_or_none()
        plan = decoder.by_name.get(name.decode(errors="replace")) if decoder is not None else None
        if plan is not None:
            try:
                return decoded_for_json(decoder.decode(record)[1])
            except UndecodableRecord:  # corrupt or foreign bytes: shown encoded, named in the note
                self.problem = self.problem or "a record did not decode with its schema"
            except GatewayError as exc:  # another sanitized schema version: the message says how to fix
                if not self.problem:
                    self.problem, self.problem_says_fix = str(exc), True
        elif decoder is not None:
            self.problem = f"no policy in '{self.config.schemas}' has this sanitized schema"
        self.undecoded.append((record.partition, record.offset, name.decode(errors="replace")))
        return {**plain_value(value, text=False), "schema": name.decode(errors="replace")}

    def note(self, topic: str) -> str:
        names = ", ".join(sorted({n for _, _, n in self.undecoded}))
        where = ", ".join(f"{p}/{o}" for p, o, _ in self.undecoded[:5])
        more = f" and {len(self.undecoded) - 5} more" if len(self.undecoded) > 5 else ""
        return (f"note: {len(self.undecoded)} Avro record(s) of '{topic}' (schema {names}; partition/offset "
                f"{where}{more}) could not be decoded: {self.problem}. They are printed base64-encoded"
                + ("" if self.problem_says_fix else "; pass --schemas DIR (the annotated *.avsc of the raw "
                   "topics) to decode them"))


CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def plain_value(value: bytes | None, text: bool = True) -> Any:
    """A value as JSON: parsed when it is JSON, else its text ("value_encoding": "utf-8") when it is
    UTF-8 without control characters (and `text`), else its bytes base64-encoded ("value_encoding": "base64")."""
    if value is None:
        return None
    if text:
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            pass
        try:
            decoded = value.decode("utf-8")
        except UnicodeDecodeError:
            decoded = None
        if decoded is not None and not CONTROL.search(decoded):
            return {"value": decoded, "value_encoding": "utf-8"}
    return {"value": base64.b64encode(value).decode("ascii"), "value_encoding": "base64"}
