"""components.versioning.stages: one `dvc repro` of a stage and how it went (real DVC in a temporary
git repository with a one-line stage), and the data version dvc.lock records."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import yaml

from components.versioning.stages import StageFailed, data_version, dvc_stages, exit_description, repro_stage

STAGE_SCRIPT = textwrap.dedent("""
    import os, pathlib, sys
    pathlib.Path(os.environ["TEST_STAGE_STARTED"]).touch()
    print("making out.txt", flush=True)
    pathlib.Path("out.txt").write_text("made")
    pathlib.Path("parts").mkdir(exist_ok=True)
    pathlib.Path("parts/part_0.txt").write_text("part")
    sys.exit(int(os.environ.get("TEST_STAGE_EXIT", "0")))
""")


@pytest.fixture
def dvc_project(tmp_path):
    """A git + DVC repository with stages `make` (python make.py -> out.txt, parts/) and `after`."""
    def run(*command: str) -> None:
        subprocess.run(command, cwd=tmp_path, check=True, capture_output=True, text=True)

    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run(sys.executable, "-m", "dvc", "config", "cache.type", "reflink,hardlink,copy")  # as .dvc/config
    (tmp_path / "make.py").write_text(STAGE_SCRIPT)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "make": {"cmd": f"{sys.executable} make.py", "deps": ["make.py"], "outs": ["out.txt", "parts"]},
        "after": {"cmd": "echo after", "deps": ["out.txt"]}}}, sort_keys=False))
    return tmp_path


def test_a_stage_runs_then_is_skipped_then_restored_from_the_run_cache(dvc_project):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    lines: list[str] = []
    assert dvc_stages(dvc_project) == ["make", "after"]

    first = repro_stage(dvc_project, "make", env=env, started_env="TEST_STAGE_STARTED", on_line=lines.append)
    assert (first["stage"], first["outcome"], first["ran"]) == ("make", "ran", True) and first["changed"]
    assert "making out.txt" in lines
    # relinked after the run (`dvc repro` links files but copies a folder's): the workspace's outputs
    # are the cache's files, so the data is on disk once
    assert (dvc_project / "parts" / "part_0.txt").stat().st_nlink == 2
    assert repro_stage(dvc_project, "make", env=env, started_env="TEST_STAGE_STARTED",
                       on_line=lines.append)["outcome"] == "skipped"
    (dvc_project / "out.txt").unlink()  # same deps: DVC's run cache has the output
    assert repro_stage(dvc_project, "make", env=env, started_env="TEST_STAGE_STARTED",
                       on_line=lines.append)["outcome"] == "restored"
    assert (dvc_project / "out.txt").read_text() == "made"


def test_a_failing_stage_names_itself_and_ends_with_its_output(dvc_project):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "TEST_STAGE_EXIT": "3"}
    with pytest.raises(StageFailed, match=r"stage 'make' failed \(dvc repro exit \d+\)\. Last output:\n(.|\n)*making out.txt"):
        repro_stage(dvc_project, "make", env=env, started_env="TEST_STAGE_STARTED", on_line=lambda line: None)


def test_exit_descriptions_and_the_data_version_from_dvc_lock(tmp_path):
    assert exit_description(2) == "exit 2"
    assert exit_description(-signal.SIGKILL) == "killed by SIGKILL"
    assert data_version(tmp_path) == "no dvc.lock yet"
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"stages": {
        "synth": {"outs": [{"path": "data/raw", "md5": "0123456789abcdef.dir"}]},
        "ingest": {"outs": [{"path": "data/majortom", "md5": "fedcba9876543210.dir"}]},
        "prepare": {"outs": [{"path": "data/samples", "md5": "aaaabbbbccccdddd.dir"}]}}}))
    assert data_version(tmp_path) == "data/raw 0123456789ab, data/samples aaaabbbbcccc"
    assert data_version(tmp_path, raw_dir="data/majortom") == (
        "data/raw 0123456789ab, data/majortom fedcba987654, data/samples aaaabbbbcccc")
