"""The training loop: accelerate, the masked v-prediction loss, EMA, exact resume, MLflow.

One call of :func:`train` is one process of a (possibly multi-process) run; ``accelerate
launch`` starts the processes (the train stage does). What makes resuming exact:

- data order and caption augmentation depend only on (seed, epoch, sample id), and the state
  records how many micro-batches of the current epoch are done, which a resumed run skips;
- every random draw of a micro-batch (posterior sample, noises, timesteps) comes from a generator
  seeded by (seed, micro-batch number, rank), not from a global stream;
- model, optimiser, learning-rate schedule, EMA and this loop's counters are one accelerate
  checkpoint, built in a staging folder and swapped in (components.atomic), so a killed run never
  leaves half of one.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from components.atomic import (DELETING_SUFFIX, OLD_SUFFIX, atomic_folder, begin_folder, commit_folder, recover_folder,
                               remove_folder, staging_path)
from components.config import ModelConfig, PipelineConfig, SampleConfig, TrainConfig
from components.layout import MLFLOW_PARENT_RUN_ENV, MLFLOW_RUN_TAGS_ENV, TRAIN_TRACE_ENV, ProjectLayout

CHECKPOINT_PREFIX = "checkpoint-"


@dataclass
class TrainState:
    """The loop's own counters, saved in every checkpoint (accelerate calls state_dict)."""

    step: int = 0            # optimiser updates done
    micro_step: int = 0      # micro-batches done, all epochs
    epoch: int = 0
    epoch_batches: int = 0   # micro-batches of the current epoch done
    empty_samples: int = 0   # samples whose valid mask was empty (they contribute nothing)
    run_id: str = ""
    validation: list = field(default_factory=list)  # every validation result, kept across resumes

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def step_generator(seed: int, micro_step: int, rank: int) -> torch.Generator:
    """The generator of one micro-batch on one rank: the same draws whether or not the run resumed."""
    digest = hashlib.blake2b(f"{seed}/{micro_step}/{rank}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


# ------------------------------------------------------------------------------------------
# building the parts


def caption_corpus(captions_path: Path) -> list[str]:
    """Every caption the augmentation can produce comes from these words: the full captions plus
    each descriptor's full and short forms (byte-level BPE handles anything else)."""
    import pandas as pd

    table = pd.read_parquet(captions_path)
    texts = list(table["caption"].dropna())
    for column in table.columns:
        if column != "caption" and table[column].dtype == object:
            texts.extend(str(v) for v in table[column].dropna().unique())
    return texts


def build_text_side(model: ModelConfig, captions_path: Path, seed: int):
    """(tokenizer, text_encoder): SD 2.1's from model.pretrained, else trained/seeded tiny ones."""
    from components.model.text import load_pretrained_text, tiny_text_encoder, train_caption_tokenizer

    if model.pretrained:
        return load_pretrained_text(model.pretrained, freeze=True)
    tokenizer = train_caption_tokenizer(caption_corpus(captions_path), vocab_size=model.text.vocab_size)
    encoder = tiny_text_encoder(len(tokenizer), hidden_size=model.text.hidden_size, layers=model.text.layers,
                                heads=model.text.heads, seed=seed)
    return tokenizer, encoder


def build_unet_from_params(model: ModelConfig, latent_px: int, cross_attention_dim: int, seed: int):
    """The TwoHeadUNet: SD 2.1's weights when model.pretrained names a folder, else a seeded config."""
    from components.model import factories
    from components.model.convert import from_pretrained_sd

    shared = model.shared_first_block
    if model.pretrained:
        return from_pretrained_sd(model.pretrained, shared_first_block=shared)
    config = factories.unet_preset_config(model.unet, sample_size=latent_px, cross_attention_dim=cross_attention_dim,
                                          shared_first_block=shared, **model.unet_overrides)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return factories.build_unet(config)


def load_frozen_vae(vae_dir: Path):
    from diffusers import AutoencoderKL

    recover_folder(vae_dir)
    if not (vae_dir / "config.json").exists():
        raise FileNotFoundError(f"{vae_dir} holds no AutoencoderKL (config.json): run the vae stage first "
                                "(`mesa stage vae` or `dvc repro vae`)")
    vae = AutoencoderKL.from_pretrained(str(vae_dir), local_files_only=True)
    return vae.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------
# checkpoints

# Settings that change how long or how visibly a run trains, not what it learns: a run may
# change them and still resume (e.g. raise steps to train longer).
SCHEDULE_ONLY = ("steps", "resume", "checkpoint_every", "keep_checkpoints", "validate_every", "grid_every",
                 "grid_captions", "grid_seeds", "grid_steps", "log_every", "log_model", "dataloader_workers",
                 "accelerate_config")


def run_fingerprint(params: Mapping[str, Any], stats: Mapping[str, Any], vae_config: Mapping[str, Any]) -> str:
    """What a checkpoint must match to be resumed: model, training, augmentation, shadow, data, VAE.

    Checkpoints live in models/checkpoints/<fingerprint>/, so the two arms of an ablation (or a
    changed learning rate) never resume each other's state, and switching back resumes its own.
    """
    train = {k: v for k, v in (params.get("train") or {}).items() if k not in SCHEDULE_ONLY}
    what = {"model": params.get("model"), "train": train, "augmentation": params["captions"]["augmentation"],
            "shadow": params["shadow"], "stats": stats, "vae": {k: v for k, v in dict(vae_config).items()
                                                                if not k.startswith("_")}}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _checkpoint_step(name: str) -> int | None:
    """N of ``checkpoint-N``; None for anything else (``.building``, ``.old``, an old ``.tmp``)."""
    digits = name[len(CHECKPOINT_PREFIX):]
    return int(digits) if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() else None


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder with a suffix is an interrupted write or delete).

    A checkpoint whose swap was killed between its two renames is put back first (only its
    ``.old`` version was left, complete).
    """
    if not folder.is_dir():
        return []
    for aside in folder.glob(f"{CHECKPOINT_PREFIX}*{OLD_SUFFIX}"):
        name = aside.name[:-len(OLD_SUFFIX)]
        if _checkpoint_step(name) is not None:
            recover_folder(aside.with_name(name))
    done = [p for p in folder.iterdir() if p.is_dir() and _checkpoint_step(p.name) is not None]
    return sorted(done, key=lambda p: _checkpoint_step(p.name))


def resume_point(folder: Path, resume: str) -> Path | None:
    if resume == "none":
        return None
    found = list_checkpoints(folder)
    if resume == "latest":
        return found[-1] if found else None
    chosen = folder / resume
    if chosen not in found:
        raise FileNotFoundError(f"train.resume names {chosen}, which is not a complete checkpoint; "
                                f"found: {[p.name for p in found]}")
    return chosen


def save_checkpoint(accelerator, folder: Path, step: int, keep: int) -> Path:
    """accelerate's full state at ``step``, built in a staging folder then swapped in; keeps ``keep``.

    ``checkpoint-N`` only ever appears complete: every process writes its part into
    ``checkpoint-N.building``, then the main process swaps it in (an earlier ``checkpoint-N``
    stays complete until then).
    """
    final = folder / f"{CHECKPOINT_PREFIX}{step:06d}"
    if accelerator.is_main_process:
        begin_folder(final)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging_path(final)))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        commit_folder(staging_path(final), final)
        for old in list_checkpoints(folder)[:-keep]:
            remove_folder(old)
        for stale in folder.glob(f"{CHECKPOINT_PREFIX}*{DELETING_SUFFIX}"):  # a delete a killed run left
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# ------------------------------------------------------------------------------------------
# data


def make_dataset(layout: ProjectLayout, params: Mapping[str, Any], train: TrainConfig, rank: int, world: int,
                 split: str, augment: bool):
    """Cached latents when the latents stage wrote them, else the samples (encoded on the fly)."""
    from components.samples.dataset import TerrainSampleDataset
    from components.samples.latents.read import LatentSampleDataset, latent_shards, read_manifest
    from components.samples.latents.schema import MANIFEST_NAME

    for folder in (layout.samples, layout.latents):
        recover_folder(folder)  # a prepare or latents stage killed mid-swap left only <folder>.old
    stats = json.loads(layout.sample_stats.read_text())
    manifest = read_manifest(layout.latents) if (layout.latents / MANIFEST_NAME).exists() else {"enabled": False}
    cached = bool(manifest.get("enabled"))
    shards = ([str(p) for p in latent_shards(layout.latents)] if cached
              else sorted(str(p) for p in layout.samples.glob("*.parquet")))
    kind = LatentSampleDataset if cached else TerrainSampleDataset
    dataset = kind(shards, split, dem_scale_m=stats["dem_scale_m"], dem_knee_m=stats.get("dem_knee_m"),
                   seed=train.seed, shuffle=augment, shadow=bool(params["shadow"]["enabled"]),
                   augmentation=(params["captions"]["augmentation"] if augment else None),
                   rank=rank, world_size=world, shuffle_buffer=train.shuffle_buffer if augment else 0,
                   drop_last=augment)
    return dataset, cached, stats


def collate_for(cached: bool):
    from components.samples.dataset import collate
    from components.samples.latents.read import collate_latents

    return collate_latents if cached else collate


def batch_latents(batch: Mapping[str, Any], vae, cached: bool, generator: torch.Generator,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(image latents, DEM latents) of a batch, sampled from the VAE posterior and scaled."""
    from components.samples.latents.read import sample_posterior

    scale = float(vae.config.scaling_factor)
    if cached:
        image = sample_posterior(batch["rgb_latent_mean"], batch["rgb_latent_std"], generator)
        dem = sample_posterior(batch["dem_latent_mean"], batch["dem_latent_std"], generator)
    else:
        with torch.no_grad():
            both = vae.encode(torch.cat([batch["rgb"], batch["dem"]]).to(device, vae.dtype)).latent_dist
            drawn = sample_posterior(both.mean.float().cpu(), both.std.float().cpu(), generator)
        image, dem = drawn.chunk(2)
    return (image * scale).to(device), (dem * scale).to(device)


# ------------------------------------------------------------------------------------------
# the loop


def train(project_dir: str | Path, params: Mapping[str, Any], stop_after: int | None = None,
          accelerator=None, trace_dir: str | Path | None = None) -> dict[str, Any]:
    """Train the two-head UNet and write models/pipeline/ and models/train_run.json.

    Args:
        project_dir: the project (params.yaml's folder); inputs and outputs are in ``ProjectLayout``.
        params: the whole params.yaml (groups model, train, captions, shadow, sample).
        stop_after: stop after this many optimiser updates (tests of resume; default: train.steps).
        accelerator: an ``accelerate.Accelerator`` (default: one from train's settings).
        trace_dir: write ``rank<N>.json`` there (the sample ids this rank trained on, and a hash of
            its final weights): how the multi-process test checks the split and the sync. Default:
            env ``TRAIN_TRACE_ENV`` (MESA_TRAIN_TRACE_DIR), else none.
    """
    import os
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from torch.utils.data import DataLoader

    from components.model.factories import training_scheduler
    from components.model.text import tokenize_prompts
    from components.training.loss import masked_v_loss, noisy_latents

    root = Path(project_dir)
    layout = ProjectLayout(root)
    config = PipelineConfig.from_params(params)
    train_params = config.train
    # cpu=True without a GPU: under a torchrun-style launch (several processes) accelerate then
    # picks gloo DDP on the CPU instead of treating each process as a run of its own.
    accelerator = accelerator or Accelerator(mixed_precision=train_params.mixed_precision,
                                             gradient_accumulation_steps=train_params.grad_accumulation,
                                             cpu=not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    device = accelerator.device
    say = _printer(accelerator)

    # 1. Data: this rank's share of the training split, plus fixed held-out samples for validation.
    dataset, cached, stats = make_dataset(layout, params, train_params, rank, world, "train", augment=True)
    if dataset.num_samples() < world * train_params.batch_size:
        raise ValueError(f"{dataset.num_samples()} training samples cannot fill one batch of {train_params.batch_size} "
                         f"on each of {world} processes: lower train.batch_size or add data")
    loader = DataLoader(dataset, batch_size=train_params.batch_size, collate_fn=collate_for(cached),
                        num_workers=train_params.dataloader_workers, drop_last=True)

    # 2. Frozen parts and the UNet.
    vae = load_frozen_vae(layout.vae).to(device)
    tokenizer, text_encoder = build_text_side(config.model, layout.captions, train_params.seed)
    text_encoder.requires_grad_(train_params.train_text_encoder).train(train_params.train_text_encoder)
    latent_px = stats["prepare"]["image_px"] // stats["prepare"]["latent_factor"]
    unet = build_unet_from_params(config.model, latent_px, text_encoder.config.hidden_size, train_params.seed)
    if train_params.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    noise_scheduler = training_scheduler()

    trainable = list(unet.parameters()) + (list(text_encoder.parameters()) if train_params.train_text_encoder else [])
    # fused: one kernel per step instead of a Python loop over ~330 tensors (about a tenth of a tiny-model step on CPU)
    optimizer = torch.optim.AdamW(trainable, lr=train_params.learning_rate, weight_decay=train_params.weight_decay,
                                  fused=True)
    lr_schedule = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=train_params.warmup_steps)
    if train_params.train_text_encoder:
        unet, text_encoder, optimizer, lr_schedule = accelerator.prepare(unet, text_encoder, optimizer, lr_schedule)
    else:
        unet, optimizer, lr_schedule = accelerator.prepare(unet, optimizer, lr_schedule)
        text_encoder.to(device)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    ema = None
    if train_params.ema.enabled:
        ema = EMAModel(accelerator.unwrap_model(unet).parameters(), decay=train_params.ema.decay, foreach=True)
        ema.to(device)
        accelerator.register_for_checkpointing(ema)

    # 3. Resume exactly where the last complete checkpoint of this configuration stopped.
    checkpoints = layout.checkpoints / run_fingerprint(params, stats, vae.config)
    start = resume_point(checkpoints, train_params.resume)
    if start is not None:
        accelerator.load_state(str(start))
        say(f"[train] resumed from {start.name}: step {state.step}, epoch {state.epoch}")

    # 4. Tracking (main process only) and the fixed validation set.
    from components.training.validation import ValidationSet

    tracker = _start_tracking(root, params, train_params, accelerator, state, stats, dataset, cached)
    if start is not None:  # each resume stays on the run's record (a metric history: one point per resume)
        tracker.log_metrics({"resumed_from_step": state.step}, step=state.step)
    # Only the main process evaluates, so with the unwrapped encoder: a DDP-wrapped one would start a
    # buffer broadcast the other processes never join (a hang after the first synced backward).
    validation = (ValidationSet.build(layout, params, train_params, vae, tokenizer,
                                      accelerator.unwrap_model(text_encoder), device)
                  if accelerator.is_main_process else None)

    history = state.validation

    def evaluate() -> None:
        if not accelerator.is_main_process:
            return
        losses = validation.losses(accelerator.unwrap_model(unet), noise_scheduler)
        history.append({"step": state.step, **losses})
        tracker.log_metrics({f"val/{k}": v for k, v in losses.items()}, step=state.step)
        say(f"[train] step {state.step}: validation loss {losses['loss']:.4f} "
            f"(captions shuffled: {losses['loss_shuffled_captions']:.4f})")

    if state.step == 0:
        evaluate()

    # 5. The loop: micro-batches until `steps` updates are done.
    total = train_params.steps if stop_after is None else min(stop_after, train_params.steps)
    unet.train()
    started, seen_since, last_log = time.perf_counter(), 0, time.perf_counter()
    seen_ids: list[str] = []
    while state.step < total:
        dataset.set_epoch(state.epoch)
        for index, batch in enumerate(loader):
            if index < state.epoch_batches:  # done before the checkpoint we resumed from
                continue
            generator = step_generator(train_params.seed, state.micro_step, rank)
            with accelerator.accumulate(unet):
                image, dem = batch_latents(batch, vae, cached, generator, device)
                noisy, target, timesteps = noisy_latents(noise_scheduler, image, dem, generator)
                ids = tokenize_prompts(tokenizer, batch["caption"]).to(device)
                with torch.set_grad_enabled(train_params.train_text_encoder):
                    context = text_encoder(input_ids=ids).last_hidden_state
                with accelerator.autocast():
                    prediction = unet(noisy, timesteps, context).sample
                parts = masked_v_loss(prediction.float(), target.float(), batch["mask_latent"].to(device))
                accelerator.backward(parts.total)
                grad_norm = None
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(trainable, train_params.grad_clip)
                optimizer.step()
                lr_schedule.step()
                optimizer.zero_grad(set_to_none=True)
            seen_ids.extend(batch["sample_id"])
            state.micro_step += 1
            state.epoch_batches += 1
            state.empty_samples += int(parts.empty_samples)
            seen_since += len(batch["caption"]) * world
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            if ema is not None:
                ema.step(accelerator.unwrap_model(unet).parameters())
            if state.step % train_params.log_every == 0 or state.step == total:
                now = time.perf_counter()
                tracker.log_metrics({
                    "loss": parts.total.item(), "loss/image": parts.image.item(), "loss/dem": parts.dem.item(),
                    "lr": lr_schedule.get_last_lr()[0], "grad_norm": float(grad_norm),
                    "samples_per_s": seen_since / max(now - last_log, 1e-9),
                    "valid_share": float(parts.valid_share), "empty_samples": state.empty_samples,
                }, step=state.step)
                say(f"[train] step {state.step}/{train_params.steps} loss {parts.total.item():.4f} "
                    f"({seen_since / max(now - last_log, 1e-9):.1f} samples/s)")
                seen_since, last_log = 0, now
            if state.step % train_params.validate_every == 0:
                evaluate()
            if train_params.grid_captions and state.step % train_params.grid_every == 0:
                _log_grid(accelerator, tracker, unet, ema, vae, tokenizer, text_encoder, stats, config.sample,
                          train_params, state.step)
            if state.step % train_params.checkpoint_every == 0:
                save_checkpoint(accelerator, checkpoints, state.step, train_params.keep_checkpoints)
            if state.step >= total:
                break
        else:  # the epoch ran out: next one from its first batch
            state.epoch += 1
            state.epoch_batches = 0

    # 6. Outputs: the pipeline (EMA weights when on) and the run record; checkpoints stay.
    seconds = time.perf_counter() - started
    result = {"step": state.step, "epoch": state.epoch, "run_id": tracker.run_id, "cached_latents": cached,
              "empty_samples": state.empty_samples, "checkpoints": str(checkpoints.relative_to(root)),
              "validation_split": validation.split if validation else None}
    if state.step >= train_params.steps:
        if state.step % train_params.checkpoint_every:
            save_checkpoint(accelerator, checkpoints, state.step, train_params.keep_checkpoints)
        if not history or history[-1]["step"] != state.step:
            evaluate()
        if history:
            result["validation_first"] = {k: round(v, 6) for k, v in history[0].items()}
            result["validation_last"] = {k: round(v, 6) for k, v in history[-1].items()}
            result["validation_history"] = [{k: round(v, 6) for k, v in h.items()} for h in history]
        if accelerator.is_main_process:
            pipeline = _final_pipeline(accelerator, unet, ema, vae, tokenizer, text_encoder, stats, config.sample)
            _save_atomically(pipeline, layout.pipeline)
            if train_params.log_model:
                from components.tracking.pyfunc import log_pipeline_model

                if tracker.run_id:
                    tracker.flush()
                    result["model_uri"] = log_pipeline_model(tracker.run_id, str(layout.pipeline),
                                                             uri=tracker.tracking_uri)
            from components.atomic import write_json_atomic

            write_json_atomic(layout.run_record, {"run_id": tracker.run_id, "experiment": train_params.experiment,
                                                  "steps": state.step, "model_uri": result.get("model_uri")})
        say(f"[train] {state.step} steps in {seconds:.0f} s -> {layout.pipeline}")
    trace_dir = trace_dir or os.environ.get(TRAIN_TRACE_ENV)
    if trace_dir:
        from components.atomic import write_json_atomic

        weights = hashlib.sha256()
        trained = {"unet": accelerator.unwrap_model(unet)}
        if train_params.train_text_encoder:
            trained["text_encoder"] = accelerator.unwrap_model(text_encoder)
        tensors = {f"{part}.{name}": tensor for part, module in trained.items()
                   for name, tensor in module.state_dict().items()}
        for name, tensor in sorted(tensors.items()):
            weights.update(name.encode() + tensor.detach().cpu().float().numpy().tobytes())
        write_json_atomic(Path(trace_dir) / f"rank{rank}.json", {"rank": rank, "world": world, "samples": seen_ids,
                                                                "weights_sha256": weights.hexdigest()})
    accelerator.wait_for_everyone()
    tracker.finish()
    return result


# ------------------------------------------------------------------------------------------
# helpers of the loop


def _printer(accelerator):
    def say(message: str) -> None:
        if accelerator.is_main_process:
            print(message, flush=True)

    return say


def _start_tracking(root: Path, params, train_params: TrainConfig, accelerator, state: TrainState, stats,
                    dataset, cached: bool):
    """The run's logger: the run a resumed checkpoint names, else a new run with lineage tags.

    A caller that launches training (e.g. `mesa ablation` around `dvc exp run`) can shape a new run
    through the environment:

    - ``MLFLOW_PARENT_RUN_ENV`` (MESA_MLFLOW_PARENT_RUN_ID): a run id; the new run is nested under it (tag
      ``mlflow.parentRunId``, which the MLflow UI shows as a child row of that run).
    - ``MLFLOW_RUN_TAGS_ENV`` (MESA_MLFLOW_RUN_TAGS): a JSON object of extra tags (e.g.
      ``{"mesa.variant": "shadow-on"}``); ``mlflow.runName`` in it replaces the default run name.
    """
    import json
    import os

    from components.tracking.lineage import lineage_tags
    from components.tracking.run_logger import RunLogger

    enabled = accelerator.is_main_process
    counts = {"train_samples": dataset.num_samples(), "processes": accelerator.num_processes,
              "cached_latents": cached, "samples": stats.get("samples")}
    tags = lineage_tags(root, params, counts) if enabled else {}
    extra = json.loads(os.environ.get(MLFLOW_RUN_TAGS_ENV) or "{}")
    if not isinstance(extra, dict):
        raise TypeError(f"{MLFLOW_RUN_TAGS_ENV} must be a JSON object of tags, got {extra!r}")
    run_name = str(extra.pop("mlflow.runName", None) or f"train-{params.get('profile', 'custom')}")
    tags.update({str(k): str(v) for k, v in extra.items()})
    if os.environ.get(MLFLOW_PARENT_RUN_ENV):
        tags["mlflow.parentRunId"] = os.environ[MLFLOW_PARENT_RUN_ENV]
    if state.run_id:
        tracker = RunLogger.resume(state.run_id, root, enabled=enabled)
    else:
        tracker = RunLogger.start(train_params.experiment, run_name, root, tags=tags, enabled=enabled)
        tracker.log_params(params)
    if enabled:
        state.run_id = tracker.run_id or ""
        # What `mesa rebuild` needs to rerun this segment (dvc.lock, params.yaml, uncommitted diff).
        from components.tracking.lineage import lineage_snapshot

        for artifact_file, text in lineage_snapshot(root, params, train_params.steps).items():
            tracker.log_text(text, artifact_file)
    return tracker


def _unet_for_sampling(accelerator, unet, ema):
    """A copy of the UNet with the EMA weights when EMA is on (the training weights stay put)."""
    import copy

    model = copy.deepcopy(accelerator.unwrap_model(unet)).eval()
    if ema is not None:
        ema.copy_to(model.parameters())
    return model.float()


def _final_pipeline(accelerator, unet, ema, vae, tokenizer, text_encoder, stats, sample: SampleConfig):
    from components.model.pipeline import build_pipeline

    encoder = accelerator.unwrap_model(text_encoder).eval()
    return build_pipeline(_unet_for_sampling(accelerator, unet, ema).cpu(), vae,
                          encoder, tokenizer, stats, sampler=sample.sampler)


def _save_atomically(pipeline, folder: Path) -> None:
    # The old pipeline stays complete until the new one is in place (a reader never sees neither).
    with atomic_folder(folder) as staging:
        pipeline.save_pretrained(str(staging))


def _log_grid(accelerator, tracker, unet, ema, vae, tokenizer, text_encoder, stats, sample: SampleConfig, train_params,
              step):
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return
    from components.training.validation import render_grid

    pipeline = _final_pipeline(accelerator, unet, ema, vae, tokenizer, text_encoder, stats, sample)
    captions = list(train_params.grid_captions)
    seeds = list(train_params.grid_seeds)
    prompts = [c for c in captions for _ in seeds]
    output = pipeline(prompt=prompts, seed=[s for _ in captions for s in seeds],
                      num_inference_steps=train_params.grid_steps,
                      guidance_scale=sample.guidance)
    image = render_grid(output.rgb, output.dem_m, prompts, [s for _ in captions for s in seeds],
                        pixel_size_m=float(stats["prepare"]["footprint_px"]) * 10.0 / output.rgb.shape[1])
    tracker.log_image(image, f"grids/step_{step:06d}.png", step=step)
    accelerator.wait_for_everyone()
