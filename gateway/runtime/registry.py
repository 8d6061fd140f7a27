"""Schema ids from a Schema Registry, at start-up (confluent_kafka.schema_registry).

A policy may say `"schema_id": "registry"` and `"sanitized_schema_id": "registry"` instead of
repeating the ids producers' serializers got. The gateway then looks up the raw schema under the
source topic's subject (TopicNameStrategy: `<topic>-value`), checks the registry's latest version is
the policy's schema (the same Avro, by Parsing Canonical Form: a schema the policy does not annotate
would be decoded wrongly), and registers the derived sanitized schema under `<sanitized topic>-value`,
after the registry's compatibility check against the versions already there, so a policy change
that would break the sanitized topic's consumers stops the worker before it publishes anything.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import orjson
from fastavro.schema import to_parsing_canonical_form

from gateway.errors import ConfigError, GatewayError
from gateway.policy import Plan

log = logging.getLogger("gateway.registry")


def subject_of(topic: str) -> str:
    """Confluent's default TopicNameStrategy for record values."""
    return f"{topic}-value"


def resolve_ids(plans: Sequence[Plan], url: str) -> list[Plan]:
    """The plans with every "registry" id resolved (plans without any come back unchanged)."""
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
                changes["schema_id"] = _raw_id(client, plan)
            if plan.sanitized_schema_id_from_registry:
                changes["sanitized_schema_id"] = _register_sanitized(client, plan, Schema)
        except SchemaRegistryError as exc:
            raise GatewayError(f"schema registry {url}: {plan.name}: {exc.error_message} "
                               f"(HTTP {exc.http_status_code})") from None
        except OSError as exc:
            raise GatewayError(f"schema registry {url} does not answer ({type(exc).__name__}: {exc})") from None
        out.append(dataclasses.replace(plan, **changes) if changes else plan)
        if changes:
            log.info("schema ids from the registry", extra={"schema": plan.name, **changes})
    return out


def _raw_id(client: Any, plan: Plan) -> int:
    subject = subject_of(plan.source_topic)
    latest = client.get_latest_version(subject)
    registered = to_parsing_canonical_form(orjson.loads(latest.schema.schema_str))
    policy = to_parsing_canonical_form(plan.schema.raw)  # the canonical form leaves the annotations out
    if registered != policy:
        raise GatewayError(f"schema registry: the latest version ({latest.version}, id {latest.schema_id}) of subject "
                           f"'{subject}' is not the schema of the policy {plan.name}: producers write another "
                           "schema than the one the policy annotates; update the policy to it")
    return int(latest.schema_id)


def _register_sanitized(client: Any, plan: Plan, schema_class: Any) -> int:
    subject = subject_of(plan.sanitized_topic)
    schema = schema_class(orjson.dumps(plan.sanitized_schema).decode(), "AVRO")
    if subject in client.get_subjects() and not client.test_compatibility(subject, schema):
        raise GatewayError(f"schema registry: the sanitized schema of {plan.name} (policy {plan.policy_hash}) is "
                           f"not compatible with the versions of subject '{subject}' under the registry's "
                           "compatibility rule: consumers of the sanitized topic would break; change the policy "
                           "compatibly or register under a new topic")
    return int(client.register_schema(subject, schema))
