"""Union-budget calibration: from a merged proxy's perplexity to the perplexity of a model
trained on the whole union of the mixture's units.

A model trained on k units sees k x the tokens, so the raw average under-rates larger
mixtures. Per evaluation set, a ridge regression in log space (scikit-learn) predicts
log(truth ppl) from log(proxy ppl), log(k) and their product, fitted on the pool's fidelity
ground truths. The product lets the gain from k x the tokens depend on how well the mixture's
data fits the set: a set its data helps gains more from more of it. Its figures are
leave-one-out: each mixture is predicted by a fit without it. Intervals are +-1.96
leave-one-out residual standard deviations, in log space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .types import JsonForm

ALPHAS = tuple(float(a) for a in np.logspace(-3, 2, 11))  # ridge strengths tried (inner generalized CV)
Z95 = 1.959964


FEATURES = ["log proxy perplexity", "log k", "log proxy perplexity x log k"]


def features(proxy_ppl: np.ndarray, k: np.ndarray) -> np.ndarray:
    log_proxy, log_k = np.log(proxy_ppl), np.log(k)
    return np.column_stack([log_proxy, log_k, log_proxy * log_k])


def model(alphas: tuple[float, ...] = ALPHAS):
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeCV(alphas=list(alphas)))


def loo_predictions(x: np.ndarray, y: np.ndarray, alphas: tuple[float, ...] = ALPHAS) -> np.ndarray:
    """Each row predicted by a model fitted on all the other rows (never on itself)."""
    from sklearn.model_selection import LeaveOneOut, cross_val_predict

    return cross_val_predict(model(alphas), x, y, cv=LeaveOneOut())


@dataclass
class SetCalibration(JsonForm):
    """log(truth) = intercept + coef . features(proxy, k), in the original (unscaled) features."""

    intercept: float
    coef: list[float]
    alpha: float
    sigma: float  # leave-one-out residual standard deviation, log space
    n: int

    def predict(self, proxy_ppl: float, k: int) -> tuple[float, float, float]:
        """(perplexity, 95% low, 95% high)."""
        log_ppl = self.intercept + float(np.dot(self.coef, features(np.array([proxy_ppl]), np.array([float(k)]))[0]))
        return math.exp(log_ppl), math.exp(log_ppl - Z95 * self.sigma), math.exp(log_ppl + Z95 * self.sigma)


@dataclass
class Calibration(JsonForm):
    eval_sets: dict[str, str]  # name -> digest: a calibration holds for these sets only
    sets: dict[str, SetCalibration]
    seed_digest: str = ""
    train_config: str = ""
    features: list[str] = field(default_factory=lambda: list(FEATURES))

    @classmethod
    def from_json(cls, d: dict) -> Calibration:
        return cls(
            d["eval_sets"],
            {n: SetCalibration.from_json(c) for n, c in d["sets"].items()},
            d.get("seed_digest", ""),
            d.get("train_config", ""),
            d.get("features", []),
        )


def fit_set(
    proxy: list[float], truth: list[float], k: list[int], alphas: tuple[float, ...] = ALPHAS
) -> tuple[SetCalibration, np.ndarray]:
    """The calibration of one evaluation set, and its leave-one-out predicted perplexities."""
    x, y = features(np.asarray(proxy), np.asarray(k, dtype=float)), np.log(np.asarray(truth))
    loo = loo_predictions(x, y, alphas)
    fitted = model(alphas).fit(x, y)
    scaler, ridge = fitted[0], fitted[1]
    coef = ridge.coef_ / scaler.scale_
    intercept = float(ridge.intercept_ - np.dot(coef, scaler.mean_))
    sigma = float(np.sqrt(np.mean((loo - y) ** 2)))
    return SetCalibration(intercept, [float(c) for c in coef], float(ridge.alpha_), sigma, len(y)), np.exp(loo)
