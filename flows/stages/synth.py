"""`mesa stage synth`: the synthetic Major TOM world (or a note that real shards are read elsewhere:
ingested by the ingest stage, or placed by hand)."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE

from components.atomic import atomic_folder, write_json_atomic, write_text_atomic
from components.layout import SYNTH_OUT, SYNTH_REPORT
from components.params import load_config
from components.progress import progress_printer


@task(task_run_name="synth shard {index}", cache_policy=NO_CACHE)
def _build_synth_shard(index: int, build) -> dict:
    return build(index)


@flow(name="stage-synth")
def synth_stage_flow(project_dir: str) -> dict:
    """Generate the synthetic Major TOM world into data/raw (a fresh folder each run)."""
    from components.majortom.synthetic.world import build_world

    root = Path(project_dir)
    config = load_config(root)
    out = root / SYNTH_OUT
    # The params check (components/config/data.py) pairs data.source with data.raw_dir.
    source, raw_dir = config.data.source, Path(config.data.raw_dir)
    if source in ("majortom", "ingest"):
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "SOURCE.txt", f"data.source is {source}: stages read real shards from {raw_dir}\n")
        write_json_atomic(root / SYNTH_REPORT, {"source": source, "raw_dir": str(raw_dir)})
        return {"source": source}

    def map_over_shards(build, indices):
        return [f.result() for f in _build_synth_shard.map(index=indices, build=unmapped(build))]

    # DVC owns the folder: rebuild it whole so no shard of an earlier, larger world survives; the
    # old world stays complete until the new one is swapped in.
    with atomic_folder(out) as staging:
        report = build_world(staging, config.synth, map_shards=map_over_shards,
                             progress=progress_printer("synth"))
    # Metrics are versioned by DVC: only what the data is, not how long it took.
    write_json_atomic(root / SYNTH_REPORT, {k: v for k, v in report.items() if k != "seconds"})
    print(f"[synth] {report['cells_total']} cells ({report['cells_broken']} deliberately broken), "
          f"{report['shards']} shards per source, {report['bytes'] / 1e6:.1f} MB in {report['seconds']:.1f} s -> {out}")
    return report
