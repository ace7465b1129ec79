"""Retention: what `mesa gc` may delete, and deleting it.

Kept, whatever the options:

- every MLflow run a registered model version comes from (any registered model in the store), and
  the parent run of such a run; every logged model a version's source names;
- runs still running (a killed training stays RUNNING, and its checkpoints resume it);
- the newest `keep_runs` runs and every run started less than `older_than_days` ago;
- the data those runs trained on: each kept run's lineage snapshots (``lineage/steps-N/dvc.lock``)
  become small DVC projects sharing this project's cache, handed to ``dvc gc --workspace
  --projects ...``, so DVC keeps the workspace's data and theirs (dvc.lock need not be committed);
- checkpoint folders (``models/checkpoints/<fingerprint>/``) holding a checkpoint of a kept run (a
  checkpoint names its run; a folder whose runs this store does not know is kept too).

Deleted, for every other run of the project's experiments (params ``train.experiment`` and
``ablation.experiment``, plus those of registered runs): its artifacts, its logged models (their
artifacts too) and the run itself (soft-deleted: `mlflow gc` purges the database rows), and its
checkpoint folders; then DVC objects no kept lineage and no workspace output uses (with `cloud`,
in the remote too). A run deleted while ``models/train_run.json`` names it takes that file along,
so a later retrain cannot register a model whose artifacts are gone.

Limits: a kept run trained before lineage snapshots keeps only what its commit's dvc.lock names
(if anything); the registered model's own ``models/pipeline`` output is kept in MLflow (the
version's artifacts) and by the workspace while it is current, not in the DVC cache.
"""
from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.layout import CHECKPOINTS_DIR, DVC_FILE, DVC_LOCK, PARAMS_FILE, RUN_RECORD
from components.tracking.lineage import SNAPSHOT_DIR, SNAPSHOT_RECORD
from components.versioning.dvc_git import (Log, cache_dir, configure_local, dvc_command, git_show, human_bytes,
                                           object_path, remote_settings, run_command, tree_size)

_ACTIVE_STATUSES = {"RUNNING", "SCHEDULED"}
_REMOVING = re.compile(r"^Removing (.+)$")
_REMOVED = re.compile(r"^Removed (\d+) objects from")


@dataclass
class RunEntry:
    """One MLflow run and what deleting it frees."""

    run_id: str
    experiment_id: str
    name: str
    started_ms: int
    status: str
    lifecycle: str
    artifact_uri: str
    parent: str | None
    keep: str | None = None                 # why it is kept; None: deleted
    artifact_bytes: int | None = None
    models: list[tuple[str, str, int | None]] = field(default_factory=list)  # (model id, location, bytes)

    @property
    def bytes(self) -> int | None:
        parts = [self.artifact_bytes, *(size for _, _, size in self.models)]
        return None if any(p is None for p in parts) else sum(parts)


@dataclass
class FolderEntry:
    """One checkpoint folder (a training configuration's checkpoints) and whose runs it holds."""

    path: Path
    run_ids: list[str]
    bytes: int
    keep: str | None = None


@dataclass
class LineageLock:
    """The data one kept run trained on, as a DVC project needs it."""

    label: str          # "run <id> lineage/steps-N"
    dvc_yaml: str
    params: str
    lock: str


@dataclass
class RetentionPlan:
    """What `apply_retention` deletes and what it keeps (with reasons)."""

    runs: list[RunEntry]
    checkpoints: list[FolderEntry]
    lineages: list[LineageLock]
    dvc_cache: list[tuple[str, int | None]]    # objects `dvc gc` would remove from the cache
    dvc_remote: list[tuple[str, int | None]]   # ... and from the remote (with cloud)
    dvc_flags: list[str]
    workspace_run: str | None
    older_than_days: float
    keep_runs: int
    notes: list[str] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)

    @property
    def delete_runs(self) -> list[RunEntry]:
        return [r for r in self.runs if r.keep is None]

    @property
    def delete_checkpoints(self) -> list[FolderEntry]:
        return [f for f in self.checkpoints if f.keep is None]

    @property
    def total_bytes(self) -> int:
        sizes = [r.bytes for r in self.delete_runs] + [f.bytes for f in self.delete_checkpoints]
        sizes += [size for _, size in self.dvc_cache + self.dvc_remote]
        return sum(size or 0 for size in sizes)

    def summary(self) -> str:
        lines = [f"[gc] MLflow runs: keep {len(self.runs) - len(self.delete_runs)}, delete {len(self.delete_runs)} "
                 f"(kept: registered, running, the newest {self.keep_runs}, "
                 f"younger than {self.older_than_days:g} days)"]
        for run in self.runs:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started_ms / 1000))
            what = (f"keep    {run.keep}" if run.keep else
                    f"delete  {human_bytes(run.bytes)} (artifacts {human_bytes(run.artifact_bytes)}, "
                    f"{len(run.models)} logged models)")
            lines.append(f"  {run.run_id[:12]}  {run.name[:24]:<24}  {when}  {what}")
        kept = len(self.checkpoints) - len(self.delete_checkpoints)
        lines.append(f"[gc] checkpoints ({CHECKPOINTS_DIR}): keep {kept}, delete {len(self.delete_checkpoints)}")
        for folder in self.checkpoints:
            runs = ", ".join(r[:12] for r in folder.run_ids) or "no run"
            lines.append(f"  {folder.path.name}  {human_bytes(folder.bytes)}  runs {runs}  "
                         + (f"keep    {folder.keep}" if folder.keep else "delete"))
        lines.append(f"[gc] DVC: dvc gc {' '.join(self.dvc_flags)} --projects <{len(self.lineages)} kept lineages>")
        lines.append(f"  cache: {len(self.dvc_cache)} objects, {human_bytes(sum(s or 0 for _, s in self.dvc_cache))}")
        if "--cloud" in self.dvc_flags:
            lines.append(f"  remote: {len(self.dvc_remote)} objects, "
                         f"{human_bytes(sum(s or 0 for _, s in self.dvc_remote))}")
        lines.extend(f"note: {note}" for note in self.notes)
        lines.extend(f"BLOCKED: {blocker}" for blocker in self.blockers)
        lines.append(f"[gc] to reclaim: {human_bytes(self.total_bytes)}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- planning
def plan_retention(project_dir: str | Path, client: Any, *, keep_runs: int = 5, older_than_days: float = 30.0,
                   cloud: bool = False, remote: str | None = None, now_ms: int | None = None,
                   log: Log = print) -> RetentionPlan:
    """Decide what a garbage collection deletes (see the module docstring); deletes nothing.

    Args:
        project_dir (str | Path): the project.
        client (mlflow.MlflowClient): the project's tracking store.
        keep_runs (int, default 5): also keep the newest K runs.
        older_than_days (float, default 30): only runs started more than this many days ago may go.
        cloud (bool, default False): also collect the DVC remote (``dvc gc --cloud``).
        remote (str | None): the DVC remote for `cloud` (default: the project's default remote).
        now_ms (int | None): the current time (tests); default now.
        log (Callable[[str], None]): progress lines.
    """
    from components.params import load_params

    root = Path(project_dir).resolve()
    now_ms = int(now_ms if now_ms is not None else time.time() * 1000)
    params = load_params(root)
    notes: list[str] = []
    # 1. What the registry needs.
    registered, protected_models = _registered(client)
    log(f"[gc] 1. registry: {len(registered)} runs have registered versions")
    # 2. The project's runs, each kept for a reason or deleted.
    names = {(params.get(group) or {}).get("experiment") for group in ("train", "ablation")} - {None}
    runs = _project_runs(client, names, registered)
    parents = {run.parent for run in runs if run.run_id in registered and run.parent}
    newest = [run.run_id for run in sorted(runs, key=lambda r: -r.started_ms) if run.lifecycle == "active"][:keep_runs]
    limit_ms = now_ms - older_than_days * 86_400_000
    for run in runs:
        run.keep = (registered.get(run.run_id) or ("parent of a registered run" if run.run_id in parents else None)
                    or ("still running" if run.status in _ACTIVE_STATUSES and run.lifecycle == "active" else None)
                    or (f"one of the newest {keep_runs}" if run.run_id in newest else None)
                    or (f"younger than {older_than_days:g} days" if run.started_ms > limit_ms else None))
        if run.keep is None:
            run.artifact_bytes = _artifact_bytes(run.artifact_uri, client.tracking_uri)
            run.models = [(m.model_id, m.artifact_location, _artifact_bytes(m.artifact_location, client.tracking_uri))
                          for m in _logged_models(client, run) if m.model_id not in protected_models]
    # 3. Checkpoints follow their run (a run deleted earlier still decides for its checkpoints).
    by_id = {run.run_id: run for run in runs}
    checkpoints = _checkpoint_folders(root, by_id, client, notes)
    runs = [run for run in runs if run.keep or run.lifecycle == "active" or run.models or run.artifact_bytes]
    log(f"[gc] 2. MLflow: {len(runs)} runs in experiments {sorted(names)}; "
        f"{sum(r.keep is None for r in runs)} to delete")
    log(f"[gc] 3. checkpoints: {len(checkpoints)} folders; {sum(f.keep is None for f in checkpoints)} to delete")
    # 4. DVC: the workspace plus every kept run's lineage.
    lineages = _kept_lineages(root, client, [run for run in runs if run.keep], notes)
    flags = ["--workspace", *(["--cloud"] + (["--remote", remote] if remote else []) if cloud else [])]
    with snapshot_projects(root, lineages, remote) as projects:
        log(f"[gc] 4. DVC: dvc gc {' '.join(flags)} --dry with {len(projects)} kept lineages")
        removing, _ = _dvc_gc(root, flags, projects, dry=True)
        blockers = _missing_listings(root, projects, lineages)
    cache = cache_dir(root)
    dvc_cache = [(path, _size(path)) for path in removing if Path(path).is_relative_to(cache)]
    dvc_remote = [(path, _size(path)) for path in removing if not Path(path).is_relative_to(cache)]
    record = root / RUN_RECORD
    workspace_run = json.loads(record.read_text()).get("run_id") if record.is_file() else None
    if workspace_run and by_id.get(workspace_run) and by_id[workspace_run].keep is None:
        notes.append(f"{RUN_RECORD} names run {workspace_run}, which is deleted: the file goes too, so a later "
                     "retrain registers nothing until training runs again")
    return RetentionPlan(runs=runs, checkpoints=checkpoints, lineages=lineages, dvc_cache=dvc_cache,
                         dvc_remote=dvc_remote, dvc_flags=flags, workspace_run=workspace_run,
                         older_than_days=older_than_days, keep_runs=keep_runs, notes=notes, blockers=blockers)


def _registered(client: Any) -> tuple[dict[str, str], set[str]]:
    """(run id -> "registered NAME vN, ...", logged model ids that versions' sources name)."""
    runs: dict[str, list[str]] = {}
    models: set[str] = set()
    token = None
    while True:
        page = client.search_model_versions(max_results=1000, page_token=token)
        for version in page:
            run_id = (version.tags or {}).get("mesa.run_id") or version.run_id
            if run_id:
                runs.setdefault(run_id, []).append(f"{version.name} v{version.version}")
            if (version.source or "").startswith("models:/m-"):
                models.add(version.source[len("models:/"):])
        token = page.token
        if not token:
            break
    return {run_id: "registered: " + ", ".join(names) for run_id, names in runs.items()}, models


def _project_runs(client: Any, names: set[str], registered: dict[str, str]) -> list[RunEntry]:
    from mlflow.entities import ViewType

    experiment_ids = {e.experiment_id for e in (client.get_experiment_by_name(n) for n in names) if e}
    for run_id in registered:
        with contextlib.suppress(Exception):  # a version whose run was purged: nothing to keep
            experiment_ids.add(client.get_run(run_id).info.experiment_id)
    runs, token = [], None
    while experiment_ids:
        page = client.search_runs(sorted(experiment_ids), run_view_type=ViewType.ALL, max_results=1000,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        runs.extend(_entry(run) for run in page)
        token = page.token
        if not token:
            break
    return runs


def _entry(run: Any) -> RunEntry:
    return RunEntry(run_id=run.info.run_id, experiment_id=run.info.experiment_id,
                    name=run.info.run_name or "", started_ms=int(run.info.start_time or 0), status=run.info.status,
                    lifecycle=run.info.lifecycle_stage, artifact_uri=run.info.artifact_uri or "",
                    parent=run.data.tags.get("mlflow.parentRunId"))


def _logged_models(client: Any, run: RunEntry) -> list[Any]:
    found, token = [], None
    while True:
        page = client.search_logged_models(experiment_ids=[run.experiment_id],
                                           filter_string=f"source_run_id = '{run.run_id}'", page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def _artifact_bytes(uri: str, tracking_uri: str) -> int | None:
    """Bytes under an artifact location (None when it cannot be listed)."""
    if uri.startswith("file://") or uri.startswith("/"):
        from urllib.parse import unquote, urlparse

        return tree_size(unquote(urlparse(uri).path) if uri.startswith("file://") else uri)
    try:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repo = get_artifact_repository(uri, tracking_uri=tracking_uri)
        total, folders = 0, [None]
        while folders:
            for info in repo.list_artifacts(folders.pop()):
                if info.is_dir:
                    folders.append(info.path)
                else:
                    total += int(info.file_size or 0)
        return total
    except Exception:
        return None


def _checkpoint_folders(root: Path, runs: dict[str, RunEntry], client: Any, notes: list[str]) -> list[FolderEntry]:
    base = root / CHECKPOINTS_DIR
    folders = []
    found = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")) if base.is_dir() else []
    for folder in found:
        run_ids = _checkpoint_runs(folder)
        entry = FolderEntry(folder, run_ids, tree_size(folder))
        reasons = []
        for run_id in run_ids:
            if run_id not in runs:
                with contextlib.suppress(Exception):
                    runs[run_id] = _entry(client.get_run(run_id))
                    runs[run_id].keep = "outside the project's experiments"
            run = runs.get(run_id)
            if run is None:
                reasons.append(f"run {run_id[:12]} is not in this tracking store")
            elif run.keep:
                reasons.append(f"run {run_id[:12]}: {run.keep}")
        if not run_ids:
            reasons.append("no readable checkpoint names its run")
        entry.keep = "; ".join(reasons) or None
        folders.append(entry)
    if any("not in this tracking store" in (f.keep or "") for f in folders):
        notes.append("checkpoints of runs this store does not know are kept (trained against another "
                     "MLFLOW_TRACKING_URI?): delete them by hand if they are not needed")
    return folders


def _checkpoint_runs(folder: Path) -> list[str]:
    """The MLflow run ids the checkpoints in `folder` name (the loop's state, saved by accelerate)."""
    import torch

    found = []
    for state in sorted(folder.glob("checkpoint-*/custom_checkpoint_*.pkl")):
        try:
            data = torch.load(state, map_location="cpu", weights_only=True)
        except Exception:
            continue
        if isinstance(data, dict) and data.get("run_id") and data["run_id"] not in found:
            found.append(str(data["run_id"]))
    return found


# ----------------------------------------------------------------------------- DVC
def _kept_lineages(root: Path, client: Any, kept: list[RunEntry], notes: list[str]) -> list[LineageLock]:
    """One DVC snapshot per distinct lineage of the kept runs (each segment of each run)."""
    found: dict[tuple[str, str, str], LineageLock] = {}
    current_yaml, current_params = (root / DVC_FILE).read_text(), (root / PARAMS_FILE).read_text()
    with tempfile.TemporaryDirectory(prefix="mesa-gc-lineage-") as scratch:
        for run in kept:
            segments = []
            with contextlib.suppress(Exception):
                segments = [e.path for e in client.list_artifacts(run.run_id, SNAPSHOT_DIR) if e.is_dir]
            for segment in segments:
                local = Path(client.download_artifacts(run.run_id, segment, scratch))
                if not (local / DVC_LOCK).is_file():
                    continue
                record_file = local / SNAPSHOT_RECORD
                record = json.loads(record_file.read_text()) if record_file.is_file() else {}
                commit = str(record.get("git_commit") or "unknown")
                dvc_yaml = git_show(root, commit, DVC_FILE) if commit != "unknown" else None
                if dvc_yaml is None:
                    notes.append(f"run {run.run_id[:12]} {segment}: its commit's dvc.yaml is not here; its data is "
                                 "matched against the current dvc.yaml")
                params = (local / PARAMS_FILE).read_text() if (local / PARAMS_FILE).is_file() else current_params
                key = (dvc_yaml or current_yaml, params, (local / DVC_LOCK).read_text())
                found.setdefault(key, LineageLock(f"run {run.run_id[:12]} {segment}", *key))
            if segments:
                continue
            commit = _tag(client, run.run_id, "mesa.git_commit")
            lock = git_show(root, commit, DVC_LOCK) if commit else None
            if lock and run.keep and run.keep.startswith("registered"):
                notes.append(f"run {run.run_id[:12]} ({run.keep}) has no lineage snapshot: its data is kept as "
                             f"dvc.lock at commit {commit[:12]} names it, which may not be what it trained on")
            if lock:
                key = (git_show(root, commit, DVC_FILE) or current_yaml,
                       git_show(root, commit, PARAMS_FILE) or current_params, lock)
                found.setdefault(key, LineageLock(f"run {run.run_id[:12]} commit {commit[:12]}", *key))
            elif run.keep and run.keep.startswith("registered"):
                notes.append(f"run {run.run_id[:12]} ({run.keep}) has no lineage snapshot and its commit no "
                             "dvc.lock: only the workspace protects its data")
    return list(found.values())


def _tag(client: Any, run_id: str, key: str) -> str | None:
    with contextlib.suppress(Exception):
        value = client.get_run(run_id).data.tags.get(key)
        return value if value and value != "unknown" else None
    return None


@contextlib.contextmanager
def snapshot_projects(root: Path, lineages: list[LineageLock], remote: str | None = None) -> Iterator[list[Path]]:
    """Small DVC projects (dvc.yaml, params.yaml, dvc.lock of a kept lineage) sharing `root`'s cache.

    `dvc gc --projects` keeps what their dvc.lock names; sharing the cache lets DVC read the folder
    listings (``.dir`` objects), and the remote lets it fetch a listing the cache lacks.
    """
    cache = cache_dir(root)
    try:
        remote_config = remote_settings(root, remote)
    except LookupError:
        remote_config = None
    with tempfile.TemporaryDirectory(prefix="mesa-gc-projects-") as scratch:
        projects = []
        for index, lineage in enumerate(lineages):
            folder = Path(scratch) / f"lineage-{index:03d}"
            (folder / ".dvc").mkdir(parents=True)
            # What `dvc init --no-scm` writes, without its banner for every kept lineage.
            (folder / ".dvc" / "config").write_text("[core]\n    no_scm = True\n")
            for name, text in zip((DVC_FILE, PARAMS_FILE, DVC_LOCK), (lineage.dvc_yaml, lineage.params,
                                                                            lineage.lock)):
                (folder / name).write_text(text, encoding="utf-8")
            configure_local(folder, remote=remote_config, cache=cache)
            projects.append(folder)
        yield projects


def _dvc_gc(root: Path, flags: list[str], projects: list[Path], dry: bool) -> tuple[list[str], int]:
    """Run `dvc gc` (always --force: it never prompts); return (paths a dry run lists, objects removed)."""
    command = dvc_command("gc", *flags, "--force", *(["--dry"] if dry else []),
                          *(["--projects", *map(str, projects)] if projects else []))
    _, lines = run_command(command, root)
    removed = sum(int(m.group(1)) for m in map(_REMOVED.match, lines) if m)
    return [m.group(1).strip() for m in map(_REMOVING.match, lines) if m], removed


def _missing_listings(root: Path, projects: list[Path], lineages: list[LineageLock]) -> list[str]:
    """Kept folder outputs whose listing (``.dir``) is in neither the cache nor the remote: `dvc gc`
    would not know their files and would delete them."""
    from components.versioning.dvc_git import lock_outs

    cache = cache_dir(root)
    blockers = []
    for folder, lineage in zip(projects, lineages):
        cached = _cached_outs(folder)
        for out, digest in lock_outs(lineage.lock).items():
            if out in cached and digest.endswith(".dir") and not object_path(cache, digest).exists():
                blockers.append(f"{lineage.label}: {out} ({digest}) has no folder listing in the cache or the "
                                "remote, so DVC cannot tell which files it needs; fetch it (`dvc fetch` in a checkout "
                                "with that dvc.lock) or delete that run's registration first")
    return blockers


def _cached_outs(project: Path) -> set[str]:
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        return {out.def_path for stage in repo.index.stages for out in stage.outs if out.use_cache}


def _size(path: str) -> int | None:
    try:
        return Path(path).stat().st_size
    except OSError:
        return None


# ----------------------------------------------------------------------------- applying
def apply_retention(project_dir: str | Path, client: Any, plan: RetentionPlan, log: Log = print) -> dict[str, Any]:
    """Delete what `plan` marks for deletion: runs (artifacts, logged models, the run), checkpoint
    folders, then unused DVC objects.

    Returns:
        dict: ``{"runs", "checkpoints", "dvc_objects", "freed"}`` (counts; freed as text).

    Raises:
        RuntimeError: when the plan has blockers (nothing is deleted).
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    if plan.blockers:
        raise RuntimeError("retention refused, nothing deleted:\n- " + "\n- ".join(plan.blockers))
    root = Path(project_dir).resolve()
    for run in plan.delete_runs:
        for model_id, location, _ in run.models:
            get_artifact_repository(location, tracking_uri=client.tracking_uri).delete_artifacts()
            client.delete_logged_model(model_id)
        if run.artifact_uri:
            get_artifact_repository(run.artifact_uri, tracking_uri=client.tracking_uri).delete_artifacts()
        if run.lifecycle == "active":
            client.delete_run(run.run_id)
        log(f"[gc] deleted run {run.run_id} ({human_bytes(run.bytes)}: artifacts and {len(run.models)} logged models)")
    if plan.workspace_run in {run.run_id for run in plan.delete_runs}:
        (root / RUN_RECORD).unlink(missing_ok=True)
        log(f"[gc] removed {RUN_RECORD} (it named a deleted run)")
    for folder in plan.delete_checkpoints:
        # Renamed first: a training that starts meanwhile never sees a half-deleted folder.
        aside = folder.path.with_name(f".{folder.path.name}.gc-deleting")
        folder.path.rename(aside)
        shutil.rmtree(aside)
        log(f"[gc] deleted {folder.path.relative_to(root)} ({human_bytes(folder.bytes)})")
    with snapshot_projects(root, plan.lineages, _remote_flag(plan.dvc_flags)) as projects:
        _, objects = _dvc_gc(root, plan.dvc_flags, projects, dry=False)
    log(f"[gc] dvc gc {' '.join(plan.dvc_flags)}: {objects} objects removed")
    return {"runs": len(plan.delete_runs), "checkpoints": len(plan.delete_checkpoints), "dvc_objects": objects,
            "freed": human_bytes(plan.total_bytes)}


def _remote_flag(flags: list[str]) -> str | None:
    return flags[flags.index("--remote") + 1] if "--remote" in flags else None
