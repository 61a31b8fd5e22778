"""What the weight search on intake (`optimize.on_intake`) costs and finds, at several search settings: two waves of a
corpus (a cold search on the early partitions, then a warm one after the late ones arrive), per setting and search
seed. By default the demo's corpus, evaluation sets and late partitions; `--corpus DIR --late a,b` for another corpus
(its held-out documents as evaluation sets, or `--eval-sets`). Unit models missing from STORE are trained first.
Writes OUT_DIR/NAME-seed-S.json per (setting, seed): the proxies scored (the cost, in full-set scorings) and the
confirmed objective of each wave's answer. The fidelity study's "Weight search on intake" section reads them.

    python scripts/optimize_study.py STORE OUT_DIR wide:samples=160,rounds=3 leaner:samples=48,rounds=2 --seeds 0,1
"""

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import NamedTuple

from dataassess.config import Settings
from dataassess.files import write_json
from dataassess.optimize import save, search
from dataassess.pipeline import prepare, train
from dataassess.store import Store
from flows.demo import DATA, LATE_PARTITIONS, stage, waves


def wave_report(result, cfg, reused: int) -> dict:
    """One search's cost and answer. Its cost is what it would score on a store of its own: the points it adds to
    the `reused` ones of the pool's previous search, on slices, and the confirmations on the full sets."""
    report = result.report
    n_points = report["surrogate"]["n_proxies"]
    n_confirmed = len(report["round_optima"]) + 2  # every round's optimum, uniform and natural, on the full sets
    return {
        "partitions": len(report["bounds"]),
        "proxies": n_points,
        "new_proxies": n_points - reused,
        "confirmed": n_confirmed,
        "full_set_scorings": (n_points - reused) * cfg.eval_fraction + n_confirmed,
        "objective": report["objective_value"]["optimized"],
        "log_objective": math.log(report["objective_value"]["optimized"]),
        "uniform_objective": report["objective_value"]["uniform"],
        "weights": report["weights"],
        "surrogate": report["surrogate"]["model"],
    }


class Source(NamedTuple):
    """The corpus the waves come from: its label in the reports, evaluation sets (None: held out), late partitions."""

    corpus: Path
    label: str
    eval_sets: Path | None
    late: tuple[str, ...]


def run(store: Store, out: Path, name: str, overrides: dict, seed: int, source: Source) -> dict:
    settings = Settings(store=store.root, optimize={**overrides, "seed": seed, "on_intake": True})
    pool = f"optimize-study-{name}-{seed}"
    corpus = store.demo_corpus(pool)
    for leftover in (store.root / "pools" / pool, corpus):  # an interrupted run's: every run starts cold
        shutil.rmtree(leftover, ignore_errors=True)
    report = {
        "name": name,
        "corpus": source.label,
        "overrides": overrides,
        "seed": seed,
        "optimize": settings.optimize.model_dump(),
    }
    start, reused = time.perf_counter(), 0
    for wave, partitions in enumerate(waves(source.corpus, source.late), 1):
        stage(corpus, partitions)
        with prepare(store, corpus, settings, source.eval_sets, pool, progress=False) as prepared:
            train(prepared)  # none on a store that already holds the corpus's unit models
            result = search(prepared)
            save(prepared, result)
        report[f"wave_{wave}"] = wave_report(result, settings.optimize, reused)
        reused = report[f"wave_{wave}"]["proxies"]
    report["wall_s"] = round(time.perf_counter() - start, 1)  # scores cached by other settings are not recounted
    write_json(out / f"{name}-seed-{seed}.json", report)
    w1, w2 = report["wave_1"], report["wave_2"]
    print(
        f"{name} seed {seed}: cost {w1['full_set_scorings']:.0f} + {w2['full_set_scorings']:.0f} full-set scorings, "
        f"objective {w1['objective']:.2f} / {w2['objective']:.2f}",
        flush=True,
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("settings", nargs="+", help="NAME or NAME:key=value,key=value (optimize.* overrides)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--corpus", type=Path, default=DATA / "corpus", help="a folder of partitions")
    parser.add_argument("--eval-sets", type=Path, help="default: the demo's with the demo corpus, else held out")
    parser.add_argument("--late", default=",".join(LATE_PARTITIONS), help="the partitions of the second wave")
    args = parser.parse_args()
    demo = args.corpus == DATA / "corpus"
    source = Source(
        args.corpus,
        "demo" if demo else args.corpus.name,
        args.eval_sets or (DATA / "eval" if demo else None),
        tuple(args.late.split(",")),
    )
    store = Store(args.store)
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in map(int, args.seeds.split(",")):
        for setting in args.settings:
            name, _, assignments = setting.partition(":")
            overrides = {k: json.loads(v) for k, v in (a.split("=", 1) for a in assignments.split(",") if a)}
            if not (args.out / f"{name}-seed-{seed}.json").exists():
                run(store, args.out, name, overrides, seed, source)


if __name__ == "__main__":
    main()
