"""PII detectors for free-text redaction, `gateway scan` and the leak sentinel.

Every detector validates what its pattern finds (checksums, numbering plans, structure rules),
so a redaction does not eat order ids and versions. Pure: no Kafka, no network.
"""

from gateway.core.detectors.base import ENTITIES, Match
from gateway.core.detectors.detector import Detector, detector, placeholder, redact

__all__ = ["ENTITIES", "Detector", "Match", "detector", "placeholder", "redact"]
