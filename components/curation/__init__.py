"""Data curation: great-expectations contracts, the paper's filters, per-cell statistics.

- ``contracts``: the GX suites (S2 / DEM metadata, per-cell statistics), running them on a
  DataFrame, readable failure summaries and per-row failures for reject reasons.
- ``stats`` / ``measure``: per-cell statistics computed while each cell is decoded once.
- ``filters``: the paper's filters as named, parameterised rules.
"""
