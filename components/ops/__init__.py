"""Operating the project's servers and processes, without Prefect or MLflow imports.

Modules:

- ``health``: :func:`health_problem` and :func:`wait_until_healthy` (the one place that polls a
  health endpoint), :func:`port_in_use`.
- ``infra``: `mesa infra up / down / status`: the team's MLflow and Prefect servers on PostgreSQL,
  started as local processes and recorded in a state file.
- ``deployments``: what `mesa deploy` registers (one spec per flow, from params.yaml ``deploy``)
  and the Prefect server it registers them on (configured, already running, or started here).
"""
