"""MLflow tracking for training: runs that never block the loop, lineage tags, the pyfunc model.

Modules:

- ``runs``: :class:`RunLogger` (queued, retried, spilled to disk when the server stays down),
  :func:`replay_spill`, :func:`tracking_uri`, :func:`ensure_experiment`.
- ``lineage``: :func:`lineage_tags` (git commit, dvc.lock hashes, params hash), :func:`flatten_params`.
- ``pyfunc``: :class:`TerrainPyfuncModel`, :func:`log_pipeline_model` (imports mlflow.pyfunc and,
  when a model loads, the pipeline: import it from ``components.tracking.pyfunc`` directly).
- ``server``: :func:`start_mlflow_server` (a local ``mlflow server`` process, for tests and drills).
"""
from components.tracking.lineage import flatten_params, lineage_tags
from components.tracking.runs import RunLogger, ensure_experiment, replay_spill, tracking_uri

__all__ = ["RunLogger", "ensure_experiment", "flatten_params", "lineage_tags", "replay_spill", "tracking_uri"]
