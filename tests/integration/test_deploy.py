"""`mesa deploy`: deployments that run when triggered, served by `mesa deploy` or run by a process worker.

Real Prefect (the test harness server), real DVC in fresh git repositories, real subprocesses
(`mesa deploy`, `prefect deploy`, `prefect worker start`).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from components.params import load_params
from tests.conftest import PROJECT_ROOT, commit_project, make_micro_project, set_params

PROJECT_FILES = ["params.yaml", "dvc.yaml", "prefect.yaml", "configs", "components", "flows", "infra",
                 ".dvc/config", ".dvcignore", ".gitignore"]
BIN = Path(sys.executable).parent
RETRAIN = "retrain/mesa-retrain"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project in a fresh git repo, on the micro profile (shared: synth runs once)."""
    return make_project(tmp_path_factory.mktemp("deploy") / "project")


def make_project(root: Path) -> Path:
    return make_micro_project(root)


def process_env(api_url: str) -> dict[str, str]:
    """The tests' environment for a subprocess on the harness server, polling often (runs start fast)."""
    return dict(os.environ, PREFECT_API_URL=api_url, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
                PREFECT_RUNNER_POLL_FREQUENCY="1", PREFECT_WORKER_QUERY_SECONDS="1",
                PREFECT_WORKER_HEARTBEAT_SECONDS="5")


def _sigint_at_its_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def background(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """Run `command` in the background; on exit press Ctrl-C and wait for it to stop.

    Ctrl-C in a terminal interrupts the whole foreground process group (the server or worker and
    the flow-run processes it started), so the command gets its own group and the SIGINT goes to
    the group. The command starts with SIGINT at its default, as from a terminal, whatever this
    process has: an ignored SIGINT is inherited across exec, and in a two-worker run `mesa deploy`
    sat through Ctrl-C that way (its stack dump: the event loop idle, no shutdown begun) after
    its worker had run other modules (one way to get there: DVC's stage runner ignores SIGINT
    while a command runs and restores only a truthy previous handler, and SIG_DFL is 0). A
    command still running 90 s later gets SIGUSR1 first (`mesa deploy` then writes every
    thread's stack to its log), then is killed.
    """
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_sigint_at_its_default)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=90)  # pausing the schedules on a loaded server can take a while
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGUSR1)
                time.sleep(2)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_for(check, what: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0):
    """Poll `check()` until it returns something truthy; fail with the subprocess's output otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"{what}: the process exited with {proc.returncode}. Output:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s. Output so far:\n{log.read_text()}")
        time.sleep(0.5)


def read_deployment(name: str, project: Path):
    """The deployment `name` once it is registered for `project` (other tests register the same names)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None
    return deployment if deployment.parameters.get("project_dir") == str(project) else None


def trigger_synth(project: Path, timeout: float = 300.0):
    """Run the retrain deployment on the synth stage only; return the finished flow run."""
    from prefect.deployments import run_deployment

    return run_deployment(name=RETRAIN, parameters={"project_dir": str(project), "stages": ["synth"]},
                          timeout=timeout)


def assert_synth_ran(run, project: Path, log: Path) -> None:
    assert run.state is not None and run.state.is_completed(), (
        f"flow run {run.name} ended {run.state}; process output:\n{log.read_text()}")
    assert (project / "data/raw/s2l2a/metadata.parquet").exists()
    assert (project / "reports/synth.json").exists()


def test_prefect_yaml_matches_the_deployment_definitions():
    from flows.deploy import deployment_specs

    spec_file = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    declared = {d["name"]: d for d in spec_file["deployments"]}
    specs = deployment_specs(PROJECT_ROOT)
    params = load_params(PROJECT_ROOT)["deploy"]

    assert sorted(declared) == sorted(s.name for s in specs) == ["mesa-ablation", "mesa-ablation-variant",
                                                                 "mesa-promote", "mesa-retrain"]
    for spec in specs:
        entry = declared[spec.name]
        assert entry["entrypoint"] == spec.entrypoint
        assert entry["work_pool"]["name"] == spec.work_pool == params["work_pool"]
        assert entry["parameters"] == {"project_dir": "{{ prefect.variables.mesa_project_dir }}"}
        # runs share the workspace; ablation variants run in temporary copies, any number at once
        assert entry["concurrency_limit"] == spec.concurrency_limit == (None if spec.name.endswith("variant") else 1)
        # Each entrypoint names a Prefect flow with the spec's flow name (deployments are <flow>/<name>).
        path, _, function = spec.entrypoint.partition(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert getattr(module, function).name == spec.flow_name
        schedules = entry["schedules"]
        if spec.cron:
            assert [(s["cron"], s["timezone"]) for s in schedules] == [(spec.cron, spec.timezone)]
        else:
            assert schedules == []
    retrain = next(s for s in specs if s.flow_name == "retrain")
    assert (retrain.cron, retrain.timezone) == (params["retrain_cron"], params["timezone"])
    assert spec_file["pull"] == [{"prefect.deployments.steps.set_working_directory": {
        "directory": "{{ prefect.variables.mesa_project_dir }}"}}]


def test_deployment_specs_follow_params():
    from flows.deploy import deployment_specs

    params = load_params(PROJECT_ROOT)
    params["deploy"] = {"retrain_cron": "30 1 * * *", "timezone": "Europe/Zurich", "work_pool": "gpu"}
    specs = {s.flow_name: s for s in deployment_specs("/srv/mesa", params, flows=["retrain", "promote"])}
    assert sorted(specs) == ["promote", "retrain"]
    assert (specs["retrain"].cron, specs["retrain"].timezone) == ("30 1 * * *", "Europe/Zurich")
    assert specs["promote"].cron is None and specs["promote"].work_pool == "gpu"
    assert specs["retrain"].parameters == {"project_dir": str(Path("/srv/mesa").resolve())}
    params["deploy"]["retrain_cron"] = "weekly"
    with pytest.raises(ValueError, match=r"deploy\.retrain_cron = 'weekly': must be a cron expression"):
        deployment_specs("/srv/mesa", params)


@pytest.mark.slow(minutes=2.5)
def test_served_deployments_run_when_triggered(project, prefect_api, tmp_path):
    """Slow tier: `mesa deploy` serving on the harness server and one synth run through it, about 1 minute."""
    log = tmp_path / "mesa-deploy.log"
    with background([str(BIN / "mesa"), "deploy"], project, process_env(prefect_api), log) as served:
        retrain = wait_for(lambda: read_deployment(RETRAIN, project), "the served deployments", served, log)
        for name in ("ablation/mesa-ablation", "promote/mesa-promote"):  # on demand only
            assert wait_for(lambda n=name: read_deployment(n, project), name, served, log).schedules == []
        params = load_params(project)["deploy"]
        [schedule] = retrain.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone) == (params["retrain_cron"], params["timezone"])
        assert schedule.active
        assert retrain.global_concurrency_limit.limit == 1  # a run due while one runs waits in the queue

        run = trigger_synth(project)
        assert_synth_ran(run, project, log)
    assert served.returncode == 0, log.read_text()
    assert "Stopped serving" in log.read_text()


@pytest.mark.slow(minutes=2.5)
def test_a_process_worker_runs_the_work_pool_deployment(project, prefect_api, tmp_path):
    """Slow tier: `prefect deploy --all`, a process worker and one (skipped) synth run, about 1 minute."""
    env = process_env(prefect_api)
    log = tmp_path / "worker.log"

    def run(*command: str) -> str:
        done = subprocess.run([str(BIN / command[0]), *command[1:]], cwd=project, env=env, capture_output=True,
                              text=True, timeout=180, check=False)
        assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        return done.stdout

    # `mesa deploy --pool`: registered for the pool (created here), the project folder as pull step.
    assert "prefect worker start --pool mesa-process" in run("mesa", "deploy", "--pool", "--flow", "retrain")
    deployment = read_deployment(RETRAIN, project)
    assert deployment is not None and deployment.work_pool_name == "mesa-process"
    assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {
        "directory": str(project)}}]

    # prefect.yaml (`prefect deploy --all`): the same deployments, the folder taken from a Prefect variable.
    run("prefect", "variable", "set", "mesa_project_dir", str(project), "--overwrite")
    run("prefect", "--no-prompt", "deploy", "--all")
    for name in ("ablation/mesa-ablation", "promote/mesa-promote"):
        other = read_deployment(name, project)
        assert other is not None and other.work_pool_name == "mesa-process" and other.schedules == []
    deployment = read_deployment(RETRAIN, project)
    assert deployment is not None and deployment.work_pool_name == "mesa-process"
    assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {
        "directory": "{{ prefect.variables.mesa_project_dir }}"}}]
    assert deployment.schedules[0].schedule.cron == load_params(project)["deploy"]["retrain_cron"]
    assert deployment.global_concurrency_limit.limit == 1

    # A process worker picks the triggered run up, changes into the project and runs it (synth is
    # already up to date when the served test ran first, so DVC skips it: the path is what is tested).
    worker = [str(BIN / "prefect"), "worker", "start", "--pool", "mesa-process", "--type", "process"]
    with background(worker, tmp_path, env, log):
        flow_run = trigger_synth(project)
        assert_synth_ran(flow_run, project, log)
    assert flow_run.work_pool_name == "mesa-process" and str(flow_run.id) in log.read_text()


@pytest.mark.slow(minutes=2.5)
def test_two_workers_of_a_work_pool_run_an_ablations_variants(project, prefect_api, tmp_path):
    """Slow tier: an ablation of two variants with ablation.work_pool set, run by two process workers
    (one job each, as on two machines), about 4 minutes on 2 cores."""
    import json

    from flows.ablation import ablation_flow

    env = process_env(prefect_api)
    done = subprocess.run([str(BIN / "mesa"), "deploy", "--pool", "--flow", "ablation-variant"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    deployment = read_deployment("ablation-variant/mesa-ablation-variant", project)
    assert deployment is not None and deployment.global_concurrency_limit is None
    set_params(project, ablation__shadow=[True, False], ablation__caption_dropout=[True], ablation__seeds=[0],
               ablation__parallel=2, ablation__threads_per_job=1, ablation__work_pool="mesa-process")
    commit_project(project, "an ablation for the pool")
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    worker = [str(BIN / "prefect"), "worker", "start", "--pool", "mesa-process", "--type", "process", "--limit", "1"]
    with background(worker, tmp_path, env, logs[0]), background(worker, tmp_path, env, logs[1]):
        summary = ablation_flow(project_dir=str(project))
    ran = {entry["variant"]: entry for entry in summary["variants"]}
    assert set(ran) == {"shadow-on_dropout-on_seed-0", "shadow-off_dropout-on_seed-0"}
    assert all(entry["ran"] and entry["run_id"] and entry["metrics"] for entry in ran.values())
    # each worker ran one of the two flow runs (each takes one at a time: --limit 1). Both workers may
    # reach for the same scheduled run: the one that loses logs "Aborted submission" and takes the other.
    flow_runs = [entry["flow_run"] for entry in ran.values()]
    texts = [log.read_text() for log in logs]
    started = [[run for run in flow_runs if f"submitting flow run '{run}'" in text
                and f"Aborted submission of flow run '{run}'" not in text] for text in texts]
    assert sorted(len(runs) for runs in started) == [1, 1] and set(sum(started, [])) == set(flow_runs), texts
    assert json.loads((project / "reports/ablation.json").read_text())["parent_run_id"] == summary["parent_run_id"]
