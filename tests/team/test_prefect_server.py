"""The retrain flow against the team's Prefect server (PostgreSQL), not the ephemeral one: its state
and its stage subflows are read back through that server's API, and its rows are in PostgreSQL."""
from __future__ import annotations

import pytest

from tests.conftest import make_micro_project

STAGES = ["synth", "validate"]


@pytest.fixture(scope="module")
def micro_project(tmp_path_factory):
    """A copy of the project in a fresh git repository, on the micro profile."""
    return make_micro_project(tmp_path_factory.mktemp("team-project"))


def test_retrain_reports_to_the_team_prefect_server(team_servers, micro_project):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    from components.tracking.server import connect_postgres
    from flows.prefect_api import _drain_to_server
    from flows.retrain import retrain

    with temporary_settings({PREFECT_API_URL: team_servers.prefect_api_url}):
        assert str(get_current_settings().api.url) == team_servers.prefect_api_url
        try:
            state = retrain(project_dir=str(micro_project), stages=STAGES, return_state=True)
            outcome = state.result()
        finally:
            _drain_to_server()  # logs and events reach the server before it is stopped
        ran = outcome["stages"] if isinstance(outcome, dict) else outcome
        assert [(r["stage"], r["ran"]) for r in ran] == [(s, True) for s in STAGES]
        run_id = state.state_details.flow_run_id

        with get_client(sync_client=True) as client:
            assert str(client.api_url).rstrip("/") == team_servers.prefect_api_url
            flow_run = client.read_flow_run(run_id)
            assert flow_run.state.is_completed()
            assert client.read_flow(flow_run.flow_id).name == "retrain"
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
