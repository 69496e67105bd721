"""Paired-by-seed comparison of two design runs from ``chem_design.py``'s results (issue 19).

A run is selected as ``METHOD[:TAG]`` (the ``method`` and ``tag`` fields of the rows; the last
row wins when a (objective, method, tag, seed, budget) was written more than once). For each
objective and budget it prints A's and B's top-10 mean and AUC top-10 (mean +- population std
over the seeds both have) and A - B with the number of seeds on which A is ahead.

    python benchmarks/chem_paired.py gegl:apprentice90 gbga \\
        --results benchmarks/results/chem_design_gegl10k.jsonl benchmarks/results/chem_design_pmo10k.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics


def select(rows: list[dict], spec: str) -> dict[tuple, dict]:
    method, _, tag = spec.partition(":")
    out = {}
    for r in rows:
        if r.get("method") == method and (not tag or r.get("tag") == tag):
            out[(r["objective"], r["budget"], r["seed"])] = r
    return out


def pm(values: list[float], digits: int) -> str:
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.pstdev(values):.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("a", help="METHOD[:TAG], e.g. gegl:apprentice90")
    ap.add_argument("b", help="METHOD[:TAG], e.g. gbga")
    ap.add_argument("--results", nargs="+", required=True)
    ap.add_argument("--digits", type=int, default=3)
    a = ap.parse_args()
    rows = [json.loads(line) for path in a.results for line in open(path) if line.strip()]
    ra, rb = select(rows, a.a), select(rows, a.b)
    if not ra or not rb:
        raise SystemExit(f"no rows for {a.a if not ra else a.b} in {' '.join(a.results)}")
    print(f"| objective | calls | seeds | {a.a} top-10 | {a.b} top-10 | A - B (seeds ahead) "
          f"| {a.a} AUC | {a.b} AUC | A - B (seeds ahead) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for obj, budget in sorted({(o, b) for o, b, _ in ra}):
        seeds = sorted(s for o, b, s in ra if (o, b) == (obj, budget) and (o, b, s) in rb)
        if not seeds:
            continue
        cells = []
        for field in ("top10_mean", "auc_top10"):
            x = [ra[(obj, budget, s)][field] for s in seeds]
            y = [rb[(obj, budget, s)][field] for s in seeds]
            d = statistics.fmean(x) - statistics.fmean(y)
            ahead = sum(u > v for u, v in zip(x, y))
            cells += [pm(x, a.digits), pm(y, a.digits),
                      f"{d:+.{a.digits}f} ({ahead}/{len(seeds)})"]
        print(f"| {obj} | {budget:,} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
