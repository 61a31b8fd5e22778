"""Markdown tables from the fidelity study's JSON reports (scripts/fidelity_study.sh)."""
import json
import sys
from pathlib import Path


def f(v):
    return "n/a" if v is None else f"{v:.2f}"


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


out = Path(sys.argv[1] if len(sys.argv) > 1 else "study")
print("| setting | params | unit tokens | LR | mixtures | Pearson (mean over sets) | Spearman | pair acc. | naive Pearson | naive pair acc. | sets where proxy beats naive (Pearson) | macro Pearson / Spearman / pair acc. | naive macro Pearson |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for path in sorted(out.glob("*.json")):
    r = json.loads(path.read_text())
    sets, m, s = r["eval_sets"].values(), r["macro"], r["settings"]
    beats = sum((x["pearson"] or -9) > (x["baseline_pearson"] or -9) for x in sets)
    print(f"| {path.stem} | {s['params'] / 1e6:.2f}M | {s['unit_tokens']} | {s['lr']:g} | {m['n_mixtures']} | "
          f"{f(mean(x['pearson'] for x in sets))} | {f(mean(x['spearman'] for x in sets))} | {f(mean(x['decision_accuracy'] for x in sets))} | "
          f"{f(mean(x['baseline_pearson'] for x in sets))} | {f(mean(x['baseline_decision_accuracy'] for x in sets))} | {beats}/{len(r['eval_sets'])} | "
          f"{f(m['pearson'])} / {f(m['spearman'])} / {f(m['decision_accuracy'])} | {f(m['baseline_pearson'])} |")
for path in sorted(out.glob("*.json")):
    r = json.loads(path.read_text())
    print(f"\n**{path.stem}**, per evaluation set (Pearson [95% CI], Spearman, Kendall, pair accuracy, top-1, top-3; naive Pearson):\n")
    print("| set | Pearson | Spearman | Kendall | pair acc. | top-1 | top-3 | naive Pearson | naive pair acc. |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, x in [*r["eval_sets"].items(), ("macro", r["macro"])]:
        ci = x.get("pearson_ci") or [None, None]
        print(f"| {name} | {f(x['pearson'])} [{f(ci[0])}, {f(ci[1])}] | {f(x['spearman'])} | {f(x['kendall'])} | {f(x['decision_accuracy'])} | "
              f"{f(x['top1_agreement'])} | {f(x['top3_agreement'])} | {f(x['baseline_pearson'])} | {f(x['baseline_decision_accuracy'])} |")
    for k, by in r.get("by_k", {}).items():
        sets = by["eval_sets"].values()
        print(f"\nwithin k={k} ({by['macro']['n_mixtures']} mixtures): mean Pearson {f(mean(x['pearson'] for x in sets))}, "
              f"Spearman {f(mean(x['spearman'] for x in sets))}, pair acc. {f(mean(x['decision_accuracy'] for x in sets))}; "
              f"naive Pearson {f(mean(x['baseline_pearson'] for x in sets))}; macro Pearson {f(by['macro']['pearson'])}")
    v = r.get("variants", {})
    for key, val in v.items():
        print(f"\n{key}: `{json.dumps(val)}`")
