"""Run the intake as a Prefect deployment: on an interval, and at once on a partition event."""
from __future__ import annotations

from pathlib import Path

from prefect.events import DeploymentEventTrigger, emit_event

from dataassess.config import Settings

from .intake import intake, pool_name

EVENT = "dataassess.partition.created"


def corpus_resource(corpus_root: str) -> str:
    return f"dataassess.corpus.{pool_name(corpus_root)}"


def serve(corpus_root: str, settings: Settings, interval_s: float, eval_sets: str | None = None) -> None:
    """Blocks: serves the intake deployment until interrupted."""
    params = {"corpus_root": str(Path(corpus_root).resolve()), "config": settings.model_dump(mode="json"),
              "eval_sets": eval_sets, "pool": pool_name(corpus_root)}
    trigger = DeploymentEventTrigger(
        expect={EVENT}, match={"prefect.resource.id": corpus_resource(corpus_root)}, parameters=params,
    )
    intake.serve(name=f"intake-{pool_name(corpus_root)}", interval=interval_s, parameters=params, triggers=[trigger])


def announce_partition(corpus_root: str, partition: str, digest: str) -> None:
    """Emit the event that triggers the served deployment for this corpus."""
    emit_event(
        event=EVENT, resource={"prefect.resource.id": corpus_resource(corpus_root), "dataassess.partition": partition},
        payload={"corpus_root": str(Path(corpus_root).resolve()), "partition": partition, "digest": digest},
    )
