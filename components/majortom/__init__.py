"""Major TOM: the 10 km grid, the parquet shards of Core-S2L2A / Core-S2L1C / Core-DEM, and a synthetic world."""
