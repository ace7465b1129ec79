"""The `ablation` flow: shadow correction x caption dropout x training seeds as DVC experiments, compared in MLflow.

Every variant of params.yaml ``ablation`` (shadow.enabled x caption dropout x ``ablation.seeds``)
is one ``dvc exp run --temp -n VARIANT -S KEY=VALUE ...`` (a Prefect task streaming its output; up
to ``ablation.parallel`` at once, or flow runs on the workers of ``ablation.work_pool``), its
training run nested under one MLflow parent run. A rerun skips each variant DVC and MLflow already
hold for the commit. The flow writes ``reports/ablation.md`` / ``.json``, the effects and the
shadow-correction grid, logs them to the parent run and publishes them as Prefect artifacts. The
steps: :mod:`components.evaluation.ablation_run`; the matrix and the table:
:mod:`components.evaluation.ablation`. `mesa ablation` (flows/cli.py) runs this flow.
"""
from __future__ import annotations

import os
import queue
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.runtime import task_run

from components.evaluation import ablation_run
from components.evaluation.ablation import Variant
from components.layout import ABLATION_JSON, ABLATION_MD

VARIANT_DEPLOYMENT = "ablation-variant/mesa-ablation-variant"  # components.ops.deployments FLOWS


@task(task_run_name="variant {variant.name}", cache_policy=NONE)
def run_variant(variant: Variant, project_dir: str, experiment: str, parent_run_id: str, uri: str,
                baseline: str, slots: queue.Queue, threads: int, gpus: int,
                jobs: ablation_run.RunningJobs) -> dict[str, Any]:
    """`dvc exp run --temp -n VARIANT -S KEY=VALUE ...` once a job slot is free (ablation.parallel),
    with its thread count pinned and, on a GPU machine, one GPU of its own; output to the Prefect log."""
    from flows.prefect_api import current_api_url, stage_process_env

    logger = get_run_logger()
    slot = slots.get()
    try:
        if jobs.stopping:
            raise RuntimeError(f"the ablation was stopped before {variant.name} started")
        env = ablation_run.pin_job(ablation_run.variant_env(stage_process_env(current_api_url(), task_run.id), uri,
                                                            parent_run_id, variant, baseline),
                                   threads, slot % gpus if gpus else None)
        logger.info("[%s] job slot %d, %d threads%s", variant.name, slot, threads,
                    f", GPU {slot % gpus}" if gpus else "")
        return ablation_run.run_variant_experiment(project_dir, variant, experiment, env,
                                                   on_line=lambda line: logger.info("[%s] %s", variant.name, line),
                                                   jobs=jobs)
    finally:
        slots.put(slot)


@task(task_run_name="variant {variant.name} on pool {pool}", cache_policy=NONE)
def run_variant_on_pool(variant: Variant, pool: str, experiment: str, parent_run_id: str, uri: str, baseline: str,
                        slots: queue.Queue, threads: int) -> dict[str, Any]:
    """One variant as a flow run of the ablation-variant deployment, run by a worker of the pool
    (ablation.work_pool): each worker's checkout must be at the baseline commit."""
    from prefect.deployments import run_deployment

    slot = slots.get()
    try:
        run = run_deployment(VARIANT_DEPLOYMENT, timeout=None, parameters={
            "shadow": variant.shadow, "caption_dropout": variant.caption_dropout, "seed": variant.seed,
            "experiment": experiment, "parent_run_id": parent_run_id, "uri": uri, "baseline": baseline,
            "threads": threads}, job_variables={}, tags=["mesa", "ablation-variant"])
    finally:
        slots.put(slot)
    if run.state is None or not run.state.is_completed():
        raise ablation_run.VariantFailed(f"ablation variant {variant.name!r} failed on work pool {pool!r} (flow run "
                                         f"{run.name}, {run.state.name if run.state else 'no state'}): see its log")
    return {"variant": variant.name, "ran": True, "seconds": round(run.total_run_time.total_seconds(), 1),
            "flow_run": str(run.id)}


@flow(name="ablation-variant", log_prints=True)
def ablation_variant_flow(project_dir: str, shadow: bool, caption_dropout: bool, seed: int, experiment: str,
                          parent_run_id: str, uri: str, baseline: str, threads: int) -> dict[str, Any]:
    """One variant job on the machine of the worker that runs it: `dvc exp run --temp` in its checkout of
    the project (which must be at commit `baseline`), logging to the ablation's MLflow parent run."""
    from flows.prefect_api import current_api_url, stage_process_env

    variant = Variant(shadow, caption_dropout, seed)
    ablation_run.require_checkout(project_dir, baseline)
    logger = get_run_logger()
    env = ablation_run.variant_env(stage_process_env(current_api_url(), None), uri, parent_run_id, variant, baseline)
    if threads > 0:
        env = ablation_run.pin_job(env, threads, None)
    return ablation_run.run_variant_experiment(project_dir, variant, experiment, env,
                                               on_line=lambda line: logger.info("[%s] %s", variant.name, line))


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
    # 1. The matrix, the baseline commit and the parent run.
    run = ablation_run.start_ablation(project_dir)
    root, commit = run.root, run.commit
    print(f"[ablation] {len(run.variants)} variants at commit {commit[:7]}; MLflow parent run {run.parent_id} "
          f"(experiment {run.experiment!r}, {run.uri})")
    jobs = ablation_run.RunningJobs()
    slots: queue.Queue = queue.Queue()  # opened once every job is submitted
    try:
        # 2. Each variant x seed as a DVC experiment, unless DVC and MLflow already hold it; up to
        #    ablation.parallel at once (DVC runs each --temp experiment in its own copy).
        todo, outcomes = ablation_run.variants_to_run(run, say=print)
        parallel = int(run.settings.get("parallel") or 1)
        threads = ablation_run.threads_per_job(run.settings, os.cpu_count() or 1)
        pool = run.settings.get("work_pool")
        gpus = 0 if pool else ablation_run.visible_gpus()
        print(f"[ablation] up to {parallel} job(s) at once, {threads} CPU thread(s) each"
              + (f", {gpus} GPU(s)" if gpus else "") + (f", run by the workers of pool {pool!r}" if pool else ""))
        if pool:  # each worker's machine: its own cores unless threads_per_job says otherwise
            futures = {v.name: run_variant_on_pool.submit(v, pool, run.experiment, run.parent_id, run.uri, commit,
                                                          slots, int(run.settings.get("threads_per_job") or 0))
                       for v in todo}
        else:
            futures = {v.name: run_variant.submit(v, str(root), run.experiment, run.parent_id, run.uri, commit,
                                                  slots, threads, gpus, jobs) for v in todo}
        ablation_run.open_job_slots(slots, parallel)
        outcomes.update({name: future.result() for name, future in futures.items()})

        # 3. Collect every variant's evaluation and validation loss from its training run.
        entries = ablation_run.collect_entries(run, outcomes, say=print)

        # 4. The side-by-side shadow-correction grid (caption dropout on, when the matrix has it).
        grid = ablation_run.shadow_grid_of(run, entries, say=print)

        # 5. Reports, and the same table on the parent run.
        summary = ablation_run.write_reports(run, entries, grid)
    except BaseException:
        jobs.stop_all()  # jobs run in worker threads: the main thread's exception does not reach them
        ablation_run.open_job_slots(slots, len(run.variants))  # jobs still waiting wake, see the stop, end
        run.finish("FAILED")
        raise
    run.finish("FINISHED")
    print(f"[ablation] wrote {ABLATION_MD} and {ABLATION_JSON}; logged to MLflow run {run.parent_id}")
    _publish(root, summary)
    return summary


def _publish(root, summary: dict[str, Any]) -> None:
    """The report as Prefect artifacts: ablation.md, the per-variant table and the effects table."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from components.tracking.review import effects_rows

    create_markdown_artifact(key="ablation-report", markdown=(root / ABLATION_MD).read_text(),
                             description=f"MLflow parent run {summary['parent_run_id']}")
    create_table_artifact(key="ablation-variants", table=summary["rows"], description="One row per variant")
    effects = effects_rows(summary["effects"])
    if effects:
        create_table_artifact(key="ablation-effects", table=effects, description="Effects with 95 % intervals")
