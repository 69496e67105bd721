"""SLA vs its baselines on CIFAR-10 labels (BENCHMARKS.md section 7).

Every variant runs ``train_semisup`` on the preset ``fixmatch_cifar10_cpu`` with method ``sla``
and only ``method.mode`` changed: CPU convnet, 32 px, ``--labels`` per class chosen by seed (50
per class held out for validation), no unlabeled stream, batch 64 labeled images per step (the
transformation modes forward all 4 rotations of each: 256 images), ``--steps`` steps of the
preset's SGD recipe, EMA model. Modes: baseline (plain CE), da (rotations as label-preserving
augmentation), mt (multi-task: class head + rotation head), sla (joint labels; reported with the
single and the aggregated inference of the same model), sla_sd (SLA + self-distilled single head;
reported with its head and, for reference, its joint head aggregated).

    python benchmarks/cifar10_sla.py --data PATH/cifar10-jpeg.tar.gz --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from selfsup.config import load_config
from selfsup.pretrain import load_data, reusable_run
from selfsup.semisupervised import accuracy, load_classifier, train_semisup

BASE = "fixmatch_cifar10_cpu"
MODES = ("baseline", "da", "mt", "sla", "sla_sd")
# the inferences read from each trained model (the first is the one the run evaluates)
INFERENCES = {"baseline": ("head",), "da": ("head",), "mt": ("head",),
              "sla": ("aggregated", "joint_single"), "sla_sd": ("head", "aggregated")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--labels", type=int, default=500, help="labels per class")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--transform", default="rotation")
    ap.add_argument("--only", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--out-dir", default="runs/cifar10_sla")
    ap.add_argument("--results", default="benchmarks/results/cifar10_sla.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(2)
    test_ds = None
    for seed in a.seeds:
        for mode in a.only:
            over = [f"data.path={a.data}", f"train.seed={seed}", f"train.steps={a.steps}",
                    f"data.labels_per_class={a.labels}", "data.val_per_class=50",
                    "method.name=sla", f"method.mode={mode}", f"method.transform={a.transform}",
                    "train.batch_size=64", "train.progress=false",
                    f"train.eval_every={max(1, a.steps // 2)}", "eval.median_last=2",
                    f"train.checkpoint_every={a.steps}"]
            cfg = load_config(BASE, over)
            if test_ds is None:
                test_ds = load_data(cfg, "test", False)
            out = Path(a.out_dir) / f"{mode}-{a.transform}-l{a.labels}-seed{seed}"
            t0 = time.time()
            if reusable_run(out, cfg):     # raises when the folder holds other settings
                s = json.loads((out / "summary.json").read_text())
            else:
                _, s = train_semisup(cfg, out)
            model, _ = load_classifier(out)
            for inf in INFERENCES[mode]:
                model.inference = inf
                acc = accuracy(model, test_ds, "cpu")
                row = {"variant": mode, "inference": inf, "transform": a.transform,
                       "labels": a.labels * 10, "seed": seed, "steps": a.steps,
                       "test_acc": acc, "test_acc_median_last": s.get("test_acc_median_last"),
                       "val_acc_best": s.get("val_acc_best"), "images_per_s": s.get("images_per_s"),
                       "seconds": round(time.time() - t0, 1),
                       "date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__}
                print(json.dumps(row), flush=True)
                Path(a.results).parent.mkdir(parents=True, exist_ok=True)
                with open(a.results, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
