"""Kill drills at the flow level: real DVC, Prefect (the test harness) and MLflow, on the micro profile.

Each stage runs in its own process group, so a drill kills exactly one stage (SIGSTOP to freeze it
where it is, a look at what is on disk, then SIGKILL) and checks what the flow does next: retry
from the last checkpoint, fail without touching versions, or finish a half-done registration.

Slow tier: one micro retrain for the module, four trainings cut short and resumed, four SIGTERM
drills on a fresh project, about 10 minutes on 2 cores.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.conftest import commit_project, make_micro_project, set_params

pytestmark = pytest.mark.slow(minutes=10)

BIN = Path(sys.executable).parent
CHECKPOINT_EVERY = 6
# The drills' training schedule: long enough to be caught between checkpoints.
DRILL_TRAIN = {"train__steps": 24, "train__checkpoint_every": CHECKPOINT_EVERY, "train__validate_every": 12,
               "train__grid_every": 24, "train__keep_checkpoints": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_api):
    """A micro project trained once without interruption (version 1, champion) on the drills' schedule,
    with the weights that run made (each drill starts from whatever state the others left).

    Cost: one full micro retrain, about 2.5 minutes on 2 cores.
    """
    from flows.retrain import retrain

    root = make_micro_project(tmp_path_factory.mktemp("drills"))
    set_params(root, **DRILL_TRAIN)
    commit_project(root, "the drills' schedule")  # a champion the gate accepts: committed, pushed
    outcome = retrain(project_dir=str(root))
    assert outcome["registration"]["version"] == 1 and outcome["promotion"]["promoted"], outcome["promotion"]
    return root, pipeline_weights(root)


@pytest.fixture
def project(trained):
    return trained[0]


# ----------------------------------------------------------------------------- helpers
def stage_leader(stage: str) -> psutil.Process | None:
    """The `dvc repro --single-item STAGE` process this test started: the leader of the stage's group."""
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            command = child.cmdline()
            if command[1:5] == ["-m", "dvc", "repro", "--single-item"] and command[5] == stage:
                return child
    return None


@contextlib.contextmanager
def kill_stage_when(stage: str, ready: Callable[[], bool], look: Callable[[], object] = lambda: None):
    """In the background: once `stage` runs and `ready()` holds, freeze its process group, note
    `look()` (what is on disk at that instant), and SIGKILL the group. Yields the record."""
    record: dict = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            leader = stage_leader(stage)
            if leader is not None and ready():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(leader.pid, signal.SIGSTOP)
                    record["seen"] = look()
                    os.killpg(leader.pid, signal.SIGKILL)
                    record["killed"] = leader.pid
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield record
    finally:
        done.set()
        watcher.join(timeout=5)


def complete_checkpoints(project: Path) -> list[int]:
    from components.training.loop import list_checkpoints

    steps = []
    for folder in (project / "models/checkpoints").glob("*"):
        steps += [int(p.name.rsplit("-", 1)[1]) for p in list_checkpoints(folder)]
    return sorted(steps)


def running_for(command_part: str, seconds: float) -> Callable[[], bool]:
    """True once a process of this test whose command line holds `command_part` has run `seconds`."""
    def ready() -> bool:
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if command_part in " ".join(child.cmdline()) and time.time() - child.create_time() > seconds:
                    return True
        return False

    return ready


def checkpoint_exists(project: Path, step: int) -> Callable[[], bool]:
    return lambda: any((project / "models/checkpoints").glob(f"*/checkpoint-{step:06d}"))


def pipeline_weights(project: Path) -> dict:
    from safetensors.torch import load_file

    folder = project / "models/pipeline"
    return {str(p.relative_to(folder)): load_file(p) for p in sorted(folder.rglob("*.safetensors"))}


def assert_same_weights(first: dict, second: dict) -> None:
    import torch

    assert sorted(first) == sorted(second)
    for name in first:
        assert sorted(first[name]) == sorted(second[name]), name
        for key, tensor in first[name].items():
            assert torch.equal(tensor, second[name][key]), f"{name}: {key} differs"


def registry_state(project: Path) -> dict:
    """Every version of `mesa` with its aliases and registration tag."""
    from components.tracking.store import mlflow_client

    client = mlflow_client(project)
    return {int(v.version): (sorted(client.get_model_version("mesa", v.version).aliases),
                             (v.tags or {}).get("mesa.registration"))
            for v in client.search_model_versions("name = 'mesa'")}


def resumes_of(project: Path) -> list[int]:
    """The steps the last training run resumed from (its `resumed_from_step` metric history)."""
    from components.tracking.store import mlflow_client

    client = mlflow_client(project)
    run_id = json.loads((project / "models/train_run.json").read_text())["run_id"]
    return [int(m.value) for m in client.get_metric_history(run_id, "resumed_from_step")]


def cli_env(prefect_api: str | None, marker: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    if prefect_api:
        env["PREFECT_API_URL"] = prefect_api
    if marker:
        env["MESA_DRILL_MARKER"] = marker  # inherited by everything the command starts
    return env


# ----------------------------------------------------------------------------- drills
def test_a_killed_training_is_retried_from_its_checkpoint_to_the_uninterrupted_weights(trained):
    import shutil

    from flows.retrain import retrain

    project, uninterrupted = trained  # the fixture's run: same schedule, never stopped
    set_params(project, **DRILL_TRAIN)
    shutil.rmtree(project / "models/checkpoints")  # train again from step 0
    with kill_stage_when("train", checkpoint_exists(project, CHECKPOINT_EVERY),
                         look=lambda: complete_checkpoints(project)) as kill:
        outcome = retrain(project_dir=str(project), stages=["train"], force=True)
    assert kill.get("killed"), "the drill never caught the training between checkpoints"
    last_on_disk = kill["seen"][-1]
    assert CHECKPOINT_EVERY <= last_on_disk < 24
    assert outcome["stages"][0]["outcome"] == "ran"
    assert resumes_of(project) == [last_on_disk]  # the retry resumed from the checkpoint on disk
    assert_same_weights(pipeline_weights(project), uninterrupted)


def test_without_retries_a_killed_training_fails_the_flow_changes_nothing_and_retrain_resumes(project, prefect_api):
    import shutil

    from flows.retrain import StageFailed, retrain

    shutil.rmtree(project / "models/checkpoints")  # from step 0: killed after checkpoint 12 of 18
    set_params(project, **{**DRILL_TRAIN, "train__steps": 18})
    lock_before, versions_before = (project / "dvc.lock").read_bytes(), registry_state(project)
    with kill_stage_when("train", checkpoint_exists(project, 12), look=lambda: complete_checkpoints(project)) as kill, \
            pytest.raises(StageFailed, match=r"stage 'train' failed \(dvc repro killed by SIGKILL\)"):
        retrain(project_dir=str(project), stage_retries=0)
    assert kill.get("killed")
    assert (project / "dvc.lock").read_bytes() == lock_before
    assert registry_state(project) == versions_before  # no version added, no alias moved

    # `mesa retrain` afterwards: picks the checkpoint up, finishes, registers and judges it. A schedule
    # no drill trained before: DVC's run cache would otherwise restore that run instead of training.
    set_params(project, train__steps=30)
    done = subprocess.run([str(BIN / "mesa"), "retrain"], cwd=project, env=cli_env(prefect_api),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last_on_disk = kill["seen"][-1]
    assert f"resumed from checkpoint-{last_on_disk:06d}" in done.stdout + done.stderr
    assert resumes_of(project) == [last_on_disk]  # a run from step 0, resumed once
    versions = registry_state(project)
    [added] = set(versions) - set(versions_before)
    assert "challenger" in versions[added][0] and versions[added][1] == "complete"


def test_a_killed_evaluation_is_retried_and_the_run_completes(project):
    from components.params import load_params
    from flows.retrain import retrain

    retrain(project_dir=str(project))  # whatever another drill left half-done is finished first
    steps = load_params(project)["evaluate"]["steps"]
    set_params(project, evaluate__steps=4 if steps != 4 else 3)  # the evaluation changed: only evaluate reruns
    metrics = project / "reports/metrics.json"
    with kill_stage_when("evaluate", running_for("stage evaluate", 4.0)) as kill:
        outcome = retrain(project_dir=str(project))
    assert kill.get("killed")
    ran = {s["stage"]: s["outcome"] for s in outcome["stages"]}
    assert ran["evaluate"] == "ran" and ran["train"] == "skipped"
    report = json.loads(metrics.read_text())
    assert report["metrics"] and not list((project / "reports").rglob("*.tmp"))
    assert outcome["registration"]["new"] is False  # the same model: judged once already


def test_a_registration_killed_before_its_alias_is_completed_by_the_next_run(project, prefect_api):
    from flows.retrain import retrain

    retrain(project_dir=str(project))  # whatever another drill left half-done is finished first
    set_params(project, train__steps=max(complete_checkpoints(project)) + CHECKPOINT_EVERY)
    retrain(project_dir=str(project), stages=["train", "evaluate"])  # a new model, not registered yet
    before = registry_state(project)
    # Register in a process that dies (SIGKILL) the moment it would name the challenger.
    script = textwrap.dedent(f"""
        import os, signal
        import components.tracking.registry as registry
        registry.set_alias = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        from flows.promote import register_trained_model
        register_trained_model.fn({str(project)!r})
    """)
    killed = subprocess.run([sys.executable, "-c", script], cwd=project, env=cli_env(prefect_api),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    stranded = registry_state(project)
    [new_version] = set(stranded) - set(before)
    assert stranded[new_version] == ([], None)  # registered, no alias, not marked complete

    outcome = retrain(project_dir=str(project))
    assert all(not s["ran"] for s in outcome["stages"])
    assert (outcome["registration"]["version"], outcome["registration"]["new"]) == (new_version, True)
    assert outcome["promotion"] is not None and outcome["promotion"]["version"] == new_version
    aliases, mark = registry_state(project)[new_version]
    assert "challenger" in aliases and mark == "complete"
    again = retrain(project_dir=str(project))
    assert again["registration"]["new"] is False and again["promotion"] is None


# ----------------------------------------------------------------------------- SIGTERM
@pytest.fixture
def fresh_project(tmp_path):
    """A micro project with no data yet, one per drill: each drill stops it during its first stage.
    (Shared by the drills, a drill whose stop came after synth had finished left synth up to date
    for the next one, which then never saw a synth process and ran to the end.)"""
    return make_micro_project(tmp_path / "sigterm")


def processes_marked(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get("MESA_DRILL_MARKER") == marker:
                found.append(process)
    return found


def wait_for(condition: Callable[[], object], what: str, process: subprocess.Popen, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(f"the command ended (exit {process.returncode}) before {what}:\n"
                                 + process.stdout.read()[-3000:])
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("command, stage_marker, whole_group", [
    (["retrain"], "stage synth", False),
    # systemd's default stop (and Ctrl-C in a terminal): every process gets the signal at once,
    # the temporary server among them, so queued Prefect logs can no longer be sent
    (["retrain"], "stage synth", True),
    (["ablation"], "exp run", False),
    (["demo"], "stage synth", False),
])
def test_sigterm_stops_the_command_its_stages_and_its_temporary_prefect_server(fresh_project, command,
                                                                                stage_marker, whole_group):
    marker = uuid.uuid4().hex
    # No PREFECT_API_URL: the command starts (and owns) a temporary Prefect server.
    main = subprocess.Popen([str(BIN / "mesa"), *command], cwd=fresh_project, env=cli_env(None, marker),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def stage_running():
            for process in processes_marked(marker):
                with contextlib.suppress(psutil.Error):  # a short-lived process may end while we look
                    if process.pid != main.pid and stage_marker in " ".join(process.cmdline()):
                        return True
            return False

        wait_for(stage_running, f"a process running {stage_marker!r}", main)
        started = processes_marked(marker)
        assert any("uvicorn" in " ".join(p.cmdline()) for p in started), "no temporary Prefect server"
        if command == ["retrain"] and not whole_group:  # one retrain per workspace: a second one refuses, naming the first
            second = subprocess.run([str(BIN / "mesa"), "retrain"], cwd=fresh_project, env=cli_env(None),
                                    capture_output=True, text=True, timeout=120)
            assert second.returncode != 0
            assert "a retrain is already running in this workspace" in second.stderr + second.stdout
            assert f"process {main.pid}" in second.stderr + second.stdout

        for process in (started if whole_group else [main]):
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        output, _ = main.communicate(timeout=30)
        _, alive = psutil.wait_procs(started, timeout=max(1.0, 15 - (time.monotonic() - stopped_at)))
        assert not alive and not processes_marked(marker), (
            f"left behind: {[' '.join(p.cmdline()) for p in processes_marked(marker)]}\n{output[-3000:]}")
        assert time.monotonic() - stopped_at < 15, output[-3000:]
        assert main.returncode == 128 + signal.SIGTERM, output[-3000:]
    finally:
        for process in processes_marked(marker):
            with contextlib.suppress(psutil.Error):
                process.kill()
        if main.poll() is None:
            main.kill()


def test_outputs_dvc_restores_from_its_run_cache_are_reported_as_restored(project):
    from flows.retrain import retrain

    # latents' outputs are all cached, so DVC's run cache can restore them: batch size 8, then back.
    set_params(project, latents__batch_size=8)
    assert retrain(project_dir=str(project), stages=["latents"])["stages"][0]["outcome"] == "ran"
    set_params(project, latents__batch_size=32)
    [latents] = retrain(project_dir=str(project), stages=["latents"])["stages"]
    assert (latents["outcome"], latents["ran"]) == ("restored", False)
    assert latents["changed"]  # DVC saw it changed before it restored it
    [again] = retrain(project_dir=str(project), stages=["latents"])["stages"]
    assert (again["outcome"], again["changed"]) == ("skipped", [])
