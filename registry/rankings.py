"""Ranking snapshots: one MLflow run per scoring pass, never one per mixture."""
from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from dataassess.rank import macro  # noqa: E402

from .tracking import RANKINGS_EXPERIMENT, experiment_id  # noqa: E402

T = "dataassess."


def ranking_frame(ranking: list[dict]) -> pd.DataFrame:
    rows = []
    for r in ranking:
        row = {"rank": r["rank"], "mixture": " + ".join(r["units"]), "k": len(r["units"]), "rank_in_size": r["rank_in_size"], "macro": r["macro"]}
        row.update({f"ppl {s}": v for s, v in r["scores"].items()})
        change = r.get("rank_change")
        row["rank_change"] = "new" if change is None else f"{change:+d}"
        row["units"] = ",".join(r["units"])
        row["evaluated_fraction"] = r.get("evaluated_fraction", 1.0)  # < 1: screened out on a slice
        rows.append(row)
    return pd.DataFrame(rows)


def plot_top(ranking: list[dict], seed_scores: dict[str, float], path: Path, top: int = 12) -> Path:
    """Top mixtures: per-set perplexity relative to the seed (lower is better)."""
    best = ranking[:top]
    sets = sorted(best[0]["scores"])
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(best) + 1.8), dpi=110)
    height = 0.8 / (len(sets) + 1)
    for i, s in enumerate(sets + ["macro"]):
        vals = [(r["macro"] / macro(seed_scores) if s == "macro" else r["scores"][s] / seed_scores[s]) for r in best]
        ys = [j + i * height for j in range(len(best))]
        ax.barh(ys, vals, height=height, label=s, color="black" if s == "macro" else None)
    ax.set_yticks([j + 0.4 for j in range(len(best))])
    ax.set_yticklabels([f"#{r['rank']} " + " + ".join(r["units"]) for r in best], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("perplexity / seed perplexity (lower is better)")
    ratios = [r["scores"][s] / seed_scores[s] for r in best for s in sets]
    ax.set_xlim(max(0.0, min(ratios) - 0.05), max(1.0, max(ratios)) + 0.03)
    ax.set_title(f"Top {len(best)} mixtures by macro perplexity")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def log_snapshot(
    client: MlflowClient, store: Path, pool: str, snapshot: dict, unit_versions: dict[str, str],
    eval_sets: dict[str, dict], summary: dict, fidelity: dict | None = None,
) -> str:
    """Log one ranking run: params (pool state), table, plot, eval-set inputs, top-k metrics. Returns run id."""
    ranking = snapshot["ranking"]
    exp = experiment_id(client, RANKINGS_EXPERIMENT, store)
    tags = {
        T + "pool": pool, T + "ranked_by": snapshot["ranked_by"], T + "snapshot": snapshot["created"],
        T + "best_mixture": " + ".join(ranking[0]["units"]),
        T + "quarantined": ("; ".join(snapshot.get("quarantined", [])) or "none")[:5000],
        T + "seed_digest": snapshot["seed_digest"],
    }
    for k, v in (fidelity or {}).items():
        tags[f"{T}fidelity.{k}"] = str(v)
    with mlflow.start_run(experiment_id=exp, run_name=f"{pool} ranking {snapshot['created'][:15]}", tags=tags) as run:
        mlflow.log_params({f"unit.{u}": v for u, v in sorted(unit_versions.items())})
        mlflow.log_params({"pool": pool, "n_units": len(unit_versions), "n_mixtures": len(ranking), "ranked_by": snapshot["ranked_by"]})
        mlflow.log_table(ranking_frame(ranking), artifact_file="ranking.json")
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(plot_top(ranking, snapshot["seed_scores"], Path(tmp) / "top_mixtures.png")))
        for name, info in sorted(eval_sets.items()):
            df = pd.DataFrame([{"eval_set": name, **{k: v for k, v in info.items() if k != "path"}}])
            mlflow.log_input(mlflow.data.from_pandas(df, name=name, source=info["path"]), context="evaluation")
        full = [r for r in ranking if "evaluated_fraction" not in r]  # slice scores are not comparable
        metrics = {"best.macro": full[0]["macro"], "top5_mean.macro": sum(r["macro"] for r in full[:5]) / min(5, len(full))}
        for s in ranking[0]["scores"]:
            metrics[f"best.{s}"] = min(r["scores"][s] for r in full)
            metrics[f"seed.{s}"] = snapshot["seed_scores"][s]
        metrics.update({f"count.{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))})
        for k, v in (fidelity or {}).items():
            if isinstance(v, (int, float)):
                metrics[f"fidelity.{k}"] = float(v)
        mlflow.log_metrics(metrics)
    return run.info.run_id
