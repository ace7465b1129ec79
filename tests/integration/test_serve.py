"""`mesa serve` against a real MLflow store and a real HTTP server on loopback.

A tiny random pipeline is logged to a SQLite store in a temporary folder, registered as ``mesa``
and given the ``champion`` alias; `mesa serve` runs as a subprocess pointed at that store by
MLFLOW_TRACKING_URI, and the test talks to it over HTTP like any client would.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from components.tracking.server import free_port

PROMPT = "A Sentinel-2 image of hills and valleys in Norway in July"
IMAGE_PX = 32
STEPS = 2
GUIDANCE = 1.0
STARTUP_TIMEOUT_S = 120  # the CPU may be shared; a quiet machine answers in under 10 s


@pytest.fixture(scope="module")
def champion_store(tmp_path_factory):
    """(tracking URI, pipeline folder, folder to run in): a store whose ``mesa@champion`` is a tiny pipeline."""
    from mlflow import MlflowClient

    from components.tracking.pyfunc import log_pipeline_model
    from components.tracking.registry import CHAMPION, register_pipeline, set_alias
    from components.tracking.store import ensure_experiment
    from testsupport.pipelines import tiny_random_pipeline

    root = tmp_path_factory.mktemp("serve-store")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, "serve-tests", root)  # artifacts under root/mlartifacts
    folder = root / "pipeline"
    tiny_random_pipeline([PROMPT], image_px=IMAGE_PX).save_pretrained(folder)
    run_id = client.create_run(experiment_id).info.run_id
    version = register_pipeline(client, "mesa", run_id, log_pipeline_model(run_id, folder, uri=uri))
    set_alias(client, "mesa", CHAMPION, version.version)
    client.set_terminated(run_id)
    workdir = root / "cwd"  # not the repository: serving must not write a store of its own there
    workdir.mkdir()
    return uri, folder, workdir


def mesa_serve(*args: str) -> list[str]:
    """The `mesa serve` command line, through this interpreter (the venv's, whether or not it is active)."""
    return [sys.executable, "-m", "flows.cli", "serve", *args]


def server_env(uri: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    # `mlflow models serve` starts `uvicorn` through bash: the venv's scripts must be on PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


class Served:
    """A server subprocess with its log, stopped by `stop` (SIGTERM to its process group)."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path, port: int, log_path: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_healthy(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        from components.ops.health import wait_until_healthy

        try:
            wait_until_healthy(f"{self.url}/health", timeout_s, exit_code=self.process.poll, label="mesa serve",
                               details=lambda: f"its output:\n{self.log_tail()}")
        except RuntimeError as err:
            pytest.fail(str(err))

    def generate(self, rows: list[dict]) -> list[dict]:
        body = json.dumps({"dataframe_records": rows}).encode()
        request = urllib.request.Request(f"{self.url}/invocations", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                assert answer.status == 200
                return json.loads(answer.read())["predictions"]
        except urllib.error.HTTPError as err:
            pytest.fail(f"POST /invocations answered {err.code}: {err.read()[:2000]!r}\n"
                        f"server output:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 30) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                pytest.fail(f"the server ignored SIGTERM for {timeout_s} s; its output:\n{self.log_tail()}")
        return self.process.returncode


def check_generation(server: Served, pipeline_dir: Path) -> None:
    """One request, the same request again, and a two-row batch: shapes, ranges, units, determinism."""
    from components.model.pipeline import TerrainPipeline

    row = {"prompt": PROMPT, "seed": 7, "steps": STEPS, "guidance": GUIDANCE}
    (first,) = server.generate([row])
    assert first["prompt"] == PROMPT and first["seed"] == 7
    dem = np.asarray(first["dem_m"], dtype=np.float64)
    rgb = np.asarray(first["rgb"])
    assert dem.shape == (IMAGE_PX, IMAGE_PX) and np.isfinite(dem).all()
    assert rgb.shape == (IMAGE_PX, IMAGE_PX, 3) and np.issubdtype(rgb.dtype, np.integer)
    assert rgb.min() >= 0 and rgb.max() <= 255

    # Metres: the served DEM is the pipeline's own dem_m for the same request (not a normalised
    # [-1, 1] field); the tiny pipeline's rule puts it around a 300 m base with a 500 m scale.
    local = TerrainPipeline.from_pretrained(pipeline_dir, device="cpu")
    local.set_progress_bar_config(disable=True)
    expected = local(prompt=[PROMPT], seed=[7], num_inference_steps=STEPS, guidance_scale=GUIDANCE)
    np.testing.assert_allclose(dem, expected.dem_m[0], atol=0.05)
    np.testing.assert_allclose(rgb, expected.rgb[0], atol=1)  # uint8 rounding of near-equal floats
    assert np.abs(dem).max() > 2.0, "the DEM looks normalised, not in metres"

    (again,) = server.generate([row])
    np.testing.assert_array_equal(np.asarray(again["dem_m"]), np.asarray(first["dem_m"]))

    # The compact answer (docs/serving.md): a PNG and a float32 .npy, base64, with the same values.
    from components.export.payload import decode_compact

    (compact,) = server.generate([{**row, "format": "compact"}])
    assert set(compact) == {"prompt", "seed", "format", "rgb_png", "dem_npy", "height", "width"}
    compact_rgb, compact_dem = decode_compact(compact)
    np.testing.assert_array_equal(compact_rgb, rgb)
    np.testing.assert_array_equal(compact_dem, dem.astype(np.float32))

    batch = server.generate([row, {**row, "seed": 8}])
    assert [item["seed"] for item in batch] == [7, 8]
    np.testing.assert_allclose(np.asarray(batch[0]["dem_m"]), dem, atol=0.05)
    assert not np.allclose(np.asarray(batch[1]["dem_m"]), dem), "seed 8 gave seed 7's DEM"

    # Two requests at once with different step counts: each must get what it gets alone (the
    # pipeline's scheduler is shared state, so the server has to run them one after the other).
    short, long = {**row, "steps": 3}, {**row, "steps": 12}
    alone = [server.generate([short])[0]["dem_m"], server.generate([long])[0]["dem_m"]]
    together: list = [None, None]
    threads = [threading.Thread(target=lambda i=i, r=r: together.__setitem__(i, server.generate([r])[0]["dem_m"]))
               for i, r in enumerate((short, long))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for i in (0, 1):
        assert together[i] is not None, f"concurrent request {i} failed; server output:\n{server.log_tail()}"
        np.testing.assert_allclose(np.asarray(together[i]), np.asarray(alone[i]), atol=1e-3)


def test_mesa_serve_answers_with_rgb_and_dem_in_metres(champion_store, tmp_path):
    uri, pipeline_dir, workdir = champion_store
    port = free_port()
    started = time.monotonic()
    server = Served(mesa_serve("--model", "models:/mesa@champion", "--port", str(port)),
                    server_env(uri), workdir, port, tmp_path / "mesa-serve.log")
    try:
        server.wait_healthy()
        print(f"mesa serve healthy after {time.monotonic() - started:.1f} s")
        check_generation(server, pipeline_dir)
    finally:
        status = server.stop()
    assert status == 0, f"mesa serve ended with status {status} on SIGTERM:\n{server.log_tail()}"
    log = server.log_tail()
    assert "mesa version 1 (alias champion" in log and "stopped serving" in log, log
    assert not (workdir / "mlruns.db").exists() and not (workdir / "mlruns").exists()


def test_mesa_serve_says_what_to_do_for_a_missing_alias_or_a_taken_port(champion_store):
    uri, _, workdir = champion_store

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(mesa_serve(*args), check=False, env=server_env(uri), cwd=workdir,
                              capture_output=True, text=True, timeout=120)

    missing = run("--model", "models:/mesa@production", "--port", str(free_port()))
    assert missing.returncode == 1, missing.stderr
    assert "no alias 'production'" in missing.stderr and "champion -> v1" in missing.stderr
    assert "set_registered_model_alias" in missing.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        clash = run("--port", str(taken.getsockname()[1]))
    assert clash.returncode == 1, clash.stderr
    assert "already in use" in clash.stderr and "--port" in clash.stderr
