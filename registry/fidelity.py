"""Fidelity runs in MLflow: figures as metrics, one scatter plot per evaluation set."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from mlflow import MlflowClient

from dataassess.rank import macro

from .tracking import log_values, open_run

FIDELITY_EXPERIMENT = "dataassess-fidelity"
HEADLINE = ("pearson", "spearman", "kendall", "decision_accuracy", "baseline_pearson", "baseline_spearman", "top1_agreement", "top3_agreement")


def scatter(rows: list[dict], eval_set: str | None) -> Figure:
    """Proxy against truth perplexity, with the y = x diagonal and a least-squares fit."""
    pick = (lambda r, k: macro(r[k])) if eval_set is None else (lambda r, k: r[k][eval_set])
    x, y = np.array([pick(r, "truth") for r in rows]), np.array([pick(r, "proxy") for r in rows])
    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.subplots()
    ax.scatter(x, y, c=[r["k"] for r in rows], cmap="viridis", s=28)
    lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
    ax.plot([lo, hi], [lo, hi], color="grey", ls="--", lw=0.8, label="y = x")
    if len(x) > 1 and np.std(x) > 0:
        slope, icpt = np.polyfit(x, y, 1)
        ax.plot([lo, hi], [slope * lo + icpt, slope * hi + icpt], color="C3", lw=1, label=f"fit y = {slope:.2f}x + {icpt:.1f}")
    ax.set_xlabel("truth perplexity (trained on the union)")
    ax.set_ylabel("proxy perplexity (merged unit models)")
    ax.set_title(f"fidelity: {eval_set or 'macro'}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def log_fidelity(client: MlflowClient, store: Path, report: dict, rows: list[dict], pool: str) -> str:
    metrics = {}
    for name, figs in [("macro", report["macro"]), *report["eval_sets"].items()]:
        for k in HEADLINE:
            v = figs.get(k)
            if isinstance(v, float) and not math.isnan(v):
                metrics[f"{name}.{k}"] = v
    with open_run(client, FIDELITY_EXPERIMENT, store, f"{pool} fidelity", {"dataassess.pool": pool}) as run_id:
        log_values(client, run_id, {f"settings.{k}": v for k, v in report["settings"].items()}, metrics)
        client.log_dict(run_id, report, "fidelity.json")
        client.log_dict(run_id, {"rows": rows}, "mixtures.json")
        for s in [None, *sorted(report["eval_sets"])]:
            client.log_figure(run_id, scatter(rows, s), f"plots/scatter_{s or 'macro'}.png")
    return run_id


def snapshot_tags(report: dict | None) -> dict:
    """The latest fidelity figures, shown on every ranking snapshot."""
    if not report:
        return {"status": "not measured: run `dataassess fidelity`"}
    m = report["macro"]
    return {"macro_pearson": m["pearson"], "macro_spearman": m["spearman"], "macro_decision_accuracy": m["decision_accuracy"],
            "n_mixtures": m["n_mixtures"], "measured": report.get("measured", "")}
