"""`gateway report`: one period summarized from the audit, ledger, key and quality topics.

collect.py builds the figures (pure: decoded records in, a `PrivacyReport` out; no Kafka client),
html.py renders them into one self-contained HTML file with charts. The command in gateway/cli/__init__.py
reads the topics and hands their records over. The report holds counts, names (topics, fields,
rules, reasons, aggregates) and key ids only: never a field value, a subject, a token or a key.
"""
