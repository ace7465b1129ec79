"""Atomic writes of files and folders: the umask's modes, nothing torn, nothing left behind, recovery."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from components import atomic
from components.atomic import (atomic_folder, atomic_write, begin_folder, commit_folder, recover_folder,
                               remove_folder, write_json_atomic, write_text_atomic)
from tests.conftest import PROJECT_ROOT


@pytest.fixture
def umask():
    """Set the process umask for one test; the old one comes back afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")
                  if p.name.endswith((".tmp", ".building", ".old", ".deleting")))


def _fill(folder: Path, version: str) -> None:
    (folder / "sub").mkdir()
    (folder / "a.txt").write_text(version)
    (folder / "sub" / "b.txt").write_text(version * 2)


def _read(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_files_and_folders_get_the_umasks_mode(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    assert _mode(write_text_atomic(tmp_path / "new" / "a.txt", "x")) == file_mode
    assert _mode(tmp_path / "new") == dir_mode
    assert _mode(write_json_atomic(tmp_path / "b.json", {"k": 1})) == file_mode
    # a writer that deletes and recreates its file (as GDAL does) cannot narrow the mode
    def recreate(tmp: Path) -> None:
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"y")
        os.close(fd)

    assert _mode(atomic_write(tmp_path / "c.bin", recreate)) == file_mode
    with atomic_folder(tmp_path / "folder") as staging:
        _fill(staging, "1")
        # libraries that ignore the umask (safetensors writes 0600) and an executable script
        fd = os.open(staging / "sub" / "model.safetensors", os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
        (staging / "run.sh").write_text("#!/bin/sh\n")
        os.chmod(staging / "run.sh", 0o700)
        (staging / "private").mkdir(mode=0o700)
    folder = tmp_path / "folder"
    assert {p.name: _mode(p) for p in [folder, *folder.rglob("*")]} == {
        "folder": dir_mode, "sub": dir_mode, "private": dir_mode, "a.txt": file_mode, "b.txt": file_mode,
        "model.safetensors": file_mode, "run.sh": dir_mode}
    assert _leftovers(tmp_path) == []


def test_keep_mode_keeps_the_replaced_files_mode(tmp_path, umask):
    umask(0o022)
    target = write_text_atomic(tmp_path / "params.yaml", "a: 1\n")
    os.chmod(target, 0o600)
    write_text_atomic(target, "a: 2\n", keep_mode=True)
    assert _mode(target) == 0o600 and target.read_text() == "a: 2\n"
    write_text_atomic(target, "a: 3\n")
    assert _mode(target) == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_text_atomic(tmp_path / "metrics.json", "old\n")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("ne")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_writer_that_leaves_no_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"out\.bin.*must write to the path"):
        atomic_write(tmp_path / "out.bin", lambda tmp: tmp.unlink())
    assert list(tmp_path.iterdir()) == []


def test_the_temporary_file_keeps_the_callers_suffix(tmp_path):
    seen = []
    atomic_write(tmp_path / "layers.gpkg", lambda tmp: seen.append(tmp.name) or tmp.write_bytes(b"g"),
                 suffix=".tmp.gpkg")
    assert seen[0].startswith(".layers.gpkg.") and seen[0].endswith(".tmp.gpkg")
    assert [p.name for p in tmp_path.iterdir()] == ["layers.gpkg"]


def test_folder_swap_replaces_the_whole_folder_and_leaves_nothing_behind(tmp_path):
    final = tmp_path / "samples"
    with atomic_folder(final) as staging:
        assert staging == tmp_path / "samples.building" and staging.is_dir() and not any(staging.iterdir())
        _fill(staging, "1")
        (staging / "only-in-v1.txt").write_text("gone next time")
    with atomic_folder(final) as staging:
        _fill(staging, "2")
    assert _read(final) == {"a.txt": "2", "sub/b.txt": "22"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples"]


def test_a_failed_build_keeps_the_old_folder_complete(tmp_path):
    final = tmp_path / "pipeline"
    with atomic_folder(final) as staging:
        _fill(staging, "1")
    with pytest.raises(ValueError, match="boom"):
        with atomic_folder(final) as staging:
            (staging / "a.txt").write_text("2")
            raise ValueError("boom")
    assert _read(final) == {"a.txt": "1", "sub/b.txt": "11"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline"]


def test_a_kill_between_the_two_renames_is_recovered_by_readers_and_the_next_swap(tmp_path):
    final = tmp_path / "raw"
    with atomic_folder(final) as staging:
        _fill(staging, "1")
    # The swap's steps, stopped where a killed process would stop: old set aside, new not yet in.
    staging = begin_folder(final)
    _fill(staging, "2")
    atomic._set_aside(final)
    assert not final.exists() and _read(tmp_path / "raw.old") == {"a.txt": "1", "sub/b.txt": "11"}

    assert recover_folder(final) == final  # what a reader calls
    assert _read(final) == {"a.txt": "1", "sub/b.txt": "11"}
    assert recover_folder(final) == final  # nothing left to do: changes nothing

    staging = begin_folder(final)  # the next run starts over: the half-swap's staging is gone
    _fill(staging, "3")
    atomic._set_aside(final)
    with atomic_folder(final) as staging:  # a rerun, without any reader in between
        _fill(staging, "4")
    assert _read(final) == {"a.txt": "4", "sub/b.txt": "44"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_a_process_killed_between_the_renames_leaves_a_recoverable_folder(tmp_path):
    final = tmp_path / "models" / "vae"
    with atomic_folder(final) as staging:
        _fill(staging, "1")
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from components import atomic
        final = Path({str(final)!r})
        staging = atomic.begin_folder(final)
        (staging / "a.txt").write_text("2")
        atomic._set_aside(final)
        os._exit(9)  # killed: the second rename never happens
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    assert not final.exists()
    assert recover_folder(final) == final and _read(final) == {"a.txt": "1", "sub/b.txt": "11"}


def test_commit_folder_works_for_a_folder_several_processes_filled(tmp_path):
    final = tmp_path / "checkpoint-000004"
    staging = begin_folder(final)
    for rank in range(2):
        (staging / f"random_states_{rank}.pkl").write_bytes(bytes([rank]))
    commit_folder(staging, final)
    assert sorted(p.name for p in final.iterdir()) == ["random_states_0.pkl", "random_states_1.pkl"]
    with pytest.raises(FileNotFoundError, match=r"checkpoint-000004\.building.*begin_folder"):
        commit_folder(staging, final)


def test_remove_folder_hides_it_before_deleting(tmp_path):
    doomed = tmp_path / "checkpoint-000002"
    with atomic_folder(doomed) as staging:
        _fill(staging, "1")
    remove_folder(doomed)
    remove_folder(doomed)  # already gone: nothing to do
    assert list(tmp_path.iterdir()) == []


def test_json_bytes_are_stable(tmp_path):
    path = write_json_atomic(tmp_path / "m.json", {"b": 1, "a": Path("x")})
    assert path.read_bytes() == b'{\n  "a": "x",\n  "b": 1\n}\n'
    assert json.loads(path.read_text()) == {"a": "x", "b": 1}


def test_checkpoints_appear_complete_keep_their_names_and_a_half_swap_is_recovered(tmp_path, umask):
    """The training loop's checkpoints through the shared swap: names, `keep` pruning, modes, recovery."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from components.training.loop import list_checkpoints, resume_point, save_checkpoint

    umask(0o022)
    accelerator = Accelerator(cpu=True)
    try:
        model = accelerator.prepare(torch.nn.Linear(2, 2))
        folder = tmp_path / "checkpoints" / "abc123"
        for step in (2, 4, 6):
            with torch.no_grad():
                model.weight.fill_(step)
            assert save_checkpoint(accelerator, folder, step, keep=2) == folder / f"checkpoint-{step:06d}"
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert [p.name for p in list_checkpoints(folder)] == ["checkpoint-000004", "checkpoint-000006"]
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-000004", "checkpoint-000006"]
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)  # safetensors writes 0600 on its own
    assert {_mode(p) for p in files} == {0o644}

    # Killed between the two renames of a rewrite of checkpoint-6: only checkpoint-6.old is left.
    latest = folder / "checkpoint-000006"
    staging = begin_folder(latest)
    (staging / "partial").write_text("x")
    atomic._set_aside(latest)
    (folder / "checkpoint-000008.building").mkdir()  # and a later one never finished
    assert resume_point(folder, "latest") == latest  # put back before resuming
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-000004", "checkpoint-000006",
                                                        "checkpoint-000006.building", "checkpoint-000008.building"]
    assert "partial" not in {p.name for p in latest.iterdir()}
