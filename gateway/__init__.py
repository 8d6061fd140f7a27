"""Privacy gateway: raw Kafka events in, sanitized events, dead letters and audit out."""

__version__ = "0.1.0"
