"""The device path, checked on the 135M seed: two units trained on --device, three mixtures scored there (bf16
autocast on a GPU), the same mixtures scored again in float32 on CPU, and the two rankings compared.

Prints tokens per second for training and scoring; exits 1 when the rankings disagree (Spearman < 0.99).
Run it through scripts/gpu_check.sh, which finds the seed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from scipy.stats import spearmanr

from dataassess import pipeline
from dataassess.config import load_settings
from dataassess.scoring import Scorer
from dataassess.store import Store
from dataassess.types import perplexities

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "dataassess" / "data" / "demo"
PARTITIONS = ("jargon", "satire")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "smollm2-135m.toml"))
    ap.add_argument("--unit-tokens", type=int, default=16384, help="tokens per unit")
    ap.add_argument("--eval-tokens", type=int, default=2048, help="tokens per evaluation set")
    ap.add_argument("--store", help="store folder (default: a temporary one, removed after)")
    args = ap.parse_args()

    work = Path(args.store) if args.store else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        return check(args, work)
    finally:
        if not args.store:
            shutil.rmtree(work, ignore_errors=True)


def check(args, work: Path) -> int:
    corpus = work / "corpus"
    for name in PARTITIONS:
        if not (corpus / name).exists():
            shutil.copytree(DEMO / "corpus" / name, corpus / name)
    settings = load_settings(
        args.config,
        store=str(work / "store"),
        device=args.device,
        units={"tokens": args.unit_tokens},
        corpus={"eval_max_tokens": args.eval_tokens, "min_tokens": 0},
    )
    store = Store(settings.store)
    with pipeline.prepare(store, corpus, settings, DEMO / "eval", pool="gpu-check", progress=False) as pool:
        units = [next(u for u in pool.units if u.partition == name) for name in PARTITIONS]
        start = time.perf_counter()
        pipeline.train(pool, units)
        train_s = time.perf_counter() - start
        trained = sum(pool.models[u.name].tokens for u in units)
        a, b = (u.name for u in units)
        mixtures = [pool.mixture(m) for m in ((a,), (b,), (a, b))]
        sets = [pool.steps.evalsets.load(d) for d in pool.eval_sets.values()]
        scored = {}
        for device in (args.device, "cpu"):
            with Scorer(settings.score.batch_size, device, settings.threads, pool.seed) as scorer:
                start = time.perf_counter()
                scored[device] = [
                    perplexities(dict(zip(pool.eval_sets, scorer.score_merge(paths(store, m), m.weights, sets))))
                    for m in mixtures
                ]
                if device == args.device:
                    score_s = time.perf_counter() - start
    eval_tokens = sum(s.tokens for s in sets) * len(mixtures)
    print(f"device {args.device}: seed {settings.base_model} ({settings.gguf_file or 'safetensors'})")
    print(f"training: {trained} tokens in {train_s:.1f} s = {trained / train_s:,.0f} tokens/s")
    print(f"scoring: {eval_tokens} tokens in {score_s:.1f} s = {eval_tokens / score_s:,.0f} tokens/s")
    for name in pool.eval_sets:
        print(
            f"{name}: {args.device} {' '.join(f'{p[name]:.3f}' for p in scored[args.device])}; "
            f"cpu float32 {' '.join(f'{p[name]:.3f}' for p in scored['cpu'])}"
        )
    pairs = [(p[n], q[n]) for p, q in zip(scored[args.device], scored["cpu"]) for n in pool.eval_sets]
    rho = spearmanr(*zip(*pairs)).statistic
    print(f"Spearman of the {len(pairs)} scores ({len(mixtures)} mixtures x {len(sets)} sets): {rho:.4f}")
    ok = rho >= 0.99
    print("rankings agree" if ok else "error: the device's ranking differs from the float32 CPU ranking")
    return 0 if ok else 1


def paths(store: Store, mixture) -> list[Path]:
    return [store.weights(k) for k in mixture.model_keys]


if __name__ == "__main__":
    sys.exit(main())
