"""Render a synthetic Sentinel-2 cell (B02, B03, B04) from its DEM, as L2A and as L1C.

One underlying surface (biome palette, season, snow, water, fields, texture) is lit twice:
- L1C, top of atmosphere: strong hillshade-driven shading, bluer additive path radiance, lower
  contrast;
- L2A, surface reflectance after terrain correction: shading mostly flattened, a little haze.
Clouds, cloud shadows and the no-data swath edge hit the same pixels in both.

Colours are reflectances in (B04, B03, B02) = (red, green, blue) order. Rasters: row 0 north,
columns east. Fine texture is drawn from a per-size cached noise bank (fixed seed, random window
per cell), coarse texture from small per-cell FFT fields upsampled by matrix products: both keep
a 1068 px cell at roughly a tenth of a second.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft

from components.radiometry.hillshade import Sun, gradients, shade_from_gradients

BANDS = ("B02", "B03", "B04")

# cloud_mask classes
CLEAR, THICK, THIN, SHADOW = 0, 1, 2, 3

_DN_SCALE = 10_000.0
_DN_MAX = 65_535 - 1_000  # room for the +1000 offset the caller adds to L2A

_SNOW = (0.80, 0.83, 0.86)
_WATER = (0.025, 0.040, 0.045)
_CLOUD = (0.70, 0.72, 0.76)


@dataclass(frozen=True)
class Palette:
    """Surface colours of one biome; each colour is (B04, B03, B02) reflectance.

    season: "temperate" (green in local summer), "cold" (short summer), "evergreen",
    "wet_summer" (tropical rains after the summer solstice), "wet_winter" (Mediterranean),
    "arid" (always dry). evergreen: greenness kept in the dormant season. fields: strength of
    the crop-parcel patchwork on gentle lowland. water: probability that a cell has water in its
    lowest flat ground. cold: snow always caps the highest peaks.
    """

    name: str
    green: tuple[float, float, float]
    dry: tuple[float, float, float]
    soil: tuple[float, float, float]
    rock: tuple[float, float, float]
    cover: float
    season: str
    evergreen: float
    fields: float
    water: float
    cold: bool = False


PALETTES: dict[int | None, Palette] = {
    1: Palette("moist tropical forest", (0.022, 0.048, 0.024), (0.04, 0.06, 0.03), (0.17, 0.11, 0.07),
               (0.14, 0.13, 0.11), 0.95, "evergreen", 0.95, 0.15, 0.25),
    2: Palette("dry tropical forest", (0.035, 0.060, 0.030), (0.11, 0.10, 0.07), (0.20, 0.14, 0.09),
               (0.17, 0.15, 0.12), 0.80, "wet_summer", 0.30, 0.30, 0.10),
    3: Palette("tropical conifer forest", (0.025, 0.045, 0.025), (0.05, 0.06, 0.04), (0.15, 0.11, 0.07),
               (0.15, 0.14, 0.12), 0.85, "wet_summer", 0.80, 0.15, 0.10),
    4: Palette("temperate broadleaf forest", (0.030, 0.062, 0.030), (0.08, 0.07, 0.05), (0.13, 0.10, 0.08),
               (0.16, 0.16, 0.15), 0.85, "temperate", 0.30, 0.60, 0.20),
    5: Palette("temperate conifer forest", (0.022, 0.040, 0.022), (0.035, 0.045, 0.03), (0.13, 0.11, 0.08),
               (0.17, 0.16, 0.15), 0.85, "temperate", 0.80, 0.25, 0.15),
    6: Palette("boreal forest", (0.020, 0.038, 0.020), (0.035, 0.040, 0.030), (0.10, 0.09, 0.07),
               (0.14, 0.14, 0.13), 0.80, "temperate", 0.75, 0.05, 0.45, cold=True),
    7: Palette("tropical savanna", (0.050, 0.080, 0.040), (0.17, 0.14, 0.09), (0.22, 0.16, 0.10),
               (0.19, 0.17, 0.14), 0.70, "wet_summer", 0.15, 0.30, 0.10),
    8: Palette("temperate grassland", (0.050, 0.085, 0.045), (0.16, 0.14, 0.10), (0.18, 0.15, 0.11),
               (0.18, 0.17, 0.15), 0.80, "temperate", 0.10, 0.80, 0.15),
    9: Palette("flooded grassland", (0.040, 0.070, 0.035), (0.12, 0.11, 0.08), (0.12, 0.10, 0.08),
               (0.15, 0.14, 0.12), 0.85, "wet_summer", 0.40, 0.10, 0.80),
    10: Palette("montane grassland", (0.050, 0.075, 0.045), (0.14, 0.12, 0.09), (0.16, 0.13, 0.10),
                (0.17, 0.16, 0.15), 0.60, "temperate", 0.20, 0.10, 0.15, cold=True),
    11: Palette("tundra", (0.050, 0.065, 0.040), (0.09, 0.085, 0.065), (0.11, 0.10, 0.085),
                (0.15, 0.15, 0.14), 0.60, "cold", 0.20, 0.0, 0.50, cold=True),
    12: Palette("mediterranean scrub", (0.040, 0.060, 0.035), (0.15, 0.13, 0.09), (0.22, 0.17, 0.12),
                (0.22, 0.21, 0.19), 0.60, "wet_winter", 0.45, 0.50, 0.10),
    13: Palette("desert", (0.12, 0.12, 0.08), (0.22, 0.19, 0.14), (0.36, 0.28, 0.19),
                (0.27, 0.20, 0.14), 0.12, "arid", 0.0, 0.05, 0.02),
    14: Palette("mangroves", (0.020, 0.045, 0.022), (0.030, 0.050, 0.030), (0.08, 0.08, 0.07),
                (0.14, 0.13, 0.12), 0.90, "evergreen", 0.95, 0.0, 0.95),
    None: Palette("rock and ice", (0.06, 0.07, 0.05), (0.10, 0.10, 0.09), (0.14, 0.14, 0.13),
                  (0.16, 0.16, 0.16), 0.05, "cold", 0.0, 0.0, 0.10, cold=True),
}


@dataclass
class RenderedCell:
    """One rendered cell.

    l2a, l1c: band name -> uint16 DN (reflectance x 10,000, no +1000 offset; 0 = no data).
    cloud_mask: uint8, CLEAR / THICK / THIN / SHADOW. nodata: bool, True outside the swath.
    cloud_cover_pct: thick + thin share of the valid pixels, percent. nodata_fraction: 0..1.
    """

    l2a: dict[str, np.ndarray]
    l1c: dict[str, np.ndarray]
    cloud_mask: np.ndarray
    nodata: np.ndarray
    cloud_cover_pct: float
    nodata_fraction: float


# --------------------------------------------------------------------------------------------
# sun, season, snow


def sun_position(lat: float, month: int) -> Sun:
    """The sun (azimuth, altitude in degrees) at Sentinel-2's ~10:30 local solar time, mid-month.

    Azimuth is clockwise from north; altitude is floored at 8 degrees (no winter-night scenes).
    """
    doy = 30.44 * (month - 0.5)
    decl = np.deg2rad(23.44) * np.sin(2.0 * np.pi * (doy - 81.0) / 365.0)
    phi, hour = np.deg2rad(np.clip(lat, -89.0, 89.0)), np.deg2rad(15.0 * (10.5 - 12.0))
    sin_alt = np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.cos(hour)
    alt = np.arcsin(np.clip(sin_alt, -1.0, 1.0))
    cos_az = (np.sin(decl) - np.sin(alt) * np.sin(phi)) / max(np.cos(alt) * np.cos(phi), 1e-6)
    az = np.arccos(np.clip(cos_az, -1.0, 1.0))  # morning: the sun is east of the meridian
    return Sun(float(np.rad2deg(az)), float(max(np.rad2deg(alt), 8.0)))


def _local_month(month: int, lat: float) -> float:
    """Month as felt locally: the southern hemisphere is six months shifted."""
    return float(month if lat >= 0 else (month + 5) % 12 + 1)


def _cycle(local_month: float, peak: float) -> float:
    """Cosine annual cycle, 1 at the peak month, 0 six months later."""
    return 0.5 + 0.5 * np.cos(2.0 * np.pi * (local_month - peak) / 12.0)


def greenness(palette: Palette, month: int, lat: float) -> float:
    """Vegetation greenness 0 (dormant / dry) .. 1 (full leaf) for a biome, month and latitude."""
    m = _local_month(month, lat)
    if palette.season == "evergreen":
        g = 1.0
    elif palette.season == "arid":
        g = 0.05
    elif palette.season == "wet_summer":
        g = _cycle(m, 8.0)
    elif palette.season == "wet_winter":
        g = _cycle(m, 3.5)
    elif palette.season == "cold":
        g = float(np.clip((_cycle(m, 7.0) - 0.6) / 0.3, 0.0, 1.0))
    else:  # temperate: leaf-out in May, leaf-fall in October
        g = float(np.clip((_cycle(m, 7.0) - 0.25) / 0.5, 0.0, 1.0))
    return palette.evergreen + (1.0 - palette.evergreen) * g


def snowline_m(lat: float, month: int) -> float:
    """Elevation above which the ground is snow-covered, metres.

    The summer (permanent) snowline falls from ~5200 m at the equator to ~3000 m at 45 degrees
    and ~1000 m at 70; in the local winter it drops further, more so at higher latitudes.
    """
    a = np.deg2rad(min(abs(lat), 80.0))
    summer = 5200.0 * np.cos(a) ** 1.5
    winter = _cycle(_local_month(month, lat), 1.5)
    return float(summer - 3300.0 * np.sin(a) ** 1.2 * winter)


# --------------------------------------------------------------------------------------------
# noise


def _fft_field(rng: np.random.Generator, n: int, beta: float, lo_px: float) -> np.ndarray:
    """Periodic power-law noise k^-beta on n x n pixels, damped below lo_px pixels; unit std."""
    ky = sfft.fftfreq(n).astype(np.float32)
    kx = sfft.rfftfreq(n).astype(np.float32)
    k = np.hypot(ky[:, None], kx[None, :])
    k[0, 0] = 1.0
    amp = k ** np.float32(-beta / 2.0) * np.exp(-((k * np.float32(lo_px)) ** 2))
    amp[0, 0] = 0.0
    u = rng.random((n, n), dtype=np.float32) - np.float32(0.5)
    f = sfft.irfft2(sfft.rfft2(u, workers=1) * amp, s=(n, n), workers=1)
    return (f / max(float(f.std()), 1e-12)).astype(np.float32)


def _upsample_periodic(a: np.ndarray, factor: int, n: int) -> np.ndarray:
    """Linear interpolation of a periodic m x m field by an integer factor, cropped to n x n.

    Pure broadcasting (no BLAS: threaded BLAS spin-waits and slows the rest of a render on
    small machines); the field's period makes the wrap-around seamless.
    """
    t = (np.arange(factor, dtype=np.float32) / np.float32(factor))[None, :, None]
    m = a.shape[0]
    ext = np.concatenate([a, a[:1]], axis=0)
    rows = (ext[:-1, None, :] * (1.0 - t) + ext[1:, None, :] * t).reshape(m * factor, m)
    ext = np.concatenate([rows, rows[:, :1]], axis=1)[:n]
    t = t.reshape(1, 1, factor)
    out = ext[:, :-1, None] * (1.0 - t) + ext[:, 1:, None] * t
    return out.reshape(n, m * factor)[:, :n]


def _coarse_field(rng: np.random.Generator, n: int, beta: float) -> np.ndarray:
    """Smooth unit-std field at n x n, synthesised at 1/4 resolution and upsampled."""
    m = max(8, -(-n // 4))
    return _upsample_periodic(_fft_field(rng, m, beta, 1.0), 4, n)


@functools.lru_cache(maxsize=4)
def _fine_bank(n: int) -> np.ndarray:
    """Two periodic fine-texture fields (grain of a few pixels), wrap-padded to period + n.

    Generated once per size from a fixed seed; a cell picks a random window, so the bank adds
    no per-cell FFT cost. Shape (2, p + n, p + n), p = period.
    """
    p = min(512, max(64, n))
    rng = np.random.default_rng(20_240_917)
    # Grain damped below ~3 px: pixel-scale noise would make every tile incompressible.
    bank = np.stack([_fft_field(rng, p, 2.0, 3.0), _fft_field(rng, p, 2.6, 5.0)])
    reps = -(-(p + n) // p)
    bank = np.tile(bank, (1, reps, reps))[:, : p + n, : p + n].copy()
    bank.flags.writeable = False  # shared by every render (and thread): views must stay read-only
    return bank


def _fine_fields(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    bank = _fine_bank(n)
    p = bank.shape[1] - n
    r, c = (int(v) for v in rng.integers(0, p, size=2))
    return bank[0, r : r + n, c : c + n], bank[1, r : r + n, c : c + n]


def _shift(a: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """a moved by (dr, dc) pixels, zero-filled (no wrap)."""
    out = np.zeros_like(a)
    n0, n1 = a.shape
    if abs(dr) >= n0 or abs(dc) >= n1:
        return out
    src = a[max(0, -dr) : n0 - max(0, dr), max(0, -dc) : n1 - max(0, dc)]
    out[max(0, dr) : max(0, dr) + src.shape[0], max(0, dc) : max(0, dc) + src.shape[1]] = src
    return out


# --------------------------------------------------------------------------------------------
# scene components


def _parcels(rng: np.random.Generator, n: int, pixel_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Crop-parcel patchwork: per-parcel greenness and cover, at half resolution then doubled.

    Parcels are a rotated grid of random widths (150-600 m), each parcel drawing its own crop
    state from a hashed table (green crop, ripe, ploughed soil).
    """
    h = -(-n // 2)
    theta = rng.uniform(0.0, np.pi / 2.0)
    a, b = rng.uniform(150.0, 600.0, size=2) / (2.0 * pixel_m)  # parcel sides, half-res pixels
    y = np.arange(h, dtype=np.float32)[:, None] + np.float32(4 * n)
    x = np.arange(h, dtype=np.float32)[None, :] + np.float32(4 * n)
    u = (x * np.float32(np.cos(theta) / a) + y * np.float32(np.sin(theta) / a)).astype(np.int32)
    v = (y * np.float32(np.cos(theta) / b) - x * np.float32(np.sin(theta) / b) + np.float32(8 * n / b)).astype(np.int32)
    key = ((u * np.int32(73_856_093)) ^ (v * np.int32(19_349_663))) & np.int32(1023)
    state = rng.random(1024).astype(np.float32)
    green = np.clip(state * 1.6 - 0.3, 0.0, 1.0)  # a share of parcels fully green
    cover = np.where(state < 0.2, 0.05, 0.95).astype(np.float32)  # ~20 % bare, ploughed
    g2, c2 = green[key], cover[key]
    g2 = np.repeat(np.repeat(g2, 2, axis=0), 2, axis=1)[:n, :n]
    c2 = np.repeat(np.repeat(c2, 2, axis=0), 2, axis=1)[:n, :n]
    return g2, c2


def _nodata_edge(rng: np.random.Generator, n: int) -> np.ndarray:
    """Swath edge: a straight or slanted line leaving 12-38 % of the tile without data."""
    frac = rng.uniform(0.12, 0.38)
    side = rng.integers(4) * np.pi / 2.0
    # Sentinel-2 swath edges run roughly north-south with a ~10 degree slant; some are straight.
    tilt = 0.0 if rng.random() < 0.3 else rng.choice([-1.0, 1.0]) * np.deg2rad(rng.uniform(5.0, 20.0))
    ang = side + tilt
    y = np.arange(n, dtype=np.float32)[:, None]
    x = np.arange(n, dtype=np.float32)[None, :]
    proj = x * np.float32(np.cos(ang)) + y * np.float32(np.sin(ang))
    cut = np.quantile(proj[2::4, 2::4], 1.0 - frac)
    return proj > cut


def _to_dn(refl: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    dn = np.clip(refl * np.float32(_DN_SCALE) + np.float32(0.5), 1.0, _DN_MAX).astype(np.uint16)
    if valid is not None:
        dn *= valid  # uint16 * bool keeps uint16; 0 = no data
    return dn


# --------------------------------------------------------------------------------------------
# public API


def render_cell(
    dem_10m: np.ndarray,
    pixel_m: float,
    biome_num: int | None,
    month: int,
    lat: float,
    rng: np.random.Generator,
    cloud_cover: float = 0.0,
    nodata_border: bool = False,
) -> RenderedCell:
    """Render a cell's Sentinel-2 B02/B03/B04 as L2A and L1C from its (10 m) DEM.

    Args:
        dem_10m: square float elevations in metres (e.g. upsample_dem of the 30 m tile), row 0 north.
        pixel_m: pixel spacing of dem_10m in metres (10.0 for Sentinel-2's RGB bands).
        biome_num: RESOLVE BIOME_NUM 1-14, or None for "Rock and Ice".
        month: acquisition month 1-12.
        lat: cell centre latitude in degrees (sets the sun, the season's sign and the snowline).
        rng: numpy Generator; the only source of randomness.
        cloud_cover: target cloudy fraction (thick + thin) of the valid pixels, 0..1 (default 0).
        nodata_border: cut a swath edge leaving 12-38 % of the tile without data (default False).

    Returns:
        RenderedCell.
    """
    if biome_num not in PALETTES:
        raise ValueError(f"biome_num must be 1-14 or None (Rock and Ice), got {biome_num!r}")
    if not 1 <= int(month) <= 12:
        raise ValueError(f"month must be 1-12, got {month!r}")
    pal = PALETTES[biome_num]
    dem = np.asarray(dem_10m, dtype=np.float32)
    n = dem.shape[0]
    if dem.ndim != 2 or dem.shape[1] != n:
        raise ValueError(f"dem_10m must be square 2-D, got shape {dem.shape}")
    f32 = np.float32

    # --- terrain: illumination and slope from one gradient pass
    sun = sun_position(lat, month)
    gx, gy = gradients(dem, pixel_m)
    slope = np.hypot(gx, gy)
    # Illumination relative to flat ground (1 on the flat, >1 facing the sun, 0 in self-shadow).
    illum = shade_from_gradients(gx, gy, sun)
    illum *= f32(1.0 / np.sin(np.deg2rad(sun.altitude_deg)))
    np.minimum(illum, f32(2.5), out=illum)
    del gx, gy

    # --- texture: coarse patches (per cell) and fine grain (cached bank, random window)
    patch, patch2 = _coarse_field(rng, n, 3.0), _coarse_field(rng, n, 3.0)
    grain, grain2 = _fine_fields(rng, n)

    # --- vegetation cover and greenness
    sub = dem[::8, ::8]
    summer_line = snowline_m(lat, 7 if lat >= 0 else 1)
    treeline = summer_line - 1000.0
    # Vegetation thins above the treeline and disappears below the permanent snow.
    alt_factor = np.clip((f32(treeline + 400.0) - dem) * f32(1.0 / 800.0), 0.15, 1.0)
    alt_factor *= np.clip((f32(summer_line - 200.0) - dem) * f32(1.0 / 400.0), 0.0, 1.0)
    rock = np.clip((slope - f32(0.9)) * f32(2.0), 0.0, 1.0)  # 42..55 degrees: bare rock
    # Dense canopies are uniform; sparse covers are patchy.
    cover = f32(pal.cover) + f32(0.6 * (1.0 - pal.cover) + 0.02) * patch
    cover *= alt_factor
    cover *= f32(1.0) - rock
    g0 = greenness(pal, month, lat) + rng.normal(0.0, 0.04)
    green = f32(g0) + f32(0.12) * patch2
    if pal.fields > 0 and rng.random() < pal.fields:
        # Farmland only on gentle lowland, fading out with slope.
        pg, pc = _parcels(rng, n, pixel_m)
        fw = np.clip(f32(1.0) - slope * f32(1.0 / 0.12), 0.0, 1.0)
        fw *= np.clip(patch * f32(1.5) + f32(0.8), 0.0, 1.0)  # not every patch is farmed
        fw *= alt_factor
        cover += fw * (pc - cover)
        green += fw * (pg * f32(0.8 + 0.2 * g0) - green)
    np.clip(cover, 0.0, 1.0, out=cover)
    np.clip(green, 0.0, 1.0, out=green)

    # --- snow: below the seasonal snowline nothing; cold biomes always cap their peaks
    line = snowline_m(lat, month) + (400.0 if pal.season == "arid" else 0.0)
    if pal.cold and float(np.percentile(sub, 99) - np.percentile(sub, 1)) > 300.0:
        line = min(line, float(np.percentile(sub, 96)))
    snow = None
    if float(sub.max()) > line - 300.0:
        snow = np.clip((dem - f32(line)) * f32(1.0 / 250.0) + f32(0.3) * patch2, 0.0, 1.0)
        snow *= np.clip((f32(1.3) - slope) * f32(2.0), 0.0, 1.0)  # cliffs shed snow

    # --- water in the lowest flat ground, for some cells
    water = None
    if rng.random() < pal.water:
        share = rng.uniform(0.15, 0.4) if biome_num == 14 else rng.uniform(0.02, 0.12)
        level = float(np.quantile(sub, share))
        depth_scale = max(float(np.percentile(sub, 99) - np.percentile(sub, 1)) * 0.02, 0.5)
        water = np.clip((f32(level) - dem) * f32(1.0 / depth_scale) + f32(0.5) + f32(0.3) * patch, 0.0, 1.0)
        water *= slope < f32(0.05)

    # --- surface reflectance per band
    autumn = 0.0
    if pal.season == "temperate":
        autumn = (1.0 - pal.evergreen) * float(np.exp(-((_local_month(month, lat) - 10.0) ** 2)))
    tint = (0.04 * autumn, 0.012 * autumn, -0.004 * autumn)
    # Fine grain kept small: it is what makes 10 m tiles incompressible, and training sees
    # area-downsampled images where it averages out anyway.
    tex = f32(1.0) + f32(0.07) * patch2 + f32(0.012) * grain + f32(0.01) * grain2
    surface = {}
    for i, band in enumerate(("B04", "B03", "B02")):
        veg = f32(pal.dry[i] + tint[i]) + green * f32(pal.green[i] - pal.dry[i])
        ground = f32(pal.soil[i]) + rock * f32(pal.rock[i] - pal.soil[i])
        veg -= ground
        veg *= cover
        veg += ground
        veg *= tex
        if water is not None:
            veg += water * (f32(_WATER[i]) - veg)
        if snow is not None:
            veg += snow * (f32(_SNOW[i]) * (f32(1.0) + f32(0.03) * grain) - veg)
        surface[band] = veg

    # --- clouds, shadows, no-data
    nodata = _nodata_edge(rng, n) if nodata_border else np.zeros((n, n), bool)
    valid = ~nodata
    mask = np.zeros((n, n), np.uint8)
    alpha = shadow = None
    if cloud_cover > 0.0:
        c = _coarse_field(rng, n, 3.2)
        c += f32(0.25) * grain2
        sample = c[::4, ::4][valid[::4, ::4]]
        cover_frac = float(np.clip(cloud_cover, 0.0, 1.0))
        t_cloud = float(np.quantile(sample, 1.0 - cover_frac)) if cover_frac < 1 else -np.inf
        t_thick = float(np.quantile(sample, 1.0 - cover_frac * rng.uniform(0.4, 0.8)))
        # Opacity ramps from the (unflagged, faint) cloud fringe to opaque cores: thin cloud
        # 0.05-0.6, thick 0.6-1.
        t0 = t_cloud - 0.05 if np.isfinite(t_cloud) else float(sample.min()) - 1.0
        alpha = np.clip((c - f32(t0)) * f32(0.6 / max(t_thick - t0, 1e-3)), 0.0, 0.6)
        alpha += np.clip((c - f32(t_thick)) * f32(0.4 / 0.3), 0.0, 0.4)
        is_cloud = c > f32(t_cloud)
        mask[is_cloud] = THIN
        mask[c > f32(t_thick)] = THICK
        # Shadows fall away from the sun: cloud height / tan(sun altitude), along -azimuth.
        reach = rng.uniform(1000.0, 3000.0) / np.tan(np.deg2rad(sun.altitude_deg)) / pixel_m
        a = np.deg2rad(sun.azimuth_deg)
        dr, dc = int(round(np.cos(a) * reach)), int(round(-np.sin(a) * reach))
        shadow = _shift(alpha, dr, dc)
        shadow *= ~is_cloud
        mask[(shadow > f32(0.25)) & (mask == CLEAR)] = SHADOW
        shadow *= f32(0.65)
    mask *= valid

    # --- the two products from the same surface
    diffuse = rng.uniform(0.15, 0.25)
    l1c_shade = f32(diffuse) + f32(1.0 - diffuse) * illum
    residual = rng.uniform(0.05, 0.12)  # terrain correction leaves a little shading behind
    l2a_shade = f32(1.0 - residual) + f32(residual) * illum
    aerosol = rng.uniform(0.7, 1.4)
    path = {"B02": 0.075 * aerosol, "B03": 0.045 * aerosol, "B04": 0.028 * aerosol}
    trans = {"B02": 0.80, "B03": 0.86, "B04": 0.90}
    haze = {"B02": 0.008, "B03": 0.005, "B04": 0.003}
    brightness = f32(rng.uniform(0.95, 1.05))  # a little scene-to-scene calibration spread
    l1c, l2a = {}, {}
    for band in BANDS:
        s = surface[band]
        s *= brightness
        top = s * l1c_shade
        top *= f32(trans[band])
        top += f32(path[band])
        bottom = s * l2a_shade
        bottom += f32(haze[band])
        if shadow is not None:
            top -= shadow * (top - f32(path[band]))  # shadow removes direct light, path remains
            bottom -= shadow * bottom
        if alpha is not None:
            cloud = f32(_CLOUD[("B04", "B03", "B02").index(band)]) * (f32(1.0) + f32(0.08) * grain)
            top += alpha * (cloud + f32(0.5 * path[band]) - top)
            bottom += alpha * (cloud - bottom)
        l1c[band] = _to_dn(top, valid if nodata_border else None)
        l2a[band] = _to_dn(bottom, valid if nodata_border else None)

    n_valid = int(valid.sum())
    cloudy = int(((mask == THICK) | (mask == THIN)).sum())
    return RenderedCell(
        l2a=l2a,
        l1c=l1c,
        cloud_mask=mask,
        nodata=nodata,
        cloud_cover_pct=100.0 * cloudy / n_valid if n_valid else 0.0,
        nodata_fraction=float(nodata.mean()),
    )
