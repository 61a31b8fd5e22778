"""Large pools: the surrogate-guided subset search (fewer mixtures scored, the same top of the ranking) and the
32-partition cut of `make bench-pool`."""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dataassess.subsets import as_weights, first_design, guided_search
from tests.conftest import run_pipeline


def test_the_search_finds_the_best_subsets_of_a_smooth_loss_scoring_a_fraction():
    units = [f"u{i:02d}" for i in range(12)]
    rng = np.random.default_rng(0)
    effect = rng.normal(0, 1, len(units))
    candidates = [m for k in (1, 2, 3) for m in itertools.combinations(units, k)]

    def loss(m):  # log perplexity of a uniform merge: its units' effects averaged, plus a pairwise interaction
        w = as_weights(m, units)
        return float(np.exp(5 + 0.1 * (w @ effect) + 0.05 * (w @ effect) ** 2))

    calls = []

    def score(ms):
        calls.append(len(ms))
        return {m: loss(m) for m in ms}

    scored, history = guided_search(candidates, units, score, initial=40, per_round=10, rounds=6)
    best = sorted(candidates, key=loss)[:5]
    assert sorted(scored, key=scored.get)[:5] == best
    assert sum(calls) == len(scored) <= len(candidates) / 4 and history[0]["scored"] == 40
    design = first_design(candidates, 40, __import__("random").Random(0))
    assert all((u,) in design for u in units) and len(design) == len(set(design)) == 40


def test_guided_ranking_of_a_real_pool_has_the_exhaustive_top_5_in_order(settings, corpus):
    k3 = settings.rank.model_copy(update={"k_max": 3})
    exhaustive = run_pipeline(corpus, settings.model_copy(update={"rank": k3}))
    guided_cfg = k3.model_copy(update={"search": "guided", "guided_initial": 12, "guided_round": 3, "guided_rounds": 6})
    guided = run_pipeline(corpus, settings.model_copy(update={"rank": guided_cfg}))
    info = guided.counts["guided_search"]
    assert info["candidates"] == len(exhaustive.ranking) and info["scored"] == len(guided.ranking)
    assert info["scored"] <= len(exhaustive.ranking) / 2, info
    top = [r.units for r in exhaustive.ranking[:5]]
    assert [r.units for r in guided.ranking[:5]] == top
    for r in guided.ranking[:5]:
        assert r.macro == pytest.approx(next(e.macro for e in exhaustive.ranking if e.units == r.units))


SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora"


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/corpora is not here")
def test_the_large_pool_bench_cuts_32_partitions_with_held_out_documents_apart(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_pool_corpus.py"
    for out in ("a", "b"):
        subprocess.run([sys.executable, str(script), str(SHARED), str(tmp_path / out)], check=True)
    parts = sorted(p.name for p in (tmp_path / "a" / "corpus").iterdir())
    sets = sorted(p.name for p in (tmp_path / "a" / "eval").iterdir())
    assert len(parts) == 32 and sets == ["computing", "drama", "jargon", "pydocs", "satire", "scripture"]

    def texts(folder):  # (document id, text): the source holds a few identical entries under different ids
        return [(d["id"], d["text"]) for d in map(json.loads, (folder / "docs.jsonl").read_text().splitlines())]

    training = {t for p in parts for t in texts(tmp_path / "a" / "corpus" / p)}
    held = {t for s in sets for t in texts(tmp_path / "a" / "eval" / s)}
    assert all(texts(tmp_path / "a" / "corpus" / p) for p in parts) and not training & held
    for p in [*(f"corpus/{x}" for x in parts), *(f"eval/{x}" for x in sets)]:  # reproducible
        assert (tmp_path / "a" / p / "docs.jsonl").read_bytes() == (tmp_path / "b" / p / "docs.jsonl").read_bytes()
