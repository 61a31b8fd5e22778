"""Fidelity runs in MLflow: figures as metrics, one scatter plot per evaluation set."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from mlflow import MlflowClient

from dataassess.rank import macro
from dataassess.store import Store

from .tracking import log_values, open_run

FIDELITY_EXPERIMENT = "dataassess-fidelity"
HEADLINE = (
    "spearman",
    "pearson",
    "kendall",
    "decision_accuracy",
    "resolvable_decision_accuracy",
    "n_resolvable_pairs",
    "top1_agreement",
    "top3_agreement",
)


def _metrics(name: str, figs: dict) -> dict[str, float]:
    """One set's (or the macro's) figures as flat metric names: the score's, the baselines', the ceiling's."""
    flat = {f"{name}.{k}": figs.get(k) for k in HEADLINE}
    for who, of in [
        *figs["baselines"].items(),
        *(("ceiling." + k, v) for k, v in figs["ceiling"].items() if k != "n_mixtures"),
    ]:
        flat.update({f"{name}.{who}.{k}": of.get(k) for k in ("spearman", "resolvable_decision_accuracy")})
    return {k: float(v) for k, v in flat.items() if isinstance(v, (int, float)) and not math.isnan(v)}


def scatter(rows: list[dict], eval_set: str | None, score: str = "proxy") -> Figure:
    """A score (the proxy, or its calibrated prediction) against truth perplexity, coloured by k,
    with the y = x diagonal and a least-squares fit."""
    pick = (lambda r, k: macro(r[k])) if eval_set is None else (lambda r, k: r[k][eval_set])
    x, y = np.array([pick(r, "truth") for r in rows]), np.array([pick(r, score) for r in rows])
    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.subplots()
    ax.scatter(x, y, c=[r["k"] for r in rows], cmap="viridis", s=28)
    lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
    ax.plot([lo, hi], [lo, hi], color="grey", ls="--", lw=0.8, label="y = x")
    if len(x) > 1 and np.std(x) > 0:
        slope, icpt = np.polyfit(x, y, 1)
        ax.plot(
            [lo, hi],
            [slope * lo + icpt, slope * hi + icpt],
            color="C3",
            lw=1,
            label=f"fit y = {slope:.2f}x + {icpt:.1f}",
        )
    ax.set_xlabel("truth perplexity (trained on the mixture)")
    ax.set_ylabel(
        "calibrated prediction (leave-one-out)" if score == "calibrated" else "proxy perplexity (merged unit models)"
    )
    ax.set_title(f"{'calibration' if score == 'calibrated' else 'fidelity'}: {eval_set or 'macro'} (colour: k)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def log_fidelity(client: MlflowClient, store: Store, report: dict, rows: list[dict], pool: str) -> str:
    metrics = {}
    for name, figs in [("macro", report["macro"]), *report["eval_sets"].items()]:
        metrics.update(_metrics(name, figs))
    sigma = report["noise"]["sigma_log_ppl"]
    metrics.update({f"{name}.noise_sigma": v for name, v in sigma.items() if v is not None and not math.isnan(v)})
    params = {f"settings.{k}": v for k, v in report["settings"].items()}
    params.update(budget=report["budget"], budget_tokens=report.get("budget_tokens", "k x units.tokens"))
    calibration = report.get("calibration") or {}
    for name, c in calibration.get("sets", {}).items():
        params.update({f"calibration.{name}.{k}": c[k] for k in ("intercept", "alpha", "sigma")})
        for feature, coef in zip(calibration["features"], c["coef"]):  # e.g. coef_log_proxy_perplexity_x_log_k
            params[f"calibration.{name}.coef_{'_'.join(feature.split())}"] = coef
    method = report.get("merge", {}).get("method", "linear")
    params["merge"] = method
    params.update({f"merge.{k}": v for k, v in report.get("merge", {}).get("params", {}).items()})
    tags = {"dataassess.pool": pool, "dataassess.budget": report["budget"], "dataassess.merge": method}
    name = f"{pool} fidelity ({report['budget']} budget, {method} merge)"
    with open_run(client, FIDELITY_EXPERIMENT, store, name, tags) as run_id:
        log_values(client, run_id, params, metrics)
        client.log_dict(run_id, report, "fidelity.json")
        client.log_dict(run_id, {"rows": rows}, "mixtures.json")  # the figures are recomputable from these
        for s in [None, *sorted(report["eval_sets"])]:
            client.log_figure(run_id, scatter(rows, s), f"plots/scatter_{s or 'macro'}.png")
            if rows and "calibrated" in rows[0]:  # a calibrated budget: its predictions too
                client.log_figure(run_id, scatter(rows, s, "calibrated"), f"plots/calibration_{s or 'macro'}.png")
    return run_id
