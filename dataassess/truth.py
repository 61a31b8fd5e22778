"""Ground truths: the seed really continue-pretrained on a mixture, with the unit models' hyperparameters.

- union (the paper's): the whole union of the units' sequences, k x the unit budget;
- fixed: B tokens drawn without replacement from the shuffled union;
- weighted (fixed budget, given shares): exactly round(share x B) tokens from each unit,
  each unit's sequences drawn without replacement, cycled when a share needs more.
Each is cached in the store by (unit digests, shares, seed, train config, budget, data seed). A truth is trained
in a data order of its own (fidelity.data_seed), never the unit models' (train.seed): a single unit's truth is
another model than its unit model, so no proxy is compared with itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .errors import UserError
from .steps import Steps, train_seed_copy
from .store import Store, short_key, write_json
from .train import to_sequences
from .types import Score, Unit, perplexities
from .units import unit_tokens

if TYPE_CHECKING:
    from .budgets import Budget


@dataclass(frozen=True)
class Truth:
    """How a mixture's ground truth is trained."""

    budget: Budget
    tokens: int  # B when the budget has fixed tokens; ignored otherwise (k x the unit budget)
    data_seed: int


def union_sequences(store: Store, units: Sequence[Unit], seq_len: int) -> torch.Tensor:
    """The exact union of the units' training sequences (the loop shuffles them)."""
    return torch.cat([to_sequences(unit_tokens(store, u), seq_len) for u in units])


def _draw(n_have: int, n_need: int, gen: torch.Generator) -> torch.Tensor:
    """n_need indices into n_have items: shuffles without replacement, a fresh shuffle each pass."""
    return torch.cat([torch.randperm(n_have, generator=gen) for _ in range(-(-n_need // n_have))])[:n_need]


def budget_sequences(store: Store, units: Sequence[Unit], seq_len: int, tokens: int, data_seed: int) -> torch.Tensor:
    """tokens // seq_len sequences drawn without replacement from the shuffled union (cycling
    through fresh shuffles if the budget exceeds the union)."""
    union = union_sequences(store, units, seq_len)
    return union[_draw(len(union), tokens // seq_len, torch.Generator().manual_seed(data_seed))]


def apportion(shares: Sequence[float], total: int) -> list[int]:
    """Whole counts summing to total, proportional to shares (largest remainders; ties to the first)."""
    s = sum(shares)
    exact = [total * x / s for x in shares]
    counts = [int(e) for e in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def weighted_sequences(
    store: Store, units: Sequence[Unit], shares: Mapping[str, float], seq_len: int, tokens: int, data_seed: int
) -> tuple[torch.Tensor, dict[str, int]]:
    """tokens // seq_len sequences, each unit giving its share of them; returns them and the count per unit."""
    counts = apportion([shares[u.name] for u in units], tokens // seq_len)
    gen = torch.Generator().manual_seed(data_seed)
    parts = []
    for unit, n in zip(units, counts):
        if n:
            seqs = to_sequences(unit_tokens(store, unit), seq_len)
            parts.append(seqs[_draw(len(seqs), n, gen)])
    return torch.cat(parts), {u.name: n for u, n in zip(units, counts)}


def truth_key(units: Sequence[Unit], steps: Steps, truth: Truth, shares: Mapping[str, float] | None = None) -> str:
    weighted = None if shares is None else sorted((u.digest, round(shares[u.name], 9)) for u in units)
    return short_key(
        {
            "truth": sorted(u.digest for u in units),
            "seed": steps.seed.digest,
            "train": steps.settings.train.digest(),
            "budget": truth.budget.name,
            "tokens": truth.tokens if truth.budget.fixed_tokens else None,
            "data_seed": truth.data_seed,
            **({"shares": weighted} if weighted else {}),
        }
    )


def train_truth(steps: Steps, units: Sequence[Unit], truth: Truth, shares: Mapping[str, float] | None = None) -> dict:
    """Ground truth for a mixture (weighted by `shares`, unit name -> share, at a fixed budget), cached.
    Returns its metadata."""
    if truth.data_seed == steps.settings.train.seed:
        raise UserError("a ground truth is trained in a data order of its own: its data_seed must not be train.seed")
    if shares is not None and not truth.budget.fixed_tokens:
        raise UserError("weighted ground truths are trained at a fixed budget")
    key = truth_key(units, steps, truth, shares)
    if (done := steps.store.finished(key, "truth")) is not None:
        return done
    settings = steps.settings.model_copy(
        update={"train": steps.settings.train.model_copy(update={"seed": truth.data_seed})}
    )
    seq_len, per_unit = settings.train.seq_len, None
    if shares is not None:
        seqs, per_unit = weighted_sequences(steps.store, units, shares, seq_len, truth.tokens, truth.data_seed)
        total = seqs.numel()
    else:
        seqs, total = truth.budget.truth_sequences(steps.store, units, seq_len, truth.tokens, truth.data_seed)
    result = train_seed_copy(
        steps.store,
        "truth",
        key,
        seqs,
        total,
        steps.seed,
        settings,
        "truth " + "+".join(u.name for u in units),
        steps.progress,
    )
    meta = {
        "kind": "truth",
        "key": key,
        "units": [u.name for u in units],
        "unit_digests": [u.digest for u in units],
        "budget": truth.budget.name,
        "data_seed": truth.data_seed,
        "tokens": result.tokens,
        "final_loss": result.final_loss,
        "wall_s": result.wall_s,
        "weights_digest": result.weights_digest,
    }
    if shares is not None:
        meta.update(shares={u.name: shares[u.name] for u in units}, sequences_per_unit=per_unit)
    write_json(steps.store.meta(key, "truth"), meta)
    return meta


def truth_scores(steps: Steps, truth: dict, eval_sets: Mapping[str, str]) -> dict[str, Score]:
    """A trained truth's scores on the evaluation sets, cached like every score."""
    return steps.score_weights(f"truth:{truth['key']}", [steps.store.weights(truth["key"], "truth")], None, eval_sets)


def truth_perplexities(steps: Steps, truth: dict, eval_sets: Mapping[str, str]) -> dict[str, float]:
    """A trained truth's perplexities (a task set's: 2 ** gold_bpb)."""
    return perplexities(truth_scores(steps, truth, eval_sets))
