"""The terrain metrics of a model on the held-out cells, next to the reference real pairs reach.

``held_out_pairs`` reads real pairs (RGB as the model sees it, DEM in metres) with their
descriptors and full captions from the sample shards. ``generate_for_cells`` generates from each
held-out cell's own caption with fixed seeds (the same for every model, so models compare).
``score`` computes every metric of ``metrics.metric_directions`` for a set of pairs against
reference pairs: generated vs held-out is the model's score; held-out vs training is the
reference a perfect model would reach.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.evaluation import metrics

Generate = Callable[[list[str], list[int]], tuple[np.ndarray, np.ndarray]]


@dataclass
class Pairs:
    """RGB uint8 (N, H, W, 3), DEM metres (N, H, W), and per pair its caption and descriptors."""

    rgb: np.ndarray
    dem_m: np.ndarray
    captions: list[str]
    landform: list[str | None]          # the landform the caption names (landform_local_short)
    group: list[str]                    # biome|month: what the colour histograms are compared by
    seeds: list[int] = field(default_factory=list)
    cell_ids: list[str] = field(default_factory=list)
    descriptors: list[dict] = field(default_factory=list)  # per real cell (what its caption was built from)
    rgb_shadow: np.ndarray | None = None  # real pairs: the shadow-corrected image (the plain one where none)

    def __len__(self) -> int:
        return len(self.captions)


def _group(descriptors: Mapping[str, Any]) -> str:
    return f"{descriptors.get('biome_short') or 'unknown'}|{descriptors.get('month_short') or 'unknown'}"


def held_out_pairs(sample_shards: Sequence[str | Path], split: str, limit: int | None = None) -> Pairs:
    """Real pairs of ``split`` (RGB as the display-encoded uint8 the pipeline outputs, DEM in metres).

    The DEM is the stored elevation relative to the cell mean plus that mean, so its relief is
    the real one; NaN outside the valid mask would break the descriptors, so masked pixels keep
    their stored value (the DEM is complete; only the image may be cloudy there).
    """
    from components.captions.builder import build_caption
    from components.samples.shards import DESCRIPTOR_COLUMNS, read_sample_shard

    rgb, shadow, dem, captions, landform, group, ids, described = [], [], [], [], [], [], [], []
    display = lambda stored: np.rint(stored.astype(np.float64) / 65535.0 * 255.0).astype(np.uint8)  # noqa: E731
    for path in sorted(str(p) for p in sample_shards):
        for row in read_sample_shard(path, columns=["sample_id", "split", "dem_mean_m", "rgb", "rgb_shadow", "dem",
                                                    *DESCRIPTOR_COLUMNS]):
            if row["split"] != split:
                continue
            descriptors = {c: row[c] for c in DESCRIPTOR_COLUMNS}
            rgb.append(display(row["rgb"]))
            shadow.append(display(row["rgb_shadow"]) if row.get("rgb_shadow") is not None else rgb[-1])
            dem.append(row["dem"].astype(np.float32) + np.float32(row["dem_mean_m"]))
            captions.append(build_caption(descriptors))
            landform.append(descriptors.get("landform_local_short"))
            group.append(_group(descriptors))
            ids.append(row["sample_id"])
            described.append({**descriptors, "grid_cell": row["sample_id"]})
            if limit is not None and len(ids) >= limit:
                break
        if limit is not None and len(ids) >= limit:
            break
    if not ids:
        raise ValueError(f"no {split!r} samples in {list(sample_shards)}: run the prepare stage (or lower the "
                         "test share's floor)")
    return Pairs(np.stack(rgb), np.stack(dem), captions, landform, group, cell_ids=ids, descriptors=described,
                 rgb_shadow=np.stack(shadow))


def generate_for_cells(generate: Generate, cells: Pairs, seeds: Sequence[int], at_least: int = 60,
                       batch_size: int = 16) -> Pairs:
    """Generations from the cells' own captions: every cell x every seed, cycling cells until
    ``at_least`` generations exist (so a small held-out split still gives enough)."""
    if not seeds:
        raise ValueError("give at least one seed")
    # Later rounds over the same cells shift every seed by 1000, so no (caption, seed) repeats.
    rounds = max(1, -(-at_least // (len(cells) * len(seeds))))
    jobs = [(i, int(seed) + 1000 * r) for r in range(rounds) for i in range(len(cells)) for seed in seeds]
    rgb, dem = [], []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        out_rgb, out_dem = generate([cells.captions[i] for i, _ in chunk], [s for _, s in chunk])
        rgb.append(np.asarray(out_rgb))
        dem.append(np.asarray(out_dem, dtype=np.float32))
    return Pairs(np.concatenate(rgb), np.concatenate(dem), [cells.captions[i] for i, _ in jobs],
                 [cells.landform[i] for i, _ in jobs], [cells.group[i] for i, _ in jobs],
                 seeds=[s for _, s in jobs], cell_ids=[cells.cell_ids[i] for i, _ in jobs])


def score(candidate: Pairs, reference: Pairs, pixel_size_m: float,
          thresholds: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Every metric of ``metrics.metric_directions()`` for ``candidate`` against ``reference``.

    Landform adherence compares the candidate DEMs' classes with the classes their captions name
    (cells whose caption names none are left out). Diversity groups the candidate by caption;
    real pairs have one sample per caption, so their diversity is reported as NaN.
    """
    accuracy = landform_adherence(candidate, pixel_size_m, thresholds)
    biome = metrics.biome_adherence(candidate.rgb, candidate.group, reference.rgb, reference.group)
    by_caption: dict[str, list[np.ndarray]] = {}
    for caption, dem in zip(candidate.captions, candidate.dem_m):
        by_caption.setdefault(caption, []).append(dem)
    repeated = {c: v for c, v in by_caption.items() if len(v) > 1}
    result = {
        "landform_balanced_accuracy": accuracy.value,
        "landform_chance": accuracy.chance,
        "biome_adherence_js": biome["value"],
        "rgb_dem_coherence": metrics.rgb_dem_coherence(candidate.rgb, candidate.dem_m, pixel_size_m),
        "diversity": metrics.diversity(repeated) if repeated else float("nan"),
        "dem_artefact_share": metrics.dem_artefact_share(candidate.dem_m) if len(candidate) else float("nan"),
        **metrics.realism_distances(candidate.dem_m, reference.dem_m, pixel_size_m),
    }
    return {k: float(v) for k, v in result.items()}


def landform_adherence(candidate: Pairs, pixel_size_m: float,
                       thresholds: Mapping[str, Any] | None = None) -> metrics.BalancedAccuracy:
    """Balanced accuracy of the candidate DEMs' landform classes against what their captions name,
    each at the level it names (cells whose caption names no landform are left out)."""
    asked = [(i, lf) for i, lf in enumerate(candidate.landform) if lf]
    predicted = metrics.classify_dems(candidate.dem_m[[i for i, _ in asked]], pixel_size_m, thresholds)
    return metrics.landform_balanced_accuracy(predicted, [lf for _, lf in asked])


def relief_by_landform(candidate: Pairs, reference: Pairs, pixel_size_m: float,
                       to_model: Callable[[np.ndarray], np.ndarray] | None = None,
                       ) -> dict[str, dict[str, float | None]]:
    """Per landform the captions ask for: the median relief (the landform rules' robust range,
    ``landform_inputs``' ``relief_m``) of the candidate DEMs asked for it, of the real DEMs of
    that class, and their ratio (1 = the real relief; plains coming back at twice their relief: 2).

    ``to_model`` (metres around the DEM's mean -> model units, e.g. the DEM rule's ``to_relative``)
    adds the same medians in model units: the range of the model's raw output, before the rule
    turns it into metres (the model generates relative heights, centred like its training data).

    Returns:
        ``{landform: {"generated_median_m", "real_median_m", "ratio", "generated", "real"}}``
        (counts in the last two; None where a side has no DEM), plus ``generated_median_model`` and
        ``real_median_model`` with ``to_model``.
    """
    from components.captions.landform import landform_inputs

    def medians(pairs: Pairs, convert) -> dict[str, tuple[float, int]]:
        relief: dict[str, list[float]] = {}
        for landform, dem in zip(pairs.landform, pairs.dem_m):
            if landform:
                values = convert(dem - np.mean(dem)) if convert else dem
                relief.setdefault(landform, []).append(landform_inputs(values, pixel_size_m)["relief_m"])
        return {k: (float(np.median(v)), len(v)) for k, v in relief.items()}

    generated, real = medians(candidate, None), medians(reference, None)
    out: dict[str, dict[str, float | None]] = {}
    for landform in sorted(set(generated) | set(real)):
        gen_m, gen_n = generated.get(landform, (None, 0))
        real_m, real_n = real.get(landform, (None, 0))
        ratio = gen_m / real_m if gen_m is not None and real_m else None
        out[landform] = {"generated_median_m": json_number(gen_m), "real_median_m": json_number(real_m),
                         "ratio": json_number(ratio), "generated": gen_n, "real": real_n}
    if to_model is not None:
        for key, pairs in (("generated_median_model", candidate), ("real_median_model", reference)):
            found = medians(pairs, to_model)
            for landform, entry in out.items():
                entry[key] = json_number(found[landform][0]) if landform in found else None
    return out


def in_paper_words(cells: Pairs) -> Pairs:
    """The same real cells captioned in the paper's landform words ("mountains" for both mountain
    classes), with what each caption now asks for; the pairs need their descriptors."""
    from components.captions.builder import build_caption
    from components.captions.landform import paper_landform_word

    if len(cells.descriptors) != len(cells):
        raise ValueError("in_paper_words needs the descriptors of every cell (held_out_pairs keeps them)")
    return Pairs(cells.rgb, cells.dem_m, [build_caption(d, paper_landform=True) for d in cells.descriptors],
                 [paper_landform_word(lf) for lf in cells.landform], list(cells.group),
                 cell_ids=list(cells.cell_ids), descriptors=list(cells.descriptors))


def shuffled_captions(cells: Pairs, seed: int = 0) -> Pairs:
    """The same cells with captions (and what they ask for) permuted across cells: the control
    a model that reads its captions must beat on landform adherence."""
    from components.training.validation import derangements

    (order,) = derangements(len(cells), 1, seed)
    return Pairs(cells.rgb, cells.dem_m, [cells.captions[j] for j in order], list(cells.landform),
                 list(cells.group), cell_ids=list(cells.cell_ids))


def metrics_report(scores: Mapping[str, float], reference: Mapping[str, float], **extra: Any) -> dict[str, Any]:
    """reports/metrics.json: each metric with its direction, the model's value and the real reference."""
    from components.evaluation import denoising

    # The held-out denoising loss first: the steadiest number (no sampling), with no real reference.
    directions = {denoising.NAME: denoising.DIRECTION, **metrics.metric_directions()}
    report: dict[str, Any] = {"metrics": {}}
    for name, direction in directions.items():
        report["metrics"][name] = {"direction": direction, "value": json_number(scores.get(name)),
                                   "real_reference": json_number(reference.get(name))}
    report.update(extra)
    return report


def json_number(value: Any) -> float | None:
    """NaN / missing -> None (JSON has no NaN), else rounded."""
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), 6)
