"""Metrics of text-to-terrain generations: pure functions on arrays (no model, no files).

Inputs everywhere: RGB as uint8 ``(N, H, W, 3)`` or one ``(H, W, 3)`` image; DEMs as elevations
in metres, float ``(N, H, W)`` or one ``(H, W)``; ``pixel_size_m`` the ground spacing in metres.

What each metric says, and which way is better (:func:`metric_directions` lists them by name):

=============================  ====================================================  ===========
``landform_balanced_accuracy``  the generated DEM's landform (the captions stage's     higher
                                Hammond rules) matches the one the caption asked for;
                                mean per-class recall, chance = 1 / classes
``biome_adherence_js``          Jensen-Shannon distance between the colour histograms  lower
                                of generated and real images of the same biome group
``realism_w1_<descriptor>``     Wasserstein-1 distance between generated and real      lower
                                distributions of one terrain descriptor (slope, local
                                relief, roughness, hypsometric integral)
``rgb_dem_coherence``           correlation of the DEM's hillshade with the image's    higher
                                luminance (best sun azimuth); compare with real pairs
``diversity``                   mean pairwise difference between the seeds' samples    higher
                                of one caption; 0 = mode collapse
``dem_artefact_share``          share of a DEM's spectral energy in isolated peaks     lower
                                (stripes, a grid at the latent spacing), mean over
                                DEMs; compare with real DEMs
=============================  ====================================================  ===========

Reused, not re-implemented: the landform measurement and rules
(:func:`components.captions.landform.landform_inputs`, :func:`~components.captions.landform.classify_landform`)
and the project's hillshade (:func:`components.radiometry.hillshade.hillshade`).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from components.captions.landform import (
    check_landform_thresholds,
    classify_landform,
    landform_inputs,
    paper_landform_word,
)
from components.radiometry.hillshade import Sun, hillshade

__all__ = [
    "BalancedAccuracy",
    "DESCRIPTOR_NAMES",
    "REC709_WEIGHTS",
    "COHERENCE_AZIMUTHS_DEG",
    "classify_dems",
    "landform_balanced_accuracy",
    "landform_met",
    "colour_histogram",
    "histogram_distance",
    "biome_adherence",
    "slope_deg",
    "local_relief_m",
    "roughness_m",
    "hypsometric_integral",
    "terrain_descriptors",
    "realism_distances",
    "luminance",
    "rgb_dem_correlations",
    "rgb_dem_coherence",
    "diversity",
    "ARTEFACT_PEAK_FACTOR",
    "dem_artefact_shares",
    "dem_artefact_share",
    "metric_directions",
]

#: Columns of :func:`terrain_descriptors`, in order.
DESCRIPTOR_NAMES: tuple[str, ...] = ("slope_deg", "local_relief_m", "roughness_m", "hypsometric_integral")

#: ITU-R BT.709 luma weights for (R, G, B).
REC709_WEIGHTS: tuple[float, float, float] = (0.2126, 0.7152, 0.0722)

#: Sun azimuths (degrees clockwise from north) tried by :func:`rgb_dem_correlations`: every 45 deg,
#: so the true sun direction is never more than 22.5 deg from one of them.
COHERENCE_AZIMUTHS_DEG: tuple[float, ...] = (0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0)

_HIGHER = "higher_is_better"
_LOWER = "lower_is_better"


# ----------------------------------------------------------------------------- input checks


def _as_dem_stack(dems_m: Any, name: str = "dems_m") -> np.ndarray:
    """``(N, H, W)`` float64 from one ``(H, W)`` DEM or a stack; ValueError on other shapes."""
    try:
        arr = np.asarray(dems_m, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric elevations in metres, got {type(dems_m).__name__}") from None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] == 0 or min(arr.shape[1:]) < 2:
        raise ValueError(f"{name} must have shape (H, W) or (N, H, W) with N >= 1 and H, W >= 2, got {arr.shape}")
    return arr


def _as_dem(dem: Any, name: str = "dem") -> np.ndarray:
    """One finite 2-D DEM as float64; the descriptors have no meaning over missing data."""
    arr = np.asarray(dem, dtype=np.float64)
    if arr.ndim != 2 or min(arr.shape) < 2:
        raise ValueError(f"{name} must be a 2-D array of at least 2 x 2 pixels, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        n_bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name} has {n_bad} non-finite value(s); descriptors need a complete DEM")
    return arr


def _as_rgb_stack(rgb: Any, name: str = "rgb") -> np.ndarray:
    """``(N, H, W, 3)`` uint8 from one image or a stack; ValueError on other shapes or dtypes."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (0..255), got dtype {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] == 0:
        raise ValueError(f"{name} must have shape (H, W, 3) or (N, H, W, 3) with N >= 1, got {arr.shape}")
    return arr


def _check_pixel_size(pixel_size_m: Any) -> float:
    try:
        value = float(pixel_size_m)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"pixel_size_m must be a positive finite number of metres, got {pixel_size_m!r}")
    return value


def _labels(values: Sequence[Any], name: str) -> list[Any]:
    if isinstance(values, str):  # a bare string would be read as a sequence of characters
        raise ValueError(f"{name} must be a sequence of labels, not one string {values!r}")
    return list(values)


# ----------------------------------------------------------------------------- 1-2. landform


def classify_dems(
    dems_m: Any, pixel_size_m: float, thresholds: Mapping[str, Any] | None = None
) -> list[str | None]:
    """Landform class of each DEM by the captions stage's own rules.

    Args:
        dems_m: elevations in metres, float ``(N, H, W)`` or one ``(H, W)``; NaN = no data.
        pixel_size_m: ground spacing in metres (float > 0).
        thresholds: overrides of ``DEFAULT_LANDFORM_THRESHOLDS`` (mapping; default ``None``:
            the defaults). Pass the run's ``captions.landform_thresholds`` so generations are
            judged by the rules that wrote their captions.

    Returns:
        One of ``LANDFORM_CLASSES`` per DEM, in order; ``None`` for a DEM without usable
        pixels (``classify_landform`` gives no landform rather than a guess).
    """
    stack = _as_dem_stack(dems_m)
    pixel = _check_pixel_size(pixel_size_m)
    t = check_landform_thresholds(thresholds)
    inputs = [landform_inputs(dem, pixel, gentle_slope=t["gentle_slope"]) for dem in stack]
    classes = classify_landform(
        [i["gentle_share"] for i in inputs],
        [i["relief_m"] for i in inputs],
        [i["profile_upper_share"] for i in inputs],
        t,
    )
    return list(classes)


@dataclass(frozen=True)
class BalancedAccuracy:
    """Result of :func:`landform_balanced_accuracy`.

    Attributes:
        value: mean per-class recall (float, 0..1; higher is better).
        chance: what a constant or random guess scores, 1 / len(classes) (float).
        classes: the classes present in the requested labels, sorted (tuple of str).
        per_class_recall: class -> share of its requests that were met (dict[str, float]).
        support: class -> number of requests (dict[str, int]).
    """

    value: float
    chance: float
    classes: tuple[str, ...]
    per_class_recall: dict[str, float] = field(default_factory=dict)
    support: dict[str, int] = field(default_factory=dict)


def landform_met(predicted: str | None, requested: str) -> bool:
    """Whether a generation of class ``predicted`` meets a request, at the level the request names:
    the class itself, or its paper word ("mountains" is met by either mountain class)."""
    return predicted is not None and (predicted == requested or paper_landform_word(predicted) == requested)


def landform_balanced_accuracy(predicted: Sequence[str | None], requested: Sequence[str]) -> BalancedAccuracy:
    """Balanced accuracy of generated landforms against the requested ones. Higher is better.

    The mean over the classes present in ``requested`` of the share of that class's requests
    whose generation was classified as it (recall). Unlike plain accuracy, a generator that
    always makes the most common landform scores chance, 1 / number of classes.

    Each request is scored at the level it names: a request in the paper's words ("mountains",
    ``captions.landform.PAPER_LANDFORM_WORDS``) is met by either mountain class, a request for
    a class ("low mountains") only by that class.

    Args:
        predicted: landform class of each generation (e.g. from :func:`classify_dems`);
            ``None`` (no landform) counts as a miss.
        requested: landform each caption asked for, a class or the paper's word; same length,
            no ``None``.

    Returns:
        :class:`BalancedAccuracy`.

    Raises:
        ValueError: different lengths, nothing requested, or a ``None`` request.
    """
    pred = _labels(predicted, "predicted")
    req = _labels(requested, "requested")
    if len(pred) != len(req):
        raise ValueError(f"predicted has {len(pred)} labels but requested has {len(req)}; they must pair up")
    if not req:
        raise ValueError("requested is empty: balanced accuracy needs at least one request")
    if any(r is None for r in req):
        raise ValueError("requested contains None: every caption must ask for a landform")
    met = np.array([landform_met(p, r) for p, r in zip(pred, req)], dtype=bool)
    req_arr = np.array(req, dtype=object)
    classes = tuple(sorted(set(req), key=str))
    recall: dict[str, float] = {}
    support: dict[str, int] = {}
    for cls in classes:
        asked = req_arr == cls
        support[cls] = int(asked.sum())
        recall[cls] = float(np.mean(met[asked]))
    return BalancedAccuracy(
        value=float(np.mean(list(recall.values()))),
        chance=1.0 / len(classes),
        classes=classes,
        per_class_recall=recall,
        support=support,
    )


# ----------------------------------------------------------------------------- 3. colour


def colour_histogram(rgb: Any, bins: int = 16) -> np.ndarray:
    """Joint (3-D) RGB histogram over every pixel of every image given, normalised to sum 1.

    Joint rather than per-channel: a biome's look is its colour *combinations* (green
    vegetation vs brown soil share a red level), which three marginals would confuse.

    Args:
        rgb: uint8 ``(N, H, W, 3)`` or one ``(H, W, 3)`` image.
        bins: bins per channel (int, default 16: 16 levels of 16 each), so the result has
            ``bins ** 3`` entries.

    Returns:
        float64 ``(bins ** 3,)``, flattened R-major (index ``(r * bins + g) * bins + b``).
    """
    if not isinstance(bins, (int, np.integer)) or not 1 <= int(bins) <= 256:
        raise ValueError(f"bins must be an integer in 1..256, got {bins!r}")
    bins = int(bins)
    pixels = _as_rgb_stack(rgb).reshape(-1, 3).astype(np.int64)
    # uint8 levels map to equal-width bins: level * bins // 256 is exact integer binning
    idx = pixels * bins // 256
    flat = (idx[:, 0] * bins + idx[:, 1]) * bins + idx[:, 2]
    counts = np.bincount(flat, minlength=bins**3).astype(np.float64)
    return counts / counts.sum()


def histogram_distance(a: Any, b: Any) -> float:
    """Jensen-Shannon distance (base 2) between two histograms; 0..1, 0 = identical. Lower is better.

    Symmetric and finite even where one histogram has empty bins (unlike KL divergence).

    Args:
        a: histogram (non-negative, any total > 0; normalised here), e.g. :func:`colour_histogram`.
        b: histogram of the same shape.
    """
    p = np.asarray(a, dtype=np.float64).ravel()
    q = np.asarray(b, dtype=np.float64).ravel()
    if p.shape != q.shape:
        raise ValueError(f"histograms differ in size: {p.size} vs {q.size} bins (same bins needed)")
    for name, h in (("a", p), ("b", q)):
        if not np.isfinite(h).all() or (h < 0).any() or h.sum() <= 0:
            raise ValueError(f"histogram {name} must be finite, non-negative and not all zero")
    # rounding can make a distance of identical inputs a hair above 0 (sqrt of ~1e-17): clamp
    return float(max(0.0, jensenshannon(p / p.sum(), q / q.sum(), base=2.0)))


def _group_indices(groups: Sequence[Any], n: int, name: str) -> dict[Any, np.ndarray]:
    labels = _labels(groups, name)
    if len(labels) != n:
        raise ValueError(f"{name} has {len(labels)} labels for {n} images; one label per image")
    arr = np.array(labels, dtype=object)
    return {g: np.flatnonzero(arr == g) for g in dict.fromkeys(labels)}


def biome_adherence(
    generated_rgb: Any,
    generated_groups: Sequence[str],
    reference_rgb: Any,
    reference_groups: Sequence[str],
    bins: int = 16,
) -> dict[str, Any]:
    """Colour adherence to the requested biome: histogram distance per group. Lower is better.

    For each group (a biome, or ``biome|month``: any hashable label) present in both sets, the
    Jensen-Shannon distance between the joint colour histogram of its generated images and that
    of its real images; the value is the unweighted mean over those groups, so rare biomes
    count as much as common ones.

    Args:
        generated_rgb: uint8 ``(N, H, W, 3)`` generations.
        generated_groups: group of each generation (length N).
        reference_rgb: uint8 ``(M, H', W', 3)`` real Sentinel-2 images (any size).
        reference_groups: group of each real image (length M).
        bins: histogram bins per channel (int, default 16).

    Returns:
        ``{"value": float, "per_group": {group: distance}, "n_groups": int,
        "only_generated": [groups], "only_reference": [groups]}``; ``value`` is NaN when no
        group is in both sets (nothing to compare, which the caller must notice).
    """
    gen = _as_rgb_stack(generated_rgb, "generated_rgb")
    ref = _as_rgb_stack(reference_rgb, "reference_rgb")
    gen_idx = _group_indices(generated_groups, len(gen), "generated_groups")
    ref_idx = _group_indices(reference_groups, len(ref), "reference_groups")
    common = [g for g in gen_idx if g in ref_idx]
    per_group = {
        g: histogram_distance(colour_histogram(gen[gen_idx[g]], bins), colour_histogram(ref[ref_idx[g]], bins))
        for g in common
    }
    return {
        "value": float(np.mean(list(per_group.values()))) if per_group else math.nan,
        "per_group": per_group,
        "n_groups": len(per_group),
        "only_generated": [g for g in gen_idx if g not in ref_idx],
        "only_reference": [g for g in ref_idx if g not in gen_idx],
    }


# ----------------------------------------------------------------------------- 4. terrain realism


def slope_deg(dem: Any, pixel_size_m: float) -> float:
    """Mean slope in degrees (central differences, ``np.gradient``).

    Args:
        dem: finite 2-D elevations in metres.
        pixel_size_m: ground spacing in metres (float > 0).
    """
    z = _as_dem(dem)
    pixel = _check_pixel_size(pixel_size_m)
    d_row, d_col = np.gradient(z, pixel)
    return float(np.degrees(np.arctan(np.hypot(d_row, d_col))).mean())


def local_relief_m(dem: Any, window_px: int) -> float:
    """Mean over pixels of the elevation range (max - min) in a square moving window, metres.

    Args:
        dem: finite 2-D elevations in metres.
        window_px: window side in pixels (int >= 2). Edges repeat the border pixel
            (``mode="nearest"``) so the border does not invent relief.
    """
    z = _as_dem(dem)
    if not isinstance(window_px, (int, np.integer)) or window_px < 2:
        raise ValueError(f"window_px must be an integer >= 2, got {window_px!r}")
    size = int(window_px)
    high = ndimage.maximum_filter(z, size=size, mode="nearest")
    low = ndimage.minimum_filter(z, size=size, mode="nearest")
    return float((high - low).mean())


def roughness_m(dem: Any, sigma_px: float = 2.0) -> float:
    """Standard deviation of the DEM minus a Gaussian-smoothed copy, metres: small-scale texture.

    Args:
        dem: finite 2-D elevations in metres.
        sigma_px: Gaussian sigma in pixels (float > 0, default 2.0); what is finer than this
            counts as roughness, what is coarser as landform.
    """
    z = _as_dem(dem)
    if not (math.isfinite(float(sigma_px)) and sigma_px > 0):
        raise ValueError(f"sigma_px must be a positive number of pixels, got {sigma_px!r}")
    return float(np.std(z - ndimage.gaussian_filter(z, sigma=float(sigma_px), mode="nearest")))


def hypsometric_integral(dem: Any) -> float:
    """(mean - min) / (max - min), 0..1: how much of the relief lies high (0.5 for a flat DEM).

    Scale-free: the same under any affine change of elevation, so it compares shapes, not sizes.
    A flat DEM has no range; 0.5 is its value by convention (neither high nor low).

    Args:
        dem: finite 2-D elevations in metres.
    """
    z = _as_dem(dem)
    lo, hi = float(z.min()), float(z.max())
    if hi - lo <= 0:
        return 0.5
    return float((z.mean() - lo) / (hi - lo))


def terrain_descriptors(
    dems_m: Any, pixel_size_m: float, window_m: float = 1000.0, sigma_px: float = 2.0
) -> pd.DataFrame:
    """One row of :data:`DESCRIPTOR_NAMES` per DEM.

    Args:
        dems_m: finite elevations in metres, ``(N, H, W)`` or one ``(H, W)``.
        pixel_size_m: ground spacing in metres (float > 0).
        window_m: local relief window side in metres (float, default 1000: about Hammond's
            neighbourhood scale); converted to ``max(2, round(window_m / pixel_size_m))`` px.
        sigma_px: roughness smoothing sigma in pixels (float, default 2.0).

    Returns:
        ``pandas.DataFrame`` with columns ``DESCRIPTOR_NAMES`` and index 0..N-1.
    """
    stack = _as_dem_stack(dems_m)
    pixel = _check_pixel_size(pixel_size_m)
    window_px = max(2, int(round(float(window_m) / pixel)))
    rows = [
        {
            "slope_deg": slope_deg(dem, pixel),
            "local_relief_m": local_relief_m(dem, window_px),
            "roughness_m": roughness_m(dem, sigma_px),
            "hypsometric_integral": hypsometric_integral(dem),
        }
        for dem in stack
    ]
    return pd.DataFrame(rows, columns=list(DESCRIPTOR_NAMES))


def realism_distances(
    generated_dems: Any, reference_dems: Any, pixel_size_m: float, window_m: float = 1000.0
) -> dict[str, float]:
    """Wasserstein-1 distance per descriptor between generated and real DEM sets. Lower is better.

    Each distance is in the descriptor's own unit (degrees, metres, or unitless for the
    hypsometric integral), so they are reported separately, never summed.

    Args:
        generated_dems: finite elevations in metres, ``(N, H, W)``.
        reference_dems: finite real elevations in metres, ``(M, H', W')``, same pixel size.
        pixel_size_m: ground spacing of both sets in metres (float > 0).
        window_m: local relief window in metres (float, default 1000).

    Returns:
        ``{"realism_w1_<descriptor>": distance}`` for each of :data:`DESCRIPTOR_NAMES`.
    """
    gen = terrain_descriptors(generated_dems, pixel_size_m, window_m)
    ref = terrain_descriptors(reference_dems, pixel_size_m, window_m)
    return {f"realism_w1_{name}": float(wasserstein_distance(gen[name], ref[name])) for name in DESCRIPTOR_NAMES}


# ----------------------------------------------------------------------------- 5. coherence


def luminance(rgb: Any) -> np.ndarray:
    """Rec. 709 luminance of uint8 RGB, float64 in 0..1, shape ``(N, H, W)`` (or ``(1, H, W)``)."""
    stack = _as_rgb_stack(rgb).astype(np.float64) / 255.0
    return stack @ np.asarray(REC709_WEIGHTS)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r over finite pixel pairs; 0.0 when either side is constant (no signal to agree)."""
    ok = np.isfinite(a) & np.isfinite(b)
    x, y = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    denom = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def rgb_dem_correlations(
    rgb: Any,
    dems_m: Any,
    pixel_size_m: float,
    azimuths_deg: Sequence[float] = COHERENCE_AZIMUTHS_DEG,
    altitude_deg: float = 45.0,
) -> np.ndarray:
    """Per image: the largest Pearson r between its luminance and its DEM's hillshade over sun azimuths.

    Why a maximum over azimuths: the sun in a Sentinel-2 scene (south-east, ~150 deg, in the
    northern mid-latitudes; other directions elsewhere) is not the previews' 315 deg, and with the
    wrong azimuth a perfectly coherent pair can correlate negatively. Taking the best of
    azimuths 45 deg apart finds the scene's own lighting. It is signed (not ``|r|``): shading
    must get brighter toward *some* sun; since opposite azimuths shade nearly inversely, the
    maximum is close to the best ``|r|``, and an unrelated DEM still scores near 0 (a little
    above: the best of several chance correlations, ~0.1 for 64 x 64 px of smooth terrain).

    Args:
        rgb: uint8 ``(N, H, W, 3)`` or one ``(H, W, 3)``.
        dems_m: elevations in metres, ``(N, H, W)`` or one ``(H, W)``, same N, H, W.
        pixel_size_m: ground spacing in metres (float > 0).
        azimuths_deg: sun azimuths to try, degrees clockwise from north (default every 45 deg).
        altitude_deg: sun elevation in degrees (float, default 45, as the export previews).

    Returns:
        float64 ``(N,)``, each in -1..1; 0 where the image or the hillshade is constant.
    """
    lum = luminance(rgb)
    stack = _as_dem_stack(dems_m)
    pixel = _check_pixel_size(pixel_size_m)
    if lum.shape != stack.shape:
        raise ValueError(
            f"rgb gives {lum.shape[0]} image(s) of {lum.shape[1:]} px but dems_m {stack.shape[0]} "
            f"of {stack.shape[1:]}; they must match"
        )
    azimuths = [float(a) for a in azimuths_deg]
    if not azimuths:
        raise ValueError("azimuths_deg is empty: give at least one sun azimuth")
    # The shading in float64: the correlation sums over every pixel.
    return np.array([
        max(_pearson(hillshade(dem, pixel, Sun(az, altitude_deg)).astype(np.float64), img) for az in azimuths)
        for img, dem in zip(lum, stack)
    ])


def rgb_dem_coherence(
    rgb: Any,
    dems_m: Any,
    pixel_size_m: float,
    azimuths_deg: Sequence[float] = COHERENCE_AZIMUTHS_DEG,
    altitude_deg: float = 45.0,
) -> float:
    """Mean over images of :func:`rgb_dem_correlations`: does the image show its DEM's relief? Higher is better.

    Not 1 even for real data: land cover, clouds and flat ground add luminance the relief does
    not explain. Read it against the same metric on real Sentinel-2 RGB + DEM pairs (the
    reference), not against 1. Arguments as :func:`rgb_dem_correlations`.
    """
    return float(rgb_dem_correlations(rgb, dems_m, pixel_size_m, azimuths_deg, altitude_deg).mean())


# ----------------------------------------------------------------------------- 6. diversity


def _mean_pairwise_l1(samples: Sequence[Any], caption: str) -> float:
    arrays = [np.asarray(s, dtype=np.float64) for s in samples]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"samples of caption {caption!r} differ in shape: {sorted(shapes)}")
    return float(np.mean([np.mean(np.abs(a - b)) for a, b in itertools.combinations(arrays, 2)]))


def diversity(samples_by_caption: Mapping[str, Sequence[Any]]) -> float:
    """Mean over captions of the mean pairwise L1 difference between the seeds' samples. Higher is more diverse.

    L1 = mean absolute per-element difference, in the samples' own unit: pass DEMs in metres
    (the result is metres) or RGB scaled to 0..1 (a share of the range), not a mix. 0 when every
    seed gives the same sample: a mode-collapse detector. Compare it with the spread of real
    cells of one caption rather than read it alone.

    Args:
        samples_by_caption: caption -> the samples its seeds generated (arrays of one shape
            per caption). Captions with fewer than 2 samples have no pairs and are skipped.

    Raises:
        ValueError: no caption has 2 samples, or one caption's samples differ in shape.
    """
    per_caption = [
        _mean_pairwise_l1(samples, caption)
        for caption, samples in samples_by_caption.items()
        if len(samples) >= 2
    ]
    if not per_caption:
        raise ValueError("diversity needs at least one caption with 2 or more samples (seeds)")
    return float(np.mean(per_caption))


# ----------------------------------------------------------------------------- 7. artefacts

#: A spectral bin counts as an isolated peak when its power is this many times the median of the
#: 5 x 5 bins around it: natural relief has a smooth, steeply falling spectrum, while decoder
#: artefacts (stripes, a grid at the latent spacing) put their energy in a few sharp bins.
ARTEFACT_PEAK_FACTOR = 10.0
_ARTEFACT_WINDOW = 5
# The lowest frequencies (periods over a quarter of the tile) fall too steeply for a neighbourhood
# median to judge them; on random fractal terrain the share is then about 0.001.
_ARTEFACT_MIN_RADIUS = 4.0


def dem_artefact_shares(dems_m: Any) -> np.ndarray:
    """Share of each DEM's spectral energy in isolated peaks (0 = none, 1 = all), float64 ``(N,)``.

    Per DEM: the best-fitting plane is removed, a Hann window applied, and the 2-D power spectrum
    taken without its zero frequency. A bin within ``_ARTEFACT_MIN_RADIUS`` of zero frequency never
    counts; any other bin counts when its power exceeds ``ARTEFACT_PEAK_FACTOR`` times the median of
    the 5 x 5 bins around it (the spectrum wraps). A plane (a flat DEM too) scores 0.

    Args:
        dems_m: finite elevations in metres, ``(N, H, W)`` or one ``(H, W)``.
    """
    stack = _as_dem_stack(dems_m)
    _, h, w = stack.shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    design = np.stack([np.ones(h * w), rows.ravel(), cols.ravel()], axis=1)
    window = np.outer(np.hanning(h), np.hanning(w))
    fy = np.fft.fftfreq(h) * h
    fx = np.fft.fftfreq(w) * w
    low = np.hypot(fy[:, None], fx[None, :]) <= _ARTEFACT_MIN_RADIUS
    shares = np.zeros(len(stack))
    for i, dem in enumerate(stack):
        z = dem.astype(np.float64)
        plane, *_ = np.linalg.lstsq(design, z.ravel(), rcond=None)
        detrended = (z.ravel() - design @ plane).reshape(h, w) * window
        if not np.abs(detrended).max() > 1e-6:  # a plane to a micrometre: no relief, no artefact
            continue
        power = np.abs(np.fft.fft2(detrended)) ** 2
        power[0, 0] = 0.0
        total = power.sum()
        neighbourhood = ndimage.median_filter(power, size=_ARTEFACT_WINDOW, mode="wrap")
        peaks = (power > ARTEFACT_PEAK_FACTOR * neighbourhood) & ~low
        shares[i] = power[peaks].sum() / total
    return shares


def dem_artefact_share(dems_m: Any) -> float:
    """Mean of :func:`dem_artefact_shares` over the DEMs; compare with the real reference's."""
    return float(dem_artefact_shares(dems_m).mean())


# ----------------------------------------------------------------------------- 8. directions


def metric_directions() -> dict[str, str]:
    """Name -> ``"higher_is_better"`` / ``"lower_is_better"`` for every metric the evaluate stage writes."""
    directions = {
        "landform_balanced_accuracy": _HIGHER,
        "biome_adherence_js": _LOWER,
        "rgb_dem_coherence": _HIGHER,
        "diversity": _HIGHER,
        "dem_artefact_share": _LOWER,
    }
    # realism_distances' keys, so the two can never drift apart
    directions.update({f"realism_w1_{name}": _LOWER for name in DESCRIPTOR_NAMES})
    return directions
