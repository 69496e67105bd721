"""The CIFAR-10 CPU protocol (see BENCHMARKS.md) and the seed claims measured on it.

Protocol: small convnet (width 1, ~0.39M params), 32 px, pretraining on all 50,000 training
images without labels, batch 256, 600 steps (~3 epochs), LARS (lr 1.0 x batch/256, warm-up 5%,
cosine), temperature 0.2, 2 threads. Evaluation on frozen features: 1,000 labeled training images
per class (10,000, chosen by seed) as kNN bank / probe training set; the 10,000 test images.
kNN: cosine, temperature-weighted votes, k=200 and k=20, t=0.1; linear probe: logistic regression
with L2 chosen on a 20% validation split.

    python benchmarks/cifar10_protocol.py --data PATH/cifar10-jpeg.tar.gz --seeds 0 1 \
        [--only random raw simclr crop_only color_only head_linear head_none mocov2 byol ...]

Each method runs its bundled preset <method>_cifar10_cpu (same backbone, data, batch, steps).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from selfsup.config import load_config
from selfsup.evaluate.protocol import evaluate_encoder, evaluate_features, labeled_train_subset, \
    raw_pixel_features
from selfsup.pretrain import build_backbone, load_data, load_encoder, pretrain, probe_encoder
from selfsup.semisupervised import train_semisup

BASE = "simclr_cifar10_cpu"
# pretext tasks whose best features sit before the last stage (RotNet: block 2 of 4): those runs
# are also probed at these stages of the convnet (1-based, of 4)
STAGE_PROBES = {"rotnet": (2, 3), "jigsaw": (3,), "relative_position": (3,),
                "colorization": (3,), "inpainting": (3,), "denoising_ae": (3,), "vae": (3,),
                "synthetic_multitask": (2, 3), "synthetic_multitask_no_da": (2, 3)}
# the ViT of the MAE / I-JEPA / DINO-on-ViT rows
VIT = ["model.backbone=vit_tiny", "model.width=0.5", "model.patch_size=4",
       "model.channels_last=false"]
# the dino_cifar10_cpu preset's views and optimizer up to 2026-12-02 (2 local crops, global crops
# at scale 0.4-1, LARS lr 0.3, weight decay 1e-6): pinned so that the DINO rows measured with
# them stay reproducible whatever the preset says now
DINO_2026_11 = ["method.n_local_crops=2", "method.global_scale_min=0.4", "optim.lr=0.3",
                "optim.weight_decay=1e-6"]
# name -> (preset, overrides): the seed-claim ablations of SimCLR, then one preset per method
VARIANTS = {
    "simclr": (BASE, []),                                 # crop + colour, MLP head
    "crop_only": (BASE, ["augment.color=false"]),
    "color_only": (BASE, ["augment.crop=false"]),
    "head_linear": (BASE, ["method.head=linear"]),
    "head_none": (BASE, ["method.head=none"]),
    **{m: (f"{m}_cifar10_cpu", []) for m in (
        "mocov2", "byol", "simsiam", "barlow_twins", "vicreg", "swav", "deepcluster_v2",
        "supcon")},
    # DINO as its preset was before 2026-11-30 (no head BN, teacher temperature 0.04 -> 0.07):
    # collapses (BENCHMARKS 2.1)
    "dino": ("dino_cifar10_cpu", [*DINO_2026_11, "method.head_bn=false",
                                  "method.teacher_temp=0.07"]),
    # seed claims of issue 3: SimSiam collapses without its stop-gradient; SupCon with the labels
    # of the labeled split (1,000 per class, the probe's) vs cross-entropy on the same labels
    "simsiam_no_sg": ("simsiam_cifar10_cpu", ["method.stop_gradient=false"]),
    "supcon_labeled": ("supcon_cifar10_cpu", ["data.labels_per_class=1000"]),
    # issue 17: SupCon and its matched control on the probe's 10,000 labeled images only:
    # cross-entropy with SupCon's augmentation (two SimCLR views per image), LARS 1.0, batch and
    # steps; only the loss differs (a linear classifier + CE instead of the head + SupCon)
    "supcon_matched": ("supcon_cifar10_cpu", ["data.labels_per_class=1000",
                                              "data.labeled_only=true"]),
    "ce_matched": ("supcon_cifar10_cpu", ["data.labels_per_class=1000", "data.labeled_only=true",
                                          "method.loss=ce"]),
    # pretext and generative tasks (issue 4), each its own preset
    **{m: (f"{m}_cifar10_cpu", []) for m in (
        "rotnet", "jigsaw", "relative_position", "colorization", "inpainting", "denoising_ae",
        "vae", "mae", "igpt")},
    # AugSelf (issue 6) on SimCLR: crop and colour-difference prediction, lambda 1 each (paper)
    "simclr_augself": (BASE, ["method.augself_crop=1.0", "method.augself_color=1.0"]),
    # DINO with BatchNorm in its head (the official --use_bn_in_head) and the teacher
    # temperature held at 0.04: the small-scale setting found by benchmarks/dino_diagnosis.py
    # (without it the teacher's image-to-image logit spread is < 1 temperature unit at init and
    # the targets turn uniform within 30 steps)
    "dino_head_bn": ("dino_cifar10_cpu", DINO_2026_11),   # head_bn=true, teacher_temp=0.04
    # issue 17's matched control for "DINO >= BYOL": DINO (head BN, teacher temperature 0.04)
    # with BYOL's views and optimizer - two views cropped at scale 0.2-1 (no local crops; the
    # crops of DINO_2026_11 start at 0.4), LARS lr 1.0, weight decay 1e-5, warm-up 5%, base
    # momentum 0.99 - so that only the loss and the heads differ from the byol row. The preset
    # since 2026-12-02; spelled out so the rows stay reproducible if the preset moves again
    "dino_matched": ("dino_cifar10_cpu", ["method.n_local_crops=0", "method.global_scale_min=0.2",
                                          "optim.lr=1.0", "optim.weight_decay=1e-5"]),
    # DINO with the official ResNet-50 recipe (facebookresearch/dino README): SGD lr 0.03,
    # wd 1e-4, teacher temperature 0.04 throughout, global crops 0.14-1, local 0.05-0.14
    "dino_sgd": ("dino_cifar10_cpu", [*DINO_2026_11, "optim.name=sgd", "optim.lr=0.03",
                                      "optim.weight_decay=1e-4",
                                      "method.teacher_temp=0.04", "method.global_scale_min=0.14",
                                      "method.local_scale_max=0.14"]),
    # issue 22: Ren & Lee's synthetic multitask pretext (depth, normals, contours of rendered
    # scenes), with the feature-level domain loss against CIFAR-10's images and without it
    "synthetic_multitask": ("synthetic_multitask_cifar10_cpu", []),
    "synthetic_multitask_no_da": ("synthetic_multitask_cifar10_cpu", ["method.da_weight=0"]),
    # issue 22: I-JEPA beside MAE and DINO on the same ViT-Tiny/4 (width 0.5, 12 blocks) and
    # budget; I-JEPA's ViT has no class token (its features: the mean patch token)
    "ijepa": ("ijepa_cifar10_cpu", []),
    # DINO on that ViT: the official ViT recipe's optimizer (AdamW, lr 5e-4 x batch/256, wd 0.04,
    # gradient clipping 3.0, warm-up 10% of the run) with the small-scale head setting of the
    # convnet preset (BatchNorm in the head, teacher temperature 0.04); local crops 12 px
    "dino_vit": ("dino_cifar10_cpu", [*DINO_2026_11, *VIT, "optim.name=adamw", "optim.lr=5e-4",
                                      "optim.weight_decay=0.04", "optim.grad_clip=3.0",
                                      "optim.warmup=0.1"]),
    # issue 21: the convnet learns a frozen teacher's embeddings (--teacher RUN: e.g. a SimCLR run
    # of 4x the steps) with SimCLR's augmentation, optimizer, batch and steps
    "distillation": (BASE, ["method.name=distillation", "method.proj_hidden_dim=1024"]),
}


def protocol_overrides(data: str, seed: int, steps: int, extra=()) -> list[str]:
    return [f"data.path={data}", f"train.seed={seed}", f"train.steps={steps}",
            "eval.labels_per_class=1000", "eval.monitor=false", "train.progress=false",
            f"train.checkpoint_every={steps}", *extra]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--only", nargs="+", default=None)
    ap.add_argument("--finetune-steps", type=int, default=300,
                    help="mae: fine-tune its encoder (and a from-scratch ViT) on 1,000 labels per "
                    "class for this many steps (0 = skip)")
    ap.add_argument("--teacher", default=None, help="the distillation variant's teacher run")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides for every variant (e.g. model.depth=6 train.batch_size=128)")
    ap.add_argument("--out-dir", default="runs/cifar10_protocol")
    ap.add_argument("--results", default="benchmarks/results/cifar10_protocol.jsonl")
    a = ap.parse_args()
    names = a.only or ["random", "raw", "ce_labeled", *VARIANTS]
    torch.set_num_threads(2)
    res_path = Path(a.results)
    res_path.parent.mkdir(parents=True, exist_ok=True)
    for seed in a.seeds:
        base = load_config(BASE, protocol_overrides(a.data, seed, a.steps))
        train_ds, test_ds = load_data(base, "train", False), load_data(base, "test", False)
        probe = labeled_train_subset(train_ds, labels_per_class=1000, seed=seed)
        for name in names:
            t0 = time.time()
            if name in ("random", "random_vit", "random_vit_mean"):
                torch.manual_seed(seed)
                vit = {"random_vit": VIT, "random_vit_mean": [*VIT, "model.pool=mean"]}
                cfg = load_config(BASE, protocol_overrides(a.data, seed, a.steps)
                                  + vit.get(name, []) + a.set)
                ev = evaluate_encoder(build_backbone(cfg), probe, test_ds, seed=seed)
            elif name == "ce_labeled":  # cross-entropy on the probe's 10,000 labels, same budget
                over = [f"data.path={a.data}", f"train.seed={seed}", f"train.steps={a.steps}",
                        "method.name=supervised", "method.uratio=0", "method.ema_decay=0",
                        "data.labels_per_class=1000", "data.val_per_class=0", "data.test_split=",
                        "train.batch_size=256", "optim.name=sgd", "optim.lr=0.1",
                        "optim.nesterov=true", "optim.weight_decay=5e-4", "optim.schedule=cosine",
                        "optim.warmup=0.05", "optim.scale_lr=false", "train.progress=false",
                        f"train.eval_every={a.steps}", f"train.checkpoint_every={a.steps}"]
                run_dir = Path(a.out_dir) / f"{name}-seed{seed}-{int(time.time())}"
                _, fs = train_semisup(load_config("fixmatch_cifar10_cpu", over), run_dir)
                encoder, _ = load_encoder(run_dir)
                ev = {**evaluate_encoder(encoder, probe, test_ds, seed=seed),
                      "images_per_s": fs["images_per_s"], "train_seconds": fs["train_seconds"]}
            elif name == "raw":
                ev = evaluate_features(raw_pixel_features(probe), probe.labels,
                                       raw_pixel_features(test_ds), test_ds.labels, 10, seed=seed)
            else:
                preset, extra = VARIANTS[name]
                if name == "distillation":
                    if not a.teacher:
                        raise SystemExit("the distillation variant needs --teacher RUN")
                    extra = extra + [f"method.teacher={a.teacher}"]
                cfg = load_config(preset, protocol_overrides(a.data, seed, a.steps) + extra + a.set)
                run_dir = Path(a.out_dir) / f"{name}-seed{seed}-{int(time.time())}"
                _, summary = pretrain(cfg, run_dir)
                rows_ = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
                last = [r for r in rows_ if r["kind"] == "eval"][-1]   # output embeddings at the end
                # periodic work a method logs (DeepCluster-v2: clusterings so far, the batch's
                # share of images with a pseudo-class, clusters in use)
                diag = {k: v for k, v in [r for r in rows_ if r["kind"] == "train"][-1].items()
                        if k in ("clusterings", "assigned", "clusters_used")}
                ev = {**summary["eval"], **diag, "images_per_s": summary["images_per_s"],
                      "train_seconds": summary["train_seconds"], "z_std": last.get("z_std"),
                      "z_std_healthy": last.get("z_std_healthy"), "z_rank": last.get("z_rank"),
                      "collapsed": summary["collapsed"]}
            rows = [{"variant": name, "seed": seed, "steps": a.steps, **ev,
                     **({"overrides": a.set} if a.set else {}),
                     "seconds": time.time() - t0, "date": time.strftime("%Y-%m-%d %H:%M"),
                     **({"teacher": a.teacher} if name == "distillation" else {})}]
            for stage in STAGE_PROBES.get(name, ()):  # the same run, read at an earlier stage
                encoder, _ = load_encoder(run_dir)
                sev = evaluate_encoder(probe_encoder(encoder, stage), probe, test_ds, seed=seed)
                rows.append({"variant": f"{name}_stage{stage}", "seed": seed, "steps": a.steps,
                             **sev, "date": time.strftime("%Y-%m-%d %H:%M")})
            if name == "mae" and a.finetune_steps:  # MAE is judged by fine-tuning (and a
                # from-scratch ViT with the same labels and steps as its baseline)
                for tag, init in (("mae_finetune", run_dir), ("vit_scratch_finetune", None)):
                    over = [f"data.path={a.data}", f"train.seed={seed}",
                            f"train.steps={a.finetune_steps}", "method.name=supervised", "model.backbone=vit_tiny", "model.width=0.5",
                            "model.channels_last=false", "data.labels_per_class=1000",
                            "data.val_per_class=50", "optim.name=adamw", "optim.lr=1e-3",
                            "optim.weight_decay=0.05", "optim.schedule=cosine", "optim.warmup=0.1",
                            "train.batch_size=128", "train.progress=false",
                            f"train.eval_every={max(1, a.finetune_steps // 5)}"]
                    t1 = time.time()
                    _, fs = train_semisup(load_config("fixmatch_cifar10_cpu", over),
                                          Path(a.out_dir) / f"{tag}-seed{seed}-{int(time.time())}",
                                          init=init)
                    rows.append({"variant": tag, "seed": seed, "steps": a.finetune_steps,
                                 "finetune_acc": fs["test_acc_final"],
                                 "finetune_acc_at_best_val": fs.get("test_acc_at_best_val"),
                                 "seconds": time.time() - t1,
                                 "date": time.strftime("%Y-%m-%d %H:%M")})
            for row in rows:
                print(json.dumps(row), flush=True)
                with open(res_path, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
