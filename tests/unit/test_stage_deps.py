"""dvc.yaml's code deps are computed from the imports of each stage's code (`mesa dev deps`)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from components.devtools.stage_deps import (StageDepsError, check_deps, cli_startup_files, compare,
                                            project_imports, stage_code_deps, write_deps)
from flows.cli import app

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_dvc_yaml_names_exactly_the_code_each_stage_runs(monkeypatch):
    # A new import that is not a dep (or a dep no longer imported) fails here: run `mesa dev deps --write`.
    assert check_deps(PROJECT_ROOT) == []
    monkeypatch.chdir(PROJECT_ROOT)
    result = CliRunner().invoke(app, ["dev", "deps", "--check"])
    assert result.exit_code == 0, result.output


def test_stage_deps_follow_lazy_imports_package_inits_and_the_launched_trainer():
    train = stage_code_deps(PROJECT_ROOT, "train")
    assert train[0] == "flows/stages/train.py"
    # `accelerate launch ... -m flows.train_entry`, and what the trainer imports inside functions.
    assert {"flows/train_entry.py", "components/training/loop.py", "components/samples/dataset.py",
            "components/captions/builder.py", "components/samples/__init__.py", "components/__init__.py",
            "flows/stages/__init__.py", "flows/prefect_api.py", "flows/settings.py"} <= set(train)
    assert "components/tracking/server.py" not in train  # a test server, never run by training
    assert "components/captions/landform.py" in stage_code_deps(PROJECT_ROOT, "validate")
    assert "components/majortom/shards.py" in stage_code_deps(PROJECT_ROOT, "prepare")
    assert {"components/export/terrain.py", "components/training/validation.py"} <= set(
        stage_code_deps(PROJECT_ROOT, "evaluate"))
    # importlib.import_module(f"flows.stages.{name}") loads the stage's own module only.
    assert not {"flows/stages/train.py", "flows/train_entry.py"} & set(stage_code_deps(PROJECT_ROOT, "synth"))
    # The CLI only routes `mesa stage NAME` to run_stage: editing it for another command reruns nothing.
    startup = cli_startup_files(PROJECT_ROOT)
    assert {"flows/cli.py", "flows/serve.py", "flows/dev.py"} <= startup
    assert all("flows/cli.py" not in stage_code_deps(PROJECT_ROOT, s) for s in ("synth", "train", "evaluate"))


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def test_imports_inside_functions_relative_and_submodule_imports_count_type_checking_does_not(tmp_path):
    root = _package(tmp_path, {
        "components/__init__.py": "",
        "components/pkg/__init__.py": "",
        "components/pkg/entry.py": """
            from typing import TYPE_CHECKING
            from . import sibling
            if TYPE_CHECKING:
                from components import only_for_types
            def run():
                from components.lazy.deep import thing
                return thing
        """,
        "components/pkg/sibling.py": "import json\n",
        "components/lazy/__init__.py": "",
        "components/lazy/deep.py": "thing = 1\n",
        "components/only_for_types.py": "",
        "components/unused.py": "",
    })
    found = set(project_imports(root, ["components.pkg.entry"]))
    assert found == {"components", "components.pkg", "components.pkg.entry", "components.pkg.sibling",
                     "components.lazy", "components.lazy.deep"}
    # At import time only (what the CLI loads before any command runs), the function body does not count.
    assert "components.lazy.deep" not in project_imports(root, ["components.pkg.entry"], import_time_only=True)


def test_a_dynamic_import_without_a_rule_is_an_error_not_a_missing_dep(tmp_path):
    root = _package(tmp_path, {
        "components/__init__.py": "",
        "components/plugin.py": "import importlib\n\ndef load(name):\n    return importlib.import_module(name)\n",
    })
    with pytest.raises(StageDepsError, match=r"components/plugin.py:4: cannot tell statically .*DYNAMIC_IMPORTS"):
        project_imports(root, ["components.plugin"])


def test_a_folder_dep_is_accepted_only_when_the_stage_runs_every_module_in_it():
    evaluate = stage_code_deps(PROJECT_ROOT, "evaluate")
    whole = [f for f in evaluate if not f.startswith("components/captions/")] + ["components/captions"]
    assert not compare(PROJECT_ROOT, whole, evaluate)
    drift = compare(PROJECT_ROOT, [*evaluate, "components/curation"], evaluate)
    assert drift.extra == ["components/curation"] and not drift.missing


def _project_copy(tmp_path: Path, dvc_text: str) -> Path:
    """A project folder whose code is the real one (linked) and whose dvc.yaml is `dvc_text`."""
    for name in ("components", "flows"):
        (tmp_path / name).symlink_to(PROJECT_ROOT / name, target_is_directory=True)
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    (tmp_path / "dvc.yaml").write_text(dvc_text)
    return tmp_path


def test_write_restores_the_code_deps_and_keeps_comments_and_data_deps(tmp_path, monkeypatch):
    committed = (PROJECT_ROOT / "dvc.yaml").read_text()
    train_block = committed[committed.index("\n  train:\n"):committed.index("\n  evaluate:\n")]
    for line in ("      - components/samples/dataset.py\n", "      - components/tracking/run_logger.py\n",
                 "      - data/samples\n", "      - infra/accelerate\n"):
        assert line in train_block, f"test set-up: {line.strip()} is no longer a train dep"
    # A commented data dep, a dep removed, a dep added that the stage never runs.
    edited_block = (train_block.replace("      - data/samples\n", "      - data/samples  # the shards\n")
                    .replace("      - components/samples/dataset.py\n", "")
                    .replace("      - components/tracking/run_logger.py\n",
                             "      - components/tracking/run_logger.py\n      - components/tracking/server.py\n"))
    expected = committed.replace(train_block, train_block.replace(
        "      - data/samples\n", "      - data/samples  # the shards\n"))
    root = _project_copy(tmp_path, committed.replace(train_block, edited_block))

    [drift] = check_deps(root)
    assert (drift.stage, drift.missing, drift.extra) == (
        "train", ["components/samples/dataset.py"], ["components/tracking/server.py"])
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, ["dev", "deps", "--check"])
    assert result.exit_code == 1
    assert "missing components/samples/dataset.py" in result.output
    assert "extra   components/tracking/server.py" in result.output

    result = CliRunner().invoke(app, ["dev", "deps", "--write"])
    assert result.exit_code == 0, result.output
    assert "rewritten for train" in result.output
    assert (root / "dvc.yaml").read_text() == expected  # comments, data deps and their order as they were
    assert write_deps(root) == [] and check_deps(root) == []
