"""Evaluation core on the micro samples: held-out pairs, fixed-seed generations, scores, report."""
from __future__ import annotations

import json

import numpy as np
import pytest

from components.evaluation.evaluate import (generate_for_cells, held_out_pairs, metrics_report, score,
                                            shuffled_captions)
from components.evaluation.metrics import metric_directions


@pytest.fixture(scope="module")
def samples(prepared_project):
    project, _ = prepared_project
    stats = json.loads((project / "data/samples/stats.json").read_text())
    shards = sorted((project / "data/samples").glob("*.parquet"))
    pixel = stats["prepare"]["footprint_px"] * 10.0 / stats["prepare"]["image_px"]
    return shards, pixel


def test_held_out_pairs_are_the_test_split_in_metres(samples):
    shards, _ = samples
    test, train = held_out_pairs(shards, "test"), held_out_pairs(shards, "train")
    assert not set(test.cell_ids) & set(train.cell_ids)
    assert test.rgb.dtype == np.uint8 and test.rgb.shape[-1] == 3 and test.dem_m.shape == test.rgb.shape[:3]
    assert all(c.startswith("A Sentinel-2 image of") for c in test.captions)
    assert np.isfinite(train.dem_m).all() and np.ptp(train.dem_m) > 10  # metres, not normalised units


def test_generations_cover_every_cell_with_fixed_seeds_and_score(samples):
    from components.evaluation.grids import pipeline_generate
    from testsupport.pipelines import tiny_random_pipeline

    shards, pixel = samples
    cells = held_out_pairs(shards, "train", limit=4)
    pipeline = tiny_random_pipeline(cells.captions, image_px=cells.rgb.shape[1])
    generate = pipeline_generate(pipeline, num_inference_steps=2, guidance_scale=2.0)
    generated = generate_for_cells(generate, cells, seeds=[42, 50], at_least=10, batch_size=8)
    assert len(generated) >= 10 and set(generated.cell_ids) == set(cells.cell_ids)
    again = generate_for_cells(generate, cells, seeds=[42, 50], at_least=10, batch_size=3)
    # the same seeds give the same terrain whatever the batching (CPU batch rounding aside)
    assert again.seeds == generated.seeds and np.allclose(again.dem_m, generated.dem_m, atol=0.01)

    reference = held_out_pairs(shards, "train")
    model = score(generated, reference, pixel)
    assert set(metric_directions()) <= set(model)
    assert 0.0 <= model["landform_balanced_accuracy"] <= 1.0 and model["diversity"] >= 0.0
    real = score(reference, reference, pixel)
    assert real["realism_w1_slope_deg"] == 0.0 and real["biome_adherence_js"] == 0.0

    control = shuffled_captions(cells)
    assert control.landform == cells.landform and sorted(control.captions) == sorted(cells.captions)
    report = metrics_report(model, real, generations=len(generated))
    assert report["metrics"]["diversity"]["real_reference"] is None  # one sample per real caption: NaN -> null
    assert report["metrics"]["landform_balanced_accuracy"]["direction"] == "higher_is_better"
    json.dumps(report)


def test_evaluation_fingerprint_changes_with_the_held_out_set_and_the_settings_only():
    from types import SimpleNamespace

    from components.evaluation.run import EvaluateParams, evaluation_fingerprint

    rng = np.random.default_rng(0)
    held_out = SimpleNamespace(rgb=rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8),
                               dem_m=rng.normal(size=(3, 8, 8)).astype(np.float32), captions=["a", "b", "c"])
    settings = EvaluateParams()
    first = evaluation_fingerprint(held_out, settings, None, True)
    assert first == evaluation_fingerprint(held_out, EvaluateParams(), None, True)
    changed_dem = SimpleNamespace(rgb=held_out.rgb, dem_m=held_out.dem_m + 1.0, captions=held_out.captions)
    assert evaluation_fingerprint(changed_dem, settings, None, True) != first
    assert evaluation_fingerprint(held_out, EvaluateParams(steps=10), None, True) != first
    assert evaluation_fingerprint(held_out, settings, None, False) != first


def test_the_evaluation_report_is_readable_by_others_under_umask_022(samples, tmp_path):
    """reports/ is read by teammates and served: metrics.json, eval.md and the grids come out 0644."""
    import os
    import stat

    from components.evaluation.run import EvaluateParams, run_evaluation
    from testsupport.pipelines import tiny_random_pipeline

    shards, _ = samples
    stats = json.loads((shards[0].parent / "stats.json").read_text())
    pipeline = tiny_random_pipeline(["A Sentinel-2 image of hills"], image_px=stats["prepare"]["image_px"],
                                    stats=stats)
    settings = EvaluateParams(seeds=(42,), min_generations=1, steps=1, grid_cells=1,
                              grid_captions=("A Sentinel-2 image of hills",), batch_size=8, denoising_samples=2)
    old = os.umask(0o022)
    try:
        run_evaluation(pipeline, shards, stats, settings, tmp_path / "reports", "tiny", progress=lambda _: None)
    finally:
        os.umask(old)
    written = sorted(p for p in (tmp_path / "reports").rglob("*"))
    names = {str(p.relative_to(tmp_path / "reports")) for p in written}
    assert {"metrics.json", "eval.md", "eval", "eval/seed_variability.png", "eval/real_vs_generated.json"} <= names
    assert {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {
        str(p.relative_to(tmp_path)): ("0o755" if p.is_dir() else "0o644") for p in written}
