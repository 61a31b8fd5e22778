"""Fidelity: do merged-model proxies rank mixtures as models really trained on them do?

Two ground truths, one per budget (rank.budget), each the seed continue-pretrained with
the same hyperparameters:
- fixed: on B tokens drawn from the shuffled union of the mixture's units (B = rank.budget_tokens,
  default the unit budget); the uniform parameter average is its first-order proxy;
- union (the paper's): on the whole union, k x the unit budget; the proxy is calibrated
  (calibration.py) and its figures are leave-one-out.
When the truth would be trained exactly as a unit model was (one unit, its own budget, the
same data order), the truth is that unit model. The noise ceiling: a second truth with
another data-order seed for a stratified subset; truth against truth is the best any proxy
can reach. The study runs the pipeline's own steps (prepare, train_units, Steps.score).
"""

from __future__ import annotations

import itertools
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from . import pipeline
from .calibration import Calibration, fit_set
from .config import Settings
from .errors import UserError
from .merge import group_weights
from .optimize import make_space, objective_value, objective_weights
from .rank import macro
from .steps import Steps, mixture_of
from .truth import Truth, train_truth, truth_perplexities
from .types import Mixture, UnitModel


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
    report: dict  # {"budget", "eval_sets": {name: figures}, "macro": figures, "by_k": {...}, "variants": {...}, "settings": {...}}
    rows: list[dict]  # per mixture: units, k, proxy, truth, baseline (and calibrated, truth_replicate) scores
    quarantined: list[str]
    calibration: Calibration | None = None  # union only: fitted on every row


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


def run_fidelity(
    corpus,
    settings: Settings,
    eval_sets_dir=None,
    n: int = 24,
    k_max: int = 3,
    budget: str | None = None,
    ceiling: int = 8,
    map_fn: pipeline.MapFn | None = None,
    progress: bool = True,
    n_boot: int = 1000,
    pool: str | None = None,
) -> FidelityResult:
    """Train what is missing (unit models, ground truths and their replicates), score, compare."""
    map_fn = map_fn or pipeline.serial_map(progress)
    budget = budget or settings.rank.budget
    tokens = settings.rank.budget_tokens or settings.units.tokens
    main, replicate = Truth(budget, tokens, settings.train.seed), Truth(budget, tokens, settings.train.seed + 1)
    inputs = pipeline.prepare(corpus, settings, eval_sets_dir, pool, progress=progress)
    with Steps(settings, inputs.seed, progress) as steps:
        models, _ = pipeline.train_units(steps, inputs.units, map_fn)
        mixtures = sample_mixtures(list(models), n, k_max, settings.train.seed)
        if len(mixtures) < 3:
            raise UserError(f"need at least 3 mixtures to measure fidelity; the pool has {len(models)} units")
        by_name = {u.name: u for u in inputs.units}
        jobs = [(mix, main) for mix in mixtures] + [(mix, replicate) for mix in stratified(mixtures, ceiling)]
        trained = map_fn(
            "ground truth",
            lambda job: train_truth(steps, [by_name[u] for u in job[0]], job[1]),
            jobs,
            lambda job: " + ".join(job[0]) + (" (replicate)" if job[1] is replicate else ""),
        )
        truths = dict(zip(((mix, t.data_seed) for mix, t in jobs), trained))
        rows = [
            _row(
                steps,
                inputs.eval_sets,
                models,
                mix,
                truths[mix, main.data_seed],
                truths.get((mix, replicate.data_seed)),
            )
            for mix in mixtures
        ]
        summary = _settings_summary(steps, len(inputs.units), n, k_max)
    sets = sorted(inputs.eval_sets)
    calibration = None
    if budget == "union":
        calibration = _calibrate(rows, sets, inputs, settings)
    report = {
        "budget": budget,
        **({"budget_tokens": tokens} if budget == "fixed" else {}),
        "settings": summary,
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
    return FidelityResult(report, rows, inputs.quarantined, calibration)


def run_weighted_fidelity(
    corpus,
    settings: Settings,
    eval_sets_dir=None,
    n: int = 16,
    ceiling: int = 8,
    map_fn: pipeline.MapFn | None = None,
    progress: bool = True,
    n_boot: int = 1000,
    pool: str | None = None,
) -> FidelityResult:
    """Weighted merges against the seed trained at the fixed budget on the same weighted mixtures:
    n weight vectors over the partitions (uniform, natural, Dirichlet samples within optimize's bounds)."""
    map_fn = map_fn or pipeline.serial_map(progress)
    tokens = settings.rank.budget_tokens or settings.units.tokens
    main, replicate = Truth("fixed", tokens, settings.train.seed), Truth("fixed", tokens, settings.train.seed + 1)
    inputs = pipeline.prepare(corpus, settings, eval_sets_dir, pool, progress=progress)
    sets = sorted(inputs.eval_sets)
    with Steps(settings, inputs.seed, progress) as steps:
        models, _ = pipeline.train_units(steps, inputs.units, map_fn)
        space = make_space(models, settings.optimize, tokens)
        rng = np.random.default_rng([settings.optimize.seed, 1])
        points = list({tuple(w): w for w in [space.uniform, space.natural, *space.sample(rng, max(0, n - 2))]}.values())
        by_name = {u.name: u for u in inputs.units}

        def train(job):
            shares = space.unit_weights(points[job[0]])
            return train_truth(steps, [by_name[u] for u in sorted(shares)], job[1], shares)

        jobs = [(i, main) for i in range(len(points))] + [(i, replicate) for i in range(min(ceiling, len(points)))]
        trained = map_fn(
            "ground truth",
            train,
            jobs,
            lambda job: f"weights #{job[0]}" + (" (replicate)" if job[1] is replicate else ""),
        )
        truths = {(i, t.data_seed): meta for (i, t), meta in zip(jobs, trained)}
        rows = []
        for i, w in enumerate(points):
            shares = space.unit_weights(w)
            singles = {u: _perplexities(steps, mixture_of([u], models, "uniform"), inputs.eval_sets) for u in shares}
            row = {
                "units": sorted(shares),
                "k": int((w > 0).sum()),
                "weights": space.as_dict(w),
                "proxy": _perplexities(steps, space.mixture(w, models), inputs.eval_sets),
                "truth": truth_perplexities(steps, truths[i, main.data_seed], inputs.eval_sets),
                "truth_kind": "truth",
                "baseline": {s: float(sum(shares[u] * singles[u][s] for u in shares)) for s in sets},
            }
            if (i, replicate.data_seed) in truths:
                row["truth_replicate"] = truth_perplexities(steps, truths[i, replicate.data_seed], inputs.eval_sets)
            rows.append(row)
        summary = _settings_summary(steps, len(inputs.units), n, len(space.partitions))
    c = objective_weights(settings.optimize.objective, sets)
    report = {
        "budget": "fixed",
        "weighted": True,
        "budget_tokens": tokens,
        "settings": summary,
        **_figures_of(rows, sets, n_boot),
    }
    report["objective"] = {"objective": settings.optimize.objective, **_objective_figures(rows, c, sets, n_boot)}
    return FidelityResult(report, rows, inputs.quarantined)


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


def _perplexities(steps: Steps, mixture: Mixture, eval_sets) -> dict[str, float]:
    return {n: s["perplexity"] for n, s in sorted(steps.score(mixture, eval_sets).items())}


def _truth_perplexities(steps: Steps, eval_sets, models: dict[str, UnitModel], truth: dict) -> dict[str, float]:
    if truth["kind"] == "models":  # the unit model itself: its scores are the single-unit proxy's
        return _perplexities(steps, mixture_of(truth["units"], models, "uniform"), eval_sets)
    return truth_perplexities(steps, truth, eval_sets)


def _row(
    steps: Steps,
    eval_sets: dict[str, str],
    models: dict[str, UnitModel],
    mix: tuple[str, ...],
    truth: dict,
    replicate: dict | None,
) -> dict:
    """One sampled mixture: its proxies (uniform, token-weighted, group merge), truths and the naive baseline."""
    singles = [_perplexities(steps, mixture_of([u], models, "uniform"), eval_sets) for u in mix]
    row = {
        "units": list(mix),
        "k": len(mix),
        "proxy": _perplexities(steps, mixture_of(mix, models, "uniform"), eval_sets),
        "proxy_tokens": _perplexities(steps, mixture_of(mix, models, "tokens"), eval_sets),
        "truth": _truth_perplexities(steps, eval_sets, models, truth),
        "truth_kind": truth["kind"],
        "baseline": {s: float(np.mean([single[s] for single in singles])) for s in eval_sets},
    }
    if replicate is not None:
        row["truth_replicate"] = _truth_perplexities(steps, eval_sets, models, replicate)
    partitions: dict[str, list[str]] = {}
    for u in mix:
        partitions.setdefault(models[u].partition, []).append(u)
    if len(partitions) > 1 and any(len(g) > 1 for g in partitions.values()):  # a group merge differs from the plain one
        groups = list(partitions.values())
        ordered = [u for g in groups for u in g]
        weights = tuple(group_weights([[1.0] * len(g) for g in groups]))
        row["proxy_group_merge"] = _perplexities(
            steps, Mixture(tuple(ordered), tuple(models[u].key for u in ordered), weights), eval_sets
        )
    return row


def _calibrate(rows: list[dict], sets: list[str], inputs: pipeline.Inputs, settings: Settings) -> Calibration:
    """Fit the union calibration per set; each row gets its leave-one-out prediction ("calibrated")."""
    fitted = {}
    for s in sets:
        fitted[s], loo = fit_set([r["proxy"][s] for r in rows], [r["truth"][s] for r in rows], [r["k"] for r in rows])
        for r, p in zip(rows, loo):
            r.setdefault("calibrated", {})[s] = float(p)
    return Calibration(dict(inputs.eval_sets), fitted, inputs.seed.digest, settings.train.digest())


def _figures_of(rows: list[dict], sets: list[str], n_boot: int, budget: str = "fixed") -> dict:
    """Per set and macro: the published score's figures (calibrated under "union", with the raw
    average's in "raw"), the naive baseline's, and the noise ceiling from the replicates."""

    def column(key, name=None, among=rows):
        return [macro(r[key]) if name is None else r[key][name] for r in among]

    replicated = [r for r in rows if "truth_replicate" in r]
    score = "calibrated" if budget == "union" else "proxy"
    out: dict = {"eval_sets": {}}
    for name in [*sets, None]:
        figs = figures(column(score, name), column("truth", name), column("baseline", name), n_boot)
        if budget == "union":
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


def _settings_summary(steps: Steps, n_units: int, n: int, k_max: int) -> dict:
    s = steps.settings
    return {
        "params": sum(p.numel() for p in steps.seed.load_model().parameters()),
        "unit_tokens": s.units.tokens,
        "lr": s.train.lr,
        "steps_per_unit": s.units.tokens // s.train.batch_tokens,
        "batch_tokens": s.train.batch_tokens,
        "n_requested": n,
        "k_max": k_max,
        "n_units": n_units,
        "seed_digest": steps.seed.digest,
    }
