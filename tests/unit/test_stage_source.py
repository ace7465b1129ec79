"""The synth stage honours data.source: real Major TOM elsewhere, never inside synth's own output."""
from __future__ import annotations

import json
import shutil

import pytest

from components.config import ParamsError
from flows.stages.synth import synth_stage_flow
from tests.conftest import PROJECT_ROOT


@pytest.fixture
def project(tmp_path):
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    return tmp_path


def _set_source(project, source, raw_dir):
    text = (project / "params.yaml").read_text()
    text = text.replace("source: synth", f"source: {source}").replace("raw_dir: data/raw", f"raw_dir: {raw_dir}")
    (project / "params.yaml").write_text(text)


def test_real_major_tom_source_leaves_a_note_instead_of_a_world(project):
    _set_source(project, "majortom", "data/majortom")
    synth_stage_flow.fn(str(project))  # the flow's body, without a Prefect server
    assert "data/majortom" in (project / "data/raw/SOURCE.txt").read_text()
    assert not (project / "data/raw/s2l2a").exists()
    assert json.loads((project / "reports/synth.json").read_text())["source"] == "majortom"


def test_real_data_inside_the_synth_output_is_refused(project):
    _set_source(project, "majortom", "data/raw")
    with pytest.raises(ParamsError, match=r"data\.raw_dir = 'data/raw': .*put real shards in another folder"):
        synth_stage_flow.fn(str(project))


def test_unknown_source_is_refused(project):
    _set_source(project, "sentinel", "data/raw")
    with pytest.raises(ParamsError, match=r"data\.source = 'sentinel': must be 'synth', 'ingest' or 'majortom'"):
        synth_stage_flow.fn(str(project))
