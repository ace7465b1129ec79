"""`mesa stage evaluate`: grids and terrain metrics of a model."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from components.layout import (
    METRICS_PER_CELL_REPORT,
    METRICS_REPORT,
    PIPELINE_DIR,
    REPORTS_DIR,
    RUN_RECORD,
    SAMPLE_STATS,
    SAMPLES_DIR,
    TRAIN_REPORT,
)
from components.params import load_config, load_params


@flow(name="stage-evaluate")
def evaluate_stage_flow(project_dir: str, model: str | None = None, compare_with: list[str] | None = None,
                        reports_dir: str | None = None) -> dict:
    """Grids and terrain metrics of a model (default models/pipeline, into reports/), logged to its MLflow run."""
    import json

    from components.evaluation.run import EvaluateParams, run_evaluation
    from components.tracking.models import load_pipeline

    root = Path(project_dir)
    config, params = load_config(root), load_params(root)
    model = model or PIPELINE_DIR.as_posix()
    stats = json.loads((root / SAMPLE_STATS).read_text())
    others = {label: load_pipeline(label, root) for label in (compare_with or [])}
    report = run_evaluation(load_pipeline(model, root), sorted((root / SAMPLES_DIR).glob("*.parquet")), stats,
                            EvaluateParams.from_config(config.evaluate),
                            Path(reports_dir) if reports_dir else root / REPORTS_DIR, model,
                            # as written: the thresholds are part of the evaluation fingerprint
                            compare_with=others, landform_thresholds=params["captions"].get("landform_thresholds"),
                            shadow=config.shadow.enabled,
                            progress=lambda line: print(line, flush=True))
    if reports_dir is None:
        _log_evaluation(root, model, report)
    return report


def _log_evaluation(root: Path, model: str, report: dict) -> None:
    """Metrics and grids onto the MLflow run that trained models/pipeline (when it is known)."""
    import json

    from components.tracking.run_logger import RunLogger

    record = root / RUN_RECORD
    if model != PIPELINE_DIR.as_posix() or not record.exists():
        print("[evaluate] not logged to MLflow: no training run recorded for this model", flush=True)
        return
    run_id = json.loads(record.read_text())["run_id"]
    tracker = RunLogger.resume(run_id, root, system_metrics=False)
    values = {f"eval/{k}": v["value"] for k, v in report["metrics"].items() if v["value"] is not None}
    step = int(json.loads((root / TRAIN_REPORT).read_text()).get("step", 0))
    tracker.log_metrics(values, step=step)
    for path in report["grids"].values():
        tracker.log_artifact(path, "evaluation")
    tracker.log_artifact(str(root / METRICS_REPORT), "evaluation")
    if (root / METRICS_PER_CELL_REPORT).exists():  # for paired comparisons with later models
        tracker.log_artifact(str(root / METRICS_PER_CELL_REPORT), "evaluation")
    tracker.finish()
    print(f"[evaluate] logged to MLflow run {run_id}", flush=True)
