"""Mixture-weight runs in MLflow: the weights (table and bar chart), the surrogate's fit, the verified
comparison, and a link both ways with the ranking run they started from."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from dataassess.optimize import verified_lines
from dataassess.store import Store

from .tracking import log_values, open_run

OPTIMIZE_EXPERIMENT = "dataassess-optimize"
T = "dataassess."


def weights_frame(report: dict) -> pd.DataFrame:
    natural, previous = report.get("natural_weights", {}), report.get("previous_weights")
    rows = []
    for p, share in sorted(report["weights"].items(), key=lambda kv: -kv[1]):
        lo, hi = report["bounds"][p]
        row = {"partition": p, "share": share, "natural share": natural.get(p), "min": lo, "max": hi}
        if previous is not None:
            row.update({"previous share": previous.get(p, 0.0), "change": report["change"][p]})
        rows.append(row)
    return pd.DataFrame(rows)


def plot_weights(report: dict) -> Figure:
    parts = sorted(report["weights"], key=lambda p: -report["weights"][p])
    fig = Figure(figsize=(8, 0.4 * len(parts) + 1.6), dpi=110)
    ax = fig.subplots()
    y = np.arange(len(parts))
    ax.barh(y - 0.2, [report["weights"][p] for p in parts], height=0.4, label="optimized")
    ax.barh(
        y + 0.2,
        [report["natural_weights"].get(p, 0.0) for p in parts],
        height=0.4,
        label="natural (token share)",
        color="grey",
    )
    if report.get("previous_weights") is not None:
        ax.scatter(
            [report["previous_weights"].get(p, 0.0) for p in parts],
            y - 0.2,
            marker="|",
            s=200,
            color="black",
            label="previous",
        )
    ax.set_yticks(y)
    ax.set_yticklabels(parts, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"share of the {report['budget_tokens']:,}-token budget")
    ax.set_title(
        f"Mixture weights ({report['objective'] if isinstance(report['objective'], str) else 'weighted'} objective)"
    )
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def plot_fit(predicted: np.ndarray, observed: np.ndarray, report: dict) -> Figure:
    """Out-of-fold surrogate predictions against the proxies' objective."""
    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.subplots()
    x, y = np.exp(observed), np.exp(predicted)
    ax.scatter(x, y, s=12)
    lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
    ax.plot([lo, hi], [lo, hi], color="grey", ls="--", lw=0.8)
    s = report["surrogate"]
    ax.set_xlabel("weighted-merge proxy (objective perplexity)")
    ax.set_ylabel("surrogate, cross-validated")
    ax.set_title(f"{s['model']} surrogate: Spearman {s['spearman']:.3f} over {s['n_proxies']} proxies", fontsize=10)
    fig.tight_layout()
    return fig


def verified_frame(verified: dict) -> pd.DataFrame:
    names = [n for n in ("optimized", "uniform", "natural", "best_subset") if n in verified]
    sets = sorted(verified[names[0]])
    return pd.DataFrame(
        [
            {
                "mixture": n,
                "objective": verified["objective"][n],
                "objective_se": verified["objective_se"][n],
                **{f"ppl {s}": verified[n][s] for s in sets},
            }
            for n in names
        ]
    )


def description(report: dict) -> str:
    top = ", ".join(f"{p} {s:.0%}" for p, s in sorted(report["weights"].items(), key=lambda kv: -kv[1]) if s >= 0.005)
    v = report["objective_value"]
    lines = [
        f"**Weights** at a fixed budget of {report['budget_tokens']:,} tokens: {top}.",
        f"Objective `{report['objective']}` of the weighted merge: {v['optimized']:.3f} (uniform {v['uniform']:.3f}, "
        f"natural {v['natural']:.3f}). Surrogate {report['surrogate']['model']}, cross-validated Spearman "
        f"{report['surrogate']['spearman']:.3f} over {report['surrogate']['n_proxies']} proxies.",
    ]
    if "change" in report:
        moved = sorted(report["change"].items(), key=lambda kv: -abs(kv[1]))[:3]
        lines.append("Moved since the last optimization: " + ", ".join(f"{p} {d:+.0%}" for p, d in moved) + ".")
    if "verified" in report:
        lines.append("**Verified** " + "; ".join(verified_lines(report["verified"])).removeprefix("verified ") + ".")
    else:
        lines.append("Not verified by training: run `dataassess optimize --verify`.")
    return "\n\n".join(lines)


def log_optimization(
    client: MlflowClient,
    store: Store,
    pool: str,
    report: dict,
    fit: tuple[np.ndarray, np.ndarray] | None,
    ranking_run_id: str | None = None,
) -> str:
    """One run per optimization; with a ranking run, the weights are also put on it. Returns the run id."""
    tags = {
        T + "pool": pool,
        T + "objective": str(report["objective"]),
        T + "surrogate": report["surrogate"]["model"],
        MLFLOW_RUN_NOTE: description(report),
    }
    if ranking_run_id:
        tags[T + "ranking_run"] = ranking_run_id
    metrics = {f"weight.{p}": s for p, s in report["weights"].items()}
    metrics.update({f"proxy_ppl.{s}": v for s, v in report["predicted"].items()})
    metrics.update({f"objective.{k}": v for k, v in report["objective_value"].items()})
    metrics.update(
        {
            "surrogate.cv_spearman": report["surrogate"]["spearman"],
            "surrogate.n_proxies": report["surrogate"]["n_proxies"],
            "count.scored": report["counts"]["scored"],
            "count.reused": report["counts"]["reused"],
        }
    )
    verified = report.get("verified")
    for name, scores in (verified or {}).items():
        if name in ("optimized", "uniform", "natural", "best_subset"):
            metrics.update({f"verified.{name}.{s}": v for s, v in scores.items()})
            metrics[f"verified.{name}.objective"] = verified["objective"][name]
            metrics[f"verified.{name}.objective_se"] = verified["objective_se"][name]
    params = {
        "objective": report["objective"],
        "budget_tokens": report["budget_tokens"],
        "surrogate": report["surrogate"]["model"],
        "eval_fraction": report["surrogate"]["eval_fraction"],
        "best_subset": " + ".join(report.get("best_subset", [])),
    }
    params.update({f"bounds.{p}": f"{lo:g}-{hi:g}" for p, (lo, hi) in report["bounds"].items()})
    with open_run(client, OPTIMIZE_EXPERIMENT, store, f"{pool} weights", tags) as run_id:
        log_values(client, run_id, params, metrics)
        client.log_table(run_id, weights_frame(report), artifact_file="weights.json")
        client.log_figure(run_id, plot_weights(report), "weights.png")
        if fit is not None:
            client.log_figure(run_id, plot_fit(*fit, report), "surrogate_fit.png")
        if verified:
            client.log_table(run_id, verified_frame(verified), artifact_file="verified.json")
        client.log_dict(run_id, report, "optimize.json")
    if ranking_run_id:
        client.log_table(ranking_run_id, weights_frame(report), artifact_file="weights.json")
        client.log_figure(ranking_run_id, plot_weights(report), "weights.png")
        client.set_tag(ranking_run_id, T + "optimize_run", run_id)
        log_values(client, ranking_run_id, metrics={f"weight.{p}": s for p, s in report["weights"].items()})
    return run_id
