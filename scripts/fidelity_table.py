"""Markdown tables from the fidelity study's JSON reports (scripts/fidelity_study.sh), and each report's verdict
against the fidelity targets. Reads only the reports."""

import json
import sys
from pathlib import Path

RESOLVABLE = "resolvable_decision_accuracy"
# the targets, on every evaluation set unless said: (budget, what, test)
TARGETS = {
    "fixed": [
        ("resolvable-decision accuracy >= 0.95 on every set", lambda r: _all_sets(r, RESOLVABLE, 0.95)),
        ("Spearman >= 0.92 on every set", lambda r: _all_sets(r, "spearman", 0.92)),
        ("macro Spearman >= 0.90 within k = 2 and k = 3", lambda r: _within_k(r, ("2", "3"), 0.90)),
        ("the proxy beats the naive baseline on every set", lambda r: _beats_naive(r) == len(r["eval_sets"])),
    ],
    "union": [
        ("resolvable-decision accuracy >= 0.90 on every set", lambda r: _all_sets(r, RESOLVABLE, 0.90)),
    ],
}


def f(v):
    return "n/a" if v is None else f"{v:.2f}"


def f3(v):
    return "n/a" if v is None else f"{v:.3f}"


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _all_sets(r, key, at_least):
    return all(x[key] is not None and x[key] >= at_least for x in r["eval_sets"].values())


def _within_k(r, ks, at_least):
    return all(k in r["by_k"] and (r["by_k"][k]["macro"]["spearman"] or -1) >= at_least for k in ks)


def _resolvable(figs):
    return figs["resolvable_decision_accuracy"]


def _beats_naive(r):
    """Sets where the score's resolvable-decision accuracy is above the naive baseline's."""
    return sum((_resolvable(x) or 0) > (_resolvable(x["baselines"]["naive"]) or 0) for x in r["eval_sets"].values())


def summary_row(name, r):
    sets, m, s = list(r["eval_sets"].values()), r["macro"], r["settings"]
    ks = " / ".join(f"{f(r['by_k'][k]['macro']['spearman'])}" for k in sorted(r["by_k"]))
    return (
        f"| {name} | {r['budget']} | {r['score']} | {s['params'] / 1e6:.1f}M | {s['n_units']} | {m['n_mixtures']} | "
        f"{r['noise']['n_replicates']} | {f3(r['noise']['sigma_log_ppl']['macro'])} | "
        f"{f(min(_resolvable(x) or 0 for x in sets))} / {f(mean(_resolvable(x) for x in sets))} | "
        f"{f(min(x['spearman'] or -1 for x in sets))} / {f(mean(x['spearman'] for x in sets))} | "
        f"{f(mean(_resolvable(x['baselines']['naive']) for x in sets))} | {_beats_naive(r)}/{len(sets)} | "
        f"{f(mean(_resolvable(x['ceiling'].get('replicate', {})) for x in sets))} | "
        f"{f(_resolvable(m))} ({m['n_resolvable_pairs']}) | {ks} |"
    )


out = Path(sys.argv[1] if len(sys.argv) > 1 else "study")
reports = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
print(
    "Resolvable: accuracy on the pairs of mixtures whose truths differ by more than 2.83 sigma in log perplexity "
    "(sigma: the data-order noise, from the replicate truths). Under `union` the score is the calibrated "
    "prediction (leave-one-out). Ceiling: a replicate truth's resolvable accuracy against the truth, on the "
    "replicated mixtures.\n"
)
print(
    "| run | budget | score | seed | units | mixtures | replicates | sigma (macro) | "
    "resolvable, min / mean over sets | Spearman, min / mean | naive resolvable | "
    "sets where the score beats naive | ceiling | macro resolvable "
    "(pairs) | macro Spearman within each k |"
)
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for name, r in reports.items():
    print(summary_row(name, r))
print("\nAgainst the targets of the fidelity protocol:\n")
print("| run | target | met |")
print("|---|---|---|")
for name, r in reports.items():
    for what, test in TARGETS.get(r["budget"], []):
        print(f"| {name} | {what} | {'yes' if test(r) else '**no**'} |")
for name, r in reports.items():
    print(f"\n**{name}** ({r['budget']} budget), per evaluation set:\n")
    print(
        "| set | sigma | Spearman [95% CI] | decision acc. | resolvable [95% CI] (pairs) | naive resolvable | "
        "seed resolvable | ceiling: score / replicate |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for s, x in [*r["eval_sets"].items(), ("macro", r["macro"])]:
        ci, rci = x["spearman_ci"], x["resolvable_decision_accuracy_ci"]
        c = x["ceiling"]
        print(
            f"| {s} | {f3(r['noise']['sigma_log_ppl'][s])} | {f(x['spearman'])} [{f(ci[0])}, {f(ci[1])}] | "
            f"{f(x['decision_accuracy'])} | {f(_resolvable(x))} [{f(rci[0])}, {f(rci[1])}] "
            f"({x['n_resolvable_pairs']}) | "
            f"{f(_resolvable(x['baselines']['naive']))} | {f(_resolvable(x['baselines']['seed']))} | "
            f"{f(_resolvable(c.get('score', {})))} / {f(_resolvable(c.get('replicate', {})))} |"
        )
    for k, by in r["by_k"].items():
        sets = by["eval_sets"].values()
        print(
            f"\nwithin k={k} ({by['macro']['n_mixtures']} mixtures): mean Spearman "
            f"{f(mean(x['spearman'] for x in sets))}, "
            f"mean resolvable {f(mean(_resolvable(x) for x in sets))}; macro Spearman {f(by['macro']['spearman'])}"
        )
