"""The privacy core: decode, validate, quality, operators, encode, audit. No Kafka client, no network:
runtime/ gives it its collaborators."""
