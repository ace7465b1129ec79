"""One ablation run: its MLflow parent run, each variant's DVC experiment and training run, the reports.

The matrix and the comparison table themselves are pure (:mod:`components.evaluation.ablation`);
this module does the I/O around them, in the order flows/ablation.py calls it:

1. :func:`start_ablation`: the matrix from params.yaml ``ablation``, the checked-out commit (the
   baseline DVC records experiments against) and the MLflow parent run.
2. :func:`variants_to_run` (:func:`dvc_experiments`, :func:`reuse_check`): what DVC and MLflow
   already hold, so that a rerun skips a finished variant; :func:`run_variant_experiment` runs one as
   ``dvc exp run --temp -n VARIANT -S KEY=VALUE ...`` (in a temporary copy of the repository; the
   workspace's params.yaml is never touched), its training run nested under the parent.
3. :func:`collect_entries`: every variant's evaluation (the evaluate stage's metrics.json, logged
   onto its training run) and validation loss.
4. :func:`shadow_grid`: paper Table 4 drawn with the shadow-on and the shadow-off model side by side.
5. :func:`write_reports`: ``reports/ablation.md`` and ``reports/ablation.json``, and the same table,
   files and grid on the parent run.

The registry is never touched: ablation models are compared, not promoted.
"""
from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from components.layout import (
    ABLATION_FOREST,
    ABLATION_GRID_DIR,
    ABLATION_JSON,
    ABLATION_MD,
    EXPERIMENT_START_LOCK,
    MLFLOW_PARENT_RUN_ENV,
    MLFLOW_RUN_TAGS_ENV,
    PARAMS_FILE,
    SEED_SPREAD,
)
from components.versioning.dvc_git import dvc_command

BASELINE_TAG = "mesa.ablation.baseline"
VALIDATION_METRIC = "val/loss"  # the training loop's fixed held-out validation loss (last value)
GRID_NAME = "shadow_correction"
REPRODUCING = "Reproducing experiment"  # what `dvc exp run` prints once its queue entry is taken
RAN_EXPERIMENTS = "Ran experiment(s): "  # what `dvc exp run` prints last
EFFECTS_RESAMPLES = 1000


class VariantFailed(RuntimeError):
    """`dvc exp run` of one variant exited non-zero; the message names it and ends with its last output."""


@dataclass
class AblationRun:
    """One ablation run under way.

    Attributes:
        root (Path): the project (a git repository).
        params (dict): params.yaml as the workspace has it.
        settings (dict): its ``ablation`` group.
        variants (list[Variant]): the matrix, shadow-major.
        experiment (str): the MLflow experiment of the parent and the training runs.
        commit (str): the checked-out commit (the baseline of the DVC experiments).
        dirty (str): ``"true"`` when tracked files have uncommitted changes, else ``"false"``.
        uri (str): the tracking URI.
        client (mlflow.MlflowClient): a client on `uri`.
        experiment_id (str): the id of `experiment`.
        parent_id (str): the parent run's id.
    """

    root: Path
    params: dict[str, Any]
    settings: dict[str, Any]
    variants: list[Variant]
    experiment: str
    commit: str
    dirty: str
    uri: str
    client: Any
    experiment_id: str
    parent_id: str

    def finish(self, status: str) -> None:
        """End the parent run with `status` (``FINISHED`` or ``FAILED``)."""
        self.client.set_terminated(self.parent_id, status)


# ----------------------------------------------------------------------------- 1. the parent run
def start_ablation(project_dir: str | Path) -> AblationRun:
    """Check the matrix and the checkout, then open the MLflow parent run of this ablation.

    Args:
        project_dir (str | Path): the project (a git repository with at least one commit: DVC
            experiments are recorded against the checked-out commit).

    Raises:
        ValueError: a malformed ``ablation`` group.
        KeyError: params.yaml lacks a key the variants set.
        RuntimeError: the project is not a git repository with a commit.
    """
    from components.params import load_params
    from components.tracking.lineage import git_state
    from components.tracking.store import ensure_experiment, mlflow_client, tracking_uri

    root = Path(project_dir).resolve()
    params = load_params(root)
    settings = params.get("ablation") or {}
    variants = matrix(settings)
    experiment = str(settings.get("experiment") or "mesa-ablation")
    missing = missing_keys(params, variants[0].overrides(experiment))
    if missing:
        raise KeyError(f"{root / PARAMS_FILE} has no {', '.join(missing)}, which the ablation sets "
                       "(`dvc exp run -S` only changes existing keys); restore them from git")
    commit, dirty = git_state(root)
    if commit == "unknown":
        raise RuntimeError(f"{root} is not a git repository with a commit: DVC experiments are recorded against "
                           "the checked-out commit (git init, git add, git commit first)")
    uri = tracking_uri(root)
    client = mlflow_client(uri=uri)
    # Created here with the project's artifact folder: created by a training run inside DVC's
    # temporary copy, its artifacts would land in that copy and vanish with it.
    experiment_id = ensure_experiment(client, experiment, root)
    names = [v.name for v in variants]
    parent = client.create_run(experiment_id, run_name=f"ablation-{commit[:7]}", tags={
        "mesa.git_commit": commit, "mesa.git_dirty": dirty, BASELINE_TAG: commit,
        "mesa.ablation.matrix": json.dumps({v.name: {"shadow": v.shadow, "caption_dropout": v.caption_dropout,
                                                     "seed": v.seed} for v in variants}),
        "mlflow.note.content": f"Ablation of {', '.join(names)} at commit {commit[:7]}; the variants' training "
                               "runs are nested below; the comparison is under Artifacts (ablation/).",
    })
    parent_id = parent.info.run_id
    client.log_batch(parent_id, params=[_param(f"ablation.{k}", settings.get(k))
                                        for k in ("shadow", "caption_dropout", "seeds")])
    return AblationRun(root=root, params=params, settings=settings, variants=variants, experiment=experiment,
                       commit=commit, dirty=dirty, uri=uri, client=client, experiment_id=experiment_id,
                       parent_id=parent_id)


def _param(key: str, value: Any):
    from mlflow.entities import Param

    return Param(key, json.dumps(value))


# ----------------------------------------------------------------------------- 2. the variants
def dvc_experiments(project_dir: str | Path, baseline: str) -> dict[str, dict[str, Any]]:
    """The finished DVC experiments of commit `baseline`: name -> {"rev", "params"} (see `experiments_of`).

    Args:
        project_dir (str | Path): the project.
        baseline (str): the commit.

    Raises:
        RuntimeError: `dvc exp show --json` failed (its error output is in the message).
    """
    done = subprocess.run(dvc_command("exp", "show", "--json"), cwd=project_dir, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`dvc exp show --json` failed in {project_dir} (exit {done.returncode}):\n{done.stderr}")
    return experiments_of(json.loads(done.stdout or "[]"), baseline)


def remove_dvc_experiment(project_dir: str | Path, name: str) -> None:
    """`dvc exp remove NAME` (before a variant of the same name runs again).

    Args:
        project_dir (str | Path): the project.
        name (str): the experiment (variant) name.
    """
    subprocess.run(dvc_command("exp", "remove", name), cwd=project_dir, check=True, capture_output=True, text=True)


def reuse_check(run: AblationRun, variant: Variant, known: dict[str, Any] | None
                ) -> tuple[str | None, tuple[Any, dict] | None]:
    """(why `variant` must run again or None, its evaluated training run when MLflow holds one).

    Args:
        run (AblationRun): the ablation.
        variant (Variant): one cell of the matrix.
        known (dict | None): its entry of :func:`dvc_experiments`, None when DVC has none.
    """
    wanted = expected_params(run.params, variant.overrides(run.experiment))
    held = evaluated_run(run.client, run.experiment_id, variant, run.commit) if known else None
    return rerun_reason(known, wanted, run.dirty, held is not None), held


def variants_to_run(run: AblationRun, say: Callable[[str], None]) -> tuple[list[Variant], dict[str, dict[str, Any]]]:
    """The variants to train, and the outcomes of those reused (DVC and MLflow already hold them).

    A variant DVC has under the same name but must run again (other params, a dirty workspace, its
    MLflow run gone) has that experiment removed first.

    Args:
        run (AblationRun): the ablation.
        say (Callable[[str], None]): where a line per reused or replaced variant goes.
    """
    known = dvc_experiments(run.root, run.commit)
    todo, reused = [], {}
    for variant in run.variants:
        have = known.get(variant.name)
        why, held = reuse_check(run, variant, have)
        if why is None:
            say(f"[ablation] {variant.name}: DVC has it (experiment {have['rev'][:7]}), run {held[0].info.run_id}; "
                "skipped")
            reused[variant.name] = {"variant": variant.name, "ran": False, "seconds": 0.0}
            continue
        if have:
            say(f"[ablation] {variant.name}: replacing the DVC experiment of the same name ({why})")
            remove_dvc_experiment(run.root, variant.name)
        todo.append(variant)
    return todo, reused


def open_job_slots(slots: queue.Queue, parallel: int) -> None:
    """Put `parallel` (at least one) job slot numbers into `slots`: a job takes one to start and gives
    it back when done (the slot also picks its GPU). The flow opens them once every job is
    submitted, so no job starts while it is still submitting (a SIGTERM then finds it waiting)."""
    for slot in range(max(1, parallel)):
        slots.put(slot)


def require_checkout(project_dir: str | Path, baseline: str) -> None:
    """Refuse to run a variant job in a checkout that is not at the ablation's commit (a pool
    worker's machine has its own checkout).

    Raises:
        RuntimeError: naming both commits and the git commands that fix it.
    """
    from components.tracking.lineage import git_state

    checked_out, _ = git_state(project_dir)
    if checked_out != baseline:
        raise RuntimeError(f"{project_dir} is at commit {checked_out[:7]}, the ablation at {baseline[:7]}: check out "
                           f"{baseline[:7]} on this worker's machine (git fetch && git checkout {baseline[:7]})")


def variant_env(base_env: Mapping[str, str], run_uri: str, parent_run_id: str, variant: Variant,
                baseline: str) -> dict[str, str]:
    """The environment of a variant's `dvc exp run`: the project's store, the parent run, the variant's tags.

    Args:
        base_env (Mapping[str, str]): the stage processes' environment (Prefect API, PATH).
        run_uri (str): the tracking URI (the temporary copy has no mlruns.db of its own).
        parent_run_id (str): the ablation's parent run.
        variant (Variant): the variant.
        baseline (str): the commit.
    """
    env = dict(base_env)
    # The training loop inside the variant's DVC experiment reads these.
    tags = {**variant.tags(), BASELINE_TAG: baseline, "mlflow.runName": variant.name}
    env.update({"MLFLOW_TRACKING_URI": run_uri, MLFLOW_PARENT_RUN_ENV: parent_run_id,
                MLFLOW_RUN_TAGS_ENV: json.dumps(tags)})
    env.pop("MLFLOW_RUN_ID", None)  # a run id from the caller's shell would hijack the training run
    return env


# What numerical libraries read for their thread count (torch's intra-op pool follows OMP_NUM_THREADS).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def threads_per_job(settings: Mapping[str, Any], cpu_count: int) -> int:
    """CPU threads each variant job uses: ``ablation.threads_per_job``, else the cores shared out
    over ``ablation.parallel`` jobs (at least one)."""
    if settings.get("threads_per_job"):
        return int(settings["threads_per_job"])
    return max(1, cpu_count // max(1, int(settings.get("parallel") or 1)))


def visible_gpus() -> int:
    """CUDA devices this process sees (0 on CPU machines)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pin_job(env: Mapping[str, str], threads: int, gpu: int | None) -> dict[str, str]:
    """`env` with the job's thread count and, on a GPU machine, only its own GPU visible.

    Args:
        env (Mapping[str, str]): the job's environment (from :func:`variant_env`).
        threads (int): CPU threads (:func:`threads_per_job`).
        gpu (int | None): the GPU index the job gets; None: no GPU is assigned (CPU machines).
    """
    pinned = {**env, **{name: str(threads) for name in THREAD_VARIABLES}}
    if gpu is not None:
        pinned["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return pinned


def variant_command(variant: Variant, experiment: str) -> list[str]:
    """``python -m dvc exp run --temp -n VARIANT -S KEY=VALUE ...`` for `variant`.

    Args:
        variant (Variant): the variant.
        experiment (str): the MLflow experiment its training logs into.
    """
    return dvc_command("exp", "run", "--temp", "-n", variant.name, *set_param_args(variant.overrides(experiment)))


class RunningJobs:
    """The variant jobs' processes running now, registered from the threads that run them, so that
    stopping the ablation (SIGTERM, Ctrl-C: raised in the main thread only) stops every job too."""

    def __init__(self) -> None:
        self._live: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self.stopping = False  # set by stop_all: jobs still waiting for a slot must not start

    def started(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._live.add(process)
            late = self.stopping
        if late:  # started while the ablation was being stopped
            from components.processes import stop_process_group

            stop_process_group(process, 5.0)

    def ended(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._live.discard(process)

    def stop_all(self, grace_s: float = 5.0) -> None:
        """Stop each running job's process group (SIGTERM, SIGKILL after `grace_s`), all at once."""
        from components.processes import stop_process_group

        with self._lock:
            self.stopping = True
            live = list(self._live)
        threads = [threading.Thread(target=stop_process_group, args=(process, grace_s)) for process in live]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def run_variant_experiment(project_dir: str | Path, variant: Variant, experiment: str, env: Mapping[str, str],
                           on_line: Callable[[str], None], tail_lines: int = 40,
                           jobs: RunningJobs | None = None) -> dict[str, Any]:
    """Run `variant` as a DVC experiment, each output line to `on_line`.

    It runs in its own process group: stopping the ablation (SIGTERM, Ctrl-C) stops the variant's
    whole run.

    Args:
        project_dir (str | Path): the project.
        variant (Variant): the variant.
        experiment (str): the MLflow experiment.
        env (Mapping[str, str]): from :func:`variant_env`.
        on_line (Callable[[str], None]): gets the command line, then each output line.
        tail_lines (int, default 40): output lines a failure's message ends with.
        jobs (RunningJobs | None, default None): where the job's process is registered while it runs.

    Returns:
        dict: ``{"variant", "ran": True, "seconds"}``.

    Raises:
        VariantFailed: `dvc exp run` exited non-zero (DVC keeps no experiment of it).
    """
    from components.locks import exclusive_lock
    from components.processes import run_streaming

    command = variant_command(variant, experiment)
    on_line(" ".join(command[2:]))
    started = time.perf_counter()
    tail: deque[str] = deque(maxlen=tail_lines)
    ran: list[str] = []
    # `dvc exp run --temp` stashes its experiment in the repository's one queue, then runs whatever
    # that queue holds until it is empty: two starting at once can each take the other's entry (and
    # the other's environment, which carries the variant's MLflow tags). So one job at a time goes
    # from launch to "Reproducing experiment" (its entry taken off the queue).
    starting = contextlib.ExitStack()
    starting.enter_context(exclusive_lock(Path(project_dir) / EXPERIMENT_START_LOCK,
                                          purpose="starting a DVC experiment of the ablation"))

    def show(line: str) -> None:
        if line.startswith(REPRODUCING):
            starting.close()
        elif line.startswith(RAN_EXPERIMENTS):
            ran.extend(name.strip() for name in line[len(RAN_EXPERIMENTS):].split(","))
        tail.append(line)
        on_line(line)

    processes: list[subprocess.Popen] = []

    def register(process: subprocess.Popen) -> None:
        processes.append(process)
        if jobs is not None:
            jobs.started(process)
    try:
        returncode = run_streaming(command, cwd=project_dir, env=env, on_line=show, on_start=register)
    finally:
        starting.close()
        for process in processes:
            if jobs is not None:
                jobs.ended(process)
    if returncode != 0:
        raise VariantFailed(f"ablation variant {variant.name!r} failed (dvc exp run exit {returncode}); "
                            f"DVC kept no experiment for it, so a rerun runs it again. Last output:\n"
                            + "\n".join(tail))
    if ran and ran != [variant.name]:
        raise VariantFailed(f"the DVC experiment job of {variant.name!r} also ran {', '.join(n for n in ran if n != variant.name)} "
                            "(another job's queue entry, tagged as this variant in MLflow): remove those "
                            "experiments (`dvc exp remove NAME`) and their MLflow runs, then run the ablation again")
    return {"variant": variant.name, "ran": True, "seconds": round(time.perf_counter() - started, 1)}


# ----------------------------------------------------------------------------- 3. MLflow's record
def variant_runs(client: Any, experiment_id: str, variant: Variant, baseline: str) -> list[Any]:
    """Finished training runs of `variant` from commit `baseline`, newest first.

    Args:
        client (mlflow.MlflowClient): a client on the ablation's store.
        experiment_id (str): the ablation's experiment.
        variant (Variant): the variant.
        baseline (str): the commit.
    """
    query = (f"tags.`mesa.variant` = '{variant.name}' and tags.`{BASELINE_TAG}` = '{baseline}' "
             "and attributes.status = 'FINISHED'")
    return list(client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=50))


def evaluation_of(client: Any, run: Any) -> dict[str, Any] | None:
    """The reports/metrics.json the evaluate stage logged onto `run` (artifact evaluation/metrics.json), or None.

    Args:
        client (mlflow.MlflowClient): a client on the run's store.
        run (mlflow.entities.Run): a training run.
    """
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

    Args:
        client (mlflow.MlflowClient): a client on the ablation's store.
        experiment_id (str): the ablation's experiment.
        variant (Variant): the variant.
        baseline (str): the commit.
    """
    for run in variant_runs(client, experiment_id, variant, baseline):
        report = evaluation_of(client, run)
        if report is not None:
            return run, report
    return None


def per_cell_of(client: Any, run: Any):
    """The per-cell table the evaluate stage logged onto `run` (evaluation/metrics_per_cell.parquet), or None.

    Args:
        client (mlflow.MlflowClient): a client on the run's store.
        run (mlflow.entities.Run): a training run.
    """
    from components.tracking.store import read_parquet_artifact

    return read_parquet_artifact(client, run.info.run_id, "evaluation/metrics_per_cell.parquet")


def model_uri_of(client: Any, run: Any) -> str:
    """The URI of the pipeline model the training run logged (``models:/<id>``, else ``runs:/<id>/pipeline``).

    Args:
        client (mlflow.MlflowClient): a client on the run's store.
        run (mlflow.entities.Run): a training run.
    """
    found = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'",
                                        max_results=1)
    return f"models:/{found[0].model_id}" if found else f"runs:/{run.info.run_id}/pipeline"


def collect_entries(run: AblationRun, outcomes: dict[str, dict[str, Any]],
                    say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One entry per variant: its factors, whether it ran, its training run, model URI, metrics and validation loss.

    Args:
        run (AblationRun): the ablation.
        outcomes (dict): variant name -> ``{"variant", "ran", "seconds"}`` of this run.
        say (Callable[[str], None], default print): a line per variant without an evaluated run.

    Returns:
        list[dict]: in matrix order, each with its arm, factor levels, seed and ``table`` (the
        per-cell evaluation, None without one); a variant without a finished, evaluated run keeps
        an empty row (``run_id`` None, no metrics).
    """
    entries = []
    for variant in run.variants:
        held = evaluated_run(run.client, run.experiment_id, variant, run.commit)
        entry = {"variant": variant.name, "arm": variant.arm, "shadow": variant.shadow,
                 "caption_dropout": variant.caption_dropout, "seed": variant.seed, "levels": variant.levels,
                 **outcomes[variant.name], "run_id": None, "model_uri": None, "metrics": {},
                 "validation_loss": None, "table": None}
        if held is None:
            say(f"[ablation] {variant.name}: no finished, evaluated training run in MLflow; its row stays empty")
        else:
            training, report = held
            entry.update(run_id=training.info.run_id, model_uri=model_uri_of(run.client, training),
                         metrics=report["metrics"], validation_loss=training.data.metrics.get(VALIDATION_METRIC),
                         table=per_cell_of(run.client, training))
        entries.append(entry)
    return entries


# ----------------------------------------------------------------------------- 4. the grid
def shadow_grid(project_dir: Path, params: dict[str, Any], models: dict[str, str]) -> Path:
    """Draw the Table 4 captions with each model in `models` (label -> MLflow URI) side by side.

    Writes ``reports/ablation/shadow_correction.png`` and its layout manifest (``.json`` beside it,
    with ``models``: label -> URI). When both already exist for the same models they are kept.

    Args:
        project_dir (Path): the project.
        params (dict): params.yaml (``evaluate`` and ``prepare`` are read).
        models (dict[str, str]): label -> model URI, from ``shadow_grid_models``.
    """
    from components.atomic import atomic_write, write_json_atomic
    from components.evaluation import grids
    from components.evaluation.run import EvaluateParams
    from components.tracking.models import load_pipeline

    folder = project_dir / ABLATION_GRID_DIR
    png, manifest = folder / f"{GRID_NAME}.png", folder / f"{GRID_NAME}.json"
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


def shadow_grid_of(run: AblationRun, entries: list[dict[str, Any]], say: Callable[[str], None]) -> Path | None:
    """The shadow-correction grid of this ablation's models (caption dropout on, when the matrix has
    it), or None when the matrix lacks an evaluated shadow on/off pair.

    Args:
        run (AblationRun): the ablation.
        entries (list[dict]): from :func:`collect_entries`.
        say (Callable[[str], None]): where the line saying what was drawn goes.
    """
    models = shadow_grid_models(entries)
    if not models:
        say("[ablation] no shadow-correction grid: the matrix lacks an evaluated shadow on/off pair")
        return None
    grid = shadow_grid(run.root, run.params, models)
    say(f"[ablation] shadow-correction grid ({', '.join(models)}) -> {grid.relative_to(run.root)}")
    return grid


# ----------------------------------------------------------------------------- 5. the reports
def write_reports(run: AblationRun, entries: list[dict[str, Any]], grid: Path | None,
                  n_boot: int = EFFECTS_RESAMPLES) -> dict[str, Any]:
    """reports/ablation.md and .json (every run, and per metric the arms and effects with intervals),
    the forest plot, reports/seed_spread.json, and the same tables, files and grid on the parent run.

    Args:
        run (AblationRun): the ablation.
        entries (list[dict]): from :func:`collect_entries`.
        grid (Path | None): from :func:`shadow_grid`, None without a grid.
        n_boot (int, default 1000): the effects' bootstrap resamples.

    Returns:
        dict: what reports/ablation.json holds (parent run, variants with ran/skipped, run ids,
        model URIs and metrics, the effects, the grid).
    """
    from components.atomic import atomic_write, write_json_atomic
    from components.evaluation import replicates

    root, client, parent_id = run.root, run.client, run.parent_id
    rows, directions = comparison_rows(entries)
    reference = real_reference(entries)
    analysis = replicates.analyse(replicates.arms_of(entries), directions, n_boot=n_boot)
    header = {"baseline commit": f"`{run.commit}`" + (" (with uncommitted changes)" if run.dirty == "true" else ""),
              "MLflow experiment": f"`{run.experiment}`", "parent run": f"`{parent_id}`",
              "training seeds per arm": ", ".join(str(s) for s in run.settings.get("seeds", [0])),
              "variants": ", ".join(f"{e['variant']} ({'trained' if e['ran'] else 'already in DVC'})"
                                    for e in entries)}
    grid_link = str(grid.relative_to(root / ABLATION_MD.parent)) if grid else None
    forest = None
    if analysis:
        image = replicates.forest_plot(analysis)
        atomic_write(root / ABLATION_FOREST, lambda tmp: image.save(tmp, format="PNG"))
        forest = root / ABLATION_FOREST
    text = markdown_table(rows, directions, reference, header, grid_link) + "\n" + replicates.markdown(
        analysis, str(forest.relative_to(root / ABLATION_MD.parent)) if forest else None)
    atomic_write(root / ABLATION_MD, lambda tmp: Path(tmp).write_text(text))
    plain = [{k: v for k, v in e.items() if k != "table"} for e in entries]
    summary = {"experiment": run.experiment, "parent_run_id": parent_id, "baseline_commit": run.commit,
               "git_dirty": run.dirty, "directions": directions, "rows": rows, "real_reference": reference,
               "variants": plain, "effects": analysis, "grid": str(grid.relative_to(root)) if grid else None,
               "forest_plot": str(forest.relative_to(root)) if forest else None}
    write_json_atomic(root / ABLATION_JSON, summary)
    spread = replicates.spread_record(analysis, f"ablation run {parent_id} at commit {run.commit[:7]}")
    if spread["metrics"]:
        write_json_atomic(root / SEED_SPREAD, spread)
        client.log_artifact(parent_id, str(root / SEED_SPREAD), "ablation")
    client.log_table(parent_id, data={key: [row.get(key) for row in rows] for key in rows[0]},
                     artifact_file="ablation/comparison.json")
    effect_rows = [{"metric": name, **{k: v for k, v in effect.items()}} for name, entry in analysis.items()
                   for effect in entry["effects"]]
    if effect_rows:
        client.log_table(parent_id, data={key: [row.get(key) for row in effect_rows] for key in effect_rows[0]},
                         artifact_file="ablation/effects_table.json")
    for path in (ABLATION_MD, ABLATION_JSON):
        client.log_artifact(parent_id, str(root / path), "ablation")
    for path in ([grid, grid.with_suffix(".json")] if grid else []) + ([forest] if forest else []):
        client.log_artifact(parent_id, str(path), "ablation")
    client.set_tag(parent_id, "mesa.ablation.runs", json.dumps({e["variant"]: e["run_id"] for e in entries}))
    return summary
