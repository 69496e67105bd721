"""AugSelf's claim on a colour-sensitive task (BENCHMARKS.md section 7).

The task: the dominant hue of each CIFAR-10 image (saturation-weighted circular mean hue of its
pixels, 6 sectors of 60 degrees; ``selfsup.evaluate.tasks.hue_labels``), a property SimCLR's
colour jitter changes and its invariance therefore discards. Frozen features of the CPU-protocol
encoders (SimCLR with and without AugSelf, same seed, same steps; run them first with
``cifar10_protocol.py --only simclr simclr_augself``), a random-init encoder and raw pixels, are
probed with the protocol's logistic regression: trained on the protocol's 10,000 labeled training
images (their hue labels), tested on the 10,000 test images.

    python benchmarks/augself_color.py --data PATH/cifar10-jpeg.tar.gz --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from selfsup.config import load_config
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.linear import linear_probe
from selfsup.evaluate.protocol import labeled_train_subset, raw_pixel_features
from selfsup.evaluate.tasks import hue_labels
from selfsup.pretrain import build_backbone, load_data, load_encoder, load_run_config


def newest_run(out_dir: Path, variant: str, seed: int, steps: int) -> Path | None:
    """The newest finished run of this variant and seed trained for ``steps`` (a 4x run of the
    protocol lives in the same folder and must not stand in for the 1x one)."""
    done = sorted(p.parent for p in out_dir.glob(f"{variant}-seed{seed}-*/encoder.safetensors")
                  if load_run_config(p.parent).train.steps == steps)
    return done[-1] if done else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--bins", type=int, default=6)
    ap.add_argument("--runs", default="runs/cifar10_protocol")
    ap.add_argument("--steps", type=int, default=600, help="the pretraining steps of the runs "
                    "to probe (the protocol's 600)")
    ap.add_argument("--results", default="benchmarks/results/augself_color.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(2)
    base = load_config("simclr_cifar10_cpu", [f"data.path={a.data}"])
    train_ds, test_ds = load_data(base, "train", False), load_data(base, "test", False)
    y_test = hue_labels(np.asarray(test_ds.images), a.bins)
    counts = np.bincount(y_test, minlength=a.bins)
    print(f"hue sectors on the test set: {counts.tolist()} (majority {counts.max() / len(y_test):.3f})")
    for seed in a.seeds:
        probe = labeled_train_subset(train_ds, labels_per_class=1000, seed=seed)
        y_train = hue_labels(np.asarray(probe.images), a.bins)
        for variant in ("raw", "random", "simclr", "simclr_augself"):
            t0 = time.time()
            if variant == "raw":
                ftr, fte = raw_pixel_features(probe), raw_pixel_features(test_ds)
            else:
                if variant == "random":
                    torch.manual_seed(seed)
                    enc = build_backbone(base)
                else:
                    run = newest_run(Path(a.runs), variant, seed, a.steps)
                    if run is None:
                        raise SystemExit(f"no finished {a.steps}-step {variant} run of seed "
                                         f"{seed} in {a.runs}: run cifar10_protocol.py --only "
                                         f"{variant} --steps {a.steps} first")
                    enc, _ = load_encoder(run)
                ftr, fte = extract_features(enc, probe), extract_features(enc, test_ds)
            res = linear_probe(ftr, y_train, fte, y_test, seed=seed)
            row = {"variant": variant, "seed": seed, "task": f"hue{a.bins}", "steps": a.steps,
                   "hue_acc": res["linear_acc"], "linear_C": res["linear_C"],
                   "majority": float(counts.max() / len(y_test)),
                   "seconds": round(time.time() - t0, 1), "date": time.strftime("%Y-%m-%d %H:%M")}
            print(json.dumps(row), flush=True)
            Path(a.results).parent.mkdir(parents=True, exist_ok=True)
            with open(a.results, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
