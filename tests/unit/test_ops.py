"""components.ops: health checks, `mesa infra`'s state file and process handling, `mesa deploy`'s specs
and the Prefect server it looks for (real sockets, a real local HTTP server, real processes)."""
from __future__ import annotations

import contextlib
import http.server
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

from components.ops import deployments, health, infra
from components.tracking.server import free_port


class _Health(http.server.BaseHTTPRequestHandler):
    """Answers 200 on /ok and /api/health, 503 elsewhere."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path in ("/ok", "/api/health") else 503)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def http_server(port: int = 0) -> Iterator[int]:
    """A local HTTP server on 127.0.0.1 (`port`, 0: any free one) for the block; yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


# ----------------------------------------------------------------------------- health
def test_health_problem_is_none_for_2xx_and_says_why_otherwise():
    with http_server() as port:
        assert health.health_problem(f"http://127.0.0.1:{port}/ok") is None
        assert health.health_problem(f"http://127.0.0.1:{port}/broken") == "HTTP 503 Service Unavailable"
        assert health.port_in_use("127.0.0.1", port)
    closed = free_port()
    assert "ConnectionRefusedError" in health.health_problem(f"http://127.0.0.1:{closed}/ok", timeout_s=1)
    assert not health.port_in_use("127.0.0.1", closed)


def test_wait_until_healthy_returns_once_it_answers_and_fails_on_exit_or_timeout():
    with http_server() as port:
        health.wait_until_healthy(f"http://127.0.0.1:{port}/ok", 5)
    closed = f"http://127.0.0.1:{free_port()}/ok"
    with pytest.raises(RuntimeError, match=r"demo server exited with status 3 before .* answered:\nlog tail"):
        health.wait_until_healthy(closed, 30, exit_code=lambda: 3, label="demo server", details=lambda: "log tail")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"did not answer .* within 0.5 s \(last: ConnectionRefusedError"):
        health.wait_until_healthy(closed, 0.5, interval_s=0.1)
    assert time.monotonic() - started < 5


# ----------------------------------------------------------------------------- infra
def _session_sleeper() -> subprocess.Popen:
    """A process leading a session of its own, as `infra up` starts its servers."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)


def _record(state_dir, *processes: subprocess.Popen, create_times: list[float] | None = None) -> infra.InfraState:
    servers = [infra.StartedServer(name=f"server{i}", pid=p.pid,
                                   create_time=(create_times or [psutil.Process(p.pid).create_time()] * 9)[i],
                                   url="http://127.0.0.1:1", health_url=f"http://127.0.0.1:{free_port()}/health",
                                   log=str(state_dir / "logs" / f"server{i}.log"), database="postgresql://u@h/db")
               for i, p in enumerate(processes)]
    state = infra.InfraState(started_at="2026-01-01T00:00:00+00:00", servers=servers,
                             env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}, artifacts_dir="/tmp/a")
    state.save(state_dir)
    return state


def test_the_state_file_round_trips_and_the_env_file_exports_the_client_settings(tmp_path):
    assert infra.InfraState.load(tmp_path) is None
    process = _session_sleeper()
    try:
        saved = _record(tmp_path, process)
        assert infra.InfraState.load(tmp_path) == saved
        assert (tmp_path / infra.ENV_FILE).read_text() == "export MLFLOW_TRACKING_URI=http://127.0.0.1:1\n"
        assert infra.is_ours(saved.servers[0])
        rows = infra.infra_status(tmp_path)
        assert [(r["name"], r["pid"], r["running"], r["healthy"]) for r in rows] == [("server0", process.pid, True, False)]
    finally:
        process.kill()
        process.wait()


def test_down_stops_what_up_recorded_and_leaves_a_reused_pid_alone(tmp_path):
    ours, stranger = _session_sleeper(), _session_sleeper()
    try:
        # The stranger's recorded start time differs: its pid now belongs to another process.
        _record(tmp_path, ours, stranger,
                create_times=[psutil.Process(ours.pid).create_time(), psutil.Process(stranger.pid).create_time() - 60])
        said: list[str] = []
        assert infra.infra_down(tmp_path, timeout_s=10, say=said.append) == ["server0"]
        assert ours.wait(timeout=5) is not None and stranger.poll() is None
        assert f"server1 (pid {stranger.pid}) is not running any more" in said
        assert not (tmp_path / infra.STATE_FILE).exists() and not (tmp_path / infra.ENV_FILE).exists()
        assert infra.infra_down(tmp_path, say=said.append) == [] and said[-1].startswith("nothing to stop")
    finally:
        for process in (ours, stranger):
            process.kill()
            process.wait()


# ----------------------------------------------------------------------------- deployments
def test_deployment_specs_schedule_only_retrain_and_take_the_work_pool_from_params(tmp_path):
    deploy = {"retrain_cron": "0 3 * * 1", "timezone": "Europe/Zurich", "work_pool": "gpu"}
    specs = {s.flow_name: s for s in deployments.deployment_specs(tmp_path, deploy)}
    assert list(specs) == ["retrain", "ablation", "promote", "ablation-variant"]
    # variants run in temporary copies: any number at once; the others share the workspace
    assert specs["ablation-variant"].concurrency_limit is None and specs["retrain"].concurrency_limit == 1
    assert (specs["retrain"].cron, specs["retrain"].timezone) == ("0 3 * * 1", "Europe/Zurich")
    assert specs["ablation"].cron is None and specs["ablation"].timezone is None
    assert {s.work_pool for s in specs.values()} == {"gpu"}
    assert specs["promote"].full_name == "promote/mesa-promote"
    assert specs["retrain"].parameters == {"project_dir": str(tmp_path.resolve())}
    unscheduled = deployments.deployment_specs(tmp_path, {"retrain_cron": None}, flows=["retrain"])
    assert [(s.cron, s.timezone, s.work_pool) for s in unscheduled] == [(None, None, "mesa-process")]
    with pytest.raises(ValueError, match=r"unknown flows \['nightly'\]"):
        deployments.deployment_specs(tmp_path, {}, flows=["nightly"])
    text = deployments.describe_specs(list(specs.values()), "http://127.0.0.1:4200/api")
    assert "retrain/mesa-retrain" in text and "cron '0 3 * * 1' (Europe/Zurich)" in text
    assert "prefect deployment run 'retrain/mesa-retrain'" in text and "http://127.0.0.1:4200 (Deployments" in text


def test_deployment_server_uses_a_configured_or_local_api_and_says_what_to_do_without_one():
    with http_server() as port:
        configured = f"http://127.0.0.1:{port}/api"
        with deployments.deployment_server(configured, start_local=False) as url:
            assert url == configured
        with deployments.deployment_server(None, start_local=False, port=port) as url:
            assert url == configured  # nothing configured, but a local server answers
    silent = free_port()
    with pytest.raises(deployments.NoPrefectServer, match="does not answer"):
        with deployments.deployment_server(f"http://127.0.0.1:{silent}/api", start_local=True):
            pass
    with pytest.raises(deployments.NoPrefectServer, match=rf"prefect server start --port {silent}`\) and rerun"):
        with deployments.deployment_server(None, start_local=False, port=silent):
            pass
