"""Fidelity: do merged-model proxies rank mixtures as models really trained on them do?

Ground truth is the paper's: the seed continue-pretrained on the shuffled
concatenation of a mixture's units, with k x the unit token budget and the same
hyperparameters. Proxies are parameter averages of the unit models. The study runs
the pipeline's own steps (prepare, train_units, Steps.score) and adds the ground truths.
"""
from __future__ import annotations

import itertools
import random
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy import stats

from . import pipeline
from .config import Settings
from .merge import group_weights
from .rank import macro
from .steps import Steps, mixture_of, train_seed_copy
from .store import Store, short_key, write_json
from .train import to_sequences
from .types import Mixture, Unit, UnitModel
from .units import unit_tokens


def sample_mixtures(units: Sequence[str], n: int, k_max: int, rng_seed: int = 0) -> list[tuple[str, ...]]:
    """Up to n mixtures of 2..k_max units, stratified by size k (round-robin over k)."""
    rng = random.Random(rng_seed)
    pools = {}
    for k in range(2, min(k_max, len(units)) + 1):
        combos = list(itertools.combinations(sorted(units), k))
        rng.shuffle(combos)
        pools[k] = combos
    out: list[tuple[str, ...]] = []
    while len(out) < n and any(pools.values()):
        for k in sorted(pools):
            if pools[k] and len(out) < n:
                out.append(pools[k].pop())
    return out


# ---- ground truth -------------------------------------------------------------------

def union_sequences(store: Store, units: Sequence[Unit], seq_len: int) -> torch.Tensor:
    """The exact union of the units' training sequences (the loop shuffles them)."""
    return torch.cat([to_sequences(unit_tokens(store, u), seq_len) for u in units])


def truth_key(units: Sequence[Unit], steps: Steps) -> str:
    return short_key({"truth": sorted(u.digest for u in units), "seed": steps.seed.digest, "train": steps.settings.train.digest()})


def train_truth(steps: Steps, units: Sequence[Unit]) -> dict:
    """Ground truth for a mixture, cached by (unit digests, seed, train config)."""
    key = truth_key(units, steps)
    if (done := steps.store.finished(key, "truth")) is not None:
        return done
    seqs = union_sequences(steps.store, units, steps.settings.train.seq_len)
    total = sum(u.tokens for u in units)
    result = train_seed_copy(steps.store, "truth", key, seqs, total, steps.seed, steps.settings,
                             "truth " + "+".join(u.name for u in units), steps.progress)
    meta = {"key": key, "units": [u.name for u in units], "unit_digests": [u.digest for u in units], "tokens": result.tokens,
            "final_loss": result.final_loss, "wall_s": result.wall_s}
    write_json(steps.store.meta(key, "truth"), meta)
    return meta


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
            draws = stats.bootstrap((np.asarray(proxy), np.asarray(truth)), statistic, paired=True, vectorized=False,
                                    n_resamples=n_boot, method="percentile", rng=np.random.default_rng(seed)).bootstrap_distribution
            out[f"{name}_ci"] = [float(v) for v in np.nanpercentile(draws, [2.5, 97.5])] if np.isfinite(draws).any() else [float("nan")] * 2
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
    report: dict  # {"eval_sets": {name: figures}, "macro": figures, "by_k": {...}, "variants": {...}, "settings": {...}}
    rows: list[dict]  # per mixture: units, proxy, truth, baseline scores
    quarantined: list[str]


def run_fidelity(corpus, settings: Settings, eval_sets_dir=None, n: int = 20, k_max: int = 3,
                 map_fn: pipeline.MapFn | None = None, progress: bool = True, n_boot: int = 1000) -> FidelityResult:
    """Train what is missing (unit models, ground truths), score, compare."""
    map_fn = map_fn or pipeline.serial_map(progress)
    inputs = pipeline.prepare(corpus, settings, eval_sets_dir, progress=progress)
    with Steps(settings, inputs.seed, progress) as steps:
        models, _ = pipeline.train_units(steps, inputs.units, map_fn)
        mixtures = sample_mixtures(list(models), n, k_max, settings.train.seed)
        if len(mixtures) < 3:
            raise ValueError(f"need at least 3 mixtures of 2+ units to measure fidelity; the pool has {len(models)} units")
        by_name = {u.name: u for u in inputs.units}
        truths = map_fn("ground truth", lambda mix: train_truth(steps, [by_name[u] for u in mix]), mixtures, " + ".join)
        rows = [_row(steps, inputs.eval_sets, models, mix, truth) for mix, truth in zip(mixtures, truths)]
        summary = _settings_summary(steps, len(inputs.units), n, k_max)
    sets = sorted(inputs.eval_sets)
    report = {"settings": summary, **_figures_of(rows, sets, n_boot)}
    report["by_k"] = {str(k): _figures_of(group, sets, n_boot) for k, group in _groups_by_k(rows).items() if len(group) >= 3}
    report["variants"] = {"uniform_vs_tokens": _variant(rows, "proxy", "proxy_tokens"),
                          "uniform_vs_group_merge": _variant(rows, "proxy", "proxy_group_merge")}
    return FidelityResult(report, rows, inputs.quarantined)


def _perplexities(steps: Steps, mixture: Mixture, eval_sets) -> dict[str, float]:
    return {n: s["perplexity"] for n, s in sorted(steps.score(mixture, eval_sets).items())}


def _row(steps: Steps, eval_sets: dict[str, str], models: dict[str, UnitModel], mix: tuple[str, ...], truth: dict) -> dict:
    """One sampled mixture: its proxies (uniform, token-weighted, group merge), truth and the naive baseline."""
    singles = [_perplexities(steps, mixture_of([u], models, "uniform"), eval_sets) for u in mix]
    truth_scores = steps.score_weights(f"truth:{truth['key']}", [steps.store.weights(truth["key"], "truth")], None, eval_sets)
    row = {
        "units": list(mix), "k": len(mix),
        "proxy": _perplexities(steps, mixture_of(mix, models, "uniform"), eval_sets),
        "proxy_tokens": _perplexities(steps, mixture_of(mix, models, "tokens"), eval_sets),
        "truth": {n: s["perplexity"] for n, s in sorted(truth_scores.items())},
        "baseline": {s: float(np.mean([single[s] for single in singles])) for s in eval_sets},
    }
    partitions: dict[str, list[str]] = {}
    for u in mix:
        partitions.setdefault(models[u].partition, []).append(u)
    if len(partitions) > 1 and any(len(g) > 1 for g in partitions.values()):  # a group merge differs from the plain one
        groups = list(partitions.values())
        ordered = [u for g in groups for u in g]
        weights = tuple(group_weights([[1.0] * len(g) for g in groups]))
        row["proxy_group_merge"] = _perplexities(steps, Mixture(tuple(ordered), tuple(models[u].key for u in ordered), weights), eval_sets)
    return row


def _figures_of(rows: list[dict], sets: list[str], n_boot: int) -> dict:
    def column(key, name=None):
        return [macro(r[key]) if name is None else r[key][name] for r in rows]

    per_set = {s: figures(column("proxy", s), column("truth", s), column("baseline", s), n_boot) for s in sets}
    return {"eval_sets": per_set, "macro": figures(column("proxy"), column("truth"), column("baseline"), n_boot)}


def _groups_by_k(rows: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in rows:
        out.setdefault(r["k"], []).append(r)
    return dict(sorted(out.items()))


def _variant(rows: list[dict], a: str, b: str) -> dict:
    """Macro Spearman with truth for two proxy variants, on the mixtures where both exist."""
    rows = [r for r in rows if b in r]
    if len(rows) < 3:
        return {"n_mixtures": len(rows), "note": "too few mixtures where the variants differ"}
    truth = [macro(r["truth"]) for r in rows]
    return {"n_mixtures": len(rows), a: correlations([macro(r[a]) for r in rows], truth), b: correlations([macro(r[b]) for r in rows], truth)}


def _settings_summary(steps: Steps, n_units: int, n: int, k_max: int) -> dict:
    s = steps.settings
    return {"params": sum(p.numel() for p in steps.seed.load_model().parameters()), "unit_tokens": s.units.tokens, "lr": s.train.lr,
            "steps_per_unit": s.units.tokens // s.train.batch_tokens, "batch_tokens": s.train.batch_tokens,
            "n_requested": n, "k_max": k_max, "n_units": n_units, "seed_digest": steps.seed.digest}
