"""The committed dvc.lock is honest: it records the params.yaml that is committed beside it.

A lock from an older params.yaml tells a reader (and `dvc status` on a fresh clone) that the data
and models were made with values they were not made with. After changing params or a profile,
`make demo` refreshes the lock; this test fails until that happens.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ruamel.yaml import YAML

from components.params import flatten, load_params

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _lock_params() -> dict[str, dict]:
    # YAML 1.2 like DVC (a YAML 1.1 reader takes 1e-06 for a string).
    lock = YAML(typ="safe", pure=True).load((PROJECT_ROOT / "dvc.lock").read_text())
    return {stage: (entry.get("params") or {}).get("params.yaml") or {}
            for stage, entry in lock["stages"].items()}


def _lookup(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def test_every_stage_of_dvc_yaml_is_in_the_lock():
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    assert sorted(_lock_params()) == sorted(stages), "run `make demo` and commit dvc.lock"


@pytest.mark.parametrize("stage", sorted(_lock_params()))
def test_the_lock_records_the_committed_params(stage):
    params = load_params(PROJECT_ROOT)  # YAML 1.2, as DVC reads it
    differing = {}
    for key, recorded in _lock_params()[stage].items():
        try:
            current = _lookup(params, key)
        except KeyError:
            differing[key] = (recorded, "missing from params.yaml")
            continue
        # A group is recorded whole: compare leaf by leaf to name the keys that differ.
        if isinstance(recorded, dict) and isinstance(current, dict):
            left, right = flatten(recorded, f"{key}."), flatten(current, f"{key}.")
            differing.update({k: (left.get(k), right.get(k)) for k in set(left) | set(right)
                              if left.get(k) != right.get(k)})
        elif recorded != current:
            differing[key] = (recorded, current)
    assert not differing, (f"dvc.lock's {stage!r} stage records other params than params.yaml "
                           f"(key: (lock, params.yaml)): {differing}; rerun `make demo` and commit dvc.lock")
