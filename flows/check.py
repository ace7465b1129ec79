"""`mesa check`: the preflight (components/ops/preflight.py) as one table; exit 1 when a check fails."""
from __future__ import annotations

from typing import Optional

import typer


def check_command(
    profile: Optional[str] = typer.Option(None, help="Check params.yaml as this profile would make it "
                                                     "(demo, micro, paper); nothing is written."),
) -> None:
    """What would fail later, in seconds: data source, pretrained weights, accelerate and GPUs,
    mixed precision, GPU memory and free disk (with the run's size estimate). Downloads nothing."""
    import time

    from components.ops.preflight import PreflightFailed, check_project, table
    from components.params import config_with_profile, load_config
    from flows.settings import project_root

    started = time.perf_counter()
    root = project_root()
    try:
        config = config_with_profile(profile, root) if profile else load_config(root)
    except ValueError as err:  # an unknown profile, or params it would make invalid
        raise SystemExit(f"mesa check: {err}") from None
    try:
        checks = check_project(root, config)
    except PreflightFailed as failure:
        checks = failure.checks
    failed = [check for check in checks if not check.ok]
    typer.echo(table(checks))
    typer.echo(f"\n{len(checks) - len(failed)} of {len(checks)} checks hold for "
               f"{'profile ' + repr(profile) if profile else 'params.yaml'} ({time.perf_counter() - started:.1f} s)"
               + ("; fix the FAIL rows before a run" if failed else ""))
    if failed:
        raise typer.Exit(1)
