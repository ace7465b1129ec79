"""`mesa dev`: checks on the project's own code, for developers and CI.

``mesa dev deps`` keeps dvc.yaml's code deps equal to what each stage runs (computed from the
imports of its code by :mod:`components.devtools.stage_deps`), so that editing a module reruns
exactly the stages that execute it.
"""
from __future__ import annotations

import typer

dev_app = typer.Typer(help="Developer checks on the project's own code (dvc.yaml's code deps).", no_args_is_help=True)


@dev_app.command("deps")
def deps_command(
    check: bool = typer.Option(False, "--check", help="Exit 1 when a stage's code deps in dvc.yaml are wrong (CI)."),
    write: bool = typer.Option(False, "--write", help="Rewrite every stage's code deps in dvc.yaml (comments kept)."),
) -> None:
    """Each stage's code deps (the project modules `mesa stage NAME` imports) against dvc.yaml.

    Without an option, list the computed deps per stage. Data and other non-code deps are never touched.
    """
    from components.devtools.stage_deps import StageDepsError, check_deps, computed_deps, write_deps
    from flows.settings import project_root

    if check and write:
        raise typer.BadParameter("choose one of --check and --write")
    root = project_root()
    try:
        if write:
            changed = write_deps(root)
            typer.echo(f"dvc.yaml: code deps rewritten for {', '.join(changed)}" if changed
                       else "dvc.yaml: code deps already match the code")
            return
        if check:
            drifts = check_deps(root)
            if not drifts:
                typer.echo("dvc.yaml: every stage's code deps match the modules it runs")
                return
            typer.echo("dvc.yaml: code deps differ from the modules the stages run; `mesa dev deps --write` "
                       "fixes them.\n  missing: the stage runs it, but a change to it would not rerun the stage\n"
                       "  extra: the stage does not run it (a folder: not every module in it)", err=True)
            for drift in drifts:
                typer.echo(f"{drift.stage}:", err=True)
                for entry in drift.missing:
                    typer.echo(f"  missing {entry}", err=True)
                for entry in drift.extra:
                    typer.echo(f"  extra   {entry}", err=True)
            raise typer.Exit(1)
        for stage, files in computed_deps(root).items():
            typer.echo(f"{stage}: {len(files)} files")
            for file in files:
                typer.echo(f"  {file}")
    except StageDepsError as err:
        raise SystemExit(f"mesa dev deps: {err}") from None
