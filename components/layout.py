"""The project's fixed paths, and the environment variables its processes pass each other.

Paths are relative to the project folder (the one holding params.yaml and dvc.yaml); a stage joins
them to its ``project_dir``, or takes them from :class:`ProjectLayout`. Paths that params.yaml
sets (``data.raw_dir``, ``data.ingest.out_dir``, ``train.accelerate_config``, layer files) are not
here: they stay params. The DVC outs, metrics and plots in dvc.yaml are these paths
(tests/unit/test_layout.py holds the two together).

=====================  =========================================================================
group                  names
=====================  =========================================================================
project files          ``PARAMS_FILE``, ``DVC_FILE``, ``DVC_LOCK``
data (DVC outs)        ``SYNTH_OUT``, ``CURATED_DIR`` (``CURATED_INDEX``, ``CURATED_REJECTED``,
                       ``VALIDATION_DIR``), ``CAPTIONS_FILE``, ``SAMPLES_DIR`` (``SAMPLE_STATS``),
                       ``LATENTS_DIR``
models                 ``VAE_DIR``, ``PIPELINE_DIR``, ``CHECKPOINTS_DIR``, ``RUN_RECORD``
reports                one per stage (``SYNTH_REPORT`` ... ``TRAIN_CURVE``); the evaluation's
                       files by name inside any reports folder (``METRICS_FILE``, ``EVAL_MD``,
                       ``EVAL_GRIDS``); ``PROMOTION_REPORT``, ``EVALUATIONS_DIR``, ``ABLATION_*``
tracking and locks     ``MLFLOW_DB``, ``ARTIFACTS_DIR``, ``SPILL_DIR``, ``PREFECT_HOME_DIR``,
                       ``RETRAIN_LOCK``, ``REGISTRY_LOCK``, ``EXPERIMENT_START_LOCK``
environment variables  ``*_ENV``: the names one process sets for the processes it starts
=====================  =========================================================================

This module imports nothing outside the standard library: every stage loads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# ----------------------------------------------------------------------------- project files
PARAMS_FILE = "params.yaml"
DVC_FILE = "dvc.yaml"
DVC_LOCK = "dvc.lock"

# ----------------------------------------------------------------------------- data
DATA_DIR = Path("data")
SYNTH_OUT = DATA_DIR / "raw"  # the synth stage's out: real shards never go there (DVC clears it)
CURATED_DIR = DATA_DIR / "curated"
CURATED_INDEX = CURATED_DIR / "index.parquet"
CURATED_REJECTED = CURATED_DIR / "rejected.parquet"
# GX results and Data Docs: not a DVC out (results carry run times; data versions must not)
VALIDATION_DIR = CURATED_DIR / "validation"
CAPTIONS_DIR = DATA_DIR / "captions"
CAPTIONS_FILE = CAPTIONS_DIR / "captions.parquet"
SAMPLES_DIR = DATA_DIR / "samples"
SAMPLE_STATS = SAMPLES_DIR / "stats.json"
LATENTS_DIR = DATA_DIR / "latents"

# ----------------------------------------------------------------------------- models
MODELS_DIR = Path("models")
VAE_DIR = MODELS_DIR / "vae"
PIPELINE_DIR = MODELS_DIR / "pipeline"
# Not DVC outs: a checkpoint and the run record name an MLflow run, whose id differs per machine.
CHECKPOINTS_DIR = MODELS_DIR / "checkpoints"
RUN_RECORD = MODELS_DIR / "train_run.json"

# ----------------------------------------------------------------------------- reports
REPORTS_DIR = Path("reports")
SYNTH_REPORT = REPORTS_DIR / "synth.json"
INGEST_REPORT = REPORTS_DIR / "ingest.json"
CURATION_REPORT = REPORTS_DIR / "curation.json"
CAPTIONS_REPORT = REPORTS_DIR / "captions.json"
PREPARE_REPORT = REPORTS_DIR / "prepare.json"
VAE_REPORT = REPORTS_DIR / "vae.json"
TRAIN_REPORT = REPORTS_DIR / "train.json"
TRAIN_CURVE = REPORTS_DIR / "train_curve.json"
# An evaluation writes these names into a reports folder: reports/ for the evaluate stage,
# EVALUATIONS_DIR/<label> for a model evaluated on request.
METRICS_FILE = "metrics.json"
METRICS_PER_CELL_FILE = "metrics_per_cell.parquet"  # every measure per generation (per_cell.py)
EVAL_MD = "eval.md"
EVAL_GRIDS_SUBDIR = "eval"
# The grids every evaluation draws (components.evaluation.run), one PNG each: paper Table 2, paper
# Table 3, held-out cells real vs generated.
EVAL_GRIDS = ("seed_variability", "caption_influence", "real_vs_generated")
METRICS_REPORT = REPORTS_DIR / METRICS_FILE
METRICS_PER_CELL_REPORT = REPORTS_DIR / METRICS_PER_CELL_FILE
EVAL_REPORT = REPORTS_DIR / EVAL_MD
EVAL_GRIDS_DIR = REPORTS_DIR / EVAL_GRIDS_SUBDIR
EVALUATIONS_DIR = REPORTS_DIR / "evaluations"
PROMOTION_REPORT = REPORTS_DIR / "promotion.json"
ABLATION_MD = REPORTS_DIR / "ablation.md"
ABLATION_JSON = REPORTS_DIR / "ablation.json"
ABLATION_GRID_DIR = REPORTS_DIR / "ablation"
ABLATION_FOREST = REPORTS_DIR / "ablation" / "effects.png"  # the effects' intervals, one row each
SEED_SPREAD = REPORTS_DIR / "seed_spread.json"  # seed-to-seed SD per metric from an ablation (the gate's margins)

# ----------------------------------------------------------------------------- tracking and locks
MLFLOW_DB = "mlruns.db"  # the embedded tracking store (when MLFLOW_TRACKING_URI is unset)
ARTIFACTS_DIR = "mlartifacts"
SPILL_DIR = "mlruns-spill"  # what a run could not send before its tracking server came back
PREFECT_HOME_DIR = ".prefect"
RETRAIN_LOCK = ".mesa-retrain.lock"  # one retrain per workspace: stages share data/, models/, dvc.lock
EXPERIMENT_START_LOCK = ".mesa-experiment-start.lock"  # one `dvc exp run --temp` at a time takes its queue entry
REGISTRY_LOCK = ".mesa-registry.lock"  # serialises promotions and rollbacks of the project's registry

# ----------------------------------------------------------------------------- environment variables
# Set by the retrain flow for each stage process it starts (flows/prefect_api.py):
PARENT_TASK_RUN_ENV = "MESA_PARENT_TASK_RUN_ID"  # the Prefect task whose subflow the stage's flow becomes
STAGE_STARTED_ENV = "MESA_STAGE_STARTED_FILE"  # a file the stage creates: it ran (not restored from cache)
# Set by the ablation for each variant's DVC experiment, read by the training loop:
MLFLOW_PARENT_RUN_ENV = "MESA_MLFLOW_PARENT_RUN_ID"  # nest the training run under this MLflow run
MLFLOW_RUN_TAGS_ENV = "MESA_MLFLOW_RUN_TAGS"  # a JSON object of extra tags for the training run
# Set by tests around stage and training processes:
RECORD_IMPORTS_ENV = "MESA_RECORD_IMPORTS"  # a folder: each process writes the project files it imported
TRAIN_TRACE_ENV = "MESA_TRAIN_TRACE_DIR"  # a folder: each training rank writes what it trained on there
# Read by `mesa infra`, set by the user:
POSTGRES_URL_ENV = "MESA_POSTGRES_URL"


def _joined(relative: str | Path) -> property:
    """A read-only attribute: `relative` joined to the layout's ``root``."""
    return property(lambda self: self.root / relative, doc=f"``root / {Path(relative).as_posix()}``")


@dataclass(frozen=True)
class ProjectLayout:
    """The fixed paths of one project folder, joined to its root (absolute when ``root`` is).

    Attributes:
        root (Path): the project folder (holds params.yaml and dvc.yaml).
        params, dvc_lock (Path): ``PARAMS_FILE``, ``DVC_LOCK``.
        curated_index, captions, samples, sample_stats, latents (Path): the data stages' outputs.
        vae, pipeline, checkpoints, run_record (Path): the models and the training run's record.
        reports (Path): ``REPORTS_DIR``.
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    params = _joined(PARAMS_FILE)
    dvc_lock = _joined(DVC_LOCK)
    curated_index = _joined(CURATED_INDEX)
    captions = _joined(CAPTIONS_FILE)
    samples = _joined(SAMPLES_DIR)
    sample_stats = _joined(SAMPLE_STATS)
    latents = _joined(LATENTS_DIR)
    vae = _joined(VAE_DIR)
    pipeline = _joined(PIPELINE_DIR)
    checkpoints = _joined(CHECKPOINTS_DIR)
    run_record = _joined(RUN_RECORD)
    reports = _joined(REPORTS_DIR)
