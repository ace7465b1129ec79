"""`mesa stage NAME`: one DVC stage, as a Prefect flow (a subflow of the retrain run when there is one).

Each stage reads params.yaml, writes only its own outs (dvc.yaml) and its own metrics file.
Per-shard work is Prefect task mapping, so it shows up per shard on the run's Prefect server.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from components.atomic import write_json_atomic
from components.params import load_params
from flows.prefect_api import run_as_subflow

REPORTS_DIR = "reports"
SYNTH_OUT = Path("data/raw")  # the synth stage's DVC output (dvc.yaml)
CURATED_DIR = Path("data/curated")
CAPTIONS_DIR = Path("data/captions")
SAMPLES_DIR = Path("data/samples")


@task(task_run_name="synth shard {index}", cache_policy=NO_CACHE)
def _build_synth_shard(index: int, build) -> dict:
    return build(index)


@flow(name="stage-synth")
def synth_stage_flow(project_dir: str) -> dict:
    """Generate the synthetic Major TOM world into data/raw (a fresh folder each run)."""
    from components.majortom.synthetic.world import SynthParams, build_world

    root = Path(project_dir)
    params = load_params(root)
    synth = SynthParams(**params.get("synth", {}))
    out = root / SYNTH_OUT
    source, raw_dir = params["data"]["source"], Path(params["data"]["raw_dir"])
    if source == "majortom":
        if raw_dir == SYNTH_OUT:
            raise SystemExit(f"data.source is majortom but data.raw_dir is {SYNTH_OUT}, the synth stage's own "
                             "output (DVC clears it before each run): put real shards in another folder, e.g. "
                             "data/majortom, and set data.raw_dir to it")
        out.mkdir(parents=True, exist_ok=True)
        (out / "SOURCE.txt").write_text(f"data.source is majortom: stages read real shards from {raw_dir}\n")
        write_json_atomic(root / REPORTS_DIR / "synth.json", {"source": source, "raw_dir": str(raw_dir)})
        return {"source": source}
    if source != "synth" or raw_dir != SYNTH_OUT:
        raise SystemExit(f"data.source must be synth (with data.raw_dir {SYNTH_OUT}) or majortom; "
                         f"got source={source!r}, raw_dir={str(raw_dir)!r}")
    # DVC owns the folder: rebuild it whole so no shard of an earlier, larger world survives.
    staging = out.with_name(out.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)

    def map_over_shards(build, indices):
        return [f.result() for f in _build_synth_shard.map(index=indices, build=unmapped(build))]

    report = build_world(staging, synth, map_shards=map_over_shards,
                         progress=lambda done, total, what: print(f"[synth] {done}/{total} {what}", flush=True))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    # Metrics are versioned by DVC: only what the data is, not how long it took.
    write_json_atomic(root / REPORTS_DIR / "synth.json", {k: v for k, v in report.items() if k != "seconds"})
    print(f"[synth] {report['cells_total']} cells ({report['cells_broken']} deliberately broken), "
          f"{report['shards']} shards per source, {report['bytes'] / 1e6:.1f} MB in {report['seconds']:.1f} s -> {out}")
    return report


@task(task_run_name="measure {label}", cache_policy=NO_CACHE)
def _measure_shard(label: str, cells, cloud_classes: list[int]):
    from components.curation.measure import measure_cells

    return measure_cells(cells, cloud_classes)


@flow(name="stage-validate")
def validate_stage_flow(project_dir: str) -> dict:
    """Curate the raw data: contracts, per-cell statistics (one decode pass), the paper's filters."""
    import pandas as pd

    from components.curation import curate
    from components.curation.contracts import (DEFAULT_CONTRACT_PARAMS, build_data_docs, get_context,
                                               metadata_suite, row_failures, stats_suite, validate_table)
    from components.curation.filters import apply_filters
    from components.majortom.shards import drop_duplicate_cells

    root = Path(project_dir)
    params = load_params(root)
    settings = params["validate"]
    contract_params = {**DEFAULT_CONTRACT_PARAMS, **(settings.get("contract") or {})}
    curated = root / CURATED_DIR
    validation = curated / "validation"
    sources = curate.read_sources(root / params["data"]["raw_dir"])
    context = get_context(validation)  # a file context: results and Data Docs stay inspectable
    rejects = []

    # 1. Metadata contracts, per source, after the duplicate rule.
    for source, metadata in sources.metadata.items():
        unique, _ = drop_duplicate_cells(metadata, source)
        suite = metadata_suite(source, contract_params)
        result = validate_table(unique, suite, context=context)
        result.save_json(validation / f"{source}_metadata.json")
        rejects.append(curate.contract_rejects(unique, row_failures(unique, suite), result, source))
        print(f"[validate] {source} metadata: {len(unique)} cells, contract "
              f"{'passed' if result.success else 'found per-cell failures'}", flush=True)

    # 2. Pair the sources and measure every paired cell once, a shard per task.
    pairing = curate.pair(sources)
    groups = curate.shard_groups(pairing)
    labels = [Path(g["s2l2a_shard"].iloc[0]).name for g in groups]
    results = [f.result() for f in _measure_shard.map(label=labels, cells=groups,
                                                       cloud_classes=unmapped(list(settings["cloud_classes"])))]
    stats = pd.concat([frame for frame, _ in results], ignore_index=True)
    unreadable = curate.reader_rejects([row for _, rows in results for row in rows])
    rejects.append(unreadable)
    print(f"[validate] measured {len(stats)} cells in {len(groups)} shards; "
          f"{unreadable['grid_cell'].nunique()} could not be read", flush=True)

    # 3. The statistics contract and the filters, on the cells that could be read.
    readable = stats[~stats["grid_cell"].isin(set(unreadable["grid_cell"]))].merge(
        pairing.cells[["grid_cell", "centre_lat", "centre_lon"]], on="grid_cell")
    suite = stats_suite(contract_params)
    result = validate_table(readable, suite, context=context)
    result.save_json(validation / "cell_statistics.json")
    rejects.append(curate.contract_rejects(readable, row_failures(readable, suite), result, "stats"))
    hits = apply_filters(readable, settings["filters"])
    rejects.append(hits.assign(source="stats", detail="rule " + hits["reason"]))

    # 4. Every input cell in the index or in rejected, with its reasons.
    index, rejected = curate.assemble(pairing, stats, pd.concat(rejects, ignore_index=True))
    # Paths relative to the project: the same data gives the same bytes in any clone.
    index = curate.relative_shard_paths(index, root)
    rejected["details"] = [[relative_to_project(d, root) for d in details] for details in rejected["details"]]
    report = curate.curation_report(sources, index, rejected)
    curate.write_outputs(curated, index, rejected, report, root / REPORTS_DIR / "curation.json")
    docs = build_data_docs(validation)
    print(f"[validate] kept {report['kept_cells']} of {report['input_cells']} cells; rejected per reason: "
          f"{report['rejected_per_reason']} -> {curated}/index.parquet, rejected.parquet; "
          f"Data Docs: {docs}", flush=True)
    return report


@flow(name="stage-captions")
def captions_stage_flow(project_dir: str) -> dict:
    """Caption descriptors for every kept cell, and the full caption (all four descriptors)."""
    import pandas as pd

    from components.atomic import atomic_write
    from components.captions.builder import build_captions
    from components.captions.descriptors import describe_cells, descriptor_summary

    root = Path(project_dir)
    params = load_params(root)
    index = pd.read_parquet(root / CURATED_DIR / "index.parquet")
    # Layer files named relative to the project resolve against it, wherever the stage runs.
    layers = {role: ({**spec, "path": str(root / spec["path"])} if isinstance(spec, dict) and "path" in spec
                     and not Path(spec["path"]).is_absolute() else spec)
              for role, spec in (params.get("layers") or {}).items()}
    descriptors = describe_cells(index, layers, params.get("captions"))
    # The paper's template names the biome; ecoregion names come in through augmentation.
    descriptors["caption"] = build_captions(descriptors, anonymise_ecoregion=True)
    # Layer provenance goes to the metrics file (paths relative to the project), not into the data:
    # pandas would store attrs in the parquet, and absolute paths would make clones differ.
    provenance = {k: relative_to_project(str(v), root) for k, v in descriptors.attrs.get("layers", {}).items()}
    notes = [relative_to_project(n, root) for n in descriptors.attrs.get("notes", [])]
    descriptors.attrs = {}
    out = root / CAPTIONS_DIR / "captions.parquet"
    atomic_write(out, lambda tmp: descriptors.to_parquet(tmp, index=False))
    report = {**descriptor_summary(descriptors), "layers": provenance, "notes": notes}
    write_json_atomic(root / REPORTS_DIR / "captions.json", report)
    for caption in descriptors["caption"].head(3):
        print(f"[captions] e.g. {caption!r}", flush=True)
    print(f"[captions] {len(descriptors)} cells described -> {out}", flush=True)
    return {"cells": len(descriptors)}


@task(task_run_name="prepare {label}", cache_policy=NO_CACHE)
def _prepare_shard(label: str, cells, descriptors, splits, params, dem_scale_m: float, out: str) -> dict:
    from components.samples.stats import write_prepared_shard

    return write_prepared_shard(cells, descriptors, splits, params, dem_scale_m, out)


@flow(name="stage-prepare")
def prepare_stage_flow(project_dir: str) -> dict:
    """Training samples: both image variants, DEM, masks and descriptors, in a few large shards."""
    import shutil

    import pandas as pd

    from components.curation.curate import absolute_shard_paths
    from components.samples import stats as sample_stats
    from components.samples.prepare import PrepareParams, iter_groups
    from components.samples.split import assign_split

    root = Path(project_dir)
    params = load_params(root)
    settings = params["prepare"]
    prepare = PrepareParams.from_params(settings, params["validate"]["cloud_classes"])
    index = absolute_shard_paths(pd.read_parquet(root / CURATED_DIR / "index.parquet"), root)
    descriptors = pd.read_parquet(root / CAPTIONS_DIR / "captions.parquet")
    splits = dict(zip(index["grid_cell"], assign_split(index["grid_cell"], settings["test_share"],
                                                        settings["split_salt"])))
    dem_scale = sample_stats.dem_scale(index, splits, settings["dem_scale_m"])

    out = root / SAMPLES_DIR
    staging = out.with_name(out.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    groups = list(iter_groups(index))
    labels = [f"part_{i:05d}" for i in range(len(groups))]
    futures = _prepare_shard.map(label=labels, cells=[g for _, g in groups], descriptors=unmapped(descriptors),
                                 splits=unmapped(splits), params=unmapped(prepare), dem_scale_m=unmapped(dem_scale),
                                 out=[str(staging / f"{label}.parquet") for label in labels])
    results = [f.result() for f in futures]
    stats = sample_stats.summarise(results, index, descriptors, splits, prepare, dem_scale)
    sample_stats.write_stats(staging / "stats.json", stats)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    report = {k: stats[k] for k in ("samples", "rejected", "dem_scale_m", "dem_clipped_share", "l1c_missing")}
    write_json_atomic(root / REPORTS_DIR / "prepare.json", report)
    print(f"[prepare] {stats['samples']} samples ({stats['splits']}) in {len(results)} shards, "
          f"{len(stats['rejected_cells'])} cells rejected, DEM scale {dem_scale:g} m "
          f"(clipped {stats['dem_clipped_share']:.2%}) -> {out}", flush=True)
    return report


MODELS_DIR = Path("models")
LATENTS_DIR = Path("data/latents")


def _pretrained_vae(model_params: dict) -> str | None:
    """The pretrained VAE folder: model.vae, else model.pretrained's vae/ (SD 2.1 layout), else None."""
    if model_params.get("vae"):
        return str(model_params["vae"])
    if model_params.get("pretrained"):
        return str(Path(model_params["pretrained"]) / "vae")
    return None


@flow(name="stage-vae")
def vae_stage_flow(project_dir: str) -> dict:
    """The VAE both modalities share: trained on the plain-L2A samples, or a pretrained one linked."""
    import json

    from components.model.vae import VaeTrainParams, run_vae_stage

    root = Path(project_dir)
    params = load_params(root)
    stats = json.loads((root / SAMPLES_DIR / "stats.json").read_text())
    shards = sorted(str(p) for p in (root / SAMPLES_DIR).glob("*.parquet"))
    pretrained = _pretrained_vae(params.get("model") or {})
    if pretrained and not Path(pretrained).is_absolute():
        pretrained = str(root / pretrained)
    report = run_vae_stage(shards, stats, VaeTrainParams.from_params(params["vae"]), root / MODELS_DIR / "vae",
                           pretrained=pretrained, progress=lambda line: print(f"[vae] {line}", flush=True))
    write_json_atomic(root / REPORTS_DIR / "vae.json", report)
    print(f"[vae] -> {root / MODELS_DIR / 'vae'}; report {REPORTS_DIR}/vae.json", flush=True)
    return report


@flow(name="stage-latents")
def latents_stage_flow(project_dir: str) -> dict:
    """Every sample encoded once by the frozen VAE (or a 'disabled' manifest when latents.enabled is off)."""
    import json

    from diffusers import AutoencoderKL

    from components.samples.latents import encode_samples_to_latents, write_disabled_manifest

    root = Path(project_dir)
    params = load_params(root)
    out = root / LATENTS_DIR
    if not params["latents"]["enabled"]:
        shutil.rmtree(out, ignore_errors=True)
        write_disabled_manifest(out)
        print("[latents] latents.enabled is false: the trainer encodes on the fly", flush=True)
        return {"enabled": False}
    stats = json.loads((root / SAMPLES_DIR / "stats.json").read_text())
    vae = AutoencoderKL.from_pretrained(str(root / MODELS_DIR / "vae"), local_files_only=True)
    shards = sorted(str(p) for p in (root / SAMPLES_DIR).glob("*.parquet"))
    staging = out.with_name(out.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    report = encode_samples_to_latents(shards, vae, staging, dem_scale_m=stats["dem_scale_m"],
                                       batch_size=int(params["latents"]["batch_size"]), progress=_progress("latents"))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    print(f"[latents] {report.get('samples')} samples -> {out}", flush=True)
    return report


@flow(name="stage-train")
def train_stage_flow(project_dir: str) -> dict:
    """Train through `accelerate launch` with the config named in train.accelerate_config."""
    import json
    import os
    import subprocess
    import sys

    root = Path(project_dir)
    params = load_params(root)
    train = params["train"]
    config = root / train["accelerate_config"]
    if not config.exists():
        raise SystemExit(f"train.accelerate_config names {config}, which does not exist (see infra/accelerate/)")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--num_processes", str(int(train["num_processes"])), "-m", "flows.train_entry", str(root)]
    print(f"[train] {' '.join(command[2:])}", flush=True)
    process = subprocess.Popen(command, cwd=root, env=dict(os.environ), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, bufsize=1)
    for line in process.stdout:
        print(line.rstrip(), flush=True)
    if process.wait() != 0:
        raise SystemExit(f"training failed (exit code {process.returncode}); its log is above. "
                         "A rerun resumes from the last checkpoint in models/checkpoints/.")
    result = json.loads((root / "reports" / "train.json").read_text())
    return result


@flow(name="stage-evaluate")
def evaluate_stage_flow(project_dir: str, model: str | None = None, compare_with: list[str] | None = None,
                        reports_dir: str | None = None) -> dict:
    """Grids and terrain metrics of a model (default models/pipeline, into reports/), logged to its MLflow run."""
    import json

    from components.evaluation.run import EvaluateParams, run_evaluation
    from components.tracking.models import load_pipeline

    root = Path(project_dir)
    params = load_params(root)
    model = model or "models/pipeline"
    stats = json.loads((root / SAMPLES_DIR / "stats.json").read_text())
    others = {label: load_pipeline(label, root) for label in (compare_with or [])}
    report = run_evaluation(load_pipeline(model, root), sorted((root / SAMPLES_DIR).glob("*.parquet")), stats,
                            EvaluateParams.from_params(params.get("evaluate") or {}),
                            Path(reports_dir) if reports_dir else root / REPORTS_DIR, model,
                            compare_with=others, landform_thresholds=params["captions"].get("landform_thresholds"),
                            progress=lambda line: print(line, flush=True))
    if reports_dir is None:
        _log_evaluation(root, model, report)
    return report


def _log_evaluation(root: Path, model: str, report: dict) -> None:
    """Metrics and grids onto the MLflow run that trained models/pipeline (when it is known)."""
    import json

    from components.tracking.runs import RunLogger

    record = root / MODELS_DIR / "train_run.json"
    if model != "models/pipeline" or not record.exists():
        print("[evaluate] not logged to MLflow: no training run recorded for this model", flush=True)
        return
    run_id = json.loads(record.read_text())["run_id"]
    tracker = RunLogger.resume(run_id, root, system_metrics=False)
    values = {f"eval/{k}": v["value"] for k, v in report["metrics"].items() if v["value"] is not None}
    step = int(json.loads((root / REPORTS_DIR / "train.json").read_text()).get("step", 0))
    tracker.log_metrics(values, step=step)
    for path in report["grids"].values():
        tracker.log_artifact(path, "evaluation")
    tracker.log_artifact(str(root / REPORTS_DIR / "metrics.json"), "evaluation")
    tracker.finish()
    print(f"[evaluate] logged to MLflow run {run_id}", flush=True)


def _progress(label: str):
    def show(done: int, total: int, *rest) -> None:
        extra = " ".join(f"{r:.4g}" if isinstance(r, float) else str(r) for r in rest)
        print(f"[{label}] {done}/{total} {extra}".rstrip(), flush=True)

    return show


STAGE_FLOWS = {"synth": synth_stage_flow, "validate": validate_stage_flow, "captions": captions_stage_flow,
               "prepare": prepare_stage_flow, "vae": vae_stage_flow, "latents": latents_stage_flow,
               "train": train_stage_flow, "evaluate": evaluate_stage_flow}


def relative_to_project(text: str, root: Path) -> str:
    """Text with the project's absolute path taken out of the file paths it names."""
    return text.replace(f"{Path(root).resolve()}/", "").replace(f"{root}/", "")


def run_stage(name: str, project_dir: str | Path) -> object:
    """Run stage `name` in `project_dir` (as a subflow of the retrain run when started by one)."""
    if name not in STAGE_FLOWS:
        raise SystemExit(f"unknown stage {name!r}; stages: {sorted(STAGE_FLOWS)}")
    stage_flow = STAGE_FLOWS[name]
    workers = int(load_params(project_dir).get(name, {}).get("workers", 1))
    stage_flow = stage_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=workers))
    return run_as_subflow(stage_flow, project_dir=str(project_dir))
