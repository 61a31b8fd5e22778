"""The pipeline, defined once: corpus -> units -> train -> merge -> score -> rank -> snapshot.

run(corpus, settings, map_fn) is the whole sequence. Its independent work items (a unit to
train, a mixture to score) go through map_fn(name, fn, items, label): the CLI maps them in a
loop (serial_map), the Prefect flow as tasks, a distributed runner as remote tasks. Items are
small typed records (Unit, Mixture); every step is cached in the store (steps.py).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, TypeVar

from tqdm.auto import tqdm

from .calibration import Calibration
from .config import Settings
from .corpus import CorpusError, Document, discover, eval_sets_from_folder
from .errors import UserError
from .evalsets import EvalSets, build_eval_set
from .rank import enumerate_mixtures, fidelity_summary, macro, rank, rank_changes
from .screen import Rung, screening_cost, successive_halving
from .seed import Seed, prepare_seed
from .steps import Steps
from .store import Store, read_json, write_json
from .types import Mixture, RankedMixture, Unit, UnitModel
from .units import cut_units

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class MapFn(Protocol):
    def __call__(self, name: str, fn: Callable[[T], R], items: Sequence[T], label: Callable[[T], str]) -> list[R]: ...


def serial_map(progress: bool = True) -> MapFn:
    """Run the items one after another in this process, with a progress bar."""

    def map_fn(name, fn, items, label):
        with tqdm(items, desc=name, disable=not progress or not items) as bar:  # closed before an error is printed
            return [fn(item) for item in bar]

    return map_fn


@contextmanager
def phase(timings: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall seconds of a block under `name`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - start, 2)


# ---- corpus -> units, evaluation sets ---------------------------------------------


@dataclass
class Inputs:
    """What one run sees: the seed, the valid units, the quarantined partitions, the evaluation sets."""

    pool: str
    seed: Seed
    units: list[Unit]
    quarantined: list[str]  # one message per partition
    eval_sets: dict[str, str]  # name -> digest


def pool_name(corpus: str | Path) -> str:
    """A pool is named after its corpus root unless told otherwise."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", Path(str(corpus).rstrip("/")).name).strip("-") or "pool"


def prepare(
    corpus: str | Path,
    settings: Settings,
    eval_sets_dir: str | Path | None = None,
    pool: str | None = None,
    refresh_eval: bool = False,
    progress: bool = True,
) -> Inputs:
    """Seed, units and evaluation sets for a corpus. Bad partitions are quarantined, not fatal.

    Evaluation sets are the `eval_sets_dir` folder's, else the held-out documents pinned at the
    pool's first run (refresh_eval re-pins them to the current partitions).
    """
    store = Store(settings.store)
    pool = pool or pool_name(corpus)
    cache = str(store.hf_cache())
    found, quarantined = check_inputs(corpus, settings, eval_sets_dir, pool, refresh_eval)
    seed = prepare_seed(settings, progress=progress)
    tokenizer = seed.load_tokenizer()
    units: list[Unit] = []
    heldout: dict[str, list[Document]] = {}
    for part in found:
        try:
            units.extend(cut_units(store, part, seed, tokenizer, settings))
        except CorpusError as e:
            quarantined.append(e)
            continue
        for doc in part.split(settings.corpus.heldout_fraction)[1]:
            group = doc.domain if settings.corpus.eval_group == "domain" else part.name
            heldout.setdefault(group, []).append(doc)
    if eval_sets_dir is not None:
        heldout = eval_sets_from_folder(Path(eval_sets_dir), cache)
    ctx = min(settings.train.seq_len, _context_length(seed))
    evalsets, eval_sets = EvalSets(store), {}
    for name, docs in sorted(heldout.items()):
        try:
            eval_sets[name] = evalsets.save(
                build_eval_set(name, docs, tokenizer, ctx, settings.score.stride, settings.corpus.eval_max_tokens)
            )
        except UserError as e:
            log.warning("evaluation set skipped: %s", e)
    if not units:
        raise CorpusError(str(corpus), "no valid partitions: " + "; ".join(map(str, quarantined)), str(corpus))
    if not eval_sets:
        raise CorpusError(
            str(corpus), "no evaluation sets: hold out documents (corpus.heldout_fraction) or pass --eval-sets"
        )
    if eval_sets_dir is None:
        eval_sets = evalsets.pin(pool, eval_sets, refresh_eval)
    check_rank_by(settings.rank.by, eval_sets)  # before any unit is trained
    return Inputs(pool, seed, units, [str(e) for e in quarantined], eval_sets)


def check_inputs(
    corpus: str | Path,
    settings: Settings,
    eval_sets_dir: str | Path | None = None,
    pool: str | None = None,
    refresh_eval: bool = False,
) -> tuple[list, list[CorpusError]]:
    """The corpus's partitions (and the quarantined ones), with every check that needs no seed: the paths,
    the partitions, and that rank.by names an evaluation set. Bad input fails here, before anything is built."""
    store = Store(settings.store)
    found, quarantined = discover(corpus, settings.corpus.partition_field, cache_dir=str(store.hf_cache()))
    if eval_sets_dir is not None and not Path(eval_sets_dir).is_dir():
        raise UserError(
            f"evaluation sets not found: {eval_sets_dir} is not a folder (one subfolder per evaluation set)"
        )
    check_rank_by(
        settings.rank.by,
        _eval_set_names(store, found, settings, eval_sets_dir, pool or pool_name(corpus), refresh_eval),
    )
    check_unit_budget(found, settings.units.tokens)
    return found, quarantined


def check_unit_budget(found: Sequence, budget: int) -> None:
    """units.tokens against the partitions, before any tokenizer exists. A token covers at least one byte,
    except EOS (one per document) and a tokenizer's prefix (at most one per piece of a document, at least a
    byte each), so a partition of b bytes in d documents holds at most 2b + d tokens."""
    if not found:
        return
    sizes = {p.name: (sum(len(d.text.encode("utf-8")) for d in p.documents), len(p.documents)) for p in found}
    name, (size, docs) = max(sizes.items(), key=lambda kv: 2 * kv[1][0] + kv[1][1])
    if budget > 2 * size + docs:
        raise UserError(
            f"units.tokens = {budget:,} is larger than every partition: the largest, '{name}', holds "
            f"{size:,} bytes of text, at most {2 * size + docs:,} tokens; lower units.tokens"
        )


def _eval_set_names(
    store: Store, found: Sequence, settings: Settings, eval_sets_dir, pool: str, refresh_eval: bool
) -> set[str]:
    """The names the evaluation sets can have, known before the seed is built: the folder's subfolders,
    else the held-out groups (and the pool's pinned sets)."""
    if eval_sets_dir is not None:
        return {p.name for p in Path(eval_sets_dir).iterdir() if p.is_dir() and not p.name.startswith(".")}
    pinned = store.pinned_eval_sets(pool)
    names = set(read_json(pinned)) if pinned.exists() and not refresh_eval else set()
    for part in found:
        held = part.split(settings.corpus.heldout_fraction)[1]
        names |= (
            {doc.domain for doc in held} if settings.corpus.eval_group == "domain" else ({part.name} if held else set())
        )
    return names


def check_rank_by(by: str, eval_sets: Mapping[str, str] | set[str]) -> None:
    if by != "macro" and by not in eval_sets:
        raise UserError(f"cannot rank by '{by}': evaluation sets are {sorted(eval_sets)} or 'macro'")


def _context_length(seed: Seed) -> int:
    cfg = json.loads((seed.path / "config.json").read_text())
    return cfg.get("n_positions") or cfg.get("max_position_embeddings") or 2048


# ---- train ------------------------------------------------------------------------


def train_units(steps: Steps, units: Sequence[Unit], map_fn: MapFn) -> tuple[dict[str, UnitModel], list[str]]:
    """A model per unit, training only those the store lacks; returns (models by unit, units trained now)."""
    done = {u.name: steps.trained(u) for u in units}  # one check (and weights hash) per unit
    pending = [u for u in units if done[u.name] is None]
    trained = dict(zip((u.name for u in pending), map_fn("train", steps.train, pending, lambda u: u.name)))
    models = {u.name: done[u.name] or trained[u.name] for u in units}
    return models, [u.name for u in pending]


# ---- merge -> score -> rank -------------------------------------------------------


def score_and_rank(
    steps: Steps,
    models: Mapping[str, UnitModel],
    eval_sets: Mapping[str, str],
    map_fn: MapFn,
    mixtures: Sequence[Sequence[str]] | None = None,
) -> tuple[list[RankedMixture], dict]:
    """Score every candidate mixture (every one on the full sets, or by staged screening) and rank them.
    Cached scores are read here; only mixtures missing one go through map_fn."""
    r = steps.settings.rank
    check_rank_by(r.by, eval_sets)
    candidates = enumerate_mixtures(sorted(models), r.k_max, mixtures if mixtures is not None else r.mixtures)
    computed: set[tuple[str, ...]] = set()
    last: dict[tuple[str, ...], dict] = {}
    token_share: dict[float, float] = {}
    full_tokens = steps.evalsets.tokens(eval_sets)

    def score(mixes: Sequence[tuple[str, ...]], fraction: float) -> dict[tuple[str, ...], float]:
        sets = dict(eval_sets) if fraction == 1.0 else steps.evalsets.sliced(eval_sets, fraction)
        token_share[fraction] = steps.evalsets.tokens(sets) / full_tokens
        mixture = {m: steps.mixture(m, models) for m in mixes}
        found = {m: steps.cached(mixture[m].key, sets) for m in mixes}
        pending = [m for m in mixes if len(found[m]) < len(sets)]
        scored = map_fn(
            "score", lambda mix: steps.score(mix, sets), [mixture[m] for m in pending], lambda mix: mix.label
        )
        found.update(zip(pending, scored))
        computed.update(pending)
        losses = {}
        for m in mixes:
            last[m] = found[m]
            perplexities = {k: v["perplexity"] for k, v in found[m].items()}
            losses[m] = macro(perplexities) if r.by == "macro" else perplexities[r.by]
        return losses

    if r.screen and len(candidates) > r.screen_keep:
        placed, rungs = successive_halving(candidates, score, r.screen_eta, r.screen_min_fraction, r.screen_keep)
    else:
        placed, rungs = [(m, 1.0) for m in candidates], [Rung(1.0, len(candidates), len(candidates))]
        score(candidates, 1.0)
    rows = [
        RankedMixture(
            list(mix),
            {n: s["perplexity"] for n, s in sorted(last[mix].items())},
            {n: s["bits_per_byte"] for n, s in sorted(last[mix].items())},
            evaluated_fraction=fraction,
        )
        for mix, fraction in placed
    ]
    counts = {"mixtures": len(candidates), "scored": len(computed), "reused": len(candidates) - len(computed)}
    if r.screen:
        counts["screening"] = {
            "rungs": [asdict(g) for g in rungs],
            "cost": screening_cost(rungs, len(candidates), token_share),
        }
    return rank(rows, r.by), counts


# ---- what the scores answer -------------------------------------------------------


def apply_budget(settings: Settings, inputs: Inputs, ranking: list[RankedMixture]) -> tuple[list[RankedMixture], dict]:
    """The ranking under rank.budget, and a label saying what its scores are.

    fixed: the uniform average's perplexities, the first-order proxy of training each mixture on B tokens.
    union: with the pool's calibration, its predictions (and intervals) of training on all the units;
    without one, sizes are not compared: mixtures are ranked within each size only.
    """
    r = settings.rank
    if r.budget == "fixed":
        tokens = r.budget_tokens or settings.units.tokens
        return ranking, {
            "mode": "fixed",
            "tokens": tokens,
            "score": f"uniform parameter average: proxy of training on {tokens} tokens",
        }
    calibration = load_calibration(settings, inputs)
    if calibration is None:
        return rank(ranking, r.by, within_size=True), {
            "mode": "union",
            "calibrated": False,
            "score": "uniform parameter average, ranked within each size only: no union calibration for this pool and "
            "these evaluation sets (run `dataassess fidelity --budget union`)",
        }
    for row in ranking:
        row.proxy_scores, row.scores, row.intervals = dict(row.scores), {}, {}
        for name, proxy in row.proxy_scores.items():
            ppl, lo, hi = calibration.sets[name].predict(proxy, row.k)
            row.scores[name], row.intervals[name] = ppl, [lo, hi]
            row.bits_per_byte[name] *= math.log(ppl) / math.log(proxy)  # same tokens and bytes: bpb scales with log ppl
    return rank(ranking, r.by), {
        "mode": "union",
        "calibrated": True,
        "score": "calibrated prediction of training on the whole union, with 95% intervals",
    }


def load_calibration(settings: Settings, inputs: Inputs) -> Calibration | None:
    """The pool's union calibration, if one was fitted for this seed, train config and these evaluation sets."""
    path = Store(settings.store).calibration(inputs.pool)
    if not path.exists():
        return None
    calibration = Calibration.from_json(read_json(path))
    same = (
        calibration.eval_sets == inputs.eval_sets
        and calibration.seed_digest == inputs.seed.digest
        and calibration.train_config == settings.train.digest()
    )
    return calibration if same else None


# ---- snapshot -------------------------------------------------------------------------


def save_ranking(settings: Settings, ranking: list[RankedMixture], info: dict) -> Path:
    """Write a snapshot of the pool and point its `latest.json` at it; changes are against the pool's previous one."""
    pool = info["pool"]
    folder = Store(settings.store).rankings(pool)
    previous = latest_ranking(settings, pool)
    changes = rank_changes(ranking, previous["ranking"] if previous else None)
    fidelity = Store(settings.store).fidelity(pool)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    snapshot = {
        "created": stamp,
        "previous": previous["created"] if previous else None,
        "ranked_by": settings.rank.by,
        "changes": changes,
        "fidelity": fidelity_summary(read_json(fidelity)["report"] if fidelity.exists() else None),
        "ranking": [r.to_json() for r in ranking],
        **info,
    }
    write_json(folder / f"{stamp}.json", snapshot)
    write_json(folder / "latest.json", snapshot)
    return folder / f"{stamp}.json"


def ranked_pools(settings: Settings) -> list[str]:
    """The pools that have a ranking in this store."""
    root = Store(settings.store).rankings()
    return sorted(p.name for p in root.iterdir() if (p / "latest.json").is_file()) if root.is_dir() else []


def latest_ranking(settings: Settings, pool: str | None = None) -> dict | None:
    """The pool's latest snapshot; without a pool, the only pool's (an error naming them when there are several)."""
    if pool is None:
        pools = ranked_pools(settings)
        if len(pools) > 1:
            raise UserError(
                f"the store {settings.store} ranks several pools: {', '.join(pools)}; choose one with --pool"
            )
        if not pools:
            return None
        pool = pools[0]
    path = Store(settings.store).rankings(pool) / "latest.json"
    return read_json(path) if path.exists() else None


def export_mixture(settings: Settings, snapshot: dict, units: Sequence[str], out: str | Path) -> Path:
    """A mixture of the snapshot's unit models, merged as in its ranking, written as an HF folder (config,
    tokenizer, model.safetensors) that from_pretrained loads. The folder appears whole or not at all."""
    import shutil

    from .steps import materialize
    from .store import atomic_dir

    out, store = Path(out), Store(settings.store)
    known = snapshot["units"]
    unknown = [u for u in units if u not in known]
    if unknown:
        raise UserError(f"unknown units {unknown}; pool '{snapshot['pool']}' has {sorted(known)}")
    if out.exists():
        raise UserError(f"{out} already exists; choose a new folder")
    seed = next(
        (
            f
            for f in sorted(store.root.glob("seeds/*"))
            if (f / "seed.json").is_file() and read_json(f / "seed.json")["digest"] == snapshot["seed_digest"]
        ),
        None,
    )
    if seed is None:
        raise UserError(
            f"the seed of pool '{snapshot['pool']}' ({snapshot['seed_digest'][:12]}) is not in the store {store.root}"
        )
    ordered = sorted(set(units))
    weights = None if settings.rank.weighting == "uniform" else tuple(float(known[u]["source_tokens"]) for u in ordered)
    digests = tuple(known[u].get("weights_digest", "") for u in ordered)
    merged = materialize(store, Mixture(tuple(ordered), tuple(known[u]["key"] for u in ordered), weights, digests))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        for f in seed.iterdir():
            if (
                f.is_file()
                and f.suffix in (".json", ".txt", ".model")
                and f.name not in ("seed.json", "seed_train.json")
            ):
                shutil.copy(f, tmp / f.name)
        shutil.copy(merged, tmp / "model.safetensors")
    return out


# ---- all of it ----------------------------------------------------------------------


@dataclass
class RunResult:
    inputs: Inputs
    models: dict[str, UnitModel]  # by unit, in the order discovered
    trained: list[str]  # units trained in this run
    ranking: list[RankedMixture]
    counts: dict
    seed_scores: dict[str, float]
    snapshot: Path
    timings: dict[str, float]

    @property
    def reused(self) -> list[str]:
        return [u for u in self.models if u not in self.trained]


def run(
    corpus: str | Path,
    settings: Settings,
    eval_sets_dir: str | Path | None = None,
    pool: str | None = None,
    refresh_eval: bool = False,
    map_fn: MapFn | None = None,
    progress: bool = True,
) -> RunResult:
    """The whole pipeline over a corpus. Idempotent: a second run trains and scores nothing new."""
    map_fn = map_fn or serial_map(progress)
    timings: dict[str, float] = {}
    with phase(timings, "discover"):
        inputs = prepare(corpus, settings, eval_sets_dir, pool, refresh_eval, progress)
    with Steps(settings, inputs.seed, progress) as steps:
        with phase(timings, "train"):
            models, trained = train_units(steps, inputs.units, map_fn)
        with phase(timings, "score"):
            ranking, counts = score_and_rank(steps, models, inputs.eval_sets, map_fn)
            seed_scores = steps.score_seed(inputs.eval_sets)
    ranking, budget = apply_budget(settings, inputs, ranking)
    info = {
        "pool": inputs.pool,
        "corpus": str(corpus),
        "seed_digest": inputs.seed.digest,
        "seed_scores": seed_scores,
        "units": {
            n: {
                k: getattr(m, k)
                for k in ("key", "unit_digest", "tokens", "source_tokens", "repeat", "final_loss", "weights_digest")
            }
            for n, m in models.items()
        },
        "eval_sets": dict(inputs.eval_sets),
        "quarantined": inputs.quarantined,
        "counts": counts,
        "budget": budget,
    }
    snapshot = save_ranking(settings, ranking, info)
    return RunResult(inputs, models, trained, ranking, counts, seed_scores, snapshot, timings)
