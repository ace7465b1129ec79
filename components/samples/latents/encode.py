"""Writing the latent cache: every sample encoded once by the frozen VAE (the ``latents`` stage)."""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from components.atomic import atomic_write, write_json_atomic
from components.samples.dataset import dem_to_model, rgb_to_model
from components.samples.dem_encoding import check_dem_encoding
from components.samples.latents.schema import (
    LATENT_ARRAYS,
    LATENT_FORMAT,
    LATENT_FORMAT_VERSION,
    LATENT_METADATA_KEY,
    LATENT_SCHEMA,
    MANIFEST_NAME,
    STRING_COLUMNS,
)
from components.samples.shards import SCALAR_COLUMNS, SampleShardError, SampleShardReader, read_sample_shard

# ---------------------------------------------------------------------------------------------
# Hashes of the VAE: what a cache was made with


def vae_config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of a VAE configuration's public keys (sorted JSON).

    Args:
        config: ``vae.config`` or a config dict (``tiny_vae_config()``, a folder's config.json).
            Keys starting with ``_`` (diffusers version, load path) are left out, so the same
            network built from a config or loaded from its folder hashes the same.
    """
    public = {str(k): v for k, v in dict(config).items() if not str(k).startswith("_")}
    text = json.dumps(public, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def vae_weights_hash(vae: torch.nn.Module) -> str:
    """BLAKE2b (128 bit) of a model's state dict: names, dtypes, shapes and bytes, in name order.

    Args:
        vae: the VAE (any ``torch.nn.Module``); about 0.5 s on one CPU core for SD's 84 M weights.
    """
    digest = hashlib.blake2b(digest_size=16, person=b"mesa-vae")
    for name, tensor in sorted(vae.state_dict().items()):
        array = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}\x1f{array.dtype}\x1f{tuple(array.shape)}\x1e".encode())
        if array.numel():
            digest.update(array.view(torch.uint8).numpy())  # the buffer itself, no bytes copy
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Encoding


def _best_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _chunks(items: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive lists of ``size`` items (the last one shorter)."""
    chunk: list[dict[str, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _posterior(vae, images: list[torch.Tensor], device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) float32 numpy (N, C, h, w) of one VAE forward over ``images`` (3, H, W) each."""
    batch = torch.stack(images).to(device=device, dtype=vae.dtype)
    dist = vae.encode(batch).latent_dist
    return dist.mean.float().cpu().numpy(), dist.std.float().cpu().numpy()


def _encode_chunk(vae, samples: list[dict[str, Any]], dem_scale_m: float, dem_knee_m: float | None,
                  device: torch.device) -> list[dict[str, Any]]:
    """The latent records of a chunk of samples: one VAE forward per modality."""
    records = [{c: s[c] for c in SCALAR_COLUMNS} | {"mask_latent": s["mask_latent"]} for s in samples]
    inputs = {
        "rgb": [rgb_to_model(s["rgb"]) for s in samples],
        "rgb_shadow": [rgb_to_model(s["rgb_shadow"]) for s in samples if s["rgb_shadow"] is not None],
        "dem": [dem_to_model(s["dem"], dem_scale_m, dem_knee_m) for s in samples],
    }
    for modality, images in inputs.items():
        owners = [i for i, s in enumerate(samples) if modality != "rgb_shadow" or s["rgb_shadow"] is not None]
        mean, std = _posterior(vae, images, device) if images else (None, None)
        for record in records:
            record[f"{modality}_latent_mean"] = record[f"{modality}_latent_std"] = None
        for k, i in enumerate(owners):
            records[i][f"{modality}_latent_mean"] = mean[k]
            records[i][f"{modality}_latent_std"] = std[k]
    return records


def _latent_metadata(
    source: SampleShardReader, latent_shape: Sequence[int], encoding: Mapping[str, Any], splits: Mapping[str, int]
) -> bytes:
    """The ``mesa.latents`` schema metadata of one latent shard (sorted JSON, stable bytes)."""
    mask_shape = source.metadata["arrays"]["mask_latent"]["shape"]
    arrays = {"mask_latent": {"dtype": "|u1", "shape": list(mask_shape)}}
    arrays |= {name: {"dtype": "<f4", "shape": list(latent_shape)} for name in LATENT_ARRAYS}
    meta = {
        "format": LATENT_FORMAT,
        "version": LATENT_FORMAT_VERSION,
        "arrays": arrays,
        "rows": source.num_rows,
        "splits": dict(sorted(splits.items())),
        "row_group_size": source.metadata["row_group_size"],
        "rgb_shadow_rows": source.metadata["rgb_shadow_rows"],
        "l1c_missing_rows": source.metadata["l1c_missing_rows"],
        "source_shard": Path(source.path).name,
        **encoding,
    }
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def _table(records: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    columns: dict[str, list[Any]] = {c: [r[c] for r in records] for c in SCALAR_COLUMNS}
    for name in ("mask_latent", *LATENT_ARRAYS):
        dtype = np.uint8 if name == "mask_latent" else np.dtype("<f4")
        columns[name] = [
            None if r[name] is None else np.ascontiguousarray(r[name], dtype=dtype).tobytes() for r in records
        ]
    return pa.Table.from_pydict(columns, schema=schema)


def _split_counts(reader: SampleShardReader) -> dict[str, int]:
    counts = reader.read_column("split").value_counts().to_pylist()
    return {item["values"]: item["counts"] for item in counts}


def _encode_shard(
    path: Path,
    out: Path,
    vae,
    encoding: Mapping[str, Any],
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[int], None],
) -> dict[str, Any]:
    """Encode one sample shard into one latent shard at ``out`` (atomically); its summary."""
    with SampleShardReader(path) as source:
        rows, group_size, splits = source.num_rows, int(source.metadata["row_group_size"]), _split_counts(source)
        state: dict[str, Any] = {"written": 0, "shape": None}

        def write(tmp: Path) -> None:
            writer: pq.ParquetWriter | None = None
            pending: list[dict[str, Any]] = []
            try:
                samples = read_sample_shard(path)
                for chunk in _chunks(samples, batch_size):
                    pending += _encode_chunk(vae, chunk, encoding["dem_scale_m"], encoding.get("dem_knee_m"), device)
                    on_batch(len(chunk))
                    if writer is None:
                        state["shape"] = list(pending[0]["rgb_latent_mean"].shape)
                        meta = _latent_metadata(source, state["shape"], encoding, splits)
                        schema = LATENT_SCHEMA.with_metadata({LATENT_METADATA_KEY: meta})
                        writer = pq.ParquetWriter(
                            tmp, schema, compression="zstd", use_dictionary=STRING_COLUMNS,
                            write_statistics=list(SCALAR_COLUMNS),
                        )
                    # output row groups mirror the input's, whatever the encoding batch size
                    while len(pending) >= group_size:
                        writer.write_table(_table(pending[:group_size], writer.schema), row_group_size=group_size)
                        state["written"] += group_size
                        pending = pending[group_size:]
                if pending and writer is not None:
                    writer.write_table(_table(pending, writer.schema), row_group_size=group_size)
                    state["written"] += len(pending)
            finally:
                if writer is not None:
                    writer.close()
            if state["written"] != rows or writer is None:
                raise SampleShardError(
                    f"{path}: encoded {state['written']} samples but the shard holds {rows}: the shard is "
                    "corrupt or empty, rerun the prepare stage"
                )

        atomic_write(out, write)
        shadow_rows = int(source.metadata["rgb_shadow_rows"])
    return {
        "name": out.name, "rows": rows, "splits": splits, "rgb_shadow_rows": shadow_rows, "latent_shape": state["shape"]
    }


def _encoding(vae, dem_scale_m: float, dem_knee_m: float | None = None) -> dict[str, Any]:
    """What the latents depend on besides the samples (recorded in every shard and the manifest; the
    DEM knee only when the DEM is companded, so a linear cache's bytes stay what they were)."""
    return {
        "dem_scale_m": float(dem_scale_m),
        **({} if dem_knee_m is None else {"dem_knee_m": float(dem_knee_m)}),
        "scaled": False,
        "scaling_factor": float(vae.config.scaling_factor),
        "vae_config_sha256": vae_config_hash(vae.config),
        "vae_weights_blake2b": vae_weights_hash(vae),
    }


def _remove_stale(out_dir: Path, keep: set[str]) -> list[str]:
    """Delete latent shards of an earlier run whose sample shard is gone (a glob would find them)."""
    removed = []
    for old in sorted(out_dir.glob("*.parquet")):
        if old.name not in keep:
            old.unlink()
            removed.append(old.name)
    return removed


def encode_samples_to_latents(
    sample_shards: Sequence[str | Path],
    vae,
    out_dir: str | Path,
    *,
    dem_scale_m: float,
    dem_knee_m: float | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Encode every sample of every shard (all splits) with the frozen VAE into latent shards.

    Args:
        sample_shards: the sample shards (``data/samples/*.parquet``); any order.
        vae: a diffusers ``AutoencoderKL``; moved to ``device`` and put in eval mode, never changed.
        out_dir: the cache folder (``data/latents``): one latent shard per sample shard (same
            file name) and ``manifest.json``. Latent shards there that no sample shard makes
            any more are deleted.
        dem_scale_m: the DEM scale S in metres (``stats.json``'s ``dem_scale_m``), as training uses it.
        dem_knee_m: ``stats.json``'s ``dem_knee_m`` (default None: the DEM enters linearly).
        batch_size: images per VAE forward (default 32).
        device: where to encode (default None: cuda when available, else cpu).
        progress: called as ``progress(done, total, "samples")`` after each batch (default None).

    Returns:
        The report: ``samples``, ``shards`` (count), ``splits``, ``rgb_shadow_samples``,
        ``latent_shape`` [C, h, w], ``scaling_factor``, ``vae_config_sha256``,
        ``vae_weights_blake2b``, ``removed`` (stale shard names), ``manifest`` (path), ``seconds``.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
    check_dem_encoding(dem_scale_m, dem_knee_m)
    if isinstance(sample_shards, (str, Path)):
        sample_shards = [sample_shards]
    paths = sorted(dict.fromkeys(Path(p) for p in sample_shards))
    if not paths:
        raise ValueError("no sample shards to encode: run the prepare stage first (data/samples/*.parquet)")
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise ValueError(
            f"two sample shards share a file name in {[str(p) for p in paths]}: latent shards are named after "
            "their sample shard, so pass shards of one samples folder"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # the shards are about to change: an old manifest must not vouch for a half-written cache
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    started = time.perf_counter()
    device = _best_device(device)
    vae = vae.to(device).eval()
    encoding = _encoding(vae, dem_scale_m, dem_knee_m)
    total = 0
    for path in paths:
        with SampleShardReader(path) as reader:
            total += reader.num_rows
    done = [0]

    def on_batch(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], total, "samples")

    with torch.no_grad():
        shards = [_encode_shard(p, out_dir / p.name, vae, encoding, int(batch_size), device, on_batch) for p in paths]
    removed = _remove_stale(out_dir, set(names))
    manifest = _manifest(shards, encoding)
    write_json_atomic(out_dir / MANIFEST_NAME, manifest)
    return {
        **{k: manifest[k] for k in ("samples", "splits", "rgb_shadow_samples", "latent_shape", "scaling_factor")},
        "shards": len(shards),
        "vae_config_sha256": encoding["vae_config_sha256"],
        "vae_weights_blake2b": encoding["vae_weights_blake2b"],
        "removed": removed,
        "manifest": str(out_dir / MANIFEST_NAME),
        "seconds": round(time.perf_counter() - started, 3),
    }


# ---------------------------------------------------------------------------------------------
# Manifest


def _manifest(shards: list[dict[str, Any]], encoding: Mapping[str, Any]) -> dict[str, Any]:
    """manifest.json of an enabled cache: shards, counts, latent shape and the encoding."""
    splits: dict[str, int] = {}
    for shard in shards:
        for split, count in shard["splits"].items():
            splits[split] = splits.get(split, 0) + count
    shapes = sorted({tuple(s["latent_shape"]) for s in shards})
    if len(shapes) != 1:
        raise SampleShardError(
            f"the sample shards give latents of different shapes {shapes}: they come from different "
            "prepare runs; rerun the prepare stage"
        )
    return {
        "enabled": True,
        "format": LATENT_FORMAT,
        "version": LATENT_FORMAT_VERSION,
        "shards": [{k: s[k] for k in ("name", "rows", "splits", "rgb_shadow_rows")} for s in shards],
        "samples": sum(s["rows"] for s in shards),
        "splits": dict(sorted(splits.items())),
        "rgb_shadow_samples": sum(s["rgb_shadow_rows"] for s in shards),
        "latent_shape": list(shapes[0]),
        **encoding,
    }


def write_disabled_manifest(out_dir: str | Path, reason: str = "params: latents.enabled is false") -> Path:
    """The latents stage's output when the cache is off: ``{"enabled": false, ...}``.

    Args:
        out_dir: the cache folder (``data/latents``), created if missing.
        reason: why there is no cache (default: the params switch), kept in the manifest.

    Returns:
        The manifest's path. Old latent shards in ``out_dir`` are deleted, so nothing can
        read a cache that the manifest disowns.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(out_dir, set())
    manifest = {"enabled": False, "format": LATENT_FORMAT, "version": LATENT_FORMAT_VERSION, "reason": str(reason)}
    return write_json_atomic(out_dir / MANIFEST_NAME, manifest)
