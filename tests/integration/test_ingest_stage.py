"""The ingest stage under real DVC: a note with the default source, then `data.source: ingest` from a
loopback mirror, and validate reading what ingest wrote (a persistent, versioned DVC out)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from tests.conftest import make_micro_project
from testsupport.http_mirror import MirrorServer


def _dvc(root, *args, env):
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_dvc_repro_ingest_then_validate_reads_the_ingested_cells(micro_world, prefect_api, tmp_path):
    """Slow tier: two `dvc repro` runs (ingest from a local HTTP mirror, then validate), about 30 s."""
    raw, _ = micro_world
    root = make_micro_project(tmp_path / "project")
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "DVC_NO_ANALYTICS": "1"}

    # 1. Default params (data.source synth): the stage only leaves a note; nothing is fetched
    #    (the default metadata URLs are Hugging Face's, unreachable here).
    _dvc(root, "repro", "ingest", env=env)
    assert [p.name for p in (root / "data/majortom").iterdir()] == ["SOURCE.txt"]
    assert json.loads((root / "reports/ingest.json").read_text()) == {"source": "synth", "ingested": False}

    with MirrorServer(raw) as mirror:
        # 2. One switch in params: the head of the DAG becomes ingest.
        text = (root / "params.yaml").read_text()
        for old, new in (("\n  source: synth\n", "\n  source: ingest\n"),
                         ("\n  raw_dir: data/raw\n", "\n  raw_dir: data/majortom\n"),
                         ("base_url: https://huggingface.co/datasets/Major-TOM/", f"base_url: {mirror.url}/"),
                         ("s2l2a: Core-S2L2A/resolve/main/metadata.parquet", "s2l2a: s2l2a/metadata.parquet"),
                         ("s2l1c: Core-S2L1C/resolve/main/metadata.parquet", "s2l1c: s2l1c/metadata.parquet"),
                         ("dem: Core-DEM/resolve/main/metadata.parquet", "dem: dem/metadata.parquet"),
                         ("max_cells: 256", "max_cells: 6"), ("cells_per_shard: 64", "cells_per_shard: 3")):
            assert old in text, old
            text = text.replace(old, new, 1)
        (root / "params.yaml").write_text(text)
        _dvc(root, "repro", "validate", env=env)  # ingest, then validate on what it wrote
        served = mirror.bytes_served()

        ingested = pd.read_parquet(root / "data/majortom/manifest.parquet")
        assert len(ingested) == 18 and (ingested["status"] == "ok").all()
        cells = set(ingested["grid_cell"])
        assert not (root / "data/majortom/SOURCE.txt").exists() and not (root / "data/raw").exists()
        report = json.loads((root / "reports/ingest.json").read_text())
        assert report["cells_complete"] == 6 and report["failures"] == []

        # Every ingested cell ends in the curated index or in rejected, read from the ingested shards.
        index = pd.read_parquet(root / "data/curated/index.parquet")
        rejected = pd.read_parquet(root / "data/curated/rejected.parquet")
        assert len(index) >= 3 and set(index["grid_cell"]) | set(rejected["grid_cell"]) == cells
        assert index["s2l2a_shard"].str.startswith("data/majortom/s2l2a/images/part_").all()

        # dvc.lock pins the ingested folder (manifest inside) and the params that chose it.
        lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
        assert lock["ingest"]["outs"][0]["path"] == "data/majortom"
        assert lock["ingest"]["params"]["params.yaml"]["data"]["ingest"]["max_cells"] == 6
        assert "synth" not in lock or lock["synth"]["outs"][0]["path"] == "data/raw"
        _dvc(root, "repro", "validate", env=env)
        assert mirror.bytes_served() == served  # nothing fetched again
        status = _dvc(root, "status", "ingest", "validate", env=env)
        assert "changed" not in status, status
