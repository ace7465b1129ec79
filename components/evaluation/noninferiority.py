"""Non-inferiority with confidence: is a challenger no worse than the champion by more than a margin?

The gate compares two models evaluated on the same held-out cells and seeds pair by pair
(``per_cell.paired_bootstrap``), so it sees the difference and how sure it is of it. A metric
passes when the worse end of the difference's interval stays within the metric's margin:

    worse_by = champion - challenger (higher is better) or challenger - champion (lower is better)
    pass     when the interval's upper bound of worse_by <= margin

Margins are absolute (in the metric's units) and say how much worse is still "the same model":

1. ``registry.gate.margins`` names one explicitly;
2. else the measured seed-to-seed spread (``seed_spread``: an ablation's replicates; retraining
   with another seed moves a metric this much, so a change that small is not a regression):
   margin = ``spread_multiple`` x the seed-to-seed SD + the typical half-width of the paired
   interval between two seeds. A challenger that differs only by its seed is worse by about
   N(0, 2 SD^2) and its interval's worse end lies a half-width above that, so with the default
   multiple 2.5 (about 1.645 x sqrt 2 plus room for the SD's own uncertainty) it passes about 95 %
   of the time, while a change beyond retraining noise does not;
3. else the documented default: ``max_regression`` x the champion's value.

Without an interval (too few cells, or an undefined statistic) the point estimate is held against
the margin and the reason says so. Pure module.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.evaluation.per_cell import Interval

HIGHER = "higher_is_better"
LOWER = "lower_is_better"


@dataclass(frozen=True)
class Margin:
    """How much worse a metric may be, and where that number comes from (said in the reason)."""

    value: float
    source: str


@dataclass(frozen=True)
class Check:
    """One metric's non-inferiority check.

    worse_by, low, high: how much worse the challenger is (negative: better) with its interval
    (NaN bounds without one); margin: the allowance; passed: the interval's worse end is within it.
    """

    metric: str
    direction: str
    worse_by: float
    low: float
    high: float
    level: float
    margin: Margin
    passed: bool
    note: str = ""

    def reason(self) -> str:
        """E.g. "landform_balanced_accuracy worse by 0.12 [0.05, 0.19], margin 0.05 (seed spread ...)"."""
        word, size = ("worse", self.worse_by) if self.worse_by >= 0 else ("better", -self.worse_by)
        bounds = (f" [{self.low + 0.0:.3g}, {self.high + 0.0:.3g}]"  # + 0.0: no "-0"
                  if math.isfinite(self.low) and math.isfinite(self.high) else "")
        text = f"{self.metric} {word} by {size:.3g}{bounds}, margin {self.margin.value:.3g} ({self.margin.source})"
        return text + (f"; {self.note}" if self.note else "")

    def to_dict(self) -> dict[str, Any]:
        def number(value: float) -> float | None:
            return value if math.isfinite(value) else None
        return {"direction": self.direction, "worse_by": number(self.worse_by), "worse_by_low": number(self.low),
                "worse_by_high": number(self.high), "level": self.level, "margin": self.margin.value,
                "margin_source": self.margin.source, "passed": self.passed, "note": self.note}


def check(metric: str, direction: str, difference: Interval, margin: Margin) -> Check:
    """Judge ``difference`` (challenger - champion, from ``paired_bootstrap``) against ``margin``.

    Raises:
        ValueError: an unknown direction, or a negative or non-finite margin.
    """
    if direction not in (HIGHER, LOWER):
        raise ValueError(f"{metric}: direction must be {HIGHER} or {LOWER}, got {direction!r}")
    if not (math.isfinite(margin.value) and margin.value >= 0):
        raise ValueError(f"{metric}: a margin must be a finite number >= 0, got {margin.value!r}")
    sign = -1.0 if direction == HIGHER else 1.0
    worse_by = sign * difference.estimate + 0.0
    low, high = sorted((sign * difference.low + 0.0, sign * difference.high + 0.0))
    if math.isfinite(low) and math.isfinite(high):
        return Check(metric, direction, worse_by, low, high, difference.level, margin, high <= margin.value)
    note = f"no interval ({difference.note or 'undefined'}): point estimate only"
    return Check(metric, direction, worse_by, math.nan, math.nan, difference.level, margin,
                 math.isfinite(worse_by) and worse_by <= margin.value, note)


def margin_for(metric: str, explicit: Mapping[str, float], spread: Mapping[str, Any] | None, multiple: float,
               max_regression: float, champion_value: float | None) -> Margin:
    """The margin of ``metric`` by the module's order: explicit, measured seed spread, default.

    Args:
        metric: the metric's name.
        explicit: ``registry.gate.margins``.
        spread: a seed-spread record (``seed_spread``'s ``{"metrics": {name: {"sd", ...}}, "source"}``) or None.
        multiple: ``registry.gate.spread_multiple``.
        max_regression: ``registry.gate.max_regression`` (a fraction of the champion's value).
        champion_value: the champion's value of the metric (for the default).
    """
    if metric in explicit:
        return Margin(float(explicit[metric]), "registry.gate.margins")
    measured = ((spread or {}).get("metrics") or {}).get(metric) or {}
    sd, width = measured.get("sd"), measured.get("pair_half_width")
    if sd is not None and math.isfinite(sd):
        source = (spread or {}).get("source") or "an ablation"
        width = float(width) if width is not None and math.isfinite(width) else 0.0
        return Margin(multiple * float(sd) + width, f"{multiple:g} x seed-to-seed SD {float(sd):.3g} + seed-pair "
                                                    f"half-width {width:.3g}, from {source}")
    scale = abs(champion_value) if champion_value is not None and math.isfinite(champion_value) else math.nan
    if not math.isfinite(scale):
        return Margin(0.0, "no champion value, no measured spread: margin 0")
    return Margin(max_regression * scale, f"default: max_regression {max_regression:.0%} of the champion's "
                                          f"{champion_value:.4g}; no measured seed spread")
