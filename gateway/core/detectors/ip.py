"""IP: IPv4 and IPv6 addresses, validated with the standard library's ipaddress."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

from gateway.core.detectors.base import Match

# IPv4: a dotted quad that is a token of its own. A quad inside a longer dotted run ("1.2.3.4.5",
# "2.10.0.1" in "v2.10.0.1", "lib-1.2.3.4.tar.gz") is a version, an OID or a file name, not an
# address: so no word character or dot directly before it, and no word character or ".word"
# directly after it (a sentence-ending dot is fine). A quad right after a version word ("version 10.2.0.1", "build
# 4.19.0.12") is taken as a version too: in logs those words precede versions, not hosts.
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\w)")
_VERSION_WORD = re.compile(r"(?<!\w)(?:version|ver|release|build|firmware|rev)\.?\s*[:=]?\s*$", re.IGNORECASE)

# IPv6: hex groups and colons (with an optional embedded IPv4 tail), not glued to word characters
# or colons; ipaddress decides. Clock times and MAC addresses never parse as IPv6.
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f.]*(?![\w:])")


def _is_ipv6(value: str) -> bool:
    # at least one digit and two non-empty groups: rules out "::", "a::b", "Foo::Bar"-like identifiers
    if not any(c.isdigit() for c in value) or sum(1 for g in value.split(":") if g) < 2:
        return False
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


class IpFinder:
    """IPv4 dotted quads (octets 0-255, no leading zeros) and IPv6 in full, compressed or IPv4-mapped form."""

    entity = "IP"

    def find(self, text: str) -> Iterator[Match]:
        if "." in text:
            for m in _IPV4.finditer(text):
                if _VERSION_WORD.search(text, max(0, m.start() - 24), m.start()):
                    continue
                try:
                    ipaddress.IPv4Address(m.group())
                except ValueError:
                    continue
                yield Match(self.entity, m.start(), m.end())
        if "::" in text or text.count(":") >= 7:
            for m in _IPV6.finditer(text):
                value = m.group()
                # a sentence dot or a label colon after the address is not part of it
                for candidate in (value, value.rstrip("."), value[:-1] if value.endswith(":") else ""):
                    if candidate and _is_ipv6(candidate):
                        yield Match(self.entity, m.start(), m.start() + len(candidate))
                        break
