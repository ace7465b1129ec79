"""Procedural digital elevation models whose Hammond landform class is known by construction.

Everything is synthesised in physical units: noise spectra are defined over wavelengths in metres
and their amplitude is normalised against the continuous spectrum, so a tile of 48 px at 222.5 m
is a coarser sampling of the same kind of landscape as 356 px at 30 m (the slope statistics, which
depend on pixel size, stay close). Raster convention: row 0 is north, columns increase eastwards.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft
from scipy import ndimage


from components.captions.landform import classify_landform as classify
from components.captions.landform import landform_inputs
from components.radiometry.hillshade import gradients

LANDFORM_CLASSES = ("plains", "tablelands", "hills", "low mountains", "high mountains")

GENTLE_SLOPE = 0.08  # Hammond's "gentle": rise over run below 8 %

# Relief (p99 - p1, metres) sampled per class, inside Hammond's bands with a safety margin.
_RELIEF_RANGE_M = {
    "plains": (12.0, 70.0),
    "tablelands": (140.0, 650.0),
    "hills": (115.0, 270.0),
    "low mountains": (360.0, 840.0),
    "high mountains": (1050.0, 2800.0),
}


# --------------------------------------------------------------------------------------------
# spectral noise in physical units


def _periodic_size(size: int) -> int:
    # Synthesise on a larger periodic domain and crop, so tiles are not periodic themselves
    # and trends longer than the tile exist.
    return int(sfft.next_fast_len(int(np.ceil(size * 1.25)), real=True))


def _wavenumbers(n: int, pixel_m: float) -> np.ndarray:
    """|k| in cycles per metre on the rfft2 grid of an n x n domain."""
    ky = sfft.fftfreq(n, d=pixel_m).astype(np.float32)
    kx = sfft.rfftfreq(n, d=pixel_m).astype(np.float32)
    return np.hypot(ky[:, None], kx[None, :])


def _continuum_variance(psd, lo_k: float, hi_k: float) -> float:
    """Integral of an isotropic 2-D PSD over the plane (log-spaced 1-D quadrature)."""
    k = np.geomspace(lo_k, hi_k, 4096)
    return float(np.trapezoid(psd(k) * 2.0 * np.pi * k, k))


def _filter(white: np.ndarray, k: np.ndarray, psd, n: int, pixel_m: float) -> np.ndarray:
    """Shape white noise (its rfft2) by psd(k); unit variance for the continuous field.

    A bin amplitude of sqrt(psd) / pixel_m gives a discrete field whose variance is the PSD
    summed over the resolved frequencies, so coarse grids simply lack the fine wavelengths.
    """
    var = _continuum_variance(psd, 1e-7, 1.0)
    amp = np.sqrt(psd(np.maximum(k, 1e-9)) / var).astype(np.float32) / np.float32(pixel_m)
    amp[0, 0] = 0.0
    return sfft.irfft2(white * amp, s=(n, n), workers=1).astype(np.float32)


def _white(rng: np.random.Generator, n: int) -> np.ndarray:
    # Uniform white noise with unit variance: 5x cheaper to draw than normals, and the
    # band-limited result is Gaussian anyway (many bins summed).
    u = rng.random((n, n), dtype=np.float32) - np.float32(0.5)
    return sfft.rfft2(u * np.float32(np.sqrt(12.0)), workers=1)


def _fbm_psd(beta: float, lo_m: float, hi_m: float):
    """Von Karman power law k^-beta, flat beyond wavelength hi_m, damped below lo_m."""
    k0 = 1.0 / hi_m

    def psd(k):
        return (k * k + k0 * k0) ** (-beta / 2.0) * np.exp(-((k * lo_m) ** 2))

    return psd


def _band_psd(wavelength_m: float, width: float = 0.35):
    """Narrow log-normal band around one wavelength (one octave of a multifractal)."""
    kc = 1.0 / wavelength_m

    def psd(k):
        return np.exp(-(np.log(k / kc) ** 2) / (2.0 * width * width)) / (k * k)

    return psd


class _NoiseMaker:
    """Draws independent unit-variance fields on one periodic domain of n x n pixels."""

    def __init__(self, rng: np.random.Generator, size: int, pixel_m: float):
        self.rng, self.size, self.pixel_m = rng, size, pixel_m
        self.n = _periodic_size(size)
        self.k = _wavenumbers(self.n, pixel_m)
        self.r0, self.c0 = (int(v) for v in rng.integers(0, self.n - size + 1, size=2))

    def field(self, psd) -> np.ndarray:
        full = _filter(_white(self.rng, self.n), self.k, psd, self.n, self.pixel_m)
        return full[self.r0 : self.r0 + self.size, self.c0 : self.c0 + self.size]

    def fbm(self, beta: float, lo_m: float, hi_m: float) -> np.ndarray:
        return self.field(_fbm_psd(beta, lo_m, hi_m))

    def band(self, wavelength_m: float) -> np.ndarray:
        return self.field(_band_psd(wavelength_m))


# --------------------------------------------------------------------------------------------
# building blocks


def _normalise(z: np.ndarray) -> np.ndarray:
    """Map p1..p99 to 0..1 (values outside keep going), so relief can be set exactly."""
    lo, hi = np.percentile(z, [1.0, 99.0])
    return ((z - lo) / max(hi - lo, 1e-9)).astype(np.float32)


def _ridged(noise: _NoiseMaker, wavelength_m: float, octaves: int, gain: float) -> np.ndarray:
    """Ridged multifractal: sharp crests at noise zero-crossings, detail weighted by height."""
    h = np.zeros((noise.size, noise.size), np.float32)
    weight = np.ones_like(h)
    amp = 1.0
    for o in range(octaves):
        n = noise.band(wavelength_m / 2.0**o)
        # N(0,1) halved is mostly within [-1, 1]; the square sharpens crests into ridges.
        r = np.clip(1.0 - 0.5 * np.abs(n), 0.0, 1.0) ** 2 * weight
        h += np.float32(amp) * r
        weight = np.clip(2.0 * r, 0.0, 1.0)
        amp *= gain
    return h


def _warp(z: np.ndarray, noise: _NoiseMaker, amplitude_m: float, wavelength_m: float) -> np.ndarray:
    """Domain warping: displace sampling positions by smooth noise, so ridges meander."""
    shift = amplitude_m / noise.pixel_m
    dr = noise.fbm(3.5, wavelength_m / 2.0, wavelength_m) * np.float32(shift)
    dc = noise.fbm(3.5, wavelength_m / 2.0, wavelength_m) * np.float32(shift)
    rows, cols = np.mgrid[0 : z.shape[0], 0 : z.shape[1]].astype(np.float32)
    return ndimage.map_coordinates(z, [rows + dr, cols + dc], order=1, mode="mirror").astype(np.float32)


def _thermal_erosion(z: np.ndarray, pixel_m: float, talus: float, iterations: int) -> np.ndarray:
    """Move material downhill wherever a neighbour step exceeds the talus slope (scree)."""
    z = z.copy()
    limit = np.float32(talus * pixel_m)  # a slope in m/m is a height step per pixel spacing
    for _ in range(iterations):
        for axis in (0, 1):
            d = np.diff(z, axis=axis)
            move = np.sign(d) * np.maximum(np.abs(d) - limit, 0.0) * np.float32(0.45)
            if axis == 0:
                z[:-1] += move
                z[1:] -= move
            else:
                z[:, :-1] += move
                z[:, 1:] -= move
    return z


def _valley_fill(h: np.ndarray, pixel_m: float, sigma_m: float, strength: float) -> np.ndarray:
    """Erosion-like smoothing weighted towards low ground: sediment fills valley floors."""
    smooth = ndimage.gaussian_filter(h, sigma=max(sigma_m / pixel_m, 0.5), mode="reflect")
    w = np.float32(strength) * np.clip(1.0 - h, 0.0, 1.0) ** 2
    return (h * (1.0 - w) + smooth * w).astype(np.float32)


# --------------------------------------------------------------------------------------------
# per-class generators: each returns a float32 surface (metres up to an offset)


def _distance_to_zero(field: np.ndarray, pixel_m: float) -> np.ndarray:
    """Approximate distance in metres to the field's zero contour, |f| / |grad f|.

    Physical units, so features drawn along the contour keep their width at any pixel size.
    """
    gr, gc = np.gradient(field, np.float32(pixel_m))
    return np.abs(field) / np.maximum(np.hypot(gr, gc), np.float32(1e-9))


def _plains(noise: _NoiseMaker, rng: np.random.Generator, relief: float) -> np.ndarray:
    h = _normalise(noise.fbm(3.6, 700.0, 15000.0))
    if rng.random() < 0.5:
        # A shallow, wide river valley: a line across the tile, meandering by warped noise.
        size, pixel_m = noise.size, noise.pixel_m
        theta = rng.uniform(0.0, np.pi)
        y, x = (np.mgrid[0:size, 0:size].astype(np.float32) - np.float32(size / 2)) * np.float32(pixel_m)
        across = x * np.float32(np.cos(theta)) + y * np.float32(np.sin(theta))
        across += noise.fbm(3.5, 1500.0, 10000.0) * np.float32(rng.uniform(300.0, 1000.0))
        across -= np.float32(rng.uniform(-0.3, 0.3) * size * pixel_m)
        half_width = np.float32(rng.uniform(300.0, 1000.0))
        h -= np.float32(rng.uniform(0.2, 0.5)) * np.exp(-((across / half_width) ** 2))
        h = _normalise(h)
    micro = noise.fbm(3.0, 60.0, 600.0) * np.float32(0.01)
    return (h + micro) * np.float32(relief)


def _hills(noise: _NoiseMaker, rng: np.random.Generator, relief: float) -> np.ndarray:
    base = noise.fbm(3.2, 350.0, 4000.0)
    ridges = _ridged(noise, 2500.0, 3, 0.5)
    h = _normalise(base) + np.float32(rng.uniform(0.3, 0.8)) * _normalise(ridges)
    h = _warp(_normalise(h), noise, 300.0, 3000.0)
    # Rounded tops over broad valley floors keep the gentle land low (not a tableland profile).
    h = np.clip(h, 0.0, None) ** np.float32(rng.uniform(1.2, 1.5))
    return _normalise(h) * np.float32(relief)


def _mountains(noise: _NoiseMaker, rng: np.random.Generator, relief: float, high: bool) -> np.ndarray:
    # Ridge spacing and the steep (beta 3.6) fine spectrum keep median slopes near 15 degrees
    # for low and 30-40 degrees for high mountains.
    wavelength = rng.uniform(8000.0, 11000.0) if high else rng.uniform(5000.0, 7000.0)
    ridges = _ridged(noise, wavelength, 4 if high else 3, 0.45)
    rough = noise.fbm(3.6, 250.0 if high else 400.0, wavelength)
    h = _normalise(ridges) + np.float32(0.3 if high else 0.5) * _normalise(rough)
    h = _warp(_normalise(h), noise, 0.03 * wavelength, wavelength)
    # Broad valley floors, sharper peaks (a cheap stand-in for fluvial erosion).
    h = np.clip(h, 0.0, None) ** np.float32(rng.uniform(1.05, 1.3))
    h = _valley_fill(h, noise.pixel_m, 250.0, 0.5)
    z = _normalise(h) * np.float32(relief)
    # A few thermal-erosion passes soften the steepest steps into scree slopes.
    z = _thermal_erosion(z, noise.pixel_m, talus=0.75, iterations=8)
    return _normalise(z) * np.float32(relief)


def _tablelands(noise: _NoiseMaker, rng: np.random.Generator, relief: float) -> np.ndarray:
    """High flat plateau cut by a few canyons and, for some tiles, an escarpment."""
    size, pixel_m = noise.size, noise.pixel_m
    # Canyon axes = zero-crossings of smooth noise (they branch and meander); the distance to
    # them is |c| / |grad c| in metres, so canyon widths do not depend on the pixel size.
    dist = _distance_to_zero(noise.fbm(3.5, 1500.0, rng.uniform(6000.0, 10000.0)), pixel_m)
    # Only part of the contour network is incised (gate), so the plateau stays dominant.
    gate = np.clip(0.5 + noise.fbm(3.5, 1500.0, 8000.0), 0.0, 1.0)
    floor_half = rng.uniform(80.0, 250.0)
    wall = relief / rng.uniform(1.0, 2.5)  # horizontal width of the walls, metres
    cut = np.clip(1.0 - (dist - floor_half) / np.float32(wall), 0.0, 1.0) * (gate > 0.5)
    if rng.random() < 0.5:
        # Escarpment: a wavy line leaves a lower plain on one side of the tile.
        theta = rng.uniform(0.0, 2.0 * np.pi)
        y, x = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) * np.float32(pixel_m)
        s = x * np.float32(np.cos(theta)) + y * np.float32(np.sin(theta))
        s = s + noise.fbm(3.0, 400.0, 5000.0) * np.float32(500.0)
        s0 = np.quantile(s, rng.uniform(0.1, 0.25))
        cut = np.maximum(cut, np.clip(1.0 - (s - s0) / np.float32(wall), 0.0, 1.0))
    top = noise.fbm(3.5, 800.0, 10000.0) * np.float32(rng.uniform(3.0, 10.0))
    floor = noise.fbm(3.5, 500.0, 5000.0) * np.float32(3.0)
    return np.float32(relief) * (1.0 - cut) + top * (1.0 - cut) + floor * cut


# --------------------------------------------------------------------------------------------
# public API


def synth_dem(
    landform: str,
    rng: np.random.Generator,
    size: int = 356,
    pixel_m: float = 30.0,
    base_elevation_m: float = 200.0,
) -> np.ndarray:
    """Synthesise a DEM tile of one Hammond landform class.

    Args:
        landform: one of LANDFORM_CLASSES.
        rng: numpy Generator; the only source of randomness (same state -> same tile).
        size: tile width and height in pixels (default 356, Core-DEM's 30 m tile).
        pixel_m: pixel spacing in metres (default 30.0); keep size * pixel_m near 10,680 m.
        base_elevation_m: elevation of the tile's low ground (its 1st percentile), default 200.

    Returns:
        float32 array (size, size) of elevations in metres, row 0 north.
    """
    if landform not in LANDFORM_CLASSES:
        raise ValueError(f"unknown landform {landform!r}; expected one of {LANDFORM_CLASSES}")
    lo, hi = _RELIEF_RANGE_M[landform]
    # Log-uniform: as many gentle as rugged tiles within a class.
    relief = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    noise = _NoiseMaker(rng, size, pixel_m)
    if landform == "plains":
        z = _plains(noise, rng, relief)
    elif landform == "hills":
        z = _hills(noise, rng, relief)
    elif landform == "tablelands":
        z = _tablelands(noise, rng, relief)
    else:
        z = _mountains(noise, rng, relief, high=landform == "high mountains")
    z = z - np.percentile(z, 1.0) + np.float32(base_elevation_m)
    return z.astype(np.float32)


def slope(dem: np.ndarray, pixel_m: float) -> np.ndarray:
    """Slope magnitude as rise over run (0.08 = 8 %), float32, central differences."""
    gx, gy = gradients(dem, pixel_m)
    return np.hypot(gx, gy)


def landform_stats(dem: np.ndarray, pixel_m: float) -> dict:
    """Hammond inputs for a whole tile: the production measurement (components.captions.landform)."""
    return landform_inputs(dem, pixel_m)


def classify_landform(stats: dict) -> str:
    """The class the production rules give a tile's landform_stats (one of LANDFORM_CLASSES)."""
    return str(classify(stats["gentle_share"], stats["relief_m"], stats["profile_upper_share"]))


def upsample_dem(dem_30m: np.ndarray, factor: int = 3) -> np.ndarray:
    """Bilinear resampling onto the finer grid covering the same footprint.

    Pixel-centre alignment: the footprint's edges coincide, so the centre of coarse pixel i
    sits at fine coordinate factor * i + (factor - 1) / 2; for factor 3 (356 px at 30 m ->
    1068 px at 10 m) that is the middle 10 m pixel of the 3 x 3 block. Fine pixels within half a
    coarse pixel of the edge take the edge value (no extrapolation).

    Args:
        dem_30m: 2-D elevations.
        factor: integer refinement (default 3).

    Returns:
        float32 array of shape (factor * rows, factor * cols).
    """
    dem = np.asarray(dem_30m, dtype=np.float32)
    # grid_mode=True scales pixel extents (not centre-to-centre distances): the alignment above.
    return ndimage.zoom(dem, factor, order=1, mode="nearest", grid_mode=True).astype(np.float32)
