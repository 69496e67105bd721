"""CIFAR-10 semi-supervised CPU protocol (BENCHMARKS.md section 4).

Every variant runs the bundled preset ``fixmatch_cifar10_cpu`` (CPU convnet, 32 px, batch 32
labeled + uratio x 32 unlabeled, 500 steps, FixMatch's SGD recipe, 50 labeled images per class
held out of the training set for validation) with only the method changed, at 4 and 25 labels
per class (CIFAR-10@40 and @250), for each seed. Reported: test accuracy of the EMA model at the
end, the median of the last 5 evaluations (every 50 steps) and at the best validation accuracy.

    python benchmarks/cifar10_semisup.py --data PATH/cifar10-jpeg.tar.gz --labels 4 25 --seeds 0 1

Protocol v2 (``--v2``: 2,000 steps, evaluation every 200, results in
``benchmarks/results/cifar10_semisup_v2.jsonl``): every variant with the same weak augmentation,
optimizer, EMA and budget; each row also carries the learning curve (test accuracy at every
evaluation) and, for thresholded methods, the mask rate and the pseudo-labels' accuracy against
the hidden true labels averaged over the last 10% of the steps.

    python benchmarks/cifar10_semisup.py --v2 --data PATH/cifar10-jpeg.tar.gz --labels 25 \
        --seeds 0 1 2 --only supervised fixmatch flexmatch freematch pl_oliver2018 mpl

Variants: supervised (labels only), pl_lee2013, pl_oliver2018, fixmatch, noisy_student (teacher =
labels only, then 2 noised student rounds), mpl (+ 100 fine-tuning steps on the labels),
simclr_finetune and simclr_fixmatch (start from the SimCLR encoder of the CPU protocol, see
``--simclr-dir``), distill (student of the same size distilled from this seed's FixMatch model).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from selfsup.config import load_config
from selfsup.pretrain import RunDirError, pretrain, reusable_run
from selfsup.semisupervised import mpl_with_finetune, noisy_student, train_semisup

BASE = "fixmatch_cifar10_cpu"
VARIANTS = {
    "supervised": ["method.name=supervised"],
    # Lee (2013): alpha_f 3; T1/T2 (paper: epochs 100/600) put at ~20% / ~80% of the unlabeled
    # epochs of a 300-step run (300 x 128 / 49,500 = 0.78 epochs)
    "pl_lee2013": ["method.name=pseudo_label", "method.schedule=lee2013", "method.uratio=4",
                   "method.t1=0.15", "method.t2=0.6"],
    "pl_oliver2018": ["method.name=pseudo_label", "method.schedule=oliver2018", "method.uratio=4"],
    "fixmatch": [],
    # method.name drops the preset's method keys: give uratio again, or the Config default (7)
    # silently unmatches the control (FixMatch here runs at the preset's 4)
    "flexmatch": ["method.name=flexmatch", "method.uratio=4"],
    "freematch": ["method.name=freematch", "method.uratio=4"],
    "noisy_student": ["method.name=noisy_student", "method.uratio=4", "method.per_class=1000"],
    # the paper lets the teacher learn alone for 3k steps before the student starts; here the
    # student waits method.student_wait_steps (100) and UDA ramps over method.uda_steps (300)
    "mpl": ["method.name=mpl", "method.uratio=4"],
    "simclr_finetune": ["method.name=supervised"],
    "simclr_fixmatch": [],
    "distill": ["method.name=distill", "method.uratio=4"],
}


def simclr_run(simclr_dir: Path, data: str, seed: int) -> Path:
    """The newest finished SimCLR CPU-protocol run of this seed with the preset's settings, or a
    new one."""
    cfg = load_config("simclr_cifar10_cpu", [f"data.path={data}", f"train.seed={seed}",
                                             "eval.monitor=false", "train.progress=false"])
    for run in sorted(simclr_dir.glob(f"simclr-seed{seed}-*"), reverse=True):
        try:
            if reusable_run(run, cfg):     # not a 4x run or one with other settings
                return run
        except RunDirError:
            continue
    run, _ = pretrain(cfg, simclr_dir / f"simclr-seed{seed}-{int(time.time())}")
    return run


def diagnostics(run: Path) -> dict:
    """The learning curve (step, test accuracy) and, where logged, the mask rate and pseudo-label
    accuracy (against the hidden true labels) averaged over the last 10% of the steps."""
    out: dict = {}
    hist = run / "eval_history.json"
    metrics = run / "metrics.jsonl"
    if metrics.exists():
        rows = [json.loads(r) for r in metrics.read_text().splitlines() if r.strip()]
        evals = [r for r in rows if r.get("kind") == "eval" and "test_acc" in r]
        out["curve"] = [[r["step"], r["test_acc"]] for r in evals]
        train = [r for r in rows if r.get("kind") == "train"]
        tail = train[-max(1, len(train) // 10):]
        for k in ("mask", "pl_acc", "pl_acc_masked", "h", "tau", "thr_mean"):
            vals = [r[k] for r in tail if k in r]
            if vals:
                out[f"{k}_last10"] = round(sum(vals) / len(vals), 4)
    elif hist.exists():
        out["curve"] = [h.get("test_acc") for h in json.loads(hist.read_text())]
    return out


def row(variant: str, labels: int, seed: int, summary: dict, seconds: float, **extra) -> dict:
    keys = ("test_acc_final", "test_acc_median_last", "test_acc_at_best_val", "val_acc_best",
            "images_per_s", "n_labeled", "steps")
    return {"variant": variant, "labels": labels * 10, "seed": seed, "seconds": round(seconds, 1),
            **{k: summary[k] for k in keys if k in summary}, **extra,
            "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--labels", type=int, nargs="+", default=[4, 25], help="labels per class")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--only", nargs="+", default=None, choices=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=None, help="override the preset's 500 steps")
    ap.add_argument("--v2", action="store_true", help="protocol v2: 2,000 steps, evaluation "
                    "every 200, its own results file and run folder")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more overrides for every run (e.g. train.eval_every=50)")
    ap.add_argument("--out-dir", default="runs/cifar10_semisup")
    ap.add_argument("--simclr-dir", default="runs/cifar10_protocol")
    ap.add_argument("--results", default="benchmarks/results/cifar10_semisup.jsonl")
    a = ap.parse_args()
    if a.v2:
        a.steps = a.steps or 2000
        a.set = ["train.eval_every=200", "train.checkpoint_every=500"] + list(a.set)
        if a.results == ap.get_default("results"):
            a.results = "benchmarks/results/cifar10_semisup_v2.jsonl"
        if a.out_dir == ap.get_default("out_dir"):
            a.out_dir = "runs/cifar10_semisup_v2" + ("" if a.steps == 2000 else f"_{a.steps}steps")
    if a.v2:
        # Lee (2013) on the v2 footing: the unlabeled weight starts ramping once labels-only has
        # plateaued (step ~600 = 1.55 epochs of 128 unlabeled images per step over 49,500) and
        # reaches alpha_f at step ~1,400 (3.62 epochs); no dropout, as its labels-only control
        VARIANTS["pl_lee2013"] = ["method.name=pseudo_label", "method.schedule=lee2013",
                                  "method.uratio=4", "method.t1=1.55", "method.t2=3.62",
                                  "method.dropout=0.0"]
    torch.set_num_threads(2)
    res = Path(a.results)
    res.parent.mkdir(parents=True, exist_ok=True)

    def emit(r: dict) -> None:
        print(json.dumps(r), flush=True)
        with res.open("a") as f:
            f.write(json.dumps(r) + "\n")

    for seed in a.seeds:
        for lpc in a.labels:
            common = [f"data.path={a.data}", f"train.seed={seed}", f"data.labels_per_class={lpc}",
                      "train.progress=false"] + ([f"train.steps={a.steps}"] if a.steps else [])
            common += list(a.set)
            base_dir = Path(a.out_dir) / f"l{lpc * 10}-seed{seed}"
            for name in a.only or list(VARIANTS):
                over = common + VARIANTS[name]
                out = base_dir / name
                t0 = time.time()
                if name == "noisy_student":
                    _, s = noisy_student(load_config(BASE, over), rounds=2, run_dir=out)
                    for r in s["rounds"]:
                        emit(row(f"noisy_student_round{r['round']}", lpc, seed, r,
                                 r.get("train_seconds", 0.0),
                                 **{k: r[k] for k in ("pseudo_labeled", "pseudo_unique")
                                    if k in r}))
                    continue
                if name == "mpl":
                    _, s = mpl_with_finetune(load_config(BASE, over), 100, run_dir=out)
                    emit(row("mpl_no_finetune", lpc, seed, s["mpl"], time.time() - t0,
                             **diagnostics(out / "mpl")))
                    emit(row("mpl", lpc, seed, s["finetune"], time.time() - t0))
                    continue
                init = None
                if name.startswith("simclr_"):
                    init = simclr_run(Path(a.simclr_dir), a.data, seed)
                if name == "distill":
                    teacher = base_dir / "fixmatch"
                    if not (teacher / "model.safetensors").exists():
                        raise SystemExit(f"distill needs {teacher}: run the fixmatch variant first")
                    over = over + [f"method.teacher={teacher}"]
                cfg = load_config(BASE, over)
                if reusable_run(out, cfg):   # a finished run: its own training time
                    s = json.loads((out / "summary.json").read_text())
                    t0 = time.time() - s.get("train_seconds", 0.0)
                else:
                    _, s = train_semisup(cfg, out, init=init)
                emit(row(name, lpc, seed, s, time.time() - t0, **diagnostics(out),
                         **({"init": str(init)} if init else {})))


if __name__ == "__main__":
    try:
        main()
    except RunDirError as e:
        raise SystemExit(f"{e} (--out-dir)") from None
