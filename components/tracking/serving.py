"""What `mesa serve` checks and loads before it answers: the port, the model a URI names, the model.

Everything a user can get wrong is found before anything slow happens, and reported as a
:class:`ServeError` that says what to do: a taken port, an unknown host, a missing store, a
registered model, alias or version that does not exist, a folder that is not an MLflow model.
The loaded pyfunc answers one request at a time (the pipeline's scheduler keeps per-call state,
and MLflow's scoring app runs each request in a thread).
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.tracking.models import is_mlflow_uri
from components.tracking.server import redact

_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


class ServeError(RuntimeError):
    """Something the user can fix before the server starts (the message says what)."""


def bind_socket(host: str, port: int):
    """A TCP socket listening on `host`:`port`, held while the model loads.

    Listening at once is what makes the port ours: Linux lets two SO_REUSEADDR sockets bind one
    port as long as neither listens. A request that arrives while the model loads waits in the
    backlog and is answered once the server runs, so ``/health`` never answers before the model
    is ready.

    Args:
        host (str): a name or address.
        port (int): 0..65535; 0 lets the OS choose.

    Returns:
        socket.socket: listening; the caller closes it.

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


def url_host(host: str) -> str:
    """`host` as it goes into a URL (IPv6 addresses in brackets).

    Args:
        host (str): an address such as ``127.0.0.1`` or ``::1``.
    """
    return f"[{host}]" if ":" in host else host


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
        client = registry_client(uri)
        name = (alias_match or version_match).group("name")
        registered = registered_model(client, name, uri)
        if alias_match:
            return _describe_alias(client, registered, alias_match.group("alias"), uri)
        return _describe_version(client, name, version_match.group("version"), uri)
    if is_mlflow_uri(model):
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


def _describe_alias(client: Any, registered: Any, alias: str, uri: str) -> str:
    from components.tracking.registry import get_alias_version

    name = registered.name
    version = get_alias_version(client, name, alias)
    if version is None:
        known = ", ".join(f"{a} -> v{v}" for a, v in sorted((registered.aliases or {}).items())) or "none"
        raise ServeError(
            f"registered model {name!r} has no alias {alias!r} in {redact(uri)} (its aliases: {known}). "
            f"Promote a version first (`mesa retrain` registers, evaluates and promotes), or point the alias "
            f"by hand: MlflowClient().set_registered_model_alias({name!r}, {alias!r}, VERSION); "
            f"or serve a version directly with --model models:/{name}/VERSION")
    return f"{name} version {version.version} (alias {alias}, run {version.run_id})"


def _describe_version(client: Any, name: str, number: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version(name, number)
    except MlflowException as err:
        raise ServeError(f"registered model {name!r} has no version {number} in {redact(uri)}: "
                         f"`mlflow models` / the MLflow UI list its versions") from err
    return f"{name} version {version.version} (run {version.run_id})"


def registry_client(uri: str):
    """The project's MLflow client on `uri`; a SQLite store must exist already (serving never creates one).

    Args:
        uri (str): the tracking URI.

    Raises:
        ServeError: `uri` names a SQLite file that does not exist.
    """
    from components.tracking.store import mlflow_client

    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise ServeError(f"no MLflow store at {path}: train and register a model first (`mesa retrain`), or "
                             "point MLFLOW_TRACKING_URI at the store that holds it")
    return mlflow_client(uri=uri)


def registered_model(client: Any, name: str, uri: str):
    """The registered model `name`, or a ServeError naming the models the store does have.

    Args:
        client (mlflow.MlflowClient): a client on `uri`.
        name (str): the registered model's name.
        uri (str): the tracking URI (for messages; its password is hidden).
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise ServeError(f"could not read registered model {name!r} from {redact(uri)}: {err.message}") from err
        names = sorted(m.name for m in client.search_registered_models(max_results=20))
        raise ServeError(f"no registered model {name!r} in {redact(uri)} (registered: {', '.join(names) or 'none'}). "
                         "Register one first (`mesa retrain` registers and promotes), or set MLFLOW_TRACKING_URI "
                         "to the store that holds it") from err


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
        raise ServeError(f"could not load {model} from {redact(uri)}: {err}") from err
    lock = threading.Lock()
    predict = loaded.predict

    @functools.wraps(predict)  # keeps the `params` argument visible to the scoring server's check
    def predict_one_at_a_time(*args: Any, **kwargs: Any):
        with lock:
            return predict(*args, **kwargs)

    loaded.predict = predict_one_at_a_time
    return loaded


@contextlib.contextmanager
def stop_signals_end_quietly() -> Iterator[None]:
    """Let SIGINT / SIGTERM end a uvicorn server with status 0 once it has shut down gracefully.

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
