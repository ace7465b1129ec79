"""Preflight: what would stop a run hours in, found before a stage starts (`mesa check`).

Each check is a function of the params, the project's files and what the machine has
(:class:`Machine`), and gives :class:`Check` rows: what was checked, what was found, whether it
holds and how to fix it when not. :func:`preflight` runs them all for one params set;
:func:`machine_facts` reads this machine's GPUs, bf16 support and free disk. Nothing is
downloaded: a URL is only asked whether it answers.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Check", "DiskEstimate", "Machine", "PreflightFailed", "accelerate_checks", "accelerate_settings",
           "check_project", "data_source_checks", "disk_checks", "disk_estimate", "gpu_memory_checks", "machine_facts",
           "precision_checks", "preflight", "pretrained_checks", "table", "unet_preset", "url_problem", "wants_gpus"]

#: What the paper's diffusers folder must hold: per part, groups of files of which one must exist.
PRETRAINED_PARTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "unet": (("config.json",), ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin")),
    "vae": (("config.json",), ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin")),
    "text_encoder": (("config.json",), ("model*.safetensors", "pytorch_model*.bin")),
    "tokenizer": (("tokenizer.json", "vocab.json"), ("tokenizer.json", "merges.txt")),
    "scheduler": (("scheduler_config.json",),),
}
#: The UNet config keys that must match ``model.unet``'s preset for the conversion to load.
UNET_SIZE_KEYS = ("in_channels", "block_out_channels", "layers_per_block", "cross_attention_dim",
                  "attention_head_dim", "down_block_types", "up_block_types")
SD21_HINT = ("Stable Diffusion 2.1 at 768 px (stabilityai/stable-diffusion-2-1, diffusers layout: unet, vae, "
             "text_encoder, tokenizer, scheduler)")

# Bytes on disk, measured on the demo world (2026-12-07, `du -sb` after `make demo`): a Major TOM
# cell's raw shards (S2 L2A + L1C + DEM) 1.90 GB / 262 cells; a prepared sample 14.1 MB / 256
# samples at 64 px, so about 13.4 bytes per pixel; the latent cache holds float32 mean and std of
# 4 channels for 3 modalities per latent pixel.
RAW_BYTES_PER_CELL = 7.3e6
SAMPLE_BYTES_PER_PIXEL = 13.4
LATENT_BYTES_PER_LATENT_PIXEL = 3 * 2 * 4 * 4
#: Training state per UNet parameter in float32: weights, EMA and AdamW's two moments, per checkpoint.
CHECKPOINT_BYTES_PER_PARAMETER = 16
#: On the GPU per training process: weights, gradients, AdamW's two moments and the EMA copy (float32).
GPU_BYTES_PER_PARAMETER = 20


@dataclass(frozen=True)
class Check:
    """One row of the preflight table: what was checked, what was found, whether it holds, how to fix it."""

    name: str
    ok: bool
    found: str
    fix: str = ""


class PreflightFailed(RuntimeError):
    """A preflight check failed: the message is the whole table, FAIL rows with how to fix them."""

    def __init__(self, checks: Sequence[Check]):
        self.checks = list(checks)
        failed = [check.name for check in self.checks if not check.ok]
        super().__init__(f"{len(failed)} preflight check(s) failed ({', '.join(failed)}):\n{table(self.checks)}")


@dataclass(frozen=True)
class Machine:
    """What the checks need to know about this machine."""

    gpus: int
    bf16: bool
    free_bytes: int
    gpu_memory_bytes: int | None = None


@dataclass(frozen=True)
class DiskEstimate:
    """Bytes a run of the profile writes, per part (cells may be None: not known before ingest)."""

    cells: int | None
    per_cell: dict[str, float]
    fixed: dict[str, float]

    def total(self) -> float | None:
        if self.cells is None:
            return None
        return self.cells * sum(self.per_cell.values()) + sum(self.fixed.values())

    def describe(self) -> str:
        parts = ", ".join(f"{name} {_size(size)}" for name, size in self.per_cell.items())
        fixed = ", ".join(f"{name} {_size(size)}" for name, size in self.fixed.items())
        cells = f"{self.cells} cells x ({parts})" if self.cells is not None else f"per cell: {parts}"
        return cells + (f" + {fixed}" if fixed else "")


def _size(count: float) -> str:
    """Bytes in decimal units: 512 B, 7.3 MB, 98.2 GB."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1000:
            return f"{count:.0f} B" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


# ----------------------------------------------------------------------------- the pretrained folder
def _has_any(folder: Path, patterns: Sequence[str]) -> bool:
    return any(next(folder.glob(pattern), None) is not None for pattern in patterns)


def pretrained_checks(root: Path, model: Any, expected_unet: Callable[[], dict[str, Any]] | None) -> list[Check]:
    """The folder ``model.pretrained`` names: every part SD 2.1 has, v-prediction, UNet sizes.

    Args:
        root: the project (a relative ``model.pretrained`` is under it).
        model: params ``model`` (``unet``, ``pretrained``).
        expected_unet: the config of ``model.unet``'s preset (None: its sizes are not compared).
    """
    if not model.pretrained:
        if model.unet == "paper":
            return [Check("pretrained weights", False, "model.pretrained is null, but model.unet is paper",
                          f"download {SD21_HINT} into models/stable-diffusion-2-1 and set model.pretrained to it")]
        return [Check("pretrained weights", True, f"none needed (model.unet {model.unet} is trained from scratch)")]
    folder = Path(model.pretrained)
    folder = folder if folder.is_absolute() else root / folder
    if not folder.is_dir():
        return [Check("pretrained weights", False, f"{folder} does not exist",
                      f"download {SD21_HINT} there, or point model.pretrained at your copy")]
    checks = []
    for part, groups in PRETRAINED_PARTS.items():
        missing = [" or ".join(group) for group in groups if not _has_any(folder / part, group)]
        checks.append(Check(f"pretrained {part}", not missing,
                            f"{folder / part}: " + (f"no {'; no '.join(missing)}" if missing else "complete"),
                            "" if not missing else f"copy the {part}/ folder of {SD21_HINT} there"))
    scheduler = _json(folder / "scheduler" / "scheduler_config.json")
    if scheduler is not None:
        kind = scheduler.get("prediction_type", "epsilon")
        checks.append(Check("pretrained scheduler prediction", kind == "v_prediction", f"prediction_type {kind}",
                            "" if kind == "v_prediction" else
                            "the paper fine-tunes SD 2.1 at 768 px, a v-prediction model; this folder looks like "
                            "SD 2.1-base or another model (epsilon): download stabilityai/stable-diffusion-2-1"))
    unet = _json(folder / "unet" / "config.json")
    if unet is not None and expected_unet is not None:
        expected = expected_unet()
        differ = [f"{key} {unet.get(key)!r} (model.unet {model.unet}: {expected[key]!r})" for key in UNET_SIZE_KEYS
                  if key in expected and _plain(unet.get(key)) != _plain(expected[key])]
        checks.append(Check("pretrained unet sizes", not differ, "; ".join(differ) or f"match model.unet {model.unet}",
                            "" if not differ else "use the SD 2.1 folder the paper fine-tunes, or set "
                            "model.unet / model.unet_overrides to this UNet's sizes"))
    return checks


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _plain(value: Any) -> Any:
    """Lists and tuples compare alike (a JSON config has lists, a preset may have tuples)."""
    return list(value) if isinstance(value, (list, tuple)) else value


# ----------------------------------------------------------------------------- accelerate, GPUs, precision
def accelerate_settings(root: Path, train: Any) -> tuple[dict[str, Any] | None, str]:
    """``train.accelerate_config`` read (None and why not, when it cannot be)."""
    path = root / train.accelerate_config
    if not path.is_file():
        return None, f"{train.accelerate_config} does not exist"
    try:
        return (yaml.safe_load(path.read_text()) or {}), ""
    except yaml.YAMLError as err:
        return None, f"{train.accelerate_config} is not YAML: {err}"


def wants_gpus(settings: dict[str, Any] | None) -> bool:
    """An accelerate config that names GPUs (``gpu_ids``) and does not force the CPU. (infra/accelerate's
    two-process CPU config says MULTI_GPU without GPU ids: accelerate runs it on gloo.)"""
    return bool(settings) and "gpu_ids" in settings and not settings.get("use_cpu", False)


def accelerate_checks(root: Path, train: Any, machine: Machine) -> list[Check]:
    """``train.accelerate_config`` exists, and a GPU config has a GPU for each of ``train.num_processes``."""
    settings, problem = accelerate_settings(root, train)
    if settings is None:
        return [Check("accelerate config", False, problem,
                      "set train.accelerate_config to one of infra/accelerate/*.yaml (or fix the file)")]
    processes = int(train.num_processes)
    if not wants_gpus(settings):
        return [Check("accelerate config", True, f"{train.accelerate_config}: {processes} CPU process(es)")]
    found = f"{train.accelerate_config}: {processes} GPU process(es); this machine has {machine.gpus} visible GPU(s)"
    if machine.gpus >= processes:
        return [Check("accelerate config", True, found)]
    return [Check("accelerate config", False, found,
                  f"run on a machine with {processes} GPUs (CUDA_VISIBLE_DEVICES), or set train.num_processes and "
                  "train.accelerate_config (infra/accelerate/) for this one")]


def precision_checks(train: Any, machine: Machine, uses_gpu: bool) -> list[Check]:
    """``train.mixed_precision`` is one this machine can run."""
    mode = train.mixed_precision
    if mode == "no":
        return [Check("mixed precision", True, "no (float32)")]
    if not uses_gpu:
        if mode == "bf16":
            return [Check("mixed precision", True, "bf16 autocast on the CPU")]
        return [Check("mixed precision", False, f"{mode} on the CPU",
                      "fp16 autocast needs a GPU: set train.mixed_precision to bf16 or no")]
    if not machine.gpus:
        return [Check("mixed precision", False, f"{mode} asked for the GPU processes; no visible GPU to check it on",
                      "run on the GPU machine (see the accelerate config row)")]
    if mode == "bf16" and not machine.bf16:
        return [Check("mixed precision", False, "bf16 asked, but the GPU does not support it",
                      "set train.mixed_precision to fp16 (or no), or use an Ampere or newer GPU")]
    return [Check("mixed precision", True, f"{mode} on the GPU")]


# ----------------------------------------------------------------------------- disk and memory
def disk_estimate(config: Any, unet_parameters: int | None) -> DiskEstimate:
    """What a run writes: raw shards, samples and latents per cell, checkpoints and the model once.

    The cell count is ``synth.cells`` for the synthetic world, ``data.ingest.max_cells`` or
    ``sample`` (when set) for ingest, and unknown otherwise (the globe before ingest looks; shards
    you placed are already on disk).
    """
    source, ingest = config.data.source, config.data.ingest
    if source == "synth":
        cells = int(config.synth.cells)
    else:
        caps = [n for n in (ingest.max_cells, ingest.sample) if n] if source == "ingest" else []
        cells = min(caps) if caps else None
    pixels = int(config.prepare.image_px) ** 2
    per_cell = {"raw": RAW_BYTES_PER_CELL if source != "majortom" else 0.0,
                "samples": SAMPLE_BYTES_PER_PIXEL * pixels}
    if config.latents.enabled:
        per_cell["latents"] = LATENT_BYTES_PER_LATENT_PIXEL * pixels / 64
    fixed = {}
    if unet_parameters:
        fixed["checkpoints"] = CHECKPOINT_BYTES_PER_PARAMETER * unet_parameters * int(config.train.keep_checkpoints)
        fixed["model"] = 4 * unet_parameters
    return DiskEstimate(cells, per_cell, fixed)


def disk_checks(root: Path, estimate: DiskEstimate, machine: Machine) -> list[Check]:
    """The free space where the project lives against the estimate (unknown cell count: per cell only)."""
    need = estimate.total()
    found = f"{_size(machine.free_bytes)} free at {root}; the run writes about " + (
        _size(need) if need is not None else "an unknown total") + f" ({estimate.describe()})"
    if need is None or machine.free_bytes >= need:
        return [Check("free disk", True, found)]
    return [Check("free disk", False, found, f"free {_size(need - machine.free_bytes)} or more, or use fewer cells")]


def gpu_memory_checks(unet_parameters: int | None, machine: Machine, uses_gpu: bool) -> list[Check]:
    """Weights, gradients, AdamW and EMA of the UNet per training process against one GPU's memory
    (static state only: activations come on top and depend on batch, resolution and checkpointing)."""
    if not uses_gpu or not unet_parameters:
        return []
    need = GPU_BYTES_PER_PARAMETER * unet_parameters
    method = f"{unet_parameters / 1e6:.0f} M UNet parameters x {GPU_BYTES_PER_PARAMETER} B, activations not counted"
    if machine.gpu_memory_bytes is None:
        return [Check("GPU memory per process", False, f"needs over {_size(need)} ({method}); no GPU to compare",
                      "run on the GPU machine")]
    found = f"needs over {_size(need)} ({method}); the GPU has {_size(machine.gpu_memory_bytes)}"
    ok = machine.gpu_memory_bytes > need
    return [Check("GPU memory per process", ok, found,
                  "" if ok else "use a larger GPU, or lower train.batch_size with gradient_checkpointing on")]


# ----------------------------------------------------------------------------- data
def data_source_checks(root: Path, data: Any, reachable: Callable[[str], str | None]) -> list[Check]:
    """Where the raw data comes from: nothing to check for synth; placed shards for majortom; the
    ingest stage's metadata (a local file, or a URL that answers)."""
    if data.source == "synth":
        return [Check("data source", True, "synth: the synthetic world (no download)")]
    if data.source == "majortom":
        folder = root / data.raw_dir
        shards = sorted(folder.rglob("*.parquet")) if folder.is_dir() else []
        return [Check("data source", bool(shards), f"{data.raw_dir}: {len(shards)} parquet shard(s)",
                      "" if shards else f"put the Major TOM shards in {data.raw_dir}, or set data.source to ingest")]
    entries = {name: data.ingest.location(name) for name in data.ingest.metadata}
    urls = [entry for entry in entries.values() if "://" in entry]
    with ThreadPoolExecutor(max_workers=max(1, len(urls))) as pool:
        problems = dict(zip(urls, pool.map(reachable, urls)))
    checks = []
    for name, entry in entries.items():
        if "://" in entry:
            problem = problems[entry]
            checks.append(Check(f"data {name} metadata", problem is None, f"{entry}: " + (problem or "answers"),
                                "" if problem is None else "connect this machine, or download the metadata "
                                f"parquet and name its path in data.ingest.metadata.{name}"))
        else:
            path = Path(entry) if Path(entry).is_absolute() else root / entry
            checks.append(Check(f"data {name} metadata", path.is_file(), f"{entry}: "
                                + ("present" if path.is_file() else "missing"),
                                "" if path.is_file() else f"download it, or fix data.ingest.metadata.{name}"))
    return checks


def url_problem(url: str, timeout_s: float = 5.0) -> str | None:
    """None when a HEAD request to `url` answers 2xx (nothing is downloaded), else why not."""
    from components.ops.health import health_problem

    return health_problem(url, timeout_s=timeout_s, method="HEAD")


# ----------------------------------------------------------------------------- all of it
def machine_facts(root: Path) -> Machine:
    """This machine's visible GPUs, their bf16 support and memory, and the free disk at ``root``."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return Machine(gpus=gpus, bf16=bool(gpus and torch.cuda.is_bf16_supported()),
                   free_bytes=shutil.disk_usage(root).free,
                   gpu_memory_bytes=torch.cuda.get_device_properties(0).total_memory if gpus else None)


def unet_preset(model: Any) -> tuple[Callable[[], dict[str, Any]], Callable[[], int]]:
    """``model.unet``'s preset config and its parameter count (built on the meta device: no memory)."""
    from components.model import factories

    def config() -> dict[str, Any]:
        return factories.unet_preset_config(model.unet, shared_first_block=model.shared_first_block,
                                            **model.unet_overrides)

    def parameters() -> int:
        unet = factories.build_unet(config(), device="meta")
        return sum(p.numel() for p in unet.parameters())

    return config, parameters


def preflight(root: Path, config: Any, machine: Machine, reachable: Callable[[str], str | None],
              unet: tuple[Callable[[], dict[str, Any]], Callable[[], int]] | None = None) -> list[Check]:
    """Every check for one params set (``config``: a ``PipelineConfig``), in the order a run meets them."""
    preset, count = unet if unet is not None else (None, None)
    parameters = count() if count is not None else None
    uses_gpu = wants_gpus(accelerate_settings(root, config.train)[0])
    return [*data_source_checks(root, config.data, reachable),
            *pretrained_checks(root, config.model, preset),
            *accelerate_checks(root, config.train, machine),
            *precision_checks(config.train, machine, uses_gpu),
            *gpu_memory_checks(parameters, machine, uses_gpu),
            *disk_checks(root, disk_estimate(config, parameters), machine)]


def check_project(root: Path, config: Any) -> list[Check]:
    """Every check on this machine (what `mesa check` and the first task of `mesa retrain` run).

    Raises:
        PreflightFailed: a check failed (its message is the table).
    """
    checks = preflight(root, config, machine_facts(root), reachable=url_problem, unet=unet_preset(config.model))
    if not all(check.ok for check in checks):
        raise PreflightFailed(checks)
    return checks


def table(checks: Iterable[Check]) -> str:
    """The checks as one plain-text table: check, ok / FAIL, found, how to fix."""
    rows = [("check", "", "found", "how to fix")] + [(c.name, "ok" if c.ok else "FAIL", c.found, c.fix) for c in checks]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}" + (f"\n{'':<{widths[0] + widths[1] + 4}}"
                                                                                   f"-> {row[3]}" if row[3] else "")
                     for row in rows)

