"""make bench: ratios measured side by side in one run (absolute times here are noise).

Prints one line per figure (name, ratio, target, pass/fail), writes bench/results/<stamp>.json
and logs the figures to MLflow (experiment `benchmarks`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GPT2Config

from dataassess.merge import linear_merge

ROOT = Path(__file__).resolve().parents[1]
RESULTS: list[dict] = []
NAIVE_MAX_BYTES = 12 << 30


def record(name: str, ratio: float, target: str, ok: bool | None, detail: str = "") -> None:
    RESULTS.append({"name": name, "ratio": ratio, "target": target, "pass": ok, "detail": detail})
    verdict = "n/a " if ok is None else ("PASS" if ok else "FAIL")
    print(f"{name:<44} {ratio:>9.3f}  target {target:<10} {verdict}  {detail}", flush=True)


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def copy_bandwidth(gib: float = 1.0) -> float:
    """Bytes per second of a large in-memory copy (torch, all threads)."""
    n = int(gib * (1 << 30) / 4)
    src, dst = torch.ones(n), torch.empty(n)
    return n * 4 / best_of(lambda: dst.copy_(src), 5)


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
    out = subprocess.run([sys.executable, "-c", PEAK_CODE, kind, *map(str, paths)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) * 1024


def bench_merge(name: str, cfg: GPT2Config, ks=(2, 4, 8, 16)) -> None:
    bw = copy_bandwidth()
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as tmp:
        paths = make_models(cfg, max(ks), Path(tmp))
        model_bytes = os.path.getsize(paths[0])
        for k in ks:
            sub = paths[:k]
            t_ours = best_of(lambda: linear_merge(sub), 2)
            if k * model_bytes * 2 > NAIVE_MAX_BYTES:  # the naive way holds k models plus their stack
                record(f"merge {name} k={k}: naive time / ours", float("nan"), ">= 3", None, "naive skipped: would need > 12 GB")
                t_naive = None
            else:
                t_naive = best_of(lambda: naive_merge(sub), 2)
            read_bw = k * model_bytes / t_ours
            record(f"merge {name} k={k}: bandwidth / copy", read_bw / bw, ">= 0.5", read_bw / bw >= 0.5,
                   f"{read_bw / 1e9:.2f} vs {bw / 1e9:.2f} GB/s")
            if t_naive is not None:
                record(f"merge {name} k={k}: naive time / ours", t_naive / t_ours, ">= 3", t_naive / t_ours >= 3)
            if name != "tiny":
                peak = peak_rss_bytes("ours", sub)
                naive = f"naive {peak_rss_bytes('naive', sub) / model_bytes:.1f}x" if t_naive is not None else ""
                record(f"merge {name} k={k}: peak RSS / model", peak / model_bytes, "<= 2.5", peak / model_bytes <= 2.5, naive)


def bench_scoring() -> None:
    from dataassess.config import Settings
    from dataassess.corpus import eval_sets_from_folder
    from dataassess.score import build_eval_set, score_model
    from dataassess.seed import train_tokenizer, tiny_config

    docs = eval_sets_from_folder(ROOT / "dataassess" / "data" / "demo" / "eval")
    texts = [d.text for ds in docs.values() for d in ds]
    tok = train_tokenizer(texts, 8192)
    s = Settings()
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2", s.tiny, len(tok), 256, tok.eos_token_id)).eval()
    es = build_eval_set("all", [d for ds in docs.values() for d in ds], tok, 256, None, 40_000)
    dev = torch.device("cpu")
    batches = [torch.tensor([w for w, _ in es.windows[i:i + 16] if len(w) == 256]) for i in range(0, len(es.windows), 16)]
    batches = [b for b in batches if len(b)]
    plain_tokens = sum(b.numel() for b in batches)

    def plain():
        with torch.no_grad():
            for b in batches:
                model(input_ids=b, labels=b)

    t_ours = best_of(lambda: score_model(model, es, 16, dev), 2)
    t_plain = best_of(plain, 2)
    positions_ours = sum(len(w) for w, _ in es.windows)
    ratio = (positions_ours / t_ours) / (plain_tokens / t_plain)
    record("scoring: forward tokens/s ours / plain loop", ratio, ">= 1.0", ratio >= 1.0,
           f"{positions_ours / t_ours:,.0f} vs {plain_tokens / t_plain:,.0f} tok/s")


def log_mlflow(path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import mlflow

    from registry.tracking import connect, experiment_id

    store = Path(os.environ.get("DATAASSESS_STORE", ".dataassess"))
    client = connect(store)
    with mlflow.start_run(experiment_id=experiment_id(client, "benchmarks", store), run_name=path.stem):
        mlflow.log_metrics({r["name"].replace(":", "").replace("=", "").replace(">", "").replace("/", "per"): r["ratio"] for r in RESULTS})
        mlflow.log_artifact(str(path))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["merge", "scoring"], default=None)
    args = ap.parse_args()
    print(f"{'figure':<44} {'ratio':>9}  {'target':<17} detail", flush=True)
    if args.only in (None, "merge"):
        bench_merge("tiny", GPT2Config(vocab_size=8192, n_positions=256, n_embd=128, n_layer=2, n_head=4))
        bench_merge("gpt2-124M", GPT2Config())
    if args.only in (None, "scoring"):
        bench_scoring()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = ROOT / "bench" / "results" / f"bench-{stamp}.json"
    out.write_text(json.dumps({"created": stamp, "threads": torch.get_num_threads(), "results": RESULTS}, indent=2))
    print(f"wrote {out}")
    log_mlflow(out)


if __name__ == "__main__":
    main()
