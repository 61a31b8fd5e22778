"""Where MLflow lives: $MLFLOW_TRACKING_URI, else an embedded sqlite store beside the data store."""
from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
# bounded retries: a dead server fails in seconds, not minutes
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

import logging  # noqa: E402
import warnings  # noqa: E402

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

# MLflow's hints about pandas schemas and dataset sources do not apply to what we log.
warnings.filterwarnings("ignore", message=".*(Inferred schema contains integer|can be interpreted in multiple ways|Add type hints).*")
logging.getLogger("mlflow").setLevel(logging.WARNING)

UNITS_EXPERIMENT = "dataassess-units"
RANKINGS_EXPERIMENT = "dataassess-rankings"


class RegistryUnavailable(RuntimeError):
    """The tracking server could not be reached; nothing was written."""


def embedded_uri(store: Path) -> str:
    return f"sqlite:///{(Path(store) / 'mlflow.db').resolve()}"


def artifact_root(store: Path) -> str:
    return (Path(store) / "mlartifacts").resolve().as_uri()


def tracking_uri(store: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or embedded_uri(store)


def connect(store: Path, attempts: int = 3, wait_s: float = 1.0) -> MlflowClient:
    """A client for the configured tracking store, checked reachable with bounded retries."""
    uri = tracking_uri(store)
    if uri.startswith("sqlite:"):
        Path(store).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            client.search_experiments(max_results=1)
            return client
        except Exception as e:  # connection errors surface as several exception types
            last = e
            time.sleep(wait_s * (attempt + 1))
    raise RegistryUnavailable(
        f"MLflow tracking server {uri} is unreachable after {attempts} tries: {type(last).__name__}: {str(last)[:200]}. "
        "Nothing was registered; start the server or unset MLFLOW_TRACKING_URI to use the embedded store."
    )


def experiment_id(client: MlflowClient, name: str, store: Path) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    local = client.tracking_uri.startswith("sqlite:")
    return client.create_experiment(name, artifact_location=f"{artifact_root(store)}/{name}" if local else None)
