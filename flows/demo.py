"""The demo: two intakes of the bundled corpus, the second adding two partitions."""

from __future__ import annotations

import shutil
from pathlib import Path

from dataassess.config import Settings
from dataassess.store import Store

from .intake import intake

DATA = Path(__file__).resolve().parents[1] / "dataassess" / "data" / "demo"
LATE_PARTITIONS = ("drama-history", "satire")  # arrive in the second wave


def stage(corpus: Path, partitions: list[Path]) -> None:
    """Make `corpus` hold exactly these partitions (copies of the bundled ones)."""
    corpus.mkdir(parents=True, exist_ok=True)
    wanted = {p.name for p in partitions}
    for existing in corpus.iterdir():
        if existing.is_dir() and existing.name not in wanted:
            shutil.rmtree(existing)
    for p in partitions:
        if not (corpus / p.name).exists():
            shutil.copytree(p, corpus / p.name)


def run_demo(settings: Settings, store: Store, progress: bool = True, echo=print) -> list[dict]:
    corpus = store.root / "demo-corpus" / "demo"
    bundled = sorted(p for p in (DATA / "corpus").iterdir() if p.is_dir())
    early = [p for p in bundled if p.name not in LATE_PARTITIONS]
    cfg = settings.model_dump(mode="json")
    summaries = []
    for wave, partitions in ((1, early), (2, bundled)):
        stage(corpus, partitions)
        echo(f"\n== wave {wave}: {len(partitions)} partitions in {corpus}")
        before = registered_units(store, "demo")
        summary = intake(str(corpus), cfg, str(DATA / "eval"), "demo", progress)
        added = registered_units(store, "demo") - before
        if len(added) != summary["trained"]:  # every unit trained now is registered once
            echo(
                f"warning: {summary['trained']} unit(s) trained but {len(added)} new version(s) in the MLflow registry"
            )
        summaries.append(summary)
    return summaries


def registered_units(store: Store, pool: str) -> set[tuple[str, str]]:
    """(registered model, version) of every unit model of the pool, read back from MLflow."""
    from registry.tracking import connect

    return {(v.name, v.version) for v in connect(store).search_model_versions(f"name LIKE '{pool}.%'")}
