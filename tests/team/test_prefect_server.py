"""The retrain flow against the team's Prefect server (PostgreSQL), not the ephemeral one: its state
and its stage subflows are read back through that server's API, and its rows are in PostgreSQL.

Slow tier: a team Prefect server on PostgreSQL started for the module, two stages run
against it, about 45 seconds.
"""
from __future__ import annotations

import pytest

from tests.conftest import make_micro_project

pytestmark = pytest.mark.slow(minutes=1.5)

STAGES = ["synth", "validate"]


@pytest.fixture(scope="module")
def micro_project(tmp_path_factory):
    """A copy of the project in a fresh git repository, on the micro profile."""
    return make_micro_project(tmp_path_factory.mktemp("team-project"))


def test_retrain_reports_to_the_team_prefect_server(team_servers, micro_project):
    """`mesa retrain` in its own process with PREFECT_API_URL set, as a team member runs it.

    (In-process, this session's test-harness server would still receive the run's events: Prefect's
    event and log workers stay bound to the first API a process uses.)
    """
    import os
    import subprocess
    import sys

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from components.tracking.server import connect_postgres

    command = [sys.executable, "-m", "flows.cli", "retrain"] + [a for s in STAGES for a in ("--stage", s)]
    env = dict(os.environ, PREFECT_API_URL=team_servers.prefect_api_url)
    done = subprocess.run(command, cwd=micro_project, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"Prefect API for this run: {team_servers.prefect_api_url}" in done.stdout  # no ephemeral server
    for stage in STAGES:
        assert f"{stage:10s} ran" in done.stdout

    with temporary_settings({PREFECT_API_URL: team_servers.prefect_api_url}):
        with get_client(sync_client=True) as client:
            assert str(client.api_url).rstrip("/") == team_servers.prefect_api_url
            (flow_run,) = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])))
            run_id = flow_run.id
            assert flow_run.state.is_completed()
            assert flow_run.parameters["stages"] == STAGES
            subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])))
            names = sorted(client.read_flow(f.flow_id).name for f in subflows)
            assert names == sorted(f"stage-{s}" for s in STAGES)
            assert all(f.state.is_completed() for f in subflows), [(f.name, f.state.type) for f in subflows]

    # What the API answered is what PostgreSQL holds (the server kept no other store).
    conn = connect_postgres(team_servers.postgres, team_servers.prefect_db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM flow_run WHERE id = %s OR parent_task_run_id IN "
                        "(SELECT id FROM task_run WHERE flow_run_id = %s)", (str(run_id), str(run_id)))
            assert cur.fetchone()[0] == 1 + len(STAGES)
    finally:
        conn.close()
    assert (micro_project / "data" / "curated" / "index.parquet").exists()
