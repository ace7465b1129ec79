"""The `mesa` CLI: every command has --help; data synth writes a world and says where."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["demo"], ["retrain"], ["stage"], ["data"], ["data", "synth"],
                                     ["data", "summary"], ["data", "validate"], ["data", "captions"], ["profile"], ["profile", "use"], ["profile", "show"], ["generate"], ["evaluate"],
                                     ["rebuild"], ["gc"], ["dev"], ["dev", "deps"], ["promote"], ["ablation"]])
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
