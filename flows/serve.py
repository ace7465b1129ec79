"""`mesa serve`: answer generation requests over HTTP with MLflow's own scoring server.

The registered pyfunc model (`components.tracking.pyfunc.TerrainPyfuncModel`) is loaded once, in
this process, from the project's MLflow store (or MLFLOW_TRACKING_URI), and handed to
``mlflow.pyfunc.scoring_server``: the same FastAPI app, endpoints and JSON format as
``mlflow models serve -m URI --env-manager local``. Serving it ourselves rather than shelling out
to that command buys three things: the port and the model URI are checked before anything slow
happens (with errors that say what to do), ``/health`` answers only once the model is loaded, and
generation requests run one at a time (:mod:`components.tracking.serving` has the checks).

Endpoints: ``GET /health`` (and ``/ping``), ``GET /version``, ``POST /invocations``
(``{"dataframe_records": [{"prompt": ..., "seed": ..., "steps": ..., "guidance": ...}]}``) answering
``{"predictions": [{"prompt", "seed", "rgb", "dem_m"}]}`` with nested JSON lists: ``rgb`` uint8
H x W x 3, ``dem_m`` the DEM in metres, H x W floats; a row with ``"format": "compact"`` gets a
base64 PNG and float32 ``.npy`` instead (``rgb_png``, ``dem_npy``). docs/serving.md has the details.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DEFAULT_MODEL = "models:/mesa@champion"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
DEFAULT_TIMEOUT_S = 600


def serve_command(
    model: Annotated[str, typer.Option(
        help="What to serve: a registered model alias (models:/mesa@champion), a version (models:/mesa/3), "
             "a logged model (models:/m-...), runs:/ID/pipeline, or a local MLflow model folder.")] = DEFAULT_MODEL,
    host: Annotated[str, typer.Option(
        help="Interface to listen on. The default is loopback only; anything else serves without "
             "authentication or TLS, so put a reverse proxy in front (docs/serving.md).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free port, printed at start).")] = 5001,
    timeout: Annotated[int, typer.Option(
        help="Seconds one request may take before the server answers 504 (a 50-step generation of a "
             "large model on CPU takes minutes).")] = DEFAULT_TIMEOUT_S,
) -> None:
    """Serve text-to-terrain generation over HTTP: POST a caption, get the RGB and the DEM in metres.

    MLflow's scoring server protocol (POST /invocations, GET /health); see docs/serving.md.
    """
    from components.tracking.serving import ServeError

    try:
        serve(model=model, host=host, port=port, timeout=timeout)
    except ServeError as err:
        typer.echo(f"mesa serve: {err}", err=True)
        raise typer.Exit(code=1) from None


def serve(model: str = DEFAULT_MODEL, host: str = "127.0.0.1", port: int = 5001,
          timeout: int = DEFAULT_TIMEOUT_S, project_dir: str | Path | None = None) -> None:
    """Load `model` and answer requests on `host`:`port` until SIGINT / SIGTERM.

    Args:
        model (str, default "models:/mesa@champion"): an MLflow model URI or a local MLflow model folder.
        host (str, default "127.0.0.1"): the interface to bind.
        port (int, default 5001): the TCP port; 0 lets the OS choose.
        timeout (int, default 600): seconds per request before a 504.
        project_dir (str | Path | None, default None): the project whose MLflow store URIs resolve
            against (default: found upwards from the working directory); MLFLOW_TRACKING_URI wins.

    Raises:
        ServeError: the port is taken, the host unknown, the store missing, or the model not found.
    """
    import os

    from components.tracking.store import tracking_uri
    from components.tracking.server import redact
    from components.tracking.serving import (ServeError, bind_socket, describe_model, load_served_model,
                                             stop_signals_end_quietly, url_host)
    from flows.settings import project_root

    if timeout <= 0:
        raise ServeError(f"--timeout must be a positive number of seconds, got {timeout}")
    uri = tracking_uri(project_root(project_dir))
    # 1. Take the port first: a clash is reported before seconds of model loading, and nothing
    #    can grab the port between the check and the server start (see bind_socket).
    sock = bind_socket(host, port)
    try:
        # 2. Say which model the URI means, or why there is none.
        if host not in LOOPBACK_HOSTS:
            typer.echo(f"WARNING: listening on {host}, not loopback: anyone who reaches this machine can "
                       "generate, without authentication or TLS. Put a reverse proxy with both in front "
                       "(docs/serving.md).", err=True)
        try:
            what = describe_model(model, uri)
        except ServeError:
            raise
        except Exception as err:  # e.g. a team tracking server that does not answer
            raise ServeError(f"could not look up {model} in {redact(uri)}: {err}") from err
        typer.echo(f"loading {what} from {redact(uri)} ...", err=True)
        # 3. Load once; MLflow's app reads its request timeout from the environment in init.
        pyfunc_model = load_served_model(model, uri)
        os.environ["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] = str(int(timeout))
        from mlflow.pyfunc import scoring_server

        app = scoring_server.init(pyfunc_model)
        # 4. Serve on the socket taken in step 1.
        import uvicorn

        bound_host, bound_port = sock.getsockname()[:2]
        url = f"http://{url_host(bound_host)}:{bound_port}"
        typer.echo(f"serving {what} on {url} (POST {url}/invocations, GET {url}/health); Ctrl-C stops", err=True)
        server = uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=10))
        with stop_signals_end_quietly():
            server.run(sockets=[sock])
    finally:
        sock.close()
    typer.echo(f"stopped serving {what}", err=True)
