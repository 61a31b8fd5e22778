"""The core pipeline: corpus -> units -> train -> merge -> score -> rank.

Each step takes and returns paths, digests and small dicts (never tensors), so an
orchestrator can run the steps as separate tasks or processes. Every step is
idempotent: its output is keyed by the content digests of its inputs.
"""
from __future__ import annotations

import functools
import json
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from . import __version__
from .config import Settings
from .corpus import CorpusError, Document, discover, eval_sets_from_folder
from .merge import linear_merge
from .merge.io import SafetensorsReader
from .rank import enumerate_mixtures, macro, rank
from .score import EvalSet, build_eval_set, score_sets
from .screen import Rung, eval_slice, screening_cost, successive_halving
from .seed import Seed, prepare_seed
from .store import digest_json, read_json, write_json
from .train import resolve_device, to_sequences, train_lm
from .units import Unit, cut_units
from .weights import check_loadable, load_state, save_state, save_weights

log = logging.getLogger(__name__)


def configure_torch(settings: Settings) -> None:
    """Per thread: CPU threads, and denormals flushed to zero (see dataassess/__init__.py)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.set_flush_denormal(True)


# ---- corpus -> units -------------------------------------------------------

@dataclass
class Pool:
    """What one intake sees: the seed, the valid units, the rejected partitions and the eval sets."""

    seed: Seed
    units: list[Unit]
    rejected: list[CorpusError]
    eval_sets: dict[str, str]  # name -> stored eval-set path
    partitions: dict[str, str] = field(default_factory=dict)  # name -> content digest


def eval_set_path(settings: Settings, digest: str) -> Path:
    return Path(settings.store) / "evalsets" / f"{digest}.json"


def save_eval_set(settings: Settings, es: EvalSet) -> str:
    path = eval_set_path(settings, es.digest)
    if not path.exists():
        write_json(path, {"name": es.name, "digest": es.digest, "windows": es.windows, "tokens": es.tokens, "bytes": es.bytes, "documents": es.documents})
    return str(path)


def load_eval_set(path: str | Path) -> EvalSet:
    return _load_eval_set(str(Path(path).resolve()))


@functools.lru_cache(maxsize=64)
def _load_eval_set(path: str) -> EvalSet:
    """Cached: eval-set files are named by their content digest and never rewritten."""
    d = read_json(Path(path))
    return EvalSet(d["name"], d["digest"], [(w, s) for w, s in d["windows"]], d["tokens"], d["bytes"], d["documents"])


def prepare_pool(
    corpus: str | Path, settings: Settings, eval_sets_dir: str | Path | None = None, progress: bool = True,
    partitions: Sequence[str] | None = None,
) -> Pool:
    """Seed, units and evaluation sets for a corpus. Bad partitions are rejected, not fatal."""
    seed = prepare_seed(settings, progress=progress)
    tokenizer = seed.load_tokenizer()
    cache = str(Path(settings.store) / "hf-datasets")
    found, rejected = discover(corpus, settings.corpus.partition_field, cache_dir=cache)
    if partitions is not None:
        found = [p for p in found if p.name in set(partitions)]
    units: list[Unit] = []
    heldout: dict[str, list[Document]] = {}
    for part in found:
        try:
            units.extend(cut_units(part, seed, tokenizer, settings))
        except CorpusError as e:
            log.warning("quarantined: %s", e)
            rejected.append(e)
            continue
        for doc in part.split(settings.corpus.heldout_fraction)[1]:
            group = doc.domain if settings.corpus.eval_group == "domain" else part.name
            heldout.setdefault(group, []).append(doc)
    if eval_sets_dir is not None:
        heldout = eval_sets_from_folder(Path(eval_sets_dir), cache)
    ctx = min(settings.train.seq_len, _context_length(seed))
    eval_sets = {}
    for name, docs in sorted(heldout.items()):
        try:
            es = build_eval_set(name, docs, tokenizer, ctx, settings.score.stride, settings.corpus.eval_max_tokens)
        except ValueError as e:
            log.warning("evaluation set skipped: %s", e)
            continue
        eval_sets[name] = save_eval_set(settings, es)
    if not units:
        raise CorpusError(str(corpus), "no valid partitions: " + "; ".join(str(e) for e in rejected), str(corpus))
    if not eval_sets:
        raise CorpusError(str(corpus), "no evaluation sets: hold out documents (corpus.heldout_fraction) or pass --eval-sets")
    return Pool(seed, units, rejected, eval_sets, {p.name: p.digest for p in found})


def _context_length(seed: Seed) -> int:
    cfg = json.loads((seed.path / "config.json").read_text())
    return cfg.get("n_positions") or cfg.get("max_position_embeddings") or 2048


# ---- train -----------------------------------------------------------------

def unit_model_key(unit: Unit, seed: Seed, settings: Settings) -> str:
    return digest_json({"unit": unit.digest, "seed": seed.digest, "train": settings.train.digest()})[:24]


def unit_model_dir(settings: Settings, key: str) -> Path:
    return Path(settings.store) / "models" / key


def trained_meta(settings: Settings, key: str) -> dict | None:
    """The metadata of a finished unit model, or None. The metadata is written last."""
    meta = unit_model_dir(settings, key) / "meta.json"
    if not meta.exists():
        return None
    done = read_json(meta)
    return done if Path(done["weights"]).exists() else None  # weights deleted by hand: train again


def train_unit(unit: Unit, seed: Seed, settings: Settings, progress: bool = True) -> dict:
    """Continue-pretrain the seed on one unit; returns the metadata (with `weights` path). Idempotent."""
    key = unit_model_key(unit, seed, settings)
    if (done := trained_meta(settings, key)) is not None:
        return done
    configure_torch(settings)
    folder = unit_model_dir(settings, key)
    model = seed.load_model()
    seqs = to_sequences(unit.load_tokens(), settings.train.seq_len)
    result = train_lm(model, seqs, settings.train, unit.tokens, resolve_device(settings.device), desc=unit.name, progress=progress)
    save_weights(model.cpu(), folder / "model.safetensors", metadata={"unit_digest": unit.digest, "seed_digest": seed.digest})
    meta = {
        "key": key, "unit": unit.name, "partition": unit.partition, "unit_digest": unit.digest,
        "seed_digest": seed.digest, "train_config_hash": settings.train.digest(), "train_config": settings.train.model_dump(),
        "tokens": result.tokens, "source_tokens": unit.source_tokens, "repeat": unit.repeat, "steps": result.steps,
        "final_loss": result.final_loss, "wall_s": result.wall_s, "code_version": __version__,
        "weights": str(folder / "model.safetensors"),
    }
    write_json(folder / "meta.json", meta)
    return meta


# ---- merge -> score ----------------------------------------------------------

_free_skeletons: dict[str, list[torch.nn.Module]] = {}
_skeleton_lock = threading.Lock()


@contextmanager
def _skeleton(seed: Seed, device: torch.device) -> Iterator[torch.nn.Module]:
    """A model instance of the seed's architecture, lent to one scorer at a time and reloaded
    with each merged state: built once per concurrent scorer, not once per mixture or thread."""
    key = f"{seed.digest}:{device}"
    with _skeleton_lock:
        free = _free_skeletons.setdefault(key, [])
        model = free.pop() if free else None
    if model is None:
        model = seed.load_model().to(device)
    try:
        yield model
    finally:
        with _skeleton_lock:
            _free_skeletons[key].append(model)


def mixture_key(model_keys: Sequence[str], weights: Sequence[float] | None) -> str:
    pairs = sorted(zip(model_keys, weights or [1.0] * len(model_keys)))
    return digest_json({"models": pairs})[:24]


def score_path(settings: Settings, mix_key: str, eval_digest: str) -> Path:
    return Path(settings.store) / "scores" / digest_json([mix_key, eval_digest, settings.score.digest()])[:24] / "score.json"


def cached_scores(settings: Settings, mix_key: str, eval_sets: dict[str, str]) -> dict[str, dict]:
    out = {}
    for name, path in eval_sets.items():
        p = score_path(settings, mix_key, Path(path).stem)
        if p.exists():
            out[name] = read_json(p)
    return out


def score_mixture(
    weights_paths: Sequence[str], model_keys: Sequence[str], seed: Seed, eval_sets: dict[str, str], settings: Settings,
    weights: Sequence[float] | None = None,
) -> tuple[dict[str, dict], int]:
    """Scores of the merged model on every eval set, and how many were computed (the rest reused)."""
    mix_key = mixture_key(model_keys, weights)
    scores = cached_scores(settings, mix_key, eval_sets)
    missing = [n for n in eval_sets if n not in scores]
    if not missing:
        return scores, 0
    configure_torch(settings)
    device = resolve_device(settings.device)
    with _skeleton(seed, device) as model:
        if device.type == "cpu":  # straight into the parameters: no new buffer, no second copy
            check_loadable(model, set(SafetensorsReader.keys_of(weights_paths[0])))
            linear_merge(weights_paths, weights, out=model.state_dict())
        else:
            load_state(model, linear_merge(weights_paths, weights))
        scores.update(_score_and_save(model, mix_key, eval_sets, missing, settings, device))
    return scores, len(missing)


def _score_and_save(model: torch.nn.Module, key: str, eval_sets: dict[str, str], names: Sequence[str], settings: Settings,
                    device: torch.device) -> dict[str, dict]:
    """Scores on the named sets, in one pass over shared batches, each saved under (key, set digest)."""
    sets = [load_eval_set(eval_sets[n]) for n in names]
    out = {}
    for name, es, score in zip(names, sets, score_sets(model, sets, settings.score.batch_size, device)):
        out[name] = score.to_dict()
        write_json(score_path(settings, key, es.digest), out[name])
    return out


def materialize_mixture(metas: Sequence[dict], settings: Settings) -> tuple[str, str]:
    """Write a mixture's merged weights to the store once; returns (path, mixture key)."""
    weights = mixture_weights(metas, settings.rank.weighting)
    key = mixture_key([m["key"] for m in metas], weights)
    path = Path(settings.store) / "mixtures" / key / "model.safetensors"
    if not path.exists():
        save_state(linear_merge([m["weights"] for m in metas], weights), path, metadata={"units": ",".join(m["unit"] for m in metas)})
    return str(path), key


def score_seed(seed: Seed, eval_sets: dict[str, str], settings: Settings) -> dict[str, float]:
    """The seed's own perplexities: the reference every mixture should improve on."""
    key = digest_json({"seed": seed.digest})[:24]
    scores = cached_scores(settings, key, eval_sets)
    missing = [n for n in eval_sets if n not in scores]
    if missing:
        device = resolve_device(settings.device)
        scores.update(_score_and_save(seed.load_model().to(device), key, eval_sets, missing, settings, device))
    return {n: s["perplexity"] for n, s in sorted(scores.items())}


# ---- rank --------------------------------------------------------------------

def mixture_weights(units: Sequence[dict], weighting: str) -> list[float] | None:
    """None for uniform; distinct (pre-upsampling) tokens for "tokens"."""
    return None if weighting == "uniform" else [float(u["source_tokens"]) for u in units]


def ranking_row(units: Sequence[str], scores: dict[str, dict]) -> dict:
    """One mixture's row, before ranking: perplexity and bits per byte per evaluation set."""
    return {
        "units": list(units), "k": len(units),
        "scores": {n: s["perplexity"] for n, s in sorted(scores.items())},
        "bits_per_byte": {n: s["bits_per_byte"] for n, s in sorted(scores.items())},
    }


ScoreMany = Callable[[Sequence[tuple[str, ...]], dict[str, str]], list[tuple[tuple[str, ...], dict[str, dict], int]]]


def slice_eval_sets(settings: Settings, eval_sets: dict[str, str], fraction: float) -> dict[str, str]:
    """Stored slices (whole windows, about `fraction` of the tokens) of the evaluation sets, for screening."""
    return {n: save_eval_set(settings, eval_slice(load_eval_set(p), fraction)) for n, p in eval_sets.items()}


def screen_and_rank(candidates: Sequence[tuple[str, ...]], score_many: ScoreMany, eval_sets: dict[str, str], settings: Settings) -> tuple[list[dict], dict]:
    """Score the candidates (every one on the full sets, or by staged screening) and rank them.

    score_many(mixtures, eval_sets) returns (mixture, scores, number computed) per mixture:
    the core runs it as a loop, the Prefect flow as tasks.
    """
    r = settings.rank
    if r.by != "macro" and r.by not in eval_sets:
        raise ValueError(f"cannot rank by '{r.by}': evaluation sets are {sorted(eval_sets)} or 'macro'")
    computed: set[tuple[str, ...]] = set()
    last: dict[tuple[str, ...], dict] = {}
    token_share: dict[float, float] = {}

    def score(mixes: Sequence[tuple[str, ...]], fraction: float) -> dict[tuple[str, ...], float]:
        sets = eval_sets if fraction == 1.0 else slice_eval_sets(settings, eval_sets, fraction)
        token_share[fraction] = sum(load_eval_set(p).tokens for p in sets.values()) / sum(load_eval_set(p).tokens for p in eval_sets.values())
        losses = {}
        for mix, scores, n in score_many(mixes, sets):
            computed.update([mix] if n else [])
            last[mix] = scores
            perplexities = {k: v["perplexity"] for k, v in scores.items()}
            losses[mix] = macro(perplexities) if r.by == "macro" else perplexities[r.by]
        return losses

    if r.screen and len(candidates) > r.screen_keep:
        placed, rungs = successive_halving(candidates, score, r.screen_eta, r.screen_min_fraction, r.screen_keep)
    else:
        placed, rungs = [(m, 1.0) for m in candidates], [Rung(1.0, len(candidates), len(candidates))]
        score(candidates, 1.0)
    rows = []
    for mix, fraction in placed:
        rows.append(ranking_row(mix, last[mix]))
        if fraction < 1.0:
            rows[-1]["evaluated_fraction"] = fraction
    counts = {"mixtures": len(candidates), "scored": len(computed), "reused": len(candidates) - len(computed)}
    if r.screen:
        counts["screening"] = {"rungs": [asdict(g) for g in rungs], "cost": screening_cost(rungs, len(candidates), token_share)}
    return rank(rows, r.by), counts


def rank_mixtures(
    pool: Pool, trained: dict[str, dict], settings: Settings, progress: bool = True,
    mixtures: Sequence[Sequence[str]] | None = None,
) -> tuple[list[dict], dict]:
    """Score every candidate mixture (reusing cached scores) and rank them. Returns (ranking, counts)."""
    candidates = enumerate_mixtures(sorted(trained), settings.rank.k_max, mixtures if mixtures is not None else settings.rank.mixtures)

    def score_many(mixes, eval_sets):
        out = []
        for mix in tqdm(mixes, desc="score mixtures", disable=not progress):
            metas = [trained[u] for u in mix]
            weights = mixture_weights(metas, settings.rank.weighting)
            scores, n = score_mixture([m["weights"] for m in metas], [m["key"] for m in metas], pool.seed, eval_sets, settings, weights)
            out.append((mix, scores, n))
        return out

    return screen_and_rank(candidates, score_many, pool.eval_sets, settings)


def rankings_dir(settings: Settings) -> Path:
    return Path(settings.store) / "rankings"


def snapshot_info(corpus: str, seed: Seed, seed_scores: dict, metas: dict[str, dict], eval_sets: dict[str, str], rejected: list[str], counts: dict) -> dict:
    """What a ranking snapshot records besides the ranking: the pool state that produced it."""
    return {
        "corpus": corpus, "seed_digest": seed.digest, "seed_scores": seed_scores,
        "units": {n: {k: m[k] for k in ("key", "unit_digest", "tokens", "source_tokens", "repeat", "final_loss")} for n, m in metas.items()},
        "eval_sets": {n: Path(p).stem for n, p in eval_sets.items()},
        "quarantined": rejected, "counts": counts,
    }


def save_ranking(settings: Settings, ranking: list[dict], info: dict) -> Path:
    """Write a snapshot and point `latest.json` at it; rank changes are against the previous latest."""
    previous = latest_ranking(settings)
    if previous:
        before = {tuple(r["units"]): r["rank"] for r in previous["ranking"]}
        for row in ranking:
            old = before.get(tuple(row["units"]))
            row["rank_change"] = None if old is None else old - row["rank"]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    snapshot = {"created": stamp, "ranked_by": settings.rank.by, "ranking": ranking, **info}
    path = rankings_dir(settings) / f"{stamp}.json"
    write_json(path, snapshot)
    write_json(rankings_dir(settings) / "latest.json", snapshot)
    return path


def latest_ranking(settings: Settings) -> dict | None:
    path = rankings_dir(settings) / "latest.json"
    return read_json(path) if path.exists() else None


# ---- all of it ----------------------------------------------------------------

@dataclass
class RunResult:
    ranking: list[dict]
    snapshot: Path
    trained: list[str]  # units trained in this run
    reused: list[str]  # units whose models already existed
    rejected: list[str]  # error messages
    counts: dict
    seed_scores: dict[str, float]
    wall_s: float


def run(corpus: str | Path, settings: Settings, eval_sets_dir: str | Path | None = None, progress: bool = True) -> RunResult:
    start = time.perf_counter()
    pool = prepare_pool(corpus, settings, eval_sets_dir, progress)
    trained, new, old = {}, [], []
    for unit in tqdm(pool.units, desc="train units", disable=not progress):
        was_done = trained_meta(settings, unit_model_key(unit, pool.seed, settings)) is not None
        trained[unit.name] = train_unit(unit, pool.seed, settings, progress)
        (old if was_done else new).append(unit.name)
    ranking, counts = rank_mixtures(pool, trained, settings, progress)
    seed_scores = score_seed(pool.seed, pool.eval_sets, settings)
    info = snapshot_info(str(corpus), pool.seed, seed_scores, trained, pool.eval_sets, [str(e) for e in pool.rejected], counts)
    snapshot = save_ranking(settings, ranking, info)
    return RunResult(ranking, snapshot, new, old, [str(e) for e in pool.rejected], counts, seed_scores, time.perf_counter() - start)
