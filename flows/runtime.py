"""Prefect and MLflow set up for one command of this process: offline, embedded, quiet."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dataassess.store import Store

OFFLINE = {
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # flow and task logs at INFO reach the Prefect UI's log pane; the terminal shows the command's own lines
    "PREFECT_LOGGING_LEVEL": "INFO",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
    "TOKENIZERS_PARALLELISM": "false",
    # the libraries' progress bars and info lines: commands draw their own progress
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def configure_process(store: Store, verbose: bool = False) -> None:
    """Defaults for a command's process, before Prefect is imported; any of them can be set from
    outside. Prefect's home is the store's (so a store carries its flow-run history, and
    --store moves it) unless PREFECT_API_URL names a server. Imports nothing heavy."""
    if verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "INFO")
    for name, value in OFFLINE.items():
        os.environ.setdefault(name, value)
    if not os.environ.get("PREFECT_API_URL"):
        os.environ["PREFECT_HOME"] = str(store.prefect_home().resolve())


def ensure_prefect_home() -> None:
    """Create Prefect's home before Prefect is imported (its import warns when it cannot)."""
    if os.environ.get("PREFECT_HOME"):
        Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)


@contextmanager
def embedded_prefect(settings=None, store: Store | None = None) -> Iterator[None]:
    """Within the block, flow runs on Prefect's in-process ephemeral API send no heartbeats.

    With run.task_runner = "dask" and no PREFECT_API_URL, a local Prefect server runs for the
    block instead: Dask workers are other processes, and an ephemeral API is this one's only.

    Prefect emits a flow-run heartbeat every 180 s by default, for a server that watches for
    crashed runs, and its heartbeat thread (1 s sleeps) holds each flow run up to 1 s at its
    end. An ephemeral API lives only as long as this process, so no one can read them: off
    unless an API URL names a server or PREFECT_FLOWS_HEARTBEAT_FREQUENCY (or its legacy
    name) is set.
    """
    ensure_prefect_home()
    if settings is not None and settings.run.task_runner == "dask" and not os.environ.get("PREFECT_API_URL"):
        assert store is not None, "a Dask intake without PREFECT_API_URL needs the store for its Prefect server"
        from flows.serve import drain_to_server, prefect_server

        with prefect_server(store, announce=False):
            try:
                yield
            finally:
                drain_to_server()  # the intake's last log lines reach the server before it stops
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    chosen = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")
    if get_current_settings().api.url or os.environ.get("PREFECT_API_URL"):
        yield
        return
    restarts = settings.run.api_restarts if settings is not None else 0
    with restarting_ephemeral_api(restarts):
        if any(os.environ.get(n) for n in chosen):
            yield
            return
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield


@contextmanager
def restarting_ephemeral_api(restarts: int, every_s: float = 0.5) -> Iterator[None]:
    """Within the block, Prefect's ephemeral API server (a uvicorn process Prefect starts on first use) is
    restarted on its port if it exits, up to `restarts` times. Its database is in PREFECT_HOME, so runs resume
    where they were, and Prefect's client retries a refused connection once it has connected. Past the
    bound the API stays down and the command ends in one error line (flows.cli)."""
    from prefect.server.api.server import SubprocessASGIServer

    log = logging.getLogger("dataassess")
    done = threading.Event()

    def watch() -> None:
        left = restarts
        while not done.wait(every_s):
            for server in list(SubprocessASGIServer._instances.values()):
                process = server.server_process
                if process is None or process.poll() is None or not server.running:
                    continue
                if left == 0:
                    return
                left -= 1
                log.warning(
                    "the orchestration API (Prefect's embedded server) exited with code %s; restarted it on "
                    "port %s (%d restart(s) left)",
                    process.returncode,
                    server.port,
                    left,
                )
                server.server_process = server._run_uvicorn_command()

    watcher = threading.Thread(target=watch, name="prefect-api-watchdog", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
