"""`mesa`: the one command-line entry point (every command has --help).

Only typer and light project modules are imported here and by the command modules registered
below (models, serve, deploy, data, infra, dev, versioning): each command imports Prefect, MLflow, torch
and the rest inside its body, so `mesa --help` and `mesa CMD --help` start in well under a second
(tests/unit/test_cli.py checks that nothing heavy is imported).
"""
from __future__ import annotations

from flows.settings import configure_environment

configure_environment()  # before Prefect, DVC or HF libraries are imported anywhere below

import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

import typer  # noqa: E402


class MesaTyper(typer.Typer):
    """The `mesa` app: invalid params end a command with one message and exit code 2, not a traceback."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except ValueError as err:
            from components.config.errors import ParamsError  # only now: `mesa --help` stays light

            if not isinstance(err, ParamsError):
                raise
            typer.echo(f"mesa: {err}", err=True)
            raise SystemExit(2) from None


app = MesaTyper(help="MESA text-to-terrain: data, training and MLOps pipeline.", no_args_is_help=True,
                pretty_exceptions_show_locals=False)
profile_app = typer.Typer(help="Parameter profiles (demo, micro, paper).", no_args_is_help=True)


def _root() -> Path:
    from flows.settings import project_root

    return project_root()


@app.command()
def retrain(
    profile: Optional[str] = typer.Option(None, help="Apply this profile to params.yaml first (demo, micro, paper)."),
    stage: Optional[list[str]] = typer.Option(None, "--stage", help="Run only these stages (repeatable)."),
    force: bool = typer.Option(False, help="Rerun stages even when DVC says they are up to date."),
    retries: int = typer.Option(1, min=0, help="Run a failed stage again this often (training resumes from its "
                                               "last checkpoint); 0 stops at the first failure."),
    wait: float = typer.Option(0.0, min=0, help="Seconds to wait for a retrain already running in this "
                                                "workspace to finish (default: refuse at once)."),
    allow_unreproducible: bool = typer.Option(
        False, "--allow-unreproducible",
        help="Let the gate judge a model trained from uncommitted changes or with data not on the DVC remote "
             "(recorded on the version)."),
) -> None:
    """The main job: every pipeline stage (DVC) as Prefect tasks on one Prefect API, then a summary."""
    from flows.main import run_main_job

    run_main_job(_root(), profile=profile, stages=stage, force=force, stage_retries=retries, lock_wait_s=wait,
                 allow_unreproducible=allow_unreproducible)


@app.command()
def demo(
    force: bool = typer.Option(False, help="Rerun stages even when up to date."),
    wait: float = typer.Option(0.0, min=0, help="Seconds to wait for a retrain already running here to finish."),
) -> None:
    """The main job on the embedded defaults (demo profile, synthetic world, CPU)."""
    from flows.main import run_main_job

    run_main_job(_root(), profile="demo", stages=None, force=force, lock_wait_s=wait)


@app.command()
def promote(
    rollback: bool = typer.Option(False, "--rollback", help="Move champion back to the previous champion."),
    version: Optional[int] = typer.Option(None, help="Judge this version instead of the challenger alias."),
    allow_unreproducible: bool = typer.Option(
        False, "--allow-unreproducible",
        help="Judge a challenger trained from uncommitted changes or with data not on the DVC remote (recorded)."),
    approve: Optional[int] = typer.Option(None, "--approve", help="Approve version N: resume its paused promotion "
                                                                   "(registry.gate.require_approval), or judge it now."),
    reject: Optional[int] = typer.Option(None, "--reject", help="Reject version N in review (recorded like a gate "
                                                                 "failure)."),
    note: str = typer.Option("", help="The review's note (with --approve / --reject)."),
) -> None:
    """Judge the challenger against the champion (gate: params registry.gate); move champion only if it passes."""
    from flows.prefect_api import owned_prefect_api
    from flows.promote import decision_summary, promote_flow

    review = None
    if approve is not None or reject is not None:
        if approve is not None and reject is not None:
            raise SystemExit("give --approve N or --reject N, not both")
        version = approve if approve is not None else reject
        import getpass

        review = {"approve": approve is not None, "reviewer": getpass.getuser(), "note": note}
    with owned_prefect_api():
        if review is not None:
            from flows.promote import approval_key, registry_settings
            from flows.prefect_api import resume_paused

            resumed = resume_paused(approval_key(registry_settings(_root())["model_name"], version), review)
            if resumed:
                typer.echo(f"resumed the paused promotion of version {version} (flow run {resumed}) with your review")
                return
        try:
            outcome = promote_flow(project_dir=str(_root()), rollback=rollback, version=version,
                                   allow_unreproducible=allow_unreproducible, review=review)
        except LookupError as err:  # no challenger, no champion, nothing to roll back to: say what to do
            raise SystemExit(str(err)) from None
    if rollback:
        typer.echo(f"{outcome['model']}: champion is version {outcome['champion']} again (was {outcome['was']})")
        return
    typer.echo(f"{outcome['model']}: {decision_summary(outcome)}")
    for reason in outcome["reasons"]:
        typer.echo(f"  {reason}")


@app.command("stage")
def stage_command(name: str = typer.Argument(..., help="Stage name as in dvc.yaml (e.g. synth).")) -> None:
    """Run one pipeline stage (what dvc.yaml's cmd calls). Reads params.yaml, writes the stage's outs."""
    from flows.stages import run_stage

    run_stage(name, _root())


def ablation_command(
    project: Optional[Path] = typer.Option(None, help="Project folder (default: the one holding params.yaml, "
                                                      "searched upwards from here)."),
) -> None:
    """Shadow correction x caption dropout x training seeds (params.yaml `ablation`) as DVC experiments, compared in MLflow.

    Each variant (an arm with one training seed) is a `dvc exp run --temp` of the current commit, up to
    ablation.parallel at once; a rerun skips what DVC already has.

    Writes reports/ablation.md and .json (each effect with a 95 % interval and a verdict), the forest
    plot and the shadow-correction grid (reports/ablation/), and reports/seed_spread.json (the
    promotion gate's margins).
    """
    from components.evaluation.ablation_run import VariantFailed
    from components.layout import ABLATION_JSON, ABLATION_MD
    from components.tracking.store import tracking_uri
    from flows.ablation import ablation_flow
    from flows.prefect_api import owned_prefect_api
    from flows.settings import project_root

    root = project_root(project)
    started = time.perf_counter()
    with owned_prefect_api() as api_url:
        typer.echo(f"Prefect API for this run: {api_url}")
        try:
            summary = ablation_flow(project_dir=str(root))
        except VariantFailed as failure:
            raise SystemExit(f"\nThe ablation stopped: {failure}\nFix the cause and rerun; finished variants are kept.")
    typer.echo("\nVariants:")
    for entry in summary["variants"]:
        state = "trained" if entry["ran"] else "already in DVC, skipped"
        typer.echo(f"  {entry['variant']:30s} {state:24s} MLflow run {entry['run_id']}")
    typer.echo("\nEffects (difference [95 % interval]: verdict):")
    for metric, analysis in summary["effects"].items():
        for effect in analysis["effects"]:
            bounds = (f"[{effect['low']:.3g}, {effect['high']:.3g}]" if effect["low"] is not None else "")
            typer.echo(f"  {metric:36s} {effect['name']:36s} {effect['estimate']:+.3g} {bounds}: {effect['verdict']}")
    typer.echo(f"\nDone in {time.perf_counter() - started:.0f} s. Comparison: {root / ABLATION_MD} "
               f"(and {ABLATION_JSON.name}); grid: {summary['grid'] or 'none'}; MLflow parent run "
               f"{summary['parent_run_id']} in experiment {summary['experiment']!r} (`mlflow ui --backend-store-uri "
               f"{tracking_uri(root)}`); DVC: `dvc exp show`.")


@profile_app.command("use")
def profile_use(name: str) -> None:
    """Write profile NAME's values into params.yaml (DVC then records them)."""
    from components.params import apply_profile

    changed = apply_profile(name, _root())
    for key, (old, new) in changed.items():
        typer.echo(f"{key}: {old} -> {new}")
    typer.echo(f"params.yaml now uses profile {name!r} ({len(changed)} values changed)")


@profile_app.command("show")
def profile_show() -> None:
    """List the profiles and the values each sets."""
    from components.params import available_profiles, load_params, profile_overrides

    root = _root()
    typer.echo(f"current: {load_params(root).get('profile')}")
    for name in available_profiles(root):
        typer.echo(f"{name}: {json.dumps(profile_overrides(name, root))}")


# In the order `mesa --help` lists them; the command modules are light (heavy imports inside functions).
# --- module commands ---
from flows.check import check_command; app.command("check")(check_command)  # noqa: E402,E702
from flows.models import evaluate_command, generate_command; app.command("generate")(generate_command); app.command("evaluate")(evaluate_command)  # noqa: E402,E702,E501
from flows.data import data_app; app.add_typer(data_app, name="data")  # noqa: E402,E702
app.add_typer(profile_app, name="profile")
from flows.serve import serve_command; app.command("serve")(serve_command)  # noqa: E402,E702
from flows.deploy import deploy_command; app.command("deploy")(deploy_command)  # noqa: E402,E702
app.command("ablation")(ablation_command)
from flows.infra import infra_app; app.add_typer(infra_app, name="infra")  # noqa: E402,E702
from flows.dev import dev_app; app.add_typer(dev_app, name="dev")  # noqa: E402,E702
from flows.versioning import gc_command, rebuild_command; app.command("rebuild")(rebuild_command); app.command("gc")(gc_command)  # noqa: E402,E702,E501
# --- end module commands ---


if __name__ == "__main__":
    app()
