"""`mesa ablation`: shadow correction x caption dropout as DVC experiments, compared in MLflow.

Wiring only; the matrix, the params each variant sets and the comparison table are
:mod:`components.evaluation.ablation`.

Every variant of the matrix in params.yaml ``ablation`` (shadow.enabled x
captions.augmentation.caption_dropout) is one ``dvc exp run --temp -n VARIANT -S KEY=VALUE ...``:
DVC writes the overrides into the params.yaml of a temporary copy of the repository (the
workspace's file is never touched), runs the pipeline there (stages whose inputs did not change
come back from its run cache; train and evaluate run) and records the experiment under the
current commit. Each variant is a Prefect task whose log streams the experiment's output; the
stage flows inside report to the same Prefect API as its subflows.

MLflow holds the comparison: one parent run in experiment ``ablation.experiment`` and, nested under
it, the training run of every variant (tags ``mesa.variant``, ``mesa.shadow``,
``mesa.caption_dropout``; the evaluate stage logs ``eval/*`` onto it). At the end the flow writes
``reports/ablation.md`` and ``reports/ablation.json`` (every metric of reports/metrics.json per
variant, plus the training validation loss), logs the table to the parent run (``log_table``) and
draws the shadow-correction grid (paper Table 4: shadow on vs off, caption dropout on) into
``reports/ablation/``.

A rerun skips each variant DVC already has for the current commit (same name, same params) whose
training run MLflow still holds; an uncommitted change to tracked files reruns every variant
(DVC would bake it into the experiment, so the old one no longer matches). The flow never touches
the model registry: ablation models are compared, not promoted.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Annotated, Any

import typer
from prefect import flow, get_run_logger, task
from prefect.runtime import task_run

from components.evaluation.ablation import (
    Variant,
    comparison_rows,
    expected_params,
    experiments_of,
    markdown_table,
    matrix,
    missing_keys,
    real_reference,
    rerun_reason,
    set_param_args,
    shadow_grid_models,
)

PARENT_ENV = "MESA_MLFLOW_PARENT_RUN_ID"
TAGS_ENV = "MESA_MLFLOW_RUN_TAGS"
BASELINE_TAG = "mesa.ablation.baseline"
VALIDATION_METRIC = "val/loss"  # the training loop's fixed held-out validation loss (last value)
REPORT_MD = Path("reports/ablation.md")
REPORT_JSON = Path("reports/ablation.json")
GRID_DIR = Path("reports/ablation")
GRID_NAME = "shadow_correction"


class VariantFailed(RuntimeError):
    """`dvc exp run` of one variant exited non-zero; the message names it and ends with its last output."""


# ----------------------------------------------------------------------------- DVC
def _python_tool(*args: str) -> list[str]:
    """A DVC command from this interpreter's environment (also when `mesa` runs without an active venv)."""
    return [sys.executable, "-m", "dvc", *args]


def dvc_experiments(project_dir: Path, baseline: str) -> dict[str, dict[str, Any]]:
    """The finished DVC experiments of commit `baseline`: name -> {"rev", "params"} (see `experiments_of`)."""
    done = subprocess.run(_python_tool("exp", "show", "--json"), cwd=project_dir, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`dvc exp show --json` failed in {project_dir} (exit {done.returncode}):\n{done.stderr}")
    return experiments_of(json.loads(done.stdout or "[]"), baseline)


# ----------------------------------------------------------------------------- MLflow
def variant_runs(client: Any, experiment_id: str, variant: Variant, baseline: str) -> list[Any]:
    """Finished training runs of `variant` from commit `baseline`, newest first."""
    query = (f"tags.`mesa.variant` = '{variant.name}' and tags.`{BASELINE_TAG}` = '{baseline}' "
             "and attributes.status = 'FINISHED'")
    return list(client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=50))


def evaluation_of(client: Any, run: Any) -> dict[str, Any] | None:
    """The reports/metrics.json the evaluate stage logged onto `run` (artifact evaluation/metrics.json), or None."""
    import tempfile

    import mlflow.artifacts

    if not any(f.path == "evaluation/metrics.json" for f in client.list_artifacts(run.info.run_id, "evaluation")):
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="evaluation/metrics.json",
                                                   dst_path=folder, tracking_uri=client.tracking_uri)
        return json.loads(Path(path).read_text())


def evaluated_run(client: Any, experiment_id: str, variant: Variant, baseline: str) -> tuple[Any, dict] | None:
    """(run, its metrics.json) of the newest finished, evaluated training run of `variant`, or None.

    A retrained variant whose model came out bit-identical gets its evaluate stage back from DVC's
    run cache, which logs nothing: the older run evaluated the same model, so it answers.
    """
    for run in variant_runs(client, experiment_id, variant, baseline):
        report = evaluation_of(client, run)
        if report is not None:
            return run, report
    return None


def model_uri_of(client: Any, run: Any) -> str:
    """The URI of the pipeline model the training run logged (``models:/<id>``, else ``runs:/<id>/pipeline``)."""
    found = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'",
                                        max_results=1)
    return f"models:/{found[0].model_id}" if found else f"runs:/{run.info.run_id}/pipeline"


# ----------------------------------------------------------------------------- the grid
def shadow_grid(project_dir: Path, params: dict[str, Any], models: dict[str, str]) -> Path:
    """Draw the Table 4 captions with each model in `models` (label -> MLflow URI) side by side.

    Writes ``reports/ablation/shadow_correction.png`` and its layout manifest (``.json`` beside it,
    with ``models``: label -> URI). When both already exist for the same models they are kept.
    """
    from components.atomic import atomic_write, write_json_atomic
    from components.evaluation import grids
    from components.evaluation.run import EvaluateParams
    from components.tracking.models import load_pipeline

    png, manifest = project_dir / GRID_DIR / f"{GRID_NAME}.png", project_dir / GRID_DIR / f"{GRID_NAME}.json"
    if png.exists() and manifest.exists() and json.loads(manifest.read_text()).get("models") == models:
        return png
    settings = EvaluateParams.from_params(params.get("evaluate") or {})
    prepare = params["prepare"]
    pixel = float(prepare["footprint_px"]) * 10.0 / float(prepare["image_px"])  # metres (10 m Sentinel-2 pixels)
    generators = {label: grids.pipeline_generate(load_pipeline(uri, project_dir), settings.steps, settings.guidance)
                  for label, uri in models.items()}
    image, layout = grids.model_comparison_grid(generators, grids.TABLE4_CAPTIONS, settings.seeds[0],
                                                pixel_size_m=pixel,
                                                title="Shadow correction on (left) vs off (right)")
    atomic_write(png, lambda tmp: image.save(tmp, format="PNG"))
    write_json_atomic(manifest, {**layout.to_dict(), "models": models})
    return png


# ----------------------------------------------------------------------------- Prefect
@task(task_run_name="variant {variant.name}")
def run_variant(variant: Variant, project_dir: str, experiment: str, parent_run_id: str, uri: str,
                baseline: str) -> dict[str, Any]:
    """`dvc exp run --temp -n VARIANT -S KEY=VALUE ...`, streaming its output to the Prefect log."""
    from components.processes import run_streaming
    from flows.prefect_api import stage_process_env
    from flows.retrain import current_api_url

    logger = get_run_logger()
    overrides = variant.overrides(experiment)
    command = _python_tool("exp", "run", "--temp", "-n", variant.name, *set_param_args(overrides))
    env = stage_process_env(current_api_url(), task_run.id)
    # The temporary copy has no mlruns.db: point every run at the project's store, under the parent.
    env.update({"MLFLOW_TRACKING_URI": uri, PARENT_ENV: parent_run_id,
                TAGS_ENV: json.dumps({**variant.tags(), BASELINE_TAG: baseline, "mlflow.runName": variant.name})})
    env.pop("MLFLOW_RUN_ID", None)  # a run id from the caller's shell would hijack the training run
    logger.info("[%s] %s", variant.name, " ".join(command[2:]))
    started = time.perf_counter()
    tail: deque[str] = deque(maxlen=40)

    def show(line: str) -> None:
        tail.append(line)
        logger.info("[%s] %s", variant.name, line)

    # Its own process group: stopping the ablation (SIGTERM, Ctrl-C) stops the variant's whole run.
    returncode = run_streaming(command, cwd=project_dir, env=env, on_line=show)
    if returncode != 0:
        raise VariantFailed(f"ablation variant {variant.name!r} failed (dvc exp run exit {returncode}); "
                            f"DVC kept no experiment for it, so a rerun runs it again. Last output:\n"
                            + "\n".join(tail))
    return {"variant": variant.name, "ran": True, "seconds": round(time.perf_counter() - started, 1)}


@flow(name="ablation", log_prints=True)
def ablation_flow(project_dir: str) -> dict[str, Any]:
    """Run the ablation matrix as DVC experiments under one MLflow parent run; write and log the comparison.

    Args:
        project_dir (str): the project (a git repository with at least one commit: DVC
            experiments are recorded against the checked-out commit).

    Returns:
        dict: what reports/ablation.json holds (parent run, variants with ran/skipped, run ids,
        model URIs and metrics, the grid).
    """
    from mlflow import MlflowClient

    from components.atomic import atomic_write, write_json_atomic
    from components.params import load_params
    from components.tracking.lineage import git_state
    from components.tracking.runs import ensure_experiment, tracking_uri

    # 1. The matrix, the baseline commit and the parent run.
    root = Path(project_dir).resolve()
    params = load_params(root)
    settings = params.get("ablation") or {}
    variants = matrix(settings)
    experiment = str(settings.get("experiment") or "mesa-ablation")
    missing = missing_keys(params, variants[0].overrides(experiment))
    if missing:
        raise KeyError(f"{root / 'params.yaml'} has no {', '.join(missing)}, which the ablation sets "
                       "(`dvc exp run -S` only changes existing keys); restore them from git")
    commit, dirty = git_state(root)
    if commit == "unknown":
        raise RuntimeError(f"{root} is not a git repository with a commit: DVC experiments are recorded against "
                           "the checked-out commit (git init, git add, git commit first)")
    uri = tracking_uri(root)
    client = MlflowClient(uri)
    # Created here with the project's artifact folder: created by a training run inside DVC's
    # temporary copy, its artifacts would land in that copy and vanish with it.
    experiment_id = ensure_experiment(client, experiment, root)
    names = [v.name for v in variants]
    parent = client.create_run(experiment_id, run_name=f"ablation-{commit[:7]}", tags={
        "mesa.git_commit": commit, "mesa.git_dirty": dirty, BASELINE_TAG: commit,
        "mesa.ablation.matrix": json.dumps({v.name: {"shadow": v.shadow, "caption_dropout": v.caption_dropout}
                                            for v in variants}),
        "mlflow.note.content": f"Ablation of {', '.join(names)} at commit {commit[:7]}; the variants' training "
                               "runs are nested below; the comparison is under Artifacts (ablation/).",
    })
    parent_id = parent.info.run_id
    client.log_batch(parent_id, params=[_param(f"ablation.{k}", settings.get(k)) for k in ("shadow", "caption_dropout")])
    print(f"[ablation] {len(variants)} variants at commit {commit[:7]}; MLflow parent run {parent_id} "
          f"(experiment {experiment!r}, {uri})")
    try:
        # 2. Each variant as a DVC experiment, unless DVC and MLflow already hold it.
        known = dvc_experiments(root, commit)
        outcomes = {}
        for variant in variants:
            wanted = expected_params(params, variant.overrides(experiment))
            have = known.get(variant.name)
            held = evaluated_run(client, experiment_id, variant, commit) if have else None
            why = rerun_reason(have, wanted, dirty, held is not None)
            if why is None:
                print(f"[ablation] {variant.name}: DVC has it (experiment {have['rev'][:7]}), run "
                      f"{held[0].info.run_id}; skipped")
                outcomes[variant.name] = {"variant": variant.name, "ran": False, "seconds": 0.0}
                continue
            if have:
                print(f"[ablation] {variant.name}: replacing the DVC experiment of the same name ({why})")
                subprocess.run(_python_tool("exp", "remove", variant.name), cwd=root, check=True,
                               capture_output=True, text=True)
            outcomes[variant.name] = run_variant(variant, str(root), experiment, parent_id, uri, commit)

        # 3. Collect every variant's evaluation and validation loss from its training run.
        entries = []
        for variant in variants:
            held = evaluated_run(client, experiment_id, variant, commit)
            entry = {"variant": variant.name, "shadow": variant.shadow, "caption_dropout": variant.caption_dropout,
                     **outcomes[variant.name], "run_id": None, "model_uri": None, "metrics": {},
                     "validation_loss": None}
            if held is None:
                print(f"[ablation] {variant.name}: no finished, evaluated training run in MLflow; its row stays empty")
            else:
                run, report = held
                entry.update(run_id=run.info.run_id, model_uri=model_uri_of(client, run), metrics=report["metrics"],
                             validation_loss=run.data.metrics.get(VALIDATION_METRIC))
            entries.append(entry)
        rows, directions = comparison_rows(entries)
        reference = real_reference(entries)

        # 4. The side-by-side shadow-correction grid (caption dropout on, when the matrix has it).
        grid = None
        models = shadow_grid_models(entries)
        if models:
            grid = shadow_grid(root, params, models)
            print(f"[ablation] shadow-correction grid ({', '.join(models)}) -> {grid.relative_to(root)}")
        else:
            print("[ablation] no shadow-correction grid: the matrix lacks an evaluated shadow on/off pair")

        # 5. Reports, and the same table on the parent run.
        header = {"baseline commit": f"`{commit}`" + (" (with uncommitted changes)" if dirty == "true" else ""),
                  "MLflow experiment": f"`{experiment}`", "parent run": f"`{parent_id}`",
                  "variants": ", ".join(f"{e['variant']} ({'trained' if e['ran'] else 'already in DVC'})"
                                        for e in entries)}
        grid_link = str(grid.relative_to(root / REPORT_MD.parent)) if grid else None
        atomic_write(root / REPORT_MD, lambda tmp: Path(tmp).write_text(
            markdown_table(rows, directions, reference, header, grid_link)))
        summary = {"experiment": experiment, "parent_run_id": parent_id, "baseline_commit": commit,
                   "git_dirty": dirty, "directions": directions, "rows": rows, "real_reference": reference,
                   "variants": entries, "grid": str(grid.relative_to(root)) if grid else None}
        write_json_atomic(root / REPORT_JSON, summary)
        client.log_table(parent_id, data={key: [row.get(key) for row in rows] for key in rows[0]},
                         artifact_file="ablation/comparison.json")
        for path in (REPORT_MD, REPORT_JSON):
            client.log_artifact(parent_id, str(root / path), "ablation")
        if grid:
            client.log_artifact(parent_id, str(grid), "ablation")
            client.log_artifact(parent_id, str(grid.with_suffix(".json")), "ablation")
        client.set_tag(parent_id, "mesa.ablation.runs", json.dumps({e["variant"]: e["run_id"] for e in entries}))
    except BaseException:
        client.set_terminated(parent_id, "FAILED")
        raise
    client.set_terminated(parent_id, "FINISHED")
    print(f"[ablation] wrote {REPORT_MD} and {REPORT_JSON}; logged to MLflow run {parent_id}")
    return summary


def _param(key: str, value: Any):
    from mlflow.entities import Param

    return Param(key, json.dumps(value))


# ----------------------------------------------------------------------------- CLI
def ablation_command(
    project: Annotated[Path | None, typer.Option(help="Project folder (default: the one holding params.yaml, "
                                                         "searched upwards from here).")] = None,
) -> None:
    """The shadow correction x caption dropout matrix (params.yaml `ablation`) as DVC experiments, compared in MLflow.

    Each variant is a `dvc exp run --temp` of the current commit; a rerun skips what DVC already has.

    Writes reports/ablation.md, reports/ablation.json and the shadow-correction grid (reports/ablation/).
    """
    from flows.prefect_api import owned_prefect_api
    from flows.settings import project_root

    root = project_root(project)
    started = time.perf_counter()
    with owned_prefect_api() as api_url:
        typer.echo(f"Prefect API for this run: {api_url}")
        try:
            summary = ablation_flow(project_dir=str(root))
        except VariantFailed as failure:
            raise SystemExit(f"\nThe ablation stopped: {failure}\nFix the cause and rerun; finished variants are kept.")
    typer.echo("\nVariants:")
    for entry in summary["variants"]:
        state = "trained" if entry["ran"] else "already in DVC, skipped"
        typer.echo(f"  {entry['variant']:22s} {state:24s} MLflow run {entry['run_id']}")
    typer.echo(f"\nDone in {time.perf_counter() - started:.0f} s. Comparison: {root / REPORT_MD} "
               f"(and {REPORT_JSON.name}); grid: {summary['grid'] or 'none'}; MLflow parent run "
               f"{summary['parent_run_id']} in experiment {summary['experiment']!r} (`mlflow ui --backend-store-uri "
               f"{_ui_store(root)}`); DVC: `dvc exp show`.")


def _ui_store(root: Path) -> str:
    from components.tracking.runs import tracking_uri

    return tracking_uri(root)
