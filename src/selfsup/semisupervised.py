"""Semi-supervised training entry points: a few labels + many unlabeled images -> a classifier.

    from selfsup.config import load_config
    from selfsup.semisupervised import train_semisup
    run_dir, summary = train_semisup(load_config("fixmatch_cifar10_cpu", ["data.path=..."]))

Protocol (reference A.0): ``data.labels_per_class`` labels per class chosen by seed (the rest of
the training images are unlabeled; labeled images are also in the unlabeled stream), a validation
split of ``data.val_per_class`` labeled images per class taken out of the training images for
model selection (never the test split), evaluation of the EMA model on validation and test every
``train.eval_every`` steps; the summary reports the final test accuracy, the median of the last
``eval.median_last`` evaluations, and the test accuracy at the best validation accuracy.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import rundir
from .config import ConfigError, RunConfig, apply_overrides, config_from_dict
from .data import ImageDataset
from .data.splits import class_balanced_subset
from .data.sources import DataError
from .evaluate.features import extract_features
from .pretrain import (RunDirError, build_method, check_output_space, load_data, load_encoder,
                       model_metadata, prepare_run_dir, release_run_dir, run_finished,
                       save_encoder)
from .modelmeta import check_model_metadata
from .semisup import Classifier
from .train.loop import resolve_device, train


def split_labeled(ds: ImageDataset, labels_per_class: int | None, val_per_class: int, seed: int
                  ) -> tuple[ImageDataset, ImageDataset | None, dict]:
    """(training set with only the chosen labels visible, validation set or None, split record).
    Validation images are removed from the training set entirely."""
    if not ds.has_labels:
        raise DataError(f"{ds.source}: semi-supervised training needs some labeled images "
                        f"(class sub-folders or a labels CSV)")
    labels = ds.labels
    chosen = (class_balanced_subset(labels, per_class=labels_per_class, seed=seed,
                                    classes=ds.classes)
              if labels_per_class else np.flatnonzero(labels >= 0))
    val_idx = np.zeros(0, np.int64)
    if val_per_class:
        rest = labels.copy()
        rest[chosen] = -1
        val_idx = class_balanced_subset(rest, per_class=val_per_class, seed=seed + 1,
                                        classes=ds.classes)
    keep = np.setdiff1d(np.arange(len(ds)), val_idx)
    train = ds.subset(keep)
    visible = np.full(len(ds), -1, np.int64)
    visible[chosen] = labels[chosen]
    train.labels = visible[keep]
    train.hidden_labels = labels[keep].copy()   # diagnostics only (pseudo-label accuracy)
    val = ds.subset(val_idx) if len(val_idx) else None
    record = {"labels_per_class": labels_per_class, "val_per_class": val_per_class, "seed": seed,
              "labeled_names": [ds.names[i] for i in chosen],
              "val_names": [ds.names[i] for i in val_idx]}
    return train, val, record


def accuracy(model: torch.nn.Module, ds: ImageDataset, device, flip_tta: bool = False) -> float:
    """Top-1 accuracy; ``flip_tta``: of the logits averaged with the mirror image's (only for
    this call: the model may be a teacher that must not average while it trains)."""
    before = getattr(model, "flip_tta", False)
    if flip_tta:
        model.flip_tta = True
    try:
        logits = extract_features(model, ds, device=device)
    finally:
        if flip_tta:
            model.flip_tta = before
    return float((logits.argmax(1) == ds.labels).mean())


def save_classifier(model: Classifier, cfg: RunConfig, classes: list[str], run_dir: Path) -> Path:
    """``model.safetensors``: backbone + classifier weights, with what is needed to rebuild and
    use them (architecture, class names, input size and normalisation) in the metadata."""
    from safetensors.torch import save_file

    meta = {**model_metadata(cfg), "classes": json.dumps(classes),
            **(model.export_metadata() if hasattr(model, "export_metadata") else {}),
            **({"flip_tta": "true"} if cfg.eval.flip_tta else {})}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = run_dir / "model.safetensors"
    with rundir.atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def load_classifier(run_dir: str | Path) -> tuple[Classifier, dict]:
    """The trained classifier of a finished semi-supervised run, and its metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(run_dir)
    if not (path.is_file() and path.suffix == ".safetensors"):
        path = path / "model.safetensors"
    if not path.exists():
        raise RunDirError(f"{run_dir}: no model.safetensors (is it a finished `selfsup semisup` "
                          f"run?)")
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:   # safetensors raises its own error type for a damaged header
        raise RunDirError(f"{path} is damaged or not a safetensors file "
                          f"({str(e).splitlines()[0][:80]}); export or train it again") from None
    check_model_metadata(meta, path)
    from . import backbones

    backbone = backbones.build(meta["backbone"], float(meta["width"]), meta["cifar_stem"] == "True",
                               int(meta.get("input_size", meta["image_size"])),
                               int(meta.get("patch_size", 4)), int(meta.get("depth", 0)),
                               meta.get("pool", "cls"))
    n = len(json.loads(meta["classes"]))
    if "sla_mode" in meta:   # SLA keeps its joint head and inference (semisup/sla.py)
        from .semisup.sla import SLAClassifier

        model = SLAClassifier(backbone, n, meta["sla_mode"], meta["sla_transform"],
                              meta["sla_inference"], mean=json.loads(meta["mean"]),
                              std=json.loads(meta["std"]))
    else:
        model = Classifier(backbone, n)
        model.flip_tta = meta.get("flip_tta") == "true"   # what its evaluations measured
    state = load_file(str(path))
    model.load_state_dict(state)
    return model.eval(), meta


def _init_from(method, init: str | Path, cfg: RunConfig) -> str:
    """Start from a run: a semi-supervised one (whole classifier) or a self-supervised one
    (encoder only). Returns what was loaded."""
    init = Path(init)
    targets = [method.model] + ([method.ema] if getattr(method, "ema", None) is not None else [])
    if (init / "model.safetensors").exists():
        src, meta = load_classifier(init)
        if meta["backbone"] != cfg.model.backbone or float(meta["width"]) != cfg.model.width:
            raise RunDirError(f"--init {init}: its backbone is {meta['backbone']} width "
                              f"{meta['width']}, this run's is {cfg.model.backbone} width "
                              f"{cfg.model.width}; set model.backbone/model.width to match")
        for t in targets:
            t.load_state_dict(src.state_dict())
        return "classifier"
    enc, enc_cfg = load_encoder(init)
    if enc_cfg.model.backbone != cfg.model.backbone or enc_cfg.model.width != cfg.model.width:
        raise RunDirError(f"--init {init}: its encoder is {enc_cfg.model.backbone} width "
                          f"{enc_cfg.model.width}, this run's is {cfg.model.backbone} width "
                          f"{cfg.model.width}; set model.backbone/model.width to match")
    for t in targets + ([method.teacher] if hasattr(method, "teacher")
                        and isinstance(method.teacher, Classifier) else []):
        t.backbone.load_state_dict(enc.state_dict())
    return "encoder"


def semisup_data(cfg: RunConfig) -> "SemisupData":
    """Load and split the data as ``cfg`` says: (all images, training set with only the chosen
    labels visible, validation set, test set, split record)."""
    full = load_data(cfg, cfg.data.split, cfg.train.progress)
    if cfg.data.subset and cfg.data.subset < len(full):
        idx = np.sort(np.random.default_rng(cfg.train.seed).choice(len(full), cfg.data.subset,
                                                                  replace=False))
        full = full.subset(idx)
    train_ds, val_ds, record = split_labeled(full, cfg.data.labels_per_class,
                                             cfg.data.val_per_class, cfg.train.seed)
    test_ds = load_data(cfg, cfg.data.test_split, cfg.train.progress) if cfg.data.test_split else None
    if test_ds is not None:
        if not test_ds.has_labels:
            raise DataError(f"{test_ds.source}: data.test_split has no labels (class sub-folders "
                            f"or a labels CSV); unset it to evaluate on validation only")
        test_ds = test_ds.aligned_to(full.classes)
    return SemisupData(full, train_ds, val_ds, test_ds, record)


@dataclass
class SemisupData:
    full: ImageDataset                 # every training image, true labels (reports, classes)
    train: ImageDataset                # what training sees: labels of the labeled split only
    val: ImageDataset | None
    test: ImageDataset | None
    record: dict                       # what splits.json says


def train_semisup(cfg: RunConfig, run_dir: str | Path | None = None, init: str | Path | None = None,
                  prepare=None, stop_after: int | None = None, data: SemisupData | None = None
                  ) -> tuple[Path, dict]:
    """Train the semi-supervised method ``cfg.method.name``. ``init``: a run directory to start
    from; ``prepare(method, train_ds, device)``: called before training (Noisy Student sets its
    pseudo-labels there); ``data``: already prepared splits (``selfsup fit``), else loaded as
    ``cfg.data`` says."""
    name = cfg.method.get("name")
    from .methods import METHODS

    if not getattr(METHODS.get(name), "semi_supervised", False):
        raise RunDirError(f"method '{name}' is self-supervised: use `selfsup pretrain`")
    from .nn.distributed import all_gather_object, init_from_env
    from .pretrain import main_first

    rank, world, _ = init_from_env()      # torchrun: one process per device, same command
    main = rank == 0
    run_dir = Path(all_gather_object(str(run_dir or cfg.train.out_dir or Path("runs") /
                                         f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"))[0])
    device = resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = data or main_first(lambda: semisup_data(cfg))
    full, train_ds, val_ds, test_ds, record = (data.full, data.train, data.val, data.test,
                                               data.record)
    # the classifier's size comes from the data
    cfg = apply_overrides(cfg, [f"method.num_classes={len(full.classes)}"])
    main_first(lambda: prepare_run_dir(cfg, run_dir, "semisup"), everyone=False)
    try:
        return _train_semisup_locked(cfg, run_dir, init, prepare, stop_after, main, device,
                                     full, train_ds, val_ds, test_ds, record)
    finally:
        if main:
            release_run_dir(run_dir)


def _train_semisup_locked(cfg, run_dir, init, prepare, stop_after, main, device, full, train_ds,
                          val_ds, test_ds, record) -> tuple[Path, dict]:
    from .nn.distributed import barrier
    from .pretrain import check_data, main_first

    name = cfg.method.get("name")
    if main:
        check_data(run_dir, train_ds, cfg)
        full.write_report(run_dir / "data_report.json")
        rundir.write_json(run_dir / "splits.json", record, indent=None)
    torch.manual_seed(cfg.train.seed)     # the same initial weights on every rank
    method = build_method(cfg)
    tta = cfg.eval.flip_tta
    if tta and not isinstance(method.eval_model, Classifier):
        raise ConfigError(f"eval.flip_tta: method {name!r} has its own inference; set "
                          f"eval.flip_tta=false")
    main_first(lambda: check_output_space(run_dir, method), everyone=False)
    if init is not None:
        loaded = _init_from(method, init, cfg)
        if main:
            rundir.write_json(run_dir / "init.json", {"init": str(init), "loaded": loaded})
    if hasattr(method.cfg, "epochs_total"):  # Lee (2013)'s alpha(t) counts unlabeled epochs
        n_u = len(method.unlabeled_pool(train_ds.labels))
        ubs = method.uratio * cfg.train.batch_size
        method.cfg.epochs_total = cfg.train.steps * ubs / max(1, n_u)
    if prepare is not None:
        prepare(method, train_ds, device)

    history: list[dict] = []

    def monitor(_encoder) -> dict:
        row = {}
        if val_ds is not None:
            row["val_acc"] = accuracy(method.eval_model, val_ds, device, tta)
        if test_ds is not None and cfg.eval.test_curve:
            row["test_acc"] = accuracy(method.eval_model, test_ds, device, tta)
        history.append(row)
        return row

    hist_path = run_dir / "eval_history.json"
    from .train.checkpoint import load_resumable

    ck, _ = load_resumable(run_dir / "checkpoints")
    if ck is not None:
        # resumed: the evaluations up to the checkpoint (those after it are redone), rebuilt
        # from metrics.jsonl's eval rows, so a damaged eval_history.json loses nothing
        rows, _ = rundir.read_jsonl(run_dir / "metrics.jsonl")
        history.extend({k: r[k] for k in ("val_acc", "test_acc") if k in r} for r in rows
                       if r.get("kind") == "eval" and r.get("step", 0) <= ck["step"]
                       and ("val_acc" in r or "test_acc" in r))
        del ck

    def monitor_and_save(enc):
        row = monitor(enc)
        rundir.write_json(hist_path, history, indent=None)
        return row

    t0 = time.time()
    result = train(method, train_ds, cfg, run_dir, monitor=monitor_and_save if main else None,
                   stop_after=stop_after)
    if "stopped_at" in result or not main:
        barrier()
        return run_dir, result
    if test_ds is not None and not cfg.eval.test_curve and history:
        history[-1]["test_acc"] = accuracy(method.eval_model, test_ds, device, tta)   # once, last
        rundir.write_json(hist_path, history, indent=None)
    summary = {"method": name, "seed": cfg.train.seed, **result,
               "train_seconds": time.time() - t0, "n_train": len(train_ds),
               "n_labeled": int((train_ds.labels >= 0).sum()),
               "n_val": len(val_ds) if val_ds is not None else 0,
               "init": str(init) if init else None}
    summary.update(summarize_history(history, cfg.eval.median_last))
    save_classifier(method.eval_model, cfg, full.classes, run_dir)
    save_encoder(method, cfg, run_dir)
    rundir.write_json(run_dir / "summary.json", summary)
    barrier()
    return run_dir, summary


def summarize_history(history: list[dict], median_last: int) -> dict:
    """Final, median of the last ``median_last`` (FixMatch's report) and at-best-validation
    test accuracies."""
    out: dict = {"evaluations": len(history)}
    tests = [h["test_acc"] for h in history if "test_acc" in h]
    if tests:
        out["test_acc_final"] = tests[-1]
        out["test_acc_median_last"] = float(np.median(tests[-median_last:]))
    vals = [h.get("val_acc") for h in history]
    if vals and all(v is not None for v in vals):
        best = int(np.argmax(vals))  # first best: ties go to the earlier evaluation
        out["val_acc_best"] = vals[best]
        if "test_acc" in history[best]:
            out["test_acc_at_best_val"] = history[best]["test_acc"]
    if vals and vals[-1] is not None:
        out["val_acc_final"] = vals[-1]
    return out


def _finished_or_train(cfg: RunConfig, run_dir: Path, **kw) -> tuple[Path, dict]:
    """Multi-stage drivers resume: a stage whose run directory is finished is not trained again."""
    if run_finished(run_dir) and (run_dir / "model.safetensors").exists():
        return run_dir, rundir.read_json(run_dir / "summary.json")
    return train_semisup(cfg, run_dir, **kw)


def _create_parent(run_dir: Path, kind: str) -> None:
    """The folder of a multi-stage driver (one selfsup run folder per stage inside)."""
    try:
        rundir.create(run_dir, kind)
    except rundir.RunFileError as e:
        raise RunDirError(str(e)) from None


def noisy_student(cfg: RunConfig, rounds: int = 2, run_dir: str | Path | None = None,
                  teacher_overrides: list[str] | None = None, init: str | Path | None = None
                  ) -> tuple[Path, dict]:
    """Noisy Student's rounds. Round 0 trains the teacher on the labels alone (method
    ``supervised``, same data, backbone and schedule); round k >= 1 pseudo-labels the unlabeled
    images with round k-1's model (no noise) and trains a noised student (``cfg``'s
    ``noisy_student`` settings, its ``model`` section: never smaller than the teacher).
    ``teacher_overrides`` change round 0 only (e.g. ``["model.width=0.5"]``: a smaller first
    teacher, as the paper's B0 -> B7 chain). Each round's run directory (``round0``, ``round1``
    ...) keeps its own metrics; a killed driver re-run with the same directory skips the rounds
    already finished."""
    from .semisup.noisy_student import select_pseudo_labels

    if cfg.method.get("name") != "noisy_student":
        raise RunDirError("noisy_student() needs method.name=noisy_student")
    run_dir = Path(run_dir or cfg.train.out_dir or Path("runs") /
                   f"noisy_student-{time.strftime('%Y%m%d-%H%M%S')}")
    _create_parent(run_dir, "noisy_student")
    ns = cfg.method_config()
    t_cfg = config_from_dict({**cfg.to_dict(), "method": {"name": "supervised"}})
    if teacher_overrides:
        t_cfg = apply_overrides(t_cfg, list(teacher_overrides))
    rounds_out, selected = [], {}
    prev, summary = _finished_or_train(t_cfg, run_dir / "round0", init=init)
    rounds_out.append({"round": 0, **_brief(summary)})
    for k in range(1, rounds + 1):
        teacher, meta = load_classifier(prev)
        t_params = sum(p.numel() for p in teacher.parameters())

        def prepare(method, train_ds, device, teacher=teacher, t_params=t_params, k=k):
            s_params = sum(p.numel() for p in method.model.parameters())
            if s_params < t_params:
                raise RunDirError(f"Noisy Student round {k}: the student ({s_params} "
                                  f"parameters) is smaller than its teacher ({t_params}); "
                                  f"use an equal or larger model.backbone / model.width")
            unl = np.flatnonzero(train_ds.labels < 0)
            logits = extract_features(teacher.to(device), train_ds.subset(unl), device=device)
            probs = torch.from_numpy(logits).softmax(1).numpy()
            idx, targets = select_pseudo_labels(probs, ns.threshold, ns.per_class, ns.soft,
                                                cfg.train.seed + k)
            if len(idx) == 0:
                raise RunDirError(f"Noisy Student round {k}: no pseudo-label passes "
                                  f"method.threshold={ns.threshold}; lower it")
            method.set_pseudo_labels(len(train_ds), unl[idx], targets)
            selected.update({"pseudo_labeled": len(idx), "pseudo_unique": len(np.unique(idx)),
                             "unlabeled": len(unl), "teacher_params": t_params,
                             "student_params": s_params})

        prev, summary = _finished_or_train(cfg, run_dir / f"round{k}", prepare=prepare)
        rounds_out.append({"round": k, **_brief(summary), **selected})
    out = {"method": "noisy_student", "rounds": rounds_out, "final_run": str(prev)}
    rundir.write_json(run_dir / "summary.json", out)
    return run_dir, out


def mpl_with_finetune(cfg: RunConfig, finetune_steps: int, run_dir: str | Path | None = None,
                      init: str | Path | None = None) -> tuple[Path, dict]:
    """Meta Pseudo Labels, then the paper's last stage: the student fine-tuned on the labeled
    images alone (method ``supervised`` started from the MPL student)."""
    run_dir = Path(run_dir or cfg.train.out_dir or Path("runs") /
                   f"mpl-{time.strftime('%Y%m%d-%H%M%S')}")
    _create_parent(run_dir, "mpl")
    mpl_dir, s_mpl = _finished_or_train(cfg, run_dir / "mpl", init=init)
    ft = config_from_dict({**cfg.to_dict(), "method": {"name": "supervised"}})
    ft = apply_overrides(ft, [f"train.steps={finetune_steps}"])
    ft_dir, s_ft = _finished_or_train(ft, run_dir / "finetune", init=mpl_dir)
    out = {"method": "mpl", "mpl": _brief(s_mpl), "finetune": _brief(s_ft),
           "final_run": str(ft_dir)}
    rundir.write_json(run_dir / "summary.json", out)
    return run_dir, out


def _brief(summary: dict) -> dict:
    keys = ("test_acc_final", "test_acc_median_last", "test_acc_at_best_val", "val_acc_best",
            "train_seconds", "n_labeled", "steps")
    return {k: summary[k] for k in keys if k in summary}


__all__ = ["load_classifier", "mpl_with_finetune", "noisy_student", "save_classifier",
           "split_labeled", "summarize_history", "train_semisup"]
