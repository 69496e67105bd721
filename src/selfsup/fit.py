"""``selfsup fit``: a folder of labeled photos (+ optional unlabeled ones) -> the best classifier
this toolkit can make of them within a budget, with every choice printed and saved.

Pipeline: look at the data (image sizes, counts per class) -> choose a recipe (input size,
backbone, steps) from the data, the device and the time budget (``fitplan``) -> self-supervised
pretraining (SimCLR) on every image, labeled or not -> labels-only fine-tuning from the
pretrained encoder, then semi-supervised training (FreeMatch) from it with the time left; the
semi-supervised model kept unless labels-only is clearly better on a held-out validation split
(``fitplan.decide``) -> evaluation on that split (and a test set when given) -> ``OUT/`` with
``choices.json``,
``pretrain/``, ``classifier/`` (``model.safetensors`` for predict/export) and ``summary.json``.
Any choice can be overridden (``--image-size``, ``--backbone``, ``--ssl-steps``, ``--steps``,
``--ssl-method``, ``--semisup-method``, or ``key=value`` for both stages).
"""

from __future__ import annotations

import io
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from . import rundir
from .config import apply_overrides
from .data import ImageDataset, load_dataset
from .data.sources import DataError, open_source
from .data.splits import stratified_split
from .fitcheck import (MIN_PER_CLASS_FOR_VALIDATION, FitDirError, _clear_fit, fit_record,  # noqa: F401,E501
                       parse_budget, preflight)
from .pretrain import pretrain, run_finished
from .rundir import write_json
from .semisupervised import SemisupData, train_semisup
from .fitplan import (BUDGET_USE, REPORT_RESERVE_S, VAL_IMAGES, Choices, _stage_configs, choose,
                      decide, replanned_steps, ssl_share, time_step, validation_fraction)
from .train.loop import resolve_device


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
    val_frac = validation_fraction(n_lab_files) if use_val else 0.0
    n_train_lab = n_lab_files - (max(len(counts), int(round(val_frac * n_lab_files))) if use_val
                                 else 0)
    n_unl_files = sum(1 for _ in getattr(open_source(unlabeled), "items", [])) if unlabeled else 0
    n_test_files = sum(1 for _ in getattr(open_source(test), "items", [])) if test else 0

    def step_seconds(c: Choices):
        # measured before the step counts are chosen: any valid count builds the same step
        ssl_cfg, semi_cfg = _stage_configs(replace(c, ssl_steps=max(1, c.ssl_steps),
                                                   steps=max(1, c.steps)), overrides, seed)
        x = torch.randint(0, 256, (c.ssl_batch, 3, c.image_size, c.image_size), dtype=torch.uint8)
        s1 = time_step(ssl_cfg, x, torch.full((len(x),), -1))
        nb = c.batch + int(c.uratio * c.batch)
        x = torch.randint(0, 256, (nb, 3, c.image_size, c.image_size), dtype=torch.uint8)
        y = torch.cat([torch.zeros(c.batch, dtype=torch.long), torch.full((nb - c.batch,), -1)])
        return s1, time_step(semi_cfg, x, y)

    if budget_s is not None and progress:
        print("selfsup fit: measuring a training step of each stage on this machine ...",
              file=sys.stderr)
    planned = BUDGET_USE * budget_s - REPORT_RESERVE_S if budget_s else None
    if resume and (out / "choices.json").exists():   # the same recipe as the killed run
        saved = rundir.read_json(out / "choices.json")
        c = Choices(**{k: saved[k] for k in Choices.__dataclass_fields__ if k in saved})
    else:
        c = choose(n_train_lab, n_unl_files, side, device, planned, step_seconds,
                   spent=lambda: time.time() - t_start, n_test=n_test_files,
                   n_val=n_lab_files - n_train_lab)
    c.val_fraction = val_frac
    c.reasons["val_fraction"] = (
        f"{100 * val_frac:.0f}% of each class held out to choose between models and calibrate "
        f"predict's flag and the unknown-photo threshold (20% of the labels up to "
        f"{VAL_IMAGES} images, then {VAL_IMAGES} or 10%, whichever is more: the held-out count "
        f"gives the comparison its precision, and each label held out is one fewer to learn "
        f"from)" if use_val else
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
    ssl_cfg, _ = _stage_configs(c, overrides, seed)
    usable = planned - c.eval_reserve_s if planned else planned   # the evaluations' time kept
    if usable:   # each stage ends by the clock too: the budget holds even when steps run slow
        left = usable - (time.time() - t_start)
        ssl_cfg = apply_overrides(ssl_cfg,
                                  [f"train.time_limit={max(5.0, ssl_share(c) * left):.1f}",
                                   "train.fit_to_time=true"])
    # 1. self-supervised pretraining on every image but the validation ones
    ssl_train = concat_unlabeled(lab.subset(train_idx), unl)
    ssl_train = ImageDataset(ssl_train.images, np.where(np.arange(len(ssl_train)) < len(train_idx),
                                                        ssl_train.labels, -1),
                             ssl_train.classes, ssl_train.names, ssl_train.source, ssl_train.skipped)
    if progress:
        print(f"selfsup fit: 1/{3 if c.semisup_method != 'supervised' else 2} "
              f"self-supervised pretraining ({c.ssl_method}, {c.ssl_steps} steps)",
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
    replan = (remaining is not None and "steps" not in forced and ssl_summary.get("steps")
              and ssl_summary.get("train_seconds"))
    if replan and not (out / "candidates").exists():
        # re-plan stage 2 from how fast stage 1 really ran (data path, evaluations included)
        c.steps, why = replanned_steps(c, ssl_summary["steps"], ssl_summary["train_seconds"],
                                       remaining)
        c.reasons["steps"] += why
    if not c.labels_only_steps:
        c.labels_only_steps = c.steps
    write_json(out / "choices.json", c.__dict__)
    # the labels-only candidate first, with its whole schedule (its step is cheap but its
    # evaluations are not: 2026-11-30 it was planned at 1/9 of the budget's stage 2, ran second,
    # got 42 s and 379 of its 647 steps, and still "won" on 100 validation images); then the
    # semi-supervised one with all the time that is really left
    order = (["labels_only"] if c.semisup_method != "supervised" else []) + [c.semisup_method]
    runs = {}
    for i, name in enumerate(order):
        d = out / "candidates" / name
        if name != "labels_only" and len(order) == 2 and replan and not d.exists():
            left = usable - (time.time() - t_start)
            c.steps, why = replanned_steps(c, ssl_summary["steps"], ssl_summary["train_seconds"],
                                           left, with_labels_only=False)
            c.reasons["steps"] += f"; after the labels-only candidate{why}"
            write_json(out / "choices.json", c.__dict__)
        steps = c.labels_only_steps if name == "labels_only" else c.steps
        # labels-only: the same recipe as method "supervised" (no unlabeled stream: until
        # 2026-12-01 it kept uratio 4 and drew and augmented 256 unused images per step)
        _, cfg = _stage_configs(replace(c, steps=steps, ema_teacher=c.ema_teacher and name !=
                                        "labels_only", semisup_method="supervised" if name ==
                                        "labels_only" else c.semisup_method), overrides, seed)
        if remaining is not None:
            left = usable - (time.time() - t_start)
            # labels-only: a cap, not a plan (it needs ~1/(1 + 2 uratio) of the semi-supervised
            # candidate's step time plus its evaluations, ~20% of stage 2 on CIFAR-10 at 32 px,
            # more on tiny data where the evaluations dominate); the semi-supervised one: the rest
            # and it re-plans its steps from its own speed to end its schedule on time
            share = 0.8 if name == "labels_only" else 1.0
            cfg = apply_overrides(cfg, [f"train.time_limit={max(5.0, share * left):.1f}"]
                                  + ([] if name == "labels_only" else ["train.fit_to_time=true"]))
        if progress:
            print(f"selfsup fit: {2 + i}/{1 + len(order)} {name} from the pretrained encoder "
                  f"({cfg.train.steps} steps)", file=sys.stderr)
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
                                                            "images_per_s", "collapsed", "replans",
                                                            "stopped_by_time")},
               "pretrain_eval": ssl_summary.get("eval"),
               "classifier": {k: clf_summary.get(k) for k in (
                   "method", "steps", "train_seconds", "val_acc_best", "val_acc_final",
                   "test_acc_final", "test_acc_at_best_val", "test_acc_median_last",
                   "stopped_by_time", "replans")},
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


def _compare(runs: dict, semi_name: str, val_ds, device) -> dict:
    """Which model to keep (``decide``) from the two candidates' answers on the held-out
    labeled images."""
    if "labels_only" not in runs:
        return {"kept": semi_name, "reason": "no unlabeled images: labels only"}
    if val_ds is None:
        return {"kept": semi_name, "reason": "no validation split to compare on (too few "
                "labels per class): kept the semi-supervised model untested against labels only"}
    return decide(_val_correct(runs[semi_name][0], val_ds, device),
                  _val_correct(runs["labels_only"][0], val_ds, device), semi_name)


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
