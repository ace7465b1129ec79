"""What an ablation's replicates say, per metric: each arm's mean and interval, each factor's effect
with its verdict, the seed-to-seed spread, and how many seeds an effect of a given size needs.

An ablation trains every arm with several seeds and evaluates every model on the same held-out
cells (``reports/metrics_per_cell.parquet`` of each run). :func:`analyse` gives the intervals of
:mod:`components.evaluation.effects` (training seeds by their spread, held-out cells by a paired
bootstrap) on those tables; :func:`markdown` and
:func:`forest_plot` draw the result; :func:`spread_record` is what ``reports/seed_spread.json``
holds for the promotion gate's margins.

Seeds needed: a contrast ``sum_k c_k * mean_k`` of arm means over ``n`` seeds each varies by
``sigma^2 / n * sum_k c_k^2`` from training seeds alone (``sigma``: the pooled seed-to-seed SD), so
detecting an effect ``delta`` at the 5 % level with 80 % power needs
``n = (z_0.975 + z_0.8)^2 * sigma^2 * sum_k c_k^2 / delta^2`` seeds per arm (sum c^2 = 1 for a 2x2
main effect, 4 for the interaction, 2 for two arms). Held-out cells add to this, so it is a floor.

Pure module (the plot returns a PIL image).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from components.evaluation import effects as effects_module
from components.evaluation.effects import Arm
from components.evaluation.per_cell import PER_CELL_METRICS, metric_statistic

__all__ = ["analyse", "arms_of", "forest_plot", "forest_rows", "markdown", "pooled_seed_sd", "seeds_needed", "spread_record"]

Z_ALPHA, Z_POWER = 1.959964, 0.841621  # two-sided 5 %, 80 % power


def arms_of(entries: Sequence[Mapping[str, Any]]) -> list[Arm]:
    """The design's arms from the ablation's entries (``arm``, ``levels``, ``seed``, ``table``); an
    entry without a per-cell table is left out (its run has no per-cell evaluation)."""
    grouped: dict[str, tuple[dict, dict[int, pd.DataFrame]]] = {}
    for entry in entries:
        if entry.get("table") is None:
            continue
        levels, tables = grouped.setdefault(entry["arm"], (dict(entry["levels"]), {}))
        tables[int(entry["seed"])] = entry["table"]
    return [Arm(name, levels, tables) for name, (levels, tables) in grouped.items()]


def pooled_seed_sd(values: Mapping[str, Mapping[int, float]]) -> float | None:
    """The within-arm SD across training seeds, pooled over arms (None without an arm of 2+ finite seeds).

    Args:
        values: arm -> training seed -> the metric of that model on the whole evaluation.
    """
    squares, freedom = 0.0, 0
    for by_seed in values.values():
        finite = np.asarray([v for v in by_seed.values() if v is not None and math.isfinite(v)], dtype=np.float64)
        if len(finite) >= 2:
            squares += float(((finite - finite.mean()) ** 2).sum())
            freedom += len(finite) - 1
    return math.sqrt(squares / freedom) if freedom else None


def seeds_needed(sd: float | None, effect: float, coefficient_squares: float = 2.0) -> int | None:
    """Training seeds per arm to detect `effect` (5 % level, 80 % power) from seed spread `sd` alone.

    Args:
        sd: the pooled seed-to-seed SD; effect: the difference to detect (its size is used);
        coefficient_squares: sum of the contrast's squared coefficients (2: two arms).
    """
    if sd is None or not math.isfinite(sd) or not effect or not math.isfinite(effect):
        return None
    return max(2, math.ceil((Z_ALPHA + Z_POWER) ** 2 * sd ** 2 * coefficient_squares / effect ** 2))


def _coefficient_squares(arms: Sequence[Arm], contrast_name: str) -> float:
    """sum c_k^2 of a named contrast."""
    contrast = dict(effects_module.contrasts(arms))[contrast_name]
    return float(sum(c ** 2 for c in effects_module.coefficients(arms, contrast).values()))


def pair_half_width(arms: Sequence[Arm], statistic, n_boot: int, seed: int, level: float) -> float | None:
    """The median half-width of the paired interval between two seeds of one arm (over all such
    pairs): how wide the promotion gate's interval is for a challenger that differs from the
    champion only by its training seed. None without a pair that has an interval."""
    from components.evaluation.per_cell import paired_bootstrap

    widths = []
    for arm in arms:
        seeds = sorted(arm.tables)
        for i, first in enumerate(seeds):
            for second in seeds[i + 1:]:
                interval = paired_bootstrap(arm.tables[first], arm.tables[second], statistic, n_boot, seed, level)
                if math.isfinite(interval.low) and math.isfinite(interval.high):
                    widths.append((interval.high - interval.low) / 2)
    return float(np.median(widths)) if widths else None


def analyse(arms: Sequence[Arm], directions: Mapping[str, str], metrics: Sequence[str] | None = None,
            n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, dict[str, Any]]:
    """Per metric: arms (mean and interval), effects (difference, interval, verdict, seeds needed to
    confirm an effect of that size), each model's value and the pooled seed SD.

    Args:
        arms: from :func:`arms_of`.
        directions: metric -> higher_is_better / lower_is_better (metrics without one are skipped).
        metrics: the metrics to analyse (default: every per-cell metric with a direction).
        n_boot, seed, level: the bootstrap's resamples, random seed and interval level.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in metrics if metrics is not None else PER_CELL_METRICS:
        direction = directions.get(name)
        if direction not in ("higher_is_better", "lower_is_better") or not arms:
            continue
        statistic = metric_statistic(name)
        values = {arm.name: {s: float(statistic(t)) for s, t in sorted(arm.tables.items())} for arm in arms}
        if not any(math.isfinite(v) for by_seed in values.values() for v in by_seed.values()):
            continue  # the evaluation has no value of it (e.g. no real reference)
        summaries, found = effects_module.replicate_analysis(arms, statistic, direction, n_boot, seed, level)
        sd = pooled_seed_sd(values)
        effects = []
        for effect in found:
            record = effect.to_dict()
            record["seeds_needed"] = seeds_needed(sd, effect.interval.estimate,
                                                  _coefficient_squares(arms, effect.name))
            effects.append(record)
        out[name] = {"direction": direction, "arms": {k: v.to_dict() for k, v in summaries.items()},
                     "effects": effects, "values": values, "seed_sd": sd,
                     "pair_half_width": pair_half_width(arms, statistic, max(100, n_boot // 3), seed, level),
                     "seeds_per_arm": sorted({len(arm.tables) for arm in arms})}
    return out


def spread_record(analysis: Mapping[str, Mapping[str, Any]], source: str) -> dict[str, Any]:
    """reports/seed_spread.json: per metric the pooled seed-to-seed SD and the typical half-width of
    a seed pair's paired interval (what the gate's margins are made of)."""
    return {"source": source,
            "metrics": {name: {"sd": entry["seed_sd"], "pair_half_width": entry.get("pair_half_width"),
                               "direction": entry["direction"], "arms": len(entry["arms"]),
                               "seeds_per_arm": entry["seeds_per_arm"]}
                        for name, entry in analysis.items() if entry["seed_sd"] is not None}}


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _interval_text(entry: Mapping[str, Any]) -> str:
    if entry.get("low") is None or entry.get("high") is None:
        return f"{_number(entry['estimate'])} (no interval: {entry.get('note') or 'undefined'})"
    return f"{_number(entry['estimate'])} [{_number(entry['low'])}, {_number(entry['high'])}]"


def markdown(analysis: Mapping[str, Mapping[str, Any]], forest: str | None = None) -> str:
    """The report's section on replicates: arm means and effects per metric, with intervals."""
    if not analysis:
        return ("## Effects\n\nNo per-cell evaluation came back from the variants' runs: no intervals "
                "(rerun the ablation after the evaluate stage writes metrics_per_cell.parquet).\n")
    lines = ["## Effects (over training seeds and held-out cells)", "",
             "Each arm: the mean over its training seeds with a 95 % interval. Each effect: the difference "
             "with a 95 % interval that counts both the training seeds' spread (t quantile of their few degrees "
             "of freedom) and the held-out cells' (a bootstrap, the same cells for every arm). Verdicts read "
             "the interval: better / worse when it excludes 0. "
             "Seeds needed: training seeds per arm to confirm an effect of the estimated size (80 % power, "
             "training-seed spread only; held-out cells add to it).", ""]
    if forest:
        lines += [f"![effects]({forest})", ""]
    lines += ["| metric | direction | seed SD | effect | difference [95 %] | verdict | seeds needed |",
              "|---|---|---|---|---|---|---|"]
    for name, entry in analysis.items():
        for effect in entry["effects"]:
            lines.append(f"| {name} | {entry['direction'].replace('_', ' ')} | {_number(entry['seed_sd'])} | "
                         f"{effect['name']} | {_interval_text(effect)} | {effect['verdict']} | "
                         f"{effect['seeds_needed'] if effect['seeds_needed'] is not None else 'n/a'} |")
    lines += ["", "| metric | arm | mean [95 %] | per seed |", "|---|---|---|---|"]
    for name, entry in analysis.items():
        for arm, interval in entry["arms"].items():
            per_seed = ", ".join(f"{seed}: {_number(value)}" for seed, value in entry["values"][arm].items())
            lines.append(f"| {name} | {arm} | {_interval_text(interval)} | {per_seed} |")
    return "\n".join(lines) + "\n"


def forest_rows(analysis: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The forest plot's rows: one per (metric, effect), on one scale whatever the metric's units.

    Each difference and its interval are divided by the metric's training-seed SD and signed so
    that positive is better (a lower-is-better metric's differences are negated): metrics in
    metres, degrees and fractions then share one axis, and the distance from 0 reads as "how many
    retraining spreads". A row without an interval or without a seed SD keeps ``low`` / ``high``
    None (its ``text`` says why).

    Returns:
        list of dicts: ``label`` ("metric: effect"), ``estimate``, ``low``, ``high`` (in seed SDs,
        positive = better, or None), ``verdict``, ``text`` (the raw difference and interval, or
        why there is none).
    """
    rows = []
    for name, entry in analysis.items():
        sd = entry.get("seed_sd")
        sign = -1.0 if entry["direction"] == "lower_is_better" else 1.0
        for effect in entry["effects"]:
            scaled = sd is not None and sd > 0 and effect.get("low") is not None and effect.get("high") is not None
            ends = sorted((sign * effect["low"] / sd, sign * effect["high"] / sd)) if scaled else (None, None)
            rows.append({"label": f"{name}: {effect['name']}",
                         "estimate": sign * effect["estimate"] / sd if scaled else None,
                         "low": ends[0], "high": ends[1], "verdict": effect["verdict"],
                         "text": _interval_text(effect) + ("" if scaled or effect.get("low") is None
                                                           else " (not drawn: no seed spread)")})
    return rows


def forest_plot(analysis: Mapping[str, Mapping[str, Any]]):
    """The effects on one axis (``forest_rows``: seed SDs, right = better), 0 marked; better green,
    worse red; each row's raw difference and interval written at the right."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = forest_rows(analysis)
    figure, axis = plt.subplots(figsize=(10.5, 1.3 + 0.38 * max(1, len(rows))))
    colours = {"better": "#1a9850", "worse": "#d73027"}
    for y, row in enumerate(rows):
        colour = colours.get(row["verdict"], "#4d4d4d")
        if row["low"] is not None:
            axis.plot([row["low"], row["high"]], [y, y], color=colour, linewidth=2.5)
            axis.plot([row["estimate"]], [y], "o", color=colour)
        axis.annotate(row["text"], (1.01, y),
                      xycoords=("axes fraction", "data"), va="center", fontsize=8)
    axis.axvline(0.0, color="#999999", linewidth=1, linestyle="--")
    axis.set_yticks(range(len(rows)), [row["label"] for row in rows], fontsize=8)
    axis.set_ylim(len(rows) - 0.4, -0.6)  # the first metric on top, as in the table
    axis.set_xlabel("difference in training-seed SDs of the metric (right = better); 95 % intervals", fontsize=8)
    axis.tick_params(axis="x", labelsize=8)
    axis.set_title("Effects (green: better, red: worse, grey: no detectable difference); "
                   "right: the difference in the metric's units", fontsize=9, loc="left")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
