"""Training samples: what the prepare stage writes and what the trainer reads.

* ``split``: the held-out split, a pure function of the grid cell (a cell never changes sides).
* ``shards``: few large parquet files of samples (RGB, DEM, masks, descriptors), written
  atomically and byte-identically; read one row group at a time.
* ``dataset``: ``TerrainSampleDataset``, a torch ``IterableDataset`` over those shards that
  shuffles across shards, splits the work over accelerate processes and DataLoader workers
  (every sample once per epoch) and augments captions at read time.
* ``geometry``: the training footprint and pixel grid shared by image, DEM and masks.
* ``latents``: the latent cache (``schema``: its format, ``encode``: the latents stage writes it,
  ``read``: the trainer's dataset over it).
"""
