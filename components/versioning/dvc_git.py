"""Git and DVC plumbing for rebuilds and garbage collection.

DVC is driven through its command line (what a user would type, in a subprocess) and, where only
its configuration or DAG is read, through ``dvc.repo.Repo``. Paths handed to DVC's Python API are
absolute: DVC resolves targets against the working directory, not the repository.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Log = Callable[[str], None]


class CommandFailed(RuntimeError):
    """A git or DVC command exited non-zero; the message names it and ends with its last output."""


def dvc_command(*args: str) -> list[str]:
    """``python -m dvc ARGS`` with this interpreter (the DVC of this environment, venv or not)."""
    return [sys.executable, "-m", "dvc", *args]


def run_command(command: list[str], cwd: str | Path, env: Mapping[str, str] | None = None, log: Log | None = None,
                prefix: str = "", check: bool = True) -> tuple[int, list[str]]:
    """Run `command`, streaming each output line to `log`; return (exit code, every line).

    Raises:
        CommandFailed: when `check` and the exit code is not 0 (with the last 30 lines).
    """
    from components.processes import run_streaming

    lines: list[str] = []

    def keep(line: str) -> None:
        lines.append(line)
        if log:
            log(f"{prefix}{line}")

    # In the caller's process group: Ctrl-C at `mesa rebuild` or `mesa gc` reaches the command directly.
    returncode = run_streaming(command, cwd=cwd, env=env, on_line=keep, new_session=False)
    if check and returncode != 0:
        tail = "\n".join(deque(lines, maxlen=30))
        raise CommandFailed(f"`{' '.join(command[2:] if command[:2] == [sys.executable, '-m'] else command)}` "
                            f"in {cwd} failed (exit {returncode}). Last output:\n{tail}")
    return returncode, lines


def git(repo: str | Path, *args: str, check: bool = True) -> str:
    """Output of one git command in `repo` (stripped)."""
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise CommandFailed(f"`git {' '.join(args)}` in {repo} failed (exit {done.returncode}): "
                            f"{done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def git_show(repo: str | Path, commit: str, path: str) -> str | None:
    """The text of `path` at `commit`, or None when the commit does not have it."""
    done = subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{path}"], capture_output=True, text=True,
                          check=False)
    return done.stdout if done.returncode == 0 else None


def has_commit(repo: str | Path, commit: str) -> bool:
    return subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{commit}^{{commit}}"],
                          capture_output=True, check=False).returncode == 0


# ----------------------------------------------------------------------------- DVC configuration
def remote_settings(project_dir: str | Path, name: str | None = None) -> tuple[str, dict[str, Any]]:
    """(name, options) of DVC remote `name` (default: the project's default remote), url absolute.

    Raises:
        LookupError: when the project has no such remote (what to do: `dvc remote add -d ...`).
    """
    from dvc.repo import Repo

    with Repo(str(Path(project_dir).resolve())) as repo:
        config = repo.config  # relative local urls come back resolved against .dvc/
        name = name or config["core"].get("remote")
        remotes = dict(config.get("remote") or {})
    if not name or name not in remotes:
        raise LookupError(f"{project_dir}: no DVC remote {name!r} (remotes: {sorted(remotes)}); add one with "
                          "`dvc remote add -d NAME URL` or set params versioning.remote")
    return name, dict(remotes[name])


def cache_dir(project_dir: str | Path) -> Path:
    """The project's DVC cache folder (what `dvc cache dir` prints)."""
    from dvc.repo import Repo

    with Repo(str(Path(project_dir).resolve())) as repo:
        return Path(repo.cache.local_cache_dir)


def configure_local(project_dir: str | Path, remote: tuple[str, Mapping[str, Any]] | None = None,
                    cache: str | Path | None = None, verify: bool = False) -> None:
    """Write `.dvc/config.local` of `project_dir`: a default remote (absolute url) and/or a cache folder.

    Args:
        project_dir (str | Path): a DVC project (a worktree or a snapshot project).
        remote (tuple[str, Mapping] | None): (name, options) as `remote_settings` returns them.
        cache (str | Path | None): share this cache folder instead of the project's own.
        verify (bool, default False): recompute the hash of every file pulled from the remote, so
            a damaged copy there is refused instead of checked out.
    """
    from dvc.repo import Repo

    with Repo(str(Path(project_dir).resolve())) as repo, repo.config.edit("local") as config:
        if remote is not None:
            name, options = remote
            config["core"]["remote"] = name
            config["remote"][name] = {**dict(options), **({"verify": True} if verify else {})}
        if cache is not None:
            config["cache"]["dir"] = str(cache)


# ----------------------------------------------------------------------------- DAG and dvc.lock
@dataclass
class StageInfo:
    """One stage of a DVC project as the rebuild needs it."""

    name: str
    command: bool           # False for a .dvc file (data added with `dvc add`): nothing to rerun
    outs: list[str]         # cached outputs (data versions)
    persistent: list[str]   # outputs DVC keeps between runs (a rerun builds on them)
    deps: list[str]         # dependency paths as written (templating resolved)


def pipeline_of(project_dir: str | Path, target: str) -> tuple[list[StageInfo], StageInfo]:
    """The stages `target` depends on (transitively) and the target itself.

    Raises:
        LookupError: when `target` is not a stage of the project's dvc.yaml.
    """
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(Path(project_dir).resolve())) as repo:
        stages = {_stage_name(stage, repo.root_dir): stage for stage in repo.index.stages}
        if target not in stages:
            raise LookupError(f"stage {target!r} is not in {project_dir}/dvc.yaml (stages: {sorted(stages)})")
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        above = nx.descendants(graph, stages[target])
        upstream = [_info(name, stage) for name, stage in stages.items() if stage in above]
        return upstream, _info(target, stages[target])


def _stage_name(stage: Any, root: str) -> str:
    """The stage's name in dvc.yaml, or a .dvc file's path (`addressing` is relative to the working directory)."""
    from dvc.stage import PipelineStage

    return stage.name if isinstance(stage, PipelineStage) else os.path.relpath(stage.path, root)


def _info(name: str, stage: Any) -> StageInfo:
    return StageInfo(name=name, command=bool(getattr(stage, "cmd", None)),
                     outs=[out.def_path for out in stage.outs if out.use_cache],
                     persistent=[out.def_path for out in stage.outs if out.use_cache and out.persist],
                     deps=[dep.def_path for dep in stage.deps])


def lock_outs(lock_text: str | None) -> dict[str, str]:
    """Output path -> hash of every output in a dvc.lock text ({} for None or an empty lock)."""
    lock = yaml.safe_load(lock_text or "") or {}
    hashes: dict[str, str] = {}
    for stage in (lock.get("stages") or {}).values():
        for out in (stage or {}).get("outs") or []:
            digest = out.get("md5") or out.get("etag") or out.get("checksum")
            if out.get("path") and digest:
                hashes[str(out["path"]).rstrip("/")] = str(digest)
    return hashes


def under(path: str, roots: Iterable[str]) -> bool:
    """Whether `path` is one of `roots` or inside one of them (relative POSIX paths)."""
    path = path.rstrip("/")
    return any(path == root.rstrip("/") or path.startswith(root.rstrip("/") + "/") for root in roots)


def object_path(cache: str | Path, digest: str) -> Path:
    """Where DVC 3 keeps object `digest` (md5, ``.dir`` for a folder listing) in a cache or local remote."""
    return Path(cache) / "files" / "md5" / digest[:2] / digest[2:]


def tree_size(path: str | Path) -> int:
    """Bytes of the files under `path` (a file's own size; 0 when it does not exist)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += (Path(folder) / name).lstat().st_size
            except OSError:
                pass
    return total


def human_bytes(count: int | None) -> str:
    if count is None:
        return "? bytes"
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
