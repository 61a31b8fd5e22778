"""Cut partitions into equal-token units: large ones split, small ones upsampled."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .config import Settings
from .corpus import CorpusError, Partition
from .seed import Seed, tokenize_stream
from .store import digest_json, read_json, write_json
from .weights import save_state


@dataclass(frozen=True)
class Unit:
    name: str  # "<partition>.u<index>"
    partition: str
    index: int
    n_units: int  # units cut from this partition
    digest: str  # content + cut + tokenizer: changes when any of them does
    partition_digest: str
    tokens: int  # always the unit budget
    source_tokens: int  # distinct tokens before resampling
    repeat: float  # repetition factor: tokens / source_tokens
    path: str  # token ids, safetensors

    def load_tokens(self) -> torch.Tensor:
        return load_file(self.path)["tokens"]

    def to_dict(self) -> dict:
        return asdict(self)


def _stream(partition: Partition, seed: Seed, tokenizer, settings: Settings) -> torch.Tensor:
    """The partition's training tokens (held-out documents removed), cached by content."""
    key = digest_json([partition.digest, seed.tokenizer_digest, settings.corpus.heldout_fraction])[:24]
    path = Path(settings.store) / "streams" / f"{key}.safetensors"
    if path.exists():
        return load_file(str(path))["tokens"]
    train, _ = partition.split(settings.corpus.heldout_fraction)
    tokens = tokenize_stream(tokenizer, [d.text for d in train])
    save_state({"tokens": tokens}, path)
    return tokens


def resample(chunk: torch.Tensor, n: int) -> torch.Tensor:
    """Exactly `n` tokens: the chunk repeated (upsampled) or cut."""
    reps = math.ceil(n / chunk.numel())
    return chunk.repeat(reps)[:n].clone()


def cut_units(partition: Partition, seed: Seed, tokenizer, settings: Settings) -> list[Unit]:
    """Units of exactly `settings.units.tokens` tokens; raises CorpusError if the partition is too small.

    A partition of N training tokens gives round(N / budget) units (at least one),
    cut at even token offsets; each chunk is then upsampled (repeat > 1) or cut
    (repeat < 1, at most 1.5x over budget) to the budget.
    """
    budget = settings.units.tokens
    stream = _stream(partition, seed, tokenizer, settings)
    total = stream.numel()
    if total < settings.corpus.min_tokens:
        raise CorpusError(
            partition.name,
            f"too small: {total} training tokens after holding out evaluation documents, minimum is {settings.corpus.min_tokens}",
            partition.source,
        )
    n_units = max(1, round(total / budget))
    units = []
    for i in range(n_units):
        chunk = stream[i * total // n_units:(i + 1) * total // n_units]
        digest = digest_json({
            "partition": partition.digest, "tokenizer": seed.tokenizer_digest, "budget": budget,
            "heldout": settings.corpus.heldout_fraction, "index": i, "n_units": n_units,
        })
        folder = Path(settings.store) / "units" / digest[:24]
        path = folder / "tokens.safetensors"
        meta = folder / "unit.json"
        if not meta.exists():
            save_state({"tokens": resample(chunk, budget)}, path)
        unit = Unit(
            name=f"{partition.name}.u{i}", partition=partition.name, index=i, n_units=n_units, digest=digest,
            partition_digest=partition.digest, tokens=budget, source_tokens=chunk.numel(),
            repeat=round(budget / chunk.numel(), 4), path=str(path),
        )
        if not meta.exists() or read_json(meta).get("name") != unit.name:
            write_json(meta, unit.to_dict())
        units.append(unit)
    return units
