"""Schema ids from a Schema Registry (confluent_kafka.schema_registry): writer versions in, the
sanitized schema's evolution checked and registered.

A policy may say `"schema_id": "registry"` and `"sanitized_schema_id": "registry"` instead of
repeating the ids producers' serializers got. At start-up the gateway reads every version of the
raw subject (TopicNameStrategy: `<topic>-value`): the one that is the policy's schema (same Parsing
Canonical Form) gives its id, each other becomes a writer schema resolved to the policy's by Avro's
rules (gateway/core/codec/evolution.py), so events of every producer version decode. Ids registered later are
looked up when first met (WriterSchemaLookup). The derived sanitized schema is checked against every
version under `<sanitized topic>-value` (setting sanitized_compatibility), then by the registry's own
rule, and registered; a policy change that would break the sanitized topic's consumers stops the
worker before it publishes anything, naming the field and the rule.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import orjson

from gateway.core.codec.formats import codec_for
from gateway.core.policy.plan import Plan, Problem
from gateway.errors import ConfigError, GatewayError
from gateway.retry import exponential, retry_call

log = logging.getLogger("gateway.registry")


def subject_of(topic: str) -> str:
    """Confluent's default TopicNameStrategy for record values."""
    return f"{topic}-value"


def resolve_ids(plans: Sequence[Plan], url: str, compatibility: str = "full") -> list[Plan]:
    """The plans with every "registry" id resolved (plans without any come back unchanged): the raw
    subject's versions become the plan's writer schemas, and the sanitized schema is registered after
    the evolution check under `compatibility` (the setting sanitized_compatibility)."""
    wanted = [p for p in plans if p.schema_id_from_registry or p.sanitized_schema_id_from_registry]
    if not wanted:
        return list(plans)
    if not url:
        names = ", ".join(p.name for p in wanted)
        raise ConfigError(f"setting 'schema_registry_url' (GATEWAY_SCHEMA_REGISTRY_URL): the policies of {names} "
                          "take their schema ids from a registry; set its URL")
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    client = SchemaRegistryClient({"url": url})
    out = []
    for plan in plans:
        changes: dict[str, Any] = {}
        try:
            if plan.schema_id_from_registry:
                own, writers = _raw_writers(client, plan)
                changes["schema_id"] = own
                changes["writers_by_id"] = {**plan.writers_by_id, **writers}
            if plan.sanitized_schema_id_from_registry:
                changes["sanitized_schema_id"] = _register_sanitized(client, plan, Schema, compatibility)
        except SchemaRegistryError as exc:
            raise GatewayError(f"schema registry {url}: {plan.name}: {exc.error_message} "
                               f"(HTTP {exc.http_status_code})") from None
        except OSError as exc:
            raise GatewayError(f"schema registry {url} does not answer ({type(exc).__name__}: {exc})") from None
        out.append(dataclasses.replace(plan, **changes) if changes else plan)
        if changes:
            log.info("schema ids from the registry", extra={
                "schema": plan.name, "schema_id": changes.get("schema_id"),
                "writer_ids": sorted(changes.get("writers_by_id", {})),
                "sanitized_schema_id": changes.get("sanitized_schema_id")})
    return out


def registered_versions(client: Any, subject: str) -> list[tuple[int, int, dict[str, Any]]]:
    """(version, schema id, schema) of every version of an Avro `subject`, oldest first; [] if it has none."""
    return [(version, schema_id, orjson.loads(text)) for version, schema_id, text in registered_texts(client, subject)]


def registered_texts(client: Any, subject: str) -> list[tuple[int, int, str]]:
    """(version, schema id, schema text) of every version of `subject` (any format), oldest first."""
    if subject not in client.get_subjects():
        return []
    out = []
    for version in sorted(client.get_versions(subject)):
        registered = client.get_version(subject, version)
        out.append((int(version), int(registered.schema_id), str(registered.schema.schema_str)))
    return out


def _raw_writers(client: Any, plan: Plan) -> tuple[int | None, dict[int, Any]]:
    """The policy schema's own id (None if that exact schema is not registered) and every other
    version of the raw subject as a writer schema resolved to the policy's. The latest version must
    resolve: producers write it, and the worker would dead-letter them all."""
    subject = subject_of(plan.source_topic)
    versions = registered_texts(client, subject)
    if not versions:
        raise GatewayError(f"schema registry: subject '{subject}' has no versions: producers of {plan.source_topic} "
                           "register the raw schema (their serializer does it on first use), or the policy names "
                           "a static schema_id")
    codec = codec_for(plan.schema.format)  # which version is the policy's, and how to read the others
    own: int | None = None
    writers: dict[int, Any] = {}
    for version, schema_id, text in versions:
        if codec.same_schema(plan.schema, text):
            own = schema_id
            continue
        writer = codec.writer(plan.schema, text, f"registry id {schema_id} (version {version} of '{subject}')")
        writers[schema_id] = writer
        if writer.problem is not None:
            log.warning("a registered version cannot be read with the policy: its events are dead-lettered",
                        extra={"schema": plan.name, "subject": subject, "version": version, "schema_id": schema_id,
                               "problem": writer.problem})
        elif writer.unannotated:
            log.warning("a registered version has fields the policy does not annotate: they are dropped",
                        extra={"schema": plan.name, "subject": subject, "version": version,
                               "fields": list(writer.unannotated)})
    latest_version, latest_id, _ = versions[-1]
    latest = writers.get(latest_id)
    if latest is not None and latest.problem is not None:
        raise GatewayError(f"schema registry: the latest version ({latest_version}, id {latest_id}) of subject "
                           f"'{subject}' cannot be read with the policy {plan.name}: {latest.problem}; update the "
                           "policy's schema so it resolves (a removed field needs a default in the policy)")
    return own, writers


def _register_sanitized(client: Any, plan: Plan, schema_class: Any, compatibility: str) -> int:
    subject = subject_of(plan.sanitized_topic)
    problems = sanitized_evolution_problems(client, plan, compatibility)
    if problems:
        raise GatewayError(f"the sanitized schema of {plan.name} (policy {plan.policy_hash}) is not compatible "
                           f"with the versions of subject '{subject}' under sanitized_compatibility={compatibility}, "
                           f"so consumers of '{plan.sanitized_topic}' would break: " + "; ".join(problems[:5])
                           + ". Change the policy compatibly (a field the sanitized schema gains or loses needs a "
                           "default: a nullable field with default null), publish under a new sanitized_topic, or "
                           "set sanitized_compatibility")
    codec = codec_for(plan.schema.format)
    schema = schema_class(codec.sanitized_schema(plan.schema, plan.sanitized_schema), codec.registry_type)
    if subject in client.get_subjects() and not client.test_compatibility(subject, schema):
        raise GatewayError(f"schema registry: the sanitized schema of {plan.name} (policy {plan.policy_hash}) is "
                           f"not compatible with the versions of subject '{subject}' under the registry's "
                           "compatibility rule: consumers of the sanitized topic would break; change the policy "
                           "compatibly or register under a new topic")
    return int(client.register_schema(subject, schema))


def sanitized_evolution_problems(client: Any, plan: Plan, compatibility: str) -> list[str]:
    """Why the plan's sanitized schema may not follow the versions registered under its subject."""
    previous = [(f"sanitized version {version} (id {schema_id})", text)
                for version, schema_id, text in registered_texts(client, subject_of(plan.sanitized_topic))]
    codec = codec_for(plan.schema.format)
    return codec.sanitized_problems(codec.sanitized_schema(plan.schema, plan.sanitized_schema), previous,
                                    compatibility)


def lint_against_registry(plans: Sequence[Plan], url: str, compatibility: str) -> list[Problem]:
    """`gateway policy lint --schema-registry-url`: for every registered version of each raw subject, the
    fields the policy does not annotate (warnings) and versions it cannot read (errors); and whether
    the sanitized schema may be registered after the versions already there (errors if not)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    client = SchemaRegistryClient({"url": url})
    problems: list[Problem] = []
    for plan in plans:
        where = str(plan.schema.path)
        subject = subject_of(plan.source_topic)
        try:
            versions = registered_texts(client, subject)
            codec = codec_for(plan.schema.format)
            if not versions:
                problems.append(Problem("warning", where, "(registry)", f"subject '{subject}' has no versions yet"))
            for version, schema_id, text in versions:
                if codec.same_schema(plan.schema, text):
                    continue
                writer = codec.writer(plan.schema, text, f"version {version} (id {schema_id})")
                label = f"{subject} version {version} (id {schema_id})"
                if writer.problem is not None:
                    problems.append(Problem("error", where, label, f"the policy cannot read it: {writer.problem}"))
                for path in writer.unannotated:
                    problems.append(Problem("warning", where, label, f"field '{path}' is not in the policy: it is "
                                            "dropped; annotate it to keep, tokenize or encrypt it"))
            problems += [Problem("error", where, f"{subject_of(plan.sanitized_topic)} (sanitized)", message)
                         for message in sanitized_evolution_problems(client, plan, compatibility)]
        except SchemaRegistryError as exc:
            raise GatewayError(f"schema registry {url}: {plan.name}: {exc.error_message} "
                               f"(HTTP {exc.http_status_code})") from None
        except OSError as exc:
            raise GatewayError(f"schema registry {url} does not answer ({type(exc).__name__}: {exc})") from None
    return problems


class WriterSchemaLookup:
    """Schemas by registry id, for ids met after start-up (a producer upgraded, a policy changed).

    Found schemas are kept for good (a registry id never changes its schema); an id the registry does
    not know is asked again only after `retry_unknown_s`, so a stream of bad ids costs one request per
    id and interval. Registry errors other than "not found" raise GatewayError: the caller decides
    whether to retry (the worker) or to report the record undecodable (a consumer)."""

    def __init__(self, url: str, retry_unknown_s: float = 30.0) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self.url = url
        self._client = SchemaRegistryClient({"url": url})
        self._found: dict[int, dict[str, Any]] = {}
        self._texts: dict[int, tuple[str, str]] = {}
        self._unknown_until: dict[int, float] = {}
        self.retry_unknown_s = retry_unknown_s

    def __call__(self, schema_id: int) -> dict[str, Any] | None:
        """The Avro schema (parsed JSON) registered under `schema_id`; None if the registry has no such id
        (or it is of another format)."""
        registered = self.registered(schema_id)
        if registered is None or registered[0] != "AVRO":
            return None
        if schema_id not in self._found:
            self._found[schema_id] = orjson.loads(registered[1])
        return self._found[schema_id]

    def registered(self, schema_id: int) -> tuple[str, str] | None:
        """(schemaType, schema text) registered under `schema_id`, any format; None if the registry has no such id."""
        import time

        from confluent_kafka.schema_registry.error import SchemaRegistryError

        if schema_id in self._texts:
            return self._texts[schema_id]
        if self._unknown_until.get(schema_id, 0.0) > time.monotonic():
            return None
        try:
            schema = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                if len(self._unknown_until) > 10_000:
                    self._unknown_until.clear()
                self._unknown_until[schema_id] = time.monotonic() + self.retry_unknown_s
                return None
            raise GatewayError(f"schema registry {self.url}: id {schema_id}: {exc.error_message} "
                               f"(HTTP {exc.http_status_code})") from None
        except OSError as exc:
            raise GatewayError(f"schema registry {self.url} does not answer ({type(exc).__name__}: {exc})") from None
        found = (str(schema.schema_type or "AVRO"), str(schema.schema_str))
        self._texts[schema_id] = found
        return found


class NewWriterIds:
    """Registry ids first met in a batch, looked up before the batch is decoded: a producer registered
    a new version of the raw schema after the worker started (its serializer does on first use).

    Each id becomes a writer schema of its topic's decoder, resolved to the policy's (or marked
    unreadable, so its events are dead-lettered incompatible_writer_schema); an id the registry does
    not know stays unknown (unknown_schema_id). While the registry does not answer, the lookup is
    retried with backoff for up to `patience_s`, then the worker stops: a valid event is never
    dead-lettered because the registry was down, and the batch is read again after the restart."""

    def __init__(self, stages: Sequence[Any], lookup: Any, patience_s: float = 60.0) -> None:
        """`lookup`: registry id -> (schemaType, schema text), or None if unknown (WriterSchemaLookup.registered)."""
        self.stages = {s.plan.source_topic: s for s in stages if s.plan.schema_id_from_registry}
        self.lookup = lookup
        self.patience_s = patience_s

    def resolve(self, events: Sequence[Any]) -> None:
        if not self.stages:
            return
        values: dict[str, list[bytes | None]] = {}
        for event in events:
            if event.topic in self.stages:
                values.setdefault(event.topic, []).append(event.value)
        for topic, topic_values in values.items():
            stage = self.stages[topic]
            codec = codec_for(stage.plan.schema.format)
            for schema_id in sorted(stage.decoder.unknown_ids(topic_values)):
                registered = self._lookup(schema_id)
                if registered is None or registered[0] != codec.registry_type:
                    continue  # unknown, or of another format: its events are dead-lettered unknown_schema_id
                writer = codec.writer(stage.plan.schema, registered[1], f"registry id {schema_id}")
                stage.decoder.add_writer(schema_id, writer)
                log.info("a new writer schema from the registry", extra={
                    "schema": stage.plan.name, "schema_id": schema_id, "readable": writer.problem is None,
                    "unannotated_fields": list(writer.unannotated), "problem": writer.problem})

    def _lookup(self, schema_id: int) -> tuple[str, str] | None:
        def note(_attempt: int, exc: BaseException, _delay: float) -> None:
            log.warning("schema registry lookup failed: retrying", extra={"schema_id": schema_id, "error": str(exc)})

        return retry_call(lambda: self.lookup(schema_id), retry_if=lambda exc: isinstance(exc, GatewayError),
                          within_s=self.patience_s, delay=exponential(0.5, 8.0), on_retry=note)
