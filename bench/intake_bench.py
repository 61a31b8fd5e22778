"""make bench-intake: adding one partition to a pool of n, against rebuilding all n+1 from scratch.

Both sides run the real Prefect intake (training, registration, scoring, publishing) on the
demo corpus with its fixed evaluation sets; the seed is built once beforehand and shared.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataassess.config import Settings  # noqa: E402
from dataassess.seed import prepare_seed  # noqa: E402
from flows.intake import intake  # noqa: E402

DEMO = ROOT / "dataassess" / "data" / "demo"
NEW = "satire"


SEED_STORE = ROOT / "bench" / ".store"  # kept between runs: the seed is built once


def run(work: Path) -> dict:
    """Time both sides under `work`; both start from the same prebuilt seed."""
    seed_store = SEED_STORE
    prepare_seed(Settings(store=seed_store), progress=False)
    parts = sorted(p for p in (DEMO / "corpus").iterdir() if p.is_dir())
    old = [p for p in parts if p.name != NEW]

    def fresh(name: str, partitions) -> tuple[Path, dict]:
        store, corpus = work / name / "store", work / name / "corpus"
        (store / "seeds").mkdir(parents=True)
        for d in (seed_store / "seeds").iterdir():
            (store / "seeds" / d.name).symlink_to(d)
        for p in partitions:
            shutil.copytree(p, corpus / p.name)
        return corpus, Settings(store=store).model_dump(mode="json")

    corpus, cfg = fresh("incremental", old)
    intake(str(corpus), cfg, str(DEMO / "eval"), "bench")  # the pool of n, not timed
    shutil.copytree(DEMO / "corpus" / NEW, corpus / NEW)
    start = time.perf_counter()
    added = intake(str(corpus), cfg, str(DEMO / "eval"), "bench")
    t_add = time.perf_counter() - start

    corpus, cfg = fresh("rebuild", parts)
    start = time.perf_counter()
    full = intake(str(corpus), cfg, str(DEMO / "eval"), "bench")
    t_full = time.perf_counter() - start
    n = len(old)
    return {
        "n": n, "ratio": t_add / t_full, "target": 1.3 / (n + 1), "t_add": t_add, "t_full": t_full,
        "added": {k: added[k] for k in ("trained", "trained_units", "rescored", "mixtures", "seconds")},
        "full": {k: full[k] for k in ("trained", "rescored", "mixtures", "seconds")},
    }


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-intake-", dir=ROOT / "bench"))
    try:
        r = run(work)
        ok = "PASS" if r["ratio"] <= r["target"] else "FAIL"
        print(f"intake: add 1 partition to n={r['n']} / rebuild n+1      {r['ratio']:.3f}  target <= {r['target']:.3f}  {ok}")
        print(f"  add: {r['t_add']:.0f} s, trained {r['added']['trained']} unit(s) {r['added']['trained_units']}, "
              f"scored {r['added']['rescored']} of {r['added']['mixtures']} mixtures")
        print(f"  rebuild: {r['t_full']:.0f} s, trained {r['full']['trained']} units, scored {r['full']['rescored']} mixtures")
        print(f"  phases (s): add {r['added']['seconds']}, rebuild {r['full']['seconds']}")
        out = ROOT / "bench" / "results" / f"intake-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        out.write_text(json.dumps(r, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
