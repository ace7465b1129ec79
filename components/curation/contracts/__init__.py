"""Data contracts as great-expectations (GX 1.x) suites, and running them on pandas tables.

- ``suites``: the three suites, built from one params dict (``DEFAULT_CONTRACT_PARAMS`` documents
  each key): ``metadata_suite("s2l2a" | "s2l1c" | "dem", params)`` and ``stats_suite(params)``.
- ``derived_columns``: grid consistency and the UTM zone as numbers GX checks with built-in
  expectations (:func:`~components.curation.contracts.derived_columns.grid_columns`).
- ``validation``: running a suite with GX (``validate_table``, a ``ContractResult`` with a
  readable summary), the same rules per row without GX (``row_failures``, for reject reasons),
  GX contexts and Data Docs.
"""
import os

# GX would otherwise try to send usage statistics; this project runs offline. Set here, before
# any module of the package imports great_expectations.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
