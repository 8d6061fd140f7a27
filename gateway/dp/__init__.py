"""Differentially private windowed aggregates.

declarations  the ``aggregates`` block of a schema's privacy settings -> frozen AggregateSpec
mechanisms    OpenDP measurements built once per aggregate: noise scales, key-selection threshold,
              error bounds. Every release is noised and charged to the ledger: the package has no
              way to switch noise off (tests inject a double: tests/dp_doubles.py)
bounding      stage 1: per-subject contribution bounds per window
windows       stage 2: per-group sums per window, window closing, release records
ledger        the privacy budget spent per aggregate, per window and per rolling period
"""
