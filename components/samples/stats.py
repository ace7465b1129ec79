"""Sample statistics: the global DEM scale, clipping, base elevations per descriptor combination.

stats.json is what generation needs to turn the model's output back into metres: the DEM scale S
(the model sees (elevation - cell mean) / S), the RGB rule, and a plausible base elevation for a
caption (the median cell mean of the training cells with those descriptors; an estimate).
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from components.atomic import write_json_atomic
from components.radiometry.normalise import choose_dem_scale
from components.samples.dem_encoding import describe_dem_encoding
from components.samples.prepare import PrepareParams, prepare_cells
from components.samples.shards import write_sample_shard

# Descriptors that say something about elevation (month does not).
BASE_ELEVATION_KEYS = ("biome", "landform_local", "country")


def dem_scale(index: pd.DataFrame, splits: Mapping[str, str], setting) -> float:
    """S from params (a number) or, for "auto", from the training cells' half-ranges around their mean."""
    if setting != "auto":
        return float(setting)
    train = index[index["grid_cell"].map(splits) == "train"]
    half_range = np.maximum(train["dem_max_m"] - train["dem_mean_m"], train["dem_mean_m"] - train["dem_min_m"])
    return float(choose_dem_scale(half_range.to_numpy()))


def write_prepared_shard(cells: pd.DataFrame, descriptors: pd.DataFrame, splits: Mapping[str, str],
                         params: PrepareParams, dem_scale_m: float, out: str | Path) -> dict:
    """Prepare a group of cells and write them as one sample shard; return counts for stats.json."""
    samples, rejected = prepare_cells(cells, descriptors, splits, params)
    if samples:
        write_sample_shard(out, samples)
    valid = [s["dem"][s["mask"] > 0] for s in samples if s["split"] == "train"]
    pixels = int(sum(v.size for v in valid))
    clipped = int(sum(int((np.abs(v) > dem_scale_m).sum()) for v in valid))
    return {"shard": str(out) if samples else None, "samples": len(samples), "rejected": rejected,
            "train_pixels": pixels, "clipped_pixels": clipped,
            "splits": {k: sum(s["split"] == k for s in samples) for k in ("train", "test")},
            "l1c_missing": sum(bool(s["l1c_missing"]) for s in samples),
            "cell_means": [(s["grid_cell"], s["split"], s["dem_mean_m"]) for s in samples]}


def base_elevations(means: pd.DataFrame, descriptors: pd.DataFrame) -> dict[str, float]:
    """Median cell mean of the training cells for every combination of BASE_ELEVATION_KEYS values.

    Keys look like "biome=deserts|landform_local=plains" (short forms; absent keys = any); "" is
    the global median. Generation uses the most specific combination its caption matches.
    """
    train = means[means["split"] == "train"].merge(descriptors, on="grid_cell", how="left")
    table: dict[str, float] = {"": float(train["dem_mean_m"].median())} if len(train) else {}
    for size in range(1, len(BASE_ELEVATION_KEYS) + 1):
        for keys in itertools.combinations(BASE_ELEVATION_KEYS, size):
            columns = [f"{k}_short" for k in keys]
            known = train.dropna(subset=columns)
            for values, group in known.groupby(columns):
                values = values if isinstance(values, tuple) else (values,)
                key = "|".join(f"{k}={v}" for k, v in zip(keys, values))
                table[key] = round(float(group["dem_mean_m"].median()), 1)
    return table


def summarise(results: list[dict], index: pd.DataFrame, descriptors: pd.DataFrame, splits: Mapping[str, str],
              params: PrepareParams, dem_scale_m: float, dem_knee_m: float | None = None) -> dict:
    """stats.json's content from the per-shard results (``dem_knee_m`` only when the DEM is companded,
    so a linear run's stats are byte for byte what they were before the knee existed)."""
    means = pd.DataFrame([m for r in results for m in r["cell_means"]], columns=["grid_cell", "split", "dem_mean_m"])
    pixels = sum(r["train_pixels"] for r in results)
    rejected = [row for r in results for row in r["rejected"]]
    knee = {} if dem_knee_m is None else {"dem_knee_m": float(dem_knee_m)}
    return {
        "samples": int(sum(r["samples"] for r in results)),
        "splits": {k: int(sum(r["splits"][k] for r in results)) for k in ("train", "test")},
        "shards": sorted(Path(r["shard"]).name for r in results if r["shard"]),
        "rejected": len(rejected),
        "rejected_cells": rejected,
        "l1c_missing": int(sum(r["l1c_missing"] for r in results)),
        "dem_scale_m": dem_scale_m,
        **knee,
        "dem_clipped_share": round(sum(r["clipped_pixels"] for r in results) / pixels, 6) if pixels else 0.0,
        "dem_rule": describe_dem_encoding(dem_knee_m),
        "rgb_rule": {"gain": params.rgb_gain, "gamma": params.rgb_gamma,
                     "rule": "stored = clip(gain * reflectance, 0, 1) ** (1 / gamma) * 65535; model = stored / 65535 * 2 - 1"},
        "prepare": asdict(params),
        "base_elevation_m": base_elevations(means, descriptors),
        "base_elevation_note": "median cell mean of training cells per descriptor combination: an estimate",
    }


def write_stats(path: str | Path, stats: Mapping) -> None:
    write_json_atomic(path, stats)
