"""Rebuild a registered model version from its lineage, and say whether it reproduces.

What a version records (and where):

- the registered version: ``mesa.run_id`` (and MLflow's own ``run_id`` / ``source``: the logged model);
- the training run's tags (components.tracking.lineage): ``mesa.git_commit``, ``mesa.git_dirty``,
  ``mesa.params_hash`` and ``mesa.dvc.<out>`` (dvc.lock's hashes when training started: the data
  stages' outputs are those the model was trained on; the model's own output is the previous one);
- the training run's ``lineage/steps-N/`` artifacts (one per training segment, written when it
  starts): ``dvc.lock`` and ``params.yaml`` as they were, ``git.diff`` when tracked files differed
  from the commit, and ``lineage.json`` (commit, dirty flag, params hash, untracked files, start).

The rebuild checks the commit out in a temporary `git worktree`, applies the recorded diff, puts
the recorded params.yaml and dvc.lock in place, pulls the recorded data from the DVC remote into a
cache of its own (verifying every file's hash), reruns the stages with ``dvc repro --force
--no-run-cache`` (the stage commands import the worktree's code, not the installed project's), and
compares: every cached output of the data stages against its recorded hash, and the rebuilt
pipeline's tensors against the registered model's. It refuses, before running anything, when the
record cannot say what ran (no commit, a dirty checkout without its diff, params or dvc.lock that
do not match the recorded hashes, a commit this repository does not have, inputs that neither git
nor DVC can restore).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.layout import (DVC_LOCK, MLFLOW_DB, MLFLOW_PARENT_RUN_ENV, MLFLOW_RUN_TAGS_ENV, PARAMS_FILE,
                               PIPELINE_DIR, REPORTS_DIR)
from components.tracking.lineage import SNAPSHOT_DIR, SNAPSHOT_RECORD, params_hash
from components.versioning.dvc_git import (CommandFailed, Log, configure_local, dvc_command, git, git_show,
                                           has_commit, lock_outs, pipeline_of, remote_settings, run_command, under)

MODEL_OUT = PIPELINE_DIR.as_posix()  # the training stage's output; compared by weights, not by hash
DEFAULT_UNTIL = "train"
_MODEL_ID_URI = "models:/m-"


class CannotRebuild(RuntimeError):
    """The version's record is not enough to rerun it faithfully; the message says what is missing
    and what to do."""


# ----------------------------------------------------------------------------- the record
@dataclass
class Lineage:
    """What a registered version records about how it was made.

    Attributes:
        model (str): registered model name.
        version (str): the version.
        run_id (str): the training run the version came from.
        source (str): the version's source (``models:/<model id>`` for a logged model).
        made_at_ms (int): when the logged model (else the version) was created.
        tags (dict[str, str]): the run's ``mesa.*`` tags.
        segment (str | None): the run's ``lineage/steps-N`` folder describing this model, if any.
        files (dict[str, str]): that folder's files (``dvc.lock``, ``params.yaml``, ``git.diff``,
            ``lineage.json``) by name; empty when the run has none (trained before snapshots).
    """

    model: str
    version: str
    run_id: str
    source: str
    made_at_ms: int
    tags: dict[str, str]
    segment: str | None = None
    files: dict[str, str] = field(default_factory=dict)

    @property
    def record(self) -> dict[str, Any]:
        """``lineage.json`` of the segment, or the run's tags in its shape."""
        if SNAPSHOT_RECORD in self.files:
            return json.loads(self.files[SNAPSHOT_RECORD])
        return {"git_commit": self.tags.get("mesa.git_commit", "unknown"),
                "git_dirty": self.tags.get("mesa.git_dirty", "unknown"),
                "params_hash": self.tags.get("mesa.params_hash"), "untracked": []}

    @property
    def commit(self) -> str:
        return str(self.record.get("git_commit") or "unknown")

    def recorded_outs(self) -> dict[str, str]:
        """Output -> hash when training started: the segment's dvc.lock, else the run's tags."""
        if DVC_LOCK in self.files:
            return lock_outs(self.files[DVC_LOCK])
        return {key[len("mesa.dvc."):]: value for key, value in self.tags.items() if key.startswith("mesa.dvc.")}


def read_lineage(client: Any, name: str, version: int | str, scratch: str | Path) -> Lineage:
    """The lineage of version `version` of registered model `name`.

    Args:
        client (mlflow.MlflowClient): a client of the store holding the registry.
        name (str): registered model name.
        version (int | str): the version.
        scratch (str | Path): a folder to download the lineage artifacts into.

    Raises:
        CannotRebuild: when the version does not exist or names no training run.
    """
    from mlflow.exceptions import MlflowException

    try:
        found = client.get_model_version(name, str(version))
    except MlflowException as err:
        raise CannotRebuild(f"registered model {name!r} has no version {version} at {client.tracking_uri} ({err}); "
                            "list versions with `mlflow models` or the MLflow UI, or pass --model") from None
    run_id = (found.tags or {}).get("mesa.run_id") or found.run_id
    if not run_id:
        raise CannotRebuild(f"{name} version {version} names no training run (no mesa.run_id tag, no run_id): "
                            "it was not registered by `mesa retrain`; nothing records how it was made")
    run = client.get_run(run_id)
    made_at = int(found.creation_timestamp or 0)
    if (found.source or "").startswith(_MODEL_ID_URI):
        made_at = int(client.get_logged_model(found.source[len("models:/"):]).creation_timestamp or made_at)
    lineage = Lineage(model=name, version=str(version), run_id=run_id, source=found.source or "", made_at_ms=made_at,
                      tags={k: v for k, v in run.data.tags.items() if k.startswith("mesa.")})
    segments = _segments(client, run_id, Path(scratch))
    # A run that resumed to more steps has one folder per segment: the model was logged at the end
    # of the last segment that started before it.
    before = [s for s in segments if s[0] <= made_at] or segments
    if before:
        _, lineage.segment, folder = max(before)
        lineage.files = {p.name: p.read_text(encoding="utf-8", errors="surrogateescape")
                         for p in Path(folder).iterdir() if p.is_file()}
    return lineage


def _segments(client: Any, run_id: str, scratch: Path) -> list[tuple[int, str, str]]:
    """(started at ms, artifact folder, local folder) of each lineage snapshot of `run_id`."""
    found = []
    for entry in client.list_artifacts(run_id, SNAPSHOT_DIR):
        if not entry.is_dir:
            continue
        local = client.download_artifacts(run_id, entry.path, str(scratch))
        record = Path(local) / SNAPSHOT_RECORD
        if record.is_file():
            found.append((int(json.loads(record.read_text())["started_at_ms"]), entry.path, local))
    return found


# ----------------------------------------------------------------------------- the report
@dataclass
class OutCheck:
    """One data output: its recorded hash, its rebuilt hash, whether the remote still holds it."""

    out: str
    recorded: str | None
    rebuilt: str | None = None     # None: not rebuilt (its stage is past --until)
    remote: str = "not pulled"      # pulled | missing or damaged | not pulled

    @property
    def equal(self) -> bool | None:
        return None if self.rebuilt is None else self.rebuilt == self.recorded

    @property
    def ok(self) -> bool:
        return self.equal is not False and self.remote != "missing or damaged"


@dataclass
class WeightsCheck:
    """The rebuilt pipeline folder against the registered model's."""

    recorded: str                  # sha256 (16 hex) over the registered pipeline's weight files
    rebuilt: str
    tensors: int                   # tensors compared
    differing_tensors: list[str]   # "file:tensor (max |diff| x)"
    differing_files: list[str]     # other files (configs, tokenizer, DEM rule) whose bytes differ

    @property
    def equal(self) -> bool:
        return not self.differing_tensors and not self.differing_files and self.recorded == self.rebuilt


@dataclass
class RebuildReport:
    """What `rebuild_version` found. ``ok`` is True only when every comparison made came out equal."""

    model: str
    version: str
    run_id: str
    commit: str
    workdir: Path
    kept: bool
    stages: list[str]
    outs: list[OutCheck]
    weights: WeightsCheck | None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.outs) and (self.weights is None or self.weights.equal)

    def table(self) -> str:
        rows = [("out", "recorded", "rebuilt", "equal", "remote")]
        for check in self.outs:
            rows.append((check.out, check.recorded or "-", check.rebuilt or "(not rebuilt)",
                         {True: "yes", False: "NO", None: "-"}[check.equal], check.remote))
        if self.weights is not None:
            rows.append((f"{MODEL_OUT} (weights)", f"registered {self.weights.recorded}", self.weights.rebuilt,
                         "yes" if self.weights.equal else "NO", f"{self.weights.tensors} tensors"))
        else:
            rows.append((f"{MODEL_OUT} (weights)", "registered model", "(not rebuilt)", "-", "-"))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(lines)


# ----------------------------------------------------------------------------- faithfulness
def check_faithful(project_dir: str | Path, lineage: Lineage) -> list[str]:
    """Why `lineage` cannot be rerun faithfully from `project_dir`'s repository ([] when it can).

    Checked before anything runs: a known commit this repository has; for a dirty checkout, its
    diff; params.yaml whose hash is the recorded one; a dvc.lock that names the recorded data.
    """
    problems = []
    record, commit = lineage.record, lineage.commit
    where = f"run {lineage.run_id} ({lineage.model} version {lineage.version})"
    if commit == "unknown":
        problems.append(f"{where} recorded no git commit: it was trained outside a git checkout, so nothing says "
                        "which code ran. Train from a git checkout to get rebuildable versions.")
        return problems
    if not has_commit(project_dir, commit):
        problems.append(f"commit {commit} of {where} is not in this repository: fetch it from the clone it was "
                        f"trained in (`git fetch ORIGIN {commit}`), then rerun.")
        return problems
    dirty = str(record.get("git_dirty"))
    if dirty != "false" and "git.diff" not in lineage.files:
        why = ("tracked files differed from the commit" if dirty == "true"
               else "whether tracked files differed from the commit is unknown")
        diff = record.get("diff") or "no lineage git.diff: trained before lineage snapshots"
        problems.append(f"{where}: {why} (diff: {diff}), so the code that ran is not in the record. Commit "
                        "before training (or retrain with this version of mesa, which records the diff).")
    params_text = lineage.files.get(PARAMS_FILE) or git_show(project_dir, commit, PARAMS_FILE)
    recorded_hash = record.get("params_hash") or lineage.tags.get("mesa.params_hash")
    if params_text is None:
        problems.append(f"{where}: no params.yaml in the lineage or at commit {commit}.")
    elif recorded_hash and _params_hash(params_text) != recorded_hash:
        source = "its lineage params.yaml" if PARAMS_FILE in lineage.files else f"params.yaml at commit {commit}"
        problems.append(f"{where}: {source} hashes to {_params_hash(params_text)}, but the run recorded params "
                        f"hash {recorded_hash}: the parameters that ran are not these. "
                        + ("The lineage artifact was changed after training; restore it from a backup."
                           if PARAMS_FILE in lineage.files else
                           "The params were not committed and the run predates lineage snapshots."))
    if DVC_LOCK not in lineage.files:
        committed = lock_outs(git_show(project_dir, commit, DVC_LOCK))
        differ = {out: (committed.get(out), digest) for out, digest in lineage.recorded_outs().items()
                  if committed.get(out) != digest and not under(out, [MODEL_OUT, REPORTS_DIR.as_posix()])}
        if differ:
            listed = ("it has none" if not committed else "; ".join(
                f"{out}: committed {a}, recorded {b}" for out, (a, b) in sorted(differ.items())))
            problems.append(f"{where} has no lineage dvc.lock (trained before lineage snapshots) and dvc.lock at "
                            f"commit {commit} does not name the data it trained on ({listed}): the recorded data "
                            "cannot be pulled. Commit dvc.lock after each retrain, or retrain with this version "
                            "of mesa (it records dvc.lock with the run).")
    if record.get("untracked_truncated"):
        problems.append(f"{where}: more untracked files than the lineage lists; some may have been code it ran. "
                        "Add them to git (or .gitignore) before training.")
    return problems


def _params_hash(text: str) -> str:
    from ruamel.yaml import YAML

    # Read the way components.params.load_params reads it (YAML 1.2, like DVC).
    return params_hash(YAML(typ="safe", pure=True).load(text) or {})


# ----------------------------------------------------------------------------- the rebuild
def rebuild_version(project_dir: str | Path, lineage: Lineage, client: Any, *, workdir: str | Path | None = None,
                    until: str | None = None, keep: bool = False, env: Mapping[str, str] | None = None,
                    remote: str | None = None, log: Log = print) -> RebuildReport:
    """Rerun the stages that made `lineage`'s version in a temporary worktree and compare.

    Args:
        project_dir (str | Path): the project (its git repository and DVC remote are used).
        lineage (Lineage): from `read_lineage`.
        client (mlflow.MlflowClient): the store holding the registered model (weights are downloaded).
        workdir (str | Path | None, default None): where the worktree goes (must not exist or be
            empty); default: a new temporary folder.
        until (str | None, default None): rerun up to this stage (default: ``train``, so the
            weights are compared too); the version's data is pulled and checked either way.
        keep (bool, default False): leave the worktree (and its rebuilt data) in place.
        env (Mapping[str, str] | None): environment of the stage processes (e.g. PREFECT_API_URL);
            default: this process's.
        remote (str | None): DVC remote name (default: the recorded params' versioning.remote,
            else the project's default remote).
        log (Callable[[str], None]): progress lines.

    Returns:
        RebuildReport: per output recorded vs rebuilt hash and remote state; weights when rebuilt.

    Raises:
        CannotRebuild: when the record is not enough (nothing was run; the worktree is removed
            unless `keep`).
    """
    root = Path(project_dir).resolve()
    problems = check_faithful(root, lineage)
    if problems:
        raise CannotRebuild(f"{lineage.model} version {lineage.version} cannot be rebuilt faithfully:\n- "
                            + "\n- ".join(problems))
    until = until or DEFAULT_UNTIL
    tree = _new_worktree(root, lineage.commit, workdir, log)
    try:
        report = _rebuild_in(root, tree, lineage, client, until, env, remote, log)
        report.kept = keep
        return report
    finally:
        if keep:
            log(f"[rebuild] kept the worktree at {tree} (remove it with `git worktree remove --force {tree}`)")
        else:
            _remove_worktree(root, tree, log)


def _new_worktree(root: Path, commit: str, workdir: str | Path | None, log: Log) -> Path:
    if workdir is None:
        tree = Path(tempfile.mkdtemp(prefix="mesa-rebuild-"))
    else:
        tree = Path(workdir).resolve()
        if tree.exists() and any(tree.iterdir()):
            raise CannotRebuild(f"--workdir {tree} exists and is not empty: name a new folder (or remove it)")
    log(f"[rebuild] 1. git worktree at commit {commit[:12]}: {tree}")
    git(root, "worktree", "add", "--detach", str(tree), commit)
    return tree


def _remove_worktree(root: Path, tree: Path, log: Log) -> None:
    git(root, "worktree", "remove", "--force", str(tree), check=False)
    shutil.rmtree(tree, ignore_errors=True)  # what git left (ignored outputs, a cache it did not know)
    git(root, "worktree", "prune", check=False)
    log(f"[rebuild] removed the worktree {tree}")


def _rebuild_in(root: Path, tree: Path, lineage: Lineage, client: Any, until: str,
                env: Mapping[str, str] | None, remote: str | None, log: Log) -> RebuildReport:
    # 2. The code and params that ran: the commit, the recorded diff, params.yaml and dvc.lock.
    if "git.diff" in lineage.files:
        patch = tree / ".mesa-lineage.diff"
        patch.write_bytes(lineage.files["git.diff"].encode("utf-8", errors="surrogateescape"))
        git(tree, "apply", "--binary", "--whitespace=nowarn", str(patch))
        patch.unlink()
        log("[rebuild] 2. applied the recorded uncommitted changes (lineage git.diff)")
    for name in (PARAMS_FILE, DVC_LOCK):
        if name in lineage.files:
            (tree / name).write_text(lineage.files[name], encoding="utf-8")
    source = f"lineage {lineage.segment}" if lineage.segment else "the commit and the run's tags"
    log(f"[rebuild] 2. params.yaml and dvc.lock as recorded ({source})")

    # 3. DVC: the project's remote, verified downloads, a cache of the worktree's own.
    from components.params import load_params

    # Unchecked: the recorded params.yaml belongs to the recorded code, not to this schema version.
    recorded = load_params(tree, validate=False)
    settings = remote_settings(root, remote or (recorded.get("versioning") or {}).get("remote"))
    configure_local(tree, remote=settings, verify=True)
    upstream, target = _stages(root, tree, until)
    train_upstream, _ = pipeline_of(tree, DEFAULT_UNTIL) if until != DEFAULT_UNTIL else (upstream, target)
    rerun = {stage.name for stage in upstream} | {target.name}
    recorded = lineage.recorded_outs()
    # What a rerun builds on and cannot recompute: `dvc add`ed data and persistent outputs.
    needed = [out for stage in upstream for out in (stage.persistent if stage.command else stage.outs)]
    data_outs = list(dict.fromkeys([*(out for stage in train_upstream for out in stage.outs), *needed]))
    untracked = [path for path in lineage.record.get("untracked") or []
                 if under(path, [dep for stage in [*upstream, target] for dep in stage.deps])]
    if untracked:
        raise CannotRebuild(f"{lineage.model} version {lineage.version} cannot be rebuilt faithfully: files the "
                            f"stages read were untracked when it trained ({', '.join(untracked[:10])}), so no "
                            "commit holds them. Add them to git before training.")

    # Pull the recorded data: checks the remote still holds the version, and restores what a
    # rerun builds on (persistent outputs, `dvc add`ed inputs).
    log(f"[rebuild] 3. dvc pull of the version's data ({len(data_outs)} outputs) from remote {settings[0]} "
        f"({settings[1].get('url')})")
    run_command(dvc_command("pull", "--allow-missing", *data_outs), tree, env=_stage_env(env, tree), log=log,
                prefix="[rebuild]    ", check=False)
    checks = {out: OutCheck(out, recorded.get(out), remote="pulled" if (tree / out).exists() else "missing or damaged")
              for out in data_outs}
    lost = [out for out in needed if checks[out].remote != "pulled"]
    produced = {out for stage in [*upstream, target] if stage.command for out in stage.outs}
    absent = sorted({dep for stage in [*upstream, target] for dep in stage.deps
                     if not (tree / dep).exists() and not under(dep, produced)})
    if lost or absent:
        raise CannotRebuild(
            f"{lineage.model} version {lineage.version} cannot be rebuilt faithfully: "
            + (f"the remote does not hold {', '.join(lost)} as recorded (a rerun cannot recompute it: persistent "
               "or added data); push it from a checkout that has it (`dvc push`). " if lost else "")
            + (f"inputs neither git nor DVC tracks are missing: {', '.join(absent)}; track them (`dvc add`) "
               "before training." if absent else ""))

    # 4. Rerun every stage up to `until`, from scratch: no run cache, the worktree's code.
    log(f"[rebuild] 4. dvc repro --force --no-run-cache {until}: {', '.join(sorted(rerun))}")
    run_command(dvc_command("repro", "--force", "--no-run-cache", until), tree, env=_stage_env(env, tree), log=log,
                prefix="[rebuild]    ")
    rebuilt = lock_outs((tree / DVC_LOCK).read_text())
    for out, check in checks.items():
        if any(out in stage.outs for stage in upstream) or out in target.outs:
            check.rebuilt = rebuilt.get(out)
    # 5. Compare: the table's rows, and the weights when the training stage ran again.
    weights = None
    if any(MODEL_OUT in stage.outs for stage in [*upstream, target] if stage.command):
        log(f"[rebuild] 5. comparing {MODEL_OUT} with the registered model's weights")
        with tempfile.TemporaryDirectory(prefix="mesa-registered-") as scratch:
            weights = compare_pipelines(registered_pipeline(client, lineage, scratch), tree / MODEL_OUT)
    notes = []
    if weights is not None and not weights.equal:
        notes.append("CPU float reductions depend on the thread count and the hardware: weights (and the VAE and "
                     "latents) reproduce bit for bit only on the same kind of machine")
    return RebuildReport(model=lineage.model, version=lineage.version, run_id=lineage.run_id, commit=lineage.commit,
                         workdir=tree, kept=False, stages=sorted(rerun), outs=list(checks.values()), weights=weights,
                         notes=notes)


def _stages(root: Path, tree: Path, until: str):
    try:
        return pipeline_of(tree, until)
    except LookupError as err:
        raise CannotRebuild(f"--until {until}: {err}") from None


def _stage_env(base: Mapping[str, str] | None, tree: Path) -> dict[str, str]:
    """The stage processes' environment: the worktree's code first, a throwaway MLflow store."""
    env = dict(base if base is not None else os.environ)
    # `mesa stage ...` is the installed (editable) project: without this it would import the
    # current checkout's code instead of the commit's.
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    # The rebuild's training run must not land in the team's store next to the real one.
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tree / MLFLOW_DB}"
    for name in (MLFLOW_PARENT_RUN_ENV, MLFLOW_RUN_TAGS_ENV):
        env.pop(name, None)
    return env


# ----------------------------------------------------------------------------- weights
def registered_pipeline(client: Any, lineage: Lineage, scratch: str | Path) -> Path:
    """Download the registered version's pipeline folder (the pyfunc model's ``pipeline`` artifact)."""
    import mlflow.artifacts

    if lineage.source.startswith(_MODEL_ID_URI):
        location = client.get_logged_model(lineage.source[len("models:/"):]).artifact_location
    else:
        location = client.get_model_version_download_uri(lineage.model, lineage.version)
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"{location.rstrip('/')}/artifacts/pipeline",
                                               dst_path=str(scratch), tracking_uri=client.tracking_uri)
    return Path(local)


def compare_pipelines(registered: str | Path, rebuilt: str | Path) -> WeightsCheck:
    """Tensor by tensor (``torch.equal``) for safetensors files, byte by byte for the rest."""
    import torch
    from safetensors.torch import load_file

    registered, rebuilt = Path(registered), Path(rebuilt)
    left, right = _files(registered), _files(rebuilt)
    differing_tensors, differing_files, tensors = [], [], 0
    for rel in sorted(set(left) | set(right)):
        if rel not in left or rel not in right:
            differing_files.append(f"{rel} (only in the {'rebuilt' if rel in right else 'registered'} pipeline)")
        elif rel.endswith(".safetensors"):
            a, b = load_file(str(left[rel])), load_file(str(right[rel]))
            for key in sorted(set(a) | set(b)):
                tensors += 1
                if key not in a or key not in b:
                    differing_tensors.append(f"{rel}:{key} (missing on one side)")
                elif a[key].shape != b[key].shape or not torch.equal(a[key], b[key]):
                    gap = ((a[key].float() - b[key].float()).abs().max().item()
                           if a[key].shape == b[key].shape else float("nan"))
                    differing_tensors.append(f"{rel}:{key} (max |diff| {gap:.3g})")
        elif left[rel].read_bytes() != right[rel].read_bytes():
            differing_files.append(rel)
    return WeightsCheck(recorded=_weights_digest(left), rebuilt=_weights_digest(right), tensors=tensors,
                        differing_tensors=differing_tensors, differing_files=differing_files)


def _files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def _weights_digest(files: dict[str, Path]) -> str:
    digest = hashlib.sha256()
    for rel, path in sorted(files.items()):
        if rel.endswith(".safetensors"):
            digest.update(rel.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


__all__ = ["CannotRebuild", "CommandFailed", "Lineage", "OutCheck", "RebuildReport", "WeightsCheck",
           "check_faithful", "compare_pipelines", "read_lineage", "rebuild_version", "registered_pipeline"]
