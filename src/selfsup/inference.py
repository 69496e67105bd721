"""Using a trained model: classify images (``predict``) or write their embeddings (``embed``).

Inputs are any mix of image files, folders (searched recursively) and archives (.tar/.tar.gz);
images are decoded exactly as for training (shorter side resized, centre crop, EXIF orientation,
every PIL mode to RGB), batched, and run in eval mode. Unreadable files are reported in the
output, not fatal. Nothing is written except the output file asked for.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import rundir
from .augment.views import normalize
from .data.decode import UnreadableImage, decode_image, is_image_name
from .data.sources import DataError, open_source, read_regular


def iter_images(paths: list[str | Path]) -> Iterator[tuple[str, bytes | Exception]]:
    """(display path, bytes or the error) for every image under ``paths``."""
    for p in paths:
        p = Path(p).expanduser()
        if p.is_file() and is_image_name(p.name):
            try:
                yield str(p), read_regular(p)
            except OSError as e:
                yield str(p), e
            continue
        if not p.exists():
            raise DataError(f"{p}: no such file or folder")
        if p.is_file() and not p.name.lower().endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2",
                                                         ".tar.xz")):
            raise DataError(f"{p}: not an image (jpg/png/bmp/webp/tiff/gif), a folder or an archive")
        source = open_source(p)
        for item, data in source.iter_bytes():
            yield str(p / item.name) if p.is_dir() else f"{p}:{item.name}", data


def batches(paths: list[str | Path], size: int, batch_size: int = 256
            ) -> Iterator[tuple[list[str], torch.Tensor, list[tuple[str, str]]]]:
    """(names, uint8 images [B, 3, size, size], unreadable (name, reason)) per batch."""
    names, arrs, bad = [], [], []
    for name, data in iter_images(paths):
        try:
            if isinstance(data, Exception):
                raise UnreadableImage(f"{type(data).__name__}: {data}")
            arrs.append(decode_image(data, size))
            names.append(name)
        except UnreadableImage as e:
            bad.append((name, str(e)))
        if len(arrs) == batch_size:
            yield names, torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2), bad
            names, arrs, bad = [], [], []
    if arrs or bad:
        x = (torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2) if arrs
             else torch.zeros(0, 3, size, size, dtype=torch.uint8))
        yield names, x, bad


def _prepare(x: torch.Tensor, input_size: int, mean, std, device) -> torch.Tensor:
    x = x.to(device).float().div_(255)
    if x.shape[-1] != input_size:
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", antialias=True,
                          align_corners=False)
    return normalize(x, mean, std)


CONFORMAL_ALPHA = 0.1
MIN_CALIBRATION_IMAGES = 20


def relative_threshold(n_classes: int) -> float:
    """Halfway between chance (1/C) and certainty: the same meaning for 2 and 20 classes."""
    return 0.5 * (1.0 + 1.0 / n_classes)


@torch.no_grad()
def calibrate_flag(run_dir: str | Path, val_ds, device: str = "cpu",
                   alpha: float = CONFORMAL_ALPHA) -> dict:
    """How ``predict`` decides that a prediction is uncertain, calibrated on held-out labeled
    images when there are enough of them: split conformal prediction (score 1 - p_true; q_hat =
    the ceil((n + 1)(1 - alpha)) / n quantile of the scores): the prediction set {c: p_c >=
    1 - q_hat} contains the true class for about 1 - alpha of the images, and an image is flagged
    when that set is not a single class. With fewer than 20 held-out images: flagged when the
    confidence is below (1 + 1/C) / 2."""
    from .semisupervised import load_classifier

    model, meta = load_classifier(run_dir)
    n_classes = len(json.loads(meta["classes"]))
    rel = {"kind": "relative", "threshold": relative_threshold(n_classes),
           "rule": "flagged when the top probability is below (1 + 1/C) / 2"}
    if val_ds is None or len(val_ds) < MIN_CALIBRATION_IMAGES:
        rel["why"] = (f"{0 if val_ds is None else len(val_ds)} held-out images: too few to "
                      f"calibrate (need {MIN_CALIBRATION_IMAGES})")
        return rel
    from .evaluate.features import extract_features

    logits = extract_features(model.to(device), val_ds, device=device)
    probs = torch.from_numpy(logits).softmax(1).numpy()
    scores = 1.0 - probs[np.arange(len(probs)), val_ds.labels]
    n = len(scores)
    level = min(1.0, np.ceil((n + 1) * (1 - alpha)) / n)
    q_hat = float(np.quantile(scores, level, method="higher"))
    set_size = (probs >= 1.0 - q_hat).sum(1)
    return {"kind": "conformal", "alpha": alpha, "q_hat": q_hat, "calibration_images": n,
            "rule": f"prediction set = classes with probability >= {1 - q_hat:.4f}; flagged "
                    f"when the set is not exactly one class (the set holds the true class for "
                    f"about {100 * (1 - alpha):.0f}% of images)",
            "flagged_on_validation": float((set_size != 1).mean())}


def _flag_rule(model_dir: Path, n_classes: int, low_confidence: float | None):
    """(description, function probs [B, C] -> flags [B])."""
    if low_confidence is not None:
        return {"kind": "threshold", "threshold": low_confidence}, \
            lambda p: p.max(1).values < low_confidence
    calib = None
    folder = model_dir.parent if model_dir.is_file() else model_dir
    if (folder / "calibration.json").exists():
        calib = rundir.read_json(folder / "calibration.json")
    if calib and calib.get("kind") == "conformal":
        q = float(calib["q_hat"])
        return calib, lambda p: (p >= 1.0 - q).sum(1) != 1
    thr = relative_threshold(n_classes)
    return {"kind": "relative", "threshold": thr}, lambda p: p.max(1).values < thr


def _refuse_overwrite(out: Path, overwrite: bool) -> None:
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise DataError(f"{out} already exists; choose another --out or pass --overwrite")
    if out.is_dir() and not out.is_symlink():
        raise DataError(f"{out} is a folder; give a file name for --out")


@torch.no_grad()
def predict(model_dir: str | Path, paths: list[str | Path], out: str | Path,
            top_k: int = 3, low_confidence: float | None = None, batch_size: int = 256,
            device: str = "cpu", overwrite: bool = False, progress: bool = True) -> dict:
    """Classify every image under ``paths`` with the classifier of ``model_dir`` (a semi-
    supervised or ``fit`` run, or an exported folder) and write a CSV:
    path, class, confidence, top-k as "class:p;...", low_confidence (1 when the prediction is
    uncertain: a confidence below ``low_confidence`` when given, else the rule of the model's
    calibration.json, else a confidence below (1 + 1/C) / 2), ood_score and unknown (1 when
    the image looks like none of the known classes: its out-of-distribution score is above the
    threshold of the model's ood.json, see ``ood.py``; empty for a model without one), error
    (for unreadable files). Returns counts, throughput and the rules used."""
    from .ood import all_scores, load_ood
    from .semisup.base import Classifier
    from .semisupervised import load_classifier

    out = Path(out)
    _refuse_overwrite(out, overwrite)
    model, meta = load_classifier(model_dir)
    model.to(device).eval()
    classes = json.loads(meta["classes"])
    mean, std = json.loads(meta["mean"]), json.loads(meta["std"])
    size, input_size = int(meta["image_size"]), int(meta.get("input_size", meta["image_size"]))
    k = min(top_k, len(classes))
    rule, flag = _flag_rule(Path(model_dir), len(classes), low_confidence)
    ood, banks, ood_encoder = load_ood(model_dir)
    ood_name = ood["score"] if ood else None
    if ood_name == "knn_ssl" and ood_encoder is None:
        ood_name = "knn"                 # the encoder's file is gone: the classifier's features
    if ood_name in ("knn", "knn_ssl") and banks.get("bank" if ood_name == "knn" else
                                                    "bank_ssl") is None:
        ood_name = None
    ood_thr = (ood or {}).get("thresholds", {}).get(ood_name) if ood_name else None
    banks = {n: b.to(device) for n, b in banks.items()}
    if ood_encoder is not None:
        ood_encoder.to(device)
    counts = {"images": 0, "unreadable": 0, "low_confidence": 0, "unknown": 0}
    t0 = time.perf_counter()
    bar = tqdm(desc="predict", unit="img", disable=not progress, file=sys.stderr)
    # written beside ``out`` and renamed over it when complete (a link at ``out`` is replaced,
    # not followed); a file name that is not valid UTF-8 is written with \x escapes
    with rundir.atomic_path(out) as tmp, open(tmp, "x", newline="", encoding="utf-8",
                                              errors="backslashreplace") as f:
        w = csv.writer(f)
        w.writerow(["path", "class", "confidence", f"top{k}", "low_confidence", "ood_score",
                    "unknown", "error"])
        for names, x, bad in batches(paths, size, batch_size):
            if len(names):
                xb = _prepare(x, input_size, mean, std, device)
                if ood_name and isinstance(model, Classifier):   # backbone -> fc
                    logits, scores = all_scores(model, xb, banks, int(ood["k"]), ood_encoder)
                    oscore = scores[ood_name].tolist()
                else:
                    logits, oscore = model(xb).float(), [None] * len(names)
                probs = logits.softmax(1)
                pk, ik = probs.topk(k, dim=1)
                # a non-finite output (a broken model) is always flagged, never trusted
                flags = (flag(probs) | ~torch.isfinite(probs).all(1)).tolist()
                for name, p, i, fl, o in zip(names, pk.tolist(), ik.tolist(), flags, oscore):
                    low = int(fl)
                    unk = "" if o is None or ood_thr is None else int(not o <= ood_thr)
                    counts["low_confidence"] += low
                    counts["unknown"] += unk or 0
                    w.writerow([name, classes[i[0]], f"{p[0]:.4f}",
                                ";".join(f"{classes[c]}:{q:.4f}" for c, q in zip(i, p)), low,
                                "" if o is None else f"{o:.4f}", unk, ""])
            for name, reason in bad:
                w.writerow([name, "", "", "", "", "", "", reason])
            counts["images"] += len(names)
            counts["unreadable"] += len(bad)
            bar.update(len(names) + len(bad))
            bar.set_postfix(img_s=f"{counts['images'] / max(1e-9, time.perf_counter() - t0):.0f}")
    bar.close()
    seconds = time.perf_counter() - t0
    return {**counts, "out": str(out), "seconds": seconds, "uncertainty_rule": rule,
            "unknown_rule": (ood or {}).get("rule") if ood_thr is not None else
            "none: the model has no ood.json with a threshold (fit writes one)",
            "images_per_s": counts["images"] / max(1e-9, seconds)}


@torch.no_grad()
def embed(run_dir: str | Path, paths: list[str | Path], out: str | Path, batch_size: int = 256,
          device: str = "cpu", overwrite: bool = False, progress: bool = True) -> dict:
    """Write the encoder's features of every image under ``paths`` to ``out`` (.npz with
    ``embeddings`` [N, D] float32 and ``paths`` [N]); unreadable files are listed in
    ``unreadable``."""
    from .pretrain import load_encoder

    out = Path(out)
    if out.suffix != ".npz":
        raise DataError(f"{out}: embeddings are written as .npz; give a path ending in .npz")
    _refuse_overwrite(out, overwrite)
    encoder, cfg = load_encoder(run_dir)
    encoder.to(device).eval()
    from .augment.views import IMAGENET_MEAN, IMAGENET_STD

    feats, names, bad = [], [], []
    bar = tqdm(desc="embed", unit="img", disable=not progress, file=sys.stderr)
    for n, x, b in batches(paths, cfg.data.image_size, batch_size):
        if len(n):
            feats.append(encoder(_prepare(x, cfg.augment.size, IMAGENET_MEAN, IMAGENET_STD,
                                          device)).float().cpu().numpy())
        names += n
        bad += b
        bar.update(len(n) + len(b))
    bar.close()
    emb = np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)
    with rundir.atomic_path(out) as tmp, open(tmp, "xb") as f:
        np.savez(f, embeddings=emb, paths=np.array(names), unreadable=np.array(
            [f"{n}: {r}" for n, r in bad]))
    return {"images": len(names), "unreadable": len(bad), "dim": int(emb.shape[1]) if feats else 0,
            "out": str(out)}
