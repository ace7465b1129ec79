"""components.layout against dvc.yaml: every out, metric and plot a stage declares is a layout path."""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
import yaml

from components import layout

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _layout_paths() -> set[str]:
    """Every fixed path the layout names (constants, and the evaluation's grids inside their folder)."""
    paths = {value.as_posix() for value in vars(layout).values() if isinstance(value, PurePosixPath)}
    return paths | {(layout.EVAL_GRIDS_DIR / f"{name}.png").as_posix() for name in layout.EVAL_GRIDS}


def _declared(entries: list) -> list[str]:
    """The paths of a dvc.yaml outs / metrics / plots list (an entry is a path or {path: options})."""
    return [next(iter(entry)) if isinstance(entry, dict) else entry for entry in entries or []]


def _dvc_paths() -> list[tuple[str, str]]:
    """(stage or "plots", path) of every out, metric and plot in dvc.yaml, params-built paths left out."""
    spec = yaml.safe_load((PROJECT_ROOT / layout.DVC_FILE).read_text())
    found = [(name, path) for name, stage in spec["stages"].items()
             for key in ("outs", "metrics", "plots") for path in _declared(stage.get(key))]
    for plot in spec.get("plots") or []:
        for definition in plot.values():
            found += [("plots", path) for path in (definition.get("y") or {})]
    return [(where, path) for where, path in found if "${" not in path]


@pytest.mark.parametrize("where, path", _dvc_paths(), ids=lambda value: value)
def test_dvc_outputs_are_layout_paths(where, path):
    assert path in _layout_paths(), (f"dvc.yaml {where}: {path} is not a path of components/layout.py; name it "
                                     "there and use the name in the stage that writes it")


def test_every_stage_output_is_checked():
    # A dvc.yaml read wrongly would check nothing: the synth out, a report and a grid must be among them.
    declared = {path for _, path in _dvc_paths()}
    assert {layout.SYNTH_OUT.as_posix(), layout.METRICS_REPORT.as_posix(), layout.TRAIN_CURVE.as_posix(),
            (layout.EVAL_GRIDS_DIR / f"{layout.EVAL_GRIDS[0]}.png").as_posix()} <= declared


def test_project_layout_joins_the_fixed_paths_to_its_root(tmp_path):
    paths = layout.ProjectLayout(str(tmp_path))
    assert paths.root == tmp_path
    assert paths.samples == tmp_path / "data" / "samples" and paths.sample_stats == paths.samples / "stats.json"
    assert paths.run_record == tmp_path / layout.RUN_RECORD and paths.pipeline == tmp_path / layout.PIPELINE_DIR
