"""Synthetic Major TOM world: procedural DEMs and Sentinel-2 L2A / L1C renderings (pure numpy)."""
