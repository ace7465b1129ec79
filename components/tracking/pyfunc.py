"""The terrain pipeline as an MLflow pyfunc model: what the registry holds and `mesa generate` loads.

Input: a pandas DataFrame, one row per image, with columns

- ``prompt`` (string, required): the caption,
- ``seed`` (long, optional, default 42), ``steps`` (long, optional, default 50),
  ``guidance`` (double, optional, default 7.0); a missing value (NaN) in a row also takes the default,
- ``format`` (string, optional, default ``arrays``): ``compact`` answers with a PNG and a ``.npy``.

Output: a list with one dict per row, in row order:
``{"prompt": str, "seed": int, "rgb": numpy uint8 (H, W, 3), "dem_m": numpy float32 (H, W)}``, or
for ``format: compact`` ``{"prompt", "seed", "format", "rgb_png", "dem_npy", "height", "width"}``
(base64 strings: :mod:`components.export.payload`).
A list is one of the return types pyfunc passes through unchanged, so in-process callers get numpy
arrays (no copy into nested lists); MLflow's scoring server turns the arrays into nested JSON lists
(its NumpyEncoder) when the model is served over REST. The signature states the input columns
explicitly (no inference); the output schema documents the shapes (MLflow does not enforce it).
"""
from __future__ import annotations

import contextlib
import os
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from components.export.payload import ARRAYS, COMPACT, FORMATS, compact_fields

DEFAULT_SEED = 42
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 7.0
PINNED_DISTRIBUTIONS = ("torch", "diffusers", "transformers", "numpy", "pandas", "mlflow", "safetensors")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

# Model.log reads the global tracking URI; this lock keeps two threads from swapping it at once.
_URI_LOCK = threading.Lock()


class TerrainPyfuncModel(mlflow.pyfunc.PythonModel):
    """A `TerrainPipeline` behind MLflow's pyfunc interface (see the module docstring for I/O).

    Attributes:
        pipeline (components.model.pipeline.TerrainPipeline | None): loaded by `load_context`.
    """

    def __init__(self):
        self.pipeline = None

    def load_context(self, context) -> None:
        """Load the pipeline folder logged as artifact ``"pipeline"`` (GPU when there is one).

        Args:
            context (mlflow.pyfunc.PythonModelContext): gives ``artifacts["pipeline"]``.
        """
        import torch

        for key, value in OFFLINE_ENV.items():  # a served model must never try to download
            os.environ.setdefault(key, value)
        from components.model.pipeline import TerrainPipeline

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.pipeline = TerrainPipeline.from_pretrained(context.artifacts["pipeline"], device=device)
        self.pipeline.set_progress_bar_config(disable=True)
        # Servers call predict from several threads; the pipeline's scheduler holds per-call state
        # (set_timesteps), so calls take turns. Made here: a lock cannot be pickled with the model.
        self._calls = threading.Lock()

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Generate one RGB image and one DEM per input row.

        Args:
            context (mlflow.pyfunc.PythonModelContext): unused (the pipeline is loaded already).
            model_input (pandas.DataFrame): columns prompt (required), seed, steps, guidance.
            params (dict[str, Any] | None, default None): unused; accepted for MLflow's interface.

        Returns:
            list[dict[str, Any]]: per row ``{"prompt", "seed", "rgb", "dem_m"}`` (``format`` compact:
            ``{"prompt", "seed", "format", "rgb_png", "dem_npy", "height", "width"}``).
        """
        if self.pipeline is None:
            raise RuntimeError("TerrainPyfuncModel.predict before load_context: load it with mlflow.pyfunc.load_model")
        requests = rows_to_requests(model_input)
        results: list[dict[str, Any] | None] = [None] * len(requests)
        # One pipeline call per (steps, guidance) group: rows that share settings share a batch.
        for (steps, guidance), indices in group_requests(requests).items():
            with self._calls:
                out = self.pipeline(
                    prompt=[requests[i]["prompt"] for i in indices],
                    seed=[requests[i]["seed"] for i in indices],
                    num_inference_steps=steps, guidance_scale=guidance,
                )
            for j, i in enumerate(indices):
                head = {"prompt": requests[i]["prompt"], "seed": requests[i]["seed"]}
                if requests[i]["format"] == COMPACT:
                    results[i] = {**head, "format": COMPACT, **compact_fields(out.rgb[j], out.dem_m[j])}
                else:
                    results[i] = {**head, "rgb": out.rgb[j], "dem_m": out.dem_m[j]}
        return results


def _value_or(row: dict[str, Any], key: str, default: Any, cast) -> Any:
    value = row.get(key)
    if value is None or (isinstance(value, float) and value != value):  # absent or NaN
        return default
    return cast(value)


def rows_to_requests(model_input) -> list[dict[str, Any]]:
    """Input rows with every default filled in.

    Args:
        model_input (pandas.DataFrame | list[dict] | dict): the pyfunc input.

    Returns:
        list[dict[str, Any]]: ``{"prompt": str, "seed": int, "steps": int, "guidance": float,
        "format": str}`` each.

    Raises:
        ValueError: when there is no ``prompt`` column, a prompt is empty or a format unknown.
    """
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    if "prompt" not in frame.columns:
        raise ValueError(f"the input needs a 'prompt' column (got columns {list(frame.columns)})")
    requests = []
    for number, row in enumerate(frame.to_dict("records")):
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"row {number}: prompt must be a non-empty string, got {prompt!r}")
        answer_format = _value_or(row, "format", ARRAYS, str)
        if answer_format not in FORMATS:
            raise ValueError(f"row {number}: format must be one of {list(FORMATS)}, got {answer_format!r}")
        requests.append({
            "prompt": prompt,
            "seed": _value_or(row, "seed", DEFAULT_SEED, int),
            "steps": _value_or(row, "steps", DEFAULT_STEPS, int),
            "guidance": _value_or(row, "guidance", DEFAULT_GUIDANCE, float),
            "format": answer_format,
        })
    return requests


def group_requests(requests: list[dict[str, Any]]) -> dict[tuple[int, float], list[int]]:
    """Row indices per (steps, guidance), in first-seen order.

    Args:
        requests (list[dict[str, Any]]): from `rows_to_requests`.
    """
    groups: dict[tuple[int, float], list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault((request["steps"], request["guidance"]), []).append(i)
    return groups


def model_signature():
    """The explicit pyfunc signature (nothing is inferred by running the model).

    Returns:
        mlflow.models.ModelSignature: input columns prompt / seed / steps / guidance / format; the
        output documents prompt, seed, rgb (H x W x 3 integers) and dem_m (H x W floats), or the
        compact fields.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs = Schema([
        ColSpec(DataType.string, "prompt"),
        ColSpec(DataType.long, "seed", required=False),
        ColSpec(DataType.long, "steps", required=False),
        ColSpec(DataType.double, "guidance", required=False),
        ColSpec(DataType.string, "format", required=False),
    ])
    outputs = Schema([
        ColSpec(DataType.string, "prompt"),
        ColSpec(DataType.long, "seed"),
        ColSpec(Array(Array(Array(DataType.integer))), "rgb", required=False),
        ColSpec(Array(Array(DataType.float)), "dem_m", required=False),
        ColSpec(DataType.string, "format", required=False),
        ColSpec(DataType.string, "rgb_png", required=False),
        ColSpec(DataType.string, "dem_npy", required=False),
        ColSpec(DataType.long, "height", required=False),
        ColSpec(DataType.long, "width", required=False),
    ])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example():
    """A one-row input that runs in about a second on CPU (one step, no guidance): MLflow runs it
    once when logging to check the saved model answers."""
    return pd.DataFrame({"prompt": ["A Sentinel-2 image of hills"], "seed": [DEFAULT_SEED],
                         "steps": [1], "guidance": [1.0]})


def pinned_requirements(names: tuple[str, ...] = PINNED_DISTRIBUTIONS) -> list[str]:
    """``name==version`` for each installed distribution (MLflow's slow inference is skipped).

    Args:
        names (tuple[str, ...], default PINNED_DISTRIBUTIONS): distributions to pin.

    Raises:
        RuntimeError: when one is not installed (install the project's dependencies first).
    """
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError as err:
            raise RuntimeError(f"{name} is not installed, so the model's requirements cannot be pinned; "
                               "install the project (pip install -e .)") from err
    return pins


def components_dir() -> Path:
    """This repository's ``components`` package folder (copied into the model as code)."""
    import components

    return Path(components.__file__).resolve().parent


@contextlib.contextmanager
def using_tracking_uri(uri: str):
    """Point MLflow's global tracking URI at `uri` inside a ``with`` block, then restore it.

    For calls that only read the global URI: ``Model.log``, or ``mlflow.pyfunc.load_model`` of a
    ``models:/...`` URI kept in another store. Calls are serialised by a lock.

    Args:
        uri (str): the tracking URI to use inside the block.
    """
    from mlflow.tracking._tracking_service import utils as tracking_utils

    with _URI_LOCK:
        # set_tracking_uri also writes MLFLOW_TRACKING_URI (for subprocesses): restore both.
        previous, previous_env = tracking_utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous)
            if previous_env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = previous_env


def log_pipeline_model(
    run_id: str,
    pipeline_dir: str | Path,
    name: str = "pipeline",
    registered_model_name: str | None = None,
    uri: str | None = None,
) -> str:
    """Log a saved pipeline folder as a pyfunc model of run `run_id`.

    The model carries the folder (artifact ``pipeline``), this repository's ``components`` package
    (``code_paths``, so it loads in a fresh process: ``mlflow.pyfunc.load_model(uri)``), an explicit
    signature, a one-row input example and pinned pip requirements. MLflow loads the saved model
    and predicts the input example once before uploading (one step: about a second for the tiny
    model, the load time of the pipeline for a big one).

    Args:
        run_id (str): the run the model belongs to (e.g. ``RunLogger.run_id``); it may be running.
        pipeline_dir (str | Path): a `TerrainPipeline.save_pretrained` folder.
        name (str, default "pipeline"): the logged model's name.
        registered_model_name (str | None, default None): also register a new version under this
            name (created when missing).
        uri (str | None, default None): the run's tracking URI; None uses MLflow's current one
            (MLFLOW_TRACKING_URI when set).

    Returns:
        str: the model URI (``models:/<model id>``), loadable with ``mlflow.pyfunc.load_model``.
    """
    from mlflow.models import Model

    folder = Path(pipeline_dir)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder} has no model_index.json: give a TerrainPipeline.save_pretrained folder")
    with using_tracking_uri(uri or mlflow.get_tracking_uri()):
        client = mlflow.MlflowClient()
        run = client.get_run(run_id)
        # Created here with the run's experiment: left to Model.log, the logged model goes to the
        # fluent API's active experiment ("Default", artifacts under ./mlruns of the working
        # directory) whatever experiment the run is in.
        logged = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id,
                                            params=dict(run.data.params))
        info = Model.log(
            artifact_path=None,  # deprecated in MLflow 3 but still positional: `name` names it
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            registered_model_name=registered_model_name,
            python_model=TerrainPyfuncModel(),
            artifacts={"pipeline": str(folder.resolve())},
            code_paths=[str(components_dir())],
            signature=model_signature(),
            input_example=input_example(),
            pip_requirements=pinned_requirements(),
        )
    return info.model_uri
