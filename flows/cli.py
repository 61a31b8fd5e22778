"""The `dataassess` command line."""
from __future__ import annotations

import json
import logging
import sys
from functools import wraps
from pathlib import Path
from typing import Annotated, Optional

import typer

from dataassess.config import Settings, load_settings
from dataassess.corpus import CorpusError

Corpus = Annotated[Path, typer.Argument(help="Corpus folder (one subfolder per partition), dataset file or hub id.")]
PoolName = Annotated[Optional[str], typer.Option("--pool", help="Pool name: pins its evaluation sets, names its models in MLflow (default: the corpus folder's name).")]
RefreshEval = Annotated[bool, typer.Option("--refresh-eval", help="Re-pin the held-out evaluation sets to the current partitions (re-scores every mixture).")]
CorpusRoot = Annotated[Path, typer.Option("--corpus", help="Corpus root (one subfolder per partition).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]
EvalSets = Annotated[Optional[Path], typer.Option("--eval-sets", help="One subfolder per evaluation set (default: held-out documents, pinned per pool).")]

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
DATA = Path(__file__).resolve().parents[1] / "dataassess" / "data"
_state: dict = {}


def settings() -> Settings:
    return _state["settings"]


def friendly(fn):
    """Bad input ends in one clear line on stderr and exit code 2, not a traceback."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (CorpusError, ValueError, FileNotFoundError, KeyError) as e:
            typer.secho(f"error: {e}", err=True, fg="red")
            raise typer.Exit(2) from None

    return wrapper


@app.callback()
def main(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config file (default: ./dataassess.toml if present)."),
    store: Optional[Path] = typer.Option(None, "--store", help="Store folder for data, models and rankings."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Rank training-data mixtures by merging per-unit models (Na et al. 2024)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("transformers", "datasets", "httpx", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        _state["settings"] = load_settings(config, **({"store": store} if store else {}))
    except Exception as e:
        typer.secho(f"error: invalid configuration: {e}", err=True, fg="red")
        raise typer.Exit(2) from None
    from flows.runtime import configure_process

    configure_process(_state["settings"].store)  # before Prefect is imported


@app.command()
@friendly
def config():
    """Print the effective configuration (defaults, file and DATAASSESS_* overrides)."""
    typer.echo(json.dumps(settings().model_dump(mode="json"), indent=2))


@app.command()
@friendly
def seed():
    """Build (tiny) or import (HF id / local folder) the seed model."""
    from dataassess.seed import prepare_seed

    s = prepare_seed(settings())
    typer.echo(f"seed {s.source}: {s.path}\ndigest {s.digest}")


@app.command()
@friendly
def units(corpus: Corpus):
    """Validate the corpus and cut it into equal-token units."""
    from dataassess.pipeline import prepare

    inputs = prepare(str(corpus), settings())
    typer.echo(f"{'unit':<32} {'tokens':>8} {'distinct':>9} {'repeat':>7}  digest")
    for u in inputs.units:
        typer.echo(f"{u.name:<32} {u.tokens:>8} {u.source_tokens:>9} {u.repeat:>7.2f}  {u.digest[:12]}")
    typer.echo(f"evaluation sets: {', '.join(inputs.eval_sets)}")
    _report_quarantined(inputs.quarantined)


@app.command()
@friendly
def train(corpus: Corpus, eval_sets: EvalSets = None):
    """Train a model for every unit that has none yet."""
    from dataassess.pipeline import prepare, serial_map, train_units
    from dataassess.steps import Steps

    inputs = prepare(str(corpus), settings(), eval_sets)
    with Steps(settings(), inputs.seed, progress=True) as steps:
        models, _ = train_units(steps, inputs.units, serial_map())
    for m in models.values():
        typer.echo(f"{m.unit}: final loss {m.final_loss:.3f} -> {steps.store.weights(m.key)}")
    _report_quarantined(inputs.quarantined)


@app.command()
@friendly
def score(
    corpus: Corpus,
    mixture: str = typer.Option(..., "--mixture", "-m", help="Comma-separated unit names, e.g. satire.u0,jargon.u0"),
    eval_sets: EvalSets = None,
):
    """Score one mixture: merge its unit models and measure perplexity on every evaluation set."""
    from dataassess.pipeline import prepare, score_and_rank, serial_map, train_units
    from dataassess.steps import Steps

    inputs = prepare(str(corpus), settings(), eval_sets)
    by_name = {u.name: u for u in inputs.units}
    names = [n.strip() for n in mixture.split(",") if n.strip()]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown units {unknown}; known: {sorted(by_name)}")
    with Steps(settings(), inputs.seed, progress=True) as steps:
        models, _ = train_units(steps, [by_name[n] for n in names], serial_map())
        ranking, _ = score_and_rank(steps, models, inputs.eval_sets, serial_map(), mixtures=[names])
    typer.echo(json.dumps(ranking[0].to_json(), indent=2))


@app.command()
@friendly
def rank(
    corpus: Corpus, eval_sets: EvalSets = None, pool: PoolName = None, refresh_eval: RefreshEval = False,
    k_max: Optional[int] = typer.Option(None, "--k-max", help="Largest mixture size."),
    by: Optional[str] = typer.Option(None, "--by", help="An evaluation-set name, or 'macro'."),
    top: int = typer.Option(25, "--top"),
):
    """The whole pipeline: units, unit models, merged mixtures, scores, ranking."""
    from dataassess import pipeline

    s = settings()
    s.rank = s.rank.model_copy(update={k: v for k, v in {"k_max": k_max, "by": by}.items() if v is not None})
    result = pipeline.run(str(corpus), s, eval_sets, pool, refresh_eval)
    _print_run(result, top)


@app.command()
@friendly
def ranking(
    as_json: bool = typer.Option(False, "--json", help="Print the latest ranking as a JSON list."),
    top: Optional[int] = typer.Option(None, "--top"),
):
    """Show the latest ranking."""
    from dataassess.pipeline import latest_ranking
    from dataassess.rank import format_table
    from dataassess.types import RankedMixture

    snap = latest_ranking(settings())
    if snap is None:
        raise FileNotFoundError(f"no ranking yet in {settings().store}: run `dataassess rank CORPUS` or `dataassess demo`")
    if as_json:
        typer.echo(json.dumps(snap["ranking"][:top] if top else snap["ranking"], indent=2))
    else:
        typer.echo(_budget_line(snap))
        typer.echo(format_table([RankedMixture.from_json(r) for r in snap["ranking"]], top, snap.get("ranked_by", "macro")))


@app.command()
@friendly
def demo():
    """The bundled demo: two Prefect intakes (the second adds two partitions), tracked in MLflow."""
    from flows.runtime import embedded_prefect

    with embedded_prefect():
        from flows.demo import run_demo

        waves = run_demo(settings(), echo=typer.echo)
    for wave, summary in enumerate(waves, 1):
        typer.echo(f"wave {wave}: " + _summary_line(summary))
    _print_latest(top=25)
    _print_weights(waves[-1].get("weights"))
    _print_ui_hint()


@app.command()
@friendly
def intake(corpus: Corpus, eval_sets: EvalSets = None, pool: PoolName = None, refresh_eval: RefreshEval = False):
    """One Prefect intake: train new or changed units, register them, re-score, publish a ranking."""
    from flows.runtime import embedded_prefect

    with embedded_prefect():
        from flows.intake import intake as intake_flow

        summary = intake_flow(str(corpus), settings().model_dump(mode="json"), str(eval_sets) if eval_sets else None, pool, True, refresh_eval)
    typer.echo(_summary_line(summary))
    _report_quarantined(summary["quarantined_partitions"])
    _print_latest(top=25)
    _print_weights(summary.get("weights"))
    _print_ui_hint()


@app.command()
@friendly
def serve(
    corpus: Corpus,
    interval: float = typer.Option(300, "--interval", help="Seconds between scheduled intakes."),
    eval_sets: EvalSets = None,
):
    """Serve the intake as a Prefect deployment: every --interval seconds, and on partition events."""
    from flows.runtime import ensure_prefect_home

    ensure_prefect_home()
    from flows.serve import prefect_server
    from flows.serve import serve as serve_flow

    with prefect_server(settings().store) as url:
        typer.echo(f"Prefect API {url}; serving intake of {corpus} every {interval:g} s; Ctrl-C to stop")
        serve_flow(str(corpus), settings(), interval, str(eval_sets) if eval_sets else None)


@app.command("add-partition")
@friendly
def add_partition(
    path: Path = typer.Argument(..., help="A partition folder to add."),
    corpus: Path = typer.Option(..., "--corpus", help="The corpus root it joins."),
    name: Optional[str] = typer.Option(None, "--name", help="Partition name (default: the folder's name)."),
):
    """Validate a partition, copy it into the corpus root and emit dataassess.partition.created."""
    import shutil

    from dataassess.corpus import check_name, load_partition_folder
    from flows.runtime import ensure_prefect_home

    ensure_prefect_home()
    from flows.serve import announce_partition

    target = corpus / (name or path.name)
    check_name(target.name)
    part = load_partition_folder(path)  # rejects bad input before anything is copied
    if target.exists():
        raise ValueError(f"{target} already exists; remove it first or pass --name")
    tmp = corpus / f".{target.name}.incoming"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(path, tmp)
    tmp.rename(target)
    sent = announce_partition(settings().store, str(corpus), target.name, part.digest)
    typer.echo(f"added {target} ({len(part.documents)} documents, digest {part.digest[:12]})")
    typer.echo("event dataassess.partition.created emitted" if sent else "no `dataassess serve` runs for this store: the next intake will pick it up")


@app.command()
@friendly
def fidelity(
    corpus: CorpusRoot,
    eval_sets: EvalSets = None,
    pool: PoolName = None,
    budget: Optional[str] = typer.Option(None, "--budget", help="fixed (every mixture trained on B tokens) or union "
                                         "(on all its units; fits the calibration). Default: rank.budget."),
    n: int = typer.Option(24, "--n", help="Mixtures to sample, k = 1..k-max (stratified by size)."),
    k_max: int = typer.Option(3, "--k-max", help="Largest mixture size sampled."),
    ceiling: int = typer.Option(8, "--ceiling", help="Mixtures given a second ground truth (another data order): the noise ceiling."),
    weighted: bool = typer.Option(False, "--weighted", help="Weighted mixtures instead of subsets: --n weight vectors over the "
                                  "partitions, each merged by its weights and trained at the fixed budget on tokens drawn by them."),
    as_json: AsJson = False,
    log_mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log a fidelity run to MLflow."),
):
    """Train ground truth for sampled mixtures and report how well the ranking's scores predict it."""
    from datetime import datetime, timezone

    from dataassess.fidelity import run_fidelity, run_weighted_fidelity
    from dataassess.pipeline import pool_name
    from dataassess.store import Store, write_json

    if budget not in (None, "fixed", "union"):
        raise ValueError(f"--budget must be 'fixed' or 'union', not '{budget}'")
    s, pool = settings(), pool or pool_name(corpus)
    if weighted and (budget or s.rank.budget) != "fixed":
        raise ValueError("--weighted mixtures are measured at the fixed budget: pass --budget fixed")
    if weighted:
        result = run_weighted_fidelity(str(corpus), s, eval_sets, n, ceiling, pool=pool)
    else:
        result = run_fidelity(str(corpus), s, eval_sets, n, k_max, budget, ceiling, pool=pool)
    _report_quarantined(result.quarantined)
    report = _finite({**result.report, "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"), "corpus": str(corpus)})
    store = Store(s.store)
    write_json(store.fidelity(), {"report": report, "rows": result.rows})
    if result.calibration is not None:
        write_json(store.calibration(pool), {**result.calibration.to_json(), "measured": report["measured"]})
    if log_mlflow:
        from registry.fidelity import log_fidelity
        from registry.tracking import connect

        log_fidelity(connect(s.store), s.store, report, result.rows, pool)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    what = "calibrated (leave-one-out)" if report["budget"] == "union" else "uniform average"
    typer.echo(f"budget: {report['budget']}; score: {what}; ceiling: truth vs a second truth (another data order)")
    typer.echo(f"{'eval set':<20} {'pearson':>8} {'spearman':>9} {'pair acc':>9} {'naive acc':>9} {'ceil rho':>9} {'ceil acc':>9} {'of ceil':>8}")
    for name, f in [*report["eval_sets"].items(), ("MACRO", report["macro"])]:
        typer.echo(f"{name:<20} {_f(f['pearson']):>8} {_f(f['spearman']):>9} {_f(f['decision_accuracy']):>9} "
                   f"{_f(f['baseline_decision_accuracy']):>9} {_f(f['ceiling_spearman']):>9} {_f(f['ceiling_decision_accuracy']):>9} "
                   f"{_f(f['spearman_share_of_ceiling']):>8}")
    typer.echo(f"{report['macro']['n_mixtures']} mixtures; figures in {store.fidelity()}")


@app.command()
@friendly
def optimize(
    corpus: CorpusRoot,
    verify: bool = typer.Option(False, "--verify", help="Also train the seed at the fixed budget on the optimized, uniform and "
                                "natural weights and on the best subset, and report their real perplexities."),
    eval_sets: EvalSets = None,
    pool: PoolName = None,
    as_json: AsJson = False,
    log_mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log an optimization run to MLflow."),
):
    """Search the partition shares of a fixed token budget (weighted merges, a surrogate, scipy), warm-started."""
    from dataassess.optimize import run_optimize

    s = settings()
    result = run_optimize(str(corpus), s, eval_sets, pool, verify)
    report = _finite(result.report)
    if log_mlflow:
        from registry.optimize import log_optimization
        from registry.tracking import connect, latest_ranking_run

        client = connect(s.store)
        report["mlflow_run_id"] = log_optimization(client, s.store, report["pool"], report, result.cv,
                                                   latest_ranking_run(client, report["pool"]))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(_weights_table(report))
    sur = report["surrogate"]
    typer.echo(f"surrogate {sur['model']}: cross-validated Spearman {_f(sur['spearman'])} over {sur['n_proxies']} weighted merges "
               f"(scored now {report['counts']['scored']}, reused {report['counts']['reused']})")
    v = report["objective_value"]
    typer.echo(f"objective {report['objective']} of the weighted merge: optimized {v['optimized']:.3f}, uniform {v['uniform']:.3f}, "
               f"natural {v['natural']:.3f}")
    if "verified" in report:
        o = report["verified"]["objective"]
        typer.echo("verified by training at the budget: " + ", ".join(f"{k} {x:.3f}" for k, x in o.items()))
    else:
        typer.echo("not verified by training: add --verify")


def _weights_table(report: dict) -> str:
    change = report.get("change")
    lines = [f"mixture weights: shares of a {report['budget_tokens']:,}-token budget (objective {report['objective']})",
             f"{'partition':<28} {'share':>7} {'natural':>8}" + (f" {'change':>8}" if change else "")]
    for p, share in sorted(report["weights"].items(), key=lambda kv: -kv[1]):
        moved = f" {change[p]:>+8.3f}" if change else ""
        lines.append(f"{p:<28} {share:>7.3f} {report['natural_weights'][p]:>8.3f}{moved}")
    return "\n".join(lines)


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _finite(obj):
    """NaN is not JSON: report it as null."""
    if isinstance(obj, float):
        return None if obj != obj else obj
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _summary_line(s: dict) -> str:
    return (
        f"trained {s['trained']}, skipped {s['skipped']}, quarantined {s['quarantined']}, registered {s['registered']}; "
        f"mixtures {s['mixtures']} (re-scored {s['rescored']}, reused {s['reused']}){_screening_note(s)}; champion v{s['champion_version']}"
    )


def _screening_note(counts: dict) -> str:
    if "screening" not in counts:
        return ""
    sc = counts["screening"]
    rungs = ", ".join(f"{g['scored']} on {g['fraction']:g}" for g in sc["rungs"])
    return f"; screened: {rungs} of the sets, {sc['cost']:.2f} of full evaluation"


def _print_latest(top: int) -> None:
    from dataassess.pipeline import latest_ranking
    from dataassess.rank import format_table
    from dataassess.types import RankedMixture

    snap = latest_ranking(settings())
    typer.echo("\n" + _budget_line(snap))
    typer.echo(format_table([RankedMixture.from_json(r) for r in snap["ranking"]], top, snap["ranked_by"]))
    moved = [r for r in snap["ranking"] if r.get("rank_change")]
    new = [r for r in snap["ranking"] if r.get("rank_change", 0) is None]
    if snap.get("previous") and (moved or new):
        typer.echo(f"since the previous snapshot: {len(new)} new mixtures, {len(moved)} moved")
        for r in sorted(moved, key=lambda r: -abs(r["rank_change"]))[:5]:
            typer.echo(f"  {' + '.join(r['units'])}: {r['rank_change']:+d} -> #{r['rank']}")
    typer.echo(f"\nAll {len(snap['ranking'])} mixtures as JSON: dataassess ranking --json")


def _print_weights(weights: dict | None) -> None:
    """The intake's re-optimized mixture weights, and how they moved since the last optimization."""
    if not weights:
        return
    if "skipped" in weights:
        typer.echo(f"\nmixture weights not re-optimized: {weights['skipped']}")
        return
    change = weights.get("change") or {}
    cells = [f"{p} {s:.2f}" + (f" ({change[p]:+.2f})" if p in change else " (new)" if change else "")
             for p, s in sorted(weights["weights"].items(), key=lambda kv: -kv[1])]
    typer.echo(f"\nmixture weights (shares of the fixed budget{', change since the last optimization' if change else ''}; "
               f"surrogate cross-validated Spearman {weights['surrogate_spearman']:.2f}):")
    typer.echo("  " + ", ".join(cells))
    typer.echo("  details and the verified comparison: dataassess optimize --corpus CORPUS --verify")


def _budget_line(snap: dict) -> str:
    budget = snap.get("budget") or {"mode": "fixed", "score": "uniform parameter average"}
    return f"budget: {budget['mode']}; scores: {budget['score']}"


def _print_ui_hint() -> None:
    from registry.tracking import tracking_uri

    uri = tracking_uri(settings().store)
    typer.echo(f"MLflow ({uri}): run `make ui`, open http://127.0.0.1:5000, experiment 'dataassess-rankings' (latest run: table, plot, inputs), and Models for '<pool>.<unit>' and '<pool>-champion'.")


def _print_run(result, top: int) -> None:
    from dataassess.pipeline import latest_ranking
    from dataassess.rank import format_table

    typer.echo(_budget_line(latest_ranking(settings())))
    typer.echo(format_table(result.ranking, top))
    seed = "  ".join(f"{k}={v:.2f}" for k, v in result.seed_scores.items())
    typer.echo(f"\nseed perplexity (reference): {seed}")
    typer.echo(
        f"units trained {len(result.trained)}, reused {len(result.reused)}; mixtures {result.counts['mixtures']} "
        f"(scored {result.counts['scored']}, reused {result.counts['reused']}){_screening_note(result.counts)}; "
        f"{sum(result.timings.values()):.0f} s"
    )
    _report_quarantined(result.inputs.quarantined)
    typer.echo(f"snapshot: {result.snapshot}")


def _report_quarantined(quarantined: list[str]) -> None:
    for msg in quarantined:
        typer.secho(f"quarantined: {msg}", err=True, fg="yellow")


if __name__ == "__main__":
    app()
