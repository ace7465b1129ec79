"""`mesa check` (components/ops/preflight.py): each check's failure names what is missing and how to
fix it, on real files (a diffusers-shaped folder, accelerate configs) and a real loopback HTTP server."""
from __future__ import annotations

import http.server
import json
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from components.ops.preflight import (
    DiskEstimate,
    Machine,
    accelerate_checks,
    data_source_checks,
    disk_checks,
    disk_estimate,
    gpu_memory_checks,
    precision_checks,
    preflight,
    pretrained_checks,
    table,
    url_problem,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NO_GPU = Machine(gpus=0, bf16=False, free_bytes=10**12)
# unet/config.json of stabilityai/stable-diffusion-2-1 (768 px, v-prediction), the keys the check reads.
SD_UNET = {"in_channels": 4, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
           "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20],
           "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
           "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}


def _sd_folder(root: Path, prediction: str = "v_prediction", unet: dict | None = None, skip: str = "") -> Path:
    """A folder with Stable Diffusion 2.1's parts (configs and placeholder weight files)."""
    folder = root / "models/sd21"
    files = {"unet/config.json": json.dumps(unet or SD_UNET), "unet/diffusion_pytorch_model.safetensors": "",
             "vae/config.json": "{}", "vae/diffusion_pytorch_model.safetensors": "",
             "text_encoder/config.json": "{}", "text_encoder/model.safetensors": "",
             "tokenizer/vocab.json": "{}", "tokenizer/merges.txt": "",
             "scheduler/scheduler_config.json": json.dumps({"prediction_type": prediction})}
    for name, text in files.items():
        if name != skip:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
    return folder


def _model(pretrained, unet="paper"):
    return SimpleNamespace(pretrained=pretrained, unet=unet, unet_overrides={})


def _by_name(checks):
    return {check.name: check for check in checks}


def test_a_complete_sd21_folder_passes_every_pretrained_check(tmp_path):
    _sd_folder(tmp_path)
    checks = pretrained_checks(tmp_path, _model("models/sd21"), lambda: dict(SD_UNET))
    assert [c.name for c in checks] == ["pretrained unet", "pretrained vae", "pretrained text_encoder",
                                        "pretrained tokenizer", "pretrained scheduler", "pretrained scheduler prediction",
                                        "pretrained unet sizes"]
    assert all(c.ok for c in checks), table(checks)


def test_no_pretrained_folder_is_fine_for_the_tiny_unet_and_a_failure_for_the_paper(tmp_path):
    [tiny] = pretrained_checks(tmp_path, _model(None, unet="tiny"), None)
    assert tiny.ok
    [paper] = pretrained_checks(tmp_path, _model(None), None)
    assert not paper.ok and "model.pretrained is null" in paper.found and "stable-diffusion-2-1" in paper.fix
    [missing] = pretrained_checks(tmp_path, _model("models/nowhere"), None)
    assert not missing.ok and str(tmp_path / "models/nowhere") in missing.found


def test_a_missing_part_names_the_files_it_lacks(tmp_path):
    _sd_folder(tmp_path, skip="text_encoder/model.safetensors")
    check = _by_name(pretrained_checks(tmp_path, _model("models/sd21"), None))["pretrained text_encoder"]
    assert not check.ok
    assert "no model*.safetensors or pytorch_model*.bin" in check.found and "text_encoder/" in check.fix


def test_an_epsilon_model_is_not_the_papers_v_prediction_sd21(tmp_path):
    _sd_folder(tmp_path, prediction="epsilon")
    check = _by_name(pretrained_checks(tmp_path, _model("models/sd21"), None))["pretrained scheduler prediction"]
    assert not check.ok and check.found == "prediction_type epsilon" and "v-prediction" in check.fix


def test_unet_sizes_that_differ_from_the_preset_are_named_with_both_values(tmp_path):
    _sd_folder(tmp_path, unet={**SD_UNET, "cross_attention_dim": 768})  # SD 1.x's text width
    check = _by_name(pretrained_checks(tmp_path, _model("models/sd21"), lambda: dict(SD_UNET)))["pretrained unet sizes"]
    assert not check.ok and "cross_attention_dim 768 (model.unet paper: 1024)" in check.found


def test_sd21s_unet_config_matches_the_paper_preset(tmp_path):
    from components.model.factories import paper_unet_config

    _sd_folder(tmp_path)
    checks = pretrained_checks(tmp_path, _model("models/sd21"), paper_unet_config)
    assert _by_name(checks)["pretrained unet sizes"].ok, table(checks)


def _train(config: str, processes: int = 1, precision: str = "no"):
    return SimpleNamespace(accelerate_config=config, num_processes=processes, mixed_precision=precision)


def test_a_gpu_accelerate_config_needs_a_gpu_per_process():
    [eight] = accelerate_checks(PROJECT_ROOT, _train("infra/accelerate/gpu-8.yaml", 8), NO_GPU)
    assert not eight.ok and "8 GPU process(es); this machine has 0 visible GPU(s)" in eight.found
    assert "train.num_processes" in eight.fix
    [fits] = accelerate_checks(PROJECT_ROOT, _train("infra/accelerate/gpu-8.yaml", 8),
                               Machine(gpus=8, bf16=True, free_bytes=0))
    assert fits.ok
    # the two-process CPU config says MULTI_GPU but names no GPU: accelerate runs it on gloo
    [gloo] = accelerate_checks(PROJECT_ROOT, _train("infra/accelerate/cpu-2proc.yaml", 2), NO_GPU)
    assert gloo.ok and "2 CPU process(es)" in gloo.found
    [missing] = accelerate_checks(PROJECT_ROOT, _train("infra/accelerate/nope.yaml"), NO_GPU)
    assert not missing.ok and "infra/accelerate/nope.yaml does not exist" in missing.found


def test_mixed_precision_the_machine_cannot_run_is_a_failure():
    assert precision_checks(_train("x", precision="bf16"), NO_GPU, uses_gpu=False)[0].ok  # CPU autocast
    [fp16] = precision_checks(_train("x", precision="fp16"), NO_GPU, uses_gpu=False)
    assert not fp16.ok and "needs a GPU" in fp16.fix
    [old_gpu] = precision_checks(_train("x", precision="bf16"), Machine(gpus=1, bf16=False, free_bytes=0), True)
    assert not old_gpu.ok and "does not support it" in old_gpu.found
    [no_gpu] = precision_checks(_train("x", precision="bf16"), NO_GPU, uses_gpu=True)
    assert not no_gpu.ok and "no visible GPU" in no_gpu.found


def test_free_disk_against_the_estimate():
    estimate = DiskEstimate(cells=1000, per_cell={"raw": 7e6, "samples": 1e6}, fixed={"checkpoints": 1e9})
    assert estimate.total() == 9e9
    [short] = disk_checks(PROJECT_ROOT, estimate, Machine(gpus=0, bf16=False, free_bytes=int(5e9)))
    assert not short.ok and "5.0 GB free" in short.found and "about 9.0 GB" in short.found
    assert "1000 cells x (raw 7.0 MB, samples 1.0 MB) + checkpoints 1.0 GB" in short.found
    assert "free 4.0 GB" in short.fix
    [unknown] = disk_checks(PROJECT_ROOT, DiskEstimate(None, {"raw": 7e6}, {}), NO_GPU)
    assert unknown.ok and "an unknown total" in unknown.found and "per cell: raw 7.0 MB" in unknown.found


def test_the_disk_estimate_scales_with_cells_and_pixels():
    from components.params import config_with_profile

    demo, paper = (config_with_profile(name, PROJECT_ROOT) for name in ("demo", "paper"))
    small, large = disk_estimate(demo, None), disk_estimate(paper, 10**9)
    assert small.cells == 256 and large.cells == 4096
    assert large.per_cell["samples"] / small.per_cell["samples"] == pytest.approx((768 / 64) ** 2)
    assert large.fixed["checkpoints"] == 16 * 10**9 * paper.train.keep_checkpoints


def test_gpu_memory_is_compared_per_process_with_the_method_named():
    [small] = gpu_memory_checks(10**9, Machine(gpus=1, bf16=True, free_bytes=0, gpu_memory_bytes=16 * 10**9), True)
    assert not small.ok and "1000 M UNet parameters x 20 B, activations not counted" in small.found
    assert gpu_memory_checks(10**9, Machine(gpus=1, bf16=True, free_bytes=0, gpu_memory_bytes=80 * 10**9), True)[0].ok
    assert gpu_memory_checks(10**9, NO_GPU, uses_gpu=False) == []


@pytest.fixture
def loopback(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www."""
    (tmp_path / "www").mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "www"), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "www"
    server.shutdown()


def _ingest_data(metadata: dict, base_url=None):
    from components.config.data import IngestConfig

    return SimpleNamespace(source="ingest", raw_dir="data/majortom",
                           ingest=IngestConfig(metadata=metadata, base_url=base_url))


def test_ingest_metadata_is_present_or_answers_a_head_request(tmp_path, loopback):
    url, www = loopback
    (www / "Core-DEM").mkdir()
    (www / "Core-DEM/metadata.parquet").write_bytes(b"PAR1")
    (tmp_path / "l2a.parquet").write_bytes(b"PAR1")
    data = _ingest_data({"dem": "Core-DEM/metadata.parquet", "s2l1c": "Core-S2L1C/metadata.parquet",
                         "s2l2a": str(tmp_path / "l2a.parquet")}, base_url=url)
    checks = _by_name(data_source_checks(tmp_path, data, url_problem))
    assert checks["data dem metadata"].ok and checks["data s2l2a metadata"].ok
    missing = checks["data s2l1c metadata"]
    assert not missing.ok and "Core-S2L1C/metadata.parquet: HTTP 404" in missing.found
    assert "data.ingest.metadata.s2l1c" in missing.fix
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert "Connection refused" in url_problem(f"http://127.0.0.1:{port}/metadata.parquet", timeout_s=2)
    [local] = data_source_checks(tmp_path, _ingest_data({"dem": "data/dem/metadata.parquet"}), url_problem)
    assert not local.ok and local.found == "data/dem/metadata.parquet: missing"


def test_placed_majortom_shards_must_be_there(tmp_path):
    data = SimpleNamespace(source="majortom", raw_dir="data/majortom")
    [empty] = data_source_checks(tmp_path, data, url_problem)
    assert not empty.ok and "0 parquet shard(s)" in empty.found
    (tmp_path / "data/majortom/dem").mkdir(parents=True)
    (tmp_path / "data/majortom/dem/part_00000.parquet").write_bytes(b"PAR1")
    assert data_source_checks(tmp_path, data, url_problem)[0].ok


def test_preflight_of_the_micro_profile_holds_on_a_cpu_machine():
    from components.params import config_with_profile

    checks = preflight(PROJECT_ROOT, config_with_profile("micro", PROJECT_ROOT), NO_GPU, url_problem)
    assert all(check.ok for check in checks), table(checks)


def test_mesa_check_of_the_paper_profile_lists_what_is_missing_and_exits_1(monkeypatch):
    from flows.cli import app

    monkeypatch.chdir(PROJECT_ROOT)
    before = (PROJECT_ROOT / "params.yaml").read_text()
    result = CliRunner().invoke(app, ["check", "--profile", "paper"])
    assert result.exit_code == 1, result.output
    rows = {line.split()[0] + " " + line.split()[1]: line for line in result.output.splitlines()
            if len(line.split()) > 2}
    assert "FAIL" in rows["pretrained weights"] and "models/stable-diffusion-2-1" in rows["pretrained weights"]
    assert "FAIL" in rows["accelerate config"] and "8 GPU process(es)" in rows["accelerate config"]
    assert "checks hold for profile 'paper'" in result.output and "fix the FAIL rows" in result.output
    assert (PROJECT_ROOT / "params.yaml").read_text() == before  # a profile is checked, not applied
    unknown = CliRunner().invoke(app, ["check", "--profile", "nope"])
    assert unknown.exit_code != 0 and "unknown profile 'nope'" in unknown.output
