"""Run the intake as a Prefect deployment: on an interval, and at once on a partition event."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from prefect.events import DeploymentEventTrigger, emit_event
from prefect.settings import PREFECT_API_URL, temporary_settings

from dataassess.config import Settings
from dataassess.pipeline import pool_name
from dataassess.store import Store

from .intake import intake

EVENT = "dataassess.partition.created"


def corpus_resource(corpus_root: str) -> str:
    return f"dataassess.corpus.{pool_name(corpus_root)}"


def wait_until_healthy(health_url: str, proc: subprocess.Popen, timeout_s: float, what: str) -> None:
    """Poll a server's health URL until it answers; raise if it exits or the time runs out."""
    deadline = time.time() + timeout_s
    while True:
        try:
            urllib.request.urlopen(health_url, timeout=2)
            return
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not start within {timeout_s:.0f} s") from None
            time.sleep(0.5)


def stop_process_group(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM a server started in its own session, and SIGKILL its whole group if it has not ended in time."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def prefect_server(store: Store, timeout_s: float = 120, announce: bool = True):
    """A local Prefect server on 127.0.0.1 unless PREFECT_API_URL names one. The ephemeral
    server runs no scheduler or triggers service, so schedules and events need a real one.
    announce: record its URL in the store, where `add-partition` finds the server to notify."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "PREFECT_UI_API_URL": url},  # the UI it serves talks to this server, not one on port 4200
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until_healthy(f"{url}/health", proc, timeout_s, "the local Prefect server")
        os.environ["PREFECT_API_URL"] = url  # for the flow-run processes the runner starts
        store.root.mkdir(parents=True, exist_ok=True)
        if announce:
            store.prefect_api_file().write_text(url)
        with temporary_settings(
            updates={PREFECT_API_URL: url}
        ):  # this process read its settings when Prefect was imported
            yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        if announce:
            store.prefect_api_file().unlink(missing_ok=True)
        stop_process_group(proc)


def drain_to_server(timeout_s: float = 10) -> None:
    """Send the log lines and events this process still has queued for the Prefect server, before it
    stops; bounded, in a thread of its own, so that a stuck queue cannot hold the command."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    def drain() -> None:
        for worker in (APILogWorker, EventsWorker):
            try:
                worker.drain_all(timeout=timeout_s / 2)
            except Exception:  # nothing queued, or the server is gone: nothing to keep then
                pass

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    thread.join(timeout_s)


def serve(corpus_root: str, settings: Settings, interval_s: float, eval_sets: str | None = None) -> None:
    """Blocks: serves the intake deployment until interrupted."""
    params = {
        "corpus_root": str(Path(corpus_root).resolve()),
        "config": settings.model_dump(mode="json"),
        "eval_sets": eval_sets,
        "pool": pool_name(corpus_root),
    }
    trigger = DeploymentEventTrigger(
        expect={EVENT},
        match={"prefect.resource.id": corpus_resource(corpus_root)},
        parameters=params,
    )
    # limit=1: one intake at a time; a run that falls due meanwhile waits, then finds little to do
    intake.serve(
        name=f"intake-{pool_name(corpus_root)}", interval=interval_s, parameters=params, triggers=[trigger], limit=1
    )


def announce_partition(store: Store, corpus_root: str, partition: str, digest: str) -> bool:
    """Emit the event that triggers the served deployment; False when nothing serves this store."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        recorded = store.prefect_api_file()
        if not recorded.exists():
            return False
        url = recorded.read_text().strip()
    with temporary_settings(updates={PREFECT_API_URL: url}):
        emit_event(
            event=EVENT,
            resource={"prefect.resource.id": corpus_resource(corpus_root), "dataassess.partition": partition},
            payload={"corpus_root": str(Path(corpus_root).resolve()), "partition": partition, "digest": digest},
        )
    return True
