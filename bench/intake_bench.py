"""make bench-intake: adding one partition to a pool of n, against rebuilding all n+1 from scratch.

Both sides run the real Prefect intake (training, registration, scoring, publishing) on the
demo corpus with its fixed evaluation sets; the seed is built once beforehand and shared.

0. A warm-up intake of one partition on its own store (not timed): imports, Prefect's
   ephemeral API and MLflow start once per process, and neither side should pay for them.
1. The rebuild (timed): one intake of all n+1 partitions on an empty store.
2. The add (timed), `repeats` times, each on a fresh store holding the pool of n as earlier
   intakes leave it: the old units' models and the old mixtures' scores (copied from the
   rebuild, which made the same files), registered by an intake of the n partitions (not timed).
   The add is one unit and a few mixtures, so one run is noisy; the mean of repeats is reported.
"""
from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.runtime import configure_process  # noqa: E402

configure_process(ROOT / "bench" / ".store")  # as a command runs: offline, quiet, before Prefect is imported
from dataassess.config import Settings  # noqa: E402
from dataassess.pipeline import latest_ranking  # noqa: E402
from dataassess.seed import prepare_seed  # noqa: E402
from dataassess.steps import mixture_of  # noqa: E402
from dataassess.store import Store, read_json  # noqa: E402
from dataassess.types import UnitModel  # noqa: E402
from flows.intake import intake  # noqa: E402
from flows.runtime import embedded_prefect  # noqa: E402

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
    eval_digests = latest_ranking(rebuilt)["eval_sets"].values()
    score_config = rebuilt.score.digest()
    for k in range(1, rebuilt.rank.k_max + 1):
        for names in combinations(sorted(models), k):
            key = mixture_of(names, models, rebuilt.rank.weighting).key
            for digest in eval_digests:
                if src.score(key, digest, score_config).exists():
                    dst.score(key, digest, score_config).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src.score(key, digest, score_config), dst.score(key, digest, score_config))


def run(work: Path, repeats: int = 3) -> dict:
    prepare_seed(Settings(store=SEED_STORE), progress=False)
    parts = sorted(p for p in (DEMO / "corpus").iterdir() if p.is_dir())
    old = [p for p in parts if p.name != NEW]

    timed_intake(*fresh(work, "warm-up", old[:1]))

    corpus, rebuilt = fresh(work, "rebuild", parts)
    t_full, full = timed_intake(corpus, rebuilt)

    adds = []
    for i in range(repeats):
        corpus, pool = fresh(work, f"add-{i}", old)
        seed_pool(rebuilt, pool, {p.name for p in old})
        prepared = timed_intake(corpus, pool)[1]  # registers the pool; trains and scores nothing
        if prepared["trained"] or prepared["rescored"]:
            raise RuntimeError(f"the pool was not fully reused from the rebuild: {prepared}")
        shutil.copytree(DEMO / "corpus" / NEW, corpus / NEW)
        adds.append(timed_intake(corpus, pool))
    t_add = statistics.mean(t for t, _ in adds)
    added = adds[-1][1]
    n = len(old)
    return {
        "n": n, "ratio": t_add / t_full, "target": 1.3 / (n + 1), "t_add": t_add, "t_full": t_full,
        "t_adds": [round(t, 2) for t, _ in adds],
        "added": {k: added[k] for k in ("trained", "trained_units", "rescored", "mixtures", "seconds")},
        "full": {k: full[k] for k in ("trained", "rescored", "mixtures", "seconds")},
    }


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-intake-", dir=ROOT / "bench"))
    try:
        with embedded_prefect():
            r = run(work)
        ok = "PASS" if r["ratio"] <= r["target"] else "FAIL"
        print(f"intake: add 1 partition to n={r['n']} / rebuild n+1      {r['ratio']:.3f}  target <= {r['target']:.3f}  {ok}")
        print(f"  add: {r['t_add']:.1f} s (mean of {r['t_adds']}), trained {r['added']['trained']} unit(s) {r['added']['trained_units']}, "
              f"scored {r['added']['rescored']} of {r['added']['mixtures']} mixtures")
        print(f"  rebuild: {r['t_full']:.0f} s, trained {r['full']['trained']} units, scored {r['full']['rescored']} mixtures")
        print(f"  phases (s): add {r['added']['seconds']}, rebuild {r['full']['seconds']}")
        out = ROOT / "bench" / "results" / f"intake-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        out.write_text(json.dumps(r, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
