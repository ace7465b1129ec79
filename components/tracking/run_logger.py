"""One MLflow run, logged from a training loop without ever blocking it.

`RunLogger` wraps a run by id with `MlflowClient` (the fluent `mlflow.*` API keeps global state and
is not thread-safe). Metrics, params, tags, images and artifacts go into one in-memory queue
(:class:`~components.tracking.spill.Entry` each); a background thread sends them in order. While
the tracking server is unreachable the thread retries with exponential back-off and training goes
on; if the server is still down when the run finishes, what is left is written to a JSON-lines
spill file that :func:`~components.tracking.spill.replay_spill` sends later. Where runs live (and
how quickly MLflow's own HTTP client gives up): :mod:`components.tracking.store`.
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from components.layout import SPILL_DIR
from components.tracking.lineage import flatten_params
from components.tracking.spill import Entry, send_entries, write_spill
from components.tracking.store import ensure_experiment, is_transient, mlflow_client, tracking_uri

# MLflow 3 accepts 6000 characters per param value, servers older than 2.x only 500. We keep the
# smaller limit so the same code logs to either.
PARAM_VALUE_MAX = 500
TAG_VALUE_MAX = 5000
PARAMS_PER_BATCH = 100  # MLflow's limit for params (and tags) in one log_batch
METRICS_PER_BATCH = 1000  # MLflow's limit for metrics in one log_batch
BACKOFF_START_S = 0.2
BACKOFF_CAP_S = 5.0


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _say(message: str) -> None:
    """One status line for the person watching training (stderr resolved now, so tests capture it)."""
    print(f"[mesa.tracking] {message}", file=sys.stderr, flush=True)


def _truncate(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."

# ----------------------------------------------------------------------------- images
def _to_pil(image: Any):
    """A PIL image from a PIL image or an array (H,W) / (H,W,3|4), uint8 or float in [0, 1]."""
    import numpy as np
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"log_image expects (H,W), (H,W,3) or (H,W,4), got shape {array.shape}")
    if array.dtype != np.uint8:
        # Floats are taken as [0, 1] (what matplotlib and torchvision use for float images).
        array = (np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return Image.fromarray(array)


def _image_name(artifact_file: str, step: int | None) -> tuple[str | None, str]:
    """(artifact folder or None, file name) for `artifact_file`, with the step in the name."""
    path = Path(artifact_file)
    if path.suffix.lower() not in {".png", ".jpg", ".jpeg"}:
        raise ValueError(f"log_image: {artifact_file!r} must end in .png, .jpg or .jpeg")
    name = path.name if step is None else f"{path.stem}_step{int(step):06d}{path.suffix}"
    folder = path.parent.as_posix()
    return (None if folder in ("", ".") else folder), name


# ----------------------------------------------------------------------------- system metrics
def _system_metrics_monitor(run_id: str, uri: str, interval_s: float, sink: Callable[[dict, int], None]):
    """MLflow's system metrics monitor (CPU, memory, disk, network, GPU when present), publishing
    into our queue instead of logging directly.

    With the fluent API this is ``mlflow.start_run(log_system_metrics=True)``; with a client it is
    ``mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor(run_id, ...)``. Its own loop
    stops for good at the first failed request (it polls the run's status every sample), so during
    an outage we would lose system metrics; this subclass only samples and hands the values to the
    RunLogger queue, which buffers and retries them like every other metric.
    """
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    class _QueuedSystemMetrics(SystemMetricsMonitor):
        def monitor(self):
            while not self._shutdown_event.is_set():
                for _ in range(self.samples_before_logging):
                    self.collect_metrics()
                    if self._shutdown_event.wait(self.sampling_interval):
                        break
                try:
                    self.publish_metrics(self.aggregate_metrics())
                except Exception as err:  # a sampling error must never reach training
                    _say(f"system metrics sampling failed ({err}); system metrics stop here")
                    return

        def publish_metrics(self, metrics):
            prefix = self._metrics_prefix + (f"{self.node_id}/" if self.node_id else "")
            sink({prefix + k: v for k, v in metrics.items()}, self._logging_step)
            self._logging_step += 1
            for monitor in self.monitors:
                monitor.clear_metrics()

    return _QueuedSystemMetrics(run_id, sampling_interval=interval_s, tracking_uri=uri)


# ----------------------------------------------------------------------------- the run logger


class RunLogger:
    """Logs one MLflow run from a training loop; no call waits for the tracking server.

    Attributes:
        run_id (str | None): the MLflow run id (None when disabled).
        enabled (bool): False for a no-op logger (every method returns at once, nothing is sent).
        tracking_uri (str | None): where the run lives.
        spill_dir (Path | None): where `finish` writes entries it could not send.
        dropped (list[str]): entries the server refused (not outages), one line each.
    """

    def __init__(
        self,
        client: Any,
        run_id: str,
        spill_dir: str | Path,
        *,
        system_metrics: bool = False,
        system_metrics_interval_s: float = 10.0,
    ):
        """Wrap an existing run (use `RunLogger.start` to create one).

        Args:
            client (mlflow.MlflowClient): the client to send with (used only by the background
                thread after this constructor).
            run_id (str): the run to log to.
            spill_dir (str | Path): folder for the spill file written when the server stays down.
            system_metrics (bool, default False): sample CPU / memory / disk / network (and GPU
                when present) into ``system/*`` metrics.
            system_metrics_interval_s (float, default 10.0): seconds between samples
                (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it).
        """
        self.enabled = True
        self.client = client
        self.run_id = run_id
        self.tracking_uri = client.tracking_uri
        self.spill_dir = Path(spill_dir)
        self.dropped: list[str] = []
        self._queue: deque[Entry] = deque()
        self._cond = threading.Condition()
        self._inflight = 0
        self._pending_metrics = 0
        self._abandon = False
        self._finished = False
        self._down = False
        self._recovered_sent: int | None = None
        self._staging = Path(tempfile.mkdtemp(prefix=f"mesa-tracking-{run_id}-"))
        self._image_seq = 0
        self._worker = threading.Thread(target=self._work, name=f"mesa-tracking-{run_id[:8]}", daemon=True)
        self._worker.start()
        self._monitor = None
        if system_metrics:
            self._monitor = _system_metrics_monitor(run_id, self.tracking_uri, system_metrics_interval_s,
                                                    self._enqueue_metrics)
            self._monitor.start()
        # A process that ends without finish() still gets its buffer sent or spilled.
        atexit.register(self._at_exit)

    # ------------------------------------------------------------------ construction
    @classmethod
    def start(
        cls,
        experiment: str,
        run_name: str,
        project_dir: str | Path,
        tags: Mapping[str, Any] | None = None,
        enabled: bool = True,
        *,
        system_metrics: bool = True,
        system_metrics_interval_s: float = 10.0,
        uri: str | None = None,
    ) -> RunLogger:
        """Create a run in `experiment` and return a logger for it.

        Args:
            experiment (str): experiment name (created when missing).
            run_name (str): the run's display name.
            project_dir (str | Path): the project root (SQLite store, artifacts and spill files).
            tags (Mapping[str, Any] | None, default None): tags set when the run is created
                (e.g. `lineage_tags(...)`).
            enabled (bool, default True): False returns a no-op logger that creates no run and
                sends nothing. Give False to every process but the main one in multi-process
                training (``accelerator.is_main_process``) so that one run is logged, not N.
            system_metrics (bool, default True): log ``system/*`` metrics (CPU, memory, disk,
                network, GPU); tests turn it off.
            system_metrics_interval_s (float, default 10.0): seconds between system samples.
            uri (str | None, default None): tracking URI; None uses `tracking_uri(project_dir)`.

        Returns:
            RunLogger: the logger; `run_id` names the new run.

        Raises:
            RuntimeError: when the tracking store cannot be reached to create the run.
        """
        if not enabled:
            return cls.disabled()
        uri = uri or tracking_uri(project_dir)
        client = mlflow_client(uri=uri)
        try:
            experiment_id = ensure_experiment(client, experiment, project_dir)
            run = client.create_run(
                experiment_id, run_name=run_name,
                tags={k: _truncate(str(v), TAG_VALUE_MAX) for k, v in (tags or {}).items()},
            )
        except Exception as err:
            if not is_transient(err):
                raise
            raise RuntimeError(
                f"could not create an MLflow run at {uri} ({err}); start the tracking server, or "
                "unset MLFLOW_TRACKING_URI to log to the project's SQLite store"
            ) from err
        return cls(client, run.info.run_id, Path(project_dir) / SPILL_DIR,
                   system_metrics=system_metrics, system_metrics_interval_s=system_metrics_interval_s)

    @classmethod
    def resume(cls, run_id: str, project_dir: str | Path, enabled: bool = True, *, system_metrics: bool = True,
               uri: str | None = None) -> RunLogger:
        """A logger for an existing run (a resumed training run keeps logging to its own run).

        The run is marked RUNNING again; ``finish`` ends it as usual. Raises ``RuntimeError`` naming
        the run when the store does not know it (e.g. the checkpoint came from another store).
        """
        if not enabled:
            return cls.disabled()
        uri = uri or tracking_uri(project_dir)
        client = mlflow_client(uri=uri)
        try:
            client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
        except Exception as err:
            raise RuntimeError(f"cannot resume MLflow run {run_id} at {uri} ({err}); the checkpoint was logged "
                               "to another tracking store: set MLFLOW_TRACKING_URI to it, or train.resume: none") from err
        return cls(client, run_id, Path(project_dir) / SPILL_DIR, system_metrics=system_metrics)

    @classmethod
    def disabled(cls) -> RunLogger:
        """A logger whose every method does nothing (for non-main processes)."""
        self = cls.__new__(cls)
        self.enabled = False
        self.client = None
        self.run_id = None
        self.tracking_uri = None
        self.spill_dir = None
        self.dropped = []
        return self

    # ------------------------------------------------------------------ logging calls
    @property
    def pending(self) -> int:
        """Entries waiting to be sent (including one being sent)."""
        if not self.enabled:
            return 0
        with self._cond:
            return len(self._queue)

    @property
    def pending_metrics(self) -> int:
        """Metric values waiting to be sent."""
        if not self.enabled:
            return 0
        with self._cond:
            return self._pending_metrics

    def log_params(self, nested: Mapping[str, Any]) -> None:
        """Log parameters, flattened with dots (``{"train": {"lr": 1e-4}}`` -> ``train.lr``).

        Args:
            nested (Mapping[str, Any]): the parameters; values are stringified and cut to
                PARAM_VALUE_MAX characters (ending in "..."). Logging a key again with a
                different value is refused by MLflow (reported, listed in `dropped`).
        """
        if not self.enabled:
            return
        flat = [[k, _truncate(v, PARAM_VALUE_MAX)] for k, v in flatten_params(nested).items()]
        for chunk in _chunks(flat, PARAMS_PER_BATCH):
            self._enqueue(Entry("params", {"params": chunk}))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values stringified, cut to TAG_VALUE_MAX characters).

        Args:
            tags (Mapping[str, Any]): tag name -> value.
        """
        if not self.enabled:
            return
        items = [[str(k), _truncate(str(v), TAG_VALUE_MAX)] for k, v in tags.items()]
        for chunk in _chunks(items, PARAMS_PER_BATCH):
            self._enqueue(Entry("tags", {"tags": chunk}))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue metric values at `step`; returns at once (the background thread sends them).

        Args:
            metrics (Mapping[str, float]): name -> value (anything `float()` accepts: a 0-d
                tensor or numpy scalar too).
            step (int): the training step.

        Raises:
            TypeError: when a value is not a number (here, not later in the background).
        """
        if not self.enabled:
            return
        try:
            values = {str(k): float(v) for k, v in metrics.items()}
        except (TypeError, ValueError) as err:
            raise TypeError(f"log_metrics at step {step}: every value must be a number ({err})") from err
        self._enqueue_metrics(values, int(step))

    def log_image(self, image: Any, artifact_file: str, step: int | None = None) -> None:
        """Queue an image artifact (encoded now, uploaded in the background).

        Args:
            image (PIL.Image.Image | numpy.ndarray): (H,W), (H,W,3) or (H,W,4); uint8, or float
                in [0, 1].
            artifact_file (str): artifact path ending in .png/.jpg, e.g. ``"grids/eval.png"``.
            step (int | None, default None): when given the file name gets ``_step000123`` so each
                step keeps its own image.
        """
        if not self.enabled:
            return
        folder, name = _image_name(artifact_file, step)
        with self._cond:
            self._image_seq += 1
            staged = self._staging / f"{self._image_seq:06d}" / name
        staged.parent.mkdir(parents=True)
        _to_pil(image).save(staged)
        self._enqueue(Entry("image", {"path": str(staged), "artifact_path": folder}))

    def log_text(self, text: str, artifact_file: str) -> None:
        """Queue a text file artifact (written now, uploaded in the background).

        Args:
            text (str): the file's content (written as UTF-8; undecodable bytes read with
                ``surrogateescape`` come back as they were).
            artifact_file (str): artifact path, e.g. ``"lineage/steps-000012/params.yaml"``.
        """
        if not self.enabled:
            return
        path = Path(artifact_file)
        with self._cond:
            self._image_seq += 1
            staged = self._staging / f"{self._image_seq:06d}" / path.name
        staged.parent.mkdir(parents=True)
        staged.write_bytes(text.encode("utf-8", errors="surrogateescape"))
        folder = path.parent.as_posix()
        # Queued like an image: a staged file of our own, moved into the spill folder if unsent.
        self._enqueue(Entry("image", {"path": str(staged), "artifact_path": None if folder in ("", ".") else folder}))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Queue a file or folder for upload. It is read when sent: leave it in place until
        `flush`/`finish` returns (copying big checkpoints here would block training).

        Args:
            path (str | Path): a local file or folder.
            artifact_path (str | None, default None): folder inside the run's artifacts.

        Raises:
            FileNotFoundError: when `path` does not exist.
        """
        if not self.enabled:
            return
        path = Path(path).resolve()
        if not path.exists():
            raise FileNotFoundError(f"log_artifact: {path} does not exist")
        self._enqueue(Entry("artifact", {"path": str(path), "artifact_path": artifact_path}))

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything queued so far has been sent.

        Args:
            timeout_s (float | None, default None): most seconds to wait; None waits as long as it
                takes (forever while the server is down).

        Returns:
            bool: True when the queue is empty.
        """
        if not self.enabled:
            return True
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._inflight, timeout_s)

    def finish(self, status: str = "FINISHED", timeout_s: float = 60.0) -> Path | None:
        """Send everything, mark the run terminated, stop the background thread.

        Args:
            status (str, default "FINISHED"): FINISHED, FAILED or KILLED.
            timeout_s (float, default 60.0): seconds to wait for the server. When it is still
                unreachable after that, the unsent entries (the terminate call included) go to
                ``{project}/mlruns-spill/{run_id}.jsonl``; `replay_spill` sends them later.

        Returns:
            Path | None: the spill file, or None when everything was sent.
        """
        if not self.enabled or self._finished:
            return None
        self._finished = True
        atexit.unregister(self._at_exit)
        if self._monitor is not None:
            self._monitor.finish()  # its last sample is queued before the terminate call
        self._enqueue(Entry("terminate", {"status": status, "end_time": _now_ms()}))
        self.flush(timeout_s)
        with self._cond:
            self._abandon = True
            self._cond.notify_all()
        # A send in flight ends within MLflow's HTTP timeout; whatever it was is spilled as well
        # (at worst sent twice, never lost).
        self._worker.join(float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")) + 5.0)
        with self._cond:
            left = list(self._queue)
        if not left:
            shutil.rmtree(self._staging, ignore_errors=True)
            return None
        return self._spill(left, timeout_s)

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish("FAILED" if exc_type is not None else "FINISHED")

    # ------------------------------------------------------------------ internals
    def _enqueue(self, entry: Entry) -> None:
        with self._cond:
            self._queue.append(entry)
            self._pending_metrics += entry.metric_count
            self._cond.notify_all()

    def _enqueue_metrics(self, values: Mapping[str, float], step: int) -> None:
        now = _now_ms()
        rows = [[k, v, now, step] for k, v in values.items()]
        for chunk in _chunks(rows, METRICS_PER_BATCH):
            self._enqueue(Entry("metrics", {"metrics": chunk}))

    def _take(self) -> list[Entry]:
        """The head of the queue to send next (caller holds the lock): consecutive metrics entries
        up to METRICS_PER_BATCH values, or one other entry. Entries stay queued until sent."""
        head = self._queue[0]
        if head.kind != "metrics":
            return [head]
        taken, count = [], 0
        for entry in self._queue:
            if entry.kind != "metrics" or count + entry.metric_count > METRICS_PER_BATCH:
                break
            taken.append(entry)
            count += entry.metric_count
        return taken

    def _work(self) -> None:
        """The background thread: send in order, back off while the server is unreachable."""
        delay = BACKOFF_START_S
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._abandon)
                if self._abandon:
                    return
                batch = self._take()
                self._inflight = len(batch)
            error = None
            try:
                send_entries(self.client, self.run_id, batch)
            except Exception as err:
                error = err
            if error is not None and is_transient(error):
                with self._cond:
                    self._inflight = 0
                    self._note_outage()
                    # Sleep, but wake at once when finish() gives up.
                    if self._cond.wait_for(lambda: self._abandon, delay):
                        return
                delay = min(delay * 2.0, BACKOFF_CAP_S)
                continue
            delay = BACKOFF_START_S
            if error is not None:
                line = f"{batch[0].kind}: {error}"
                self.dropped.append(line)
                _say(f"the tracking server refused {line}; dropped (it will not succeed by retrying)")
            with self._cond:
                for _ in batch:
                    self._pending_metrics -= self._queue.popleft().metric_count
                self._inflight = 0
                self._note_sent(sum(e.metric_count for e in batch) if error is None else 0)
                self._cond.notify_all()

    def _note_outage(self) -> None:
        """First failure of an outage: say so once (caller holds the lock)."""
        if not self._down:
            self._down = True
            _say(f"tracking server unreachable, buffering {self._pending_metrics} metrics; training continues")

    def _note_sent(self, metric_count: int) -> None:
        """After a successful send: when back from an outage, count what the backlog held and say
        so once it is sent (caller holds the lock)."""
        if self._down:
            self._down = False
            self._recovered_sent = 0
        if self._recovered_sent is None:
            return
        self._recovered_sent += metric_count
        if not self._queue:
            _say(f"tracking server reachable again; sent {self._recovered_sent} buffered metrics")
            self._recovered_sent = None

    def _spill(self, entries: list[Entry], waited_s: float) -> Path:
        """Write unsent entries (and the images they reference) to the spill folder, and say where."""
        path = write_spill(self.spill_dir, self.run_id, self.tracking_uri, entries)
        shutil.rmtree(self._staging, ignore_errors=True)
        metrics = sum(e.metric_count for e in entries)
        _say(f"tracking server still unreachable after {waited_s:g} s: wrote {len(entries)} unsent "
             f"entries ({metrics} metrics) to {path}; send them later with "
             f"components.tracking.replay_spill('{path}')")
        return path

    def _at_exit(self) -> None:
        # The interpreter is ending without finish(): the run did not complete as planned.
        try:
            self.finish("KILLED", timeout_s=10.0)
        except Exception as err:
            _say(f"could not finish run {self.run_id} at exit: {err}")
