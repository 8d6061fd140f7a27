"""Who can read the gateway's outputs, as the broker says: the consumer groups that committed offsets
on a topic, and the broker's authorizer and ACLs (`gateway report --dpia`'s access inventory).

Plain typed data: gateway/runtime/access.py asks the broker and fills it in, gateway/report/dpia.py
reads it. No Kafka client here."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Acl:
    """One ACL binding as the broker describes it (names only)."""

    principal: str
    host: str
    operation: str  # READ, WRITE, ALL, ...
    permission: str  # ALLOW | DENY
    resource_type: str  # TOPIC, GROUP, CLUSTER, ...
    resource_name: str
    pattern: str  # LITERAL | PREFIXED

    def matches_topic(self, topic: str) -> bool:
        """Whether this binding concerns reading `topic` (a literal or prefix match on a topic resource)."""
        if self.resource_type != "TOPIC" or self.operation not in ("READ", "ALL"):
            return False
        if self.pattern == "PREFIXED":
            return topic.startswith(self.resource_name)
        return self.resource_name in (topic, "*")


@dataclass(frozen=True)
class Access:
    """The broker's answer for a set of topics.

    `authorizer`: the brokers' ``authorizer.class.name`` ("" when none is configured, None when the
    broker would not say); `acls`: every binding the broker listed (None when it could not be listed:
    `acl_error` says why); `groups_by_topic`: topic -> the consumer groups with committed offsets on it."""

    groups_by_topic: dict[str, tuple[str, ...]] = field(default_factory=dict)
    groups_listed: int = 0
    authorizer: str | None = None
    acls: tuple[Acl, ...] | None = None
    acl_error: str | None = None
    errors: tuple[str, ...] = ()  # groups whose offsets could not be read, and why

    @property
    def has_authorizer(self) -> bool | None:
        """True / False when known; None when neither the broker config nor the ACL listing told."""
        if self.authorizer is not None:
            return self.authorizer != ""
        return None

    def read_bindings(self, topic: str) -> list[Acl]:
        return [a for a in self.acls or () if a.matches_topic(topic)]
