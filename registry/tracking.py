"""Where MLflow lives: $MLFLOW_TRACKING_URI, else an embedded sqlite store beside the data store.

Everything goes through an MlflowClient: no global tracking URI, no active run.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_RUN_NOTE

from dataassess.errors import UserError
from dataassess.store import Store

UNITS_EXPERIMENT = "dataassess-units"
RANKINGS_EXPERIMENT = "dataassess-rankings"
# the experiment type MLflow 3 shows (its sidebar still starts in the GenAI view: one click on "Model training")
ML_EXPERIMENT = {"mlflow.experimentKind": "custom_model_development"}
# The one retry layer: MLflow's own HTTP retries, bounded so a dead server fails in seconds.
HTTP_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
# MLflow's hints about pandas schemas and dataset sources do not apply to what we log.
QUIET = ".*(Inferred schema contains integer|can be interpreted in multiple ways|Add type hints).*"


class RegistryUnavailable(UserError):
    """The tracking server could not be reached; nothing was written."""


def embedded_uri(store: Store) -> str:
    return f"sqlite:///{store.mlflow_db().resolve()}"


def tracking_uri(store: Store) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or embedded_uri(store)


def connect(store: Store) -> MlflowClient:
    """A client for the configured tracking store, checked reachable (MLflow retries, bounded by HTTP_RETRIES
    unless those variables are set)."""
    uri = tracking_uri(store)
    for name, value in HTTP_RETRIES.items():
        os.environ.setdefault(name, value)
    local = uri.startswith("sqlite:")
    if local:
        store.root.mkdir(parents=True, exist_ok=True)
    try:
        with creating_tables(store) if local else nullcontext():
            client = MlflowClient(uri, uri)
            client.search_experiments(max_results=1)
    except Exception as e:  # connection errors surface as several exception types
        tries = int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) + 1
        raise RegistryUnavailable(
            f"MLflow tracking server {uri} is unreachable after {tries} tries: {type(e).__name__}: {str(e)[:200]}. "
            "Nothing was registered; start the server or unset MLFLOW_TRACKING_URI to use the embedded store."
        ) from None
    return client


@contextmanager
def creating_tables(store: Store) -> Iterator[None]:
    """One process at a time where a client may create the embedded database's tables (two at once collide)."""
    lock = FileLock(str(store.mlflow_db_lock()))
    try:
        lock.acquire()
    except OSError:  # a store this process cannot write, where it creates nothing either
        yield
        return
    try:
        yield
    finally:
        lock.release()


EXPERIMENT_NOTES = {
    RANKINGS_EXPERIMENT: "One run per intake of a pool: the ranking of its mixtures (table, plot, description "
    "with the top 5, "
    "what changed and the fidelity figures), linked to the champion model version.",
    UNITS_EXPERIMENT: "One run per unit model (training data as a dataset input, loss curve), the seed and each "
    "champion; "
    "their versions are in the Model registry.",
}


def created_or_found(create, find):
    """create(), or find() when another process created the same thing between our look and create()."""
    try:
        return create()
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return find()


def experiment_id(client: MlflowClient, name: str, store: Store) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    local = client.tracking_uri.startswith("sqlite:")
    root = store.mlflow_artifacts().resolve().as_uri()
    tags = {**ML_EXPERIMENT, MLFLOW_RUN_NOTE: EXPERIMENT_NOTES.get(name, "")}
    return created_or_found(
        lambda: client.create_experiment(name, artifact_location=f"{root}/{name}" if local else None, tags=tags),
        lambda: client.get_experiment_by_name(name).experiment_id,
    )


@contextmanager
def open_run(
    client: MlflowClient,
    experiment: str,
    store: Store,
    name: str,
    tags: dict[str, str],
    span: tuple[float, float] | None = None,
) -> Iterator[str]:
    """A run in `experiment`, ended FINISHED (or FAILED on error); yields its id.
    span: (start, end) unix seconds of the work the run records, when it happened before the run is logged."""
    start, end = (int(t * 1000) for t in span) if span else (None, None)
    run = client.create_run(experiment_id(client, experiment, store), start_time=start, run_name=name, tags=tags)
    status = "FAILED"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=QUIET)
            yield run.info.run_id
        status = "FINISHED"
    finally:
        client.set_terminated(run.info.run_id, status, end_time=end)


def dataset_input(row: dict, name: str, source: str, context: str, digest: str | None = None) -> DatasetInput:
    """A dataset described by one row, as an MLflow dataset input in a context ("training", "evaluation")."""
    import pandas as pd
    from mlflow.data import from_pandas

    dataset = from_pandas(pd.DataFrame([row]), source=source, name=name, digest=digest)._to_mlflow_entity()
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])


def log_values(client: MlflowClient, run_id: str, params: dict | None = None, metrics: dict | None = None) -> None:
    """Params and finite metrics, in batches of MLflow's size limits."""
    now = int(time.time() * 1000)
    ms = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if v == v]
    ps = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
    for i in range(0, max(len(ms), len(ps)), 100):
        client.log_batch(run_id, metrics=ms[i : i + 100], params=ps[i : i + 100])


def latest_ranking_run(client: MlflowClient, pool: str) -> str | None:
    """The id of the pool's newest ranking run, if any."""
    exp = client.get_experiment_by_name(RANKINGS_EXPERIMENT)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        f"tags.`dataassess.pool` = '{pool}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None
