"""DINO on the CIFAR-10 CPU protocol: what its targets look like in the first steps, per recipe.

Each variant trains the `dino_cifar10_cpu` preset as it was before 2026-11-30 (BEFORE) with
one change, on the 600-step schedule
(warm-ups, momentum and temperature schedules as in the full run) but stopped after
--seconds of training, logging every 5 steps:

    target_entropy  mean entropy of one image's teacher target / log K  (1 = uniform targets)
    batch_entropy   entropy of the batch-mean target / log K           (0 = one prototype for all)
    logit_spread    std over images of the centred teacher logits / teacher temperature
    center_norm     norm of the centre
    z_std           std of the l2-normalised bottleneck output (healthy 1/sqrt(d))

    python benchmarks/dino_diagnosis.py --data PATH/cifar10-jpeg.tar.gz [--only preset ...]

Results: benchmarks/results/dino_diagnosis.jsonl (one row per variant: the logged rows).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from selfsup.config import load_config
from selfsup.pretrain import pretrain

# the preset as it was before this diagnosis (no head BN, teacher temperature 0.04 -> 0.07);
# every variant below starts from it
BEFORE = ["method.head_bn=false", "method.teacher_temp=0.07", "method.n_local_crops=2",
          "method.global_scale_min=0.4", "optim.lr=0.3", "optim.weight_decay=1e-6"]
VARIANTS = {
    "preset": [],
    "centring_off": ["method.center_momentum=1.0"],            # broken on purpose: C stays 0
    "lars_eta_0.02": ["optim.lars_eta=0.02"],
    "momentum_0.9995": ["method.base_momentum=0.9995"],
    "no_local_crops": ["method.n_local_crops=0"],
    "head_bn": ["method.head_bn=true"],                       # the official --use_bn_in_head
    "head_bn_tt0.04": ["method.head_bn=true", "method.teacher_temp=0.04"],
    "head_bn_m0.9995": ["method.head_bn=true", "method.base_momentum=0.9995"],
    # solo-learn's CIFAR recipe (scripts/pretrain/cifar/dino.yaml) at this budget
    "solo_learn": ["method.out_dim=4096", "method.hidden_dim=2048", "method.bottleneck_dim=256",
                   "method.base_momentum=0.9995", "optim.lars_eta=0.02", "method.n_local_crops=0"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--only", nargs="+", default=list(VARIANTS))
    ap.add_argument("--seconds", type=float, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra", nargs="*", default=[], help="overrides added to every variant")
    ap.add_argument("--out-dir", default="runs/dino_diagnosis")
    ap.add_argument("--results", default="benchmarks/results/dino_diagnosis.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(2)
    keys = ("loss", "target_entropy", "batch_entropy", "logit_spread", "center_norm")
    for name in a.only:
        over = [f"data.path={a.data}", f"train.seed={a.seed}", "train.log_every=5",
                "train.progress=false", "eval.monitor=false", "data.test_split=",
                f"train.time_limit={a.seconds}", "train.eval_every=25", *BEFORE, *VARIANTS[name],
                *a.extra]
        cfg = load_config("dino_cifar10_cpu", over)
        run_dir = Path(a.out_dir) / f"{name}-seed{a.seed}-{int(time.time())}"
        t0 = time.time()
        _, summary = pretrain(cfg, run_dir)
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        z = {r["step"]: r.get("z_std") for r in rows if r["kind"] == "eval"}
        log = [{"step": r["step"], **{k: round(r[k], 4) for k in keys if k in r},
                "z_std": z.get(r["step"])} for r in rows if r["kind"] == "train"]
        print(f"\n{name}: {' '.join(VARIANTS[name] + a.extra)}")
        print("step  target_H  batch_H  spread  |C|     loss")
        for r in log:
            if r["step"] in (5, 10, 15, 20, 30, 40, 50, 75, 100) or r["step"] % 50 == 0:
                print(f"{r['step']:4d}  {r.get('target_entropy', 0):.3f}     "
                      f"{r.get('batch_entropy', 0):.3f}    {r.get('logit_spread', 0):6.2f}  "
                      f"{r.get('center_norm', 0):.3f}  {r.get('loss', 0):.3f}")
        row = {"variant": name, "overrides": VARIANTS[name] + a.extra, "seed": a.seed,
               "steps": summary["steps"], "collapsed": summary["collapsed"],
               "collapse": summary["collapse"], "seconds": round(time.time() - t0, 1),
               "log": log, "date": time.strftime("%Y-%m-%d %H:%M")}
        with open(a.results, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
