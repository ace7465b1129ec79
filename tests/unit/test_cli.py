"""The `mesa` CLI: every command has --help (without importing anything heavy); data synth writes a
world and says where."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def _every_command(group=None, path=()) -> list[list[str]]:
    """Every command path of the `mesa` CLI, groups included (read from the CLI itself, so a new
    command cannot be forgotten here)."""
    import typer

    group = group or typer.main.get_command(app)
    found = [list(path)]
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):  # a group (typer bundles its own click)
            found += _every_command(command, (*path, name))
        else:
            found.append([*path, name])
    return found


@pytest.mark.parametrize("command", _every_command(), ids=lambda c: " ".join(c) or "mesa")
def test_every_command_has_help(command):
    result = runner.invoke(app, command + ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_data_synth_writes_the_three_sources_and_reports_where(tmp_path):
    out = tmp_path / "world"
    result = runner.invoke(app, ["data", "synth", "--cells", "2", "--no-broken", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for source in ("s2l2a", "s2l1c", "dem"):
        assert (out / source / "metadata.parquet").exists()
        assert list((out / source / "images").glob("part_*.parquet"))
    assert str(out) in result.output and "2 cells" in result.output

    summary = runner.invoke(app, ["data", "summary", str(out)])
    assert summary.exit_code == 0, summary.output
    assert "read back 2 cells" in summary.output


def test_unknown_stage_is_a_clear_error():
    result = runner.invoke(app, ["stage", "nope"])
    assert result.exit_code != 0
    assert "unknown stage 'nope'" in result.output


PROJECT_ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("prefect", "torch", "mlflow", "diffusers")


def _run_python(code: str) -> str:
    """stdout of `python -c CODE` in a fresh interpreter (nothing imported by other tests)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_building_the_cli_and_every_commands_help_import_nothing_heavy():
    """`mesa --help` and `mesa CMD --help` start fast: Prefect, torch, MLflow, diffusers load only when a command runs."""
    output = _run_python(f"""
        import sys
        import typer
        from typer.testing import CliRunner
        import flows.cli

        def paths(group, path=()):
            yield list(path)
            for name, command in group.commands.items():
                yield from (paths(command, (*path, name)) if hasattr(command, "commands") else [[*path, name]])

        for path in paths(typer.main.get_command(flows.cli.app)):
            result = CliRunner().invoke(flows.cli.app, path + ["--help"])
            assert result.exit_code == 0, (path, result.output)
        print(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r}))
    """)
    assert output == "[]", f"building the CLI or a command's --help imported {output}: import it inside the command"


@pytest.mark.slow
def test_no_component_and_not_the_cli_pulls_prefect_in():
    """components/ is plain Python and flows/cli.py is light: importing all of them leaves Prefect out.

    Slow tier: imports every component (torch, MLflow, great-expectations ...), about 15 s."""
    output = _run_python("""
        import importlib, pkgutil, sys
        import components
        for module in pkgutil.walk_packages(components.__path__, "components."):
            importlib.import_module(module.name)
        import flows.cli
        print(sorted(m for m in sys.modules if m.split(".")[0] == "prefect")[:5])
    """)
    assert output == "[]", f"importing components/ and flows/cli.py imported {output}"

