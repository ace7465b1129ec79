"""Radiometry: shadow correction and the invertible normalisation rules training samples use.

``shadow``: the +1000 DN offset of processing baseline 04.00 and later, and masked per-band
histogram matching (the cell's L1C RGB takes its L2A colours and keeps its terrain shading).
``normalise``: reflectance <-> stored uint16 <-> model range [-1, 1], and the DEM rule
(elevation - cell mean) / S with one global scale S chosen from the data.
``hillshade``: Lambertian terrain shading under a given ``Sun`` (the synthetic world, previews and
the coherence metric each pass their own).
"""
