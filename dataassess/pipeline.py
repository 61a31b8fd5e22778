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
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol, Sequence, TypeVar

from tqdm.auto import tqdm

from .calibration import Calibration
from .config import Settings
from .corpus import CorpusError, Document, discover, eval_sets_from_folder
from .evalsets import EvalSets, build_eval_set
from .rank import enumerate_mixtures, macro, rank
from .screen import Rung, screening_cost, successive_halving
from .seed import Seed, prepare_seed
from .steps import Steps
from .store import Store, read_json, write_json
from .types import RankedMixture, Unit, UnitModel
from .units import cut_units

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class MapFn(Protocol):
    def __call__(self, name: str, fn: Callable[[T], R], items: Sequence[T], label: Callable[[T], str]) -> list[R]: ...


def serial_map(progress: bool = True) -> MapFn:
    """Run the items one after another in this process, with a progress bar."""

    def map_fn(name, fn, items, label):
        return [fn(item) for item in tqdm(items, desc=name, disable=not progress or not items)]

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


def prepare(corpus: str | Path, settings: Settings, eval_sets_dir: str | Path | None = None, pool: str | None = None,
            refresh_eval: bool = False, progress: bool = True) -> Inputs:
    """Seed, units and evaluation sets for a corpus. Bad partitions are quarantined, not fatal.

    Evaluation sets are the `eval_sets_dir` folder's, else the held-out documents pinned at the
    pool's first run (refresh_eval re-pins them to the current partitions).
    """
    store = Store(settings.store)
    pool = pool or pool_name(corpus)
    seed = prepare_seed(settings, progress=progress)
    tokenizer = seed.load_tokenizer()
    cache = str(store.hf_cache())
    found, quarantined = discover(corpus, settings.corpus.partition_field, cache_dir=cache)
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
            eval_sets[name] = evalsets.save(build_eval_set(name, docs, tokenizer, ctx, settings.score.stride, settings.corpus.eval_max_tokens))
        except ValueError as e:
            log.warning("evaluation set skipped: %s", e)
    if not units:
        raise CorpusError(str(corpus), "no valid partitions: " + "; ".join(map(str, quarantined)), str(corpus))
    if not eval_sets:
        raise CorpusError(str(corpus), "no evaluation sets: hold out documents (corpus.heldout_fraction) or pass --eval-sets")
    if eval_sets_dir is None:
        eval_sets = evalsets.pin(pool, eval_sets, refresh_eval)
    check_rank_by(settings.rank.by, eval_sets)  # before any unit is trained
    return Inputs(pool, seed, units, [str(e) for e in quarantined], eval_sets)


def check_rank_by(by: str, eval_sets: Mapping[str, str]) -> None:
    if by != "macro" and by not in eval_sets:
        raise ValueError(f"cannot rank by '{by}': evaluation sets are {sorted(eval_sets)} or 'macro'")


def _context_length(seed: Seed) -> int:
    cfg = json.loads((seed.path / "config.json").read_text())
    return cfg.get("n_positions") or cfg.get("max_position_embeddings") or 2048


# ---- train ------------------------------------------------------------------------

def train_units(steps: Steps, units: Sequence[Unit], map_fn: MapFn) -> tuple[dict[str, UnitModel], list[str]]:
    """A model per unit, training only those the store lacks; returns (models by unit, units trained now)."""
    pending = [u for u in units if not steps.is_trained(u)]
    trained = dict(zip((u.name for u in pending), map_fn("train", steps.train, pending, lambda u: u.name)))
    models = {u.name: trained[u.name] if u.name in trained else steps.train(u) for u in units}
    return models, [u.name for u in pending]


# ---- merge -> score -> rank -------------------------------------------------------

def score_and_rank(steps: Steps, models: Mapping[str, UnitModel], eval_sets: Mapping[str, str], map_fn: MapFn,
                   mixtures: Sequence[Sequence[str]] | None = None) -> tuple[list[RankedMixture], dict]:
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
        scored = map_fn("score", lambda mix: steps.score(mix, sets), [mixture[m] for m in pending], lambda mix: mix.label)
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
    rows = [RankedMixture(list(mix), {n: s["perplexity"] for n, s in sorted(last[mix].items())},
                          {n: s["bits_per_byte"] for n, s in sorted(last[mix].items())}, evaluated_fraction=fraction)
            for mix, fraction in placed]
    counts = {"mixtures": len(candidates), "scored": len(computed), "reused": len(candidates) - len(computed)}
    if r.screen:
        counts["screening"] = {"rungs": [asdict(g) for g in rungs], "cost": screening_cost(rungs, len(candidates), token_share)}
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
        return ranking, {"mode": "fixed", "tokens": tokens, "score": f"uniform parameter average: proxy of training on {tokens} tokens"}
    calibration = load_calibration(settings, inputs)
    if calibration is None:
        return rank(ranking, r.by, within_size=True), {
            "mode": "union", "calibrated": False,
            "score": "uniform parameter average, ranked within each size only: no union calibration for this pool and "
                     "these evaluation sets (run `dataassess fidelity --budget union`)"}
    for row in ranking:
        row.proxy_scores, row.scores, row.intervals = dict(row.scores), {}, {}
        for name, proxy in row.proxy_scores.items():
            ppl, lo, hi = calibration.sets[name].predict(proxy, row.k)
            row.scores[name], row.intervals[name] = ppl, [lo, hi]
            row.bits_per_byte[name] *= math.log(ppl) / math.log(proxy)  # same tokens and bytes: bpb scales with log ppl
    return rank(ranking, r.by), {"mode": "union", "calibrated": True,
                                 "score": "calibrated prediction of training on the whole union, with 95% intervals"}


def load_calibration(settings: Settings, inputs: Inputs) -> Calibration | None:
    """The pool's union calibration, if one was fitted for this seed, train config and these evaluation sets."""
    path = Store(settings.store).calibration(inputs.pool)
    if not path.exists():
        return None
    calibration = Calibration.from_json(read_json(path))
    same = (calibration.eval_sets == inputs.eval_sets and calibration.seed_digest == inputs.seed.digest
            and calibration.train_config == settings.train.digest())
    return calibration if same else None


# ---- snapshot -------------------------------------------------------------------------

def save_ranking(settings: Settings, ranking: list[RankedMixture], info: dict) -> Path:
    """Write a snapshot and point `latest.json` at it; rank changes are against the previous latest."""
    folder = Store(settings.store).rankings()
    previous = latest_ranking(settings)
    before = {tuple(r["units"]): r["rank"] for r in previous["ranking"]} if previous else {}
    for row in ranking:
        old = before.get(tuple(row.units))
        row.rank_change = None if old is None else old - row.rank
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    snapshot = {"created": stamp, "previous": previous["created"] if previous else None, "ranked_by": settings.rank.by,
                "ranking": [r.to_json() for r in ranking], **info}
    write_json(folder / f"{stamp}.json", snapshot)
    write_json(folder / "latest.json", snapshot)
    return folder / f"{stamp}.json"


def latest_ranking(settings: Settings) -> dict | None:
    path = Store(settings.store).rankings() / "latest.json"
    return read_json(path) if path.exists() else None


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


def run(corpus: str | Path, settings: Settings, eval_sets_dir: str | Path | None = None, pool: str | None = None,
        refresh_eval: bool = False, map_fn: MapFn | None = None, progress: bool = True) -> RunResult:
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
        "pool": inputs.pool, "corpus": str(corpus), "seed_digest": inputs.seed.digest, "seed_scores": seed_scores,
        "units": {n: {k: getattr(m, k) for k in ("key", "unit_digest", "tokens", "source_tokens", "repeat", "final_loss")}
                  for n, m in models.items()},
        "eval_sets": dict(inputs.eval_sets), "quarantined": inputs.quarantined, "counts": counts, "budget": budget,
    }
    snapshot = save_ranking(settings, ranking, info)
    return RunResult(inputs, models, trained, ranking, counts, seed_scores, snapshot, timings)
