"""What a score answers: the token budget a mixture is compared at. One strategy object per budget owns
how its ground truth is trained, how proxy scores become its ranking, and which figures fidelity reports.

- fixed: every mixture trained on the same B tokens (rank.budget_tokens, default the unit budget); the
  merged unit models are its first-order proxy, ranked as they are;
- union (the paper's): a mixture trained on all of its units, k x the unit budget; the proxy is calibrated
  per evaluation set (calibration.py, fitted by `dataassess fidelity --budget union`), and without a
  calibration sizes are not compared: mixtures are ranked within each size only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch

from .calibration import FEATURES, Calibration, fit_set
from .errors import UserError
from .rank import rank
from .store import Store
from .truth import budget_sequences, union_sequences
from .types import RankedMixture, Unit

if TYPE_CHECKING:
    from .pipeline import Pool


class Budget:
    name: ClassVar[str]
    calibrated: ClassVar[bool] = False  # are its published scores calibrated predictions (fitted on truths)?
    fixed_tokens: ClassVar[bool] = False  # does every mixture's truth train on the same B tokens?

    def tokens(self, pool: Pool) -> int | None:
        """B, the tokens every mixture's truth trains on; None when it depends on the mixture."""
        return None

    def truth_sequences(
        self, store: Store, units: Sequence[Unit], seq_len: int, tokens: int, data_seed: int
    ) -> tuple[torch.Tensor, int]:
        """The sequences a mixture's ground truth trains on, and its token count."""
        raise NotImplementedError

    def apply(self, pool: Pool, ranking: list[RankedMixture]) -> tuple[list[RankedMixture], dict]:
        """The ranking under this budget, and a label saying what its scores are."""
        raise NotImplementedError

    def fit(self, rows: list[dict], sets: Sequence[str], pool: Pool) -> Calibration | None:
        """What fidelity fits from its rows for this budget (each row gets its leave-one-out "calibrated")."""
        return None

    @property
    def score_column(self) -> str:
        """The row column whose figures fidelity publishes: the proxy, or its calibrated prediction."""
        return "calibrated" if self.calibrated else "proxy"


class Fixed(Budget):
    name = "fixed"
    fixed_tokens = True

    def tokens(self, pool: Pool) -> int:
        return pool.settings.rank.budget_tokens or pool.settings.units.tokens

    def truth_sequences(self, store, units, seq_len, tokens, data_seed):
        seqs = budget_sequences(store, units, seq_len, tokens, data_seed)
        return seqs, seqs.numel()

    def apply(self, pool, ranking):
        tokens = self.tokens(pool)
        score = f"{pool.merge.label} merge: proxy of training on {tokens} tokens"
        return ranking, {"mode": self.name, "tokens": tokens, "score": score}


class Union(Budget):
    name = "union"
    calibrated = True

    def truth_sequences(self, store, units, seq_len, tokens, data_seed):
        return union_sequences(store, units, seq_len), sum(u.tokens for u in units)

    def apply(self, pool, ranking):
        calibration = self.calibration(pool)
        if calibration is None:
            ranked = rank(ranking, pool.settings.rank.by, within_size=True, families=pool.families)
            score = (
                f"{pool.merge.label} merge, ranked within each size only: no union calibration for this pool and "
                "these evaluation sets (run `dataassess fidelity --budget union`)"
            )
            return ranked, {"mode": self.name, "calibrated": False, "within_size": True, "score": score}
        for row in ranking:
            row.proxy_scores, row.scores, row.intervals = dict(row.scores), {}, {}
            for name, proxy in row.proxy_scores.items():
                ppl, lo, hi = calibration.sets[name].predict(proxy, row.k)
                row.scores[name], row.intervals[name] = ppl, [lo, hi]
                row.bits_per_byte[name] *= math.log(ppl) / math.log(proxy)  # same tokens and bytes: bpb ~ log ppl
        score = "calibrated prediction of training on the whole union, with 95% intervals"
        return rank(ranking, pool.settings.rank.by, families=pool.families), {
            "mode": self.name,
            "calibrated": True,
            "score": score,
        }

    def calibration(self, pool: Pool) -> Calibration | None:
        """The pool's calibration, if fitted for this seed, train config, these evaluation sets and features."""
        found = pool.store.calibration(pool.name)
        same = found is not None and (
            found.eval_sets == pool.eval_sets
            and found.seed_digest == pool.seed.digest
            and found.train_config == pool.settings.train.digest()
            and found.features == FEATURES
        )
        return found if same else None

    def fit(self, rows, sets, pool):
        fitted = {}
        for s in sets:
            fitted[s], loo = fit_set(
                [r["proxy"][s] for r in rows], [r["truth"][s] for r in rows], [r["k"] for r in rows]
            )
            for r, p in zip(rows, loo):
                r.setdefault("calibrated", {})[s] = float(p)
        return Calibration(dict(pool.eval_sets), fitted, pool.seed.digest, pool.settings.train.digest())


BUDGETS: dict[str, Budget] = {b.name: b for b in (Fixed(), Union())}
FIXED = BUDGETS["fixed"]


def budget(name: str) -> Budget:
    if name not in BUDGETS:
        raise UserError(f"unknown budget '{name}'; budgets are {', '.join(BUDGETS)}")
    return BUDGETS[name]
