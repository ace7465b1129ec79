"""`mesa stage captions`: descriptors and the caption of every kept cell."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from components.atomic import write_json_atomic
from components.layout import CAPTIONS_FILE, CAPTIONS_REPORT, CURATED_INDEX
from components.params import load_params
from flows.stages.common import relative_to_project


@flow(name="stage-captions")
def captions_stage_flow(project_dir: str) -> dict:
    """Caption descriptors for every kept cell, and the full caption (all four descriptors)."""
    import pandas as pd

    from components.atomic import atomic_write
    from components.captions.builder import build_captions
    from components.captions.descriptors import describe_cells, descriptor_summary

    root = Path(project_dir)
    params = load_params(root)
    index = pd.read_parquet(root / CURATED_INDEX)
    # Layer files named relative to the project resolve against it, wherever the stage runs.
    layers = {role: ({**spec, "path": str(root / spec["path"])} if isinstance(spec, dict) and "path" in spec
                     and not Path(spec["path"]).is_absolute() else spec)
              for role, spec in (params.get("layers") or {}).items()}
    descriptors = describe_cells(index, layers, params.get("captions"))
    # The paper's template names the biome; ecoregion names come in through augmentation.
    descriptors["caption"] = build_captions(descriptors, anonymise_ecoregion=True)
    # Layer provenance goes to the metrics file (paths relative to the project), not into the data:
    # pandas would store attrs in the parquet, and absolute paths would make clones differ.
    provenance = {k: relative_to_project(str(v), root) for k, v in descriptors.attrs.get("layers", {}).items()}
    notes = [relative_to_project(n, root) for n in descriptors.attrs.get("notes", [])]
    descriptors.attrs = {}
    out = root / CAPTIONS_FILE
    atomic_write(out, lambda tmp: descriptors.to_parquet(tmp, index=False))
    report = {**descriptor_summary(descriptors), "layers": provenance, "notes": notes}
    write_json_atomic(root / CAPTIONS_REPORT, report)
    for caption in descriptors["caption"].head(3):
        print(f"[captions] e.g. {caption!r}", flush=True)
    print(f"[captions] {len(descriptors)} cells described -> {out}", flush=True)
    return {"cells": len(descriptors)}
