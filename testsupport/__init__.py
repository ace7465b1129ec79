"""Helpers that tests and benchmarks share: never imported by the pipeline itself.

- ``http_mirror``: :class:`~testsupport.http_mirror.MirrorServer`, a loopback HTTP mirror of a
  Major TOM folder with byte accounting and injectable faults (what the ingest reads from).
- ``pipelines``: :func:`~testsupport.pipelines.tiny_random_pipeline`, a seeded random tiny
  ``TerrainPipeline``, and ``TINY_STATS``, the stats.json it stands on.

Tests import it with the repository root on ``sys.path`` (pytest's ``pythonpath = ["."]``);
benchmarks put the root there themselves.
"""
