"""Mixture weights: the shares of the fixed token budget to give each partition.

A weight vector gives each partition a share of the budget B (its units split it evenly).
Its proxy is the weighted merge of the unit models (DeMix, MergeMix; by merge.method): to first
order, B tokens drawn by these shares move the seed by the weighted mean of the unit updates.
The search, as DeMix and Olmix run it:
1. score the weighted merges of a design (the vertices, uniform, natural and Dirichlet
   samples) on a slice of every evaluation set;
2. fit a surrogate from weights to each set's log perplexity (scikit-learn), chosen by
   cross-validated Spearman on the objective;
3. minimize it under the bounds (scipy), sample near the optimum, refit: a few rounds;
   each round's optimum is confirmed by a real weighted merge on the full sets, and the best
   confirmed one (uniform and natural included) is the answer.
Scores are cached by (model keys, weights) like every mixture's, and a pool's design is kept,
so a re-run after new data scores only weight vectors it has not scored before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import pipeline
from .budgets import FIXED
from .config import OptimizeConfig
from .errors import UserError
from .pipeline import Pool
from .truth import Truth, train_truth, truth_perplexities
from .types import Mixture, OptimizationRecord, RankedMixture, Unit, UnitModel, perplexities

SURROGATES = ("loglinear", "quadratic", "trees")
ALPHAS = tuple(float(a) for a in np.logspace(-6, 2, 17))


# ---- the search space ---------------------------------------------------------------


@dataclass(frozen=True)
class Space:
    """Partition shares on the simplex, within per-partition bounds."""

    partitions: tuple[str, ...]
    units: dict[str, tuple[str, ...]]  # partition -> its units
    distinct: dict[str, int]  # partition -> distinct training tokens
    lower: np.ndarray
    upper: np.ndarray

    @property
    def uniform(self) -> np.ndarray:
        return self.project(np.full(len(self.partitions), 1.0 / len(self.partitions)))

    @property
    def natural(self) -> np.ndarray:
        """Token-proportional: each partition's share of the distinct tokens."""
        tokens = np.array([self.distinct[p] for p in self.partitions], dtype=float)
        return self.project(tokens / tokens.sum())

    def vertices(self) -> list[np.ndarray]:
        """As much of the budget on one partition as the bounds allow."""
        return [self.project(np.eye(len(self.partitions))[i]) for i in range(len(self.partitions))]

    def project(self, v: np.ndarray) -> np.ndarray:
        """The nearest point (Euclidean) with lower <= w <= upper and sum(w) = 1, rounded to 1e-6.
        Bisection on the shift t of clip(v - t, lower, upper), whose sum falls as t grows."""
        v = np.asarray(v, dtype=float)
        lo, hi = float(np.min(v - self.upper)), float(np.max(v - self.lower))
        for _ in range(100):
            t = (lo + hi) / 2
            if np.clip(v - t, self.lower, self.upper).sum() > 1.0:
                lo = t
            else:
                hi = t
        return np.round(np.clip(v - (lo + hi) / 2, self.lower, self.upper), 6)

    def sample(
        self, rng: np.random.Generator, n: int, around: np.ndarray | None = None, concentration: float = 1.0
    ) -> list[np.ndarray]:
        """n feasible points: flat Dirichlet samples, or concentrated around a point."""
        alpha = np.ones(len(self.partitions)) if around is None else concentration * np.asarray(around) + 0.05
        return [self.project(x) for x in rng.dirichlet(alpha, n)]

    def unit_weights(self, w: np.ndarray) -> dict[str, float]:
        """Each unit's share of the budget: its partition's share split evenly over its units."""
        return {u: float(s) / len(self.units[p]) for p, s in zip(self.partitions, w) if s > 0 for u in self.units[p]}

    def mixture(self, w: np.ndarray, pool: Pool) -> Mixture:
        """The weighted merge of the pool's unit models by these partition shares."""
        shares = self.unit_weights(w)
        return pool.mixture(sorted(shares), shares)

    def as_dict(self, w: np.ndarray) -> dict[str, float]:
        return {p: float(s) for p, s in zip(self.partitions, w)}

    def feasible(self, w: np.ndarray, tol: float = 1e-5) -> bool:
        return bool((w >= self.lower - tol).all() and (w <= self.upper + tol).all() and abs(w.sum() - 1.0) <= tol)

    def embed(self, shares: Mapping[str, float]) -> np.ndarray | None:
        """A point of another space in this one: partitions it lacks get 0; None if it used one this space lacks.
        A feasible point is kept exactly as it is (its scores are cached under those weights)."""
        if any(s > 0 and p not in self.partitions for p, s in shares.items()):
            return None
        w = np.array([shares.get(p, 0.0) for p in self.partitions])
        return w if self.feasible(w) else self.project(w)


def _per_partition(
    value: float | Mapping[str, float], partitions: Sequence[str], default: float, name: str
) -> np.ndarray:
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(partitions))
        if unknown:
            raise UserError(f"optimize.{name} names unknown partitions {unknown}; partitions are {list(partitions)}")
        return np.array([float(value.get(p, default)) for p in partitions])
    return np.full(len(partitions), float(value))


def make_space(models: Mapping[str, UnitModel | Unit], cfg: OptimizeConfig, budget_tokens: int) -> Space:
    """The partitions of a pool's unit models, with their bounds and repetition caps."""
    units: dict[str, list[str]] = {}
    for name, m in sorted(models.items()):
        units.setdefault(m.partition, []).append(name)
    partitions = tuple(sorted(units))
    if len(partitions) < 2:
        raise UserError(f"weights need at least 2 partitions; the pool has {list(partitions)}")
    distinct = {p: sum(models[u].source_tokens for u in units[p]) for p in partitions}
    lower = _per_partition(cfg.min_share, partitions, 0.0, "min_share")
    cap = np.array([cfg.max_epochs * distinct[p] / budget_tokens for p in partitions])
    upper = np.minimum(_per_partition(cfg.max_share, partitions, 1.0, "max_share"), cap)
    if (lower < 0).any() or (upper > 1).any() or (lower > upper).any():
        raise UserError(
            f"optimize bounds must satisfy 0 <= min_share <= max_share <= 1 per partition: "
            f"min {dict(zip(partitions, lower))}, max (with the repetition cap) {dict(zip(partitions, upper.round(4)))}"
        )
    if lower.sum() > 1 + 1e-9 or upper.sum() < 1 - 1e-9:
        raise UserError(
            f"no weights fit the bounds: min shares sum to {lower.sum():.3f}, max shares (with the "
            f"repetition cap, optimize.max_epochs = {cfg.max_epochs:g}) to {upper.sum():.3f}; both must allow 1"
        )
    return Space(partitions, {p: tuple(u) for p, u in units.items()}, distinct, lower, upper)


# ---- the objective ----------------------------------------------------------------


def objective_weights(objective: str | Mapping[str, float], sets: Sequence[str]) -> np.ndarray:
    """Weights over evaluation sets of the objective, a weighted mean of log perplexities."""
    sets = list(sets)
    if objective == "macro":
        return np.full(len(sets), 1.0 / len(sets))
    if isinstance(objective, str):
        if objective not in sets:
            raise UserError(f"optimize.objective '{objective}' is not an evaluation set; sets are {sets} or 'macro'")
        return np.array([1.0 if s == objective else 0.0 for s in sets])
    unknown = sorted(set(objective) - set(sets))
    if unknown or not objective or any(v < 0 for v in objective.values()) or sum(objective.values()) <= 0:
        raise UserError(
            f"optimize.objective must weigh known evaluation sets {sets} with non-negative weights; got "
            f"{dict(objective)}"
        )
    c = np.array([float(objective.get(s, 0.0)) for s in sets])
    return c / c.sum()


def objective_value(scores: Mapping[str, float], c: np.ndarray, sets: Sequence[str]) -> float:
    """The objective as a perplexity: exp of the weighted mean log perplexity (macro: the geometric mean)."""
    return math.exp(sum(ci * math.log(scores[s]) for ci, s in zip(c, sets)))


# ---- the surrogate ----------------------------------------------------------------


def surrogate_model(name: str):
    from sklearn.ensemble import ExtraTreesRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    if name == "loglinear":  # Olmix: log perplexity linear in the weights
        return RidgeCV(alphas=list(ALPHAS))
    if name == "quadratic":  # and pairwise interactions
        return make_pipeline(PolynomialFeatures(2, include_bias=False), StandardScaler(), RidgeCV(alphas=list(ALPHAS)))
    if name == "trees":
        return ExtraTreesRegressor(n_estimators=200, min_samples_leaf=2, random_state=0)
    raise UserError(f"unknown surrogate '{name}'; choose from {SURROGATES}")


@dataclass
class Surrogate:
    """Weights -> log perplexity of every evaluation set; `objective` combines them."""

    name: str
    model: object
    c: np.ndarray
    cv_spearman: dict[str, float]  # per candidate model: cross-validated Spearman on the objective
    cv_predicted: np.ndarray  # the chosen model's out-of-fold objective predictions (log)

    @property
    def smooth(self) -> bool:
        return self.name != "trees"

    def objective(self, w: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(w)
        return np.asarray(self.model.predict(x)).reshape(len(x), -1) @ self.c


def fit_surrogate(
    x: np.ndarray, log_ppl: np.ndarray, c: np.ndarray, choice: str = "auto", cross_validate: bool = True
) -> Surrogate:
    """Fit each candidate, keep the one whose out-of-fold predictions rank the objective best (5-fold). Without
    cross_validate, fit `choice` alone (its figures left empty)."""
    from scipy.stats import spearmanr
    from sklearn.model_selection import KFold, cross_val_predict

    if not cross_validate and choice != "auto":
        return Surrogate(choice, surrogate_model(choice).fit(x, log_ppl), c, {}, np.empty(0))

    folds = KFold(n_splits=min(5, len(x)), shuffle=True, random_state=0)
    target = log_ppl @ c
    names = SURROGATES if choice == "auto" else (choice,)
    cv, predicted = {}, {}
    for name in names:
        predicted[name] = (
            np.asarray(cross_val_predict(surrogate_model(name), x, log_ppl, cv=folds)).reshape(len(x), -1) @ c
        )
        cv[name] = float(spearmanr(predicted[name], target).statistic) if np.std(target) > 0 else float("nan")
    best = max(names, key=lambda n: -1.0 if math.isnan(cv[n]) else cv[n])
    return Surrogate(best, surrogate_model(best).fit(x, log_ppl), c, cv, predicted[best])


def minimize(
    surrogate: Surrogate, space: Space, rng: np.random.Generator, starts: Sequence[np.ndarray], n_candidates: int = 2000
) -> np.ndarray:
    """The surrogate's minimum under the bounds: the best of many feasible candidates, polished by SLSQP
    when the surrogate is smooth."""
    from scipy.optimize import minimize as scipy_minimize

    candidates = np.array([*starts, *space.sample(rng, n_candidates)])
    values = surrogate.objective(candidates)
    best = candidates[int(np.argmin(values))]
    if surrogate.smooth:
        res = scipy_minimize(
            lambda w: float(surrogate.objective(w)[0]),
            best,
            method="SLSQP",
            bounds=list(zip(space.lower, space.upper)),
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
        )
        polished = space.project(res.x)
        if surrogate.objective(polished)[0] < surrogate.objective(best)[0]:
            best = polished
    return space.project(best)


# ---- the search ---------------------------------------------------------------------


@dataclass
class OptimizeResult:
    report: dict  # the JSON `dataassess optimize --json` prints
    design: list[dict[str, float]]  # the search's starting points: kept in the store to warm-start the next
    proxies: list[dict]  # every scored point: {"weights", "scores" (slice perplexities), "objective"}
    scored: list[str] = field(default_factory=list)  # mixture keys scored now (the rest were cached)
    cv: tuple[np.ndarray, np.ndarray] | None = None  # (out-of-fold predicted, observed) log objective, for the fit plot
    partitions: dict[str, list[str]] = field(default_factory=dict)  # partition -> units searched over


def label(space: Space, w: np.ndarray) -> str:
    return ", ".join(f"{p} {s:.2f}" for p, s in zip(space.partitions, w) if s > 0)


def search(pool: Pool, best_subset: Sequence[str] | None = None) -> OptimizeResult:
    """The optimal partition shares for a pool, warm-started from its last search (see the module docstring)."""
    steps, eval_sets, cfg = pool.steps, pool.eval_sets, pool.settings.optimize
    budget = FIXED.tokens(pool)
    space = make_space(pool.models, cfg, budget)
    sets = sorted(eval_sets)
    c = objective_weights(cfg.objective, sets)
    search_sets = dict(eval_sets) if cfg.eval_fraction == 1.0 else steps.evalsets.sliced(eval_sets, cfg.eval_fraction)
    scored_now: list[str] = []

    def score(points: Sequence[np.ndarray], on: Mapping[str, str]) -> list[dict[str, float]]:
        mixtures = [space.mixture(w, pool) for w in points]
        pending = {m.key: (m, w) for m, w in zip(mixtures, points) if len(steps.cached(m.key, on)) < len(on)}
        scored_now.extend(pending)
        pool.map_fn(
            "proxy", lambda item: steps.score(item[0], on), list(pending.values()), lambda item: label(space, item[1])
        )
        return [perplexities(steps.cached(m.key, on)) for m in mixtures]

    previous = pool.store.optimization(pool.name)
    design = _design(space, previous, cfg)
    points: list[np.ndarray] = list(design)
    scores = score(points, search_sets)
    optima: list[np.ndarray] = []
    surrogate, compared = None, {}
    # the surrogate is chosen (cross-validated) on the first fit and cross-validated again on the last; a warm
    # search keeps the previous search's choice
    choice = cfg.surrogate
    if choice == "auto" and previous is not None:
        choice = previous.report.get("surrogate", {}).get("model", "auto")
    for r in range(cfg.rounds + 1):
        x, y = np.array(points), np.log([[s[n] for n in sets] for s in scores])
        surrogate = fit_surrogate(
            x, y, c, choice if surrogate is None else surrogate.name, cross_validate=r in (0, cfg.rounds)
        )
        compared = compared or surrogate.cv_spearman
        rng = np.random.default_rng([cfg.seed, r])
        best = minimize(surrogate, space, rng, [points[int(np.argmin(y @ c))], *optima[-1:]])
        optima.append(best)
        if r < cfg.rounds:
            near = [best, *space.sample(rng, cfg.round_samples - 1, around=best, concentration=cfg.concentration)]
            points += near
            scores += score(near, search_sets)

    # confirm on the full sets: every round's optimum, the uniform and the natural mixture
    named = {"uniform": space.uniform, "natural": space.natural}
    full = score([*optima, *named.values()], eval_sets)
    full_named = dict(zip(named, full[len(optima) :]))
    # the answer: the best confirmed weighted merge (a round's optimum, or uniform or natural if none beat them)
    pick = int(np.argmin([objective_value(s, c, sets) for s in full]))
    weights, proxy = [*optima, *named.values()][pick], full[pick]
    report = {
        "objective": cfg.objective,
        "objective_sets": dict(zip(sets, map(float, c))),
        "budget_tokens": budget,
        "pool": pool.name,
        "weights": space.as_dict(weights),
        "unit_weights": space.unit_weights(weights),
        "predicted": {n: proxy[n] for n in sets},
        "objective_value": {
            "optimized": objective_value(proxy, c, sets),
            **{k: objective_value(v, c, sets) for k, v in full_named.items()},
        },
        "proxies": {k: {n: v[n] for n in sets} for k, v in full_named.items()},
        "surrogate": {
            "model": surrogate.name,
            "spearman": surrogate.cv_spearman[surrogate.name],
            "compared": compared,  # on the first fit, where the surrogate was chosen
            "n_proxies": len(points),
            "eval_fraction": cfg.eval_fraction,
            "predicted_objective": float(np.exp(surrogate.objective(weights)[0])),
        },
        "bounds": {p: [float(lo), float(hi)] for p, lo, hi in zip(space.partitions, space.lower, space.upper)},
        "natural_weights": space.as_dict(space.natural),
        "round_optima": [space.as_dict(w) for w in optima],
        "counts": {"scored": len(scored_now), "reused": len(points) + len(full) - len(scored_now)},
    }
    if best_subset:
        report["best_subset"] = list(best_subset)
    if previous is not None:
        before = previous.report["weights"]
        report["previous_weights"] = before
        report["change"] = {
            p: report["weights"].get(p, 0.0) - before.get(p, 0.0) for p in sorted({*before, *report["weights"]})
        }
    proxies = [
        {"weights": space.as_dict(w), "scores": s, "objective": objective_value(s, c, sets)}
        for w, s in zip(points, scores)
    ]
    return OptimizeResult(
        report,
        [space.as_dict(w) for w in design],
        proxies,
        scored_now,
        (surrogate.cv_predicted, np.log([p["objective"] for p in proxies])),
        _fingerprint(space),
    )


def _design(space: Space, previous: OptimizationRecord | None, cfg: OptimizeConfig) -> list[np.ndarray]:
    """The first points: the pool's previous design (its scores are cached) when there is one, plus fresh
    samples: max(samples, samples_per_partition x partitions) in all for a new pool, warm_samples per new or
    changed partition when its partitions changed, none otherwise."""
    if previous is not None and previous.partitions == _fingerprint(space):  # the same search again: all cached
        same = [np.array([d[p] for p in space.partitions]) for d in previous.design]
        if all(space.feasible(w) for w in same):
            return same
    points = [space.uniform, space.natural, *space.vertices()]
    if previous is None:
        fresh = max(cfg.samples, cfg.samples_per_partition * len(space.partitions)) - len(points)
    else:  # what the new data does not touch is reused: every point scored before, with 0 for new partitions
        old = [space.embed(d) for d in previous.design + previous.round_points]
        points += [w for w in old if w is not None]
        now = _fingerprint(space)
        fresh = cfg.warm_samples * sum(units != previous.partitions.get(p) for p, units in now.items())
    rng = np.random.default_rng([cfg.seed, len(space.partitions), len(points)])
    points += space.sample(rng, max(0, fresh))
    unique: dict[tuple, np.ndarray] = {}
    for w in points:
        unique.setdefault(tuple(w), w)
    return list(unique.values())


def _fingerprint(space: Space) -> dict[str, list[str]]:
    return {p: list(u) for p, u in space.units.items()}


def save(pool: Pool, result: OptimizeResult) -> None:
    """The pool's latest search: its report, design and every point scored (the next search's warm start)."""
    design = {tuple(sorted(d.items())) for d in result.design}
    rounds = [p["weights"] for p in result.proxies if tuple(sorted(p["weights"].items())) not in design]
    record = OptimizationRecord(result.report, result.design, rounds, result.partitions, result.proxies)
    pool.store.save_optimization(pool.name, record)


VERIFY_ORDERS = 3  # data orders each compared mixture is trained with: a mean and its standard error


def verify(pool: Pool, report: dict) -> dict:
    """Train the seed at the fixed budget on the optimized, uniform and natural weights and on the best
    subset (its units evenly), and score them: the claim, checked by real training."""
    steps, models = pool.steps, pool.models
    space = make_space(models, pool.settings.optimize, report["budget_tokens"])
    subset = report.get("best_subset") or []
    candidates = {
        "optimized": space.unit_weights(np.array([report["weights"][p] for p in space.partitions])),
        "uniform": space.unit_weights(space.uniform),
        "natural": space.unit_weights(space.natural),
    }
    if subset:
        candidates["best_subset"] = {u: 1.0 / len(subset) for u in subset}
    first = pool.settings.fidelity.data_seed
    orders = [Truth(FIXED, report["budget_tokens"], first + i) for i in range(VERIFY_ORDERS)]
    jobs = [(name, shares, truth) for name, shares in candidates.items() for truth in orders]
    trained = pool.map_fn(
        "verify",
        lambda job: train_truth(steps, [pool.unit(u) for u in sorted(job[1])], job[2], job[1]),
        jobs,
        lambda job: f"{job[0]} (data order {job[2].data_seed})",
    )
    sets = sorted(pool.eval_sets)
    c = objective_weights(pool.settings.optimize.objective, sets)
    runs: dict[str, list[dict[str, float]]] = {}
    metas: dict[str, dict] = {}
    for (name, _, _), meta in zip(jobs, trained):
        runs.setdefault(name, []).append(truth_perplexities(steps, meta, pool.eval_sets))
        metas.setdefault(name, meta)
    out: dict = {name: {s: float(np.mean([r[s] for r in got])) for s in sets} for name, got in runs.items()}
    out["data_orders"] = [t.data_seed for t in orders]
    out["objective_by_order"] = {name: [objective_value(r, c, sets) for r in got] for name, got in runs.items()}
    out["objective"] = {name: float(np.mean(v)) for name, v in out["objective_by_order"].items()}
    out["objective_se"] = {
        name: float(np.std(v, ddof=1) / math.sqrt(len(v))) for name, v in out["objective_by_order"].items()
    }
    out["verdicts"] = {
        name: verdict(out["objective"]["optimized"], out["objective_se"]["optimized"], m, out["objective_se"][name])
        for name, m in out["objective"].items()
        if name != "optimized"
    }
    out["tokens_per_partition"] = {
        name: _tokens_per_partition(meta, models, pool.settings.train.seq_len) for name, meta in metas.items()
    }
    return out


def verified_lines(verified: dict) -> list[str]:
    """The verified comparison in words: each mixture's objective, mean +- standard error over the data orders,
    and whether the optimized weights beat it beyond the noise."""
    o, se = verified["objective"], verified["objective_se"]
    n = len(verified["data_orders"])
    lines = [
        f"verified by training at the budget ({n} data orders each; objective perplexity, mean +- standard error): "
        + ", ".join(f"{k} {o[k]:.3f} +- {se[k]:.3f}" for k in o)
    ]
    lines += [f"optimized {v} {name}" for name, v in verified["verdicts"].items()]
    return lines


def verdict(optimized: float, optimized_se: float, other: float, other_se: float) -> str:
    """'beats' / 'loses to' only when the objectives differ by more than 2 standard errors of the difference."""
    margin = 2 * math.hypot(optimized_se, other_se)
    if other - optimized > margin:
        return "beats"
    if optimized - other > margin:
        return "loses to"
    return "within noise of"


def _tokens_per_partition(meta: dict, models: Mapping[str, UnitModel], seq_len: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for unit, n in meta["sequences_per_unit"].items():
        out[models[unit].partition] = out.get(models[unit].partition, 0) + n * seq_len
    return out


def best_subset(ranking, c: np.ndarray, sets: Sequence[str]) -> list[str]:
    """The ranking's best mixture under the objective, by its uniform-average (fixed-budget) scores."""
    full = [r for r in ranking if r.evaluated_fraction == 1.0] or list(ranking)
    return min(full, key=lambda r: objective_value(r.proxy_scores or r.scores, c, sets)).units


# ---- the whole of it --------------------------------------------------------------------


def check(pool: Pool) -> None:
    """A bad objective or bounds fail here, before any training."""
    objective_weights(pool.settings.optimize.objective, sorted(pool.eval_sets))
    make_space({u.name: u for u in pool.units}, pool.settings.optimize, FIXED.tokens(pool))


def optimize(
    pool: Pool, ranking: list[RankedMixture] | None = None, verify_by_training: bool = False
) -> OptimizeResult:
    """Search a pool's weights (warm-started from its last search), verify them by training if asked, keep the
    result. Without a ranking, the pool's (everything cached is reused) is computed first."""
    check(pool)
    if ranking is None:
        pipeline.train(pool)
        ranking, _ = pipeline.score(pool)
    sets = sorted(pool.eval_sets)
    subset = best_subset(ranking, objective_weights(pool.settings.optimize.objective, sets), sets)
    result = search(pool, subset)
    if verify_by_training:
        result.report["verified"] = verify(pool, result.report)
    save(pool, result)
    return result
