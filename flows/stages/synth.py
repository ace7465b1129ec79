"""`mesa stage synth`: the synthetic Major TOM world (or a note that real shards are read elsewhere:
ingested by the ingest stage, or placed by hand)."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE

from components.atomic import atomic_folder, write_json_atomic, write_text_atomic
from components.params import load_params
from flows.stages.common import REPORTS_DIR, SYNTH_OUT


@task(task_run_name="synth shard {index}", cache_policy=NO_CACHE)
def _build_synth_shard(index: int, build) -> dict:
    return build(index)


@flow(name="stage-synth")
def synth_stage_flow(project_dir: str) -> dict:
    """Generate the synthetic Major TOM world into data/raw (a fresh folder each run)."""
    from components.majortom.synthetic.world import SynthParams, build_world

    root = Path(project_dir)
    params = load_params(root)
    synth = SynthParams(**params.get("synth", {}))
    out = root / SYNTH_OUT
    source, raw_dir = params["data"]["source"], Path(params["data"]["raw_dir"])
    if source in ("majortom", "ingest"):
        if raw_dir == SYNTH_OUT:
            raise SystemExit(f"data.source is {source} but data.raw_dir is {SYNTH_OUT}, the synth stage's own "
                             "output (DVC clears it before each run): put real shards in another folder, e.g. "
                             "data/majortom, and set data.raw_dir to it")
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "SOURCE.txt", f"data.source is {source}: stages read real shards from {raw_dir}\n")
        write_json_atomic(root / REPORTS_DIR / "synth.json", {"source": source, "raw_dir": str(raw_dir)})
        return {"source": source}
    if source != "synth" or raw_dir != SYNTH_OUT:
        raise SystemExit(f"data.source must be synth (with data.raw_dir {SYNTH_OUT}), ingest (the ingest stage "
                         f"fetches into data.ingest.out_dir) or majortom (shards you placed in data.raw_dir); "
                         f"got source={source!r}, raw_dir={str(raw_dir)!r}")
    def map_over_shards(build, indices):
        return [f.result() for f in _build_synth_shard.map(index=indices, build=unmapped(build))]

    # DVC owns the folder: rebuild it whole so no shard of an earlier, larger world survives; the
    # old world stays complete until the new one is swapped in.
    with atomic_folder(out) as staging:
        report = build_world(staging, synth, map_shards=map_over_shards,
                             progress=lambda done, total, what: print(f"[synth] {done}/{total} {what}", flush=True))
    # Metrics are versioned by DVC: only what the data is, not how long it took.
    write_json_atomic(root / REPORTS_DIR / "synth.json", {k: v for k, v in report.items() if k != "seconds"})
    print(f"[synth] {report['cells_total']} cells ({report['cells_broken']} deliberately broken), "
          f"{report['shards']} shards per source, {report['bytes'] / 1e6:.1f} MB in {report['seconds']:.1f} s -> {out}")
    return report
