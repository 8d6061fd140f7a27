"""Data quality and re-identification risk on the stream (pure: no Kafka here).

- rules.py: per-record rules declared beside the privacy annotations (required, range, allowed
  values, format, maximum length, cross-field checks, robust outliers), each with an action.
- dedup.py: duplicate event ids within a horizon, in bounded memory, across restarts.
- risk.py: k-anonymity and l-diversity of the sanitized output's quasi-identifiers per window.
- window.py: the per-partition window counters, committed with the offsets, and the quality record.
"""
