"""The pipeline, defined once: corpus -> units -> train -> merge -> score -> rank -> snapshot.

prepare() checks the inputs and returns a Pool: the store, seed, evaluation sets, units and the map
function. Everything else is a plain function of a pool: train() its unit models, score() mixtures,
run() the whole sequence to a saved ranking; optimize.py and fidelity.py start from a pool too.
Independent work items (a unit to train, a mixture to score) go through map_fn(name, fn, items, label):
the CLI maps them in a loop (serial_map), the Prefect flow as tasks, a distributed runner as remote
tasks. Items are small typed records (Unit, Mixture); every step is cached in the store (steps.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, TypeVar

from . import budgets
from .config import Settings
from .corpus import CorpusError, Document, Partition, discover, eval_sets_from_folder
from .errors import UserError
from .evalsets import EvalSets, build_eval_set
from .merge import merge_spec
from .progress import progress_bar
from .rank import by_value, check_by, enumerate_mixtures, fidelity_summary, rank, rank_changes
from .screen import Rung, screening_cost, successive_halving
from .seed import Seed, find_seed, prepare_seed
from .steps import Steps, materialize
from .store import Store, atomic_dir, check_pool_name
from .subsets import guided_search
from .tasks import TaskError, TaskSource, build_task_set
from .types import (
    MergeSpec,
    Mixture,
    RankedMixture,
    Score,
    Snapshot,
    TaskScore,
    TaskSet,
    Unit,
    UnitModel,
    mixture_of,
    perplexities,
)
from .units import cut_units

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class MapFn(Protocol):
    def __call__(self, name: str, fn: Callable[[T], R], items: Sequence[T], label: Callable[[T], str]) -> list[R]: ...


def serial_map(progress: bool = True) -> MapFn:
    """Run the items one after another in this process, with a progress bar."""

    def map_fn(name, fn, items, label):
        with progress_bar(
            items, desc=name, disable=not progress or not items
        ) as bar:  # closed before an error is printed
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


# ---- the prepared pool --------------------------------------------------------------


@dataclass
class Pool:
    """One corpus, prepared: what every ranking, weight search and fidelity study of it works on.
    Holds the run's cached steps (and their Scorer): use it as a context manager."""

    name: str
    corpus: str
    settings: Settings
    store: Store
    seed: Seed
    units: list[Unit]
    eval_sets: dict[str, str]  # name -> digest
    quarantined: list[str]  # one message per partition
    merge: MergeSpec
    map_fn: MapFn
    steps: Steps
    models: dict[str, UnitModel] = field(default_factory=dict)  # trained unit models, by unit
    trained: list[str] = field(default_factory=list)  # units trained by this process
    timings: dict[str, float] = field(default_factory=dict)
    families: dict[str, list[str]] = field(default_factory=dict)  # task family -> its task sets

    @property
    def budget(self) -> budgets.Budget:
        return budgets.budget(self.settings.rank.budget)

    @property
    def progress(self) -> bool:
        return self.steps.progress

    @property
    def task_sets(self) -> list[str]:
        """The evaluation sets that are tasks (scored by gold_bpb and choice metrics)."""
        return [n for n, d in sorted(self.eval_sets.items()) if isinstance(self.steps.evalsets.load(d), TaskSet)]

    def unit(self, name: str) -> Unit:
        return next(u for u in self.units if u.name == name)

    def mixture(
        self, units: Sequence[str], weights: str | Mapping[str, float] | None = None, merge: MergeSpec | None = None
    ) -> Mixture:
        """Trained unit models merged: by rank.weighting unless weights are given, by the pool's merge method."""
        return mixture_of(units, self.models, merge or self.merge, weights or self.settings.rank.weighting)

    def scores(self, mixture: Mixture, eval_sets: Mapping[str, str] | None = None) -> dict[str, Score]:
        return self.steps.score(mixture, self.eval_sets if eval_sets is None else eval_sets)

    def close(self) -> None:
        self.steps.scorer.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pool_name(corpus: str | Path) -> str:
    """A pool is named after its corpus root unless told otherwise (`.` is the working folder's name)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", Path(os.path.abspath(corpus)).name).strip("-") or "pool"


@dataclass
class CheckedInputs:
    """What check_inputs found without a seed: the partitions, the quarantined ones, the evaluation documents."""

    partitions: list[Partition]
    quarantined: list[CorpusError]
    eval_docs: dict[str, list[Document] | TaskSource] | None  # the --eval-sets folder's, by set
    merge: MergeSpec
    skipped: list[str] = field(default_factory=list)  # task sets skipped for bad records, one message each

    @property
    def families(self) -> dict[str, list[str]]:
        return families_of(self.eval_docs or {})


def check_inputs(
    store: Store,
    corpus: str | Path,
    settings: Settings,
    eval_sets_dir: str | Path | None = None,
    pool: str | None = None,
    refresh_eval: bool = False,
) -> CheckedInputs:
    """Every check that needs no seed: the paths, the partitions, the evaluation sets' folder, that rank.by
    names an evaluation set, the unit budget and the merge method. Bad input fails here, before anything is built."""
    check_pool_name(pool or pool_name(corpus))
    found, quarantined = discover(corpus, settings.corpus.partition_field, cache_dir=str(store.hf_cache()))
    merge = merge_spec(settings.merge.method, settings.merge.params)
    budgets.budget(settings.rank.budget)
    eval_docs, skipped = None, []
    if eval_sets_dir is not None:
        if not Path(eval_sets_dir).is_dir():
            raise UserError(
                f"evaluation sets not found: {eval_sets_dir} is not a folder (one subfolder per evaluation set)"
            )
        eval_docs, skipped = eval_sets_from_folder(Path(eval_sets_dir), str(store.hf_cache()))
    names = (
        set(eval_docs)
        if eval_docs is not None
        else _eval_set_names(store, found, settings, pool or pool_name(corpus), refresh_eval)
    )
    check_rank_by(settings.rank.by, names, families_of(eval_docs or {}))
    check_unit_budget(found, settings.units.tokens)
    return CheckedInputs(found, quarantined, eval_docs, merge, skipped)


def families_of(sources: Mapping[str, object]) -> dict[str, list[str]]:
    """Task family -> its task sets, from the task folders' task.toml."""
    families: dict[str, list[str]] = {}
    for name, src in sorted(sources.items()):
        if isinstance(src, TaskSource) and src.family:
            families.setdefault(src.family, []).append(name)
    return families


def prepare(
    store: Store,
    corpus: str | Path,
    settings: Settings,
    eval_sets_dir: str | Path | None = None,
    pool: str | None = None,
    refresh_eval: bool = False,
    map_fn: MapFn | None = None,
    progress: bool = True,
) -> Pool:
    """Seed, units and evaluation sets for a corpus, and the unit models already trained. Bad partitions are
    quarantined, not fatal. Evaluation sets are the `eval_sets_dir` folder's, else the held-out documents pinned
    at the pool's first run (refresh_eval re-pins them to the current partitions)."""
    name = pool or pool_name(corpus)
    checked = check_inputs(store, corpus, settings, eval_sets_dir, name, refresh_eval)
    for message in checked.skipped:
        log.warning("evaluation set skipped: %s", message)
    quarantined = list(checked.quarantined)
    seed = prepare_seed(settings, store, progress=progress)
    tokenizer = seed.load_tokenizer()
    units: list[Unit] = []
    heldout: dict[str, list[Document]] = {}
    documents: Counter[str] = Counter()  # per evaluation group, in the partitions that cut units

    def group_of(doc: Document, part: Partition) -> str:
        return doc.domain if settings.corpus.eval_group == "domain" else part.name

    for part in checked.partitions:
        try:
            units.extend(cut_units(store, part, seed, tokenizer, settings))
        except CorpusError as e:
            quarantined.append(e)
            continue
        documents.update(group_of(doc, part) for doc in part.documents)
        for doc in part.split(settings.corpus.heldout_fraction)[1]:
            heldout.setdefault(group_of(doc, part), []).append(doc)
    if checked.eval_docs is not None:
        heldout = checked.eval_docs
    elif settings.corpus.heldout_fraction > 0:
        for group in sorted(set(documents) - set(heldout)):  # too few documents for the hash to hold one out
            log.warning(
                "evaluation set skipped: no document of %r is held out (%d in all, corpus.heldout_fraction = %g): "
                "raise the fraction or pass --eval-sets",
                group,
                documents[group],
                settings.corpus.heldout_fraction,
            )
    ctx = min(settings.train.seq_len, _context_length(seed))
    evalsets, eval_sets = EvalSets(store), {}
    for set_name, docs in sorted(heldout.items()):
        try:
            if isinstance(docs, TaskSource):
                built = build_task_set(docs, tokenizer, ctx, settings.corpus.eval_max_tokens)
            else:
                built = build_eval_set(
                    set_name, docs, tokenizer, ctx, settings.score.stride, settings.corpus.eval_max_tokens
                )
            eval_sets[set_name] = evalsets.save(built)
        except (UserError, TaskError) as e:
            log.warning("evaluation set skipped: %s", e)
    if not units:
        raise CorpusError(str(corpus), "no valid partitions: " + "; ".join(map(str, quarantined)), kind="corpus")
    if not eval_sets:
        why = "; quarantined: " + "; ".join(map(str, quarantined)) if quarantined else ""
        raise CorpusError(
            str(corpus),
            "no evaluation sets: hold out documents (corpus.heldout_fraction) or pass --eval-sets" + why,
            kind="corpus",
        )
    if eval_sets_dir is None:
        found, eval_sets = eval_sets, evalsets.pin(name, eval_sets, refresh_eval)
        for group in sorted(set(found) - set(eval_sets)):
            log.warning(
                "evaluation set not used: %r holds documents out, but pool %r pinned its evaluation sets before "
                "they arrived: `rank` or `intake` with --refresh-eval adds it (and scores every mixture again)",
                group,
                name,
            )
    families = {f: [s for s in sets if s in eval_sets] for f, sets in checked.families.items()}
    families = {f: sets for f, sets in families.items() if sets}
    check_rank_by(settings.rank.by, eval_sets, families)  # before any unit is trained
    steps = Steps(settings, seed, store, progress)
    pool_ = Pool(
        name,
        str(corpus),
        settings,
        store,
        seed,
        units,
        eval_sets,
        [str(e) for e in quarantined],
        checked.merge,
        map_fn or serial_map(progress),
        steps,
        families=families,
    )
    for unit in units:  # one check (and weights hash) per unit
        if (model := steps.trained(unit)) is not None:
            pool_.models[unit.name] = model
    return pool_


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


def _eval_set_names(store: Store, found: Sequence, settings: Settings, pool: str, refresh_eval: bool) -> set[str]:
    """The names the held-out evaluation sets can have, known before the seed is built: the held-out groups
    (and the pool's pinned sets)."""
    pinned = store.pinned_eval_sets(pool)
    names = set(pinned) if pinned is not None and not refresh_eval else set()
    for part in found:
        held = part.split(settings.corpus.heldout_fraction)[1]
        names |= (
            {doc.domain for doc in held} if settings.corpus.eval_group == "domain" else ({part.name} if held else set())
        )
    return names


def check_rank_by(
    by: str, eval_sets: Mapping[str, str] | set[str], families: Mapping[str, list[str]] | None = None
) -> None:
    families = families or {}
    clash = sorted(set(families) & set(eval_sets))
    if clash:
        raise UserError(f"task family {clash[0]!r} has the name of an evaluation set: rename one (task.toml)")
    check_by(by, sorted(eval_sets), families)


def _context_length(seed: Seed) -> int:
    cfg = json.loads((seed.path / "config.json").read_text())
    return cfg.get("n_positions") or cfg.get("max_position_embeddings") or 2048


# ---- train ------------------------------------------------------------------------


def train(pool: Pool, units: Sequence[Unit] | None = None) -> list[str]:
    """A model for each unit (default: every unit of the pool) that has none yet; returns the units trained now."""
    units = pool.units if units is None else units
    pending = [u for u in units if u.name not in pool.models]
    for unit, model in zip(pending, pool.map_fn("train", pool.steps.train, pending, lambda u: u.name)):
        pool.models[unit.name] = model
    pool.trained += [u.name for u in pending]
    return [u.name for u in pending]


# ---- merge -> score -> rank -------------------------------------------------------


def score(pool: Pool, mixtures: Sequence[Sequence[str]] | None = None) -> tuple[list[RankedMixture], dict]:
    """Score every candidate mixture of the trained unit models (each on the full sets, or by staged screening)
    and rank them. Cached scores are read here; only mixtures missing one go through the map function."""
    r, steps = pool.settings.rank, pool.steps
    check_rank_by(r.by, pool.eval_sets, pool.families)
    candidates = enumerate_mixtures(sorted(pool.models), r.k_max, mixtures if mixtures is not None else r.mixtures)
    computed: set[tuple[str, ...]] = set()
    last: dict[tuple[str, ...], dict[str, Score]] = {}
    token_share: dict[float, float] = {}
    full_tokens = steps.evalsets.tokens(pool.eval_sets)

    def score_on(mixes: Sequence[tuple[str, ...]], fraction: float) -> dict[tuple[str, ...], float]:
        sets = dict(pool.eval_sets) if fraction == 1.0 else steps.evalsets.sliced(pool.eval_sets, fraction)
        token_share[fraction] = steps.evalsets.tokens(sets) / full_tokens
        mixture = {m: pool.mixture(m) for m in mixes}
        found = {m: steps.cached(mixture[m].key, sets) for m in mixes}
        pending = [m for m in mixes if len(found[m]) < len(sets)]
        scored = pool.map_fn(
            "score", lambda mix: steps.score(mix, sets), [mixture[m] for m in pending], lambda mix: mix.label
        )
        found.update(zip(pending, scored))
        computed.update(pending)
        for m in mixes:
            last[m] = found[m]
        return by_value({m: perplexities(found[m]) for m in mixes}, r.by, pool.families)

    budgeted: list[tuple[str, ...]] = []
    search: dict = {}
    if r.search == "guided" and len(candidates) > r.guided_initial:
        found, rounds = guided_search(
            candidates,
            sorted(pool.models),
            lambda ms: score_on(ms, 1.0),
            r.guided_initial,
            r.guided_round,
            r.guided_rounds,
        )
        placed, rungs = [(m, 1.0) for m in candidates if m in found], []
        search = {"candidates": len(candidates), "scored": len(found), "rounds": rounds}
    elif r.screen and len(candidates) > r.screen_keep:
        placed, rungs = successive_halving(candidates, score_on, r.screen_eta, r.screen_min_fraction, r.screen_keep)
    else:
        full = {m for m in candidates if steps.has_scores(pool.mixture(m).key, pool.eval_sets)}
        budgeted = [m for m in candidates if m not in full]
        if r.max_full_scores is not None and len(budgeted) > r.max_full_scores:  # over budget: screen the new ones
            score_on([m for m in candidates if m in full], 1.0)
            keep = min(r.screen_keep, r.max_full_scores)
            placed, rungs = successive_halving(
                budgeted, score_on, r.screen_eta, r.screen_min_fraction, keep, r.max_full_scores
            )
            placed = [(m, 1.0) for m in candidates if m in full] + placed
        else:
            budgeted = []
            placed, rungs = [(m, 1.0) for m in candidates], [Rung(1.0, len(candidates), len(candidates))]
            score_on(candidates, 1.0)
    rows = [RankedMixture.from_scores(mix, last[mix], fraction) for mix, fraction in placed]
    counts = {"mixtures": len(candidates), "scored": len(computed), "reused": len(candidates) - len(computed)}
    if search:
        counts["guided_search"] = search
    if (r.screen or budgeted) and not search:
        counts["screening"] = {
            "rungs": [asdict(g) for g in rungs],
            "cost": screening_cost(rungs, len(budgeted or candidates), token_share),
            **({"budget": r.max_full_scores, "screened": len(budgeted)} if budgeted else {}),
        }
    return rank(rows, r.by, families=pool.families), counts


# ---- all of it ----------------------------------------------------------------------


@dataclass
class RunResult:
    pool: Pool
    ranking: list[RankedMixture]
    counts: dict
    seed_scores: dict[str, float]
    snapshot: Snapshot
    snapshot_path: Path

    @property
    def models(self) -> dict[str, UnitModel]:
        return self.pool.models

    @property
    def trained(self) -> list[str]:
        return self.pool.trained

    @property
    def reused(self) -> list[str]:
        return [u for u in self.pool.models if u not in self.pool.trained]

    @property
    def timings(self) -> dict[str, float]:
        return self.pool.timings


def run(pool: Pool) -> RunResult:
    """The whole pipeline over a prepared pool, to a saved ranking. Idempotent: a second run trains and scores
    nothing new."""
    with phase(pool.timings, "train"):
        train(pool)
    with phase(pool.timings, "score"):
        ranking, counts = score(pool)
        seed = pool.steps.seed_scores(pool.eval_sets)
    seed_scores = perplexities(seed)
    ranking, budget_info = pool.budget.apply(pool, ranking)
    snapshot = new_snapshot(pool, ranking, budget_info, counts, seed_scores)
    snapshot.seed_tasks = {s: sc.metrics() for s, sc in seed.items() if isinstance(sc, TaskScore)}
    path = pool.store.save_ranking(snapshot)
    return RunResult(pool, ranking, counts, seed_scores, snapshot, path)


def new_snapshot(
    pool: Pool, ranking: list[RankedMixture], budget_info: dict, counts: dict, seed_scores: dict[str, float]
) -> Snapshot:
    """The pool's ranking now; changes are against its previous snapshot."""
    previous = pool.store.latest_ranking(pool.name)
    before = [r.to_json() for r in previous.ranking] if previous else None
    fidelity = pool.store.fidelity(pool.name, budget_info["mode"])
    unit_fields = ("key", "unit_digest", "tokens", "source_tokens", "repeat", "final_loss", "weights_digest")
    return Snapshot(
        pool=pool.name,
        created=datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ"),
        ranked_by=pool.settings.rank.by,
        ranking=ranking,
        budget=budget_info,
        previous=previous.created if previous else None,
        changes=rank_changes(ranking, before),
        fidelity=fidelity_summary(
            fidelity.report if fidelity else None, budget_info["mode"], pool.seed.digest, pool.merge.to_json()
        ),
        corpus=pool.corpus,
        seed_digest=pool.seed.digest,
        seed_scores=seed_scores,
        families=pool.families,
        units={n: {k: getattr(m, k) for k in unit_fields} for n, m in pool.models.items()},
        eval_sets=dict(pool.eval_sets),
        quarantined=pool.quarantined,
        counts=counts,
        merge={**pool.merge.to_json(), "weighting": pool.settings.rank.weighting},
    )


# ---- reading rankings back ------------------------------------------------------------


def latest_snapshot(store: Store, pool: str | None = None) -> Snapshot | None:
    """The pool's latest snapshot; without a pool, the only pool's (an error naming them when there are several)."""
    if pool is None:
        pools = store.ranked_pools()
        if len(pools) > 1:
            raise UserError(f"the store {store.root} ranks several pools: {', '.join(pools)}; choose one with --pool")
        if not pools:
            return None
        pool = pools[0]
    snap = store.latest_ranking(pool)
    if snap is not None:  # a fidelity study run since the ranking was made counts
        mode, merge = snap.budget["mode"], {k: v for k, v in snap.merge.items() if k != "weighting"}
        record = store.fidelity(snap.pool, mode)
        snap.fidelity = fidelity_summary(record.report if record else None, mode, snap.seed_digest, merge)
    return snap


@dataclass(frozen=True)
class SnapshotModel:
    """A unit model as a snapshot records it: enough to name it in a mixture."""

    key: str
    weights_digest: str
    source_tokens: int


def export_mixture(store: Store, snapshot: Snapshot, units: Sequence[str], out: str | Path) -> Path:
    """A mixture of the snapshot's unit models, merged as in its ranking, written as an HF folder (config,
    tokenizer, model.safetensors) that from_pretrained loads. The folder appears whole or not at all."""
    out, known = Path(out), snapshot.units
    unknown = [u for u in units if u not in known]
    if unknown:
        raise UserError(f"unknown units {unknown}; pool '{snapshot.pool}' has {sorted(known)}")
    if out.exists():
        raise UserError(f"{out} already exists; choose a new folder")
    seed = find_seed(store, snapshot.seed_digest)
    if seed is None:
        raise UserError(
            f"the seed of pool '{snapshot.pool}' ({snapshot.seed_digest[:12]}) is not in the store {store.root}"
        )
    models = {
        u: SnapshotModel(known[u]["key"], known[u].get("weights_digest", ""), known[u]["source_tokens"]) for u in known
    }
    how = snapshot.merge or {"method": "linear", "params": {}, "weighting": "uniform"}
    merge = merge_spec(how["method"], how["params"])
    merged = materialize(store, seed, mixture_of(sorted(set(units)), models, merge, how.get("weighting")))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        for f in seed.path.iterdir():
            if (
                f.is_file()
                and f.suffix in (".json", ".txt", ".model")
                and f.name not in ("seed.json", "seed_train.json")
            ):
                shutil.copy(f, tmp / f.name)
        shutil.copy(merged, tmp / "model.safetensors")
    return out
