"""`gateway report --dpia`'s Kafka side: who reads the gateway's outputs.

The consumer groups that committed offsets on each output topic (ListGroups, then each group's
committed offsets, asked for all at once), the brokers' authorizer (``authorizer.class.name`` from
DescribeConfigs: "" means none, so every client may read every topic) and the ACL bindings
(DescribeAcls; a broker without an authorizer answers SECURITY_DISABLED or an empty list)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException
from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ConfigResource,
    ResourcePatternType,
    ResourceType,
)

from gateway.core.access import Access, Acl
from gateway.runtime import clients

REQUEST_TIMEOUT_S = 15.0


def read_access(kafka: Mapping[str, str], topics: Collection[str]) -> Access:
    """The groups with committed offsets on each of `topics`, the authorizer and the ACLs."""
    admin = clients.admin(kafka)
    groups, errors = _groups_by_topic(admin, set(topics))
    authorizer = _authorizer(admin)
    acls, acl_error = _acls(admin)
    if acl_error == "SECURITY_DISABLED":
        authorizer, acls, acl_error = "", (), None
    return Access(groups_by_topic=groups[0], groups_listed=groups[1], authorizer=authorizer, acls=acls,
                  acl_error=acl_error, errors=tuple(errors))


def _groups_by_topic(admin: AdminClient, topics: set[str]) -> tuple[tuple[dict[str, tuple[str, ...]], int],
                                                                      list[str]]:
    try:
        listed = admin.list_consumer_groups(request_timeout=REQUEST_TIMEOUT_S).result()
    except KafkaException as exc:
        return ({}, 0), [f"the consumer groups could not be listed: {exc.args[0].str()}"]
    names = sorted({g.group_id for g in listed.valid})
    futures = {name: admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(name)],
                                                       request_timeout=REQUEST_TIMEOUT_S)[name] for name in names}
    readers: dict[str, set[str]] = {}
    errors: list[str] = []
    for name, future in futures.items():
        try:
            partitions = future.result().topic_partitions or []
        except KafkaException as exc:
            if exc.args[0].code() not in (KafkaError.GROUP_ID_NOT_FOUND, KafkaError._UNKNOWN_GROUP):
                errors.append(f"group '{name}': {exc.args[0].str()}")
            continue
        for tp in partitions:
            if tp.topic in topics and tp.offset >= 0 and tp.error is None:
                readers.setdefault(tp.topic, set()).add(name)
    return ({t: tuple(sorted(g)) for t, g in sorted(readers.items())}, len(names)), errors


def _authorizer(admin: AdminClient) -> str | None:
    """The brokers' authorizer class ("" for none); None when no broker would describe its config."""
    try:
        brokers = admin.list_topics(timeout=REQUEST_TIMEOUT_S).brokers
    except KafkaException:
        return None
    found: set[str] = set()
    resources = [ConfigResource(ResourceType.BROKER, str(b)) for b in sorted(brokers)]
    for future in admin.describe_configs(resources, request_timeout=REQUEST_TIMEOUT_S).values():
        try:
            entry = future.result().get("authorizer.class.name")
        except KafkaException:
            continue
        found.add(entry.value or "" if entry is not None else "")
    if not found:
        return None
    configured = sorted(found - {""})
    return configured[0] if configured else ""  # one broker with an authorizer: the cluster has one


def _acls(admin: AdminClient) -> tuple[tuple[Acl, ...] | None, str | None]:
    every = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,
                             AclPermissionType.ANY)
    try:
        bindings = admin.describe_acls(every, request_timeout=REQUEST_TIMEOUT_S).result()
    except KafkaException as exc:
        err = exc.args[0]
        return None, "SECURITY_DISABLED" if err.code() == KafkaError.SECURITY_DISABLED else err.str()
    return tuple(sorted((Acl(b.principal, b.host, b.operation.name, b.permission_type.name, b.restype.name,
                             b.name, b.resource_pattern_type.name) for b in bindings),
                        key=lambda a: (a.resource_type, a.resource_name, a.principal, a.operation))), None
