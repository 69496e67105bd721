"""``selfsup fit``: a folder of labeled photos (+ optional unlabeled ones) -> the best classifier
this toolkit can make of them within a budget, with every choice printed and saved.

Pipeline: look at the data (image sizes, counts per class) -> choose a recipe (input size,
backbone, steps) from the data, the device and the time budget -> self-supervised pretraining
(SimCLR) on every image, labeled or not -> semi-supervised training (FixMatch started from the
pretrained encoder; labels-only fine-tuning when there are no unlabeled images) -> evaluation on a
held-out validation split (and a test set when given) -> ``OUT/`` with ``choices.json``,
``pretrain/``, ``classifier/`` (``model.safetensors`` for predict/export) and ``summary.json``.
Any choice can be overridden (``--image-size``, ``--backbone``, ``--ssl-steps``, ``--steps``,
``--ssl-method``, ``--semisup-method``, or ``key=value`` for both stages).
"""

from __future__ import annotations

import io
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig, apply_overrides, load_config
from .data import ImageDataset, load_dataset
from .data.sources import DataError, open_source
from .data.splits import stratified_split
from .pretrain import RunDirError, pretrain
from .semisupervised import SemisupData, train_semisup
from .train.loop import resolve_device


def parse_budget(text: str | None) -> float | None:
    """'90s', '30m', '2h', '1h30m' or a number of minutes -> seconds."""
    if text is None:
        return None
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t) * 60
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", t)
    if not parts or "".join(a + b for a, b in parts) != t.replace(" ", ""):
        raise ValueError(f"--budget: cannot read '{text}'; write e.g. 90s, 30m, 2h or 1h30m")
    return sum(float(v) * {"h": 3600, "m": 60, "s": 1}[u] for v, u in parts)


def typical_side(path: str | Path, n: int = 64) -> int:
    """Median shorter side (pixels) of the first ``n`` readable images, from their headers."""
    from PIL import Image

    sides = []
    for _, data in open_source(path).iter_bytes():
        if isinstance(data, Exception):
            continue
        try:
            with Image.open(io.BytesIO(data)) as im:
                sides.append(min(im.size))
        except Exception:
            continue
        if len(sides) >= n:
            break
    if not sides:
        raise DataError(f"{path}: no readable images")
    return int(np.median(sides))


def concat_unlabeled(labeled: ImageDataset, unlabeled: ImageDataset | None) -> ImageDataset:
    """The labeled images followed by the unlabeled ones (their labels, if any, are ignored)."""
    if unlabeled is None or len(unlabeled) == 0:
        return labeled
    return ImageDataset(np.concatenate([np.asarray(labeled.images), np.asarray(unlabeled.images)]),
                        np.concatenate([labeled.labels, np.full(len(unlabeled), -1, np.int64)]),
                        labeled.classes, labeled.names + [f"unlabeled/{n}" for n in unlabeled.names],
                        f"{labeled.source} + {unlabeled.source}",
                        labeled.skipped + unlabeled.skipped)


@dataclass
class Choices:
    device: str
    image_size: int
    backbone: str
    width: float
    ssl_method: str
    ssl_steps: int
    ssl_batch: int
    semisup_method: str
    steps: int
    batch: int
    uratio: float
    val_fraction: float
    reasons: dict = field(default_factory=dict)


def choose(n_labeled: int, n_unlabeled: int, side: int, device: str, budget_s: float | None,
           step_seconds=None) -> Choices:
    """The recipe. ``step_seconds(choices)`` -> (seconds per SSL step, per semi-supervised step)
    measures the two steps on this machine when a budget is given."""
    r: dict[str, str] = {}
    gpu = device.startswith("cuda")
    if side <= 48:
        size = 32
        r["image_size"] = f"images are small (median shorter side {side} px): train at 32 px"
    elif gpu:
        size = 96
        r["image_size"] = f"median shorter side {side} px, GPU: 96 px (STL-10 scale)"
    else:
        size = 64
        r["image_size"] = f"median shorter side {side} px, CPU: 64 px keeps training affordable"
    if gpu:
        backbone, width = "resnet18", 1.0
        r["backbone"] = "GPU: ResNet-18"
    else:
        backbone, width = "convnet", 1.0
        r["backbone"] = ("CPU: the small convnet (0.39M parameters; ResNet-18 trains ~20x slower "
                         "here, BENCHMARKS.md section 1)")
    total = n_labeled + n_unlabeled
    ssl_batch = min(256, max(16, total // 4))
    batch = min(64, max(4, n_labeled // 4))
    semisup = "fixmatch" if n_unlabeled >= n_labeled else "supervised"
    r["ssl_method"] = ("SimCLR: the best self-supervised method of the CPU protocol "
                       "(BENCHMARKS.md section 3)")
    r["semisup_method"] = (f"FixMatch from the SimCLR encoder: {n_unlabeled} unlabeled images to "
                           f"learn from" if semisup == "fixmatch" else
                           "fine-tuning the SimCLR encoder on the labels (no unlabeled images)")
    uratio = 4.0 if semisup == "fixmatch" else 0.0
    c = Choices(device, size, backbone, width, "simclr", 0, ssl_batch, semisup, 0, batch, uratio,
                0.2, r)
    if budget_s is None or step_seconds is None:
        c.ssl_steps = int(np.clip(30 * total / ssl_batch, 100, 5000))
        c.steps = int(np.clip(50 * n_labeled / batch, 100, 3000))
        r["steps"] = (f"no budget: ~30 epochs of pretraining ({c.ssl_steps} steps) and "
                      f"{c.steps} semi-supervised steps")
    else:
        s_ssl, s_semi = step_seconds(c)
        usable = 0.85 * budget_s  # evaluation, checkpoints and the report take the rest
        c.ssl_steps = max(10, int(0.5 * usable / s_ssl))
        c.steps = max(10, int(0.5 * usable / s_semi))
        r["steps"] = (f"budget {budget_s:.0f} s: measured {s_ssl:.3f} s per pretraining step and "
                      f"{s_semi:.3f} s per {semisup} step on this machine; half of 85% of the "
                      f"budget to each")
    return c


def _time_steps(cfg: RunConfig, x: torch.Tensor, labels: torch.Tensor, n: int = 3) -> float:
    """Seconds per training step of cfg's method on the batch x (after one warm-up step)."""
    from .methods import BatchInfo
    from .pretrain import build_method

    torch.manual_seed(0)
    m = build_method(cfg)
    semi = getattr(m, "semi_supervised", False)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-6)
    info = BatchInfo(torch.arange(len(x)), labels)
    times = []
    for i in range(n + 1):
        t0 = time.perf_counter()
        views = m.views(x, info) if semi else m.views(x)
        m.training_step(views, 0.5, info).loss.backward()
        opt.step()
        opt.zero_grad()
        if i:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def fit(labeled: str | Path, out: str | Path, unlabeled: str | Path | None = None,
        test: str | Path | None = None, budget: str | None = None, overrides: list[str] = (),
        forced: dict | None = None, seed: int = 0, progress: bool = True) -> dict:
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "choices.json").exists():
        raise RunDirError(f"{out} is not empty and is not a selfsup fit directory; choose another "
                          f"--out (nothing in it was changed)")
    out.mkdir(parents=True, exist_ok=True)
    budget_s = parse_budget(budget)
    device = str(resolve_device("auto"))
    forced = {k: v for k, v in (forced or {}).items() if v is not None}
    side = typical_side(labeled)
    size = int(forced.get("image_size", 0)) or None

    def load(path, split=None):
        return load_dataset("folder", path=str(path), split=split,
                            image_size=size or (32 if side <= 48 else 64), progress=progress)

    # the recipe depends on the counts: decode at the chosen size once we know it
    lab_probe = open_source(labeled)
    n_lab_files = sum(1 for _ in getattr(lab_probe, "items", []))
    n_unl_files = sum(1 for _ in getattr(open_source(unlabeled), "items", [])) if unlabeled else 0

    def step_seconds(c: Choices):
        ssl_cfg, semi_cfg = _stage_configs(c, overrides, seed)
        x = torch.randint(0, 256, (c.ssl_batch, 3, c.image_size, c.image_size), dtype=torch.uint8)
        s1 = _time_steps(ssl_cfg, x, torch.full((len(x),), -1))
        nb = c.batch + int(c.uratio * c.batch)
        x = torch.randint(0, 256, (nb, 3, c.image_size, c.image_size), dtype=torch.uint8)
        y = torch.cat([torch.zeros(c.batch, dtype=torch.long), torch.full((nb - c.batch,), -1)])
        return s1, _time_steps(semi_cfg, x, y)

    c = choose(n_lab_files, n_unl_files, side, device, budget_s, step_seconds)
    for k, v in forced.items():
        setattr(c, k, type(getattr(c, k))(v))
        c.reasons[k] = f"set on the command line: {v}"
    (out / "choices.json").write_text(json.dumps(c.__dict__, indent=1))
    (out / "fit.json").write_text(json.dumps({"labeled": str(labeled), "unlabeled": str(unlabeled)
                                              if unlabeled else None,
                                              "test": str(test) if test else None,
                                              "budget": budget, "seed": seed,
                                              "overrides": list(overrides)}, indent=1))
    print("selfsup fit: choices (saved in choices.json):", file=sys.stderr)
    for k, v in c.__dict__.items():
        if k != "reasons":
            why = c.reasons.get(k, "")
            print(f"  {k} = {v}" + (f"   ({why})" if why else ""), file=sys.stderr)

    size = c.image_size
    lab = load(labeled)
    if not lab.has_labels:
        raise DataError(f"{labeled}: no labels found: put the labeled images in one sub-folder "
                        f"per class, or give a CSV of path,label")
    unl = load(unlabeled) if unlabeled else None
    test_ds = load(test).aligned_to(lab.classes) if test else None
    train_idx, val_idx = stratified_split(lab.labels, c.val_fraction, seed)
    if len(val_idx) == 0:
        raise DataError(f"{labeled}: too few labeled images to hold any out for validation; "
                        f"label at least 2 images per class")
    ssl_cfg, semi_cfg = _stage_configs(c, overrides, seed)
    # 1. self-supervised pretraining on every image but the validation ones
    ssl_train = concat_unlabeled(lab.subset(train_idx), unl)
    ssl_train = ImageDataset(ssl_train.images, np.where(np.arange(len(ssl_train)) < len(train_idx),
                                                        ssl_train.labels, -1),
                             ssl_train.classes, ssl_train.names, ssl_train.source, ssl_train.skipped)
    ssl_dir, ssl_summary = pretrain(ssl_cfg, out / "pretrain",
                                    datasets=(ssl_train, lab.subset(val_idx)))
    # 2. semi-supervised training from the pretrained encoder
    train_view = concat_unlabeled(lab.subset(train_idx), unl)
    record = {"labeled_names": [lab.names[i] for i in train_idx],
              "val_names": [lab.names[i] for i in val_idx], "unlabeled": len(unl) if unl else 0,
              "seed": seed}
    data = SemisupData(full=lab, train=train_view, val=lab.subset(val_idx), test=test_ds,
                       record=record)
    clf_dir, clf_summary = train_semisup(semi_cfg, out / "classifier", init=ssl_dir, data=data)
    summary = {"labeled": len(lab), "classes": lab.classes, "validation": len(val_idx),
               "unlabeled": len(unl) if unl else 0, "test": len(test_ds) if test_ds else 0,
               "choices": {k: v for k, v in c.__dict__.items() if k != "reasons"},
               "pretrain": {k: ssl_summary.get(k) for k in ("steps", "train_seconds",
                                                            "images_per_s", "collapsed")},
               "pretrain_eval": ssl_summary.get("eval"),
               "classifier": {k: clf_summary.get(k) for k in (
                   "steps", "train_seconds", "val_acc_best", "val_acc_final", "test_acc_final",
                   "test_acc_at_best_val", "test_acc_median_last")},
               "model": str(clf_dir / "model.safetensors"), "budget_seconds": budget_s}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    from .report.html import build_report

    summary["report"] = str(build_report(out, seed=seed))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"selfsup fit: report written to {summary['report']}", file=sys.stderr)
    return summary


def _stage_configs(c: Choices, overrides, seed: int) -> tuple[RunConfig, RunConfig]:
    common = [f"model.backbone={c.backbone}", f"model.width={c.width}",
              f"data.image_size={c.image_size}", f"augment.size={c.image_size}",
              f"train.seed={seed}", f"train.device={c.device}"]
    ssl = load_config(None, [f"method.name={c.ssl_method}", *common,
                             f"train.steps={c.ssl_steps}", f"train.batch_size={c.ssl_batch}",
                             f"train.checkpoint_every={max(1, c.ssl_steps // 4)}",
                             "optim.name=lars", "optim.lr=1.0", "optim.weight_decay=1e-5",
                             "method.temperature=0.2", "augment.scale_min=0.2",
                             "eval.knn_k=20", "eval.monitor=true", "eval.monitor_size=1000",
                             f"train.eval_every={max(1, c.ssl_steps // 5)}"])
    semi = load_config("fixmatch_cifar10_cpu",
                       [f"method.name={c.semisup_method}", *common, "data.dataset=folder",
                        f"train.steps={c.steps}", f"train.batch_size={c.batch}",
                        f"train.checkpoint_every={max(1, c.steps // 4)}",
                        f"train.eval_every={max(1, c.steps // 10)}", "data.test_split=",
                        "data.split=", "data.labels_per_class=", "data.val_per_class=0",
                        "train.threads=0"]
                       + ([f"method.uratio={c.uratio}"] if c.semisup_method == "fixmatch" else []))
    if overrides:
        ssl, semi = apply_overrides(ssl, list(overrides)), apply_overrides(semi, list(overrides))
    return ssl, semi
