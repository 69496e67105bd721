"""Tables of the semi-supervised protocol v2 (BENCHMARKS.md section 4.1) from
benchmarks/results/cifar10_semisup_v2.jsonl: mean ± std over seeds, each method's paired
difference to labels-only per seed, the diagnostics of the last 10% of the steps, and the curves.

    python benchmarks/summarize_v2.py
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

NAMES = {"supervised": "labels only", "fixmatch": "FixMatch", "flexmatch": "FlexMatch",
         "freematch": "FreeMatch", "pl_oliver2018": "Pseudo-Label, thresholded (Oliver 2018)",
         "pl_lee2013": "Pseudo-Label, Lee 2013", "mpl_no_finetune": "MPL student",
         "mpl": "MPL student + fine-tune"}


def main(path: str = "benchmarks/results/cifar10_semisup_v2.jsonl") -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    by = defaultdict(dict)
    for r in rows:                               # the last row of a (variant, labels, seed) wins
        by[(r["variant"], r["labels"])][r["seed"]] = r

    def pm(v):
        v = 100 * np.asarray(v, float)
        return f"{v.mean():.1f} ± {v.std():.1f}" if len(v) > 1 else f"{v.mean():.1f}"

    for labels in sorted({k[1] for k in by}):
        print(f"\n**CIFAR-10@{labels}, protocol v2** (test accuracy %, EMA model; paired: this "
              f"method minus labels-only, per seed)\n")
        print("| method | seeds | final | median last 5 | at best val | paired vs labels-only "
              "(per seed) | mask | pseudo-label acc (all / masked) |")
        print("|---|---|---|---|---|---|---|---|")
        base = by.get(("supervised", labels), {})
        for v in NAMES:
            runs = by.get((v, labels))
            if not runs:
                continue
            seeds = sorted(runs)
            f = lambda k: pm([runs[s][k] for s in seeds])  # noqa: E731
            paired = ", ".join(f"{100 * (runs[s]['test_acc_final'] - base[s]['test_acc_final']):+.1f}"
                               for s in seeds if s in base) if v != "supervised" else ""
            diag = lambda k: (f"{100 * np.mean([runs[s][k] for s in seeds]):.0f}%"  # noqa: E731
                              if all(k in runs[s] for s in seeds) else "")
            pl = (f"{diag('pl_acc_last10')} / {diag('pl_acc_masked_last10')}"
                  if diag("pl_acc_last10") else "")
            print(f"| {NAMES[v]} | {','.join(map(str, seeds))} | {f('test_acc_final')} | "
                  f"{f('test_acc_median_last')} | {f('test_acc_at_best_val')} | {paired} | "
                  f"{diag('mask_last10')} | {pl} |")
        steps = sorted({r["steps"] for v in NAMES for r in by.get((v, labels), {}).values()})
        every = sorted({c[0] for v in NAMES for r in by.get((v, labels), {}).values()
                        for c in r.get("curve", [])[:1]})
        print(f"\nLearning curves (test accuracy % every {'/'.join(map(str, every))} steps up to "
              f"{'/'.join(map(str, steps))}; seed by seed):\n")
        for v in NAMES:
            for s, r in sorted(by.get((v, labels), {}).items()):
                if r.get("curve"):
                    print(f"- {NAMES[v]}, seed {s}: " + " ".join(f"{100 * a:.1f}"
                                                                  for _, a in r["curve"]))


if __name__ == "__main__":
    main(*sys.argv[1:])
