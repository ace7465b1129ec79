"""Every metric per generation, and intervals from resampling held-out cells.

One evaluation is a few dozen held-out cells x a few seeds; its headline numbers move by several
hundredths when one cell changes. To say how sure a number is, and to compare two models on the
same evaluation pair by pair, the evaluate stage keeps one row per generation
(``per_generation_table``; ``reports/metrics_per_cell.parquet``):

=========================  ========================================================================
``cell``, ``seed``         the held-out cell and the sampling seed (the pair key between models)
``caption``                the prompt
``landform_requested``     what the caption names (a class, or the paper's word); None: nothing
``landform_predicted``     the generated DEM's class by the captions stage's rules
``landform_correct``       the request is met, at the level it names (1.0 / 0.0; NaN: no request)
``slope_deg`` ...          the four terrain descriptors of ``metrics.DESCRIPTOR_NAMES``
``rgb_dem_correlation``    the image's luminance against its DEM's hillshade (best azimuth)
``biome_js``               Jensen-Shannon distance of this image's colours to the real images of
                           its biome|month group (NaN when the group has no real image)
``artefact_share``         the share of the DEM's spectral energy in isolated peaks (stripes, grids;
                           ``metrics.dem_artefact_shares``)
=========================  ========================================================================

The held-out denoising loss has rows of its own (``denoising_rows``; ``source`` "denoising"): one
per held-out sample and repeat (``seed`` is the repeat), with the summed squared v-error under the
true and under shuffled captions and its normaliser, so that a resample of cells recomputes the
loss exactly (``denoising_loss``).

``set_metrics`` turns such a table (and the real reference's) into the headline numbers;
``cell_bootstrap`` gives a percentile interval of any of them by resampling cells (every seed of
a cell stays together: the seeds of one cell are not independent evidence); ``paired_bootstrap``
the interval of the difference between two models evaluated on the same cells and seeds, each
resample taking the same cells for both. Set-level metrics (balanced accuracy, Wasserstein
distances) are recomputed on each resample rather than averaged.

Pure module: arrays and frames in, frames and numbers out.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import wasserstein_distance

from components.evaluation import metrics

__all__ = [
    "KEY",
    "PER_CELL_METRICS",
    "denoising_loss",
    "denoising_rows",
    "Interval",
    "cell_bootstrap",
    "MetricStatistic",
    "cell_weights",
    "metric_statistic",
    "paired_bootstrap",
    "resampled_values",
    "per_generation_table",
    "set_metrics",
]

KEY: tuple[str, str] = ("cell", "seed")
_STATISTIC = Callable[[pd.DataFrame], float]


def per_generation_table(
    cells: Sequence[str],
    seeds: Sequence[int],
    captions: Sequence[str],
    requested: Sequence[str | None],
    groups: Sequence[str],
    rgb: np.ndarray,
    dems_m: np.ndarray,
    pixel_size_m: float,
    reference_rgb: np.ndarray | None = None,
    reference_groups: Sequence[str] | None = None,
    thresholds: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """One row per generation with every per-generation measure (the module's table).

    Args:
        cells, seeds, captions, requested, groups: per generation, same length N.
        rgb: uint8 ``(N, H, W, 3)``; dems_m: metres ``(N, H, W)``.
        pixel_size_m: ground spacing in metres.
        reference_rgb, reference_groups: the real images ``biome_js`` compares with (omit both:
            ``biome_js`` is NaN).
        thresholds: the captions stage's landform thresholds.
    """
    n = len(cells)
    for name, values in (("seeds", seeds), ("captions", captions), ("requested", requested), ("groups", groups),
                         ("rgb", rgb), ("dems_m", dems_m)):
        if len(values) != n:
            raise ValueError(f"per_generation_table: {name} has {len(values)} entries for {n} cells")
    predicted = metrics.classify_dems(dems_m, pixel_size_m, thresholds) if n else []
    correct = [float(metrics.landform_met(p, r)) if r else np.nan for p, r in zip(predicted, requested)]
    table = pd.DataFrame({
        "cell": [str(c) for c in cells], "seed": [int(s) for s in seeds], "caption": list(captions),
        "landform_requested": pd.Series(list(requested), dtype=object),
        "landform_predicted": pd.Series(predicted, dtype=object),
        "landform_correct": np.asarray(correct, dtype=np.float64),
    })
    descriptors = metrics.terrain_descriptors(dems_m, pixel_size_m) if n else pd.DataFrame(
        columns=list(metrics.DESCRIPTOR_NAMES))
    for name in metrics.DESCRIPTOR_NAMES:
        table[name] = descriptors[name].to_numpy(dtype=np.float64)
    table["rgb_dem_correlation"] = metrics.rgb_dem_correlations(rgb, dems_m, pixel_size_m) if n else []
    table["biome_js"] = _biome_js(rgb, groups, reference_rgb, reference_groups)
    table["artefact_share"] = metrics.dem_artefact_shares(dems_m) if n else []
    table["group"] = list(groups)
    if table.duplicated(list(KEY)).any():
        raise ValueError("per_generation_table: (cell, seed) pairs repeat; each generation needs its own pair")
    return table


def _biome_js(rgb, groups, reference_rgb, reference_groups) -> np.ndarray:
    out = np.full(len(groups), np.nan)
    if reference_rgb is None or reference_groups is None or not len(groups):
        return out
    ref_groups = np.asarray(list(reference_groups), dtype=object)
    reference = {g: metrics.colour_histogram(reference_rgb[ref_groups == g]) for g in set(groups)
                 if (ref_groups == g).any()}
    for i, (image, group) in enumerate(zip(rgb, groups)):
        if group in reference:
            out[i] = metrics.histogram_distance(metrics.colour_histogram(image), reference[group])
    return out


def set_metrics(table: pd.DataFrame, reference: pd.DataFrame | None = None) -> dict[str, float]:
    """The headline numbers of a per-generation table.

    landform_balanced_accuracy (requests at the level they name), rgb_dem_coherence (mean
    correlation), biome_js_mean (mean per-image distance), dem_artefact_share (mean), and with
    ``reference`` (the real pairs' table) realism_w1_<descriptor>. NaN where a table lacks what a metric needs.
    """
    asked = table[table["landform_requested"].notna()]
    accuracy = (metrics.landform_balanced_accuracy(asked["landform_predicted"].tolist(),
                                                   asked["landform_requested"].tolist()).value
                if len(asked) else np.nan)
    out = {
        "landform_balanced_accuracy": float(accuracy),
        "rgb_dem_coherence": float(table["rgb_dem_correlation"].mean()) if len(table) else np.nan,
        "biome_js_mean": float(table["biome_js"].mean()) if table["biome_js"].notna().any() else np.nan,
        "dem_artefact_share": float(table["artefact_share"].mean()) if len(table) else np.nan,
    }
    if reference is not None:
        for name in metrics.DESCRIPTOR_NAMES:
            out[f"realism_w1_{name}"] = (float(wasserstein_distance(table[name], reference[name]))
                                         if len(table) and len(reference) else np.nan)
    return out


DENOISING_SOURCE = "denoising"
DENOISING_METRIC = "heldout_denoising_loss"


def denoising_rows(sample_ids: Sequence[str], squared_error: Sequence[float],
                   squared_error_shuffled: Sequence[float], weight: Sequence[float]) -> pd.DataFrame:
    """The held-out denoising loss's terms as per-cell rows: ``cell`` (the sample), ``seed`` (its
    repeat: 0, 1, ... in order of appearance), ``source`` "denoising", ``squared_error``,
    ``squared_error_shuffled`` and ``weight`` (see ``ValidationSet.term_losses``)."""
    n = len(sample_ids)
    for name, values in (("squared_error", squared_error), ("squared_error_shuffled", squared_error_shuffled),
                         ("weight", weight)):
        if len(values) != n:
            raise ValueError(f"denoising_rows: {name} has {len(values)} entries for {n} samples")
    cells = pd.Series([str(c) for c in sample_ids], dtype=object)
    return pd.DataFrame({"cell": cells, "seed": cells.groupby(cells).cumcount().astype(np.int64),
                         "source": DENOISING_SOURCE,
                         "squared_error": np.asarray(squared_error, dtype=np.float64),
                         "squared_error_shuffled": np.asarray(squared_error_shuffled, dtype=np.float64),
                         "weight": np.asarray(weight, dtype=np.float64)})


def denoising_loss(table: pd.DataFrame, shuffled: bool = False) -> float:
    """The held-out denoising loss of a table's denoising rows (NaN without any, or without weight)."""
    if "source" not in table.columns or "weight" not in table.columns:
        return np.nan
    rows = table[table["source"] == DENOISING_SOURCE]
    weight = float(rows["weight"].sum())
    error = rows["squared_error_shuffled" if shuffled else "squared_error"]
    return float(error.sum()) / weight if weight > 0 and error.notna().all() else np.nan


#: The metrics a per-cell table gives back (``set_metrics``, ``denoising_loss``), by name.
PER_CELL_METRICS: tuple[str, ...] = (
    DENOISING_METRIC, "landform_balanced_accuracy", "rgb_dem_coherence", "biome_js_mean", "dem_artefact_share",
    *(f"realism_w1_{name}" for name in metrics.DESCRIPTOR_NAMES),
)


class MetricStatistic:
    """One per-cell metric as a statistic of an evaluation's per-cell table
    (``reports/metrics_per_cell.parquet``): its generated rows, with its real rows as the reference
    where the metric needs one (the held-out denoising loss: its denoising rows).

    Called on a table it gives the metric as ``set_metrics`` (and ``denoising_loss``) compute it.
    ``over_weights(table)`` gives the same metric on many resamples at once: a function of a
    (resamples x rows) array of row weights, each row counted as often as its weight says, so a
    bootstrap's thousand resamples are a few array products instead of a thousand frames.
    """

    def __init__(self, name: str):
        if name not in PER_CELL_METRICS:
            raise ValueError(f"{name!r} has no per-cell form; per-cell metrics: {list(PER_CELL_METRICS)}")
        self.name = name

    def __repr__(self) -> str:
        return f"MetricStatistic({self.name!r})"

    def __call__(self, table: pd.DataFrame) -> float:
        name = self.name
        if name == DENOISING_METRIC:
            return denoising_loss(table)
        source = table["source"].to_numpy() if "source" in table.columns else None
        generated = table if source is None else table[source == "generated"]
        if name == "landform_balanced_accuracy":
            asked = generated[generated["landform_requested"].notna()]
            if not len(asked):
                return np.nan
            return float(asked.groupby("landform_requested")["landform_correct"].mean().mean())
        if name in _MEAN_COLUMNS:
            values = generated[_MEAN_COLUMNS[name]]
            return float(values.mean()) if values.notna().any() else np.nan
        real = table.iloc[0:0] if source is None else table[source == "real"]
        descriptor = name.removeprefix("realism_w1_")
        if not len(generated) or not len(real):
            return np.nan
        return float(wasserstein_distance(generated[descriptor].to_numpy(), real[descriptor].to_numpy()))

    def over_weights(self, table: pd.DataFrame) -> Callable[[np.ndarray], np.ndarray]:
        """weights (resamples x rows of ``table``) -> the metric on each resample (NaN where undefined)."""
        name, rows = self.name, len(table)
        source = table["source"].to_numpy() if "source" in table.columns else None
        generated = np.ones(rows, bool) if source is None else source == "generated"
        if name == DENOISING_METRIC:
            if source is None or "weight" not in table.columns:
                return lambda weights: np.full(len(weights), np.nan)
            terms = source == DENOISING_SOURCE
            error, norm = table["squared_error"].to_numpy(np.float64), table["weight"].to_numpy(np.float64)
            return lambda weights: _weighted_ratio(weights, terms, error, norm)
        if name == "landform_balanced_accuracy":
            requested = table["landform_requested"].to_numpy(dtype=object)
            correct = table["landform_correct"].to_numpy(np.float64)
            asked = generated & pd.notna(requested) & np.isfinite(correct)
            classes = [asked & (requested == label) for label in pd.unique(requested[asked])]
            return lambda weights: _mean_of_finite(np.stack(
                [_weighted_mean(weights, rows_of, correct) for rows_of in classes], axis=1)
                if classes else np.full((len(weights), 1), np.nan))
        if name in _MEAN_COLUMNS:
            values = table[_MEAN_COLUMNS[name]].to_numpy(np.float64)
            kept = generated & np.isfinite(values)
            return lambda weights: _weighted_mean(weights, kept, values)
        real = np.zeros(rows, bool) if source is None else source == "real"
        values = table[name.removeprefix("realism_w1_")].to_numpy(np.float64)
        return lambda weights: np.asarray([_weighted_w1(values, generated, real, w) for w in weights], np.float64)


# The metrics that are a plain mean of one column over the generated rows (NaN rows left out, as pandas does).
_MEAN_COLUMNS = {"rgb_dem_coherence": "rgb_dem_correlation", "dem_artefact_share": "artefact_share",
                 "biome_js_mean": "biome_js"}


def _weighted_mean(weights: np.ndarray, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per resample: the weighted mean of ``values`` over ``rows`` (NaN where they weigh nothing)."""
    chosen = weights[:, rows]
    total = chosen.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, chosen @ values[rows] / total, np.nan)


def _weighted_ratio(weights: np.ndarray, rows: np.ndarray, numerator: np.ndarray,
                    denominator: np.ndarray) -> np.ndarray:
    """Per resample: sum(numerator) / sum(denominator) over ``rows`` as ``denoising_loss`` computes it
    (NaN when the denominator is not positive or a weighed numerator is NaN)."""
    chosen = weights[:, rows]
    top, bottom = numerator[rows], denominator[rows]
    undefined = (chosen[:, ~np.isfinite(top)] > 0).any(axis=1)
    total = chosen @ bottom
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = (chosen @ np.where(np.isfinite(top), top, 0.0)) / total
    return np.where(undefined | ~(total > 0), np.nan, ratio)


def _mean_of_finite(values: np.ndarray) -> np.ndarray:
    """Per row: the mean of its finite entries (NaN without any)."""
    finite = np.isfinite(values)
    count = finite.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(finite, values, 0.0).sum(axis=1) / count, np.nan)


def _weighted_w1(values: np.ndarray, generated: np.ndarray, real: np.ndarray, weights: np.ndarray) -> float:
    """Wasserstein-1 distance between the weighted generated and real values of one resample."""
    on_generated, on_real = weights[generated], weights[real]
    if not on_generated.sum() > 0 or not on_real.sum() > 0:
        return np.nan
    return float(wasserstein_distance(values[generated], values[real], on_generated, on_real))


def metric_statistic(name: str) -> MetricStatistic:
    """The metric ``name`` of an evaluation's per-cell table as a statistic (:class:`MetricStatistic`)
    for ``cell_bootstrap``, ``paired_bootstrap`` and the ablation's effects: a resample of cells
    takes both kinds of row."""
    return MetricStatistic(name)


def resampled_values(statistic: _STATISTIC, table: pd.DataFrame, weights: np.ndarray) -> np.ndarray:
    """``statistic`` on each resample of ``table`` given as row weights (resamples x rows): at once
    for a :class:`MetricStatistic`, else on each resample's rows (each repeated by its weight)."""
    if isinstance(statistic, MetricStatistic):
        return statistic.over_weights(table)(weights)
    rows = np.arange(len(table))
    return np.asarray([statistic(table.iloc[np.repeat(rows, row_weights)]) for row_weights in weights.astype(int)],
                      dtype=np.float64)


def cell_weights(draws: np.ndarray, cells: int, codes: np.ndarray) -> np.ndarray:
    """Row weights of resamples of whole cells: ``draws`` (resamples x k, cell numbers below
    ``cells``), ``codes`` each row's cell number (-1: a cell never drawn). Each row weighs as often
    as its cell was drawn."""
    resamples = len(draws)
    counts = np.bincount((draws + cells * np.arange(resamples)[:, None]).ravel(),
                         minlength=resamples * cells).reshape(resamples, cells)
    never = np.zeros((resamples, 1), dtype=counts.dtype)
    return np.concatenate([counts, never], axis=1)[:, np.where(codes < 0, cells, codes)].astype(np.float64)


@dataclass(frozen=True)
class Interval:
    """A statistic and its percentile bootstrap interval over held-out cells.

    estimate: the statistic on the whole table; low, high: the interval's bounds (NaN when it
    cannot be given); level: e.g. 0.95; cells: how many cells were resampled; resamples: how
    many resamples gave a finite value; note: why there is no interval, when there is none.
    """

    estimate: float
    low: float
    high: float
    level: float
    cells: int
    resamples: int
    note: str = ""

    def excludes(self, value: float = 0.0) -> bool:
        """The interval lies wholly above or below ``value`` (False without an interval)."""
        return bool(np.isfinite(self.low) and np.isfinite(self.high) and (self.low > value or self.high < value))

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in self.__dict__.items()}


#: Fewer cells than this and a resampling interval says more about the few cells than the model.
MIN_CELLS = 8


def _cell_resamples(cells: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, int]:
    """Row weights (n_boot x rows) of resamples of whole cells (with replacement), and how many cells."""
    unique, codes = np.unique(cells, return_inverse=True)
    draws = np.random.default_rng(seed).integers(0, len(unique), size=(n_boot, len(unique)))
    return cell_weights(draws, len(unique), codes), len(unique)


def _interval(estimate: float, values: list[float], level: float, cells: int) -> Interval:
    finite = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if cells < MIN_CELLS:
        return Interval(estimate, np.nan, np.nan, level, cells, len(finite),
                        f"{cells} held-out cells: too few for an interval (need {MIN_CELLS})")
    if len(finite) < 0.9 * len(values):
        return Interval(estimate, np.nan, np.nan, level, cells, len(finite),
                        f"the statistic was undefined on {len(values) - len(finite)} of {len(values)} resamples")
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(estimate), float(low), float(high), level, cells, len(finite))


def cell_bootstrap(table: pd.DataFrame, statistic: _STATISTIC, n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95) -> Interval:
    """Percentile interval of ``statistic(table)`` over resamples of whole cells.

    Args:
        table: a per-generation table (needs ``cell``).
        statistic: frame -> float, e.g. ``lambda t: set_metrics(t)["landform_balanced_accuracy"]``.
        n_boot: resamples (default 1000); seed: their random seed; level: e.g. 0.95.
    """
    _check_level(level, n_boot)
    estimate = float(statistic(table))
    weights, cells = _cell_resamples(table["cell"].to_numpy(dtype=object).astype(str), n_boot, seed)
    values = list(resampled_values(statistic, table, weights)) if cells >= MIN_CELLS else []
    return _interval(estimate, values, level, cells)


def paired_bootstrap(a: pd.DataFrame, b: pd.DataFrame, statistic: _STATISTIC, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> Interval:
    """Interval of ``statistic(a) - statistic(b)`` for two models on the same cells and seeds.

    Rows are matched on (cell, seed); generations only one side has are left out (and a model
    pair with no common generation is an error: they were not evaluated alike). Each resample
    draws cells once and uses them for both models, so what the cells share cancels out.
    """
    _check_level(level, n_boot)
    key = list(KEY) + (["source"] if "source" in a.columns and "source" in b.columns else [])
    common = a[key].merge(b[key], on=key)
    if common.empty:
        raise ValueError("paired_bootstrap: the two tables share no (cell, seed) generation; evaluate both "
                         "on the same held-out cells and seeds")
    a = a.merge(common, on=key).sort_values(key, ignore_index=True)
    b = b.merge(common, on=key).sort_values(key, ignore_index=True)
    estimate = float(statistic(a) - statistic(b))
    weights, cells = _cell_resamples(a["cell"].to_numpy(dtype=object).astype(str), n_boot, seed)
    values = (list(resampled_values(statistic, a, weights) - resampled_values(statistic, b, weights))
              if cells >= MIN_CELLS else [])
    return _interval(estimate, values, level, cells)


def _check_level(level: float, n_boot: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level!r}")
    if n_boot < 100:
        raise ValueError(f"n_boot must be at least 100 for a percentile interval, got {n_boot!r}")
