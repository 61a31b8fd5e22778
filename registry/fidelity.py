"""Fidelity runs in MLflow: figures as metrics, one scatter plot per evaluation set."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from dataassess.rank import macro  # noqa: E402

from .tracking import experiment_id  # noqa: E402

FIDELITY_EXPERIMENT = "dataassess-fidelity"
HEADLINE = ("pearson", "spearman", "kendall", "decision_accuracy", "baseline_pearson", "baseline_spearman", "top1_agreement", "top3_agreement")


def scatter(rows: list[dict], eval_set: str | None, path: Path) -> Path:
    """Proxy against truth perplexity, with the y = x diagonal and a least-squares fit."""
    pick = (lambda r, k: macro(r[k])) if eval_set is None else (lambda r, k: r[k][eval_set])
    x, y = np.array([pick(r, "truth") for r in rows]), np.array([pick(r, "proxy") for r in rows])
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
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
    fig.savefig(path)
    plt.close(fig)
    return path


def log_fidelity(client: MlflowClient, store: Path, report: dict, rows: list[dict], pool: str) -> str:
    exp = experiment_id(client, FIDELITY_EXPERIMENT, store)
    with mlflow.start_run(experiment_id=exp, run_name=f"{pool} fidelity", tags={"dataassess.pool": pool}) as run:
        mlflow.log_params({f"settings.{k}": v for k, v in report["settings"].items()})
        metrics = {}
        for name, figs in [("macro", report["macro"]), *report["eval_sets"].items()]:
            for k in HEADLINE:
                v = figs.get(k)
                if isinstance(v, float) and not math.isnan(v):
                    metrics[f"{name}.{k}"] = v
        mlflow.log_metrics(metrics)
        mlflow.log_dict(report, "fidelity.json")
        mlflow.log_dict({"rows": rows}, "mixtures.json")
        with tempfile.TemporaryDirectory() as tmp:
            for s in [None, *sorted(report["eval_sets"])]:
                mlflow.log_artifact(str(scatter(rows, s, Path(tmp) / f"scatter_{s or 'macro'}.png")), "plots")
    return run.info.run_id


def snapshot_tags(report: dict | None) -> dict:
    """The latest fidelity figures, shown on every ranking snapshot."""
    if not report:
        return {"status": "not measured: run `dataassess fidelity`"}
    m = report["macro"]
    return {"macro_pearson": m["pearson"], "macro_spearman": m["spearman"], "macro_decision_accuracy": m["decision_accuracy"],
            "n_mixtures": m["n_mixtures"], "measured": report.get("measured", "")}
