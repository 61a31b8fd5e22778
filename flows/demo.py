"""The demo: two intakes of a corpus (the bundled one by default), the second adding the late partitions."""

from __future__ import annotations

import shutil
from pathlib import Path

from dataassess.config import Settings
from dataassess.errors import UserError
from dataassess.store import Store

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


def waves(source: Path, late: tuple[str, ...]) -> tuple[list[Path], list[Path]]:
    """The partitions of each wave: all but the late ones, then all."""
    if not source.is_dir():
        raise UserError(f"demo corpus {source} is not a folder of partitions")
    every = sorted(p for p in source.iterdir() if p.is_dir())
    missing = sorted(set(late) - {p.name for p in every})
    if missing:
        raise UserError(f"--late names no partition of {source}: {', '.join(missing)}")
    early = [p for p in every if p.name not in late]
    if not early or len(early) == len(every):
        raise UserError(f"the demo needs partitions in both waves: {len(every)} in {source}, {len(late)} late")
    return early, every


def run_demo(
    settings: Settings,
    store: Store,
    progress: bool = True,
    echo=print,
    source: Path = DATA / "corpus",
    eval_sets: Path | None = DATA / "eval",
    late: tuple[str, ...] = LATE_PARTITIONS,
    pool: str = "demo",
) -> list[dict]:
    from .intake import intake  # Prefect: imported once the inputs are checked

    corpus = store.demo_corpus(pool)
    cfg = settings.model_dump(mode="json")
    summaries = []
    for wave, partitions in enumerate(waves(Path(source), late), 1):
        stage(corpus, partitions)
        echo(f"\n== wave {wave}: {len(partitions)} partitions in {corpus}")
        before = registered_units(store, pool)
        summary = intake(str(corpus), cfg, str(eval_sets) if eval_sets else None, pool, progress)
        added = registered_units(store, pool) - before
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
