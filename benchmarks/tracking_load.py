"""Metric logging under concurrent clients: the team's PostgreSQL-backed MLflow server against the
embedded default (SQLite in the project folder).

Baseline: the embedded default, ``sqlite:///<project>/mlruns.db`` written directly by each client
(what `components.tracking.store.tracking_uri` gives when MLFLOW_TRACKING_URI is unset). Measured:
an `mlflow server` on a fresh PostgreSQL database (started as `mesa infra up --native` does), each
client sending through HTTP. Every client is its own process with its own run and calls
``log_batch`` with `--metrics` metrics per call, `--batches` times, all clients starting together.
Prints logged points per second for both, their ratio (server / SQLite), the p95 and p50
latency of one ``log_batch`` call, and the calls that failed (SQLite: "database is locked").

    python benchmarks/tracking_load.py [--clients 4] [--batches 40] [--metrics 50] \
        [--postgres postgresql://postgres@127.0.0.1:5432/postgres] [--server-workers 2]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flows.settings import configure_environment  # noqa: E402

configure_environment()

from components.layout import MLFLOW_DB  # noqa: E402
from components.tracking.server import (  # noqa: E402
    drop_database,
    ensure_database,
    postgres_answers,
    postgres_url,
    redact,
    start_mlflow_server,
)


def client(uri: str, run_id: str, batches: int, metrics: int, barrier, results) -> None:
    """One client process: warm up, wait for the others, then `batches` log_batch calls."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from components.tracking.store import configure_client_retries

    configure_client_retries(uri)
    mlflow_client = MlflowClient(uri)
    mlflow_client.get_run(run_id)  # connection / engine set-up outside the measurement
    barrier.wait()
    latencies, failures, started = [], 0, time.perf_counter()
    for step in range(batches):
        timestamp = int(time.time() * 1000)
        batch = [Metric(f"metric_{j}", float(step * metrics + j), timestamp, step) for j in range(metrics)]
        before = time.perf_counter()
        try:
            mlflow_client.log_batch(run_id, metrics=batch)
        except Exception as err:  # counted and reported: a locked SQLite database, a refused call
            failures += 1
            print(f"  log_batch failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}", file=sys.stderr)
        latencies.append(time.perf_counter() - before)
    results.put({"latencies": latencies, "failures": failures, "start": started, "end": time.perf_counter()})


def measure(label: str, uri: str, args) -> dict:
    """Run `args.clients` client processes against `uri`; the aggregate figures."""
    from mlflow import MlflowClient

    setup = MlflowClient(uri)
    experiment_id = setup.create_experiment(f"tracking-load-{uuid.uuid4().hex[:8]}")
    run_ids = [setup.create_run(experiment_id).info.run_id for _ in range(args.clients)]
    context = mp.get_context("spawn")  # clean processes: no MLflow state copied from this one
    barrier, results = context.Barrier(args.clients), context.Queue()
    processes = [context.Process(target=client, args=(uri, run_id, args.batches, args.metrics, barrier, results))
                 for run_id in run_ids]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=900) for _ in processes]
    for process in processes:
        process.join(60)
    latencies = sorted(x for o in outcomes for x in o["latencies"])
    failures = sum(o["failures"] for o in outcomes)
    seconds = max(o["end"] for o in outcomes) - min(o["start"] for o in outcomes)
    points = (len(latencies) - failures) * args.metrics
    # Read back: every point of every successful call is stored.
    stored = sum(len(setup.get_metric_history(run_id, "metric_0")) for run_id in run_ids)
    figures = {"label": label, "points": points, "seconds": seconds, "points_per_s": points / seconds,
               "p50_ms": 1000 * statistics.median(latencies),
               "p95_ms": 1000 * latencies[max(0, round(0.95 * len(latencies)) - 1)],  # nearest rank
               "failures": failures, "stored_steps": stored}
    print(f"{label:<28} {figures['points_per_s']:>10.0f} points/s  log_batch p50 {figures['p50_ms']:7.1f} ms"
          f"  p95 {figures['p95_ms']:7.1f} ms  failed calls {failures}  ({points} points in {seconds:.1f} s;"
          f" {stored}/{args.clients * args.batches} steps of metric_0 stored)")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent client processes")
    parser.add_argument("--batches", type=int, default=40, help="log_batch calls per client")
    parser.add_argument("--metrics", type=int, default=50, help="metrics per log_batch call (one step)")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="PostgreSQL server for the MLflow server's backend store")
    parser.add_argument("--server-workers", type=int, default=2, help="mlflow server worker processes")
    args = parser.parse_args()
    problem = postgres_answers(args.postgres)
    if problem:
        sys.exit(f"PostgreSQL at {redact(args.postgres)} does not answer ({problem}); pass --postgres")

    work = Path(tempfile.mkdtemp(prefix="mesa-tracking-load-"))
    print(f"{args.clients} clients x {args.batches} log_batch calls x {args.metrics} metrics; work folder {work}")
    (work / "project").mkdir()
    baseline = measure("sqlite (embedded default)", f"sqlite:///{work / 'project' / MLFLOW_DB}", args)

    database = f"mesa_bench_{uuid.uuid4().hex[:10]}"
    ensure_database(args.postgres, database)
    server = start_mlflow_server(postgres_url(args.postgres, database, driver="psycopg2"), work / "mlartifacts",
                                 workers=args.server_workers, log_path=work / "mlflow-server.log")
    try:
        server.wait_healthy(240)
        team = measure(f"server on postgresql ({args.server_workers}w)", server.url, args)
    finally:
        server.stop()
        drop_database(args.postgres, database)

    print(f"ratio server/sqlite: {team['points_per_s'] / baseline['points_per_s']:.2f}x points per second; "
          f"p95 log_batch {team['p95_ms']:.1f} ms vs {baseline['p95_ms']:.1f} ms")


if __name__ == "__main__":
    main()
