"""The intake flow: a pool prepared and run (its work items as Prefect tasks), then the MLflow publication
and the weight search.

Orchestration only: the sequence is dataassess.pipeline's, the MLflow side registry's. Every
step is cached in the store, so a killed intake is resumed by the next one, and a store-wide
lock makes two intakes started together do the work once.

The work items (unit trainings, mixture scorings) run on the flow's task runner: one at a time
in this process (run.task_runner = "thread"), or as remote tasks on Dask workers ("dask"), which
receive units and mixtures (paths and digests) and read and write the shared store.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from contextlib import contextmanager
from datetime import datetime

from filelock import FileLock, Timeout
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.settings import get_current_settings
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from tqdm.auto import tqdm

from dataassess import pipeline
from dataassess.config import Settings
from dataassess.errors import UserError
from dataassess.optimize import optimize
from dataassess.progress import progress_bar
from dataassess.store import Store
from registry.optimize import log_optimization
from registry.publish import publish_ranking, register_models
from registry.tracking import connect

_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@contextmanager
def store_lock(store: Store, on_wait=lambda: None):
    """One intake per store at a time: across processes (file lock) and threads (filelock
    does not block a second thread of the same process). on_wait() is called once when the
    lock is held by another intake, before waiting for it."""
    path = str(store.lock().resolve())
    store.root.mkdir(parents=True, exist_ok=True)
    with _thread_locks_guard:
        lock = _thread_locks.setdefault(path, threading.Lock())
    file_lock = FileLock(path)
    waited = not lock.acquire(blocking=False)
    if waited:
        on_wait()
        lock.acquire()
    try:
        try:
            file_lock.acquire(timeout=0)
        except Timeout:
            if not waited:
                on_wait()
            file_lock.acquire()
        try:
            yield
        finally:
            file_lock.release()
    finally:
        lock.release()


def task_map(progress: bool = False, groups: dict[str, int] | None = None) -> pipeline.MapFn:
    """pipeline.MapFn over Prefect tasks: one task run per item, named after it; a progress bar when asked.

    groups: for remote workers, a step's items go in at most this many task runs (a short
    scoring is not worth a remote task's round trip); e.g. {"score": 16}.
    """

    def map_fn(name, fn, items, label):
        n = (groups or {}).get(name)
        grouped = n is not None and len(items) > n
        if not grouped:
            step = task(fn, name=name, cache_policy=NO_CACHE)
            futures = [step.with_options(task_run_name=f"{name} {label(item)}").submit(item) for item in items]
            sizes = [1] * len(futures)
        else:
            step = task(lambda group: [fn(x) for x in group], name=name, cache_policy=NO_CACHE)
            chunks = [list(items[i::n]) for i in range(n)]  # strided, so that each holds a share of every size
            futures = [
                step.with_options(task_run_name=f"{name} {len(c)} items from {label(c[0])}").submit(c) for c in chunks
            ]
            sizes = [len(c) for c in chunks]
        results = []
        with progress_bar(total=len(items), desc=name, disable=not progress or not items) as bar:
            for future, size in zip(futures, sizes):
                results.append(future.result())
                bar.update(size)
        if not grouped:
            return results
        out: list = [None] * len(items)
        for i, chunk_results in enumerate(results):
            out[i::n] = chunk_results
        return out

    return map_fn


def task_runner_for(settings: Settings) -> TaskRunner:
    """The task runner run.task_runner names: Dask at run.dask_address, else a local cluster of
    run.dask_workers single-threaded processes on 127.0.0.1."""
    if settings.run.task_runner == "thread":
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    if settings.run.dask_address:
        return DaskTaskRunner(address=settings.run.dask_address)
    return DaskTaskRunner(cluster_kwargs=local_cluster_kwargs(settings.run.dask_workers))


def local_cluster_kwargs(workers: int) -> dict:
    """A distributed.LocalCluster of single-threaded worker processes; it and its HTTP port (a free one) on
    127.0.0.1."""
    return {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0",
    }


def _on_dask() -> bool:
    runner = FlowRunContext.get().task_runner
    return type(runner).__name__ == "DaskTaskRunner"


def _import_steps() -> None:
    import dataassess.steps  # noqa: F401  (torch and transformers: seconds on a fresh worker)


def warm_dask_workers(settings: Settings) -> int:
    """Start the flow's Dask cluster (or connect to it) and import the steps on every worker; returns the worker
    count."""
    client = FlowRunContext.get().task_runner.client
    if not settings.run.dask_address:
        client.wait_for_workers(settings.run.dask_workers, timeout=300)
    client.run(_import_steps)
    return len(client.scheduler_info()["workers"])


def run_name() -> str:
    """Flow runs are named by pool and time, e.g. `intake demo 2026-12-01 22:50:03`."""
    params = flow_run.parameters
    pool = params.get("pool") or pipeline.pool_name(params["corpus_root"])
    return f"intake {pool} {datetime.now():%Y-%m-%d %H:%M:%S}"


@task(name="register", cache_policy=NO_CACHE)
def register(result: pipeline.RunResult) -> tuple[dict[str, str], list[str]]:
    return register_models(connect(result.pool.store), result)


@task(name="publish", cache_policy=NO_CACHE)
def publish(result: pipeline.RunResult, versions: dict[str, str], summary: dict) -> dict:
    return publish_ranking(connect(result.pool.store), result, versions, summary)


@task(name="optimize weights", cache_policy=NO_CACHE)
def optimize_weights(result: pipeline.RunResult, ranking_run_id: str, progress: bool) -> dict:
    """Re-optimize the pool's mixture weights (warm-started), then log them beside the ranking run. A pool of one
    partition has no weights to choose, and bounds or an objective that do not fit it leave the ranking standing:
    both are skipped, and said so."""
    pool = dataclasses.replace(result.pool, map_fn=pipeline.serial_map(progress))  # proxies are not worth a task each
    partitions = {m.partition for m in pool.models.values()}
    if len(partitions) < 2:
        return {"skipped": f"one partition ({', '.join(partitions)}): no weights to choose"}
    try:
        found = optimize(pool, result.ranking)
    except UserError as e:
        return {"skipped": str(e)}
    run_id = log_optimization(connect(pool.store), pool.store, pool.name, found.report, found.cv, ranking_run_id)
    return {
        "weights": found.report["weights"],
        "change": found.report.get("change"),
        "optimize_run_id": run_id,
        "surrogate_spearman": found.report["surrogate"]["spearman"],
        "scored": found.report["counts"]["scored"],
    }


@flow(
    name="dataassess-intake", flow_run_name=run_name, task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True
)
def intake(
    corpus_root: str,
    config: dict | None = None,
    eval_sets: str | None = None,
    pool: str | None = None,
    progress: bool = False,
    refresh_eval: bool = False,
) -> dict:
    """One intake of a corpus root: trains only new or changed units and publishes a fresh ranking.

    eval_sets: a folder with one subfolder per evaluation set; by default the held-out
    documents, pinned at the pool's first intake (refresh_eval=True re-pins them).
    """
    settings = Settings.model_validate(config or {})
    if settings.run.task_runner == "dask" and not _on_dask():
        if not get_current_settings().api.url:  # else each Dask worker would start its own Prefect server
            raise UserError(
                "run.task_runner = 'dask' needs a Prefect server for its workers to report to: set PREFECT_API_URL"
            )
        remote = {**settings.model_dump(mode="json"), "store": str(settings.store.resolve())}  # one path everywhere
        return intake.with_options(task_runner=task_runner_for(settings))(
            corpus_root, remote, eval_sets, pool, progress, refresh_eval
        )
    logger = get_run_logger()
    store = Store(settings.store)
    connect(store)  # a tracking server that is down should not cost a training run
    groups = None
    if _on_dask():
        workers = warm_dask_workers(settings)
        logger.info("work items on %d Dask workers", workers)
        groups = {"score": 4 * workers}

    def waiting() -> None:
        message = f"another intake is running on the store {store.root}: waiting for it to finish"
        logger.warning(message)
        if progress:  # on a terminal, not only in the flow run's log
            tqdm.write(message, file=sys.stderr)

    with store_lock(store, waiting):
        timings: dict[str, float] = {}
        with pipeline.phase(timings, "discover"):
            prepared = pipeline.prepare(
                store, corpus_root, settings, eval_sets, pool, refresh_eval, task_map(progress, groups), progress
            )
        with prepared:
            prepared.timings.update(timings)
            result = pipeline.run(prepared)
            summary, published, weights = _publish(result, settings, logger, progress)
    logger.info("intake %s: %s", prepared.name, summary)
    return {
        **summary,
        "trained_units": result.trained,
        "quarantined_partitions": prepared.quarantined,
        **published,
        "pool": prepared.name,
        "seconds": result.timings,
        "weights": weights,
    }


def _publish(result: pipeline.RunResult, settings: Settings, logger, progress: bool) -> tuple[dict, dict, dict | None]:
    """Log what the run did, register its models, publish its ranking and re-optimize the weights."""
    for msg in result.pool.quarantined:
        logger.warning("quarantined: %s", msg)
    logger.info(
        "units: %d trained (%s), %d reused",
        len(result.trained),
        ", ".join(result.trained) or "none",
        len(result.reused),
    )
    logger.info(
        "mixtures: %d, %d scored now, %d reused; best %s",
        result.counts["mixtures"],
        result.counts["scored"],
        result.counts["reused"],
        " + ".join(result.ranking[0].units),
    )
    with pipeline.phase(result.timings, "register"):
        versions, registered = register(result)
    summary = {
        "trained": len(result.trained),
        "skipped": len(result.reused),
        "quarantined": len(result.pool.quarantined),
        "registered": len(registered),
        "mixtures": result.counts["mixtures"],
        "rescored": result.counts["scored"],
        "reused": result.counts["reused"],
        **({"screening": result.counts["screening"]} if "screening" in result.counts else {}),
    }
    with pipeline.phase(result.timings, "publish"):
        published = publish(result, versions, summary)
    weights = None
    if settings.optimize.on_intake:
        with pipeline.phase(result.timings, "optimize"):
            weights = optimize_weights(result, published["ranking_run_id"], progress)
    return summary, published, weights
