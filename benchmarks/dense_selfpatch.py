"""DINO with and without SelfPatch on a dense task (BENCHMARKS.md section 7).

Data: 2x2 mosaics of CIFAR-10 images (each tile a 16 px downscaled image; 32 px mosaics;
``selfsup.evaluate.tasks.mosaic_dataset``). Pretraining sees ``--mosaics`` unlabeled mosaics built
from the training images. The dense task: the class under each patch of the ViT's 8x8 grid (4 px
patches, 4x4 patches per tile), probed by logistic regression on frozen patch tokens
(``forward_map``): trained on 2,000 mosaics of the protocol's labeled training images (40,000
patches sampled), tested on 2,000 mosaics of test images (128,000 patches); patch accuracy and
mean IoU. Both methods: ViT-Tiny/4 at width 0.5 and 6 blocks, same crops (2 global crops,
scale 0.25-1, no local crops), heads, AdamW, batch, steps; SelfPatch adds its patch loss (0.1).
Both use DINO's small-scale setting that does not collapse (BENCHMARKS.md 3: BatchNorm in the
heads, teacher temperature 0.04 throughout; the patch term follows the same temperature, as the
official code). Each row records the collapse detector's verdict, the output embeddings' std and
effective rank, and the teacher targets' entropies over the last 50 steps.

    python benchmarks/dense_selfpatch.py --data PATH/cifar10-jpeg.tar.gz --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from selfsup import rundir
from selfsup.config import load_config
from selfsup.evaluate.protocol import labeled_train_subset
from selfsup.evaluate.tasks import dense_probe, mosaic_dataset
from selfsup.pretrain import build_backbone, load_data, load_encoder, pretrain

COMMON = ["model.backbone=vit_tiny", "model.width=0.5", "model.patch_size=4", "model.depth=6",
          "model.channels_last=false", "augment.size=32", "train.batch_size=64",
          "optim.name=adamw", "optim.lr=5e-4", "optim.scale_lr=false", "optim.weight_decay=0.04",
          "optim.warmup=0.1", "train.progress=false", "eval.monitor=false",
          "method.out_dim=1024", "method.hidden_dim=256", "method.bottleneck_dim=128",
          "method.n_local_crops=0", "method.global_scale_min=0.25", "method.base_momentum=0.99",
          "method.head_bn=true", "method.teacher_temp=0.04", "method.warmup_teacher_temp=0.04"]
VARIANTS = {"dino": ["method.name=dino"],
            "selfpatch": ["method.name=selfpatch", "method.patch_out_dim=1024"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--mosaics", type=int, default=20000)
    ap.add_argument("--only", nargs="+", default=["random", *VARIANTS],
                    choices=["random", *VARIANTS])
    ap.add_argument("--out-dir", default="runs/dense_selfpatch")
    ap.add_argument("--results", default="benchmarks/results/dense_selfpatch.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(2)
    base = load_config("dino_cifar10_cpu", [f"data.path={a.data}", *COMMON, "method.name=dino"])
    train_ds, test_ds = load_data(base, "train", False), load_data(base, "test", False)
    for seed in a.seeds:
        unlabeled, _ = mosaic_dataset(train_ds, a.mosaics, seed=1000 + seed)
        probe = labeled_train_subset(train_ds, labels_per_class=1000, seed=seed)
        probe_train = mosaic_dataset(probe, 2000, seed=2000 + seed)
        probe_test = mosaic_dataset(test_ds, 2000, seed=3000 + seed)
        for name in a.only:
            t0 = time.time()
            extra = {}
            if name == "random":
                torch.manual_seed(seed)
                encoder = build_backbone(base)
            else:
                over = [f"data.path={a.data}", f"train.seed={seed}", f"train.steps={a.steps}",
                        f"train.checkpoint_every={a.steps}", *COMMON, *VARIANTS[name]]
                cfg = load_config("dino_cifar10_cpu", over)
                run_dir = Path(a.out_dir) / f"{name}-seed{seed}-{int(time.time())}"
                _, summary = pretrain(cfg, run_dir, datasets=(unlabeled, None))
                encoder, _ = load_encoder(run_dir)
                logs, _ = rundir.read_jsonl(run_dir / "metrics.jsonl")
                last = [r for r in logs if r["kind"] == "eval"][-1]
                tail = [r for r in logs if r["kind"] == "train"][-50:]
                extra = {"images_per_s": summary.get("images_per_s"),
                         "train_seconds": summary.get("train_seconds"), "run": str(run_dir),
                         "collapsed": summary.get("collapsed"), "z_std": last.get("z_std"),
                         "z_std_healthy": last.get("z_std_healthy"), "z_rank": last.get("z_rank"),
                         **{k: round(sum(r[k] for r in tail) / len(tail), 3)
                            for k in ("target_entropy", "batch_entropy", "loss_patch")
                            if tail and all(k in r for r in tail)}}
            res = dense_probe(encoder, probe_train, probe_test, num_classes=10, seed=seed)
            row = {"variant": name, "seed": seed, "steps": a.steps, **res, **extra,
                   "seconds": round(time.time() - t0, 1), "date": time.strftime("%Y-%m-%d %H:%M")}
            print(json.dumps(row), flush=True)
            Path(a.results).parent.mkdir(parents=True, exist_ok=True)
            with open(a.results, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
