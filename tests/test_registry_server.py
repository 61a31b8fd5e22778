"""The registry against a real `mlflow server` on 127.0.0.1, and against none."""

import os
import sys
import time

import pytest
from mlflow import MlflowClient

from dataassess.steps import Steps
from dataassess.store import Store
from registry import models
from registry.tracking import RegistryUnavailable, connect
from tests.conftest import free_port, local_server, prepare_pool


@pytest.fixture()
def mlflow_server(tmp_path):
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    url = f"http://127.0.0.1:{port}"
    with local_server(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
        ],
        env,
        f"{url}/health",
        90,
    ) as proc:
        yield url
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):  # no orphan left in the server's process group
        os.killpg(proc.pid, 0)


def test_register_against_a_real_mlflow_server(mlflow_server, settings, corpus, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    pool = prepare_pool(corpus, settings)
    unit_model = Steps(settings, pool.seed, Store(settings.store)).train(pool.units[0])
    weights = settings.store / "models" / unit_model.key / "model.safetensors"
    client = connect(Store(settings.store))
    seed_v = models.register_seed(client, Store(settings.store), "srv", pool.seed)
    mv, new = models.register_unit(client, Store(settings.store), "srv", unit_model, weights, pool.seed, seed_v.version)
    assert new and mv.tags["dataassess.unit_digest"] == pool.units[0].digest
    again, new_again = models.register_unit(
        client, Store(settings.store), "srv", unit_model, weights, pool.seed, seed_v.version
    )
    assert not new_again and again.version == mv.version
    remote = MlflowClient(mlflow_server, mlflow_server)
    assert remote.get_model_version_by_alias(mv.name, "current").version == mv.version
    assert not (settings.store / "mlflow.db").exists()  # nothing went to the embedded store


def test_unreachable_server_fails_clearly_and_registers_nothing(settings, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    start = time.time()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    with pytest.raises(RegistryUnavailable, match="unreachable after 2 tries"):
        connect(Store(settings.store))
    assert time.time() - start < 60, "retries are bounded"
    assert not (settings.store / "mlflow.db").exists()
