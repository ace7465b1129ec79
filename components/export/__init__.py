"""Exports of a generated sample (Sentinel-2 RGB + DEM in metres) for GIS, 3D tools and game engines.

See :mod:`components.export.terrain`: georeferenced GeoTIFFs, a 16-bit PNG / RAW16 heightmap with
a JSON sidecar giving the metres back, and PNG previews (RGB, hillshade, colour relief).
"""
