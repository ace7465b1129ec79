"""One evaluation of one model: grids (PNG + layout manifest), reports/metrics.json, reports/eval.md.

What the ``evaluate`` stage and ``mesa evaluate`` call. Generations use fixed seeds and the
held-out cells' own captions, so two models evaluated on the same samples are comparable.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.atomic import atomic_write, write_json_atomic
from components.evaluation import denoising, evaluate, grids, per_cell
from components.config import EvaluateConfig
from components.layout import EVAL_GRIDS, EVAL_GRIDS_SUBDIR, EVAL_MD, METRICS_FILE, METRICS_PER_CELL_FILE


@dataclass(frozen=True)
class EvaluateParams:
    """params.yaml ``evaluate`` as the evaluation uses it: an empty ``grid_captions`` is the paper's Table 2.

    Built from ``EvaluateConfig`` (which checks the group); a dataclass because its repr is part of
    ``evaluation_fingerprint``, which registered versions carry as a tag.
    """

    seeds: tuple[int, ...] = (42, 50, 666)
    min_generations: int = 60
    steps: int = 50
    guidance: float = 7.0
    grid_cells: int = 4
    grid_captions: tuple[str, ...] = grids.TABLE2_CAPTIONS
    named_area_prompts: tuple[str, ...] = ()
    batch_size: int = 16
    denoising_samples: int = 32

    @classmethod
    def from_config(cls, config: EvaluateConfig) -> EvaluateParams:
        values = config.model_dump()
        return cls(**{**values, "grid_captions": values["grid_captions"] or grids.TABLE2_CAPTIONS})

    @classmethod
    def from_params(cls, values: Mapping[str, Any] | None) -> EvaluateParams:
        """From the plain ``evaluate`` mapping (checked by ``EvaluateConfig``; ParamsError when invalid)."""
        return cls.from_config(EvaluateConfig.from_params(values))


def run_evaluation(pipeline, sample_shards: Sequence[str | Path], stats: Mapping[str, Any], settings: EvaluateParams,
                   reports_dir: str | Path, model_label: str, compare_with: Mapping[str, Any] | None = None,
                   landform_thresholds: Mapping[str, Any] | None = None, shadow: bool = True,
                   progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate ``pipeline``; write ``reports_dir/metrics.json``, ``eval.md`` and ``eval/*.png`` + ``*.json``.

    Args:
        pipeline: a TerrainPipeline.
        sample_shards: data/samples/*.parquet (test split = held out, train split = reference).
        stats: stats.json (the grid's pixel size comes from its ``prepare`` settings).
        settings: ``EvaluateParams``.
        reports_dir: usually ``reports/``.
        model_label: what the report calls the model (a folder or an MLflow URI).
        compare_with: other pipelines by label, drawn beside this one on the Table 4 captions.
        landform_thresholds: the captions stage's overrides, so generations are judged by its rules.
        shadow: the image variant the model was trained on (params shadow.enabled), for the
            held-out denoising loss.
    Returns:
        the metrics report (as written to metrics.json) plus ``grids``: {name: png path} and
        ``per_cell``: the path of metrics_per_cell.parquet.
    """
    reports = Path(reports_dir)
    pixel = float(stats["prepare"]["footprint_px"]) * 10.0 / float(stats["prepare"]["image_px"])
    generate = grids.pipeline_generate(pipeline, num_inference_steps=settings.steps,
                                       guidance_scale=settings.guidance)

    # 1. Metrics: held-out captions x fixed seeds, the shuffled-caption control, the real reference.
    held_out = evaluate.held_out_pairs(sample_shards, "test")
    training = evaluate.held_out_pairs(sample_shards, "train")
    progress(f"[evaluate] generating {max(settings.min_generations, len(held_out) * len(settings.seeds))} "
             f"samples from {len(held_out)} held-out captions x seeds {list(settings.seeds)}")
    generated = evaluate.generate_for_cells(generate, held_out, settings.seeds, settings.min_generations,
                                            settings.batch_size)
    model = evaluate.score(generated, held_out, pixel, landform_thresholds)
    shuffled = {"landform_balanced_accuracy": float("nan")}  # no control with a single held-out cell
    if len(held_out) >= 2:
        control = evaluate.generate_for_cells(generate, evaluate.shuffled_captions(held_out), settings.seeds,
                                              settings.min_generations, settings.batch_size)
        shuffled = evaluate.score(control, held_out, pixel, landform_thresholds)
    paper_words = _paper_words_adherence(generate, held_out, settings, pixel, landform_thresholds, progress)
    real = evaluate.score(held_out, training, pixel, landform_thresholds)
    losses = denoising.heldout_denoising_loss(pipeline, [str(s) for s in sample_shards], float(stats["dem_scale_m"]),
                                              shadow, settings.denoising_samples, stats.get("dem_knee_m"))
    table = pd.concat([per_generation_tables(generated, held_out, training, pixel, landform_thresholds),
                       losses.pop("terms")], ignore_index=True)
    atomic_write(reports / METRICS_PER_CELL_FILE, lambda tmp: table.to_parquet(tmp, index=False))
    report = evaluate.metrics_report(
        {**model, **losses}, real, model=model_label, generations=len(generated), held_out_cells=len(held_out),
        evaluation_fingerprint=evaluation_fingerprint(held_out, settings, landform_thresholds, shadow),
        **grammar_versions(),
        heldout_denoising_loss_shuffled_captions=evaluate.json_number(
            losses[f"{denoising.NAME}_shuffled_captions"]),
        seeds=list(settings.seeds), steps=settings.steps, guidance=settings.guidance,
        landform_balanced_accuracy_shuffled_captions=evaluate.json_number(
            shuffled["landform_balanced_accuracy"]),
        landform_chance=evaluate.json_number(model["landform_chance"]),
        rgb_dem_coherence_real_by_variant=coherence_by_variant(held_out, pixel),
        relief_by_landform=evaluate.relief_by_landform(generated, held_out, pixel, pipeline.dem_rule.to_relative),
        **{key: evaluate.json_number(value) for key, value in paper_words.items()})

    # 2. Grids, each a PNG and its layout manifest.
    cells = held_out.descriptors[: settings.grid_cells]
    drawn = dict(zip(EVAL_GRIDS, (  # the files dvc.yaml plots, in EVAL_GRIDS' order
        grids.seed_variability_grid(generate, settings.grid_captions, settings.seeds, pixel_size_m=pixel),
        grids.caption_influence_grid(generate, cells, settings.seeds[0], pixel_size_m=pixel,
                                     named_area_prompts=settings.named_area_prompts),
        grids.real_vs_generated_grid(
            generate, [(held_out.captions[i], held_out.rgb[i], held_out.dem_m[i]) for i in range(len(cells))],
            settings.seeds[0], pixel_size_m=pixel),
    ), strict=True))
    if compare_with:
        generators = {model_label: generate, **{label: grids.pipeline_generate(other, settings.steps,
                                                                               settings.guidance)
                                                for label, other in compare_with.items()}}
        drawn["model_comparison"] = grids.model_comparison_grid(generators, grids.TABLE4_CAPTIONS,
                                                                settings.seeds[0], pixel_size_m=pixel)
    paths = {}
    for name, (image, layout) in drawn.items():
        png = reports / EVAL_GRIDS_SUBDIR / f"{name}.png"
        atomic_write(png, lambda tmp, image=image: image.save(tmp, format="PNG"))
        write_json_atomic(reports / EVAL_GRIDS_SUBDIR / f"{name}.json", layout.to_dict())
        paths[name] = png
    write_json_atomic(reports / METRICS_FILE, report)
    atomic_write(reports / EVAL_MD, lambda tmp: Path(tmp).write_text(markdown_report(report, paths, reports)))
    progress(f"[evaluate] landform balanced accuracy {model['landform_balanced_accuracy']:.3f} (chance "
             f"{model['landform_chance']:.3f}, captions shuffled {shuffled['landform_balanced_accuracy']:.3f}) -> "
             f"{reports / METRICS_FILE}, {reports / EVAL_MD}")
    return {**report, "grids": {k: str(v) for k, v in paths.items()}, "per_cell": str(reports / METRICS_PER_CELL_FILE)}


def coherence_by_variant(held_out, pixel: float) -> dict[str, float | None]:
    """The real reference of rgb_dem_coherence for both image variants of the held-out cells: the
    plain L2A image (the metrics table's reference, whatever the model was trained on) and the
    shadow-corrected one (what a shadow-corrected model should approach)."""
    import numpy as np

    from components.evaluation.metrics import rgb_dem_correlations

    images = {"plain_l2a": held_out.rgb, "shadow_corrected": held_out.rgb_shadow}
    return {name: evaluate.json_number(float(np.mean(rgb_dem_correlations(rgb, held_out.dem_m, pixel))))
            if rgb is not None and len(rgb) else None for name, rgb in images.items()}


def per_generation_tables(generated, held_out, training, pixel: float,
                          landform_thresholds: Mapping[str, Any] | None):
    """The model's generations and the real held-out pairs, one row each (``per_cell``), told apart by
    ``source`` ("generated" / "real"; the real pairs have seed 0): what paired comparisons and
    intervals read. Colours compare with the held-out images (the model) and the training images
    (the real pairs), as ``score`` does."""
    model = per_cell.per_generation_table(
        generated.cell_ids, generated.seeds, generated.captions, generated.landform, generated.group,
        generated.rgb, generated.dem_m, pixel, held_out.rgb, held_out.group, landform_thresholds)
    real = per_cell.per_generation_table(
        held_out.cell_ids, [0] * len(held_out), held_out.captions, held_out.landform, held_out.group,
        held_out.rgb, held_out.dem_m, pixel, training.rgb, training.group, landform_thresholds)
    return pd.concat([model.assign(source="generated"), real.assign(source="real")], ignore_index=True)


def _paper_words_adherence(generate, held_out, settings: EvaluateParams, pixel: float,
                           landform_thresholds: Mapping[str, Any] | None, progress) -> dict[str, float]:
    """Landform adherence of the held-out captions said in the paper's words ("mountains"), scored at
    that level, with its shuffled-caption control and chance (issue 24: both kinds of prompt are
    trained, so both are measured)."""
    cells = evaluate.in_paper_words(held_out)
    progress(f"[evaluate] the same captions in the paper's landform words ({len(cells)} held-out cells)")
    generated = evaluate.generate_for_cells(generate, cells, settings.seeds, settings.min_generations,
                                            settings.batch_size)
    accuracy = evaluate.landform_adherence(generated, pixel, landform_thresholds)
    shuffled = float("nan")
    if len(cells) >= 2:
        control = evaluate.generate_for_cells(generate, evaluate.shuffled_captions(cells), settings.seeds,
                                              settings.min_generations, settings.batch_size)
        shuffled = evaluate.landform_adherence(control, pixel, landform_thresholds).value
    return {"landform_balanced_accuracy_paper_words": accuracy.value,
            "landform_balanced_accuracy_paper_words_shuffled_captions": shuffled,
            "landform_chance_paper_words": accuracy.chance}


METRIC_CODE = ("metrics.py", "evaluate.py", "denoising.py", "run.py", "per_cell.py")


def grammar_versions() -> dict[str, int]:
    """The versions of the rules an evaluation's numbers depend on beyond its code: the caption
    grammar (how descriptors become prompts) and the DEM rule (how outputs become metres)."""
    from components.captions.builder import CAPTION_GRAMMAR_VERSION
    from components.model.dem_rule import DEM_RULE_VERSION

    return {"caption_grammar": CAPTION_GRAMMAR_VERSION, "dem_rule": DEM_RULE_VERSION}


def evaluation_fingerprint(held_out, settings: EvaluateParams, landform_thresholds: Mapping[str, Any] | None,
                           shadow: bool) -> str:
    """What makes two evaluations comparable: the held-out pairs, the settings and the metric code.

    The promotion gate compares a challenger with the champion only when both carry the same
    fingerprint; otherwise the champion is evaluated again first.
    """
    import hashlib
    import json

    digest = hashlib.blake2b(digest_size=16)
    for array in (held_out.rgb, held_out.dem_m):
        digest.update(array.tobytes())
    digest.update(json.dumps([held_out.captions, repr(settings), landform_thresholds or {}, shadow,
                              grammar_versions()], sort_keys=True, default=str).encode())
    for name in METRIC_CODE:  # the code that computes the numbers (not the grids)
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()


def markdown_report(report: Mapping[str, Any], grid_paths: Mapping[str, Path], reports: Path) -> str:
    """reports/eval.md: the metrics table (model vs real reference, with directions) and the grids."""
    lines = [f"# Evaluation of {report.get('model')}", "",
             f"{report['generations']} generations from {report['held_out_cells']} held-out captions, seeds "
             f"{report['seeds']}, {report['steps']} steps, guidance {report['guidance']}. The real reference is the "
             "held-out pairs scored against the training pairs: what a perfect model would reach.", "",
             "| metric | direction | model | real reference |", "| --- | --- | --- | --- |"]
    for name, entry in report["metrics"].items():
        lines.append(f"| {name} | {entry['direction'].replace('_', ' ')} | {_cell(entry['value'])} | "
                     f"{_cell(entry['real_reference'])} |")
    lines += ["", f"Landform adherence with the captions shuffled across cells (control): "
              f"{_cell(report['landform_balanced_accuracy_shuffled_captions'])}; chance "
              f"{_cell(report['landform_chance'])}. Held-out denoising loss with the captions shuffled "
              f"(control): {_cell(report['heldout_denoising_loss_shuffled_captions'])}; a model that reads "
              "its captions has a lower loss with its own.", "",
              ("RGB-DEM coherence of the real held-out pairs by image variant: plain L2A "
               f"{_cell((report.get('rgb_dem_coherence_real_by_variant') or {}).get('plain_l2a'))} (the table's "
               "reference), shadow-corrected "
               f"{_cell((report.get('rgb_dem_coherence_real_by_variant') or {}).get('shadow_corrected'))} (what "
               "a model trained on shadow-corrected images should approach)."), "",
              ("Landform adherence in the paper's words: the same held-out captions saying \"mountains\" where "
               "they said \"low mountains\" or \"high mountains\" (the paper's prompts name four landforms), "
               "each scored at the level it names, so a request for mountains is met by either mountain class: "
               f"{_cell(report.get('landform_balanced_accuracy_paper_words'))}; captions shuffled (control) "
               f"{_cell(report.get('landform_balanced_accuracy_paper_words_shuffled_captions'))}; chance "
               f"{_cell(report.get('landform_chance_paper_words'))}."), ""]
    relief = report.get("relief_by_landform") or {}
    if relief:
        lines += ["Relief per landform asked for (median of the landform rules' relief): the model's "
                  "generations against the real held-out DEMs of that class, in metres (ratio 1 = the real "
                  "relief) and in model units (the raw output's range, before the DEM rule).", "",
                  "| landform | generated (m) | real (m) | ratio | generated (model) | real (model) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {name} | {_cell(entry['generated_median_m'])} | {_cell(entry['real_median_m'])} | "
                  f"{_cell(entry['ratio'])} | {_cell(entry.get('generated_median_model'))} | "
                  f"{_cell(entry.get('real_median_model'))} |" for name, entry in relief.items()]
        lines.append("")
    for name, path in grid_paths.items():
        lines += [f"## {name.replace('_', ' ')}", "", f"![{name}]({path.relative_to(reports).as_posix()})", ""]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4g}"

