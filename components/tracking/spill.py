"""Logging calls that wait to be sent: the queue entry, sending it, and the spill file that keeps
it through an outage.

``RunLogger`` (:mod:`components.tracking.run_logger`) queues every call as an :class:`Entry` and
sends it with :func:`send_entries`. When the tracking server is still down as the run finishes,
what is left goes to ``{project}/mlruns-spill/{run_id}.jsonl`` (:func:`write_spill`): one JSON line
per entry after a header naming the run and its tracking URI, images moved beside it into
``{run_id}-files/``. :func:`replay_spill` sends such a file later, in order.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.atomic import rename_atomic, write_text_atomic
from components.tracking.store import configure_client_retries


@dataclass
class Entry:
    """One queued logging call; `data` is JSON-serialisable so it can be spilled as is."""

    kind: str  # metrics | params | tags | artifact | image | terminate
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def metric_count(self) -> int:
        return len(self.data["metrics"]) if self.kind == "metrics" else 0

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, **self.data})

    @classmethod
    def from_json(cls, line: str) -> Entry:
        data = json.loads(line)
        return cls(data.pop("kind"), data)


def send_entries(client: Any, run_id: str, entries: list[Entry]) -> None:
    """Send queued entries to MLflow, in order (consecutive metrics entries in one log_batch).

    Args:
        client (mlflow.MlflowClient): the client.
        run_id (str): the run.
        entries (list[Entry]): what to send; metrics entries together hold at most
            MLflow's 1000 metrics per log_batch when more than one is given.
    """
    from mlflow.entities import Metric, Param, RunTag

    metrics = [Metric(k, float(v), int(ts), int(step))
               for e in entries if e.kind == "metrics" for k, v, ts, step in e.data["metrics"]]
    if metrics:
        client.log_batch(run_id, metrics=metrics)
    for entry in (e for e in entries if e.kind != "metrics"):
        if entry.kind == "params":
            client.log_batch(run_id, params=[Param(k, v) for k, v in entry.data["params"]])
        elif entry.kind == "tags":
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in entry.data["tags"]])
        elif entry.kind in ("artifact", "image"):
            path = Path(entry.data["path"])
            if path.is_dir():
                client.log_artifacts(run_id, str(path), entry.data.get("artifact_path"))
            else:
                client.log_artifact(run_id, str(path), entry.data.get("artifact_path"))
        elif entry.kind == "terminate":
            client.set_terminated(run_id, entry.data["status"], entry.data["end_time"])
        else:
            raise ValueError(f"unknown tracking entry kind {entry.kind!r}")


def write_spill(spill_dir: str | Path, run_id: str, tracking_uri: str | None, entries: list[Entry]) -> Path:
    """Write unsent entries to ``{spill_dir}/{run_id}.jsonl`` (atomically), for :func:`replay_spill`.

    Image entries name files in a staging folder that goes away with the logger: those files are
    moved into ``{spill_dir}/{run_id}-files/`` first and the entries point there.

    Args:
        spill_dir (str | Path): the spill folder (created if missing).
        run_id (str): the run the entries belong to.
        tracking_uri (str | None): where the run lives (recorded in the header line).
        entries (list[Entry]): the unsent entries, in order.

    Returns:
        Path: the spill file.
    """
    spill_dir = Path(spill_dir)
    spill_dir.mkdir(parents=True, exist_ok=True)
    files = spill_dir / f"{run_id}-files"
    lines = [json.dumps({"kind": "run", "run_id": run_id, "tracking_uri": tracking_uri})]
    for entry in entries:
        if entry.kind == "image":
            source = Path(entry.data["path"])
            target = files / source.parent.name / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(source), target)
            entry = Entry("image", {**entry.data, "path": str(target.resolve())})
        lines.append(entry.to_json())
    return write_text_atomic(spill_dir / f"{run_id}.jsonl", "\n".join(lines) + "\n", encoding="utf-8")


def replay_spill(path: str | Path, uri: str | None = None, client: Any = None) -> int:
    """Send a spill file written by `RunLogger.finish`, in order.

    Args:
        path (str | Path): the ``.jsonl`` spill file.
        uri (str | None, default None): tracking URI; None uses the one recorded in the file.
        client (mlflow.MlflowClient | None, default None): a client to use instead of `uri`.

    Returns:
        int: how many entries were sent. The file is then renamed ``*.jsonl.replayed`` so a second
        call cannot send the same values twice.

    Raises:
        RuntimeError: when sending fails part-way; the entries not sent stay in the file (rewritten
            without those that were), so calling again later continues where this one stopped.
    """
    path = Path(path)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} is empty; it is not a spill file written by RunLogger.finish")
    header = json.loads(lines[0])
    if header.get("kind") != "run":
        raise ValueError(f"{path}: first line is not the run header; was it written by RunLogger.finish?")
    if client is None:
        from mlflow import MlflowClient

        uri = uri or header["tracking_uri"]
        configure_client_retries(uri)
        client = MlflowClient(uri)
    entries = [Entry.from_json(line) for line in lines[1:]]
    for done, entry in enumerate(entries):
        try:
            send_entries(client, header["run_id"], [entry])
        except Exception as err:
            rest = [lines[0], *lines[1 + done:]]
            write_text_atomic(path, "\n".join(rest) + "\n", encoding="utf-8")
            raise RuntimeError(
                f"replaying {path}: sent {done} of {len(entries)} entries, then {err}; the rest "
                "stay in the file: call replay_spill again when the server is reachable"
            ) from err
    rename_atomic(path, path.with_name(path.name + ".replayed"))
    return len(entries)
