"""Markdown tables from the fidelity study's JSON reports (scripts/fidelity_study.sh)."""

import json
import sys
from pathlib import Path


def f(v):
    return "n/a" if v is None else f"{v:.2f}"


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def row(name, r):
    sets, m, s = list(r["eval_sets"].values()), r["macro"], r["settings"]
    raw = mean(x.get("raw", {}).get("spearman") for x in sets) if r.get("budget") == "union" else None
    worst = min((x["spearman"] for x in sets if x["spearman"] is not None), default=None)
    beats = sum((x["decision_accuracy"] or 0) > (x["baseline_decision_accuracy"] or 0) for x in sets)
    return (
        f"| {name} | {r.get('budget', 'union')} | {s['params'] / 1e6:.1f}M | {s['n_units']} | {m['n_mixtures']} | "
        f"{f(mean(x['spearman'] for x in sets))} (min {f(worst)}) | {f(mean(x['decision_accuracy'] for x in sets))} | "
        f"{f(mean(x.get('ceiling_spearman') for x in sets))} / "
        f"{f(mean(x.get('ceiling_decision_accuracy') for x in sets))} | "
        f"{f(mean(x.get('spearman_share_of_ceiling') for x in sets))} | "
        f"{f(mean(x['baseline_decision_accuracy'] for x in sets))} | "
        f"{beats}/{len(sets)} | {f(raw)} | {f(m['spearman'])} / {f(m['decision_accuracy'])} |"
    )


out = Path(sys.argv[1] if len(sys.argv) > 1 else "study")
reports = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
print(
    "Mean over evaluation sets, k = 1..3 pooled. Under `union` the score is the calibrated prediction (leave-one-out); "
    "`raw` is the uncalibrated average's Spearman.\n"
)
print(
    "| run | budget | seed | units | mixtures | Spearman (min over sets) | pair acc. | ceiling Spearman / pair acc. | "
    "Spearman / ceiling | naive pair acc. | sets where proxy beats naive | raw Spearman | macro Spearman / pair acc. |"
)
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for name, r in reports.items():
    print(row(name, r))
for name, r in reports.items():
    print(f"\n**{name}** ({r.get('budget', 'union')} budget), per evaluation set:\n")
    print(
        "| set | Pearson | Spearman [95% CI] | Kendall | pair acc. | ceiling Spearman | ceiling pair acc. | naive "
        "pair acc. | raw Spearman |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for s, x in [*r["eval_sets"].items(), ("macro", r["macro"])]:
        ci = x.get("spearman_ci") or [None, None]
        print(
            f"| {s} | {f(x['pearson'])} | {f(x['spearman'])} [{f(ci[0])}, {f(ci[1])}] | {f(x['kendall'])} | "
            f"{f(x['decision_accuracy'])} | "
            f"{f(x.get('ceiling_spearman'))} | {f(x.get('ceiling_decision_accuracy'))} | "
            f"{f(x['baseline_decision_accuracy'])} | "
            f"{f(x.get('raw', {}).get('spearman'))} |"
        )
    for k, by in r.get("by_k", {}).items():
        sets = by["eval_sets"].values()
        print(
            f"\nwithin k={k} ({by['macro']['n_mixtures']} mixtures): mean Spearman "
            f"{f(mean(x['spearman'] for x in sets))}, "
            f"pair acc. {f(mean(x['decision_accuracy'] for x in sets))}"
        )
    for key, val in r.get("variants", {}).items():
        print(f"\n{key}: `{json.dumps(val)}`")
