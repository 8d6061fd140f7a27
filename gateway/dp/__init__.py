"""Differentially private windowed aggregates.

declarations  the ``aggregates`` block of a schema's privacy settings -> frozen AggregateSpec
mechanisms    OpenDP measurements built once per aggregate: noise scales, key-selection threshold,
              error bounds; the test-only no-noise mode and its guard (testmode)
bounding      stage 1: per-subject contribution bounds per window
windows       stage 2: per-group sums per window, window closing, release records
ledger        the privacy budget spent per aggregate, per window and per rolling period
"""
