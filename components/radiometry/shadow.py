"""Shadow correction by masked histogram matching, and the baseline 04.00 radiometric offset.

L2A's terrain and atmospheric correction brightens shaded slopes, so relief looks flat; L1C
keeps the shading but has top-of-atmosphere colours (haze, path radiance). Matching each L1C
band's histogram onto the same cell's L2A band gives an image with L1C's shading and L2A's
colour distribution (MESA, "shadow correction").

Array layout: images are band-first, ``(bands, H, W)`` uint16 (or a single band ``(H, W)``),
in the caller's band order (RGB = B04, B03, B02). Validity masks are bool, ``(H, W)`` shared
by every band or ``(bands, H, W)`` per band; True = valid.

Order of operations: remove the baseline offset from both products (``remove_baseline_offset``)
before matching. The L2A offset matters (it would shift every output colour by 1000 DN); the
L1C one would not (matching is invariant to a monotone change of the source, apart from the
clip at 1), but it is removed too so both products follow one rule.
"""

from __future__ import annotations

import re

import numpy as np

BASELINE_OFFSET_DN = 1000
"""Digital numbers added to every valid pixel from processing baseline 04.00 (2022-01-25) on."""

OFFSET_FROM_BASELINE = 400
"""First processing baseline (``N0400`` = 04.00) whose products carry the offset."""

_N_VALUES = 65536  # uint16 value range: every histogram and look-up table has this length

# A baseline field: "_N" + four digits, delimited by "_" (or the ".SAFE" suffix / end).
_BASELINE_RE = re.compile(r"(?:^|_)N(\d{4})(?=_|\.|$)")


class AllMaskedError(ValueError):
    """A band has no valid pixel in the source or the reference: the cell must be rejected."""


# --------------------------------------------------------------------------------------------
# processing baseline offset


def processing_baseline(product_id: str) -> int:
    """The processing baseline in a Sentinel-2 product id, as an integer (``N0400`` -> 400).

    Raises:
        ValueError: the id holds no ``_Nxxxx_`` field.
    """
    match = _BASELINE_RE.search(str(product_id))
    if match is None:
        raise ValueError(
            f"product id {product_id!r} holds no processing baseline field (_Nxxxx_, e.g. "
            "'S2A_MSIL2A_20220815T101031_N0400_R022_T32TMT_20220815T130000'); pass the "
            "Sentinel-2 product id of the L1C / L2A product the digital numbers come from"
        )
    return int(match.group(1))


def has_baseline_offset(product_id: str) -> bool:
    """True when the product's digital numbers carry the +1000 offset (baseline >= 04.00)."""
    return processing_baseline(product_id) >= OFFSET_FROM_BASELINE


def remove_baseline_offset(dn: np.ndarray, product_id: str) -> np.ndarray:
    """Bring digital numbers to reflectance x 10,000 whatever the processing baseline.

    The rule (one, for L1C and L2A alike): products of baseline 04.00 and later (``N0400``,
    ``N0500``, ...; from 2022-01-25) add 1000 to every valid digital number so that negative
    surface reflectances survive in unsigned integers. For them, valid (non-zero) pixels lose
    1000 and are clipped at 1, so a valid pixel never becomes the no-data value 0 (negative
    reflectances become the smallest positive one); 0 stays 0 (no data). Older baselines are
    returned unchanged (a copy).

    Args:
        dn: integer digital numbers of any shape (uint16 in Sentinel-2 products).
        product_id: the Sentinel-2 product id, e.g.
            ``"S2A_MSIL2A_20220815T101031_N0400_R022_T32TMT_20220815T130000"``.

    Returns:
        A new array of dn's shape and dtype.

    Raises:
        ValueError: the product id holds no baseline.
        TypeError: dn is not an integer array.
    """
    dn = np.asarray(dn)
    if dn.dtype.kind not in "ui":
        raise TypeError(f"digital numbers must be an integer array, got dtype {dn.dtype} "
                        f"(product {product_id!r})")
    if not has_baseline_offset(product_id):
        return dn.copy()
    out = np.maximum(dn, dn.dtype.type(BASELINE_OFFSET_DN + 1))
    out -= dn.dtype.type(BASELINE_OFFSET_DN)
    out *= dn != 0  # integer * bool keeps the dtype; no-data stays 0
    return out


# --------------------------------------------------------------------------------------------
# masked histogram matching


def _as_bands(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint16:
        raise TypeError(f"{name} must be uint16 digital numbers, got dtype {image.dtype}")
    if image.ndim == 2:
        return image[None]
    if image.ndim != 3:
        raise ValueError(f"{name} must be (bands, H, W) or (H, W), got shape {image.shape}")
    return image


def _as_masks(valid: np.ndarray, image: np.ndarray, name: str, image_name: str) -> np.ndarray:
    """The mask as (1 or bands, H*W) bool rows, or None where every pixel is valid."""
    valid = np.asarray(valid)
    if valid.dtype != bool:
        raise TypeError(f"{name} must be a bool array (True = valid), got dtype {valid.dtype}")
    bands, h, w = image.shape
    if valid.shape == (h, w):
        rows = valid.reshape(1, h * w)
    elif valid.shape == (bands, h, w):
        rows = valid.reshape(bands, h * w)
    else:
        raise ValueError(f"{name} has shape {valid.shape}; expected ({h}, {w}) or "
                         f"({bands}, {h}, {w}) to match {image_name}")
    return None if rows.all() else rows


def _valid_histogram(band: np.ndarray, valid: np.ndarray | None, work: np.ndarray):
    """Counts of each value 0..max over the valid pixels of a flat band, and their number.

    Masked pixels are zeroed into an intp work buffer (one pass that is also the cast
    bincount needs), counted with the rest, and their number taken back off bin 0: exact, and
    cheaper than gathering the valid pixels first.
    """
    if valid is None:
        return np.bincount(band), band.size
    np.multiply(band, valid, out=work)
    counts = np.bincount(work)
    n_valid = int(np.count_nonzero(valid))
    counts[0] -= band.size - n_valid
    return counts, n_valid


def _lookup_table(src_counts: np.ndarray, n_src: int, ref_counts: np.ndarray, n_ref: int) -> np.ndarray:
    """uint16 table (65,536 entries) mapping every source value to a reference value."""
    ref_values = np.flatnonzero(ref_counts)
    ref_quantiles = np.cumsum(ref_counts[ref_values]) / n_ref
    src_quantiles = np.cumsum(src_counts) / n_src
    # skimage's rule: a value's quantile is the share of pixels at or below it, and it maps to
    # the reference value interpolated at that quantile (clamped at both ends).
    table = np.interp(src_quantiles, ref_quantiles, ref_values)
    # Values above the valid maximum (masked pixels only) are at quantile 1: the reference
    # maximum. Interpolating only up to the valid maximum keeps the table cheap.
    lut = np.full(_N_VALUES, ref_values[-1], dtype=np.uint16)
    present = np.flatnonzero(src_counts)
    if present.size == 1:
        # A constant band puts all its mass at quantile 1, which would map it to the
        # reference's brightest value; the reference median is the honest single value.
        table[present[0]] = np.interp(0.5, ref_quantiles, ref_values)
    if src_counts[0] == 0:
        table[0] = 0.0  # 0 seen only in masked pixels is Sentinel-2 no-data: keep it so
    np.rint(table, out=table)
    lut[: table.size] = table
    return lut


def match_histograms_masked(
    source: np.ndarray,
    reference: np.ndarray,
    source_valid: np.ndarray,
    reference_valid: np.ndarray,
) -> np.ndarray:
    """Per-band exact CDF matching of integer digital numbers over valid pixels only.

    For each band: histograms of the source and of the reference over their valid pixels;
    each source value v maps to the reference value interpolated at v's quantile (the share of
    valid source pixels <= v) along the reference's quantiles -- the rule of
    ``skimage.exposure.match_histograms``, so with all-valid masks the result equals scikit-
    image's to within rounding (0.5 DN). The mapping is a monotone table over all 65,536 values
    and is applied to every pixel, masked ones included (the mask travels with the sample).

    Edge cases:
        - A value present only in masked pixels maps like its neighbours (the valid CDF just
          below it); 0 present only in masked pixels (no data) stays 0.
        - A constant source band (one valid value) maps that value to the reference median
          (scikit-image would give the reference maximum); other values keep the rule above.
        - A constant reference band maps everything (but masked zeros) to its value.
        - No valid pixel in a band of the source or of the reference: ``AllMaskedError``
          (a ValueError) saying the cell is all-masked, so the caller rejects it with a reason.

    Args:
        source: uint16 ``(bands, H, W)`` or ``(H, W)``; the image to transform (L1C).
        reference: uint16 ``(bands, H2, W2)`` or ``(H2, W2)``, same number of bands (L2A); its
            size may differ from the source's (only its distribution is used).
        source_valid: bool ``(H, W)`` (every band) or ``(bands, H, W)``; True = valid.
        reference_valid: bool ``(H2, W2)`` or ``(bands, H2, W2)``; True = valid.

    Returns:
        uint16 array of source's shape.

    Raises:
        TypeError: images not uint16 or masks not bool.
        ValueError: shapes that do not fit (band counts, mask shapes).
        AllMaskedError: a band with no valid source or reference pixel.
    """
    src = _as_bands(source, "source")
    ref = _as_bands(reference, "reference")
    if src.shape[0] != ref.shape[0] or np.ndim(source) != np.ndim(reference):
        raise ValueError(f"source {np.shape(source)} and reference {np.shape(reference)} must "
                         "have the same layout and number of bands ((bands, H, W) or (H, W))")
    src_masks = _as_masks(source_valid, src, "source_valid", f"source {src.shape}")
    ref_masks = _as_masks(reference_valid, ref, "reference_valid", f"reference {ref.shape}")

    bands = src.shape[0]
    out = np.empty(src.shape, dtype=np.uint16)
    out_rows = out.reshape(bands, -1)
    src_rows, ref_rows = src.reshape(bands, -1), ref.reshape(bands, -1)
    work = np.empty(max(src_rows.shape[1], ref_rows.shape[1]), dtype=np.intp)
    for b in range(bands):
        sv = None if src_masks is None else src_masks[min(b, src_masks.shape[0] - 1)]
        rv = None if ref_masks is None else ref_masks[min(b, ref_masks.shape[0] - 1)]
        src_counts, n_src = _valid_histogram(src_rows[b], sv, work[: src_rows.shape[1]])
        ref_counts, n_ref = _valid_histogram(ref_rows[b], rv, work[: ref_rows.shape[1]])
        if n_src == 0 or n_ref == 0:
            which = "source" if n_src == 0 else "reference"
            raise AllMaskedError(f"cell is all-masked: band {b} of the {which} has no valid "
                                 "pixel, so no histogram to match; reject the cell")
        lut = _lookup_table(src_counts, n_src, ref_counts, n_ref)
        np.take(lut, src_rows[b], out=out_rows[b])
    return out.reshape(np.shape(source))


def shadow_correct(
    l1c_rgb: np.ndarray,
    l2a_rgb: np.ndarray,
    l1c_valid: np.ndarray,
    l2a_valid: np.ndarray,
    *,
    l1c_product_id: str | None = None,
    l2a_product_id: str | None = None,
) -> np.ndarray:
    """L1C RGB with L2A's colour distribution: ``match_histograms_masked(l1c, l2a, ...)``.

    Args:
        l1c_rgb: uint16 ``(3, H, W)`` L1C digital numbers (B04, B03, B02).
        l2a_rgb: uint16 ``(3, H, W)`` L2A digital numbers of the same cell, same band order.
        l1c_valid, l2a_valid: bool ``(H, W)`` or ``(3, H, W)``; True = valid (no no-data,
            no cloud).
        l1c_product_id, l2a_product_id: when given, ``remove_baseline_offset`` is applied to
            that product first; leave them out for digital numbers already without the offset.

    Returns:
        uint16 ``(3, H, W)``: reflectance x 10,000 on L2A's scale, with L1C's shading.
    """
    if l1c_product_id is not None:
        l1c_rgb = remove_baseline_offset(l1c_rgb, l1c_product_id)
    if l2a_product_id is not None:
        l2a_rgb = remove_baseline_offset(l2a_rgb, l2a_product_id)
    return match_histograms_masked(l1c_rgb, l2a_rgb, l1c_valid, l2a_valid)
