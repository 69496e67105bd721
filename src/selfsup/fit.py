"""``selfsup fit``: a folder of labeled photos (+ optional unlabeled ones) -> the best classifier
this toolkit can make of them within a budget, with every choice printed and saved.

Pipeline: look at the data (image sizes, counts per class) -> choose a recipe (input size,
backbone, steps) from the data, the device and the time budget -> self-supervised pretraining
(SimCLR) on every image, labeled or not -> semi-supervised training (FreeMatch started from the
pretrained encoder) and labels-only fine-tuning beside it, the better on validation kept -> evaluation on a
held-out validation split (and a test set when given) -> ``OUT/`` with ``choices.json``,
``pretrain/``, ``classifier/`` (``model.safetensors`` for predict/export) and ``summary.json``.
Any choice can be overridden (``--image-size``, ``--backbone``, ``--ssl-steps``, ``--steps``,
``--ssl-method``, ``--semisup-method``, or ``key=value`` for both stages).
"""

from __future__ import annotations

import io
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import rundir
from .config import RunConfig, apply_overrides, load_config
from .data import ImageDataset, load_dataset
from .data.sources import DataError, open_source
from .data.splits import stratified_split
from .fitcheck import (MIN_PER_CLASS_FOR_VALIDATION, FitDirError, _clear_fit, fit_record,  # noqa: F401,E501
                       parse_budget, preflight)
from .pretrain import pretrain, run_finished
from .rundir import write_json
from .semisupervised import SemisupData, train_semisup
from .train.loop import autocast_for, cpu_has_fast_bf16, resolve_device


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


def _concat(a: ImageDataset, b: ImageDataset, b_labels: np.ndarray, prefix: str) -> ImageDataset:
    """``a`` followed by ``b`` (with ``b_labels``; ``b``'s names under ``prefix``)."""
    return ImageDataset(np.concatenate([np.asarray(a.images), np.asarray(b.images)]),
                        np.concatenate([a.labels, b_labels]), a.classes,
                        a.names + [f"{prefix}/{n}" for n in b.names], f"{a.source} + {b.source}",
                        a.skipped + b.skipped)


def concat_unlabeled(labeled: ImageDataset, unlabeled: ImageDataset | None) -> ImageDataset:
    """The labeled images followed by the unlabeled ones (their labels, if any, are ignored)."""
    if unlabeled is None or len(unlabeled) == 0:
        return labeled
    return _concat(labeled, unlabeled, np.full(len(unlabeled), -1, np.int64), "unlabeled")


def add_labeled(lab: ImageDataset, extra: ImageDataset) -> ImageDataset:
    """``lab`` followed by the labeled rows of ``extra`` (re-indexed to ``lab``'s classes)."""
    extra = extra.subset(np.flatnonzero(extra.labels >= 0)).aligned_to(lab.classes)
    return _concat(lab, extra, extra.labels, "extra")


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
    precision: str = "auto"    # train.precision of both stages


SSL_SHARE = 0.45          # of the training time under --budget
BUDGET_USE = 0.95         # of --budget planned for training; the rest: evaluation and the report
REPORT_RESERVE_S = 8.0
MIN_STEPS_TO_REPLAN = 50   # stage 1 must run this many steps for its speed to re-plan stage 2


def stage2_steps(seconds: float, s_semi: float, c: "Choices") -> int:
    """Semi-supervised steps that fit ``seconds`` together with the labels-only candidate of
    the same length (whose step costs about 1 / (1 + 2 uratio) of a FixMatch step)."""
    extra = 1.0 / (1.0 + 2.0 * c.uratio) if c.semisup_method != "supervised" else 0.0
    return max(10, int(seconds / (s_semi * (1.0 + extra))))


def replanned_steps(c: "Choices", ssl_steps_run: int, ssl_seconds: float,
                    remaining: float) -> tuple[int, str]:
    """Stage 2's steps for the ``remaining`` seconds, from the step times measured before stage 1
    (``c.reasons["measured_s_per_step"]``) scaled by how much slower stage 1 really ran (data
    path, evaluations included), and the reason in words."""
    measured = c.reasons.get("measured_s_per_step") or {}
    real = ssl_seconds / max(1, ssl_steps_run)
    ratio = real / measured["ssl"] if measured.get("ssl") else 1.0
    if ssl_steps_run < MIN_STEPS_TO_REPLAN:
        # a few steps' time is mostly start-up and evaluation, not the step (a 10-step stage
        # 1 once planned 713 steps where 900 fitted and left a quarter of the budget unused)
        ratio = 1.0
    # a faster stage 1 does not make stage 2 faster than measured: stage 2 also evaluates on
    # validation and test and updates an EMA model (bf16, 2026-11-30: stage 1 ran at 0.74x its
    # measurement, stage 2 at 1.03x; scaled down, 1,108 steps were planned where 810 fitted, and
    # the clock cut the learning-rate schedule at 73%)
    ratio = max(1.0, ratio)
    steps = stage2_steps(max(5.0, remaining), (measured.get("semi") or real) * ratio, c)
    return steps, (f"; stage 1 ran at {real:.3f} s per step ({real / measured['ssl']:.2f}x the "
                   f"measurement, scaled by {ratio:.2f}): {steps} steps for the {remaining:.0f} s "
                   f"left" if measured.get("ssl") else f"; {steps} steps for the "
                   f"{remaining:.0f} s left")


def choose(n_labeled: int, n_unlabeled: int, side: int, device: str, budget_s: float | None,
           step_seconds=None, spent=lambda: 0.0) -> Choices:
    """The recipe. ``step_seconds(choices)`` -> (seconds per SSL step, per semi-supervised step)
    measures the two steps on this machine when a budget is given; ``budget_s`` is the training
    time and ``spent()`` what has been used of it so far (decoding, measuring)."""
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
        r["backbone"] = ("CPU: the small convnet (0.39M parameters; SimCLR on a full-width "
                         "ResNet-18 runs ~18x slower on 2 CPU cores at 32 px, BENCHMARKS.md 1.2)")
    if gpu:
        precision = "auto"
        r["precision"] = "GPU: bfloat16 autocast"
    elif cpu_has_fast_bf16():
        precision = "bf16"
        r["precision"] = ("this CPU multiplies bfloat16 in hardware (AMX / AVX512-BF16): bfloat16 "
                          "autocast, ~1.6x the steps of float32 in the same time on the convnet "
                          "(BENCHMARKS.md sections 1 and 6; train.precision=fp32 to turn it off)")
    else:
        precision = "fp32"
        r["precision"] = "CPU without bfloat16 hardware: float32"
    total = n_labeled + n_unlabeled
    ssl_batch = min(256, max(16, total // 4))
    batch = min(64, max(4, n_labeled // 4))
    semisup = "freematch" if n_unlabeled >= n_labeled else "supervised"
    r["ssl_method"] = ("SimCLR: the best self-supervised method of the CPU protocol "
                       "(BENCHMARKS.md section 3)")
    r["semisup_method"] = (
        f"FreeMatch from the SimCLR encoder ({n_unlabeled} unlabeled images to learn from): on "
        f"the semi-supervised protocol v2 (BENCHMARKS.md section 4.1, 3 seeds) FreeMatch and "
        f"FlexMatch beat FixMatch and labels-only at 250 labels on every seed (FreeMatch +7.2 "
        f"over labels-only on average, FlexMatch +6.3); at 40 labels FreeMatch was ahead of "
        f"FlexMatch on all 3 seeds (+4.0 over labels-only on average, FlexMatch +0.8, FixMatch "
        f"below labels-only); a labels-only candidate is trained beside it and the better one "
        f"on validation is kept" if semisup != "supervised" else
        "fine-tuning the SimCLR encoder on the labels (no unlabeled images)")
    uratio = 4.0 if semisup != "supervised" else 0.0
    c = Choices(device, size, backbone, width, "simclr", 0, ssl_batch, semisup, 0, batch, uratio,
                0.2, r, precision)
    if budget_s is None or step_seconds is None:
        c.ssl_steps = int(np.clip(30 * total / ssl_batch, 100, 5000))
        c.steps = int(np.clip(50 * n_labeled / batch, 100, 3000))
        r["steps"] = (f"no budget: ~30 epochs of pretraining ({c.ssl_steps} steps) and "
                      f"{c.steps} semi-supervised steps")
    else:
        s_ssl, s_semi = step_seconds(c)
        usable = max(10.0, budget_s - spent())   # what is left after measuring and decoding
        r["measured_s_per_step"] = {"ssl": s_ssl, "semi": s_semi}
        c.ssl_steps = max(10, int(SSL_SHARE * usable / s_ssl))
        c.steps = stage2_steps((1 - SSL_SHARE) * usable, s_semi, c)
        r["steps"] = (f"budget: {usable:.0f} s of training left after measuring "
                      f"{s_ssl:.3f} s per pretraining step and {s_semi:.3f} s per {semisup} "
                      f"step on this machine; {100 * SSL_SHARE:.0f}% to pretraining, the rest to "
                      f"{semisup}" + (" and the labels-only candidate (same steps)"
                                      if semisup != "supervised" else "")
                      + "; re-planned from the measured pretraining speed before stage 2")
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
    amp = autocast_for(torch.device("cpu"), cfg.train.precision)   # the step is timed on the CPU
    times = []
    for i in range(n + 1):
        t0 = time.perf_counter()
        views = m.views(x, info) if semi else m.views(x)
        with amp:
            loss = m.training_step(views, 0.5, info).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def fit(labeled: str | Path, out: str | Path, unlabeled: str | Path | None = None,
        test: str | Path | None = None, budget: str | None = None, overrides: list[str] = (),
        forced: dict | None = None, seed: int = 0, progress: bool = True,
        overwrite: bool = False, allow_data_change: bool = False,
        extra_labels: str | Path | None = None) -> dict:
    out = Path(out)
    budget_s = parse_budget(budget)
    forced = {k: v for k, v in (forced or {}).items() if v is not None}
    record = fit_record(labeled, unlabeled, test, budget, seed, overrides, forced, extra_labels)
    counts, resume = preflight(labeled, out, unlabeled, test, overwrite, record, extra_labels)
    if allow_data_change:   # not part of the record: a resume may add it
        overrides = [*overrides, "train.allow_data_change=true"]
    created = not out.exists()
    try:
        return _fit(labeled, out, unlabeled, test, budget_s, overrides, forced, seed, progress,
                    counts, resume, overwrite, record, extra_labels)
    except BaseException:
        # a run that failed before its first checkpoint leaves nothing behind
        if created and rundir.is_run(out) and not any(out.rglob("last.pt")):
            import shutil

            rundir.unlock(out)
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        rundir.unlock(out)


def _fit(labeled, out: Path, unlabeled, test, budget_s, overrides, forced, seed, progress,
         counts: dict[str, int], resume: bool, overwrite: bool, record: dict,
         extra_labels=None) -> dict:
    t_start = time.time()
    device = str(resolve_device("auto"))
    side = typical_side(labeled)
    size = int(forced.get("image_size", 0)) or None

    def load(path, split=None):
        return load_dataset("folder", path=str(path), split=split,
                            image_size=size or (32 if side <= 48 else 64), progress=progress)

    n_min = min(counts.values())
    use_val = n_min >= MIN_PER_CLASS_FOR_VALIDATION
    n_lab_files = sum(counts.values())
    n_train_lab = n_lab_files - (max(len(counts), int(round(0.2 * n_lab_files))) if use_val else 0)
    n_unl_files = sum(1 for _ in getattr(open_source(unlabeled), "items", [])) if unlabeled else 0

    def step_seconds(c: Choices):
        # measured before the step counts are chosen: any valid count builds the same step
        ssl_cfg, semi_cfg = _stage_configs(replace(c, ssl_steps=max(1, c.ssl_steps),
                                                   steps=max(1, c.steps)), overrides, seed)
        x = torch.randint(0, 256, (c.ssl_batch, 3, c.image_size, c.image_size), dtype=torch.uint8)
        s1 = _time_steps(ssl_cfg, x, torch.full((len(x),), -1))
        nb = c.batch + int(c.uratio * c.batch)
        x = torch.randint(0, 256, (nb, 3, c.image_size, c.image_size), dtype=torch.uint8)
        y = torch.cat([torch.zeros(c.batch, dtype=torch.long), torch.full((nb - c.batch,), -1)])
        return s1, _time_steps(semi_cfg, x, y)

    if budget_s is not None and progress:
        print("selfsup fit: measuring a training step of each stage on this machine ...",
              file=sys.stderr)
    planned = BUDGET_USE * budget_s - REPORT_RESERVE_S if budget_s else None
    if resume and (out / "choices.json").exists():   # the same recipe as the killed run
        saved = rundir.read_json(out / "choices.json")
        c = Choices(**{k: saved[k] for k in Choices.__dataclass_fields__ if k in saved})
    else:
        c = choose(n_train_lab, n_unl_files, side, device, planned, step_seconds,
                   spent=lambda: time.time() - t_start)
    c.val_fraction = 0.2 if use_val else 0.0
    c.reasons["val_fraction"] = (
        "20% of each class held out to choose between models and calibrate predict's flag"
        if use_val else
        f"no validation split: the smallest class has {n_min} labeled images (fewer than "
        f"{MIN_PER_CLASS_FOR_VALIDATION}); every label is used for training and the labels-only "
        f"vs unlabeled-photos comparison cannot be made")
    for k, v in forced.items():
        setattr(c, k, type(getattr(c, k))(v))
        c.reasons[k] = f"set on the command line: {v}"
    for o in overrides:   # the overrides win over the recipe in both stages: say so
        if o.startswith("train.precision="):
            c.precision = o.split("=", 1)[1]
            c.reasons["precision"] = f"set on the command line: {o}"
    # nothing was written before this point: every refusal has happened
    try:
        rundir.create(out, "fit")           # the marker first; then one process at a time
        rundir.lock(out)
    except rundir.RunFileError as e:
        raise FitDirError(str(e).replace("output folder", "--out")) from None
    rundir.clean_temporaries(out)
    if overwrite:
        print(f"selfsup fit: --overwrite: replacing the earlier fit in {out}", file=sys.stderr)
        _clear_fit(out)
    write_json(out / "fit.json", record)
    write_json(out / "choices.json", c.__dict__)
    print("selfsup fit: choices (saved in choices.json):", file=sys.stderr)
    for k, v in c.__dict__.items():
        if k != "reasons":
            why = c.reasons.get(k, "")
            print(f"  {k} = {v}" + (f"   ({why})" if why else ""), file=sys.stderr)

    size = c.image_size
    lab = load(labeled)
    if extra_labels:   # the rows of a `selfsup select` CSV the expert filled in
        lab = add_labeled(lab, load(extra_labels))
    unl = load(unlabeled) if unlabeled else None
    test_ds = load(test).aligned_to(lab.classes) if test else None
    if use_val:
        train_idx, val_idx = stratified_split(lab.labels, c.val_fraction, seed)
    else:
        train_idx, val_idx = np.flatnonzero(lab.labels >= 0), np.zeros(0, np.int64)
    c.batch = min(c.batch, max(2, len(train_idx)))
    ssl_total = len(train_idx) + (len(unl) if unl else 0)
    c.ssl_batch = max(2, min(c.ssl_batch, ssl_total))
    ssl_cfg, semi_cfg = _stage_configs(c, overrides, seed)
    usable = planned
    if usable:   # each stage ends by the clock too: the budget holds even when steps run slow
        left = usable - (time.time() - t_start)
        ssl_cfg = apply_overrides(ssl_cfg, [f"train.time_limit={max(5.0, SSL_SHARE * left):.1f}"])
    # 1. self-supervised pretraining on every image but the validation ones
    ssl_train = concat_unlabeled(lab.subset(train_idx), unl)
    ssl_train = ImageDataset(ssl_train.images, np.where(np.arange(len(ssl_train)) < len(train_idx),
                                                        ssl_train.labels, -1),
                             ssl_train.classes, ssl_train.names, ssl_train.source, ssl_train.skipped)
    if progress:
        print(f"selfsup fit: 1/3 self-supervised pretraining ({c.ssl_method}, {c.ssl_steps} steps)",
              file=sys.stderr)
    ssl_dir = out / "pretrain"
    if run_finished(ssl_dir) and (ssl_dir / "encoder.safetensors").exists():
        ssl_summary = rundir.read_json(ssl_dir / "summary.json")   # resumed: done
    else:
        ssl_dir, ssl_summary = pretrain(ssl_cfg, ssl_dir, datasets=(
            ssl_train, lab.subset(val_idx) if use_val else None))
    # 2. semi-supervised training from the pretrained encoder, and labels-only from the same
    #    encoder with the same steps, augmentation, optimizer and EMA; the better on validation
    #    is kept (fit is never knowingly worse than labels alone)
    train_view = concat_unlabeled(lab.subset(train_idx), unl)
    split_record = {"labeled_names": [lab.names[i] for i in train_idx],
                    "val_names": [lab.names[i] for i in val_idx],
                    "unlabeled": len(unl) if unl else 0, "seed": seed}
    val_ds = lab.subset(val_idx) if use_val else None
    data = SemisupData(full=lab, train=train_view, val=val_ds, test=test_ds, record=split_record)
    remaining = usable - (time.time() - t_start) if usable else None
    if (remaining is not None and "steps" not in forced and ssl_summary.get("steps")
            and ssl_summary.get("train_seconds")
            and not (out / "candidates").exists()):
        # re-plan stage 2 from how fast stage 1 really ran (data path, evaluations included)
        c.steps, why = replanned_steps(c, ssl_summary["steps"], ssl_summary["train_seconds"],
                                       remaining)
        c.reasons["steps"] += why
        write_json(out / "choices.json", c.__dict__)
        ssl_cfg, semi_cfg = _stage_configs(c, overrides, seed)
    candidates = {c.semisup_method: semi_cfg}
    if c.semisup_method != "supervised":
        candidates["labels_only"] = apply_overrides(semi_cfg, ["method.name=supervised"])
    runs = {}
    for i, (name, cfg) in enumerate(candidates.items()):
        if remaining is not None:   # the labels-only step costs ~1/(1 + 2 uratio) of FixMatch's
            share = 1.0 if len(candidates) == 1 else (
                (1 + 2 * c.uratio) / (2 + 2 * c.uratio) if i == 0 else 1.0)
            left = usable - (time.time() - t_start)
            cfg = apply_overrides(cfg, [f"train.time_limit={max(5.0, share * left):.1f}"])
        if progress:
            print(f"selfsup fit: {2 + i}/3 {name} from the pretrained encoder "
                  f"({cfg.train.steps} steps)", file=sys.stderr)
        d = out / "candidates" / name
        if run_finished(d) and (d / "model.safetensors").exists():
            summ = rundir.read_json(d / "summary.json")             # resumed: done
        else:
            d, summ = train_semisup(cfg, d, init=ssl_dir, data=data)
        runs[name] = (d, summ)
    comparison = _compare(runs, c.semisup_method, val_ds, device)
    kept_dir, clf_summary = runs[comparison["kept"]]
    import shutil

    clf_dir = out / "classifier"
    with rundir.atomic_path(clf_dir) as tmp:   # whole or absent, whenever the run is killed
        shutil.copytree(kept_dir, tmp, ignore=shutil.ignore_patterns(rundir.LOCK))
    from .inference import calibrate_flag

    calib = calibrate_flag(clf_dir, val_ds, device)
    write_json(clf_dir / "calibration.json", calib)
    from .ood import calibrate_ood

    ood = calibrate_ood(clf_dir, lab.subset(train_idx), val_ds, device,
                        encoder_dir=ssl_dir if (ssl_dir / "encoder.safetensors").exists() else None)
    headline = _headline(clf_dir, test_ds, device) if test_ds is not None else None
    summary = {"labeled": len(lab), "classes": lab.classes, "validation": len(val_idx),
               "unlabeled": len(unl) if unl else 0, "test": len(test_ds) if test_ds else 0,
               "headline": headline, "comparison": comparison, "uncertainty": calib,
               "unknown": ood,
               "choices": {k: v for k, v in c.__dict__.items() if k != "reasons"},
               "pretrain": {k: ssl_summary.get(k) for k in ("steps", "train_seconds",
                                                            "images_per_s", "collapsed",
                                                            "stopped_by_time")},
               "pretrain_eval": ssl_summary.get("eval"),
               "classifier": {k: clf_summary.get(k) for k in (
                   "method", "steps", "train_seconds", "val_acc_best", "val_acc_final",
                   "test_acc_final", "test_acc_at_best_val", "test_acc_median_last",
                   "stopped_by_time")},
               "model": str(clf_dir / "model.safetensors"), "budget_seconds": budget_s}
    if progress:
        print("selfsup fit: writing the report ...", file=sys.stderr)
    from .report.html import build_report

    summary["report"] = str(build_report(out, seed=seed, summary=summary))
    summary["seconds"] = round(time.time() - t_start, 1)
    write_json(out / "summary.json", summary)
    print(f"selfsup fit: kept {comparison['kept']} ({comparison['reason']}); report written to "
          f"{summary['report']}", file=sys.stderr)
    return summary


def _val_correct(run_dir: Path, val_ds, device) -> np.ndarray:
    from .evaluate.features import extract_features
    from .semisupervised import load_classifier

    model, _ = load_classifier(run_dir)
    logits = extract_features(model.to(device), val_ds, device=device)
    return logits.argmax(1) == val_ds.labels


def _compare(runs: dict, semi_name: str, val_ds, device, n_boot: int = 2000) -> dict:
    """Which model to keep: the semi-supervised one only when it is more accurate than labels
    alone on the held-out labeled images (ties keep labels-only); with the paired difference
    and its 95% bootstrap interval over those images."""
    if "labels_only" not in runs:
        return {"kept": semi_name, "reason": "no unlabeled images: labels only"}
    if val_ds is None:
        return {"kept": semi_name, "reason": "no validation split to compare on (too few "
                "labels per class): kept the semi-supervised model untested against labels only"}
    a = _val_correct(runs[semi_name][0], val_ds, device).astype(float)
    b = _val_correct(runs["labels_only"][0], val_ds, device).astype(float)
    d = a - b
    rng = np.random.default_rng(0)
    boots = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(1)
    lo, hi = (float(v) for v in np.percentile(boots, [2.5, 97.5]))
    kept = semi_name if a.mean() > b.mean() else "labels_only"
    return {"kept": kept, "val_images": len(d), "val_acc": {semi_name: float(a.mean()),
                                                             "labels_only": float(b.mean())},
            "difference": float(d.mean()), "difference_95ci": [lo, hi],
            "reason": (f"validation accuracy {a.mean():.3f} with unlabeled photos vs "
                       f"{b.mean():.3f} labels only on {len(d)} held-out images "
                       f"(difference {d.mean():+.3f}, 95% CI {lo:+.3f} to {hi:+.3f})")}


def _headline(clf_dir: Path, test_ds, device) -> dict:
    """Test accuracy with a 95% Wilson interval, balanced accuracy and the majority-class rate."""
    from .evaluate.features import extract_features
    from .evaluate.stats import wilson_interval
    from .semisupervised import load_classifier

    model, _ = load_classifier(clf_dir)
    pred = extract_features(model.to(device), test_ds, device=device).argmax(1)
    y = test_ds.labels
    n = len(y)
    acc = float((pred == y).mean())
    lo, hi = wilson_interval(acc, n)
    per_class = [float((pred[y == k] == k).mean()) for k in np.unique(y)]
    return {"test_images": n, "test_acc": acc, "test_acc_95ci": [lo, hi],
            "balanced_acc": float(np.mean(per_class)),
            "majority_rate": float(np.bincount(y).max() / n)}


def _stage_configs(c: Choices, overrides, seed: int) -> tuple[RunConfig, RunConfig]:
    common = [f"model.backbone={c.backbone}", f"model.width={c.width}",
              f"data.image_size={c.image_size}", f"augment.size={c.image_size}",
              f"train.seed={seed}", f"train.device={c.device}",
              f"train.precision={c.precision}"]
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
                       # method.name drops the preset's method keys: uratio is given again
                       + ([f"method.uratio={c.uratio or 4.0}"]
                          if c.semisup_method != "supervised" else []))
    if overrides:
        ssl, semi = apply_overrides(ssl, list(overrides)), apply_overrides(semi, list(overrides))
    return ssl, semi
