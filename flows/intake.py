"""The intake flow: discover -> diff -> train new units -> register -> re-score -> publish.

Tasks pass paths, digests and small dicts, never tensors. Every step is
idempotent (outputs are keyed by content digests and written atomically), so a
killed intake is resumed by the next one, and a store-wide lock makes two
intakes started together do the work once.
"""
from __future__ import annotations

import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock
from prefect import flow, get_run_logger, task
from prefect.task_runners import ThreadPoolTaskRunner

from dataassess import pipeline
from dataassess.config import Settings
from dataassess.rank import enumerate_mixtures, rank
from dataassess.seed import Seed
from dataassess.store import digest_json, read_json, write_json
from dataassess.units import Unit
from registry import models as reg_models
from registry import fidelity as reg_fidelity
from registry import rankings as reg_rankings
from registry.tracking import connect


_thread_locks: dict[str, threading.Lock] = {}


@contextmanager
def store_lock(store: Path):
    """One intake per store at a time: across processes (file lock) and threads (filelock
    does not block a second thread of the same process)."""
    path = str((Path(store) / ".intake.lock").resolve())
    with _thread_locks.setdefault(path, threading.Lock()), FileLock(path):
        yield


@contextmanager
def phase(timings: dict[str, float], name: str):
    """Record the wall seconds of a block under `name`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - start, 2)


def _settings(cfg: dict) -> Settings:
    return Settings.model_validate(cfg)


def _seed(d: dict) -> Seed:
    return Seed(Path(d["path"]), d["digest"], d["tokenizer_digest"], d["source"])


def pool_name(corpus: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", Path(str(corpus).rstrip("/")).name).strip("-") or "pool"


def pinned_eval_sets(s: Settings, pool: str, found: dict[str, str], refresh: bool) -> dict[str, str]:
    """A pool's held-out evaluation sets are fixed at its first intake, so later intakes
    re-score only mixtures with new units; `refresh` re-pins them to the current held-out data."""
    pin = Path(s.store) / "pools" / pool / "eval_sets.json"
    if pin.exists() and not refresh:
        pinned = read_json(pin)
        if all(Path(p).exists() for p in pinned.values()):
            return pinned
    write_json(pin, found)
    return found


@task(name="discover")
def discover(corpus: str, cfg: dict, eval_sets: str | None, pool_name_: str, refresh_eval: bool, progress: bool) -> dict:
    s = _settings(cfg)
    pool = pipeline.prepare_pool(corpus, s, eval_sets, progress)
    for err in pool.rejected:
        get_run_logger().warning("quarantined: %s", err)
    if eval_sets is None:
        pool.eval_sets = pinned_eval_sets(s, pool_name_, pool.eval_sets, refresh_eval)
    return {
        "seed": {"path": str(pool.seed.path), "digest": pool.seed.digest, "tokenizer_digest": pool.seed.tokenizer_digest, "source": pool.seed.source},
        "units": [u.to_dict() for u in pool.units],
        "rejected": [str(e) for e in pool.rejected],
        "eval_sets": pool.eval_sets,
    }


def train_cache_key(_ctx, params: dict) -> str:
    """(unit digest, seed digest, train config hash), within one store."""
    s = _settings(params["cfg"])
    store = digest_json(str(Path(s.store).resolve()))[:12]
    return f"train-{store}-{params['unit']['digest'][:20]}-{params['seed']['digest'][:20]}-{s.train.digest()}"


@task(name="train-unit", task_run_name="train {unit[name]}", cache_key_fn=train_cache_key, persist_result=True, result_serializer="json", retries=1)
def train_unit(unit: dict, seed: dict, cfg: dict, progress: bool) -> dict:
    meta = pipeline.train_unit(Unit(**unit), _seed(seed), _settings(cfg), progress)
    get_run_logger().info("%s: final loss %.3f in %.0f s", unit["name"], meta["final_loss"], meta["wall_s"])
    return meta


@task(name="register-unit", task_run_name="register {meta[unit]}", retries=2, retry_delay_seconds=2)
def register_unit(meta: dict, seed: dict, cfg: dict, pool: str, seed_version: str) -> dict:
    s = _settings(cfg)
    client = connect(s.store)
    mv, new = reg_models.register_unit(client, s.store, pool, meta, _seed(seed), seed_version)
    return {"unit": meta["unit"], "version": mv.version, "new": new}


@task(name="score-mixture", task_run_name="score {mixture}")
def score_mixture(mixture: str, metas: list[dict], seed: dict, eval_sets: dict, cfg: dict) -> dict:
    s = _settings(cfg)
    weights = pipeline.mixture_weights(metas, s.rank.weighting)
    scores, computed = pipeline.score_mixture([m["weights"] for m in metas], [m["key"] for m in metas], _seed(seed), eval_sets, s, weights)
    return {"units": [m["unit"] for m in metas], "scores": scores, "computed": computed}


@task(name="publish")
def publish(rows: list[dict], found: dict, metas: dict, versions: dict, cfg: dict, pool: str, corpus: str, summary: dict) -> dict:
    """Save the ranking snapshot, log it to MLflow and register the champion."""
    s = _settings(cfg)
    seed = _seed(found["seed"])
    ranking = rank(rows, s.rank.by)
    seed_scores = pipeline.score_seed(seed, found["eval_sets"], s)
    info = pipeline.snapshot_info(corpus, seed, seed_scores, metas, found["eval_sets"], found["rejected"], summary)
    info.update(pool=pool, unit_versions=versions)
    path = pipeline.save_ranking(s, ranking, info)
    snapshot = read_json(path)
    client = connect(s.store)
    eval_info = {}
    for name, p in found["eval_sets"].items():
        es = read_json(Path(p))
        eval_info[name] = {"digest": es["digest"], "tokens": es["tokens"], "bytes": es["bytes"], "documents": es["documents"], "path": str(Path(p).resolve())}
    fid_path = Path(s.store) / "fidelity" / "latest.json"
    fidelity = reg_fidelity.snapshot_tags(read_json(fid_path)["report"] if fid_path.exists() else None)
    run_id = reg_rankings.log_snapshot(client, s.store, pool, snapshot, versions, eval_info, summary, fidelity)
    best = [metas[u] for u in ranking[0]["units"]]
    weights, mix_key = pipeline.materialize_mixture(best, s)
    champ = reg_models.register_champion(client, s.store, pool, weights, seed, ranking[0]["units"], ranking[0]["scores"], mix_key)
    return {"snapshot": str(path), "ranking_run_id": run_id, "champion_version": champ.version}


@flow(name="dataassess-intake", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True)
def intake(
    corpus_root: str, config: dict | None = None, eval_sets: str | None = None, pool: str | None = None,
    progress: bool = False, refresh_eval: bool = False,
) -> dict:
    """One intake of a corpus root: trains only new or changed units and publishes a fresh ranking.

    eval_sets: a folder with one subfolder per evaluation set; by default the held-out
    documents, pinned at the pool's first intake (refresh_eval=True re-pins them).
    """
    cfg = Settings.model_validate(config or {}).model_dump(mode="json")
    s = _settings(cfg)
    pool = pool or pool_name(corpus_root)
    logger = get_run_logger()
    Path(s.store).mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    with store_lock(s.store):
        with phase(timings, "discover"):
            found = discover(corpus_root, cfg, eval_sets, pool, refresh_eval, progress)
            seed = found["seed"]
            client = connect(s.store)
            seed_version = reg_models.register_seed(client, s.store, pool, _seed(seed)).version

        units = found["units"]
        with phase(timings, "train"):
            metas = {u["name"]: m for u in units if (m := pipeline.trained_meta(s, pipeline.unit_model_key(Unit(**u), _seed(seed), s)))}
            done_before = set(metas)
            futures = {u["name"]: train_unit.submit(u, seed, cfg, progress) for u in units if u["name"] not in done_before}
            for u in units:
                if u["name"] in done_before:
                    continue
                meta = futures[u["name"]].result()
                if not Path(meta["weights"]).exists():  # a cached result whose files were deleted: retrain
                    meta = train_unit.with_options(refresh_cache=True)(u, seed, cfg, progress)
                metas[u["name"]] = meta
            metas = {u["name"]: metas[u["name"]] for u in units}  # in unit order, as discovered
        with phase(timings, "register"):
            registered = []
            for u in units:  # new models as tasks; known ones checked inline (one registry query each)
                if u["name"] in done_before:
                    mv, new = reg_models.register_unit(client, s.store, pool, metas[u["name"]], _seed(seed), seed_version)
                    registered.append({"unit": u["name"], "version": mv.version, "new": new})
                else:
                    registered.append(register_unit(metas[u["name"]], seed, cfg, pool, seed_version))
            versions = {r["unit"]: r["version"] for r in registered}

        def score_many(mixes, sets):
            """Cached scores are read here; only mixtures missing one become tasks."""
            out, pending = {}, {}
            for m in mixes:
                ms = [metas[u] for u in m]
                key = pipeline.mixture_key([x["key"] for x in ms], pipeline.mixture_weights(ms, s.rank.weighting))
                cached = pipeline.cached_scores(s, key, sets)
                if len(cached) == len(sets):
                    out[m] = (m, cached, 0)
                else:
                    pending[m] = score_mixture.submit(" + ".join(m), ms, seed, sets, cfg)
            for m, f in pending.items():
                result = f.result()
                out[m] = (m, result["scores"], result["computed"])
            return [out[m] for m in mixes]

        with phase(timings, "score"):
            mixtures = enumerate_mixtures(sorted(metas), s.rank.k_max, s.rank.mixtures)
            ranking, counts = pipeline.screen_and_rank(mixtures, score_many, found["eval_sets"], s)
        trained = sorted(set(metas) - done_before)
        summary = {
            "trained": len(trained), "skipped": len(done_before), "quarantined": len(found["rejected"]),
            "registered": sum(r["new"] for r in registered), "mixtures": len(mixtures),
            "rescored": counts["scored"], "reused": counts["reused"],
            **({"screening": counts["screening"]} if "screening" in counts else {}),
        }
        with phase(timings, "publish"):
            published = publish(ranking, found, metas, versions, cfg, pool, corpus_root, summary)
    logger.info("intake %s: %s", pool, summary)
    return {**summary, "trained_units": trained, "quarantined_partitions": found["rejected"], **published, "pool": pool, "seconds": timings}
