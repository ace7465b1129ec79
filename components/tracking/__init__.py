"""MLflow tracking for training: runs that never block the loop, lineage tags, the pyfunc model.

Modules:

- ``store``: where runs live: :func:`tracking_uri`, :func:`mlflow_client`, :func:`ensure_experiment`,
  and MLflow's own HTTP retries turned down against a server.
- ``run_logger``: :class:`RunLogger` (queued, retried, spilled to disk when the server stays down).
- ``spill``: the queued entries, sending them, the spill file and :func:`replay_spill`.
- ``lineage``: :func:`lineage_tags` (git commit, dvc.lock hashes, params hash), :func:`flatten_params`.
- ``pyfunc``: :class:`TerrainPyfuncModel`, :func:`log_pipeline_model` (imports mlflow.pyfunc and,
  when a model loads, the pipeline: import it from ``components.tracking.pyfunc`` directly).
- ``server``: :func:`start_mlflow_server` (a local ``mlflow server`` process, for tests and drills).
"""
from components.tracking.lineage import flatten_params, lineage_tags
from components.tracking.run_logger import RunLogger
from components.tracking.spill import replay_spill
from components.tracking.store import ensure_experiment, tracking_uri

__all__ = ["RunLogger", "ensure_experiment", "flatten_params", "lineage_tags", "replay_spill", "tracking_uri"]
