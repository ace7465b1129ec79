"""Replicated comparisons: arm means, factor effects and verdicts with intervals over seeds and cells.

An ablation trains each arm (a variant of the matrix) with several training seeds and evaluates
every model on the same held-out cells and sampling seeds. Two sources of noise move a number:
the training seed (0.33 to 0.51 landform accuracy for one configuration on the demo world) and
which cells were held out. A contrast of arm means (``sum_k c_k * mean_k``) gets both:

- **training seeds**: from each arm's per-seed values (the statistic on all cells) by their sample
  variance, ``V_seed = sum_k c_k^2 s_k^2 / n_k``, with Welch-Satterthwaite degrees of freedom.
  With 2 to 4 seeds a bootstrap over seeds would badly understate this spread (two seeds resampled
  give three possible means); the t quantile of few degrees of freedom does not.
- **held-out cells**: a bootstrap over cells, one resample shared by every arm and seed (paired:
  what the cells have in common cancels between arms); ``V_cell`` is the variance of the contrast
  over the resamples (set-level statistics recomputed on each).

The interval is ``estimate +- t(level, df) * sqrt(V_seed + V_cell)``, df by Welch-Satterthwaite
over both parts (the cells' part with cells - 1). tests/unit/test_effects.py checks its coverage
by simulation.

Effects of a 2x2 design (factors A and B, levels on/off):

    main effect of A   = mean(A on) - mean(A off), each averaged over B's levels
    interaction        = (A on - A off | B on) - (A on - A off | B off)

A verdict reads the interval with the metric's direction: "better" or "worse" when the interval
excludes zero, else "no detectable difference". With fewer than 2 training seeds in an arm, or
too few cells, there is no interval and the verdict says so instead.

Pure module.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from components.evaluation.per_cell import MIN_CELLS, Interval, cell_weights, resampled_values

__all__ = ["Arm", "Effect", "arm_summaries", "coefficients", "contrasts", "factor_effects", "replicate_analysis",
           "verdict"]

Statistic = Callable[[pd.DataFrame], float]
NO_DIFFERENCE = "no detectable difference"


@dataclass(frozen=True)
class Arm:
    """One arm of a design: its name, its factor levels and one per-generation table per training seed."""

    name: str
    levels: Mapping[str, bool]
    tables: Mapping[int, pd.DataFrame] = field(default_factory=dict)


@dataclass(frozen=True)
class Effect:
    """A difference between arms with its interval and verdict."""

    name: str
    interval: Interval
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "verdict": self.verdict, **self.interval.to_dict()}


def verdict(interval: Interval, direction: str) -> str:
    """"better" / "worse" (the interval excludes 0; ``direction`` higher_is_better or lower_is_better),
    else "no detectable difference", or the interval's note when there is no interval."""
    if direction not in ("higher_is_better", "lower_is_better"):
        raise ValueError(f"direction must be higher_is_better or lower_is_better, got {direction!r}")
    if not (np.isfinite(interval.low) and np.isfinite(interval.high)):
        return f"no interval: {interval.note}" if interval.note else "no interval"
    if not interval.excludes(0.0):
        return NO_DIFFERENCE
    up = interval.low > 0
    return "better" if up == (direction == "higher_is_better") else "worse"


class _Resampler:
    """Each (arm, seed) table's rows as numbers of the cells every table has (-1: a cell some lack)."""

    def __init__(self, arms: Sequence[Arm]):
        cell_sets = [set(t["cell"].astype(str)) for arm in arms for t in arm.tables.values()]
        common = sorted(set.intersection(*cell_sets)) if cell_sets else []
        self.cells = common
        number = {cell: k for k, cell in enumerate(common)}
        self.codes = {(arm.name, seed): np.asarray([number.get(c, -1) for c in table["cell"].astype(str)],
                                                   dtype=np.int64)
                      for arm in arms for seed, table in arm.tables.items()}

    def values(self, arm: Arm, seed: int, statistic: Statistic, draws: np.ndarray) -> np.ndarray:
        """``statistic`` of the (arm, seed) table on each resample of cells (``draws``: resamples x cells)."""
        weights = cell_weights(draws, len(self.cells), self.codes[(arm.name, seed)])
        return resampled_values(statistic, arm.tables[seed], weights)


def _check(arms: Sequence[Arm]) -> str:
    """Why no interval can be given ("" when one can)."""
    thin = [a.name for a in arms if len(a.tables) < 2]
    if thin:
        return f"fewer than 2 training seeds in {', '.join(thin)}"
    return ""


class _Draws:
    """The two variance parts of the module docstring for a set of arms, computed once: any linear
    contrast of the arm means then has its interval (the arm summaries, the main effects and the
    interaction share the same cell resamples)."""

    def __init__(self, arms: Sequence[Arm], statistic: Statistic, n_boot: int, seed: int):
        self.arms = list(arms)
        self.per_seed = {a.name: np.asarray([statistic(t) for t in a.tables.values()], dtype=np.float64)
                         for a in arms}
        self.means = {name: float(values.mean()) for name, values in self.per_seed.items()}
        resampler = _Resampler(arms)
        self.cells = len(resampler.cells)
        self.note = _check(arms) or (f"{self.cells} held-out cells in common: too few for an interval "
                                     f"(need {MIN_CELLS})" if self.cells < MIN_CELLS else "")
        self.repetitions: list[dict[str, float]] = []
        if self.note:
            return
        draws = np.random.default_rng(seed).integers(0, self.cells, size=(n_boot, self.cells))
        # per arm: the mean over its seeds of the statistic on each resample
        per_arm = {arm.name: np.mean([resampler.values(arm, s, statistic, draws) for s in arm.tables], axis=0)
                   for arm in arms}
        self.repetitions = [{name: float(values[k]) for name, values in per_arm.items()} for k in range(n_boot)]

    def interval(self, contrast: Callable[[dict[str, float]], float], level: float) -> Interval:
        from scipy.stats import t as student_t

        estimate = float(contrast(self.means))
        if self.note:
            return Interval(estimate, np.nan, np.nan, level, self.cells, 0, self.note)
        values = np.asarray([contrast(boot) for boot in self.repetitions], dtype=np.float64)
        finite = values[np.isfinite(values)]
        # per arm in the contrast: (c_k^2 s_k^2 / n_k, its degrees of freedom n_k - 1)
        seed_terms = [(c ** 2 * self.per_seed[name].var(ddof=1) / len(self.per_seed[name]), len(self.per_seed[name]) - 1)
                      for name, c in coefficients(self.arms, contrast).items() if c]
        if (len(finite) < 0.9 * len(values) or not all(np.isfinite(term) for term, _ in seed_terms)
                or not np.isfinite(estimate)):
            return Interval(estimate, np.nan, np.nan, level, self.cells, len(finite),
                            f"the statistic was undefined on {len(values) - len(finite)} of {len(values)} resamples "
                            "or on a training seed")
        cell_variance = float(finite.var(ddof=1))
        total = sum(term for term, _ in seed_terms) + cell_variance
        if total <= 0:
            return Interval(estimate, estimate, estimate, level, self.cells, len(finite))
        denominator = sum(term ** 2 / df for term, df in seed_terms) + cell_variance ** 2 / max(1, self.cells - 1)
        df = total ** 2 / denominator if denominator > 0 else np.inf
        half = float(student_t.ppf((1 + level) / 2, df)) * float(np.sqrt(total))
        return Interval(estimate, estimate - half, estimate + half, level, self.cells, len(finite))


def coefficients(arms: Sequence[Arm], contrast: Callable[[dict[str, float]], float]) -> dict[str, float]:
    """Each arm's coefficient c_k in a linear contrast of arm means (read off unit vectors)."""
    zero = {a.name: 0.0 for a in arms}
    base = contrast(zero)
    return {a.name: float(contrast({**zero, a.name: 1.0}) - base) for a in arms}


def _bootstrap(arms: Sequence[Arm], statistic: Statistic, contrast: Callable[[dict[str, float]], float],
               n_boot: int, seed: int, level: float) -> Interval:
    """Interval of ``contrast(arm means)`` over training seeds and held-out cells (module docstring)."""
    return _Draws(arms, statistic, n_boot, seed).interval(contrast, level)


def arm_summaries(arms: Sequence[Arm], statistic: Statistic, n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> dict[str, Interval]:
    """Per arm: the mean over its training seeds and its hierarchical bootstrap interval."""
    return {arm.name: _bootstrap([arm], statistic, lambda m, name=arm.name: m[name], n_boot, seed, level)
            for arm in arms}


def factor_effects(arms: Sequence[Arm], statistic: Statistic, direction: str, n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95) -> list[Effect]:
    """Main effect of each factor and, for two factors with both levels each, their interaction.

    A factor with one level in the design has no effect to estimate and is left out.

    Raises:
        ValueError: arms that do not share one set of factor names, or two arms with the same levels.
    """
    return replicate_analysis(arms, statistic, direction, n_boot, seed, level)[1]


def replicate_analysis(arms: Sequence[Arm], statistic: Statistic, direction: str, n_boot: int = 1000,
                       seed: int = 0, level: float = 0.95) -> tuple[dict[str, Interval], list[Effect]]:
    """Each arm's mean with its interval, and the factor effects (see :func:`factor_effects`), from
    one set of resamples.

    Raises:
        ValueError: arms that do not share one set of factor names, or two arms with the same levels.
    """
    named = contrasts(arms)
    draws = _Draws(arms, statistic, n_boot, seed)
    summaries = {arm.name: draws.interval(lambda m, name=arm.name: m[name], level) for arm in arms}
    effects = []
    for name, contrast in named:
        interval = draws.interval(contrast, level)
        effects.append(Effect(name, interval, verdict(interval, direction)))
    return summaries, effects


def contrasts(arms: Sequence[Arm]) -> list[tuple[str, Callable[[dict[str, float]], float]]]:
    """(name, arm means -> difference) of each varied factor's main effect and the 2x2 interaction."""
    factors = sorted({f for arm in arms for f in arm.levels})
    if any(set(arm.levels) != set(factors) for arm in arms):
        raise ValueError("every arm must set the same factors")
    by_levels = {tuple(arm.levels[f] for f in factors): arm for arm in arms}
    if len(by_levels) != len(arms):
        raise ValueError("two arms have the same factor levels")
    varied = [f for f in factors if len({arm.levels[f] for arm in arms}) == 2]
    found = []
    for factor in varied:
        on = [a.name for a in arms if a.levels[factor]]
        off = [a.name for a in arms if not a.levels[factor]]

        def main(m, on=on, off=off):
            return float(np.mean([m[n] for n in on]) - np.mean([m[n] for n in off]))
        found.append((f"{factor} on - off", main))
    if len(varied) == 2 and len(arms) == 4:
        a, b = varied
        name = {(arm.levels[a], arm.levels[b]): arm.name for arm in arms}

        def interaction(m):
            return float((m[name[True, True]] - m[name[False, True]]) - (m[name[True, False]] - m[name[False, False]]))
        found.append((f"{a} x {b} interaction", interaction))
    return found
