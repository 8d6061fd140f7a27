"""Adapters for the stream processors that consume sanitized topics.

`common` turns one sanitized record (topic, value bytes, headers) into its decoded value and, for a
consumer holding keys, opens the encrypted fields with a status per field. It imports no Kafka
client and no framework. `faust` wraps it for faust-streaming (`pip install 'privacy-gateway[faust]'`);
import that module only in the app that uses it: the gateway itself never imports a stream processor.
"""
