"""Generative semi-supervised segmentation vs the labels-only segmenter, in and out of domain
(BENCHMARKS.md section 8.3, issue 22).

Task (``selfsup.data.scenes``): rendered 32 px scenes, every pixel ground / wall / sphere / box.
Both rows get the same ``--labels`` labeled masks (rendered scenes, seeded by the run's seed), the
same encoder + generator + label head, flips, AdamW and steps (preset
``semantic_vae_scenes_cpu``); the generative row (``semantic_vae``) also models the 10,000
unlabeled training scenes and is read through test-time inversion, the control
(``method.generative=false``) is trained on the labeled masks alone and read from its encoder.
Scored by mIoU over the four classes on the first ``--test-images`` of the in-domain ``test``
split and of the ``shifted`` split (the same kind of scenes in another appearance). The
generative row is scored with 0 inversion steps (encoder only) and with the official 100.

    python benchmarks/semantic_seg.py --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from selfsup.augment.views import normalize, to_unit_float
from selfsup.config import load_config
from selfsup.data.scenes import load_scenes, scene_split
from selfsup.evaluate.segmentation import confusion_matrix, iou_scores
from selfsup.pretrain import build_method, pretrain
from selfsup.report.pictures import grid_png
from selfsup.train.checkpoint import load_resumable

VARIANTS = {"semantic_vae": [], "labels_only": ["method.generative=false"]}


def trained_method(cfg, run_dir: Path):
    """The method of a finished run, rebuilt from its config and last checkpoint."""
    method = build_method(cfg)
    ck, _ = load_resumable(run_dir / "checkpoints")
    if ck is None or ck.get("step") != cfg.train.steps:
        raise SystemExit(f"{run_dir}: no finished checkpoint (step {ck and ck.get('step')})")
    method.load_state_dict(ck["model"])
    return method.eval()


def score(method, split: str, n: int, steps: int, chunk: int = 250):
    """(scores dict, first 8 predictions) of ``method`` on the first ``n`` images of ``split``."""
    images, masks = scene_split(split, method.size, n)
    preds = []
    for s in range(0, len(images), chunk):
        x = normalize(to_unit_float(torch.from_numpy(images[s:s + chunk].copy())
                                    .permute(0, 3, 1, 2), method.size))
        preds.append(method.segment(x, steps))
    pred = torch.cat(preds)
    res = iou_scores(confusion_matrix(pred, torch.from_numpy(masks.copy()), 4))
    return res, pred[:8]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--labels", type=int, default=20, help="labeled masks (default 20)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: preset)")
    ap.add_argument("--test-images", type=int, default=500)
    ap.add_argument("--invert-steps", type=int, default=100)
    ap.add_argument("--only", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--set", nargs="*", default=[], help="extra config overrides for every row")
    ap.add_argument("--out-dir", default="runs/semantic_seg")
    ap.add_argument("--results", default="benchmarks/results/semantic_seg.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(2)
    from selfsup.data.render import SEG_CLASSES
    from selfsup.methods.semantic_vae import colour_labels

    for seed in a.seeds:
        for name in a.only:
            t0 = time.time()
            over = [f"train.seed={seed}", f"method.label_seed={seed}",
                    f"method.label_count={a.labels}", "train.progress=false", *VARIANTS[name],
                    *a.set]
            if a.steps:
                over.append(f"train.steps={a.steps}")
            cfg = load_config("semantic_vae_scenes_cpu", over)
            run_dir = Path(a.out_dir) / f"{name}-seed{seed}-{int(time.time())}"
            train_ds = load_scenes(split="train", image_size=cfg.data.image_size)
            _, summary = pretrain(cfg, run_dir, datasets=(train_ds, None))
            train_s = time.time() - t0
            method = trained_method(cfg, run_dir)
            torch.manual_seed(seed)
            steps_list = [0, a.invert_steps] if method.cfg.generative else [0]
            for split in ("test", "shifted"):
                pics = {}
                images, masks = scene_split(split, method.size, 8)
                pics["input"] = torch.from_numpy(images.copy()).permute(0, 3, 1, 2).float() / 255
                pics["truth"] = colour_labels(torch.from_numpy(masks.copy()))
                for steps in steps_list:
                    t1 = time.time()
                    res, pred = score(method, split, a.test_images, steps)
                    pics[f"predicted_{steps}_steps"] = colour_labels(pred)
                    row = {"variant": name, "seed": seed, "labels": a.labels,
                           "train_steps": cfg.train.steps, "beta": method.cfg.beta,
                           "pixel_sigma": method.cfg.pixel_sigma,
                           "set": a.set, "split": split,
                           "invert_steps": steps, "test_images": a.test_images,
                           "miou": round(100 * res["miou"], 2),
                           "iou": {c: round(100 * v, 2) for c, v in zip(SEG_CLASSES, res["iou"])},
                           "pixel_accuracy": round(100 * res["pixel_accuracy"], 2),
                           "train_seconds": round(train_s, 1),
                           "eval_seconds": round(time.time() - t1, 1),
                           "images_per_s": summary.get("images_per_s"), "run": str(run_dir),
                           "date": time.strftime("%Y-%m-%d %H:%M")}
                    print(json.dumps(row), flush=True)
                    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
                    with open(a.results, "a") as f:
                        f.write(json.dumps(row) + "\n")
                grid_png(pics, run_dir / f"segmentation_{split}.png")


if __name__ == "__main__":
    main()
