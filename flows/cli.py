"""The `dataassess` command line."""
from __future__ import annotations

import json
import logging
import os
import sys
from functools import wraps
from pathlib import Path
from typing import Optional

import typer

from dataassess.config import Settings, load_settings
from dataassess.corpus import CorpusError

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
    for noisy in ("transformers", "datasets", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    try:
        _state["settings"] = load_settings(config, **({"store": store} if store else {}))
    except Exception as e:
        typer.secho(f"error: invalid configuration: {e}", err=True, fg="red")
        raise typer.Exit(2) from None


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
def units(corpus: Path = typer.Argument(..., help="Corpus folder (one subfolder per partition), dataset file or hub id.")):
    """Validate the corpus and cut it into equal-token units."""
    from dataassess.pipeline import prepare_pool

    pool = prepare_pool(str(corpus), settings())
    typer.echo(f"{'unit':<32} {'tokens':>8} {'distinct':>9} {'repeat':>7}  digest")
    for u in pool.units:
        typer.echo(f"{u.name:<32} {u.tokens:>8} {u.source_tokens:>9} {u.repeat:>7.2f}  {u.digest[:12]}")
    typer.echo(f"evaluation sets: {', '.join(pool.eval_sets)}")
    _report_rejected([str(e) for e in pool.rejected])


@app.command()
@friendly
def train(corpus: Path = typer.Argument(...), eval_sets: Optional[Path] = typer.Option(None, "--eval-sets")):
    """Train a model for every unit that has none yet."""
    from tqdm.auto import tqdm

    from dataassess.pipeline import prepare_pool, train_unit

    pool = prepare_pool(str(corpus), settings(), eval_sets)
    for unit in tqdm(pool.units, desc="train units"):
        meta = train_unit(unit, pool.seed, settings())
        typer.echo(f"{unit.name}: final loss {meta['final_loss']:.3f} -> {meta['weights']}")
    _report_rejected([str(e) for e in pool.rejected])


@app.command()
@friendly
def score(
    corpus: Path = typer.Argument(...),
    mixture: str = typer.Option(..., "--mixture", "-m", help="Comma-separated unit names, e.g. satire.u0,jargon.u0"),
    eval_sets: Optional[Path] = typer.Option(None, "--eval-sets"),
):
    """Score one mixture: merge its unit models and measure perplexity on every evaluation set."""
    from dataassess.pipeline import prepare_pool, rank_mixtures, train_unit

    pool = prepare_pool(str(corpus), settings(), eval_sets)
    by_name = {u.name: u for u in pool.units}
    names = [n.strip() for n in mixture.split(",") if n.strip()]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown units {unknown}; known: {sorted(by_name)}")
    trained = {n: train_unit(by_name[n], pool.seed, settings()) for n in names}
    ranking, _ = rank_mixtures(pool, trained, settings(), mixtures=[names])
    typer.echo(json.dumps(ranking[0], indent=2))


@app.command()
@friendly
def rank(
    corpus: Path = typer.Argument(...),
    eval_sets: Optional[Path] = typer.Option(None, "--eval-sets", help="One subfolder per evaluation set (default: held-out documents)."),
    k_max: Optional[int] = typer.Option(None, "--k-max", help="Largest mixture size."),
    by: Optional[str] = typer.Option(None, "--by", help="An evaluation-set name, or 'macro'."),
    top: int = typer.Option(25, "--top"),
):
    """The whole pipeline: units, unit models, merged mixtures, scores, ranking."""
    from dataassess import pipeline
    from dataassess.rank import format_table

    s = settings()
    s.rank = s.rank.model_copy(update={k: v for k, v in {"k_max": k_max, "by": by}.items() if v is not None})
    result = pipeline.run(str(corpus), s, eval_sets)
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

    snap = latest_ranking(settings())
    if snap is None:
        raise FileNotFoundError(f"no ranking yet in {settings().store}: run `dataassess rank CORPUS` or `dataassess demo`")
    if as_json:
        typer.echo(json.dumps(snap["ranking"][:top] if top else snap["ranking"], indent=2))
    else:
        typer.echo(format_table(snap["ranking"], top, snap.get("ranked_by", "macro")))


@app.command()
@friendly
def demo():
    """Run everything on the bundled demo corpus and print the ranking."""
    from dataassess import pipeline

    s = settings()
    result = pipeline.run(str(DATA / "demo" / "corpus"), s, DATA / "demo" / "eval")
    _print_run(result, top=25)
    typer.echo(f"\nAll {len(result.ranking)} mixtures: {sys.argv[0]} ranking --json")


def _print_run(result, top: int) -> None:
    from dataassess.rank import format_table

    typer.echo(format_table(result.ranking, top))
    seed = "  ".join(f"{k}={v:.2f}" for k, v in result.seed_scores.items())
    typer.echo(f"\nseed perplexity (reference): {seed}")
    typer.echo(
        f"units trained {len(result.trained)}, reused {len(result.reused)}; mixtures {result.counts['mixtures']} "
        f"(scored {result.counts['scored']}, reused {result.counts['reused']}); {result.wall_s:.0f} s"
    )
    _report_rejected(result.rejected)
    typer.echo(f"snapshot: {result.snapshot}")


def _report_rejected(rejected: list[str]) -> None:
    for msg in rejected:
        typer.secho(f"quarantined: {msg}", err=True, fg="yellow")


if __name__ == "__main__":
    app()
