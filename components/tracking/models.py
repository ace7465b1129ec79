"""Load a TerrainPipeline from wherever a user names it: a folder, or an MLflow model URI.

``models:/mesa@champion``, ``models:/mesa/3``, ``models:/<logged model id>`` and ``runs:/<id>/pipeline``
are loaded through MLflow (the project's store, or MLFLOW_TRACKING_URI) as the pyfunc model
they were logged as, and the pipeline inside it is returned.
"""
from __future__ import annotations

from pathlib import Path

# What MLflow loads (registry, runs, its artifact proxy, artifact stores); anything else is a folder.
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/", "file:", "s3:", "gs:", "wasbs:", "hdfs:", "dbfs:")


def is_mlflow_uri(model: str) -> bool:
    """Whether `model` is a URI for MLflow to load, not a local folder.

    Args:
        model (str): what a user named: ``models:/mesa@champion``, ``runs:/ID/pipeline``, a folder ...
    """
    return model.startswith(MLFLOW_SCHEMES)


def load_pipeline(model: str, project_dir: str | Path = ".", device: str | None = None):
    """A ``TerrainPipeline`` from a pipeline folder or an MLflow model URI.

    Args:
        model: a folder written by ``TerrainPipeline.save_pretrained`` (e.g. models/pipeline), or an
            MLflow URI (see the module docstring).
        project_dir: the project, whose tracking store URIs resolve against (default ".").
        device: "cuda" / "cpu" (default: cuda when available).
    """
    import torch

    from components.model.pipeline import TerrainPipeline

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if is_mlflow_uri(model):
        import mlflow.pyfunc

        from components.tracking.pyfunc import using_tracking_uri
        from components.tracking.store import tracking_uri

        with using_tracking_uri(tracking_uri(project_dir)):
            try:
                loaded = mlflow.pyfunc.load_model(model)
            except Exception as err:
                raise FileNotFoundError(f"could not load {model} from the MLflow store {tracking_uri(project_dir)}: "
                                        f"{err}") from err
        pipeline = loaded.unwrap_python_model().pipeline
        return pipeline.to(device)
    folder = Path(model)
    if not folder.is_absolute():
        folder = Path(project_dir) / folder
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a pipeline folder: train one (`mesa retrain`), or pass an MLflow "
                                "URI such as models:/mesa@champion")
    return TerrainPipeline.from_pretrained(folder, device=device)
