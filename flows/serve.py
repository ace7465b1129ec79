"""`mesa serve`: answer generation requests over HTTP with MLflow's own scoring server.

The registered pyfunc model (`components.tracking.pyfunc.TerrainPyfuncModel`) is loaded once, in
this process, from the project's MLflow store (or MLFLOW_TRACKING_URI), and handed to
``mlflow.pyfunc.scoring_server``: the same FastAPI app, endpoints and JSON format as
``mlflow models serve -m URI --env-manager local``. Serving it ourselves rather than shelling out
to that command buys three things: the port and the model URI are checked before anything slow
happens (with errors that say what to do), ``/health`` answers only once the model is loaded, and
generation requests run one at a time (the pipeline's scheduler keeps per-call state, so two
threads sampling at once would corrupt each other; MLflow's app runs each request in a thread).

Endpoints: ``GET /health`` (and ``/ping``), ``GET /version``, ``POST /invocations``
(``{"dataframe_records": [{"prompt": ..., "seed": ..., "steps": ..., "guidance": ...}]}``) answering
``{"predictions": [{"prompt", "seed", "rgb", "dem_m"}]}`` with nested JSON lists: ``rgb`` uint8
H x W x 3, ``dem_m`` the DEM in metres, H x W floats. docs/serving.md has the details.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Annotated, Any

import typer

DEFAULT_MODEL = "models:/mesa@champion"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
DEFAULT_TIMEOUT_S = 600

_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
_MODEL_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/", "file:", "s3:", "gs:", "wasbs:", "hdfs:", "dbfs:")


class ServeError(RuntimeError):
    """Something the user can fix before the server starts (the message says what)."""


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

    from components.tracking.runs import tracking_uri
    from flows.settings import project_root

    if timeout <= 0:
        raise ServeError(f"--timeout must be a positive number of seconds, got {timeout}")
    root = project_root(project_dir)
    uri = tracking_uri(root)
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
            raise ServeError(f"could not look up {model} in {_display_uri(uri)}: {err}") from err
        typer.echo(f"loading {what} from {_display_uri(uri)} ...", err=True)
        # 3. Load once; MLflow's app reads its request timeout from the environment in init.
        pyfunc_model = load_served_model(model, uri)
        os.environ["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] = str(int(timeout))
        from mlflow.pyfunc import scoring_server

        app = scoring_server.init(pyfunc_model)
        # 4. Serve on the socket taken in step 1.
        import uvicorn

        bound_host, bound_port = sock.getsockname()[:2]
        url = f"http://{_url_host(bound_host)}:{bound_port}"
        typer.echo(f"serving {what} on {url} (POST {url}/invocations, GET {url}/health); Ctrl-C stops", err=True)
        server = uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=10))
        with _stop_signals_end_quietly():
            server.run(sockets=[sock])
    finally:
        sock.close()
    typer.echo(f"stopped serving {what}", err=True)


def bind_socket(host: str, port: int):
    """A TCP socket listening on `host`:`port`, held while the model loads.

    Listening at once is what makes the port ours: Linux lets two SO_REUSEADDR sockets bind one
    port as long as neither listens. A request that arrives while the model loads waits in the
    backlog and is answered once the server runs, so ``/health`` never answers before the model
    is ready.

    Args:
        host (str): a name or address.
        port (int): 0..65535; 0 lets the OS choose.

    Raises:
        ServeError: the host does not resolve, or the port is in use / not allowed.
    """
    import errno
    import socket

    if not 0 <= port <= 65535:
        raise ServeError(f"--port must be between 0 and 65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise ServeError(f"--host {host!r} does not resolve ({err.strerror}): use an address such as 127.0.0.1") from err
    sock = socket.socket(family, kind, proto)
    # As uvicorn does: a restart may reuse a port whose old connections are still in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} on {host} is already in use (another `mesa serve`, `mlflow server` or "
                             "`mlflow models serve`?): stop that process, or choose another port with --port") from err
        if err.errno == errno.EACCES:
            raise ServeError(f"not allowed to listen on {host}:{port} (ports below 1024 need privileges): "
                             "choose a port above 1024 with --port") from err
        raise ServeError(f"cannot listen on {host}:{port}: {err.strerror}") from err
    return sock


def describe_model(model: str, uri: str) -> str:
    """A one-line description of what `model` names in the store at `uri`, checked up front.

    Registered aliases and versions are looked up (so a missing one is reported with what exists and
    how to create it); other MLflow URIs are left to the loader; a local path must be an MLflow
    model folder.

    Args:
        model (str): the model URI or folder.
        uri (str): the tracking URI.

    Raises:
        ServeError: the store, the registered model, the alias or the version does not exist, or a
            folder is not an MLflow model.
    """
    alias_match, version_match = _ALIAS_URI.match(model), _VERSION_URI.match(model)
    if alias_match or version_match:
        client = _client(uri)
        name = (alias_match or version_match).group("name")
        registered = _registered_model(client, name, uri)
        if alias_match:
            alias = alias_match.group("alias")
            from components.tracking.registry import get_alias_version

            version = get_alias_version(client, name, alias)
            if version is None:
                known = ", ".join(f"{a} -> v{v}" for a, v in sorted((registered.aliases or {}).items())) or "none"
                raise ServeError(
                    f"registered model {name!r} has no alias {alias!r} in {_display_uri(uri)} (its aliases: {known}). "
                    f"Promote a version first (`mesa retrain` registers, evaluates and promotes), or point the alias "
                    f"by hand: MlflowClient().set_registered_model_alias({name!r}, {alias!r}, VERSION); "
                    f"or serve a version directly with --model models:/{name}/VERSION")
            return f"{name} version {version.version} (alias {alias}, run {version.run_id})"
        number = version_match.group("version")
        from mlflow.exceptions import MlflowException

        try:
            version = client.get_model_version(name, number)
        except MlflowException as err:
            raise ServeError(f"registered model {name!r} has no version {number} in {_display_uri(uri)}: "
                             f"`mlflow models` / the MLflow UI list its versions") from err
        return f"{name} version {version.version} (run {version.run_id})"
    if model.startswith(_MODEL_SCHEMES):
        return model
    folder = Path(model)
    if (folder / "MLmodel").is_file():
        return f"the MLflow model in {folder}"
    if (folder / "model_index.json").is_file():
        raise ServeError(f"{folder} is a pipeline folder, not an MLflow model: serve it after logging and "
                         "registering it (`mesa retrain` does both), or generate from it directly with "
                         f"`mesa generate \"PROMPT\" --model {folder}`")
    raise ServeError(f"{model!r} is neither an MLflow model URI (models:/mesa@champion, models:/mesa/3, "
                     "runs:/ID/pipeline) nor a folder holding an MLmodel file")


def load_served_model(model: str, uri: str):
    """The pyfunc model `model`, loaded against the store at `uri`, whose predictions run one at a time.

    Args:
        model (str): the model URI or folder.
        uri (str): the tracking URI.

    Returns:
        mlflow.pyfunc.PyFuncModel: ready for ``mlflow.pyfunc.scoring_server.init``.

    Raises:
        ServeError: MLflow could not load it (the message carries MLflow's reason).
    """
    import functools
    import threading

    import mlflow.pyfunc

    from components.tracking.pyfunc import using_tracking_uri

    try:
        with using_tracking_uri(uri):
            loaded = mlflow.pyfunc.load_model(model)
    except Exception as err:  # MLflow raises many kinds here; all mean "this model did not load"
        raise ServeError(f"could not load {model} from {_display_uri(uri)}: {err}") from err
    lock = threading.Lock()
    predict = loaded.predict

    @functools.wraps(predict)  # keeps the `params` argument visible to the scoring server's check
    def predict_one_at_a_time(*args: Any, **kwargs: Any):
        with lock:
            return predict(*args, **kwargs)

    loaded.predict = predict_one_at_a_time
    return loaded


@contextlib.contextmanager
def _stop_signals_end_quietly():
    """Let SIGINT / SIGTERM end `mesa serve` with status 0 once uvicorn has shut down gracefully.

    uvicorn handles both signals while it serves, then raises them again for the handlers it
    found: Python's (KeyboardInterrupt, or death by SIGTERM). Do-nothing handlers installed just
    for the serving turn that replay into a normal return.
    """
    import signal

    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _client(uri: str):
    """An MlflowClient for `uri`; a SQLite store must exist already (serving never creates one)."""
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise ServeError(f"no MLflow store at {path}: train and register a model first (`mesa retrain`), or "
                             "point MLFLOW_TRACKING_URI at the store that holds it")
    return MlflowClient(uri)


def _registered_model(client, name: str, uri: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise ServeError(f"could not read registered model {name!r} from {_display_uri(uri)}: {err.message}") from err
        names = sorted(m.name for m in client.search_registered_models(max_results=20))
        raise ServeError(f"no registered model {name!r} in {_display_uri(uri)} (registered: {', '.join(names) or 'none'}). "
                         "Register one first (`mesa retrain` registers and promotes), or set MLFLOW_TRACKING_URI "
                         "to the store that holds it") from err


def _display_uri(uri: str) -> str:
    """`uri` without a password (user:secret@host -> user:***@host)."""
    return re.sub(r"(//[^:/@]+:)[^@/]+@", r"\1***@", uri)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
