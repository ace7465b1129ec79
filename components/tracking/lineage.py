"""Lineage tags: which code, which parameters and which data versions produced an MLflow run.

Every tag key starts with ``mesa.`` so that a run's lineage can be searched in the MLflow UI
(``tags."mesa.git_commit" = '...'``) and never collides with MLflow's own ``mlflow.*`` tags.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from components.layout import DVC_LOCK, PARAMS_FILE

UNKNOWN = "unknown"


def flatten_params(nested: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested parameters into dotted keys with string values.

    Args:
        nested (Mapping[str, Any]): parameters, e.g. ``{"train": {"lr": 1e-4}}``.
        prefix (str, default ""): key prefix of this level (used by the recursion).

    Returns:
        dict[str, str]: ``{"train.lr": "0.0001"}``. Strings and paths are kept as written; other
        leaves (numbers, booleans, lists, None) are JSON-encoded so that ``true``/``null``/
        ``[1, 2]`` read the same as in params.yaml. An empty mapping becomes ``"{}"`` so the key
        is not lost.
    """
    flat: dict[str, str] = {}
    for key, value in nested.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, name))
        else:
            flat[name] = _leaf_to_str(value)
    return flat


def _leaf_to_str(value: Any) -> str:
    """One parameter value as text (strings and paths unquoted, the rest as JSON)."""
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)


def params_hash(params: Mapping[str, Any]) -> str:
    """The first 16 hex digits of the sha256 of the canonical JSON of `params`.

    Args:
        params (Mapping[str, Any]): the (nested) parameters of a run.

    Returns:
        str: 16 hex digits; equal parameters give equal hashes whatever their key order.
    """
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _git(project_dir: Path, *args: str) -> str | None:
    """Output of one git command in `project_dir`, or None when git or the repository is missing."""
    try:
        done = subprocess.run(
            ["git", "-C", str(project_dir), *args],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(project_dir: str | Path) -> tuple[str, str]:
    """The commit checked out in `project_dir` and whether tracked files differ from it.

    Args:
        project_dir (str | Path): a folder inside a git work tree (or not).

    Returns:
        tuple[str, str]: (commit sha or "unknown", "true" / "false" / "unknown"). Untracked files
        do not count as dirty: stage outputs that are not git-ignored would otherwise mark every
        run dirty and hide the changes that matter (edited code or params). Neither does
        dvc.lock: the pipeline itself rewrites it as stages run, and the data versions it names
        are recorded on their own (``mesa.dvc.*``).
    """
    commit = _git(Path(project_dir), "rev-parse", "HEAD")
    if not commit:
        return UNKNOWN, UNKNOWN
    status = _git(Path(project_dir), "status", "--porcelain", "--untracked-files=no", "--", ".",
                  f":(exclude){DVC_LOCK}")
    if status is None:
        return commit, UNKNOWN
    return commit, "true" if status else "false"


def dvc_out_hashes(dvc_lock: str | Path) -> dict[str, str]:
    """The md5 of every output recorded in a dvc.lock file.

    Args:
        dvc_lock (str | Path): path of dvc.lock.

    Returns:
        dict[str, str]: output path (as written in dvc.lock, e.g. "data/samples") -> md5 (a
        directory's md5 keeps DVC's ".dir" suffix). Empty when the file does not exist.

    Raises:
        ValueError: when the file is not the YAML that DVC writes (what to do: rerun `dvc repro`
            or restore dvc.lock from git).
    """
    path = Path(dvc_lock)
    if not path.exists():
        return {}
    try:
        lock = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err}); restore it from git or rerun `dvc repro`") from err
    stages = lock.get("stages") if isinstance(lock, Mapping) else None
    if not isinstance(stages, Mapping):
        raise ValueError(f"{path}: no 'stages' mapping; is this a dvc.lock (schema 2.0)?")
    hashes: dict[str, str] = {}
    for stage in stages.values():
        for out in (stage or {}).get("outs") or []:
            # DVC 3 writes "md5"; some remotes/cloud outs carry "etag" or "checksum" instead.
            digest = out.get("md5") or out.get("etag") or out.get("checksum")
            if out.get("path") and digest:
                hashes[str(out["path"]).rstrip("/")] = str(digest)
    return hashes


def lineage_tags(
    project_dir: str | Path,
    params: Mapping[str, Any],
    data_counts: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Tags that tie an MLflow run to its code, parameters and data versions.

    Args:
        project_dir (str | Path): the project root (holds dvc.lock; inside the git work tree).
        params (Mapping[str, Any]): the parameters the run used (nested, as in params.yaml).
        data_counts (Mapping[str, Any] | None, default None): sizes of the data the run saw,
            e.g. ``{"train_samples": 812}``; each becomes ``mesa.data.<key>``.

    Returns:
        dict[str, str]: ``mesa.git_commit``, ``mesa.git_dirty``, ``mesa.params_hash``,
        ``mesa.dvc.<out path>`` for each output in dvc.lock, ``mesa.data.<key>``.
    """
    project = Path(project_dir)
    commit, dirty = git_state(project)
    tags = {
        "mesa.git_commit": commit,
        "mesa.git_dirty": dirty,
        "mesa.params_hash": params_hash(params),
    }
    for out, digest in sorted(dvc_out_hashes(project / DVC_LOCK).items()):
        tags[f"mesa.dvc.{out}"] = digest
    for key, value in (data_counts or {}).items():
        tags[f"mesa.data.{key}"] = _leaf_to_str(value)
    return tags


# ----------------------------------------------------------------------------- snapshots
SNAPSHOT_DIR = "lineage"  # run artifact folder: one sub-folder per training segment
SNAPSHOT_RECORD = "lineage.json"
DIFF_LIMIT_BYTES = 20 * 2**20  # a bigger diff is not kept (the record says so; rebuild refuses)
UNTRACKED_LIMIT = 1000


def snapshot_folder(steps: int) -> str:
    """The run artifact folder for a training segment that trains up to `steps` (``lineage/steps-000036``)."""
    return f"{SNAPSHOT_DIR}/steps-{int(steps):06d}"


def lineage_snapshot(project_dir: str | Path, params: Mapping[str, Any], steps: int,
                     started_at_ms: int | None = None) -> dict[str, str]:
    """The files that let a training be rerun faithfully, as ``{artifact path: text}``.

    The run's tags name the commit and the data versions; these files keep what the tags only
    point at and what may be kept nowhere else: dvc.lock as it is when training starts (the
    pipeline does not commit it), params.yaml as read, and, when tracked files differ from the
    commit, their diff (``git diff HEAD --binary``). A run that resumes to more steps writes a
    second folder; the last folder written before a model was logged describes that model.

    Args:
        project_dir (str | Path): the project root (holds dvc.lock and params.yaml).
        params (Mapping[str, Any]): the parameters the training uses (hashed as `params_hash`).
        steps (int): the step count this segment trains to (names the folder).
        started_at_ms (int | None, default None): when the segment started (default: now).

    Returns:
        dict[str, str]: ``lineage/steps-N/{lineage.json, params.yaml, dvc.lock, git.diff}`` (the
        last two only when there is a dvc.lock / a dirty checkout). ``lineage.json`` holds the
        commit, the dirty flag, the params hash, the untracked files (not in the diff) and the
        start time.
    """
    import time

    project = Path(project_dir)
    folder = snapshot_folder(steps)
    commit, dirty = git_state(project)
    untracked = (_git(project, "ls-files", "--others", "--exclude-standard") or "").splitlines()
    record: dict[str, Any] = {"git_commit": commit, "git_dirty": dirty, "params_hash": params_hash(params),
                              "steps": int(steps), "started_at_ms": int(started_at_ms or time.time() * 1000),
                              "untracked": untracked[:UNTRACKED_LIMIT],
                              "untracked_truncated": len(untracked) > UNTRACKED_LIMIT}
    files = {}
    for name in (PARAMS_FILE, DVC_LOCK):
        if (project / name).is_file():
            files[f"{folder}/{name}"] = (project / name).read_text(encoding="utf-8")
    if dirty == "true":
        diff = _git_diff(project)
        record["diff"] = "git.diff" if diff is not None else "too large or unreadable"
        if diff is not None:
            files[f"{folder}/git.diff"] = diff
    files[f"{folder}/{SNAPSHOT_RECORD}"] = json.dumps(record, indent=1, sort_keys=True)
    return files


def _git_diff(project: Path) -> str | None:
    """``git diff HEAD --binary`` verbatim (a patch needs its final newline), None when too big or failing."""
    try:
        done = subprocess.run(["git", "-C", str(project), "diff", "HEAD", "--binary"], capture_output=True,
                              timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0 or len(done.stdout) > DIFF_LIMIT_BYTES:
        return None
    return done.stdout.decode("utf-8", errors="surrogateescape")


# ----------------------------------------------------------------------------- reproducibility
def reproducibility_problems(run_tags: Mapping[str, str], workspace_hashes: Mapping[str, str],
                             unpushed: Sequence[str] | None, inputs: Sequence[str],
                             segments: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """Why a training run could not be reproduced from git and the DVC remote ([] when it can).

    Args:
        run_tags (Mapping[str, str]): the run's tags (``lineage_tags``: commit, dirty flag, DVC outs
            as dvc.lock held them when training started).
        workspace_hashes (Mapping[str, str]): ``dvc_out_hashes`` of the workspace's dvc.lock.
        inputs (Sequence[str]): the DVC outputs training reads (the train stage's deps): the ones
            whose versions must match the workspace's for its remote check to apply (the run's
            own outputs were older when it started).
        segments (Sequence[Mapping]): the run's ``lineage.json`` records, one per training segment
            (a resumed run trains on in a later segment, perhaps from other code): each must be
            clean; without any, the run's tags (its first segment) decide.
        unpushed (Sequence[str] | None): the workspace's outputs the DVC remote lacks; None when
            the remote could not be asked.

    Returns:
        list[str]: one sentence per problem, each saying what to do.
    """
    problems = []
    states = [(str(r.get("git_commit")), str(r.get("git_dirty")), f" (segment to step {r.get('steps')})")
              for r in segments] or [(str(run_tags.get("mesa.git_commit")), str(run_tags.get("mesa.git_dirty")), "")]
    for commit, dirty, where in states:
        if commit in ("None", "", UNKNOWN):
            problems.append(f"no git commit is recorded for its training{where}: train inside a git checkout")
        elif dirty != "false":
            problems.append(f"it was trained from a tree with uncommitted changes{where} (git_dirty={dirty}, "
                            f"commit {commit[:7]}): commit the change and retrain")
    commit = states[-1][0]
    outs = {key[len("mesa.dvc."):]: value for key, value in run_tags.items()
            if key.startswith("mesa.dvc.") and key[len("mesa.dvc."):] in inputs}
    if not outs:
        problems.append("no DVC output hashes are recorded for its training run: run it through `mesa retrain`")
    elif any(workspace_hashes.get(path) != digest for path, digest in outs.items()):
        problems.append("its data versions are not this workspace's dvc.lock, so the remote cannot be checked: "
                        f"check out commit {str(commit)[:7]} (and `dvc pull`) before judging it")
    elif unpushed is None:
        problems.append("the DVC remote could not be asked whether its data is there: configure a remote "
                        "(.dvc/config) or params versioning.remote")
    elif unpushed:
        shown = ", ".join(unpushed[:3]) + (f" and {len(unpushed) - 3} more" if len(unpushed) > 3 else "")
        problems.append(f"its data is not on the DVC remote ({shown}): run `dvc push`")
    return problems
