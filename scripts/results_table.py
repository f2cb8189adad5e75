"""Turns the run summaries of scripts/gpu/results.sh (results/*.jsonl) into the
README's tables: test accuracy in %, mean ± sample standard deviation over the
seeds whose run finished every epoch (runs cut off by the job time limit are left out).

    python3 scripts/results_table.py results/avmnist-h200.jsonl results/avmnist-cpu.jsonl

Several files are pooled (e.g. runs made on the GPU and on the CPU); the
"runs on" column says which backends a row's seeds ran on. A run name that
appears twice is an error.
"""

import json
import statistics
import sys
from collections import defaultdict

ROWS = [
    ("uni-image", "unimodal image"),
    ("uni-audio", "unimodal audio"),
    ("joint", "joint (concat)"),
    ("mla-none", "MLA, hgm none"),
    ("mla-owm-a1", "MLA, hgm owm, alpha 1"),
    ("mla-owm-a100", "MLA, hgm owm, alpha 100"),
    ("mla-owm-a1e4", "MLA, hgm owm, alpha 1e4"),
    ("mla-cross-a1", "MLA, hgm cross, alpha 1"),
    ("mla-cross-a100", "MLA, hgm cross, alpha 100"),
]


def fmt(xs, scale=100.0, digits=1):
    if not xs:
        return "-"
    m = statistics.mean(xs) * scale
    if len(xs) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(xs) * scale:.{digits}f}"


def backend(r):
    b = r.get("backend", "?")
    return "H200" if "H200" in b else ("CPU" if b.startswith("cpu") else b)


def main(paths):
    runs = [json.loads(l) for path in paths for l in open(path) if l.strip()]
    # A run cut off by a job's time limit (fewer epochs than its setting) is
    # not a result; the same run completed elsewhere is.
    runs = [r for r in runs if r["epochs"] == {"A": 3, "B": 8, "C": 3, "D": 3}[r["run"].split("-")[0]]]
    names = [r["run"] for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        sys.exit(f"runs listed twice: {', '.join(dup)}")
    groups = defaultdict(list)
    for r in runs:
        setting, recipe, *name, seed = r["run"].split("-")
        groups[(setting, recipe, "-".join(name))].append(r)
    for recipe in ["default", "pca75"]:
        fusion_table(groups, recipe)
    for recipe in ["default", "pca75"]:
        methods_table(groups, recipe)
    for setting, title in [("A", "10,000-sample train subset, 3 epochs"), ("B", "full train split (55,000), 8 epochs")]:
        for recipe in ["default", "pca75"]:
            print(f"\n#### {title}, recipe `{recipe}`\n")
            print("| method | seeds | runs on | fused (entropy) | fused (mean) | image alone | audio alone | modality gap | head grad kept (last epoch) |")
            print("|---|---|---|---|---|---|---|---|---|")
            for key, label in ROWS:
                rs = groups.get((setting, recipe, key), [])
                if not rs:
                    continue
                t = [r["test"] for r in rs]
                fa = lambda name: [x["fusion_accuracy"][name] for x in t if x.get("fusion_accuracy")]
                mod = lambda name: [x["modality_accuracy"][name] for x in t if name in x["modality_accuracy"]]
                gap = [x["modality_gap"] for x in t if x.get("modality_gap") is not None]
                kept = [r["hgm_surviving_fraction"][-1] for r in rs if r.get("hgm_surviving_fraction")]
                fused_e = fa("entropy") or [x["fused_accuracy"] for x in t]
                on = " + ".join(f"{sum(backend(r) == b for r in rs)} {b}" for b in sorted({backend(r) for r in rs}))
                print(f"| {label} | {len(rs)} | {on} | {fmt(fused_e)} | {fmt(fa('mean'))} | {fmt(mod('image'))} | "
                      f"{fmt(mod('audio'))} | {fmt(gap, 1.0, 3)} | {fmt(kept, 1.0, 3)} |")


RULES = ["entropy", "mean", "calibrated", "weighted", "weighted-entropy"]


def fusion_table(groups, recipe):
    """Set C: every fusion rule's test accuracy, auto's choice, each modality
    alone, the best single modality per run, ECE and forgetting."""
    rows = [(k, l) for k, l in ROWS if groups.get(("C", recipe, k))]
    if not rows:
        return
    print(f"\n#### full train split (55,000), 3 epochs, recipe `{recipe}`: fusion rules\n")
    print("| method | seeds | fused (auto) | auto chose | " + " | ".join(RULES) +
          " | image alone | audio alone | best single modality | auto - best single | audio ECE before / after | forgetting (10^-3 loss per step) | head grad kept (last epoch) |")
    print("|" + "---|" * (11 + len(RULES)))
    for key, label in rows:
        rs = groups[("C", recipe, key)]
        t = [r["test"] for r in rs]
        fa = lambda name: [x["fusion_accuracy"][name] for x in t if x.get("fusion_accuracy")]
        mod = lambda name: [x["modality_accuracy"][name] for x in t if name in x["modality_accuracy"]]
        best = [max(x["modality_accuracy"].values()) for x in t]
        fused = [x["fused_accuracy"] for x in t]
        diff = [f - b for f, b in zip(fused, best)]
        chose = sorted({x.get("fusion_rule", "-") for x in t})
        ece = lambda k: [x[k]["audio"] for x in t if x.get(k) and "audio" in x[k]]
        e_b, e_a = ece("calibration_error"), ece("calibration_error_calibrated")
        # Mean over the run's epochs of the other modalities' probe-loss increase per step.
        forget = [statistics.mean(r["forgetting_loss_increase"]) for r in rs if r.get("forgetting_loss_increase")]
        kept = [r["hgm_surviving_fraction"][-1] for r in rs if r.get("hgm_surviving_fraction")]
        cells = [fmt(fa(name)) for name in RULES]
        ece_cell = f"{fmt(e_b, 1.0, 3)} / {fmt(e_a, 1.0, 3)}" if e_b else "-"
        print(f"| {label} | {len(rs)} | {fmt(fused)} | {', '.join(chose) if fa('entropy') else '-'} | " + " | ".join(cells) +
              f" | {fmt(mod('image'))} | {fmt(mod('audio'))} | {fmt(best)} | {fmt(diff, 100.0, 2)} | {ece_cell} | "
              f"{fmt(forget, 1000.0, 2)} | {fmt(kept, 1.0, 3)} |")


METHODS = [
    ("joint", "joint (concat)"),
    ("mla", "MLA (hgm owm, alpha 1e4, fusion auto)"),
    ("ogm", "OGM (alpha 0.8)"),
    ("ogm-ge", "OGM-GE (alpha 0.8)"),
    ("pmr", "PMR, PCE (alpha 1.0)"),
    ("mmpareto", "MMPareto (global norm scope)"),
    ("agm", "AGM (alpha 2.5)"),
    ("reconboost", "ReconBoost (w1 5, w2 1, stages 1:1, fusion auto)"),
    ("gblending", "G-Blending (one 1-epoch estimation, paper rule)"),
]


def methods_table(groups, recipe):
    """Set D: the balancing methods on the same setting: fused accuracy and
    macro-F1, each modality alone, test Shapley contributions (zeroed input,
    accuracy points) and v(none). Step times are in BENCHMARKS.md (these
    runs share the cores with other work)."""
    rows = [(k, l) for k, l in METHODS if groups.get(("D", recipe, k))]
    if not rows:
        return
    print(f"\n#### 10,000-sample train subset, 3 epochs, recipe `{recipe}`: balancing methods\n")
    print("| method | seeds | fused | fused macro-F1 | image alone | audio alone | Shapley image | Shapley audio | v(none) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, label in rows:
        rs = groups[("D", recipe, key)]
        t = [r["test"] for r in rs]
        mod = lambda name: [x["modality_accuracy"][name] for x in t if name in x["modality_accuracy"]]
        shap = lambda name: [x["shapley"]["dataset"][name] for x in t if x.get("shapley")]
        empty = [x["shapley"]["v_empty"] for x in t if x.get("shapley")]
        print(f"| {label} | {len(rs)} | {fmt([x['fused_accuracy'] for x in t])} | "
              f"{fmt([x['fused_macro_f1'] for x in t if 'fused_macro_f1' in x])} | {fmt(mod('image'))} | {fmt(mod('audio'))} | "
              f"{fmt(shap('image'))} | {fmt(shap('audio'))} | {fmt(empty)} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
