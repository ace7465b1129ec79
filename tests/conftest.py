"""Shared test set-up: offline settings, a private Prefect home, one micro world per session."""
from __future__ import annotations

import os
import signal
import tempfile
import threading
import warnings
from pathlib import Path

# Under pytest-xdist each worker's numerical libraries (and the stage processes it starts) get
# their share of the cores: torch's OpenMP threads spin while they wait, so two workers with a
# thread per core each took 18 minutes for the demo-world VAE stage alone.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _THREADS = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_name, _THREADS)

# Before any Prefect / HF / DVC import: offline, and Prefect's database out of the user's home.
_PREFECT_HOME = tempfile.mkdtemp(prefix="mesa-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
from flows.settings import configure_environment  # noqa: E402

configure_environment(Path(__file__).resolve().parents[1])

import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# What a copied project needs to run its pipeline (code, params, DAG, configs; no data).
MICRO_PROJECT_FILES = ["params.yaml", "dvc.yaml", "prefect.yaml", "configs", "components", "flows", "infra",
                       ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore"]
# DVC runs `mesa stage ...` in subprocesses: this interpreter's environment comes first on PATH.
_BIN = str(Path(__import__("sys").executable).parent)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _BIN:
    os.environ["PATH"] = f"{_BIN}{os.pathsep}{os.environ.get('PATH', '')}"


def make_micro_project(root: Path, profile: str = "micro") -> Path:
    """Copy the project's code and params into `root`, apply `profile` (micro unless a test needs the
    demo world), commit it to a new git repo."""
    import shutil
    import subprocess

    from components.params import apply_profile

    root.mkdir(parents=True, exist_ok=True)
    for name in MICRO_PROJECT_FILES:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, root / name)
    apply_profile(profile, root)
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", f"{profile} project"]):
        subprocess.run(command, cwd=root, check=True, capture_output=True, text=True)
    return root


def set_params(project: Path, **values) -> None:
    """Set dotted params.yaml keys in a test project, written as `name__leaf` (train__steps=36)."""
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    for dotted, value in values.items():
        *groups, leaf = dotted.split("__")
        node = params
        for group in groups:
            node = node[group]
        node[leaf] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def commit_project(project: Path, message: str = "params") -> None:
    """Commit every change in a test project (the promotion gate refuses models trained from
    uncommitted changes, as a team's would)."""
    import subprocess

    for command in (["git", "add", "-A"], ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message,
                                            "--allow-empty"]):
        subprocess.run(command, cwd=project, check=True, capture_output=True, text=True)


def micro_synth_params(**overrides):
    """The project's synth params with the micro profile applied (what tests lean on)."""
    from components.majortom.synthetic.world import SynthParams
    from components.params import load_params, profile_overrides

    synth = dict(load_params(PROJECT_ROOT)["synth"])
    for key, value in profile_overrides("micro", PROJECT_ROOT).items():
        group, _, leaf = key.partition(".")
        if group == "synth":
            synth[leaf] = value
    synth.update(overrides)
    return SynthParams(**synth)


def pytest_addoption(parser):
    parser.addoption("--reverse", action="store_true",
                     help="Run the tests in reverse order (runs_last tests still last): a test that only passes "
                          "after another one builds no state of its own.")


def _module_minutes(item) -> float:
    """What a test's slow marker says it costs (`pytest.mark.slow(minutes=9)`), 0 for a fast test."""
    marker = item.get_closest_marker("slow")
    return float(marker.kwargs.get("minutes", 0)) if marker else 0.0


def pytest_collection_modifyitems(config, items):
    """Order the tests.

    One process: runs_last tests go last (a stable sort keeps every other order as collected): the
    demo-world DAG leaves the session's Prefect server busy with its events for a while.
    Under pytest-xdist (`make test`: `-n 2 --dist loadfile`, a module per worker at a time; each
    worker has its own Prefect server) the costliest modules (their slow markers' minutes) are
    handed out first, so the long ones overlap instead of finishing the run alone.
    (`--dist loadgroup` would keep the team tests together, but pytest-xdist 3.8 cannot set its
    groups on pytest 9's items.)
    """
    if config.getoption("--reverse"):
        items.reverse()
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("runs_last") is not None)
        return
    cost: dict[Path, float] = {}
    for item in items:
        cost[item.path] = max(cost.get(item.path, 0.0), _module_minutes(item))
    items.sort(key=lambda item: -cost[item.path])


# How this process handles the stop signals when the session starts (every test should leave it so).
_STOP_SIGNALS = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


@pytest.fixture(autouse=True)
def _signal_handlers_not_leaked(request):
    """A test (or a library it calls in-process, or a module fixture it set up) that leaves SIGINT or
    SIGTERM handled otherwise than at the session's start changes what every later subprocess
    inherits (an ignored signal survives exec): put the handler back and say which test it was."""
    yield
    for sig, handler in _STOP_SIGNALS.items():
        now = signal.getsignal(sig)
        if now != handler and threading.current_thread() is threading.main_thread():
            signal.signal(sig, handler)
            warnings.warn(f"{request.node.nodeid} (or its fixtures) left {sig.name} handled by {now!r} instead of "
                          f"{handler!r}: restored", pytest.PytestWarning, stacklevel=1)


@pytest.fixture(autouse=True)
def _tracking_uri_not_leaked():
    """A test that leaves MLFLOW_TRACKING_URI changed would send every later test's runs to its store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    after = os.environ.get("MLFLOW_TRACKING_URI")
    if after != before:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
        pytest.fail(f"the test left MLFLOW_TRACKING_URI={after!r} (was {before!r}): restore it "
                    "(components.tracking.pyfunc.using_tracking_uri, or monkeypatch)")


@pytest.fixture(scope="session")
def micro_world(tmp_path_factory):
    """One synthetic micro world (with its deliberately broken rows) for every test that reads data."""
    from components.majortom.synthetic.world import build_world

    out = tmp_path_factory.mktemp("micro-world") / "raw"
    report = build_world(out, micro_synth_params())
    return out, report


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect server for the session (the test harness), yielding its API URL."""
    from prefect.settings import get_current_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(get_current_settings().api.url)


@pytest.fixture(scope="session")
def curated(micro_world, prefect_api, tmp_path_factory):
    """The micro world curated by the validate stage in a project folder of its own."""
    import shutil

    import pandas as pd

    from components.params import apply_profile
    from flows.stages.validate import validate_stage_flow

    raw, _ = micro_world
    project = tmp_path_factory.mktemp("validate-project")
    for name in ("params.yaml", "dvc.yaml", "configs"):
        source = PROJECT_ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, project / name)
    apply_profile("micro", project)
    (project / "data").mkdir()
    (project / "data" / "raw").symlink_to(raw, target_is_directory=True)
    report = validate_stage_flow(str(project))
    return project, report, pd.read_parquet(raw / "world.parquet")


@pytest.fixture(scope="session")
def captioned(curated):
    """The curated micro project with its captions stage run."""
    from flows.stages.captions import captions_stage_flow

    project, _, world = curated
    captions_stage_flow(str(project))
    return project, world


@pytest.fixture(scope="session")
def prepared_project(captioned):
    """The captioned micro project with its prepare stage run: data/samples/*.parquet + stats.json."""
    from flows.stages.prepare import prepare_stage_flow

    project, world = captioned
    prepare_stage_flow(str(project))
    return project, world
