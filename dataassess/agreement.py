"""How well a fidelity study's scores predict its ground truths, from its rows alone.

A row is one sampled mixture: its proxy perplexities, its ground truth's, a replicate truth's (the same mixture
trained with another data order) for a stratified subset, and the naive baseline's. Everything a report says is
computed here from those rows and the seed's perplexities, so anyone can recompute it from the JSON.

- noise: sigma, the data-order noise of log perplexity, from the replicate pairs (Var(log t - log t') = 2 sigma^2);
- a decision: two mixtures whose truths differ by more than 2*sqrt(2)*sigma in log perplexity, a difference
  the data order alone rarely makes; the resolvable-decision accuracy is the share of decisions a score gets
  right (a tie in the score counts half);
- the ceiling: on the replicated mixtures, the score and the replicate truth each measured against the truth.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats

from .rank import macro

RESOLVE = 2 * math.sqrt(2)  # a decision: truths further apart than this many sigma of log perplexity


def values(rows: Sequence[dict], column: str, eval_set: str | None) -> np.ndarray:
    """One column's perplexity on a set (None: the macro, the geometric mean over sets) for each row."""
    return np.array([r[column][eval_set] if eval_set is not None else macro(r[column]) for r in rows], dtype=float)


def noise(rows: Sequence[dict], eval_set: str | None) -> float:
    """sigma of log perplexity between two data orders of one mixture (nan without replicates)."""
    replicated = [r for r in rows if r.get("truth_replicate")]
    if not replicated:
        return float("nan")
    d = np.log(values(replicated, "truth", eval_set)) - np.log(values(replicated, "truth_replicate", eval_set))
    return float(math.sqrt(np.mean(d**2) / 2))


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, k=1)


def decision_accuracy(score: Sequence[float], truth: Sequence[float]) -> float:
    """Share of pairs that score and truth order the same way (one side tied: half)."""
    score, truth = np.asarray(score, dtype=float), np.asarray(truth, dtype=float)
    i, j = _pairs(len(score))
    if not len(i):
        return float("nan")
    s, t = np.sign(np.subtract(score[i], score[j])), np.sign(np.subtract(truth[i], truth[j]))
    return float(np.mean(np.where(s == t, 1.0, np.where((s == 0) | (t == 0), 0.5, 0.0))))


def resolvable(score: np.ndarray, truth: np.ndarray, threshold: float) -> tuple[float, int]:
    """Accuracy on the pairs whose truths differ by more than `threshold` in log perplexity, and their number."""
    i, j = _pairs(len(score))
    apart = np.abs(np.log(truth[i]) - np.log(truth[j])) > threshold  # all False when sigma is unknown (nan)
    if not apart.any():
        return float("nan"), 0
    s, t = np.sign(score[i] - score[j])[apart], np.sign(truth[i] - truth[j])[apart]
    return float(np.mean(np.where(s == t, 1.0, np.where(s == 0, 0.5, 0.0)))), int(apart.sum())


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def headline(score: np.ndarray, truth: np.ndarray, threshold: float) -> dict:
    """The three figures every score gets: Spearman, decision accuracy, resolvable-decision accuracy."""
    acc, n = resolvable(score, truth, threshold)
    return {
        "spearman": spearman(score, truth),
        "decision_accuracy": decision_accuracy(score, truth),
        "resolvable_decision_accuracy": acc,
        "n_resolvable_pairs": n,
    }


def _interval(statistic, score: np.ndarray, truth: np.ndarray, n_boot: int, seed: int) -> list[float]:
    """95% percentile interval of statistic(score, truth) over mixtures resampled with replacement."""
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(score), len(score))
        draws.append(statistic(score[idx], truth[idx]))
    draws = np.array(draws, dtype=float)
    if not np.isfinite(draws).any():
        return [float("nan")] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [float(v) for v in np.nanpercentile(draws, [2.5, 97.5])]


def figures(score: np.ndarray, truth: np.ndarray, threshold: float, n_boot: int = 1000) -> dict:
    """Every figure of one score against the truth, with 95% bootstrap intervals."""
    out = {"n_mixtures": len(score), **headline(score, truth, threshold)}
    if len(score) >= 3 and np.ptp(score) > 0 and np.ptp(truth) > 0:
        out["pearson"] = float(stats.pearsonr(score, truth).statistic)
        out["kendall"] = float(stats.kendalltau(score, truth).statistic)
    else:
        out["pearson"] = out["kendall"] = float("nan")
    out["spearman_ci"] = _interval(spearman, score, truth, n_boot, 0)
    out["decision_accuracy_ci"] = _interval(decision_accuracy, score, truth, n_boot, 1)
    out["resolvable_decision_accuracy_ci"] = _interval(
        lambda s, t: resolvable(s, t, threshold)[0], score, truth, n_boot, 2
    )
    best = lambda x, k: set(np.argsort(x, kind="stable")[: min(k, len(x))])  # noqa: E731
    out["top1_agreement"] = len(best(score, 1) & best(truth, 1)) / min(1, len(score))
    out["top3_agreement"] = len(best(score, 3) & best(truth, 3)) / min(3, len(score))
    out["mean_relative_error"] = float(np.mean((score - truth) / truth))
    return out


def set_figures(
    rows: Sequence[dict],
    eval_set: str | None,
    sigma: float,
    seed_perplexity: float,
    score_column: str = "proxy",
    n_boot: int = 1000,
) -> dict:
    """One evaluation set's (or the macro's) figures: the score's, the baselines' side by side, and the ceiling
    on the replicated mixtures (the score's and the replicate truth's, each against the truth)."""
    threshold = RESOLVE * sigma
    truth = values(rows, "truth", eval_set)
    out = figures(values(rows, score_column, eval_set), truth, threshold, n_boot)
    out["threshold_log_ppl"] = threshold
    if score_column != "proxy":
        out["raw"] = headline(values(rows, "proxy", eval_set), truth, threshold)
    out["baselines"] = {
        "naive": headline(values(rows, "baseline", eval_set), truth, threshold),
        "seed": headline(np.full(len(rows), seed_perplexity), truth, threshold),
    }
    replicated = [r for r in rows if r.get("truth_replicate")]
    again = values(replicated, "truth", eval_set) if replicated else np.array([])
    out["ceiling"] = {
        "n_mixtures": len(replicated),
        "score": headline(values(replicated, score_column, eval_set), again, threshold) if replicated else {},
        "replicate": headline(values(replicated, "truth_replicate", eval_set), again, threshold) if replicated else {},
    }
    return out


def report_figures(
    rows: Sequence[dict],
    sets: Sequence[str],
    seed: dict[str, float],
    score_column: str = "proxy",
    n_boot: int = 1000,
) -> dict:
    """noise, per-set and macro figures, and the same within each size k (3 mixtures or more), from the rows."""
    sigma = {name: noise(rows, name) for name in sets}
    sigma["macro"] = noise(rows, None)
    seed_macro = macro({s: seed[s] for s in sets})

    def of(among: Sequence[dict]) -> dict:
        return {
            "eval_sets": {s: set_figures(among, s, sigma[s], seed[s], score_column, n_boot) for s in sets},
            "macro": set_figures(among, None, sigma["macro"], seed_macro, score_column, n_boot),
        }

    by_k: dict[int, list[dict]] = {}
    for r in rows:
        by_k.setdefault(r["k"], []).append(r)
    return {
        "noise": {"sigma_log_ppl": sigma, "n_replicates": sum(1 for r in rows if r.get("truth_replicate"))},
        **of(rows),
        "by_k": {str(k): of(group) for k, group in sorted(by_k.items()) if len(group) >= 3},
    }


TASK_FIGURE_METRICS = ("gold_prob_norm", "choice_accuracy")  # higher is better; gold_bpb is in the main figures


def task_figures(rows: Sequence[dict]) -> dict:
    """Per task set, the proxy's agreement with the truths on each continuous task metric beside gold_bpb:
    Spearman and decision accuracy across the mixtures, from the rows' "tasks"."""
    with_tasks = [r for r in rows if r.get("tasks")]
    if not with_tasks:
        return {}
    out = {}
    for s in sorted(with_tasks[0]["tasks"]["proxy"]):
        for m in TASK_FIGURE_METRICS:
            if m not in with_tasks[0]["tasks"]["proxy"][s]:
                continue
            proxy = np.array([r["tasks"]["proxy"][s][m] for r in with_tasks])
            truth = np.array([r["tasks"]["truth"][s][m] for r in with_tasks])
            out.setdefault(s, {})[m] = {
                "n_mixtures": len(with_tasks),
                "spearman": spearman(proxy, truth),
                "decision_accuracy": decision_accuracy(proxy, truth),
            }
    return out
