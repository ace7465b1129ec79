"""`mesa stage ingest`: a filtered subset of real Major TOM, fetched into data.ingest.out_dir.

The head of the DAG is synth or ingest, by params: `data.source: ingest` (with data.raw_dir set
to data.ingest.out_dir, so later stages read what this stage wrote). With any other source the
stage writes only a note (as synth does for real data), so `make demo` stays offline and cheap.
The out folder is a persistent DVC out: DVC does not delete it before a run, which is what lets
a rerun fetch only what is missing or failed.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from components.atomic import write_json_atomic, write_text_atomic
from components.layout import INGEST_REPORT
from components.params import load_config
from flows.stages.common import relative_to_project

NOTE_FILE = "SOURCE.txt"


@flow(name="stage-ingest")
def ingest_stage_flow(project_dir: str) -> dict:
    """Fetch the subset params `data.ingest` describes (or leave a note when data.source is not ingest)."""
    from components.majortom.ingest import failure_verdict, run_ingest, summary_line

    root = Path(project_dir)
    # The params check (components/config/data.py) keeps out_dir out of data/raw and, with
    # source ingest, makes raw_dir out_dir.
    data = load_config(root).data
    source, config = data.source, data.ingest
    out_dir = Path(config.out_dir)
    out = root / out_dir
    if source != "ingest":
        # Earlier ingested shards stay (a persistent out): switching back to ingest costs nothing.
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / NOTE_FILE, f"data.source is {source}: the ingest stage fetched nothing. Set "
                                           f"data.source: ingest and data.raw_dir: {out_dir} to ingest Major TOM.\n")
        write_json_atomic(root / INGEST_REPORT, {"source": source, "ingested": False})
        print(f"[ingest] data.source is {source}: nothing to fetch (note in {out_dir}/{NOTE_FILE})", flush=True)
        return {"source": source, "ingested": False}
    (out / NOTE_FILE).unlink(missing_ok=True)
    report = run_ingest(config, out, base_dir=root, progress=True)
    # Metrics are versioned by DVC: what the data is, not how long it took; no machine's paths.
    metrics = {k: v for k, v in report.items() if k != "seconds"}
    metrics["failures"] = [{**f, "error": relative_to_project(f["error"], root)} for f in metrics["failures"]]
    metrics.update(source=source, ingested=True)
    write_json_atomic(root / INGEST_REPORT, metrics)
    print(summary_line(report, out_dir) + f" in {report['seconds']:.1f} s", flush=True)
    verdict = failure_verdict(report, config.max_failed_share)
    if verdict:
        # Non-zero exit: DVC records no data version with missing cells; what arrived stays on disk.
        raise SystemExit(verdict)
    return metrics
