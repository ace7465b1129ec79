"""The evaluate stage on the micro world: metrics.json with directions, eval.md, grids with manifests."""
from __future__ import annotations

import json
import shutil

import numpy as np
import yaml

from tests.conftest import PROJECT_ROOT


def test_evaluate_writes_metrics_report_and_grids_for_an_untrained_model(prepared_project, tmp_path):
    from components.evaluation.grids import TABLE2_CAPTIONS
    from components.evaluation.metrics import metric_directions
    from components.params import load_params
    from flows.stages.evaluate import evaluate_stage_flow
    from testsupport.pipelines import tiny_random_pipeline

    base, _ = prepared_project
    project = tmp_path / "p"
    project.mkdir()
    (project / "data").symlink_to(base / "data", target_is_directory=True)
    params = load_params(base)
    params["evaluate"].update(seeds=[42, 50], min_generations=6, steps=2, grid_cells=2)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(PROJECT_ROOT / "configs", project / "configs")
    stats = json.loads((base / "data/samples/stats.json").read_text())
    tiny_random_pipeline(["A Sentinel-2 image of hills"], image_px=stats["prepare"]["image_px"],
                         stats=stats).save_pretrained(project / "models/pipeline")

    out = tmp_path / "reports"
    report = evaluate_stage_flow(str(project), reports_dir=str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["metrics"]) == set(metric_directions()) | {"heldout_denoising_loss"}
    # The held-out denoising loss of a random model: a real positive number, with its control.
    assert metrics["metrics"]["heldout_denoising_loss"]["value"] > 0
    shuffled = metrics["heldout_denoising_loss_shuffled_captions"]  # needs two held-out cells
    assert (shuffled > 0) if metrics["held_out_cells"] >= 2 else (shuffled is None)
    assert len(metrics["evaluation_fingerprint"]) == 32
    assert all(m["direction"] in ("higher_is_better", "lower_is_better") for m in metrics["metrics"].values())
    assert metrics["generations"] >= 6 and metrics["seeds"] == [42, 50]
    markdown = (out / "eval.md").read_text()
    assert "| landform_balanced_accuracy |" in markdown and "seed_variability.png" in markdown
    seeds = json.loads((out / "eval/seed_variability.json").read_text())
    assert len(seeds["panels"]) == len(TABLE2_CAPTIONS) * 2
    assert {p["caption"] for p in seeds["panels"]} == set(TABLE2_CAPTIONS)
    assert {p["seed"] for p in seeds["panels"]} == {42, 50}
    real = json.loads((out / "eval/real_vs_generated.json").read_text())
    assert {p["source"] for p in real["panels"]} == {"real", "generated"}
    assert set(report["grids"]) == {"seed_variability", "caption_influence", "real_vs_generated"}
    # The paper's landform words: reported with their own chance (four words, or fewer on micro).
    assert 0 < metrics["landform_chance_paper_words"] <= 1 and "paper's words" in markdown
    assert metrics["caption_grammar"] >= 2 and metrics["dem_rule"] >= 1
    # coherence's real reference for both image variants: the synthetic world's L1C keeps the terrain's
    # shading and its L2A is terrain-flattened, so the corrected images follow the DEM far more
    by_variant = metrics["rgb_dem_coherence_real_by_variant"]
    assert by_variant["plain_l2a"] == metrics["metrics"]["rgb_dem_coherence"]["real_reference"]
    assert by_variant["shadow_corrected"] > by_variant["plain_l2a"] and "shadow-corrected" in markdown
    # Every generation and every real held-out pair, one row each, keyed by (cell, seed).
    import pandas as pd

    from components.evaluation.per_cell import set_metrics

    table = pd.read_parquet(out / "metrics_per_cell.parquet")
    generated, real = table[table["source"] == "generated"], table[table["source"] == "real"]
    assert len(generated) == metrics["generations"] and len(real) == metrics["held_out_cells"]
    assert not generated.duplicated(["cell", "seed"]).any()
    # ... from which the headline numbers come back
    numbers = set_metrics(generated, reference=real)
    assert round(numbers["landform_balanced_accuracy"], 6) == metrics["metrics"]["landform_balanced_accuracy"]["value"]
    assert round(numbers["realism_w1_slope_deg"], 6) == metrics["metrics"]["realism_w1_slope_deg"]["value"]
    # ... and the held-out denoising loss from its own rows (sample x repeat), exactly as reported
    from components.evaluation.per_cell import denoising_loss, metric_statistic

    terms = table[table["source"] == "denoising"]
    assert len(terms) >= 32 and set(terms["cell"]) <= set(real["cell"])  # held-out samples only
    reported = metrics["metrics"]["heldout_denoising_loss"]["value"]
    assert abs(metric_statistic("heldout_denoising_loss")(table) - reported) <= 1e-5 * reported
    if shuffled is None:  # one held-out caption: nothing to shuffle it with
        assert np.isnan(denoising_loss(table, shuffled=True))
    else:
        assert abs(denoising_loss(table, shuffled=True) - shuffled) <= 1e-5 * shuffled
