"""params.yaml: loading it (checked in full by components.config), and applying a profile so DVC records it.

A profile file (configs/profiles/NAME.yaml) is a nested mapping of the keys it sets. Every profile
must set the same keys, so switching from any profile to any other is exact and reversible.
Applying one rewrites params.yaml in place (comments kept), the way `dvc exp run -S` does, and
only when the result is valid.

``load_params`` gives the plain dict (what DVC reads, what stages hand on as written);
``load_config`` the same file as a typed ``PipelineConfig``. Both read and check the file once per
process and file content; an invalid file raises ``ParamsError`` naming every bad key.
"""
from __future__ import annotations

import copy
import io
import threading
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from ruamel.yaml import YAML

from components.atomic import atomic_write
from components.config import ParamsError, PipelineConfig, Problem
from components.config.errors import NO_VALUE
from components.layout import PARAMS_FILE

__all__ = ["PROFILES_DIR", "ParamsError", "apply_profile", "available_profiles",
           "check_profiles_agree", "flatten", "load_config", "load_params", "profile_overrides"]

PROFILES_DIR = Path("configs") / "profiles"

_LOADED: dict[Path, tuple[bytes, dict[str, Any], PipelineConfig | None]] = {}  # file -> (bytes, dict, config)
_LOADED_GUARD = threading.Lock()  # stages read params from worker threads too


def _yaml_1_2(text: str, where: Path) -> dict[str, Any]:
    """`text` read as YAML 1.2 the way DVC reads it.

    YAML 1.2 matters: `dvc exp run -S train.mixed_precision=no` writes ``no`` unquoted, which a
    YAML 1.1 reader (PyYAML) would turn into False.
    """
    from ruamel.yaml.error import YAMLError

    try:
        document = YAML(typ="safe", pure=True).load(text)
    except YAMLError as err:
        raise ParamsError([Problem("(the whole file)", NO_VALUE, f"not valid YAML: {err}")], file=str(where)) from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ParamsError([Problem("(the whole file)", document, "must be a mapping of groups (data:, train:, ...)")],
                          file=str(where))
    return document


def _profile_context(params: dict[str, Any], project_dir: Path) -> tuple[str | None, dict[str, Any]]:
    """(the applied profile's file, what it sets by dotted key): errors in those keys name the profile."""
    name = params.get("profile")
    path = project_dir / PROFILES_DIR / f"{name}.yaml"
    if not isinstance(name, str) or not path.is_file():
        return None, {}
    return f"{PROFILES_DIR / path.name}", profile_overrides(name, project_dir)


def _check(params: dict[str, Any], project_dir: Path, file: Path, heading: str | None = None,
           profile: tuple[str | None, dict[str, Any]] | None = None) -> PipelineConfig:
    """`params` as a PipelineConfig, or a ParamsError listing every problem."""
    extra = []
    name = params.get("profile")
    known = available_profiles(project_dir)
    if known and isinstance(name, str) and name not in known:
        extra.append(Problem("profile", name, f"not a profile in {PROFILES_DIR}/ ({', '.join(known)})"))
    try:
        config = PipelineConfig.model_validate(params)
    except ValidationError as err:
        profile_file, values = profile if profile is not None else _profile_context(params, project_dir)
        raise ParamsError.from_validation(err, PipelineConfig, file=str(file), profile=profile_file,
                                          profile_values=values, heading=heading, extra=extra) from None
    if extra:
        raise ParamsError(extra, file=str(file), heading=heading)
    return config


def _load(project_dir: str | Path, validate: bool) -> tuple[dict[str, Any], PipelineConfig | None]:
    """The parsed (and, with `validate`, checked) params.yaml, cached by path and content."""
    path = Path(project_dir) / PARAMS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run mesa from the project folder (where params.yaml is)")
    content = path.read_bytes()
    key = path.resolve()
    with _LOADED_GUARD:
        cached = _LOADED.get(key)
    # Keyed on the content, not the mtime: a test (or `dvc exp run -S`) may rewrite the file twice
    # within one timestamp tick.
    if cached is None or cached[0] != content or (validate and cached[2] is None):
        params = _yaml_1_2(content.decode(), path)
        config = _check(params, Path(project_dir), path) if validate else None
        cached = (content, params, config)
        with _LOADED_GUARD:
            _LOADED[key] = cached
    return cached[1], cached[2]


def load_params(project_dir: str | Path = ".", *, validate: bool = True) -> dict[str, Any]:
    """The whole params.yaml as plain Python values, read as YAML 1.2 the way DVC reads it.

    Args:
        project_dir (str | Path, default "."): the folder holding params.yaml.
        validate (bool, default True): check it in full first (``load_config``); False reads a
            params.yaml of another code version as it is (e.g. one a lineage recorded).

    Returns:
        dict: a fresh copy on every call (callers may change it).

    Raises:
        FileNotFoundError: no params.yaml there.
        ParamsError: it is not valid (every problem listed, with the file and the profile).
    """
    params, _ = _load(project_dir, validate)
    return copy.deepcopy(params)


def load_config(project_dir: str | Path = ".") -> PipelineConfig:
    """params.yaml as a typed, read-only ``PipelineConfig`` (checked in full; shared, not copied).

    Raises:
        FileNotFoundError: no params.yaml there.
        ParamsError: it is not valid (every problem listed, with the file and the profile).
    """
    _, config = _load(project_dir, True)
    return config


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"synth": {"cells": 24}} -> {"synth.cells": 24} (lists are values, not branches)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def available_profiles(project_dir: str | Path = ".") -> list[str]:
    return sorted(p.stem for p in (Path(project_dir) / PROFILES_DIR).glob("*.yaml"))


def profile_overrides(name: str, project_dir: str | Path = ".") -> dict[str, Any]:
    """The flat overrides of profile `name` (e.g. {"synth.cells": 24})."""
    path = Path(project_dir) / PROFILES_DIR / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"unknown profile {name!r}: choose one of {available_profiles(project_dir)} "
                         f"(files in {PROFILES_DIR}/)")
    return flatten(yaml.safe_load(path.read_text()) or {})


def check_profiles_agree(project_dir: str | Path = ".") -> None:
    """Raise if the profiles do not all set the same keys (switching would then leave stale values)."""
    keys = {name: set(profile_overrides(name, project_dir)) for name in available_profiles(project_dir)}
    union = set().union(*keys.values()) if keys else set()
    for name, own in keys.items():
        if own != union:
            raise ValueError(f"profile {name!r} does not set {sorted(union - own)}: every profile in "
                             f"{PROFILES_DIR}/ must set the same keys")


def _profiled(name: str, project_dir: str | Path) -> tuple[str, dict[str, tuple[Any, Any]], PipelineConfig]:
    """params.yaml's text with profile `name` written in (comments and key order kept), what it
    changes, and the config it gives (checked as the stages will read it)."""
    check_profiles_agree(project_dir)
    overrides = {"profile": name, **profile_overrides(name, project_dir)}
    path = Path(project_dir) / PARAMS_FILE
    yaml_rt = YAML()  # round-trip: keeps comments and key order
    yaml_rt.preserve_quotes = True
    # ruamel writes None as an empty value; keep the file's explicit `null`s.
    yaml_rt.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    document = yaml_rt.load(path.read_text())
    changed: dict[str, tuple[Any, Any]] = {}
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = document
        for part in parents:
            if part not in node:
                raise ValueError(f"profile {name!r} sets {dotted!r}, but params.yaml has no group {part!r}")
            node = node[part]
        if leaf not in node:
            raise ValueError(f"profile {name!r} sets {dotted!r}, which params.yaml does not have")
        if node[leaf] != value:
            changed[dotted] = (node[leaf], value)
            node[leaf] = value
    text = io.StringIO()
    yaml_rt.dump(document, text)
    config = _check(_yaml_1_2(text.getvalue(), path), Path(project_dir), path,
                    heading=f"profile {name!r} would make {path} invalid (left unchanged):",
                    profile=(str(PROFILES_DIR / f"{name}.yaml"), profile_overrides(name, project_dir)))
    return text.getvalue(), changed, config


def config_with_profile(name: str, project_dir: str | Path = ".") -> PipelineConfig:
    """The config params.yaml would give with profile `name` applied, without writing it.

    Raises:
        ValueError, ParamsError: as :func:`apply_profile`.
    """
    return _profiled(name, project_dir)[2]


def apply_profile(name: str, project_dir: str | Path = ".") -> dict[str, tuple[Any, Any]]:
    """Write profile `name` into params.yaml; return {key: (old, new)} for the values that changed.

    Raises:
        ValueError: an unknown profile, profiles that set different keys, or a key params.yaml lacks.
        ParamsError: params.yaml would not be valid with the profile (nothing is written).
    """
    text, changed, _ = _profiled(name, project_dir)  # checked before anything is written
    path = Path(project_dir) / PARAMS_FILE
    if changed:
        # keep_mode: a params.yaml the user made private (or shared) stays so.
        atomic_write(path, lambda tmp: tmp.write_text(text), keep_mode=True)
    return changed
