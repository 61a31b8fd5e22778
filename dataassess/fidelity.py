"""Fidelity: do merged-model proxies rank mixtures as models really trained on them do?

Two ground truths, one per budget (budgets.py), each the seed continue-pretrained with
the same hyperparameters:
- fixed: on B tokens drawn from the shuffled union of the mixture's units (B = rank.budget_tokens,
  default the unit budget); the uniform parameter average is its first-order proxy (the default
  merge restores that average's length);
- union (the paper's): on the whole union, k x the unit budget; the proxy is calibrated
  (calibration.py) and its figures are leave-one-out.
Truths are trained in a data order of their own (fidelity.data_seed), so none is a unit model. A stratified
subset gets a replicate truth in a third data order: the noise model, and the ceiling (agreement.py computes
every figure from the rows). The study is a function of a prepared pool and runs its steps (train, score). Any
merge method can be measured against the same truths (compare_merges).
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import pipeline
from .agreement import report_figures, spearman, task_figures, values
from .budgets import FIXED, Budget
from .calibration import Calibration
from .errors import UserError
from .merge import METHODS, group_weights, merge_spec
from .optimize import make_space, objective_value, objective_weights
from .pipeline import Pool
from .steps import LINEAR
from .truth import Truth, train_truth, truth_perplexities, truth_scores
from .types import FidelityRecord, MergeSpec, Mixture, TaskScore, perplexities

log = logging.getLogger(__name__)


def sample_mixtures(
    units: Sequence[str], n: int, k_max: int, rng_seed: int = 0, k_min: int = 1
) -> list[tuple[str, ...]]:
    """Up to n mixtures of k_min..k_max units, stratified by size k (round-robin over k)."""
    rng = random.Random(rng_seed)
    pools = {}
    for k in range(k_min, min(k_max, len(units)) + 1):
        combos = list(itertools.combinations(sorted(units), k))
        rng.shuffle(combos)
        pools[k] = combos
    out: list[tuple[str, ...]] = []
    while len(out) < n and any(pools.values()):
        for k in sorted(pools):
            if pools[k] and len(out) < n:
                out.append(pools[k].pop())
    if len(out) < n:
        log.warning(
            "%d units make only %d mixtures of up to %d units: all are measured, not the %d asked for (--n, "
            "fidelity.mixtures)",
            len(units),
            len(out),
            k_max,
            n,
        )
    return out


# ---- the whole study --------------------------------------------------------------


@dataclass
class FidelityResult:
    report: dict  # {"budget", "merge", "settings", "seed", "noise", "eval_sets", "macro", "by_k", "variants", "rows"}
    rows: list[dict]  # per mixture: units, k, shares, proxy, truth, truth_replicate, baseline (and calibrated)
    quarantined: list[str]
    calibration: Calibration | None = None  # budgets that fit one (union): fitted on every row


def stratified(mixtures: Sequence[tuple[str, ...]], n: int) -> list[tuple[str, ...]]:
    """n of the mixtures, round-robin over sizes (mixtures keep their sampled order within a size)."""
    by_k: dict[int, list[tuple[str, ...]]] = {}
    for m in mixtures:
        by_k.setdefault(len(m), []).append(m)
    out: list[tuple[str, ...]] = []
    while len(out) < min(n, len(mixtures)):
        for k in sorted(by_k):
            if by_k[k] and len(out) < n:
                out.append(by_k[k].pop(0))
    return out


@dataclass
class Truths:
    """Sampled mixtures and their trained ground truths (and replicates, another data order, for some)."""

    budget: Budget
    mixtures: list[tuple[str, ...]]
    main: dict[tuple[str, ...], dict]
    replicate: dict[tuple[str, ...], dict]


def truth_orders(pool: Pool, budget: Budget, tokens: int | None = None) -> tuple[Truth, Truth]:
    """How a study's truths and their replicates are trained: data orders of their own, never the unit models'."""
    seed = pool.settings.fidelity.data_seed
    tokens = tokens or budget.tokens(pool) or pool.settings.units.tokens
    return Truth(budget, tokens, seed), Truth(budget, tokens, seed + 1)


def train_truths(pool: Pool, n: int, k_max: int, budget: Budget, replicates: int) -> Truths:
    """Train what is missing: the unit models, a ground truth per sampled mixture, a replicate for `replicates` of
    them (every size represented)."""
    pipeline.train(pool)
    mixtures = sample_mixtures(list(pool.models), n, k_max, pool.settings.train.seed)
    if len(mixtures) < 3:
        raise UserError(f"need at least 3 mixtures to measure fidelity; the pool has {len(pool.models)} units")
    main, again = truth_orders(pool, budget)
    jobs = [(mix, main) for mix in mixtures] + [(mix, again) for mix in stratified(mixtures, replicates)]
    trained = pool.map_fn(
        "ground truth",
        lambda job: train_truth(pool.steps, [pool.unit(u) for u in job[0]], job[1]),
        jobs,
        lambda job: " + ".join(job[0]) + (" (replicate)" if job[1] is again else ""),
    )
    truths = Truths(budget, mixtures, {}, {})
    for (mix, truth), meta in zip(jobs, trained):
        (truths.main if truth is main else truths.replicate)[mix] = meta
    return truths


def _sizes(pool: Pool, n: int | None, k_max: int | None, replicates: int | None) -> tuple[int, int, int]:
    """A study's sizes: those given, the pool's [fidelity] settings for the rest."""
    f = pool.settings.fidelity
    return n or f.mixtures, k_max or f.k_max, f.replicates if replicates is None else replicates


def run_fidelity(
    pool: Pool,
    n: int | None = None,
    k_max: int | None = None,
    budget: Budget | None = None,
    replicates: int | None = None,
    merge: MergeSpec | None = None,
) -> FidelityResult:
    """How well the pool's proxies (by its merge method, or `merge`) predict really trained ground truths.
    Unset sizes come from the pool's [fidelity] settings."""
    n, k_max, replicates = _sizes(pool, n, k_max, replicates)
    truths = train_truths(pool, n, k_max, budget or pool.budget, replicates)
    return fidelity_of(pool, truths, merge or pool.merge, n, k_max)


def compare_merges(
    pool: Pool,
    n: int | None = None,
    k_max: int | None = None,
    budget: Budget | None = None,
    replicates: int | None = None,
) -> dict[str, FidelityResult]:
    """Every registered merge method (with its default parameters; the pool's own with its configured ones)
    measured against one set of ground truths."""
    n, k_max, replicates = _sizes(pool, n, k_max, replicates)
    truths = train_truths(pool, n, k_max, budget or pool.budget, replicates)
    specs = {name: pool.merge if name == pool.merge.method else merge_spec(name) for name in sorted(METHODS)}
    return {name: fidelity_of(pool, truths, spec, n, k_max) for name, spec in specs.items()}


def fidelity_of(pool: Pool, truths: Truths, merge: MergeSpec, n: int, k_max: int) -> FidelityResult:
    """The figures of one merge method's proxies against the trained truths."""
    budget, sets = truths.budget, sorted(pool.eval_sets)
    rows = pool.map_fn(
        f"score ({merge.method})",
        lambda mix: _row(pool, mix, truths.main[mix], truths.replicate.get(mix), merge),
        truths.mixtures,
        " + ".join,
    )
    calibration = budget.fit(rows, sets, pool)
    seed = pool.steps.score_seed(pool.eval_sets)
    report = {
        "budget": budget.name,
        **({"budget_tokens": budget.tokens(pool)} if budget.fixed_tokens else {}),
        "merge": merge.to_json(),
        "score": budget.score_column,
        "settings": _settings_summary(pool, n, k_max),
        "seed": seed,
        "set_metric": {s: "gold_bpb" if s in pool.task_sets else "perplexity" for s in sets},
        **report_figures(rows, sets, seed, budget.score_column, pool.settings.fidelity.bootstrap),
        "task_figures": task_figures(rows),
        "variants": {
            "uniform_vs_tokens": _variant(rows, "proxy", "proxy_tokens"),
            "uniform_vs_group_merge": _variant(rows, "proxy", "proxy_group_merge"),
        },
    }
    if calibration is not None:
        report["calibration"] = calibration.to_json()
    report["rows"] = rows
    return FidelityResult(report, rows, pool.quarantined, calibration)


def save(pool: Pool, result: FidelityResult) -> Path | None:
    """Keep a study of the pool's own merge method as the pool's fidelity (what its rankings show), and its
    calibration; a study of another method is reported, not kept. Returns where the report was kept."""
    if result.report["merge"] != pool.merge.to_json() or result.report.get("weighted"):
        return None
    if result.calibration is not None:
        pool.store.save_calibration(pool.name, result.calibration)
    report = {k: v for k, v in result.report.items() if k != "rows"}  # the record keeps them once
    return pool.store.save_fidelity(pool.name, FidelityRecord(report, result.rows))


def run_weighted_fidelity(pool: Pool, n: int = 16, replicates: int | None = None) -> FidelityResult:
    """Weighted merges against the seed trained at the fixed budget on the same weighted mixtures, under the same
    protocol (independent truths, replicates, resolvable decisions): n weight vectors over the partitions
    (uniform, natural, Dirichlet samples within optimize's bounds)."""
    replicates = pool.settings.fidelity.replicates if replicates is None else replicates
    tokens = FIXED.tokens(pool)
    main, replicate = truth_orders(pool, FIXED, tokens)
    sets = sorted(pool.eval_sets)
    pipeline.train(pool)
    space = make_space(pool.models, pool.settings.optimize, tokens)
    rng = np.random.default_rng([pool.settings.optimize.seed, 1])
    points = list({tuple(w): w for w in [space.uniform, space.natural, *space.sample(rng, max(0, n - 2))]}.values())

    def train(job):
        shares = space.unit_weights(points[job[0]])
        return train_truth(pool.steps, [pool.unit(u) for u in sorted(shares)], job[1], shares)

    jobs = [(i, main) for i in range(len(points))] + [(i, replicate) for i in range(min(replicates, len(points)))]
    trained = pool.map_fn(
        "ground truth",
        train,
        jobs,
        lambda job: f"weights #{job[0]}" + (" (replicate)" if job[1] is replicate else ""),
    )
    truths = {(i, t.data_seed): meta for (i, t), meta in zip(jobs, trained)}
    rows = []
    for i, w in enumerate(points):
        shares = space.unit_weights(w)
        singles = {u: _perplexities(pool, pool.mixture([u], "uniform", LINEAR)) for u in shares}
        again = truths.get((i, replicate.data_seed))
        rows.append(
            {
                "units": sorted(shares),
                "k": int((w > 0).sum()),
                "shares": shares,
                "weights": space.as_dict(w),
                "proxy": _perplexities(pool, space.mixture(w, pool)),
                "truth": truth_perplexities(pool.steps, truths[i, main.data_seed], pool.eval_sets),
                "truth_replicate": truth_perplexities(pool.steps, again, pool.eval_sets) if again else None,
                "baseline": {s: float(sum(shares[u] * singles[u][s] for u in shares)) for s in sets},
            }
        )
    seed = pool.steps.score_seed(pool.eval_sets)
    c = objective_weights(pool.settings.optimize.objective, sets)
    on_objective = [
        {
            **r,
            **{
                col: {"objective": objective_value(r[col], c, sets)} if r.get(col) else r.get(col)
                for col in ("proxy", "truth", "truth_replicate", "baseline")
            },
        }
        for r in rows
    ]
    objective = report_figures(
        on_objective,
        ["objective"],
        {"objective": objective_value(seed, c, sets)},
        "proxy",
        pool.settings.fidelity.bootstrap,
    )
    report = {
        "budget": FIXED.name,
        "weighted": True,
        "budget_tokens": tokens,
        "merge": pool.merge.to_json(),
        "score": "proxy",
        "settings": _settings_summary(pool, n, len(space.partitions)),
        "seed": seed,
        **report_figures(rows, sets, seed, "proxy", pool.settings.fidelity.bootstrap),
        "objective": {
            "objective": pool.settings.optimize.objective,
            "weights": dict(zip(sets, map(float, c))),
            "noise": objective["noise"],
            **objective["eval_sets"]["objective"],
        },
        "rows": rows,
    }
    return FidelityResult(report, rows, pool.quarantined)


def _perplexities(pool: Pool, mixture: Mixture) -> dict[str, float]:
    return perplexities(pool.scores(mixture))


def _row(pool: Pool, mix: tuple[str, ...], truth: dict, replicate: dict | None, merge: MergeSpec) -> dict:
    """One sampled mixture: its proxy (and token-weighted and group-merged variants), its truths and the naive
    baseline (the mean of its single unit models' perplexities)."""
    singles = [_perplexities(pool, pool.mixture([u], "uniform", LINEAR)) for u in mix]
    proxy = pool.scores(pool.mixture(mix, "uniform", merge))
    truth_score = truth_scores(pool.steps, truth, pool.eval_sets)
    row = {
        "units": list(mix),
        "k": len(mix),
        "shares": None,
        "proxy": perplexities(proxy),
        "truth": perplexities(truth_score),
        "truth_replicate": truth_perplexities(pool.steps, replicate, pool.eval_sets) if replicate else None,
        "baseline": {s: float(np.mean([single[s] for single in singles])) for s in pool.eval_sets},
    }
    if any(isinstance(x, TaskScore) for x in proxy.values()):  # task sets: their metrics beside 2 ** gold_bpb
        row["tasks"] = {
            side: {s: x.metrics() for s, x in scores.items() if isinstance(x, TaskScore)}
            for side, scores in (("proxy", proxy), ("truth", truth_score))
        }
    row["proxy_tokens"] = _perplexities(pool, pool.mixture(mix, "tokens", merge))
    partitions: dict[str, list[str]] = {}
    for u in mix:
        partitions.setdefault(pool.models[u].partition, []).append(u)
    if len(partitions) > 1 and any(len(g) > 1 for g in partitions.values()):  # a group merge differs from the plain one
        groups = list(partitions.values())
        ordered = [u for g in groups for u in g]
        weights = dict(zip(ordered, group_weights([[1.0] * len(g) for g in groups])))
        row["proxy_group_merge"] = _perplexities(pool, pool.mixture(ordered, weights, merge))
    return row


def _variant(rows: list[dict], a: str, b: str) -> dict:
    """Macro Spearman with truth for two proxy variants, on the mixtures where both exist."""
    rows = [r for r in rows if b in r and r["k"] > 1]
    if len(rows) < 3:
        return {"n_mixtures": len(rows), "note": "too few mixtures where the variants differ"}
    truth = values(rows, "truth", None)
    return {
        "n_mixtures": len(rows),
        a: spearman(values(rows, a, None), truth),
        b: spearman(values(rows, b, None), truth),
    }


def _settings_summary(pool: Pool, n: int, k_max: int) -> dict:
    s, train = pool.settings, pool.settings.train.for_seed(pool.seed.imported)
    return {
        "params": sum(p.numel() for p in pool.seed.load_model().parameters()),
        "unit_tokens": s.units.tokens,
        "lr": train.lr,
        "schedule": train.schedule,
        "steps_per_unit": s.units.tokens // s.train.batch_tokens,
        "batch_tokens": s.train.batch_tokens,
        "n_requested": n,
        "k_max": k_max,
        "n_units": len(pool.units),
        "seed_digest": pool.seed.digest,
        "unit_data_seed": s.train.seed,
        "truth_data_seed": s.fidelity.data_seed,
    }
