"""make bench-intake (bench.py --only intake): adding one partition to a pool of n, against rebuilding all n+1 from
scratch.

Both sides run the real Prefect intake (training, registration, scoring, publishing) on the
demo corpus with its fixed evaluation sets; the seed is built once beforehand and shared.

0. A warm-up intake of one partition on its own store (not timed): imports, Prefect's
   ephemeral API and MLflow start once per process, and neither side should pay for them.
1. The rebuild (timed): one intake of all n+1 partitions on an empty store.
2. The add (timed), on a fresh store holding the pool of n as earlier intakes leave it: the
   old units' models and the old mixtures' scores (copied from the rebuild just before, which
   made the same files), registered by an intake of the n partitions (not timed).
Rebuilds and adds alternate (bench.paired), so that both sides see the same load.
"""

from __future__ import annotations

import shutil
import time
from itertools import combinations
from pathlib import Path

from dataassess.config import Settings
from dataassess.merge import merge_spec
from dataassess.pipeline import latest_snapshot
from dataassess.seed import prepare_seed
from dataassess.store import Store, atomic_dir, read_json
from dataassess.types import UnitModel, mixture_of
from flows.intake import intake

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "dataassess" / "data" / "demo"
NEW = "satire"
SEED_STORE = ROOT / "bench" / ".store"  # kept between runs: the seed is built once


def fresh(work: Path, name: str, partitions) -> tuple[Path, Settings]:
    """An empty store linked to the prebuilt seed, and a corpus root with `partitions`."""
    store, corpus = work / name / "store", work / name / "corpus"
    (store / "seeds").mkdir(parents=True)
    for d in (SEED_STORE / "seeds").iterdir():
        (store / "seeds" / d.name).symlink_to(d)
    for p in partitions:
        shutil.copytree(p, corpus / p.name)
    # the ranking's incremental cost, as before weights existed: the weight search is timed by `dataassess optimize`
    return corpus, Settings(store=store, optimize={"on_intake": False})


def timed_intake(corpus: Path, s: Settings) -> tuple[float, dict]:
    start = time.perf_counter()
    summary = intake(str(corpus), s.model_dump(mode="json"), str(DEMO / "eval"), "bench")
    return time.perf_counter() - start, summary


def seed_pool(rebuilt: Settings, pool: Settings, old_partitions: set[str]) -> None:
    """Copy the rebuild's models of old units and scores of old-only mixtures into `pool`'s store."""
    src, dst = Store(rebuilt.store), Store(pool.store)
    models = {}
    for meta_path in (src.root / "models").glob("*/meta.json"):
        model = UnitModel.from_json(read_json(meta_path))
        if model.partition in old_partitions:
            shutil.copytree(src.model_dir(model.key), dst.model_dir(model.key))  # metadata holds keys, not paths
            models[model.unit] = model
    eval_digests = latest_snapshot(src).eval_sets.values()
    score_config = rebuilt.score.digest()
    for k in range(1, rebuilt.rank.k_max + 1):
        for names in combinations(sorted(models), k):
            key = mixture_of(names, models, merge_spec(rebuilt.merge.method), rebuilt.rank.weighting).key
            for digest in eval_digests:
                if src.score(key, digest, score_config).exists():
                    dst.score(key, digest, score_config).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src.score(key, digest, score_config), dst.score(key, digest, score_config))


def keep_models(rebuilt: Settings, store: Path) -> None:
    """Copy the rebuild's unit models into `store` where missing (keys are digests of their inputs: the same
    units, seed and training config give the same key, so a store may take them as its own)."""
    src, dst = Store(rebuilt.store), Store(store)
    for meta_path in (src.root / "models").glob("*/meta.json"):
        key = meta_path.parent.name
        if not dst.meta(key).exists():
            with atomic_dir(dst.model_dir(key)) as tmp:
                shutil.copytree(src.model_dir(key), tmp, dirs_exist_ok=True)


def sides(work: Path):
    """The figure's two sides for bench.paired, as callables returning seconds: a rebuild, then an add on
    the pool that rebuild leaves. Also returns each side's intake summaries and n."""
    prepare_seed(Settings(store=SEED_STORE), Store(SEED_STORE), progress=False)
    parts = sorted(p for p in (DEMO / "corpus").iterdir() if p.is_dir())
    old = [p for p in parts if p.name != NEW]
    timed_intake(*fresh(work, "warm-up", old[:1]))
    runs: dict[str, list] = {"rebuilt": [], "added": []}

    def rebuild() -> float:
        corpus, s = fresh(work, f"rebuild-{len(runs['rebuilt'])}", parts)
        elapsed, summary = timed_intake(corpus, s)
        runs["rebuilt"].append((s, summary))
        return elapsed

    def add() -> float:
        corpus, pool = fresh(work, f"add-{len(runs['added'])}", old)
        seed_pool(runs["rebuilt"][-1][0], pool, {p.name for p in old})
        prepared = timed_intake(corpus, pool)[1]  # registers the pool; trains and scores nothing
        if prepared["trained"] or prepared["rescored"]:
            raise RuntimeError(f"the pool was not fully reused from the rebuild: {prepared}")
        shutil.copytree(DEMO / "corpus" / NEW, corpus / NEW)
        elapsed, summary = timed_intake(corpus, pool)
        runs["added"].append(summary)
        return elapsed

    return rebuild, add, runs, len(old)
