"""Export one generated sample (Sentinel-2 RGB + DEM in metres) for GIS, 3D tools and game engines.

Public API (every function returns ``{key: Path}`` of what it wrote; every file is written
atomically, through :func:`components.atomic.atomic_write`, so a crash never leaves a torn file):

- :func:`export_geotiffs` -> ``rgb_tif``, ``dem_tif``
- :func:`export_heightmap` -> ``heightmap_png``, ``heightmap_raw``, ``heightmap_json``
- :func:`export_previews` -> ``rgb_png``, ``hillshade_png``, ``relief_png``
- :func:`export_all` -> all of the above
- :func:`load_heightmap` -> metres back from a heightmap and its sidecar

Formats
-------
``{name}_rgb.tif``
    3 bands uint8 (photometric RGB, pixel-interleaved), DEFLATE + horizontal predictor,
    tiled (256 px, or one tile rounded up to 16 px for smaller rasters).
``{name}_dem.tif``
    1 band float32 metres, band unit ``metre``, nodata = NaN (NaN pixels of the input DEM stay
    NaN; any other value is written bit for bit), DEFLATE + floating-point predictor (3), tiled.

Both GeoTIFFs are north-up with pixel size ``extent_m / W`` (10 m at paper scale: 7,680 m over
768 px) and carry a *nominal* UTM georeference:

- with ``grid_cell`` (the prompt came from a real Major TOM cell): the cell's UTM CRS
  (:func:`components.majortom.grid.cell_footprint`, the bottom-left grid point's zone) and the
  raster centred on the cell's 10,680 m Core footprint, i.e. the centre ``extent_m`` square the
  training crops came from (offset 1,500 m from each edge at 7,680 m);
- without: ``EPSG:32631`` with the top-left corner at the fixed point
  ``(500,000 E, 5,000,000 N)`` (about 45.1 N, 3 E). This is *not* a real location; the tag
  ``PLACEMENT`` says so.

GeoTIFF tags (dataset metadata): ``PLACEMENT`` (``grid_cell`` or ``nominal``), ``PLACEMENT_NOTE``,
``GRID_CELL`` (when given), ``PIXEL_SIZE_M``, ``EXTENT_M``, plus every ``**metadata`` keyword
(e.g. ``prompt=``, ``seed=``, ``model=``) as ``str(value)`` under its own name (``None`` skipped).

``{name}_heightmap.png`` / ``{name}_heightmap.raw``
    The DEM quantised to 16 bits: ``value = round((metres - min_m) / scale_m_per_unit)`` with
    ``scale_m_per_unit = (max_m - min_m) / 65535``, so min -> 0 and max -> 65535; metres come back
    as ``offset_m + value * scale_m_per_unit`` (offset_m = min_m) within ``scale_m_per_unit / 2``.
    The PNG is 16-bit greyscale (Pillow mode ``I;16``). The RAW is what Unity's *Import Raw* and
    Unreal's landscape import read: unsigned 16-bit, little-endian ("Windows" byte order in Unity),
    row-major, no header, first row = north edge (the PNG's top row), exactly ``2 * W * H`` bytes.
    A flat DEM gets ``scale_m_per_unit = 0`` and all values 0. NaN pixels are written as 0 (the
    sidecar's ``nodata_pixels`` counts them; 16-bit heightmaps have no nodata).
``{name}_heightmap.json``
    One sidecar for both files: ``scale_m_per_unit``, ``offset_m``, ``min_m``, ``max_m``,
    ``pixel_size_m``, ``width``, ``height``, ``how_to_get_metres``, the RAW layout, and import
    hints for Unity and Unreal (derived numbers, see :func:`export_heightmap`).
``{name}_rgb.png``, ``{name}_hillshade.png``, ``{name}_relief.png``
    8-bit RGB previews: the image itself; a hillshade (sun from the north-west, azimuth 315 deg,
    altitude 45 deg, no vertical exaggeration); and a colour relief, a hypsometric tint
    (green -> tan -> brown -> white, stretched over the DEM's 2nd..98th percentile, so it shows
    relative relief, not absolute height bands) multiplied by the hillshade. NaN pixels are black.

Errors are :class:`ExportError` (a ``ValueError``) whose message starts with the file that was
being written and says what was wrong (shape, dtype, all-NaN or infinite DEM, ...).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image

from components.atomic import atomic_write, write_json_atomic
from components.majortom.grid import TILE_SIZE_M, cell_footprint
from components.radiometry.hillshade import Sun, hillshade

__all__ = [
    "ExportError",
    "NOMINAL_EPSG",
    "NOMINAL_ORIGIN",
    "PAPER_EXTENT_M",
    "export_geotiffs",
    "export_heightmap",
    "export_previews",
    "export_all",
    "load_heightmap",
    "PREVIEW_SUN",
    "colour_relief",
]

PAPER_EXTENT_M = 7680.0  # 768 px at 10 m, the training crop
NOMINAL_EPSG = 32631
NOMINAL_ORIGIN = (500_000.0, 5_000_000.0)  # top-left (x, y) in EPSG:32631 when no cell is given
HEIGHTMAP_MAX = 65535
# The previews' light: the cartographic convention, from the north-west (a sun from the south
# makes valleys read as ridges to most eyes).
PREVIEW_SUN = Sun(azimuth_deg=315.0, altitude_deg=45.0)

_GDAL_ENV = {"CPL_LOG": "/dev/null", "GDAL_PAM_ENABLED": "NO"}  # no .aux.xml next to the files
_RESERVED_TAGS = {"placement", "placement_note", "grid_cell", "pixel_size_m", "extent_m",
                  "area_or_point"}
_TAG_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Hypsometric tint stops: relative height (0 = low, 1 = high) -> RGB.
_TINT_STOPS = np.array([0.0, 0.2, 0.45, 0.7, 0.88, 1.0])
_TINT_RGB = np.array([
    [46, 112, 56],     # dark green lowlands
    [124, 166, 76],    # light green
    [214, 200, 128],   # tan
    [160, 112, 66],    # brown
    [190, 180, 172],   # grey rock
    [255, 255, 255],   # snow
], dtype=np.float64)


class ExportError(ValueError):
    """An export input or write failed; the message starts with the file concerned."""


# ----------------------------------------------------------------------------- validation


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or name in {".", ".."} or re.search(r"[/\\]", name):
        raise ExportError(f"export name must be a non-empty file-name stem without '/', got {name!r}")
    return name


def _check_rgb(rgb, where: Path) -> np.ndarray:
    if not isinstance(rgb, np.ndarray):
        raise ExportError(f"{where}: RGB must be a numpy array, got {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ExportError(f"{where}: RGB must have shape (H, W, 3), got {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ExportError(f"{where}: RGB must be uint8, got {rgb.dtype}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ExportError(f"{where}: RGB is empty, shape {rgb.shape}")
    return rgb


def _check_dem(dem_m, where: Path) -> np.ndarray:
    """A 2-D float DEM with at least one finite value and no infinities, as float32."""
    if not isinstance(dem_m, np.ndarray):
        raise ExportError(f"{where}: DEM must be a numpy array, got {type(dem_m).__name__}")
    if dem_m.ndim != 2:
        raise ExportError(f"{where}: DEM must have shape (H, W), got {dem_m.shape}")
    if not np.issubdtype(dem_m.dtype, np.floating):
        raise ExportError(f"{where}: DEM must be float32 metres, got dtype {dem_m.dtype}")
    if dem_m.shape[0] == 0 or dem_m.shape[1] == 0:
        raise ExportError(f"{where}: DEM is empty, shape {dem_m.shape}")
    dem = dem_m.astype(np.float32, copy=False)
    if np.isinf(dem).any():
        n = int(np.isinf(dem).sum())
        raise ExportError(f"{where}: DEM has {n} infinite value(s) (after casting to float32)")
    if np.isnan(dem).all():
        raise ExportError(f"{where}: DEM is all NaN, nothing to export")
    return dem


def _check_same_size(rgb: np.ndarray, dem: np.ndarray, where: Path) -> None:
    if rgb.shape[:2] != dem.shape:
        raise ExportError(
            f"{where}: RGB is {rgb.shape[0]}x{rgb.shape[1]} px but DEM is "
            f"{dem.shape[0]}x{dem.shape[1]} px; they must match"
        )


def _check_positive(value, what: str, where: Path) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise ExportError(f"{where}: {what} must be a positive finite number, got {value!r}")
    return v


def _tags(metadata: dict, where: Path) -> dict[str, str]:
    out = {}
    for key, value in metadata.items():
        if not _TAG_RE.fullmatch(key):
            raise ExportError(f"{where}: metadata key {key!r} is not a valid tag name")
        if key.lower() in _RESERVED_TAGS:
            raise ExportError(f"{where}: metadata key {key!r} is reserved by the exporter")
        if value is not None:
            out[key] = str(value)
    return out


# ----------------------------------------------------------------------------- georeference


def _georeference(height: int, width: int, grid_cell: str | None, extent_m: float, where: Path):
    """(crs, transform, tags) of a north-up raster, see the module docstring."""
    pixel = extent_m / width
    if grid_cell is None:
        x0, y0 = NOMINAL_ORIGIN
        note = (f"nominal placement: EPSG:{NOMINAL_EPSG}, top-left corner at ({x0:.0f} E, "
                f"{y0:.0f} N); not a real location")
        tags = {"PLACEMENT": "nominal", "PLACEMENT_NOTE": note}
        return f"EPSG:{NOMINAL_EPSG}", Affine(pixel, 0.0, x0, 0.0, -pixel, y0), tags
    try:
        fp = cell_footprint(grid_cell)
    except ValueError as exc:
        raise ExportError(f"{where}: grid_cell {grid_cell!r}: {exc}") from None
    side_x, side_y = width * pixel, height * pixel
    if side_x > TILE_SIZE_M + 1e-6 or side_y > TILE_SIZE_M + 1e-6:
        raise ExportError(
            f"{where}: a {side_x:g} x {side_y:g} m raster does not fit in cell {fp.grid_cell}'s "
            f"{TILE_SIZE_M:g} m footprint (extent_m={extent_m:g})"
        )
    cx, cy = fp.centre
    transform = Affine(pixel, 0.0, cx - side_x / 2, 0.0, -pixel, cy + side_y / 2)
    note = (f"nominal placement: centred {side_x:g} x {side_y:g} m on Major TOM cell "
            f"{fp.grid_cell}'s {TILE_SIZE_M:g} m Core footprint in {fp.crs}; generated terrain, "
            "not the real ground")
    tags = {"PLACEMENT": "grid_cell", "PLACEMENT_NOTE": note, "GRID_CELL": fp.grid_cell}
    return fp.crs, transform, tags


def _tile_px(height: int, width: int) -> int:
    if height >= 256 and width >= 256:
        return 256
    return max(16, -(-max(height, width) // 16) * 16)


def _write_geotiff(path: Path, bands: np.ndarray, crs: str, transform: Affine, tags: dict,
                   *, nodata=None, units: str | None = None, photometric: str | None = None):
    """bands: (count, H, W). Atomic, tiled, DEFLATE."""
    count, height, width = bands.shape
    tile = _tile_px(height, width)
    predictor = 3 if np.issubdtype(bands.dtype, np.floating) else 2
    profile = dict(
        driver="GTiff", width=width, height=height, count=count, dtype=bands.dtype.name,
        crs=crs, transform=transform, nodata=nodata, compress="deflate", predictor=predictor,
        zlevel=6, tiled=True, blockxsize=tile, blockysize=tile,
        interleave="pixel" if count > 1 else "band",
    )
    if photometric:
        profile["photometric"] = photometric

    def write(tmp: Path) -> None:
        with rasterio.Env(**_GDAL_ENV), rasterio.open(tmp, "w", **profile) as dst:
            dst.write(bands)
            dst.update_tags(**tags)
            if units:
                dst.units = (units,) * count

    try:
        return atomic_write(path, write)
    except ExportError:
        raise
    except Exception as exc:  # rasterio / OS errors: say which file
        raise ExportError(f"{path}: could not write GeoTIFF: {exc}") from exc


def export_geotiffs(
    rgb: np.ndarray,
    dem_m: np.ndarray,
    out_dir: str | Path,
    *,
    name: str = "terrain",
    grid_cell: str | None = None,
    extent_m: float = PAPER_EXTENT_M,
    **metadata,
) -> dict[str, Path]:
    """Write ``{name}_rgb.tif`` (3 x uint8) and ``{name}_dem.tif`` (float32 metres, nodata NaN).

    Args:
        rgb: (H, W, 3) uint8 image.
        dem_m: (H, W) float DEM in metres (cast to float32; NaN = nodata; not all NaN, no inf).
        out_dir: folder (created if missing).
        name: file-name stem.
        grid_cell: Major TOM cell name (e.g. ``"454U_120R"``) the prompt came from, or None for
            the nominal placement (see the module docstring).
        extent_m: ground width of the raster in metres; pixel size = ``extent_m / W``.
        **metadata: tags written into both files, e.g. ``prompt=``, ``seed=``, ``model=``.
    Returns:
        ``{"rgb_tif": Path, "dem_tif": Path}``.
    Raises:
        ExportError: naming the file and the problem.
    """
    out = Path(out_dir)
    name = _check_name(name)
    rgb_path, dem_path = out / f"{name}_rgb.tif", out / f"{name}_dem.tif"
    rgb = _check_rgb(rgb, rgb_path)
    dem = _check_dem(dem_m, dem_path)
    _check_same_size(rgb, dem, dem_path)
    extent_m = _check_positive(extent_m, "extent_m", rgb_path)
    user_tags = _tags(metadata, rgb_path)
    height, width = dem.shape
    crs, transform, place_tags = _georeference(height, width, grid_cell, extent_m, rgb_path)
    tags = {**place_tags, "PIXEL_SIZE_M": repr(extent_m / width), "EXTENT_M": repr(extent_m),
            **user_tags}
    _write_geotiff(rgb_path, np.ascontiguousarray(np.moveaxis(rgb, 2, 0)), crs, transform, tags,
                   photometric="RGB")
    _write_geotiff(dem_path, dem[None], crs, transform, tags, nodata=float("nan"), units="metre")
    return {"rgb_tif": rgb_path, "dem_tif": dem_path}


# ----------------------------------------------------------------------------- heightmap


def export_heightmap(
    dem_m: np.ndarray,
    out_dir: str | Path,
    name: str = "terrain",
    *,
    pixel_size_m: float = 10.0,
) -> dict[str, Path]:
    """Write the DEM as a 16-bit PNG and a RAW16 heightmap with one JSON sidecar.

    ``min..max`` of the finite DEM maps to ``0..65535``; ``metres = offset_m + value *
    scale_m_per_unit``. The sidecar also carries import hints, derived from the numbers above:
    Unity (*Import Raw*: depth 16 bit, byte order Windows; terrain size ``W * pixel_size_m`` x
    ``max_m - min_m`` x ``H * pixel_size_m``, terrain y position ``min_m``; Unity wants square
    ``2^n + 1`` sizes and resamples others) and Unreal (landscape Z (cm) = ``(value - 32768) *
    ZScale / 128``, so ``ZScale = scale_m_per_unit * 12800``, XY scale ``pixel_size_m * 100``,
    location Z (cm) = ``min_m * 100 + 256 * ZScale``).

    Args:
        dem_m: (H, W) float DEM in metres.
        out_dir: folder.
        name: file-name stem.
        pixel_size_m: ground size of a pixel (recorded in the sidecar).
    Returns:
        ``{"heightmap_png", "heightmap_raw", "heightmap_json"}`` paths.
    """
    out = Path(out_dir)
    name = _check_name(name)
    png_path = out / f"{name}_heightmap.png"
    raw_path = out / f"{name}_heightmap.raw"
    json_path = out / f"{name}_heightmap.json"
    dem = _check_dem(dem_m, png_path).astype(np.float64)
    pixel_size_m = _check_positive(pixel_size_m, "pixel_size_m", png_path)
    height, width = dem.shape
    valid = np.isfinite(dem)
    lo, hi = float(dem[valid].min()), float(dem[valid].max())
    scale = (hi - lo) / HEIGHTMAP_MAX
    codes = np.zeros(dem.shape, dtype="<u2")
    if scale > 0:
        q = np.rint((dem[valid] - lo) / scale)
        codes[valid] = np.clip(q, 0, HEIGHTMAP_MAX).astype("<u2")
    data = codes.tobytes()  # little-endian, row-major (C order), north row first

    def write_png(tmp: Path) -> None:
        Image.frombytes("I;16", (width, height), data).save(tmp, format="PNG")

    try:
        atomic_write(png_path, write_png)
        atomic_write(raw_path, lambda tmp: tmp.write_bytes(data))
    except Exception as exc:
        raise ExportError(f"{png_path.parent}: could not write heightmap {name!r}: {exc}") from exc

    z_scale = scale * 12800.0
    sidecar = {
        "format": "16-bit heightmap (PNG greyscale I;16 and RAW16)",
        "files": {"png": png_path.name, "raw": raw_path.name},
        "width": width,
        "height": height,
        "pixel_size_m": pixel_size_m,
        "min_m": lo,
        "max_m": hi,
        "offset_m": lo,
        "scale_m_per_unit": scale,
        "how_to_get_metres": "metres = offset_m + value * scale_m_per_unit "
                             "(value = 16-bit pixel; error <= scale_m_per_unit / 2)",
        "raw_layout": f"uint16 little-endian, row-major, no header, {2 * width * height} bytes "
                      "(2 * width * height); first row = north edge = top row of the PNG",
        "nodata_pixels": int((~valid).sum()),
        "nodata_note": "NaN pixels of the DEM are written as 0 (= min_m); 16-bit heightmaps "
                       "have no nodata value",
        "unity": {
            "import_raw": "Depth: Bit 16, Byte Order: Windows, Width/Height as above",
            "terrain_size_m": [width * pixel_size_m, hi - lo, height * pixel_size_m],
            "terrain_position_y_m": lo,
            "note": "Unity terrains want square 2^n+1 heightmaps (513, 1025, ...) and resample "
                    "others; flip vertically on import if the terrain comes out mirrored",
        },
        "unreal": {
            "z_scale": z_scale,
            "xy_scale": pixel_size_m * 100.0,
            "location_z_cm": lo * 100.0 + 256.0 * z_scale,
            "note": "landscape Z (cm) = (value - 32768) * ZScale / 128 (ZScale 100 spans 512 m)",
        },
    }
    try:
        write_json_atomic(json_path, sidecar)
    except Exception as exc:
        raise ExportError(f"{json_path}: could not write heightmap sidecar: {exc}") from exc
    return {"heightmap_png": png_path, "heightmap_raw": raw_path, "heightmap_json": json_path}


def load_heightmap(sidecar_path: str | Path, which: str = "png") -> np.ndarray:
    """Metres (float64, (H, W)) back from ``{name}_heightmap.json`` and its PNG or RAW file.

    NaN pixels of the original DEM come back as ``min_m`` (see ``nodata_pixels``).
    """
    sidecar_path = Path(sidecar_path)
    meta = json.loads(sidecar_path.read_text())
    if which not in ("png", "raw"):
        raise ValueError(f"which must be 'png' or 'raw', got {which!r}")
    path = sidecar_path.parent / meta["files"][which]
    shape = (meta["height"], meta["width"])
    if which == "raw":
        raw = path.read_bytes()
        if len(raw) != 2 * shape[0] * shape[1]:
            raise ExportError(f"{path}: {len(raw)} bytes, expected 2 * {shape[1]} * {shape[0]}")
        values = np.frombuffer(raw, dtype="<u2").reshape(shape)
    else:
        with Image.open(path) as img:
            values = np.asarray(img)
        if values.shape != shape:
            raise ExportError(f"{path}: size {values.shape}, sidecar says {shape}")
    return meta["offset_m"] + values.astype(np.float64) * meta["scale_m_per_unit"]


# ----------------------------------------------------------------------------- previews


def _preview_shade(dem: np.ndarray, pixel_size_m: float) -> np.ndarray:
    """The hillshade under ``PREVIEW_SUN`` as float64 in [0, 1] (the tint is mixed in float64); 0 where NaN."""
    return np.nan_to_num(hillshade(dem, pixel_size_m, PREVIEW_SUN).astype(np.float64), nan=0.0)


def colour_relief(dem_m: np.ndarray, pixel_size_m: float) -> np.ndarray:
    """Hypsometric tint x hillshade as (H, W, 3) uint8; NaN pixels black."""
    dem = np.asarray(dem_m, dtype=np.float64)
    valid = np.isfinite(dem)
    lo, hi = np.percentile(dem[valid], [2, 98])
    if hi <= lo:
        lo, hi = dem[valid].min(), dem[valid].max()
    rel = np.clip((dem - lo) / (hi - lo), 0, 1) if hi > lo else np.full(dem.shape, 0.5)
    rel = np.where(valid, rel, 0.0)
    tint = np.stack([np.interp(rel, _TINT_STOPS, _TINT_RGB[:, c]) for c in range(3)], axis=-1)
    shade = _preview_shade(dem, pixel_size_m)
    out = tint * (0.35 + 0.65 * shade)[..., None]
    out[~valid] = 0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _save_png(path: Path, image: Image.Image) -> Path:
    try:
        return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    except Exception as exc:
        raise ExportError(f"{path}: could not write PNG: {exc}") from exc


def export_previews(
    rgb: np.ndarray,
    dem_m: np.ndarray,
    out_dir: str | Path,
    name: str = "terrain",
    pixel_size_m: float = 10.0,
) -> dict[str, Path]:
    """Write ``{name}_rgb.png``, ``{name}_hillshade.png`` and ``{name}_relief.png`` (8-bit RGB).

    Returns:
        ``{"rgb_png", "hillshade_png", "relief_png"}`` paths.
    """
    out = Path(out_dir)
    name = _check_name(name)
    rgb_path = out / f"{name}_rgb.png"
    shade_path = out / f"{name}_hillshade.png"
    relief_path = out / f"{name}_relief.png"
    rgb = _check_rgb(rgb, rgb_path)
    dem = _check_dem(dem_m, shade_path)
    _check_same_size(rgb, dem, shade_path)
    pixel_size_m = _check_positive(pixel_size_m, "pixel_size_m", shade_path)

    shade = _preview_shade(dem, pixel_size_m)
    grey = np.clip(np.rint(shade * 255), 0, 255).astype(np.uint8)
    _save_png(rgb_path, Image.fromarray(np.ascontiguousarray(rgb)))
    _save_png(shade_path, Image.fromarray(np.repeat(grey[..., None], 3, axis=2)))
    _save_png(relief_path, Image.fromarray(colour_relief(dem, pixel_size_m)))
    return {"rgb_png": rgb_path, "hillshade_png": shade_path, "relief_png": relief_path}


# ----------------------------------------------------------------------------- all


def export_all(
    rgb: np.ndarray,
    dem_m: np.ndarray,
    out_dir: str | Path,
    *,
    name: str = "terrain",
    grid_cell: str | None = None,
    extent_m: float = PAPER_EXTENT_M,
    **metadata,
) -> dict[str, Path]:
    """GeoTIFFs, heightmap (PNG, RAW16, sidecar) and previews; every path, keyed as above.

    Inputs are validated once (GeoTIFF checks) before anything is written.
    """
    paths = export_geotiffs(rgb, dem_m, out_dir, name=name, grid_cell=grid_cell,
                            extent_m=extent_m, **metadata)
    pixel = float(extent_m) / dem_m.shape[1]
    paths.update(export_heightmap(dem_m, out_dir, name, pixel_size_m=pixel))
    paths.update(export_previews(rgb, dem_m, out_dir, name, pixel))
    return paths
