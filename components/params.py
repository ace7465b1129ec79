"""params.yaml: loading it, and applying a profile (a fixed set of overrides) so DVC records it.

A profile file (configs/profiles/NAME.yaml) is a nested mapping of the keys it sets. Every profile
must set the same keys, so switching from any profile to any other is exact and reversible.
Applying one rewrites params.yaml in place (comments kept), the way `dvc exp run -S` does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML

from components.atomic import atomic_write

PARAMS_FILE = "params.yaml"
PROFILES_DIR = Path("configs") / "profiles"


def load_params(project_dir: str | Path = ".") -> dict[str, Any]:
    """The whole params.yaml as plain Python values, read as YAML 1.2 the way DVC reads it.

    YAML 1.2 matters: `dvc exp run -S train.mixed_precision=no` writes ``no`` unquoted, which a
    YAML 1.1 reader (PyYAML) would turn into False.
    """
    path = Path(project_dir) / PARAMS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run mesa from the project folder (where params.yaml is)")
    return YAML(typ="safe", pure=True).load(path.read_text()) or {}


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


def apply_profile(name: str, project_dir: str | Path = ".") -> dict[str, tuple[Any, Any]]:
    """Write profile `name` into params.yaml; return {key: (old, new)} for the values that changed."""
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
    if changed:
        # keep_mode: a params.yaml the user made private (or shared) stays so.
        atomic_write(path, lambda tmp: yaml_rt.dump(document, tmp), keep_mode=True)
    return changed


def reject_unknown_keys(group: str, values: dict[str, Any], known: set[str]) -> None:
    """Raise when params.yaml's `group` sets keys its stage does not read (a typo would do nothing)."""
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"params.yaml {group}: unknown keys {unknown}; known keys: {sorted(known)}")
