"""Ranking snapshots: one MLflow run per scoring pass, never one per mixture."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.data import from_pandas
from mlflow.entities import DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from dataassess.rank import macro
from dataassess.types import RankedMixture

from .tracking import RANKINGS_EXPERIMENT, log_values, open_run

T = "dataassess."


def ranking_frame(ranking: list[RankedMixture]) -> pd.DataFrame:
    rows = []
    for r in ranking:
        row = {"rank": r.rank, "mixture": " + ".join(r.units), "k": r.k, "rank_in_size": r.rank_in_size, "macro": r.macro}
        row.update({f"ppl {s}": v for s, v in r.scores.items()})
        row["rank_change"] = "new" if r.rank_change is None else f"{r.rank_change:+d}"
        row["units"] = ",".join(r.units)
        row["evaluated_fraction"] = r.evaluated_fraction  # < 1: screened out on a slice
        for s, (lo, hi) in (r.intervals or {}).items():
            row[f"ppl {s} 95% interval"] = f"{lo:.2f} - {hi:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def plot_top(ranking: list[RankedMixture], seed_scores: dict[str, float], top: int = 12) -> Figure:
    """Top mixtures: per-set perplexity relative to the seed (lower is better)."""
    best = ranking[:top]
    sets = sorted(best[0].scores)
    fig = Figure(figsize=(10, 0.45 * len(best) + 1.8), dpi=110)
    ax = fig.subplots()
    height = 0.8 / (len(sets) + 1)
    for i, s in enumerate(sets + ["macro"]):
        vals = [(r.macro / macro(seed_scores) if s == "macro" else r.scores[s] / seed_scores[s]) for r in best]
        ys = [j + i * height for j in range(len(best))]
        ax.barh(ys, vals, height=height, label=s, color="black" if s == "macro" else None)
    ax.set_yticks([j + 0.4 for j in range(len(best))])
    ax.set_yticklabels([f"#{r.rank} " + " + ".join(r.units) for r in best], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("perplexity / seed perplexity (lower is better)")
    ratios = [r.scores[s] / seed_scores[s] for r in best for s in sets]
    ax.set_xlim(max(0.0, min(ratios) - 0.05), max(1.0, max(ratios)) + 0.03)
    ax.set_title(f"Top {len(best)} mixtures by macro perplexity")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def eval_set_inputs(eval_sets: dict[str, dict]) -> list[DatasetInput]:
    """The evaluation sets as MLflow dataset inputs (digest, size and source path of each)."""
    out = []
    for name, info in sorted(eval_sets.items()):
        df = pd.DataFrame([{"eval_set": name, **{k: v for k, v in info.items() if k != "path"}}])
        dataset = from_pandas(df, name=name, source=info["path"])._to_mlflow_entity()
        out.append(DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "evaluation")]))
    return out


def log_snapshot(
    client: MlflowClient, store: Path, pool: str, snapshot: dict, ranking: list[RankedMixture], unit_versions: dict[str, str],
    eval_sets: dict[str, dict], summary: dict, fidelity: dict | None = None,
) -> str:
    """Log one ranking run: params (pool state), table, plot, eval-set inputs, top-k metrics. Returns run id."""
    tags = {
        T + "pool": pool, T + "ranked_by": snapshot["ranked_by"], T + "snapshot": snapshot["created"],
        T + "best_mixture": " + ".join(ranking[0].units),
        T + "quarantined": ("; ".join(snapshot.get("quarantined", [])) or "none")[:5000],
        T + "seed_digest": snapshot["seed_digest"],
        T + "budget": snapshot["budget"]["mode"], T + "score": snapshot["budget"]["score"],
    }
    for k, v in (fidelity or {}).items():
        tags[f"{T}fidelity.{k}"] = str(v)
    full = [r for r in ranking if r.evaluated_fraction == 1.0]  # slice scores are not comparable
    metrics = {"best.macro": full[0].macro, "top5_mean.macro": sum(r.macro for r in full[:5]) / min(5, len(full))}
    for s in ranking[0].scores:
        metrics[f"best.{s}"] = min(r.scores[s] for r in full)
        metrics[f"seed.{s}"] = snapshot["seed_scores"][s]
    metrics.update({f"count.{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))})
    metrics.update({f"fidelity.{k}": float(v) for k, v in (fidelity or {}).items() if isinstance(v, (int, float))})
    params = {f"unit.{u}": v for u, v in sorted(unit_versions.items())}
    params.update({"pool": pool, "n_units": len(unit_versions), "n_mixtures": len(ranking), "ranked_by": snapshot["ranked_by"],
                   "budget": snapshot["budget"]["mode"], "budget_tokens": snapshot["budget"].get("tokens", "k x units.tokens")})
    with open_run(client, RANKINGS_EXPERIMENT, store, f"{pool} ranking {snapshot['created'][:15]}", tags) as run_id:
        log_values(client, run_id, params, metrics)
        client.log_table(run_id, ranking_frame(ranking), artifact_file="ranking.json")
        client.log_figure(run_id, plot_top(ranking, snapshot["seed_scores"]), "top_mixtures.png")
        client.log_inputs(run_id, datasets=eval_set_inputs(eval_sets))
    return run_id
