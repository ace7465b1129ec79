"""components.tracking.serving: what `mesa serve` checks before loading (a real socket, a real SQLite
MLflow registry; the end-to-end server is tests/integration/test_serve.py)."""
from __future__ import annotations

import pytest

from components.tracking.models import is_mlflow_uri
from components.tracking.serving import ServeError, bind_socket, describe_model, registry_client, url_host


def test_bind_socket_holds_the_port_and_explains_a_clash_or_a_bad_host():
    sock = bind_socket("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        with pytest.raises(ServeError, match=rf"port {port} on 127.0.0.1 is already in use.*--port"):
            bind_socket("127.0.0.1", port)
    finally:
        sock.close()
    with pytest.raises(ServeError, match="--port must be between 0 and 65535, got 70000"):
        bind_socket("127.0.0.1", 70000)
    with pytest.raises(ServeError, match=r"--host 'no such host\.invalid' does not resolve"):
        bind_socket("no such host.invalid", 0)
    assert url_host("::1") == "[::1]" and url_host("127.0.0.1") == "127.0.0.1"


def test_folders_and_uris_are_told_apart(tmp_path):
    assert is_mlflow_uri("models:/mesa@champion") and is_mlflow_uri("runs:/abc/pipeline") and is_mlflow_uri("s3://b/m")
    assert not is_mlflow_uri("models/pipeline")
    assert describe_model("runs:/abc/pipeline", "sqlite:///unused.db") == "runs:/abc/pipeline"
    (tmp_path / "mlflow-model").mkdir()
    (tmp_path / "mlflow-model" / "MLmodel").write_text("flavors: {}\n")
    assert describe_model(str(tmp_path / "mlflow-model"), "sqlite:///unused.db").startswith("the MLflow model in ")
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "model_index.json").write_text("{}")
    with pytest.raises(ServeError, match="is a pipeline folder, not an MLflow model.*mesa generate"):
        describe_model(str(tmp_path / "pipeline"), "sqlite:///unused.db")
    with pytest.raises(ServeError, match="neither an MLflow model URI"):
        describe_model(str(tmp_path / "nothing"), "sqlite:///unused.db")


def test_a_missing_store_is_never_created(tmp_path):
    store = tmp_path / "mlruns.db"
    with pytest.raises(ServeError, match=rf"no MLflow store at {store}"):
        registry_client(f"sqlite:///{store}")
    with pytest.raises(ServeError, match="no MLflow store"):
        describe_model("models:/mesa@champion", f"sqlite:///{store}")
    assert not store.exists()


def test_registry_lookups_name_what_exists_and_how_to_fix_it(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    (tmp_path / "model").mkdir()
    client.create_registered_model("mesa")
    version = client.create_model_version("mesa", source=str(tmp_path / "model"))
    client.set_registered_model_alias("mesa", "champion", version.version)

    assert describe_model("models:/mesa@champion", uri).startswith("mesa version 1 (alias champion, run ")
    assert describe_model("models:/mesa/1", uri).startswith("mesa version 1 (run ")
    with pytest.raises(ServeError, match=r"no alias 'production'.*its aliases: champion -> v1.*set_registered_model_alias"):
        describe_model("models:/mesa@production", uri)
    with pytest.raises(ServeError, match="has no version 7"):
        describe_model("models:/mesa/7", uri)
    with pytest.raises(ServeError, match=r"no registered model 'other' .*registered: mesa"):
        describe_model("models:/other@champion", uri)


def test_a_password_in_the_tracking_uri_never_reaches_a_message():
    from mlflow.exceptions import MlflowException

    from components.tracking.serving import registered_model

    class Refusing:
        def get_registered_model(self, name):
            raise MlflowException("permission denied", error_code="PERMISSION_DENIED")

    with pytest.raises(ServeError) as caught:
        registered_model(Refusing(), "mesa", "http://user:secret@mlflow.example:5000")
    assert "secret" not in str(caught.value) and "user:***@mlflow.example" in str(caught.value)
