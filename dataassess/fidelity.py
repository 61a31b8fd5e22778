"""Fidelity: do merged-model proxies rank mixtures as models really trained on them do?

Ground truth is the paper's: the seed continue-pretrained on the shuffled
concatenation of a mixture's units, with k x the unit token budget and the same
hyperparameters. Proxies are parameter averages of the unit models.
"""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from .config import Settings
from .pipeline import Pool, configure_torch, mixture_weights, score_mixture, train_unit
from .rank import macro
from .seed import Seed
from .store import digest_json, read_json, write_json
from .train import resolve_device, to_sequences, train_lm
from .units import Unit
from .weights import save_weights


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


def union_sequences(units: Sequence[Unit], seq_len: int) -> torch.Tensor:
    """The exact union of the units' training sequences (the loop shuffles them)."""
    return torch.cat([to_sequences(u.load_tokens(), seq_len) for u in units])


def truth_key(units: Sequence[Unit], seed: Seed, settings: Settings) -> str:
    return digest_json({"truth": sorted(u.digest for u in units), "seed": seed.digest, "train": settings.train.digest()})[:24]


def train_truth(units: Sequence[Unit], seed: Seed, settings: Settings, progress: bool = True) -> dict:
    """Ground truth for a mixture, cached by (unit digests, seed, train config)."""
    key = truth_key(units, seed, settings)
    folder = Path(settings.store) / "truth" / key
    if (folder / "meta.json").exists():
        return read_json(folder / "meta.json")
    configure_torch(settings)
    model = seed.load_model()
    seqs = union_sequences(units, settings.train.seq_len)
    total = len(units) * units[0].tokens
    result = train_lm(model, seqs, settings.train, total, resolve_device(settings.device), desc="truth " + "+".join(u.name for u in units), progress=progress)
    save_weights(model.cpu(), folder / "model.safetensors")
    meta = {"key": key, "units": [u.name for u in units], "unit_digests": [u.digest for u in units], "tokens": result.tokens,
            "final_loss": result.final_loss, "wall_s": result.wall_s, "weights": str(folder / "model.safetensors")}
    write_json(folder / "meta.json", meta)
    return meta


def score_truth(meta: dict, seed: Seed, eval_sets: dict[str, str], settings: Settings) -> dict[str, float]:
    scores, _ = score_mixture([meta["weights"]], [f"truth:{meta['key']}"], seed, eval_sets, settings)
    return {n: s["perplexity"] for n, s in sorted(scores.items())}


# ---- figures ------------------------------------------------------------------

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


def _corr(proxy, truth) -> dict:
    if len(proxy) < 3 or np.std(proxy) == 0 or np.std(truth) == 0:
        return {"pearson": float("nan"), "spearman": float("nan"), "kendall": float("nan")}
    return {
        "pearson": float(stats.pearsonr(proxy, truth).statistic),
        "spearman": float(stats.spearmanr(proxy, truth).statistic),
        "kendall": float(stats.kendalltau(proxy, truth).statistic),
    }


def bootstrap_ci(proxy, truth, n_boot: int = 1000, seed: int = 0) -> dict:
    """95% percentile intervals of the three correlations over resampled mixtures."""
    rng = np.random.default_rng(seed)
    proxy, truth = np.asarray(proxy), np.asarray(truth)
    draws = {"pearson": [], "spearman": [], "kendall": []}
    for _ in range(n_boot):
        idx = rng.integers(0, len(proxy), len(proxy))
        c = _corr(proxy[idx], truth[idx])
        for k, v in c.items():
            if not math.isnan(v):
                draws[k].append(v)
    return {f"{k}_ci": [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else [float("nan")] * 2 for k, v in draws.items()}


def figures(proxy: Sequence[float], truth: Sequence[float], baseline: Sequence[float], n_boot: int = 1000) -> dict:
    """How well `proxy` (and the naive `baseline`) predict `truth` across mixtures."""
    proxy, truth, baseline = list(map(float, proxy)), list(map(float, truth)), list(map(float, baseline))
    out = {"n_mixtures": len(proxy), **_corr(proxy, truth), **bootstrap_ci(proxy, truth, n_boot)}
    out["decision_accuracy"] = decision_accuracy(proxy, truth)
    out["top1_agreement"] = top_k_agreement(proxy, truth, 1)
    out["top3_agreement"] = top_k_agreement(proxy, truth, 3)
    base = _corr(baseline, truth)
    out.update({f"baseline_{k}": v for k, v in base.items()})
    out["baseline_decision_accuracy"] = decision_accuracy(baseline, truth)
    out["mean_relative_error"] = float(np.mean([(p - t) / t for p, t in zip(proxy, truth)]))
    return out


# ---- the whole study ----------------------------------------------------------

@dataclass
class FidelityResult:
    report: dict  # {"eval_sets": {name: figures}, "macro": figures, "variants": {...}, "settings": {...}}
    rows: list[dict]  # per mixture: units, proxy, truth, baseline scores


def run_fidelity(pool: Pool, settings: Settings, n: int = 20, k_max: int = 3, progress: bool = True, n_boot: int = 1000) -> FidelityResult:
    """Train what is missing (unit models, ground truths), score, compare."""
    by_name = {u.name: u for u in pool.units}
    metas = {u.name: train_unit(u, pool.seed, settings, progress) for u in tqdm(pool.units, desc="unit models", disable=not progress)}
    mixtures = sample_mixtures(list(by_name), n, k_max, settings.train.seed)
    if len(mixtures) < 3:
        raise ValueError(f"need at least 3 mixtures of 2+ units to measure fidelity; the pool has {len(by_name)} units")
    single = {name: _proxy(pool, settings, [metas[name]], None) for name in metas}
    rows = []
    for mix in tqdm(mixtures, desc="ground truth", disable=not progress):
        ms = [metas[u] for u in mix]
        truth_meta = train_truth([by_name[u] for u in mix], pool.seed, settings, progress)
        row = {
            "units": list(mix), "k": len(mix),
            "proxy": _proxy(pool, settings, ms, None),
            "proxy_tokens": _proxy(pool, settings, ms, mixture_weights(ms, "tokens")),
            "truth": score_truth(truth_meta, pool.seed, pool.eval_sets, settings),
            "baseline": {s: float(np.mean([single[u][s] for u in mix])) for s in pool.eval_sets},
        }
        groups: dict[str, list[dict]] = {}
        for m in ms:
            groups.setdefault(m["partition"], []).append(m)
        if len(groups) > 1 and any(len(g) > 1 for g in groups.values()):
            row["proxy_macro_merge"] = _proxy(pool, settings, ms, [1.0 / (len(groups) * len(groups[m["partition"]])) for m in ms])
        rows.append(row)
    report = {"eval_sets": {}, "settings": _settings_summary(pool, settings, n, k_max)}
    for s in sorted(pool.eval_sets):
        report["eval_sets"][s] = figures([r["proxy"][s] for r in rows], [r["truth"][s] for r in rows], [r["baseline"][s] for r in rows], n_boot)
    report["macro"] = figures(*[[macro(r[key]) for r in rows] for key in ("proxy", "truth", "baseline")], n_boot=n_boot)
    report["by_k"] = {str(k): _by_size(group, n_boot) for k, group in _groups_by_k(rows).items() if len(group) >= 3}
    report["variants"] = {"uniform_vs_tokens": _variant(rows, "proxy", "proxy_tokens"), "micro_vs_macro_merge": _variant(rows, "proxy", "proxy_macro_merge")}
    return FidelityResult(report, rows)


def _groups_by_k(rows: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in rows:
        out.setdefault(r["k"], []).append(r)
    return dict(sorted(out.items()))


def _by_size(rows: list[dict], n_boot: int) -> dict:
    """Figures among mixtures of one size: the proxy's bias grows with k, so within-k ranking is tighter."""
    sets = sorted(rows[0]["truth"])
    per_set = {s: figures([r["proxy"][s] for r in rows], [r["truth"][s] for r in rows], [r["baseline"][s] for r in rows], n_boot) for s in sets}
    return {"eval_sets": per_set, "macro": figures(*[[macro(r[key]) for r in rows] for key in ("proxy", "truth", "baseline")], n_boot=n_boot)}


def _proxy(pool: Pool, settings: Settings, metas: list[dict], weights) -> dict[str, float]:
    scores, _ = score_mixture([m["weights"] for m in metas], [m["key"] for m in metas], pool.seed, pool.eval_sets, settings, weights)
    return {n: s["perplexity"] for n, s in sorted(scores.items())}


def _variant(rows: list[dict], a: str, b: str) -> dict:
    """Macro Spearman with truth for two proxy variants, on the mixtures where both exist."""
    rows = [r for r in rows if b in r]
    if len(rows) < 3:
        return {"n_mixtures": len(rows), "note": "too few mixtures where the variants differ"}
    truth = [macro(r["truth"]) for r in rows]
    return {"n_mixtures": len(rows), a: _corr([macro(r[a]) for r in rows], truth), b: _corr([macro(r[b]) for r in rows], truth)}


def _settings_summary(pool: Pool, settings: Settings, n: int, k_max: int) -> dict:
    model = pool.seed.load_model()
    return {"params": sum(p.numel() for p in model.parameters()), "unit_tokens": settings.units.tokens, "lr": settings.train.lr,
            "steps_per_unit": settings.units.tokens // settings.train.batch_tokens, "batch_tokens": settings.train.batch_tokens,
            "n_requested": n, "k_max": k_max, "n_units": len(pool.units), "seed_digest": pool.seed.digest}
