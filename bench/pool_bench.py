"""make bench-pool: a pool of 32 partitions (../shared/corpora cut by scripts/make_pool_corpus.py).

Every intake is the real Prefect intake (training, MLflow registration, scoring, publishing) in a process of its
own, so that its peak RSS is its own; the weight searches and the "alone" timings run in this process. In order:
1. intakes of 8, 16 and 31 partitions, k <= 2 (store size and peak RSS at 8 and 16);
2. a cold weight search at 31 (the start of the next warm one);
3. the 32nd partition added, k <= 2 (store size and peak RSS at 32), timed in a process that has run an intake
   before (as a long-running `dataassess serve` is), against its unit trained alone plus its 32 new mixtures
   scored alone; then the warm re-optimization at 32 against a cold search of the same pool;
4. one partition's text changed: its unit retrained, its old MLflow version superseded, its mixtures re-scored;
5. k <= 3: the 31 partitions ranked with screening, then the 32nd back with one more document (a new unit);
6. cold weight searches at 8 and 16 partitions beside the one at 32 (how the proxies needed grow);
7. on 12 partitions, k <= 3: the surrogate-guided subset search against exhaustive scoring.
Evaluation sets are cut to EVAL_TOKENS tokens each, so that the run fits its 40 minutes on 2 cores; the seed is
the bench's own tiny one. Writes bench/results/pool-<stamp>.json, docs/bench-data/pool-latest.json and
regenerates docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402  (the bench's seed, environment and figure lines)
from dataassess.config import Settings  # noqa: E402
from dataassess.seed import prepare_seed  # noqa: E402
from dataassess.store import Store  # noqa: E402

ROOT = B.ROOT
SHARED = Path(os.environ.get("SHARED", ROOT.parent / "shared" / "corpora"))
EVAL_TOKENS = 2048
POOL = "pool"
KEPT = ROOT / "docs" / "bench-data" / "pool-latest.json"
DETAILS: dict = {}


def config(store: Path, **rank) -> dict:
    return Settings(
        store=store, corpus={"eval_max_tokens": EVAL_TOKENS}, optimize={"on_intake": False}, rank=rank
    ).model_dump(mode="json")


# ---- one intake in a process of its own ------------------------------------------------


def intake_main(corpus: str, eval_sets: str, cfg: str, add: str = "") -> None:
    """(in the child) one intake; prints its wall time, summary and peak RSS as the last line. With `add` (a
    partition folder), an intake of the corpus as it is runs first (not timed), as in a long-running `dataassess
    serve`, then the partition is copied in and the intake that takes it is timed."""
    from flows.intake import intake
    from flows.runtime import embedded_prefect

    with embedded_prefect():
        if add:
            intake(corpus, json.loads(cfg), eval_sets, POOL)
            shutil.copytree(add, Path(corpus) / Path(add).name)
        start = time.perf_counter()
        summary = intake(corpus, json.loads(cfg), eval_sets, POOL)
        seconds = time.perf_counter() - start
    peak = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) * 1024
    print(json.dumps({"seconds": seconds, "summary": summary, "peak_rss": peak}, default=str))


def run_intake(label: str, corpus: Path, eval_sets: Path, store: Path, add: Path | None = None, **rank) -> dict:
    cfg = json.dumps(config(store, **rank))
    cmd = [sys.executable, __file__, "intake", str(corpus), str(eval_sets), cfg, str(add or "")]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise RuntimeError(f"intake '{label}' failed ({out.returncode})")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    s = result["summary"]
    result["store_bytes"] = store_bytes(store)
    DETAILS.setdefault("intakes", {})[label] = {
        "seconds": round(result["seconds"], 2),
        "phases": s["seconds"],
        "trained": s["trained"],
        "mixtures": s["mixtures"],
        "rescored": s["rescored"],
        "screening": s.get("screening"),
        "peak_rss": result["peak_rss"],
        "store_bytes": result["store_bytes"],
    }
    print(
        f"  intake {label}: {result['seconds']:.0f} s, trained {s['trained']}, scored {s['rescored']} of "
        f"{s['mixtures']} mixtures, peak RSS {result['peak_rss'] / 2**20:.0f} MiB, store "
        f"{result['store_bytes'] / 2**20:.0f} MiB",
        flush=True,
    )
    return result


def store_bytes(store: Path) -> int:
    """Bytes under the store (the shared seed, a link, left out)."""
    return sum(f.stat().st_size for f in store.rglob("*") if f.is_file() and not f.is_symlink())


# ---- the pool ----------------------------------------------------------------------------


def cut(work: Path) -> tuple[Path, list[str]]:
    """The 32 partitions and evaluation sets; partitions ordered round-robin over their domains, so that the
    first 8 and 16 hold every domain."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_pool_corpus

    make_pool_corpus.main(SHARED, work / "data", 180_000)
    by_domain: dict[str, list[str]] = {}
    for p in sorted((work / "data" / "corpus").iterdir()):
        by_domain.setdefault(p.name.split("-")[0], []).append(p.name)
    order = []
    while any(by_domain.values()):
        for names in by_domain.values():
            if names:
                order.append(names.pop(0))
    return work / "data", order


def place(data: Path, corpus: Path, names: list[str]) -> None:
    """The corpus root holds exactly `names` (copies of the cut's partitions)."""
    corpus.mkdir(parents=True, exist_ok=True)
    for old in corpus.iterdir():
        if old.name not in names:
            shutil.rmtree(old)
    for name in names:
        if not (corpus / name).exists():
            shutil.copytree(data / "corpus" / name, corpus / name)


def prepared(store: Path, corpus: Path, eval_sets: Path, pool: str):
    """The pool, in this process, its unit models read from the store (none trained here)."""
    from dataassess import pipeline

    s = Settings.model_validate(config(store))
    ready = pipeline.prepare(
        Store(store), corpus, s, eval_sets, pool, map_fn=pipeline.serial_map(False), progress=False
    )
    trained = pipeline.train(ready)
    if trained:
        raise RuntimeError(f"{pool}: unit models missing from the store: {trained}")
    return ready


def weight_search(store: Path, corpus: Path, eval_sets: Path, pool: str) -> dict:
    from dataassess import optimize

    with prepared(store, corpus, eval_sets, pool) as p:
        start = time.perf_counter()
        result = optimize.search(p)
        seconds = time.perf_counter() - start
        optimize.save(p, result)
    s = result.report["surrogate"]
    out = {
        "partitions": len(result.report["weights"]),
        "seconds": seconds,
        "proxies": s["n_proxies"],
        "scored": result.report["counts"]["scored"],
        "cv_spearman": s["spearman"],
        "surrogate": s["model"],
    }
    DETAILS.setdefault("weight_searches", {})[pool] = out
    print(
        f"  weight search {pool}: {seconds:.0f} s, {out['proxies']} proxies ({out['scored']} scored now), "
        f"CV Spearman {out['cv_spearman']:.3f} ({out['surrogate']})",
        flush=True,
    )
    return out


def alone(work: Path, data: Path, store: Path, eval_sets: Path, new: str, old: list[str]) -> tuple[float, float]:
    """One unit's training (a store of its own, the seed shared) and its 32 new mixtures scored (an empty score
    cache over the pool's models), each timed on its own."""
    from dataassess import pipeline

    scratch = work / "alone"
    (scratch / "store" / "seeds").mkdir(parents=True)
    for d in (store / "seeds").iterdir():
        (scratch / "store" / "seeds" / d.name).symlink_to(d.resolve())
    place(data, scratch / "corpus", [new])
    s = Settings.model_validate(config(scratch / "store"))
    with pipeline.prepare(
        Store(scratch / "store"), scratch / "corpus", s, eval_sets, "alone", map_fn=pipeline.serial_map(False)
    ) as p:
        start = time.perf_counter()
        pipeline.train(p)
        train_s = time.perf_counter() - start
    with prepared(store, work / "corpus", eval_sets, POOL) as p:
        models, sets = dict(p.models), dict(p.eval_sets)
    unit = next(u for u in models if models[u].partition == new)
    mixtures = [[unit]] + [sorted([unit, u]) for u in models if models[u].partition in old]
    score_s, _, counts = B.rank_timed(B.scoring_store(work, store), models, sets, k_max=2, mixtures=mixtures)
    if counts["scored"] != len(mixtures):
        raise RuntimeError(f"scored {counts['scored']} of {len(mixtures)} mixtures alone")
    shutil.rmtree(scratch)
    return train_s, score_s


def superseded(store: Path, unit: str) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store.resolve()}/mlflow.db")
    return {
        str(v.version): v.tags.get("dataassess.superseded_by")
        for v in client.search_model_versions(f"name = '{POOL}.{unit}'")
    }


def change_text(folder: Path, how: str) -> None:
    """A partition's text changed: its first document dropped, or a held-out one added."""
    path = folder / "docs.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[1:] if how == "drop" else lines + lines[:1]))


# ---- the figures --------------------------------------------------------------------------


def growth(name: str, values: dict[int, float]) -> None:
    """At most linear growth in the number of partitions: value(n)/n never above value(8)/8 (by 5%)."""
    base = values[8] / 8
    worst = max(values[n] / n / base for n in values)
    B.record(
        f"pool: {name} per partition, max over n / at n=8",
        worst,
        "<= 1.05",
        worst <= 1.05,
        ", ".join(f"n={n}: {v / 2**20:.0f} MiB" for n, v in sorted(values.items())),
    )


def subset_search(work: Path, store: Path, eval_sets: Path, twelve: list[str], data: Path, top: int = 5) -> None:
    corpus = work / "corpus-12"
    place(data, corpus, twelve)
    with prepared(store, corpus, eval_sets, "subsets") as p:
        models, sets = dict(p.models), dict(p.eval_sets)
    t_all, exact, counts_all = B.rank_timed(B.scoring_store(work, store), models, sets, k_max=3, max_full_scores=None)
    t_guided, guided, counts = B.rank_timed(
        B.scoring_store(work, store), models, sets, k_max=3, search="guided", max_full_scores=None
    )
    search = counts["guided_search"]
    DETAILS["subset_search"] = {"exhaustive_s": t_all, "guided_s": t_guided, **search}
    B.record(
        f"subsets n=12 k<=3 ({counts_all['scored']} mixtures): guided time / exhaustive",
        t_guided / t_all,
        "<= 0.25",
        t_guided / t_all <= 0.25,
        f"guided scored {search['scored']} in {len(search['rounds']) - 1} rounds",
    )
    want, got = [x.units for x in exact[:top]], [x.units for x in guided[:top]]
    B.record(
        f"subsets n=12 k<=3: guided top-{top} = exhaustive's",
        float(got == want),
        "= 1, same order",
        got == want,
        "same order" if got == want else f"exhaustive {want}, guided {got}",
    )


def main() -> None:
    if not SHARED.is_dir():
        sys.exit(f"error: {SHARED} not found: make bench-pool cuts its partitions from ../shared/corpora (SHARED=)")
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(dir=ROOT / "bench", prefix="tmp-pool-"))
    try:
        run_all(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - started
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report = {
        "created": stamp,
        "threads": B.torch.get_num_threads(),
        "wall_s": wall,
        "eval_tokens": EVAL_TOKENS,
        "results": B.RESULTS,
        "details": DETAILS,
    }
    out = ROOT / "bench" / "results" / f"pool-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    shutil.copy(out, KEPT)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "write_bench_doc.py")], check=True)
    print(f"wrote {out} and {KEPT.relative_to(ROOT)} ({wall / 60:.1f} min); docs/benchmarks.md regenerated")
    B.log_mlflow(out)


def run_all(work: Path) -> None:
    prepare_seed(Settings(store=B.BENCH_STORE), Store(B.BENCH_STORE), progress=False)
    data, order = cut(work)
    eval_sets, corpus, store = data / "eval", work / "corpus", work / "store"
    (store / "seeds").mkdir(parents=True)
    for d in (B.BENCH_STORE / "seeds").iterdir():
        (store / "seeds" / d.name).symlink_to(d.resolve())
    old, new, changed = order[:31], order[31], order[0]
    print(f"{'figure':<58} {'ratio':>9}  {'target':<17} detail", flush=True)

    rss, size = {}, {}
    for n in (8, 16, 31):
        with B.section(f"intake of {n}"):
            place(data, corpus, order[:n])
            r = run_intake(f"first {n}", corpus, eval_sets, store)
        if n in (8, 16):
            rss[n], size[n] = r["peak_rss"], r["store_bytes"]
    with B.section("weight search at 31"):
        weight_search(store, corpus, eval_sets, POOL)

    with B.section("add 1 to 31, k<=2"):
        added = run_intake("add 32nd, k<=2", corpus, eval_sets, store, add=data / "corpus" / new)
        rss[32], size[32] = added["peak_rss"], added["store_bytes"]
        train_s, score_s = alone(work, data, store, eval_sets, new, old)
    s = added["summary"]
    B.record(
        "pool: add 1 partition to 31, k<=2: intake / (train + score alone)",
        added["seconds"] / (train_s + score_s),
        "<= 1.3",
        added["seconds"] / (train_s + score_s) <= 1.3,
        f"intake {added['seconds']:.0f} s (in a process that ran an intake before); alone: training {train_s:.0f} s"
        f" + 32 mixtures {score_s:.0f} s",
    )
    B.record(
        "pool: add 1 partition to 31, k<=2: trained, scored",
        float(s["trained"] == 1 and s["rescored"] == 32),
        "= 1 unit, 32 mixtures",
        s["trained"] == 1 and s["rescored"] == 32,
        f"trained {s['trained_units']}, scored {s['rescored']} of {s['mixtures']}",
    )
    growth("peak RSS of an intake", rss)
    growth("store size", size)

    with B.section("weight searches at 32"):
        warm = weight_search(store, corpus, eval_sets, POOL)
        cold = weight_search(store, corpus, eval_sets, "cold-32")
    B.record(
        "pool: warm re-optimization at 32 / cold search",
        warm["seconds"] / cold["seconds"],
        "<= 0.333",
        warm["seconds"] / cold["seconds"] <= 1 / 3,
        f"warm {warm['seconds']:.0f} s, {warm['scored']} proxies scored; cold {cold['seconds']:.0f} s, "
        f"{cold['scored']} scored (the cold search ran second, reusing the warm one's cached points)",
    )

    with B.section("changed partition"):
        change_text(corpus / changed, "drop")
        r = run_intake("changed text", corpus, eval_sets, store)
    s, unit = r["summary"], f"{changed}.u0"
    versions = superseded(store, unit)
    ok = s["trained_units"] == [unit] and s["rescored"] == 32 and versions == {"1": "2", "2": None}
    B.record(
        "pool: changed partition: retrained, re-scored, superseded",
        float(ok),
        "= 1 unit, 32, v1 -> v2",
        ok,
        f"trained {s['trained_units']}, scored {s['rescored']} of {s['mixtures']}; MLflow versions of {unit} "
        f"superseded_by {versions}",
    )

    with B.section("k<=3 with screening"):
        place(data, corpus, old)
        run_intake("31, k<=3", corpus, eval_sets, store, k_max=3)
        place(data, corpus, order)
        change_text(corpus / new, "repeat")
        r = run_intake("add 32nd, k<=3", corpus, eval_sets, store, k_max=3)
    s = r["summary"]
    rungs = ", ".join(f"{g['scored']}@{g['fraction']:g}" for g in (s.get("screening") or {}).get("rungs", []))
    B.record(
        "pool: add 1 partition to 31, k<=3, screening: minutes",
        r["seconds"] / 60,
        "<= 10",
        r["seconds"] <= 600 and s["trained"] == 1,
        f"trained {s['trained_units']}, {s['mixtures']} mixtures, {s['rescored']} scored now; rungs {rungs}",
    )

    with B.section("weight searches at 8 and 16"):
        for n in (8, 16):
            place(data, work / f"corpus-{n}", order[:n])
            weight_search(store, work / f"corpus-{n}", eval_sets, f"cold-{n}")
    searches = DETAILS["weight_searches"]
    grow = ", ".join(
        f"n={v['partitions']}: {v['proxies']} proxies, CV {v['cv_spearman']:.2f}"
        for v in (searches["cold-8"], searches["cold-16"], cold)
    )
    B.record("weights at 32: surrogate CV Spearman", cold["cv_spearman"], ">= 0.90", cold["cv_spearman"] >= 0.9, grow)
    B.record("weights at 32: proxies", cold["proxies"], "<= 512", cold["proxies"] <= 512, "a cold search")
    B.record("weights at 32: search minutes", cold["seconds"] / 60, "<= 20", cold["seconds"] <= 1200, "a cold search")

    with B.section("subset search"):
        subset_search(work, store, eval_sets, order[:12], data)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "intake":
        intake_main(*sys.argv[2:6])
    else:
        main()
