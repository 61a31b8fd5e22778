"""Fidelity: do merged-model proxies rank mixtures as models really trained on them do?

Two ground truths, one per budget (budgets.py), each the seed continue-pretrained with
the same hyperparameters:
- fixed: on B tokens drawn from the shuffled union of the mixture's units (B = rank.budget_tokens,
  default the unit budget); the uniform parameter average is its first-order proxy;
- union (the paper's): on the whole union, k x the unit budget; the proxy is calibrated
  (calibration.py) and its figures are leave-one-out.
When the truth would be trained exactly as a unit model was (one unit, its own budget, the
same data order), the truth is that unit model. The noise ceiling: a second truth with
another data-order seed for a stratified subset; truth against truth is the best any proxy
can reach. The study is a function of a prepared pool and runs its steps (train, score). Any merge
method can be measured against the same truths (compare_merges).
"""

from __future__ import annotations

import itertools
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from . import pipeline
from .budgets import FIXED, Budget
from .calibration import Calibration
from .errors import UserError
from .merge import METHODS, group_weights, merge_spec
from .optimize import make_space, objective_value, objective_weights
from .pipeline import Pool
from .rank import macro
from .steps import LINEAR
from .truth import Truth, train_truth, truth_perplexities
from .types import FidelityRecord, MergeSpec, Mixture, perplexities


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
    return out


# ---- figures ----------------------------------------------------------------------


def decision_accuracy(a: Sequence[float], b: Sequence[float]) -> float:
    """Share of pairs that a and b order the same way (a tie agrees only with a tie)."""
    pairs = list(itertools.combinations(range(len(a)), 2))
    if not pairs:
        return float("nan")
    same = sum(np.sign(a[i] - a[j]) == np.sign(b[i] - b[j]) for i, j in pairs)
    return same / len(pairs)


def top_k_agreement(proxy: Sequence[float], truth: Sequence[float], k: int) -> float:
    """Overlap of the k best (lowest) under proxy and truth, as a share of k."""
    k = min(k, len(proxy))
    best_p = set(np.argsort(proxy, kind="stable")[:k])
    best_t = set(np.argsort(truth, kind="stable")[:k])
    return len(best_p & best_t) / k


CORRELATIONS = {"pearson": stats.pearsonr, "spearman": stats.spearmanr, "kendall": stats.kendalltau}


def _degenerate(x, y) -> bool:
    return len(x) < 3 or np.std(x) == 0 or np.std(y) == 0


def correlations(proxy, truth) -> dict:
    if _degenerate(proxy, truth):
        return {name: float("nan") for name in CORRELATIONS}
    return {name: float(fn(proxy, truth).statistic) for name, fn in CORRELATIONS.items()}


def bootstrap_ci(proxy, truth, n_boot: int = 1000, seed: int = 0) -> dict:
    """95% percentile intervals of the three correlations over resampled mixtures (scipy.stats.bootstrap's
    resamples; those where a side is constant have no correlation and are left out)."""
    out = {}
    for name, fn in CORRELATIONS.items():

        def statistic(x, y, fn=fn):
            return float("nan") if _degenerate(x, y) else fn(x, y).statistic

        if _degenerate(proxy, truth):
            out[f"{name}_ci"] = [float("nan")] * 2
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # resamples of few mixtures can be constant
            draws = stats.bootstrap(
                (np.asarray(proxy), np.asarray(truth)),
                statistic,
                paired=True,
                vectorized=False,
                n_resamples=n_boot,
                method="percentile",
                rng=np.random.default_rng(seed),
            ).bootstrap_distribution
            out[f"{name}_ci"] = (
                [float(v) for v in np.nanpercentile(draws, [2.5, 97.5])]
                if np.isfinite(draws).any()
                else [float("nan")] * 2
            )
    return out


def figures(proxy: Sequence[float], truth: Sequence[float], baseline: Sequence[float], n_boot: int = 1000) -> dict:
    """How well `proxy` (and the naive `baseline`) predict `truth` across mixtures."""
    proxy, truth, baseline = list(map(float, proxy)), list(map(float, truth)), list(map(float, baseline))
    out = {"n_mixtures": len(proxy), **correlations(proxy, truth), **bootstrap_ci(proxy, truth, n_boot)}
    out["decision_accuracy"] = decision_accuracy(proxy, truth)
    out["top1_agreement"] = top_k_agreement(proxy, truth, 1)
    out["top3_agreement"] = top_k_agreement(proxy, truth, 3)
    out.update({f"baseline_{k}": v for k, v in correlations(baseline, truth).items()})
    out["baseline_decision_accuracy"] = decision_accuracy(baseline, truth)
    out["mean_relative_error"] = float(np.mean([(p - t) / t for p, t in zip(proxy, truth)]))
    return out


# ---- the whole study --------------------------------------------------------------


@dataclass
class FidelityResult:
    report: dict  # {"budget", "merge", "eval_sets": {name: figures}, "macro", "by_k", "variants", "settings"}
    rows: list[dict]  # per mixture: units, k, proxy, truth, baseline (and calibrated, truth_replicate) scores
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


def train_truths(pool: Pool, n: int, k_max: int, budget: Budget, ceiling: int) -> Truths:
    """Train what is missing: the unit models, a ground truth per sampled mixture, a replicate for `ceiling` of them."""
    pipeline.train(pool)
    mixtures = sample_mixtures(list(pool.models), n, k_max, pool.settings.train.seed)
    if len(mixtures) < 3:
        raise UserError(f"need at least 3 mixtures to measure fidelity; the pool has {len(pool.models)} units")
    tokens = budget.tokens(pool) or pool.settings.units.tokens
    main, again = Truth(budget, tokens, pool.settings.train.seed), Truth(budget, tokens, pool.settings.train.seed + 1)
    jobs = [(mix, main) for mix in mixtures] + [(mix, again) for mix in stratified(mixtures, ceiling)]
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


def run_fidelity(
    pool: Pool,
    n: int = 24,
    k_max: int = 3,
    budget: Budget | None = None,
    ceiling: int = 8,
    n_boot: int = 1000,
    merge: MergeSpec | None = None,
) -> FidelityResult:
    """How well the pool's proxies (by its merge method, or `merge`) predict really trained ground truths."""
    truths = train_truths(pool, n, k_max, budget or pool.budget, ceiling)
    return fidelity_of(pool, truths, merge or pool.merge, n, k_max, n_boot)


def compare_merges(
    pool: Pool, n: int = 24, k_max: int = 3, budget: Budget | None = None, ceiling: int = 8, n_boot: int = 1000
) -> dict[str, FidelityResult]:
    """Every registered merge method (with its default parameters; the pool's own with its configured ones)
    measured against one set of ground truths."""
    truths = train_truths(pool, n, k_max, budget or pool.budget, ceiling)
    specs = {name: pool.merge if name == pool.merge.method else merge_spec(name) for name in sorted(METHODS)}
    return {name: fidelity_of(pool, truths, spec, n, k_max, n_boot) for name, spec in specs.items()}


def fidelity_of(pool: Pool, truths: Truths, merge: MergeSpec, n: int, k_max: int, n_boot: int) -> FidelityResult:
    """The figures of one merge method's proxies against the trained truths."""
    budget, sets = truths.budget, sorted(pool.eval_sets)
    rows = [_row(pool, mix, truths.main[mix], truths.replicate.get(mix), merge) for mix in truths.mixtures]
    calibration = budget.fit(rows, sets, pool)
    report = {
        "budget": budget.name,
        **({"budget_tokens": budget.tokens(pool)} if budget.fixed_tokens else {}),
        "merge": merge.to_json(),
        "settings": _settings_summary(pool, n, k_max),
        **_figures_of(rows, sets, n_boot, budget),
    }
    report["by_k"] = {
        str(k): _figures_of(group, sets, n_boot, budget) for k, group in _groups_by_k(rows).items() if len(group) >= 3
    }
    report["variants"] = {
        "uniform_vs_tokens": _variant(rows, "proxy", "proxy_tokens"),
        "uniform_vs_group_merge": _variant(rows, "proxy", "proxy_group_merge"),
    }
    if calibration is not None:
        report["calibration"] = calibration.to_json()
    return FidelityResult(report, rows, pool.quarantined, calibration)


def save(pool: Pool, result: FidelityResult) -> Path | None:
    """Keep a study of the pool's own merge method as the pool's fidelity (what its rankings show), and its
    calibration; a study of another method is reported, not kept. Returns where the report was kept."""
    if result.report["merge"] != pool.merge.to_json() or result.report.get("weighted"):
        return None
    if result.calibration is not None:
        pool.store.save_calibration(pool.name, result.calibration)
    return pool.store.save_fidelity(pool.name, FidelityRecord(result.report, result.rows))


def run_weighted_fidelity(pool: Pool, n: int = 16, ceiling: int = 8, n_boot: int = 1000) -> FidelityResult:
    """Weighted merges against the seed trained at the fixed budget on the same weighted mixtures:
    n weight vectors over the partitions (uniform, natural, Dirichlet samples within optimize's bounds)."""
    tokens = FIXED.tokens(pool)
    main, replicate = Truth(FIXED, tokens, pool.settings.train.seed), Truth(FIXED, tokens, pool.settings.train.seed + 1)
    sets = sorted(pool.eval_sets)
    pipeline.train(pool)
    space = make_space(pool.models, pool.settings.optimize, tokens)
    rng = np.random.default_rng([pool.settings.optimize.seed, 1])
    points = list({tuple(w): w for w in [space.uniform, space.natural, *space.sample(rng, max(0, n - 2))]}.values())

    def train(job):
        shares = space.unit_weights(points[job[0]])
        return train_truth(pool.steps, [pool.unit(u) for u in sorted(shares)], job[1], shares)

    jobs = [(i, main) for i in range(len(points))] + [(i, replicate) for i in range(min(ceiling, len(points)))]
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
        row = {
            "units": sorted(shares),
            "k": int((w > 0).sum()),
            "weights": space.as_dict(w),
            "proxy": _perplexities(pool, space.mixture(w, pool)),
            "truth": truth_perplexities(pool.steps, truths[i, main.data_seed], pool.eval_sets),
            "truth_kind": "truth",
            "baseline": {s: float(sum(shares[u] * singles[u][s] for u in shares)) for s in sets},
        }
        if (i, replicate.data_seed) in truths:
            row["truth_replicate"] = truth_perplexities(pool.steps, truths[i, replicate.data_seed], pool.eval_sets)
        rows.append(row)
    c = objective_weights(pool.settings.optimize.objective, sets)
    report = {
        "budget": FIXED.name,
        "weighted": True,
        "budget_tokens": tokens,
        "merge": pool.merge.to_json(),
        "settings": _settings_summary(pool, n, len(space.partitions)),
        **_figures_of(rows, sets, n_boot, FIXED),
    }
    report["objective"] = {"objective": pool.settings.optimize.objective, **_objective_figures(rows, c, sets, n_boot)}
    return FidelityResult(report, rows, pool.quarantined)


def _objective_figures(rows: list[dict], c: np.ndarray, sets: list[str], n_boot: int) -> dict:
    """The figures on the optimization objective (a weighted mean of log perplexities), with its ceiling."""

    def column(key, among=rows):
        return [objective_value(r[key], c, sets) for r in among]

    out = figures(column("proxy"), column("truth"), column("baseline"), n_boot)
    replicated = [r for r in rows if "truth_replicate" in r]
    out["ceiling_spearman"] = correlations(column("truth", replicated), column("truth_replicate", replicated))[
        "spearman"
    ]
    return out


def _perplexities(pool: Pool, mixture: Mixture) -> dict[str, float]:
    return perplexities(pool.scores(mixture))


def _truth_perplexities(pool: Pool, truth: dict) -> dict[str, float]:
    if truth["kind"] == "models":  # the unit model itself: its scores are the single-unit model's
        return _perplexities(pool, pool.mixture(truth["units"], "uniform", LINEAR))
    return truth_perplexities(pool.steps, truth, pool.eval_sets)


def _row(pool: Pool, mix: tuple[str, ...], truth: dict, replicate: dict | None, merge: MergeSpec) -> dict:
    """One sampled mixture: its proxy (and token-weighted and group-merged variants), its truths and the naive
    baseline (the mean of its single unit models' perplexities)."""
    singles = [_perplexities(pool, pool.mixture([u], "uniform", LINEAR)) for u in mix]
    row = {
        "units": list(mix),
        "k": len(mix),
        "proxy": _perplexities(pool, pool.mixture(mix, "uniform", merge)),
        "truth": _truth_perplexities(pool, truth),
        "truth_kind": truth["kind"],
        "baseline": {s: float(np.mean([single[s] for single in singles])) for s in pool.eval_sets},
    }
    if replicate is not None:
        row["truth_replicate"] = _truth_perplexities(pool, replicate)
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


def _figures_of(rows: list[dict], sets: list[str], n_boot: int, budget: Budget) -> dict:
    """Per set and macro: the published score's figures (calibrated under a calibrated budget, with the raw
    proxy's in "raw"), the naive baseline's, and the noise ceiling from the replicates."""

    def column(key, name=None, among=rows):
        return [macro(r[key]) if name is None else r[key][name] for r in among]

    replicated = [r for r in rows if "truth_replicate" in r]
    score = budget.score_column
    out: dict = {"eval_sets": {}}
    for name in [*sets, None]:
        figs = figures(column(score, name), column("truth", name), column("baseline", name), n_boot)
        if budget.calibrated:
            figs["raw"] = figures(column("proxy", name), column("truth", name), column("baseline", name), n_boot)
        truth, again = column("truth", name, replicated), column("truth_replicate", name, replicated)
        figs["ceiling_n_mixtures"] = len(replicated)
        figs["ceiling_spearman"] = correlations(truth, again)["spearman"]
        figs["ceiling_decision_accuracy"] = decision_accuracy(truth, again)
        for key in ("spearman", "decision_accuracy"):
            figs[f"{key}_share_of_ceiling"] = (
                figs[key] / figs[f"ceiling_{key}"] if figs[f"ceiling_{key}"] else float("nan")
            )
        if name is None:
            out["macro"] = figs
        else:
            out["eval_sets"][name] = figs
    return out


def _groups_by_k(rows: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in rows:
        out.setdefault(r["k"], []).append(r)
    return dict(sorted(out.items()))


def _variant(rows: list[dict], a: str, b: str) -> dict:
    """Macro Spearman with truth for two proxy variants, on the mixtures where both exist."""
    rows = [r for r in rows if b in r and r["k"] > 1]
    if len(rows) < 3:
        return {"n_mixtures": len(rows), "note": "too few mixtures where the variants differ"}
    truth = [macro(r["truth"]) for r in rows]
    return {
        "n_mixtures": len(rows),
        a: correlations([macro(r[a]) for r in rows], truth),
        b: correlations([macro(r[b]) for r in rows], truth),
    }


def _settings_summary(pool: Pool, n: int, k_max: int) -> dict:
    s = pool.settings
    return {
        "params": sum(p.numel() for p in pool.seed.load_model().parameters()),
        "unit_tokens": s.units.tokens,
        "lr": s.train.lr,
        "steps_per_unit": s.units.tokens // s.train.batch_tokens,
        "batch_tokens": s.train.batch_tokens,
        "n_requested": n,
        "k_max": k_max,
        "n_units": len(pool.units),
        "seed_digest": pool.seed.digest,
    }
