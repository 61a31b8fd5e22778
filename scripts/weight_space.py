"""How far each sampled mixture's merge lies from its ground truth in parameter space, beside how far a second truth
(another data order, same data) lies from it: is the proxy as close to the truth as the data-order noise allows?

Run after `dataassess fidelity` with the same store, corpus, settings (DATAASSESS_* in the environment) and sizes:
every model it reads is already in the store (it stops, training nothing, when one is missing). Writes OUT.json
with one row per mixture:

    {"units": [...], "k": 2, "proxy": |merge - truth| / |truth - seed|, "replicate": |replicate - truth| / ... or null,
     "cosine": the mean cosine between its unit models' updates (model - seed) over their pairs, 1 for one unit}

    python scripts/weight_space.py STORE CORPUS OUT.json [--n 24 --k-max 3 --replicates 8 --budget fixed]

(and --eval-sets DIR when the run had one).
"""

import argparse
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dataassess import budgets, fidelity
from dataassess.config import load_settings
from dataassess.files import write_json
from dataassess.merge import method_class
from dataassess.pipeline import prepare
from dataassess.store import Store
from dataassess.truth import truth_key


def flat(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([weights[n].float().reshape(-1) for n in sorted(weights) if weights[n].is_floating_point()])


def update_gram(base: Path, paths: Sequence[Path]) -> torch.Tensor:
    """Dot products between the models' updates (model - base), tensor by tensor: one tensor of each in memory."""
    gram = torch.zeros(len(paths), len(paths), dtype=torch.float64)
    files = [safe_open(str(p), "pt") for p in paths]
    with safe_open(str(base), "pt") as b:
        for name in b.keys():
            seed = b.get_tensor(name)
            if not seed.is_floating_point():
                continue
            updates = torch.stack([(f.get_tensor(name).double() - seed.double()).reshape(-1) for f in files])
            gram += updates @ updates.T
    return gram


def mean_cosine(gram: torch.Tensor, index: dict[str, int], units: Sequence[str]) -> float:
    pairs = list(itertools.combinations([index[u] for u in units], 2))
    if not pairs:
        return 1.0
    return sum(float(gram[i, j] / (gram[i, i] * gram[j, j]).sqrt()) for i, j in pairs) / len(pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("corpus")
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--k-max", type=int, default=None)
    ap.add_argument("--replicates", type=int, default=None)
    ap.add_argument("--budget", default=None)
    ap.add_argument("--eval-sets", default=None)
    a = ap.parse_args()
    settings = load_settings()
    store = Store(a.store)
    with prepare(store, a.corpus, settings, a.eval_sets, progress=False) as pool:
        budget = budgets.budget(a.budget or settings.rank.budget)
        f = settings.fidelity
        n, k_max = a.n or f.mixtures, a.k_max or f.k_max
        replicates = f.replicates if a.replicates is None else a.replicates
        main_order, again = fidelity.truth_orders(pool, budget)
        sampled = fidelity.sample_mixtures(list(pool.models), n, k_max, settings.train.seed)
        jobs = [(m, main_order) for m in sampled] + [(m, again) for m in fidelity.stratified(sampled, replicates)]
        missing = [
            m
            for m, order in jobs
            if not store.finished(truth_key([pool.unit(u) for u in m], pool.steps, order), "truth")
        ]
        if missing or len(pool.models) < len(pool.units):
            what = f"{len(missing)} of the run's {len(jobs)} ground truths" if missing else "some unit models"
            sys.exit(
                f"error: {what} are not in {store.root}: run `dataassess fidelity` with the same store, settings "
                "and sizes first"
            )
        truths = fidelity.train_truths(pool, n, k_max, budget, replicates)  # all in the store: loads them
        base_path = pool.seed.base_weights()
        base = flat(load_file(base_path))
        names = sorted({u for mix in truths.mixtures for u in mix})
        gram = update_gram(base_path, [store.weights(pool.models[u].key) for u in names])
        index = {u: i for i, u in enumerate(names)}
        rows = []
        with method_class(pool.merge.method)() as method:
            for mix in truths.mixtures:
                paths = [store.weights(pool.models[u].key) for u in mix]
                merged = flat(method.merge(paths, base=base_path, params=dict(pool.merge.params)))
                truth = flat(load_file(store.weights(truths.main[mix]["key"], "truth")))
                scale = float((truth - base).norm())
                rep = truths.replicate.get(mix)
                replicate = flat(load_file(store.weights(rep["key"], "truth"))) if rep else None
                rows.append(
                    {
                        "units": list(mix),
                        "k": len(mix),
                        "proxy": float((merged - truth).norm()) / scale,
                        "replicate": None if replicate is None else float((replicate - truth).norm()) / scale,
                        "cosine": mean_cosine(gram, index, mix),
                    }
                )
    train = settings.train.for_seed(pool.seed.imported)
    write_json(
        Path(a.out),
        {
            "corpus": a.corpus,
            "budget": budget.name,
            "merge": pool.merge.to_json(),
            "unit_tokens": settings.units.tokens,
            "lr": train.lr,
            "schedule": train.schedule,
            "seed_digest": pool.seed.digest,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
