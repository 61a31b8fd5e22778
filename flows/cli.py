"""dataassess: which training data to use. Cuts a corpus into equal-token units, trains one model
per unit from a shared seed, and ranks candidate mixtures by the perplexity of their merged
unit models (Na et al. 2024), refreshed by Prefect intakes and tracked in MLflow."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import signal
import sys
import textwrap
import time
import traceback
from functools import wraps
from pathlib import Path
from typing import Annotated, Optional

import typer

try:  # newer typer vendors click; its usage errors are these classes
    from typer._click import exceptions as cli_errors
except ImportError:  # pragma: no cover
    from click import exceptions as cli_errors

from dataassess.config import Settings, load_settings
from dataassess.errors import UserError
from dataassess.store import Store
from dataassess.types import Snapshot

CORPUS_HELP = (
    "Corpus: a folder with one subfolder per partition, a dataset file (.jsonl, .parquet, ...) or hf://owner/name."
)


def _existing_corpus(value: str) -> str:
    """A missing corpus folder fails as the command line is read, before any heavy import."""
    from dataassess.corpus import check_source

    try:
        check_source(value)
    except UserError as e:
        _error(str(e))
        raise typer.Exit(2) from None
    return value


Corpus = Annotated[
    str, typer.Argument(help=CORPUS_HELP, show_default=False, metavar="CORPUS", callback=_existing_corpus)
]
PoolName = Annotated[
    Optional[str],
    typer.Option(
        "--pool",
        metavar="NAME",
        help="Pool name: pins its evaluation sets, names its models in MLflow (default: the corpus folder's name).",
    ),
]
RefreshEval = Annotated[
    bool,
    typer.Option(
        "--refresh-eval",
        help="Re-pin the held-out evaluation sets to the current partitions (re-scores every mixture).",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]
EvalSets = Annotated[
    Optional[Path],
    typer.Option(
        "--eval-sets",
        metavar="DIR",
        help="One subfolder per evaluation set (default: held-out documents, pinned per pool).",
    ),
]
Top = Annotated[
    Optional[int],
    typer.Option(
        "--top", min=1, metavar="N", help="Show only the best N mixtures (default: 30 in a table, all in JSON)."
    ),
]
TABLE_TOP = 30  # rows a ranking table shows unless told; a line says how many more there are

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help=__doc__, rich_markup_mode=None, pretty_exceptions_enable=False
)
DATA = Path(__file__).resolve().parents[1] / "dataassess" / "data"
_state: dict = {"verbose": False}
STORAGE_ERRORS = (errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT)


def settings() -> Settings:
    return _state["settings"]


def store() -> Store:
    """The command's store, constructed once from the settings."""
    return _state["store"]


def _error(message: str, fresh_line: bool = False) -> None:
    typer.secho(("\n" if fresh_line else "") + "error: " + " ".join(str(message).split()), err=True, fg="red")


def friendly(fn, writes: bool = True):
    """Bad input ends in one `error:` line on stderr and exit code 2. Anything else is a bug:
    one line saying so (exit 1), and its traceback with -v. A command that writes first checks
    that the store can be written."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            if writes:
                store().check_writable()
            return fn(*args, **kwargs)
        except UserError as e:
            _error(str(e))
            raise typer.Exit(2) from None
        except (typer.Exit, typer.Abort, cli_errors.ClickException):
            raise
        except KeyboardInterrupt:
            _error("interrupted; finished work is kept in the store and the next run resumes from it")
            raise typer.Exit(130) from None
        except Exception as e:
            if _orchestration_api_lost(e):
                _error(
                    "the orchestration API (Prefect) stopped answering: "
                    f"{type(e).__name__}: {str(e)[:200]}; finished work is kept in the store, "
                    "and a rerun of the command resumes from it",
                    fresh_line=True,  # Prefect's "Error logging to API" lines end without one
                )
                _exit_without_orchestration(2)
            if isinstance(e, OSError) and e.errno in STORAGE_ERRORS:  # the machine's: permissions, a full disk
                _error(
                    f"cannot write {e.filename or settings().store}: {e.strerror}; nothing half-written is kept, "
                    "and the next run resumes from what finished"
                )
                raise typer.Exit(2) from None
            if _state["verbose"]:
                traceback.print_exc()
            _error(
                f"internal error (a bug in dataassess, please report it): {type(e).__name__}: {e}"
                + ("" if _state["verbose"] else "; rerun with -v for the traceback")
            )
            raise typer.Exit(1) from None

    return wrapper


def _orchestration_api_lost(error: BaseException | None) -> bool:
    """Did the command fail because the Prefect API went away (a connection refused, reset or timed out)? Only
    Prefect's client speaks httpx here: MLflow uses requests, and its errors are caught where it is called."""
    import httpx

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, httpx.TransportError):
            return True
        error = error.__cause__ or error.__context__
    return False


def _exit_without_orchestration(code: int) -> None:
    """Exit now, the API gone: Prefect would otherwise drain its queued events and log lines at exit, each
    waiting out its retries (minutes of noise after the error line). The embedded API server, if it is
    alive but stuck, is stopped first; the store's writes are atomic, so nothing half-written is left."""
    from prefect.server.api.server import SubprocessASGIServer

    for server in list(SubprocessASGIServer._instances.values()):
        server.stop()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def command(*args, writes: bool = True, **kwargs):
    """app.command, with every command's errors handled by `friendly`."""
    return lambda fn: app.command(*args, **kwargs)(friendly(fn, writes))


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """The `dataassess` entry point: usage errors (a bad option or value) are one `error:` line too.
    SIGTERM (a scheduler's stop) ends a command as Ctrl-C does: its servers, Prefect's embedded one too, stop."""
    signal.signal(signal.SIGTERM, _terminated)
    try:
        code = app(standalone_mode=False)
    except cli_errors.NoArgsIsHelpError as e:
        typer.echo(e.ctx.get_help() if e.ctx else str(e))
        code = 2
    except cli_errors.UsageError as e:
        where = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
        _error(e.format_message() + where)
        code = 2
    except typer.Abort:
        _error("aborted")
        code = 130
    sys.exit(code or 0)


@app.callback()
def _main(
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", metavar="FILE", help="TOML config file (default: ./dataassess.toml if present)."
    ),
    store: Optional[Path] = typer.Option(
        None,
        "--store",
        metavar="DIR",
        help="Store folder for data, models, rankings, MLflow and Prefect (default: ./.dataassess).",
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Log progress details, and show tracebacks of internal errors."
    ),
):
    own = logging.getLogger("dataassess")  # the libraries' loggers stay theirs: Prefect's go to its UI, not here
    if not own.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        own.addHandler(handler)
    own.setLevel(logging.INFO if verbose else logging.WARNING)
    own.propagate = False
    _state["verbose"] = verbose
    try:
        _state["settings"] = load_settings(config, **({"store": store} if store else {}))
    except UserError as e:
        _error(str(e))
        raise typer.Exit(2) from None
    from flows.runtime import configure_process

    _state["store"] = Store(_state["settings"].store)
    configure_process(_state["store"], verbose)  # before Prefect is imported


@command(writes=False)
def config():
    """Print the effective configuration (defaults, file and DATAASSESS_* overrides)."""
    typer.echo(json.dumps(settings().model_dump(mode="json"), indent=2))


@command()
def seed():
    """Build (tiny) or import (HF id / local folder) the seed model."""
    from dataassess.seed import prepare_seed

    s = prepare_seed(settings(), store())
    typer.echo(f"seed {s.source}: {s.path}\ndigest {s.digest}")


@command()
def units(corpus: Corpus):
    """Validate the corpus and cut it into equal-token units."""
    from dataassess.pipeline import prepare
    from dataassess.types import TaskSet

    with prepare(store(), corpus, settings()) as pool:
        typer.echo(f"{'unit':<32} {'tokens':>8} {'distinct':>9} {'repeat':>7}  digest")
        for u in pool.units:
            typer.echo(f"{u.name:<32} {u.tokens:>8} {u.source_tokens:>9} {u.repeat:>7.2f}  {u.digest[:12]}")
        loaded = {name: pool.steps.evalsets.load(digest) for name, digest in pool.eval_sets.items()}
        of = {name: "items" if isinstance(es, TaskSet) else "documents" for name, es in loaded.items()}
        sizes = [f"{name} ({es.tokens:,} tokens, {es.documents} {of[name]})" for name, es in loaded.items()]
        typer.echo(f"evaluation sets: {', '.join(sizes)}")
    _report_quarantined(pool.quarantined)


@command()
def train(corpus: Corpus, eval_sets: EvalSets = None):
    """Train a model for every unit that has none yet."""
    from dataassess.pipeline import prepare, train

    with prepare(store(), corpus, settings(), eval_sets) as pool:
        train(pool)
    for m in pool.models.values():
        typer.echo(f"{m.unit}: final loss {m.final_loss:.3f} -> {store().weights(m.key)}")
    _report_quarantined(pool.quarantined)


@command()
def score(
    corpus: Corpus,
    mixture: str = typer.Option(
        ...,
        "--mixture",
        "-m",
        metavar="UNITS",
        help="Comma-separated unit names, e.g. satire.u0,jargon.u0",
        show_default=False,
    ),
    eval_sets: EvalSets = None,
):
    """Score one mixture: merge its unit models and measure perplexity on every evaluation set."""
    from dataassess import pipeline

    names = _unit_names(mixture)
    with pipeline.prepare(store(), corpus, settings(), eval_sets) as pool:
        unknown = [n for n in names if n not in {u.name for u in pool.units}]
        if unknown:
            raise UserError(
                f"unknown units {unknown} in --mixture; this corpus has {sorted(u.name for u in pool.units)}"
            )
        pipeline.train(pool, [pool.unit(n) for n in names])
        ranking, _ = pipeline.score(pool, mixtures=[names])
    typer.echo(json.dumps(ranking[0].to_json(), indent=2))


def _unit_names(mixture: str) -> list[str]:
    names = [n.strip() for n in mixture.replace("+", ",").split(",") if n.strip()]
    if not names:
        raise UserError(
            f"--mixture '{mixture}' names no units: give comma-separated unit names, e.g. satire.u0,jargon.u0"
        )
    return names


@command()
def rank(
    corpus: Corpus,
    eval_sets: EvalSets = None,
    pool: PoolName = None,
    refresh_eval: RefreshEval = False,
    k_max: Optional[int] = typer.Option(
        None, "--k-max", min=1, metavar="K", help="Largest mixture size (default: rank.k_max)."
    ),
    by: Optional[str] = typer.Option(
        None,
        "--by",
        metavar="SET",
        help="Rank by an evaluation set, a task family, 'macro' or 'z_macro' (default: rank.by).",
    ),
    top: Top = None,
):
    """The whole pipeline without Prefect or MLflow: units, unit models, merged mixtures, scores, ranking."""
    from dataassess import pipeline

    s = settings()
    s.rank = s.rank.model_copy(update={k: v for k, v in {"k_max": k_max, "by": by}.items() if v is not None})
    timings: dict[str, float] = {}
    with pipeline.phase(timings, "discover"):
        prepared = pipeline.prepare(store(), corpus, s, eval_sets, pool, refresh_eval)
    with prepared:
        prepared.timings.update(timings)
        result = pipeline.run(prepared)
    _report_quarantined(prepared.quarantined)
    _print_snapshot(result.snapshot, top)
    typer.echo(
        f"units trained {len(result.trained)}, reused {len(result.reused)}; mixtures {result.counts['mixtures']} "
        f"(scored {result.counts['scored']}, reused {result.counts['reused']}){_screening_note(result.counts)}; "
        f"{sum(result.timings.values()):.0f} s; snapshot {result.snapshot_path}"
    )


@command(writes=False)
def ranking(
    pool: Optional[str] = typer.Option(
        None, "--pool", metavar="NAME", help="The pool to show (default: the store's only pool)."
    ),
    by: Optional[str] = typer.Option(
        None,
        "--by",
        metavar="SET",
        help="Re-sort the stored scores by an evaluation set, a task family, 'macro' or 'z_macro'; nothing is "
        "recomputed.",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the ranking as one JSON object: its metadata and its rows."
    ),
    top: Top = None,
):
    """Show a pool's latest ranking: what it answers, how far to trust it, what changed."""
    from dataassess.pipeline import latest_snapshot

    snap = latest_snapshot(store(), pool)
    if snap is None:
        pools = store().ranked_pools()
        raise UserError(
            f"no ranking of pool '{pool}' in {settings().store}; pools: {', '.join(pools)}"
            if pool and pools
            else f"no ranking yet in {settings().store}: run `dataassess intake CORPUS` or `dataassess demo`"
        )
    if by is not None:
        snap = _resorted(snap, by)
    if as_json:
        data = snap.to_json()
        rows = data["ranking"][:top] if top else data["ranking"]
        meta = {
            k: data.get(k)
            for k in (
                "pool",
                "created",
                "previous",
                "ranked_by",
                "budget",
                "fidelity",
                "changes",
                "corpus",
                "seed_digest",
                "seed_scores",
                "seed_tasks",
                "families",
                "eval_sets",
                "counts",
                "quarantined",
            )
        }
        typer.echo(json.dumps({**meta, "n_mixtures": len(data["ranking"]), "rows": rows}, indent=2))
        return
    _print_snapshot(snap, top)


def _resorted(snap: Snapshot, by: str) -> Snapshot:
    """The snapshot's rows ranked by another evaluation set (or macro), from the stored scores."""
    from dataassess.rank import rank

    changes = {tuple(r.units): r.rank_change for r in snap.ranking}
    ranked = rank(snap.ranking, by, bool(snap.budget.get("within_size")), snap.families)
    for r in ranked:
        r.rank_change = changes[tuple(r.units)]
    return dataclasses.replace(snap, ranked_by=by, resorted=True, ranking=ranked)


@command()
def export(
    mixture: str = typer.Argument(
        ...,
        metavar="MIXTURE",
        help="The mixture's units, comma-separated (as in the ranking: a + b also works).",
        show_default=False,
    ),
    out: Path = typer.Argument(
        ...,
        metavar="DIR",
        help="A new folder for the merged model (HF format: config, tokenizer, safetensors).",
        show_default=False,
    ),
    pool: Optional[str] = typer.Option(
        None, "--pool", metavar="NAME", help="The pool whose unit models to merge (default: the store's only pool)."
    ),
):
    """Write a mixture's merged model as an HF folder that from_pretrained loads."""
    from dataassess.pipeline import export_mixture, latest_snapshot

    snap = latest_snapshot(store(), pool)
    if snap is None:
        raise UserError(
            f"no ranking yet in {settings().store}: the unit models to merge come from a pool's latest ranking"
        )
    folder = export_mixture(store(), snap, _unit_names(mixture), out)
    typer.echo(f"wrote {folder}: AutoModelForCausalLM.from_pretrained('{folder}')")


@command()
def demo(
    corpus: Optional[Path] = typer.Option(
        None, "--corpus", metavar="DIR", help="A folder of partitions to run the demo on (default: the bundled one)."
    ),
    eval_sets: EvalSets = None,
    late: Optional[str] = typer.Option(
        None, "--late", metavar="A,B", help="Partitions that arrive in the second wave (with --corpus)."
    ),
    pool: Optional[str] = typer.Option(None, "--pool", metavar="NAME", help="Pool name (default: demo)."),
):
    """The demo: two Prefect intakes (the second adds two partitions), tracked in MLflow."""
    from dataassess.store import check_pool_name
    from flows.demo import DATA, LATE_PARTITIONS, run_demo, waves
    from flows.runtime import embedded_prefect

    if (corpus is None) != (late is None) or (eval_sets and corpus is None):
        raise UserError("--corpus and --late go together (--eval-sets too): name the partitions of wave 2")
    pool = pool or "demo"
    options = dict(source=DATA / "corpus", eval_sets=DATA / "eval", late=LATE_PARTITIONS, pool=pool)
    if corpus is not None:
        options.update(source=corpus, eval_sets=eval_sets, late=tuple(n.strip() for n in late.split(",") if n.strip()))
    check_pool_name(pool)  # a bad pool name, corpus or --late fails before Prefect starts
    waves(options["source"], options["late"])
    with embedded_prefect(settings(), store()):
        summaries = run_demo(settings(), store(), echo=typer.echo, **options)
    for wave, summary in enumerate(summaries, 1):
        typer.echo(f"wave {wave}: " + _summary_line(summary))
    _print_snapshot(_latest(pool), top=None)
    _print_weights(summaries[-1].get("weights"))
    _print_ui_hint(pool)


@command()
def intake(corpus: Corpus, eval_sets: EvalSets = None, pool: PoolName = None, refresh_eval: RefreshEval = False):
    """One Prefect intake: train new or changed units, register them, re-score, publish a ranking."""
    from dataassess.pipeline import check_inputs, pool_name
    from flows.runtime import embedded_prefect
    from registry.tracking import connect

    connect(store())  # a tracking server that is down fails here, before any training
    check_inputs(
        store(), corpus, settings(), eval_sets, pool, refresh_eval
    )  # bad input fails before Prefect or training
    with embedded_prefect(settings(), store()):
        from flows.intake import intake as intake_flow

        summary = intake_flow(
            corpus,
            settings().model_dump(mode="json"),
            str(eval_sets) if eval_sets else None,
            pool or pool_name(corpus),
            True,
            refresh_eval,
        )
    typer.echo(_summary_line(summary))
    _report_quarantined(summary["quarantined_partitions"])
    _print_snapshot(_latest(summary["pool"]), top=None)
    _print_weights(summary.get("weights"))
    _print_ui_hint(summary["pool"])


@command()
def serve(
    corpus: Corpus,
    interval: float = typer.Option(
        300, "--interval", min=1, metavar="SECONDS", help="Seconds between scheduled intakes."
    ),
    eval_sets: EvalSets = None,
):
    """Serve the intake as a Prefect deployment: every --interval seconds, and on partition events."""
    from dataassess.pipeline import check_inputs
    from flows.runtime import ensure_prefect_home
    from registry.tracking import connect

    connect(store())
    check_inputs(store(), corpus, settings(), eval_sets)  # bad input fails here, before any server starts
    ensure_prefect_home()
    from flows.serve import prefect_server
    from flows.serve import serve as serve_flow

    # Ctrl-C stops it even when started where SIGINT is ignored (a shell's background job, nohup)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with prefect_server(store()) as url:
        typer.echo(
            f"Prefect API {url} (UI: {url.removesuffix('/api')}); serving intake of {corpus} every {interval:g} s; "
            "Ctrl-C to stop"
        )
        serve_flow(corpus, settings(), interval, str(eval_sets) if eval_sets else None)


@command("add-partition")
def add_partition(
    path: Path = typer.Argument(..., metavar="PATH", help="A partition folder to add.", show_default=False),
    corpus: Path = typer.Option(..., "--corpus", metavar="ROOT", help="The corpus root it joins.", show_default=False),
    name: Optional[str] = typer.Option(
        None, "--name", metavar="NAME", help="Partition name (default: the folder's name)."
    ),
):
    """Validate a partition, copy it into the corpus root and emit dataassess.partition.created."""
    from dataassess.corpus import add_partition as add
    from flows.runtime import ensure_prefect_home

    part, target = add(path, corpus, name)
    ensure_prefect_home()
    from flows.serve import announce_partition

    sent = announce_partition(store(), str(corpus), target.name, part.digest)
    typer.echo(f"added {target} ({len(part.documents)} documents, digest {part.digest[:12]})")
    typer.echo(
        "event dataassess.partition.created emitted"
        if sent
        else "no `dataassess serve` runs for this store: the next intake will pick it up"
    )


@command()
def fidelity(
    corpus: Corpus,
    eval_sets: EvalSets = None,
    pool: PoolName = None,
    budget: Optional[str] = typer.Option(
        None,
        "--budget",
        metavar="NAME",
        help="The budget a score answers (dataassess/budgets.py): fixed, every mixture trained on B tokens, or union, "
        "on all its units (fits the calibration). Default: rank.budget.",
    ),
    n: Optional[int] = typer.Option(
        None,
        "--n",
        min=3,
        metavar="N",
        help="Mixtures to sample, k = 1..k-max (stratified by size). Default: fidelity.mixtures.",
    ),
    k_max: Optional[int] = typer.Option(
        None, "--k-max", min=1, metavar="K", help="Largest mixture size sampled. Default: fidelity.k_max."
    ),
    replicates: Optional[int] = typer.Option(
        None,
        "--replicates",
        "--ceiling",
        min=0,
        metavar="N",
        help="Mixtures given a second ground truth (a third data order): the noise model and the ceiling. "
        "Default: fidelity.replicates.",
    ),
    weighted: bool = typer.Option(
        False,
        "--weighted",
        help="Weighted mixtures instead of subsets: --n weight vectors over the "
        "partitions, each merged by its weights and trained at the fixed budget on tokens drawn by them.",
    ),
    merge_method: Optional[str] = typer.Option(
        None,
        "--merge-method",
        metavar="NAME",
        help="Measure this merge method's proxies (default: merge.method). Kept as the pool's fidelity only when it "
        "is the pool's own.",
    ),
    compare_merges: bool = typer.Option(
        False, "--compare-merges", help="Measure every registered merge method against one set of ground truths."
    ),
    as_json: AsJson = False,
    log_mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log a fidelity run to MLflow."),
):
    """Train ground truth for sampled mixtures and report how well the ranking's scores predict it."""
    from datetime import datetime, timezone

    from dataassess import budgets
    from dataassess import fidelity as study
    from dataassess.merge import merge_spec
    from dataassess.pipeline import prepare

    s = settings()
    chosen = budgets.budget(budget) if budget else budgets.budget(s.rank.budget)
    if weighted and not chosen.fixed_tokens:
        raise UserError("--weighted mixtures are measured at the fixed budget: pass --budget fixed")
    if compare_merges and (weighted or merge_method):
        raise UserError("--compare-merges measures every merge method on subsets: drop --weighted and --merge-method")
    spec = None
    if merge_method:
        spec = merge_spec(merge_method, s.merge.params if merge_method == s.merge.method else None)
    if log_mlflow:
        from registry.tracking import connect

        connect(store())  # a tracking server that is down fails before the ground truths are trained
    with prepare(store(), corpus, s, eval_sets, pool) as prepared:
        started = time.perf_counter()  # the seed is built: what the measurement itself costs
        if compare_merges:
            results = study.compare_merges(prepared, n, k_max, chosen, replicates)
        elif weighted:
            results = {prepared.merge.method: study.run_weighted_fidelity(prepared, n or 16, replicates)}
        else:
            result = study.run_fidelity(prepared, n, k_max, chosen, replicates, merge=spec)
            results = {result.report["merge"]["method"]: result}
        measured = datetime.now(timezone.utc).isoformat(timespec="seconds")
        kept = None
        for result in results.values():
            result.report = _finite(
                {
                    **result.report,
                    "measured": measured,
                    "wall_s": round(time.perf_counter() - started, 1),
                    "corpus": corpus,
                    "pool": prepared.name,
                }
            )
            kept = study.save(prepared, result) or kept
    _report_quarantined(prepared.quarantined)
    if log_mlflow:
        from registry.fidelity import log_fidelity

        client = connect(store())
        for result in results.values():
            log_fidelity(client, store(), result.report, result.rows, prepared.name)
    reports = {name: r.report for name, r in results.items()}
    if as_json:
        out = {"budget": chosen.name, "methods": reports} if compare_merges else next(iter(reports.values()))
        typer.echo(json.dumps(out, indent=2))
        return
    if compare_merges:
        _print_merge_comparison(reports)
    else:
        _print_fidelity(next(iter(reports.values())), chosen)
    where = f"; figures in {kept}; the next ranking of this pool shows them" if kept else ""
    typer.echo(f"{next(iter(reports.values()))['macro']['n_mixtures']} mixtures{where}")


FIGURE_HEADS = (
    *("sigma", "spearman", "dec acc", "resolv", "pairs", "naive", "seed"),
    *("ceil", "repl", "ceil rho", "repl rho"),  # on the replicated mixtures: the score's and a replicate truth's
)


def _columns(cells) -> str:
    return "".join(f" {c:>8}" for c in cells)


def _figure_cells(f: dict, sigma: float) -> str:
    """sigma, the score's Spearman, decision and resolvable-decision accuracy and its pairs, the baselines'
    resolvable accuracy, and on the replicated mixtures the score's and the replicate truth's resolvable accuracy,
    then their Spearman."""
    ceiling = {who: f["ceiling"].get(who, {}) for who in ("score", "replicate")}
    cells = [
        _f(sigma),
        _f(f["spearman"]),
        _f(f["decision_accuracy"]),
        _f(f["resolvable_decision_accuracy"]),
        str(f["n_resolvable_pairs"]),
        _f(f["baselines"]["naive"]["resolvable_decision_accuracy"]),
        _f(f["baselines"]["seed"]["resolvable_decision_accuracy"]),
        *(_f(ceiling[who].get("resolvable_decision_accuracy")) for who in ("score", "replicate")),
        *(_f(ceiling[who].get("spearman")) for who in ("score", "replicate")),
    ]
    return _columns(cells)


def _print_fidelity(report: dict, budget) -> None:
    what = "calibrated (leave-one-out)" if budget.calibrated else f"{report['merge']['method']} merge"
    noise = report["noise"]
    typer.echo(
        f"budget: {report['budget']}; score: {what}; sigma: data-order noise of log perplexity from "
        f"{noise['n_replicates']} replicate truths; resolv: accuracy on the pairs whose truths differ by more than "
        "2.83 sigma; ceil / repl: the score's and a replicate truth's resolvable accuracy, ceil rho / repl rho: "
        "their Spearman, on the replicated mixtures"
    )
    if not noise["n_replicates"]:
        typer.echo("no replicate truths (--replicates 0): no noise model, so sigma, resolv, ceil and repl are n/a")
    typer.echo(f"{'eval set':<20}" + _columns(FIGURE_HEADS))
    for name, f in [*report["eval_sets"].items(), ("MACRO", report["macro"])]:
        sigma = noise["sigma_log_ppl"]["macro" if name == "MACRO" else name]
        label = name if report.get("set_metric", {}).get(name) != "gold_bpb" else f"{name[:11]} gold_bpb"
        typer.echo(f"{label[:20]:<20}" + _figure_cells(f, sigma))
    for name, metrics in report.get("task_figures", {}).items():
        cells = "; ".join(
            f"{m}: Spearman {_f(v['spearman'])}, decision accuracy {_f(v['decision_accuracy'])}"
            for m, v in metrics.items()
        )
        typer.echo(f"task {name} ({next(iter(metrics.values()))['n_mixtures']} mixtures), proxy vs truth: {cells}")
    for k, by in report.get("by_k", {}).items():
        m = by["macro"]
        typer.echo(
            f"within k = {k} ({m['n_mixtures']} mixtures), macro: Spearman {_f(m['spearman'])}, resolvable-decision "
            f"accuracy {_f(m['resolvable_decision_accuracy'])} ({m['n_resolvable_pairs']} pairs)"
        )


def _print_merge_comparison(reports: dict[str, dict]) -> None:
    """One table: each merge method's macro figures against the same ground truths."""
    first = next(iter(reports.values()))
    typer.echo(f"budget: {first['budget']}; macro figures of each merge method against the same ground truths")
    typer.echo(f"{'merge method':<20}" + _columns(FIGURE_HEADS))
    for name, report in reports.items():
        typer.echo(f"{name[:20]:<20}" + _figure_cells(report["macro"], report["noise"]["sigma_log_ppl"]["macro"]))


@command()
def optimize(
    corpus: Corpus,
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Also train the seed at the fixed budget on the optimized, uniform and "
        "natural weights and on the best subset, and report their real perplexities.",
    ),
    eval_sets: EvalSets = None,
    pool: PoolName = None,
    as_json: AsJson = False,
    log_mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log an optimization run to MLflow."),
):
    """Search the partition shares of a fixed token budget (weighted merges, a surrogate, scipy), warm-started."""
    from dataassess.optimize import optimize as search_weights
    from dataassess.pipeline import prepare

    if log_mlflow:
        from registry.tracking import connect

        connect(store())  # a tracking server that is down fails before the search
    with prepare(store(), corpus, settings(), eval_sets, pool) as prepared:
        result = search_weights(prepared, verify_by_training=verify)
    report = _finite(result.report)
    if log_mlflow:
        from registry.optimize import log_optimization
        from registry.tracking import latest_ranking_run

        client = connect(store())
        report["mlflow_run_id"] = log_optimization(
            client, store(), report["pool"], report, result.cv, latest_ranking_run(client, report["pool"])
        )
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(_weights_table(report))
    sur = report["surrogate"]
    typer.echo(
        f"surrogate {sur['model']}: cross-validated Spearman {_f(sur['spearman'])} over {sur['n_proxies']} weighted "
        "merges "
        f"(scored now {report['counts']['scored']}, reused {report['counts']['reused']})"
    )
    v = report["objective_value"]
    typer.echo(
        f"objective {report['objective']} of the weighted merge: optimized {v['optimized']:.3f}, uniform "
        f"{v['uniform']:.3f}, "
        f"natural {v['natural']:.3f}"
    )
    if "verified" in report:
        from dataassess.optimize import verified_lines

        typer.echo("\n".join(verified_lines(report["verified"])))
    else:
        typer.echo("not verified by training: add --verify")


def _weights_table(report: dict) -> str:
    change = report.get("change")
    lines = [
        f"mixture weights: shares of a {report['budget_tokens']:,}-token budget (objective {report['objective']})",
        f"{'partition':<28} {'share':>7} {'natural':>8}" + (f" {'change':>8}" if change else ""),
    ]
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
        f"trained {s['trained']}, skipped {s['skipped']}, quarantined {s['quarantined']}, registered "
        f"{s['registered']}; "
        f"mixtures {s['mixtures']} (re-scored {s['rescored']}, reused {s['reused']}){_screening_note(s)}; champion "
        f"v{s['champion_version']}"
    )


def _screening_note(counts: dict) -> str:
    if "guided_search" in counts:
        g = counts["guided_search"]
        return f"; guided search: scored {g['scored']} of {g['candidates']} candidates in {len(g['rounds'])} rounds"
    if "screening" not in counts:
        return ""
    sc = counts["screening"]
    rungs = ", ".join(f"{g['scored']} on {g['fraction']:.2g}" for g in sc["rungs"])
    if "budget" in sc:  # more new mixtures than rank.max_full_scores
        return (
            f"; {sc['screened']} new mixtures, over rank.max_full_scores = {sc['budget']}, screened: {rungs} of "
            f"the sets, {sc['cost']:.2f} of scoring them in full"
        )
    return f"; screened: {rungs} of the sets, {sc['cost']:.2f} of full evaluation"


def _latest(pool: str) -> Snapshot:
    return store().latest_ranking(pool)


def _print_snapshot(snap: Snapshot, top: int | None) -> None:
    """A ranking as a data lead reads it: which pool and when, what its scores answer, how far to trust
    them, the table (with the seed as a reference row), then what changed since the previous one."""
    from dataassess.rank import fidelity_line, format_table

    created = snap.created
    when = f"{created[:4]}-{created[4:6]}-{created[6:8]} {created[9:11]}:{created[11:13]} UTC"
    typer.echo(
        f"\npool {snap.pool}: ranking of {when}, {len(snap.ranking)} mixtures of {len(snap.units)} unit models"
        + (f", re-sorted by {snap.ranked_by}" if snap.resorted else "")
    )
    typer.echo(_budget_line(snap))
    typer.echo(fidelity_line(snap.fidelity))
    typer.echo(
        format_table(snap.ranking, top or TABLE_TOP, snap.ranked_by, snap.seed_scores, seed_tasks=snap.seed_tasks)
    )
    typer.echo(_changes_line(snap))
    typer.echo(f"All {len(snap.ranking)} mixtures as JSON: dataassess ranking --pool {snap.pool} --json")


def _changes_line(snap: Snapshot) -> str:
    """What changed since the pool's previous ranking, by the same rule as the table's change column."""
    ch = snap.changes
    if not snap.previous or not ch:
        return "first ranking of this pool"
    dropped = ch.get("dropped") or []
    gone = sorted({u for units in dropped for u in units} - {u for r in snap.ranking for u in r.units})
    parts = [
        f"{len(ch['new'])} new mixture(s)" if ch["new"] else "no new mixtures",
        *([f"{len(dropped)} dropped (units no longer in the corpus: {', '.join(gone)})"] if dropped else []),
        f"{len(ch['moved'])} changed order among those ranked before"
        if ch["moved"]
        else "the order of those ranked before is unchanged",
    ]
    best = " + ".join(ch["best"])
    parts.append(
        f"new best: {best} (was {' + '.join(ch['previous_best'])})" if ch["new_best"] else f"best unchanged: {best}"
    )
    return textwrap.fill("since the previous ranking: " + "; ".join(parts), 120, subsequent_indent="  ")


def _print_weights(weights: dict | None) -> None:
    """The intake's re-optimized mixture weights, and how they moved since the last optimization."""
    if not weights:
        return
    if "skipped" in weights:
        typer.echo(f"\nmixture weights not re-optimized: {weights['skipped']}")
        return
    change = weights.get("change") or {}
    cells = [
        f"{p} {s:.2f}" + (f" ({change[p]:+.2f})" if p in change else " (new)" if change else "")
        for p, s in sorted(weights["weights"].items(), key=lambda kv: -kv[1])
    ]
    typer.echo("")
    typer.echo(
        textwrap.fill(
            f"mixture weights (shares of the fixed budget{', change since the last optimization' if change else ''}; "
            f"surrogate cross-validated Spearman {weights['surrogate_spearman']:.2f}):",
            120,
        )
    )
    typer.echo(textwrap.fill(", ".join(cells), 120, initial_indent="  ", subsequent_indent="  "))
    typer.echo("  details and the verified comparison: dataassess optimize CORPUS --verify")


def _budget_line(snap: Snapshot) -> str:
    mode, score = snap.budget.get("mode", "?"), snap.budget.get("score", "not recorded")
    return f"budget: {mode} ({score}); ranked by {snap.ranked_by}"


def _print_ui_hint(pool: str) -> None:
    from registry.tracking import RANKINGS_EXPERIMENT, connect, tracking_uri

    uri = tracking_uri(store())
    exp = connect(store()).get_experiment_by_name(RANKINGS_EXPERIMENT)
    runs = f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" if exp else ""
    server = uri.startswith("http")
    ui = f"{uri.rstrip('/')}/{runs}" if server else f"`make ui`, then http://127.0.0.1:5000/{runs}"
    prefect = os.environ.get("PREFECT_API_URL", "").removesuffix("/api") or "`make prefect-ui`"
    typer.echo(
        f"\nMLflow ({uri}): {ui} : the ranking runs of pool '{pool}' (the latest "
        f"on top); Model registry: '{pool}.<unit>' and '{pool}-champion'. Prefect flow runs: {prefect}."
    )


def _report_quarantined(quarantined: list[str]) -> None:
    for msg in quarantined:
        typer.secho(f"quarantined: {msg}", err=True, fg="yellow")


if __name__ == "__main__":
    main()
