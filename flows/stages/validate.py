"""`mesa stage validate`: contracts, per-cell statistics and the paper's filters."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE

from components.atomic import recover_folder
from components.layout import CURATED_DIR, CURATION_REPORT, VALIDATION_DIR
from components.params import load_config, load_params
from flows.stages.common import relative_to_project


@task(task_run_name="measure {label}", cache_policy=NO_CACHE)
def _measure_shard(label: str, cells, cloud_classes: list[int]):
    from components.curation.measure import measure_cells

    return measure_cells(cells, cloud_classes)


@flow(name="stage-validate")
def validate_stage_flow(project_dir: str) -> dict:
    """Curate the raw data: contracts, per-cell statistics (one decode pass), the paper's filters."""
    import pandas as pd

    from components.curation import curate
    from components.curation.contracts.suites import DEFAULT_CONTRACT_PARAMS, metadata_suite, stats_suite
    from components.curation.contracts.validation import build_data_docs, get_context, row_failures, validate_table
    from components.curation.filters import apply_filters
    from components.majortom.shards import drop_duplicate_cells

    root = Path(project_dir)
    config = load_config(root)
    # contract and filters as written: a key left out keeps the component's default, a null rule is off
    settings = load_params(root)["validate"]
    contract_params = {**DEFAULT_CONTRACT_PARAMS, **(settings.get("contract") or {})}
    curated = root / CURATED_DIR
    validation = root / VALIDATION_DIR
    raw_dir = root / config.data.raw_dir
    recover_folder(raw_dir)  # a synth stage killed mid-swap left only data/raw.old
    sources = curate.read_sources(raw_dir)
    context = get_context(validation)  # a file context: results and Data Docs stay inspectable
    rejects = []

    # 1. Metadata contracts, per source, after the duplicate rule.
    for source, metadata in sources.metadata.items():
        unique, _ = drop_duplicate_cells(metadata, source)
        suite = metadata_suite(source, contract_params)
        result = validate_table(unique, suite, context=context)
        result.save_json(validation / f"{source}_metadata.json")
        rejects.append(curate.contract_rejects(unique, row_failures(unique, suite), result, source))
        print(f"[validate] {source} metadata: {len(unique)} cells, contract "
              f"{'passed' if result.success else 'found per-cell failures'}", flush=True)

    # 2. Pair the sources and measure every paired cell once, a shard per task.
    pairing = curate.pair(sources)
    groups = curate.shard_groups(pairing)
    labels = [Path(g["s2l2a_shard"].iloc[0]).name for g in groups]
    results = [f.result() for f in _measure_shard.map(label=labels, cells=groups,
                                                       cloud_classes=unmapped(list(config.validate.cloud_classes)))]
    stats = pd.concat([frame for frame, _ in results], ignore_index=True)
    unreadable = curate.reader_rejects([row for _, rows in results for row in rows])
    rejects.append(unreadable)
    print(f"[validate] measured {len(stats)} cells in {len(groups)} shards; "
          f"{unreadable['grid_cell'].nunique()} could not be read", flush=True)

    # 3. The statistics contract and the filters, on the cells that could be read.
    readable = stats[~stats["grid_cell"].isin(set(unreadable["grid_cell"]))].merge(
        pairing.cells[["grid_cell", "centre_lat", "centre_lon"]], on="grid_cell")
    suite = stats_suite(contract_params)
    result = validate_table(readable, suite, context=context)
    result.save_json(validation / "cell_statistics.json")
    rejects.append(curate.contract_rejects(readable, row_failures(readable, suite), result, "stats"))
    hits = apply_filters(readable, settings["filters"])
    rejects.append(hits.assign(source="stats", detail="rule " + hits["reason"]))

    # 4. Every input cell in the index or in rejected, with its reasons.
    index, rejected = curate.assemble(pairing, stats, pd.concat(rejects, ignore_index=True))
    # Paths relative to the project: the same data gives the same bytes in any clone.
    index = curate.relative_shard_paths(index, root)
    rejected["details"] = [[relative_to_project(d, root) for d in details] for details in rejected["details"]]
    report = curate.curation_report(sources, index, rejected)
    curate.write_outputs(curated, index, rejected, report, root / CURATION_REPORT)
    docs = build_data_docs(validation)
    print(f"[validate] kept {report['kept_cells']} of {report['input_cells']} cells; rejected per reason: "
          f"{report['rejected_per_reason']} -> {curated}/index.parquet, rejected.parquet; "
          f"Data Docs: {docs}", flush=True)
    return report
