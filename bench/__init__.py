"""Packdesk benchmarks: `make bench` or `python -m bench` (PostgreSQL only; never part of CI).

Each measurement prints one line, `name value unit (baseline value, ratio x)`, where the
baseline is the same work done in raw SQL in the same run and ratio = value / baseline.
The bench owns its database: it truncates the app tables before each measurement.
See docs/performance.md for the method and the figures measured.
"""
