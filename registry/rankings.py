"""Ranking snapshots: one MLflow run per scoring pass, never one per mixture."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import DatasetInput
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from dataassess.rank import fidelity_line, macro
from dataassess.store import Store
from dataassess.types import RankedMixture

from .tracking import RANKINGS_EXPERIMENT, dataset_input, log_values, open_run

T = "dataassess."


def ranking_frame(ranking: list[RankedMixture]) -> pd.DataFrame:
    rows = []
    for r in ranking:
        row = {
            "rank": r.rank,
            "mixture": " + ".join(r.units),
            "k": r.k,
            "rank_in_size": r.rank_in_size,
            "macro": r.macro,
        }
        tasks = r.tasks or {}
        row.update({f"ppl {s}": v for s, v in r.scores.items() if s not in tasks})
        row.update({f"{m} {s}": v for s, ms in tasks.items() for m, v in ms.items() if m not in ("items", "chance")})
        row.update({f"{m} family {f}": v for f, ms in (r.families or {}).items() for m, v in ms.items()})
        if r.z_macro is not None:
            row["z_macro"] = r.z_macro
        row["rank_change"] = r.rank_change  # places moved among mixtures ranked last time; None: new
        row["units"] = ",".join(r.units)
        row["evaluated_fraction"] = r.evaluated_fraction  # < 1: screened out on a slice
        for s, (lo, hi) in (r.intervals or {}).items():
            row[f"ppl {s} 95% interval"] = f"{lo:.2f} - {hi:.2f}"
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["rank_change"] = pd.Series([r.rank_change for r in ranking], dtype=object)  # null for new, as in the JSON
    return frame


def plot_top(ranking: list[RankedMixture], seed_scores: dict[str, float], top: int = 20) -> Figure:
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
    return [
        dataset_input(
            {"eval_set": name, **{k: v for k, v in info.items() if k != "path"}}, name, info["path"], "evaluation"
        )
        for name, info in sorted(eval_sets.items())
    ]


def describe(pool: str, snapshot: dict, ranking: list[RankedMixture], champion_version: str | None = None) -> str:
    """The ranking run's description (markdown): the champion, how far to trust the ranking, what it answers,
    the top 5 and what changed."""
    budget, fid, ch = snapshot["budget"], snapshot.get("fidelity") or {}, snapshot.get("changes") or {}
    lines = [
        f"**Ranking of pool {pool}** ({len(ranking)} mixtures of {len(snapshot.get('units', {}))} unit models), "
        f"ranked by {snapshot['ranked_by']}, lower is better.",
        "",
    ]
    champion = f"**Champion:** {' + '.join(ranking[0].units)} (macro perplexity {ranking[0].macro:.2f})"
    if champion_version:
        link = f"#/models/{pool}-champion/versions/{champion_version}"
        champion += f", model [{pool}-champion version {champion_version}]({link})"
    lines += [champion + ".", ""]
    lines.append("**Fidelity:** " + fidelity_line(fid).removeprefix("fidelity: ").removeprefix("fidelity ") + ".")
    lines += ["", f"**Budget:** {budget['mode']}: {budget['score']}.", ""]
    if snapshot.get("previous") and ch:
        best = "new best (was " + " + ".join(ch["previous_best"]) + ")" if ch.get("new_best") else "best unchanged"
        dropped = f", {len(ch['dropped'])} dropped (their units left the corpus)" if ch.get("dropped") else ""
        lines += [
            f"**Changes since the previous ranking:** {len(ch['new'])} new mixtures{dropped}, {len(ch['moved'])} "
            "changed "
            f"order among those ranked before, {best}.",
            "",
        ]
    else:
        lines += ["**Changes:** first ranking of this pool.", ""]
    lines += ["**Top 5**", "", "| rank | mixture | macro | change |", "|---|---|---|---|"]
    for r in ranking[:5]:
        change = "new" if r.rank_change is None else f"{r.rank_change:+d}"
        lines.append(f"| {r.rank} | {' + '.join(r.units)} | {r.macro:.2f} | {change} |")
    return "\n".join(lines)


def log_snapshot(
    client: MlflowClient,
    store: Store,
    pool: str,
    snapshot: dict,
    ranking: list[RankedMixture],
    unit_versions: dict[str, str],
    eval_sets: dict[str, dict],
    summary: dict,
) -> str:
    """Log one ranking run: params (pool state), table, plot, eval-set inputs, metrics, description. Returns run id."""
    fid = snapshot.get("fidelity") or {}
    tags = {
        T + "pool": pool,
        T + "ranked_by": snapshot["ranked_by"],
        T + "snapshot": snapshot["created"],
        T + "best_mixture": " + ".join(ranking[0].units),
        T + "quarantined": ("; ".join(snapshot.get("quarantined", [])) or "none")[:5000],
        T + "seed_digest": snapshot["seed_digest"],
        T + "budget": snapshot["budget"]["mode"],
        T + "score": snapshot["budget"]["score"],
        T + "fidelity": fidelity_line(fid).removeprefix("fidelity: "),
        MLFLOW_RUN_NOTE: describe(pool, snapshot, ranking),
    }
    full = [r for r in ranking if r.evaluated_fraction == 1.0]  # slice scores are not comparable
    champion = ranking[0]
    metrics = {
        "champion.macro": champion.macro,
        "top5_mean.macro": sum(r.macro for r in full[:5]) / min(5, len(full)),
        "seed.macro": macro(snapshot["seed_scores"]),
    }
    tasks = champion.tasks or {}
    for s in ranking[0].scores:
        if s in tasks:
            continue
        metrics[f"champion.ppl.{s}"] = champion.scores[s]
        metrics[f"lowest_any_mixture.ppl.{s}"] = min(r.scores[s] for r in full)
        metrics[f"seed.ppl.{s}"] = snapshot["seed_scores"][s]
    for s, values in tasks.items():  # task sets: gold_bpb, choice accuracies, normalized gold probability
        for m in (m for m in values if m not in ("items", "chance")):
            metrics[f"champion.{m}.{s}"] = values[m]
            if m in snapshot.get("seed_tasks", {}).get(s, {}):
                metrics[f"seed.{m}.{s}"] = snapshot["seed_tasks"][s][m]
        metrics[f"lowest_any_mixture.gold_bpb.{s}"] = min((r.tasks or {})[s]["gold_bpb"] for r in full)
    for f, values in (champion.families or {}).items():
        metrics.update({f"champion.family.{f}.{m}": v for m, v in values.items()})
    if champion.z_macro is not None:
        metrics["champion.z_macro"] = champion.z_macro
    metrics.update({f"count.{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))})
    metrics["count.new_mixtures"] = float(len((snapshot.get("changes") or {}).get("new", [])))
    metrics["count.reordered_mixtures"] = float(len((snapshot.get("changes") or {}).get("moved", [])))
    if fid.get("measured"):
        metrics.update(
            {
                f"fidelity.{k}": float(fid[k])
                for k in (
                    "resolvable_decision_accuracy",
                    "n_resolvable_pairs",
                    "ceiling",
                    "spearman",
                    "decision_accuracy",
                    "n_mixtures",
                )
                if fid.get(k) is not None
            }
        )
    params = {f"unit.{u}": v for u, v in sorted(unit_versions.items())}
    params.update(
        {
            "pool": pool,
            "n_units": len(unit_versions),
            "n_mixtures": len(ranking),
            "ranked_by": snapshot["ranked_by"],
            "budget": snapshot["budget"]["mode"],
            "budget_tokens": snapshot["budget"].get("tokens", "k x units.tokens"),
        }
    )
    with open_run(client, RANKINGS_EXPERIMENT, store, f"{pool} ranking {snapshot['created'][:15]}", tags) as run_id:
        log_values(client, run_id, params, metrics)
        client.log_table(run_id, ranking_frame(ranking), artifact_file="ranking.json")
        client.log_figure(run_id, plot_top(ranking, snapshot["seed_scores"]), "top_mixtures.png")
        client.log_inputs(run_id, datasets=eval_set_inputs(eval_sets))
    return run_id


def link_champion(
    client: MlflowClient, run_id: str, pool: str, version: str, snapshot: dict, ranking: list[RankedMixture]
) -> None:
    """Name the champion's model version on the ranking run, in its tags and its description."""
    client.set_tag(run_id, T + "champion_version", version)
    client.set_tag(run_id, MLFLOW_RUN_NOTE, describe(pool, snapshot, ranking, version))
