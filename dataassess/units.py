"""Cut partitions into equal-token units: large ones split, small ones upsampled."""

from __future__ import annotations

import math

import torch
from safetensors.torch import load_file

from .config import Settings
from .corpus import CorpusError, Partition
from .seed import Seed, tokenize_stream
from .store import Store, digest_json, intact, short_key, write_json
from .types import Unit
from .weights import save_state


def unit_tokens(store: Store, unit: Unit) -> torch.Tensor:
    return load_file(str(store.unit_tokens(unit.digest)))["tokens"]


def _stream(store: Store, partition: Partition, seed: Seed, tokenizer, settings: Settings) -> torch.Tensor:
    """The partition's training tokens (held-out documents removed), cached by content."""
    path = store.stream(short_key([partition.digest, seed.tokenizer_digest, settings.corpus.heldout_fraction]))
    if intact(path):
        return load_file(str(path))["tokens"]
    train, _ = partition.split(settings.corpus.heldout_fraction)
    tokens = tokenize_stream(tokenizer, [d.text for d in train])
    save_state({"tokens": tokens}, path)
    return tokens


def resample(chunk: torch.Tensor, n: int) -> torch.Tensor:
    """Exactly `n` tokens: the chunk repeated (upsampled) or cut."""
    reps = math.ceil(n / chunk.numel())
    return chunk.repeat(reps)[:n].clone()


def cut_units(store: Store, partition: Partition, seed: Seed, tokenizer, settings: Settings) -> list[Unit]:
    """Units of exactly `settings.units.tokens` tokens; raises CorpusError if the partition is too small.

    A partition of N training tokens gives round(N / budget) units (at least one),
    cut at even token offsets; each chunk is then upsampled (repeat > 1) or cut
    (repeat < 1, at most 1.5x over budget) to the budget.
    """
    budget = settings.units.tokens
    stream = _stream(store, partition, seed, tokenizer, settings)
    total = stream.numel()
    if total < settings.corpus.min_tokens:
        raise CorpusError(
            partition.name,
            f"too small: {total} training tokens after holding out evaluation documents, minimum is "
            f"{settings.corpus.min_tokens}",
            partition.source,
        )
    n_units = max(1, round(total / budget))
    units = []
    for i in range(n_units):
        chunk = stream[i * total // n_units : (i + 1) * total // n_units]
        digest = digest_json(
            {
                "partition": partition.digest,
                "tokenizer": seed.tokenizer_digest,
                "budget": budget,
                "heldout": settings.corpus.heldout_fraction,
                "index": i,
                "n_units": n_units,
            }
        )
        path = store.unit_tokens(digest)
        if not intact(path):
            save_state({"tokens": resample(chunk, budget)}, path)
        unit = Unit(
            name=f"{partition.name}.u{i}",
            partition=partition.name,
            index=i,
            n_units=n_units,
            digest=digest,
            partition_digest=partition.digest,
            tokens=budget,
            source_tokens=chunk.numel(),
            repeat=round(budget / chunk.numel(), 4),
        )
        write_json(store.unit_dir(digest) / "unit.json", unit.to_json())
        units.append(unit)
    return units
