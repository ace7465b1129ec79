"""`mesa stage prepare`: training samples (both image variants, DEM, masks, descriptors)."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE

from components.atomic import atomic_folder, recover_folder, write_json_atomic
from components.layout import CAPTIONS_FILE, CURATED_INDEX, PREPARE_REPORT, SAMPLE_STATS, SAMPLES_DIR
from components.params import load_config


@task(task_run_name="prepare {label}", cache_policy=NO_CACHE)
def _prepare_shard(label: str, cells, descriptors, splits, params, dem_scale_m: float, out: str) -> dict:
    from components.samples.stats import write_prepared_shard

    return write_prepared_shard(cells, descriptors, splits, params, dem_scale_m, out)


@flow(name="stage-prepare")
def prepare_stage_flow(project_dir: str) -> dict:
    """Training samples: both image variants, DEM, masks and descriptors, in a few large shards."""
    import pandas as pd

    from components.curation.curate import absolute_shard_paths
    from components.samples import stats as sample_stats
    from components.samples.prepare import PrepareParams, iter_groups
    from components.samples.split import assign_split

    root = Path(project_dir)
    config = load_config(root)
    recover_folder(root / config.data.raw_dir)  # a synth stage killed mid-swap left only data/raw.old
    settings = config.prepare
    prepare = PrepareParams.from_config(settings, config.validate.cloud_classes)
    index = absolute_shard_paths(pd.read_parquet(root / CURATED_INDEX), root)
    descriptors = pd.read_parquet(root / CAPTIONS_FILE)
    splits = dict(zip(index["grid_cell"], assign_split(index["grid_cell"], settings.test_share, settings.split_salt)))
    dem_scale = sample_stats.dem_scale(index, splits, settings.dem_scale_m)

    out = root / SAMPLES_DIR
    groups = list(iter_groups(index))
    labels = [f"part_{i:05d}" for i in range(len(groups))]
    # The old samples stay complete until the new ones are swapped in.
    with atomic_folder(out) as staging:
        futures = _prepare_shard.map(label=labels, cells=[g for _, g in groups], descriptors=unmapped(descriptors),
                                     splits=unmapped(splits), params=unmapped(prepare),
                                     dem_scale_m=unmapped(dem_scale),
                                     out=[str(staging / f"{label}.parquet") for label in labels])
        results = [f.result() for f in futures]
        stats = sample_stats.summarise(results, index, descriptors, splits, prepare, dem_scale, settings.dem_knee_m)
        sample_stats.write_stats(staging / SAMPLE_STATS.name, stats)
    report = {k: stats[k] for k in ("samples", "rejected", "dem_scale_m", "dem_clipped_share", "l1c_missing")}
    write_json_atomic(root / PREPARE_REPORT, report)
    print(f"[prepare] {stats['samples']} samples ({stats['splits']}) in {len(results)} shards, "
          f"{len(stats['rejected_cells'])} cells rejected, DEM scale {dem_scale:g} m"
          f"{'' if settings.dem_knee_m is None else f', companded above {settings.dem_knee_m:g} m'} "
          f"(clipped {stats['dem_clipped_share']:.2%}) -> {out}", flush=True)
    return report
