""""Not a fish we know": out-of-distribution scores for a trained classifier.

Three scores, each larger for a more unusual image:

- ``msp``: 1 - the top softmax probability (Hendrycks & Gimpel, ICLR 2017), the baseline;
- ``energy``: -logsumexp of the logits (Liu et al., NeurIPS 2020): the free energy, which unlike
  the softmax keeps the logits' scale (an image far from everything has small logits everywhere);
- ``knn``: the distance from the image's L2-normalised penultimate features to its k-th nearest
  neighbour among the training labeled images' features (Sun et al., ICML 2022, "deep nearest
  neighbours"): no assumption on the shape of the feature distribution.

The threshold is set on held-out images of the known classes (``fit``'s validation split) so that
95% of them pass (the usual "TPR 95%" operating point); ``calibrate_ood`` writes it with the
feature bank next to the model (``ood.json``, ``ood_bank.safetensors``) and ``predict`` flags every
image whose score is above it as ``unknown``. Which score is the default comes from the open-set
benchmark (BENCHMARKS.md, ``benchmarks/open_set.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import rundir

SCORES = ("msp", "energy", "knn")
DEFAULT_SCORE = "knn"
KNOWN_PASS_RATE = 0.95
MIN_CALIBRATION = 20


def msp_score(logits: torch.Tensor) -> torch.Tensor:
    return 1.0 - logits.softmax(1).max(1).values


def energy_score(logits: torch.Tensor) -> torch.Tensor:
    return -torch.logsumexp(logits, dim=1)


def knn_score(feats: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """Distance to the k-th nearest row of ``bank`` (both L2-normalised here)."""
    q, b = F.normalize(feats, dim=1), F.normalize(bank, dim=1)
    d = torch.cdist(q, b)
    k = max(1, min(k, b.shape[0]))
    return d.topk(k, dim=1, largest=False).values[:, -1]


def knn_k(n_bank: int) -> int:
    """Sun et al. use k = 50 for 50,000 CIFAR-10 training images (1 per 1,000); with a few hundred
    labels that rule gives 1, so k = max(1, min(50, n / 100)), at most a tenth of the bank."""
    return int(max(1, min(50, n_bank // 100, max(1, n_bank // 10))))


def all_scores(model, x: torch.Tensor, bank: torch.Tensor | None, k: int
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, {score name: [B]}) for a normalised batch ``x`` through a ``Classifier``."""
    feats = model.backbone(x).float()
    logits = model.fc(feats).float()
    out = {"msp": msp_score(logits), "energy": energy_score(logits)}
    if bank is not None and len(bank):
        out["knn"] = knn_score(feats, bank, k)
    return logits, out


@torch.no_grad()
def dataset_scores(model, ds, bank, k, device="cpu", mean=None, std=None, batch_size=512):
    """{score: [N] numpy} over an ImageDataset (eval mode, the model's normalisation)."""
    from .augment.views import normalize

    model.eval()
    res: dict[str, list] = {}
    for s in range(0, len(ds), batch_size):
        x = ds.batch(np.arange(s, min(len(ds), s + batch_size))).to(device).float().div_(255)
        _, sc = all_scores(model, normalize(x, mean, std), bank, k)
        for name, v in sc.items():
            res.setdefault(name, []).append(v.cpu().numpy())
    return {n: np.concatenate(v) for n, v in res.items()}


@torch.no_grad()
def bank_features(model, ds, device="cpu", mean=None, std=None) -> torch.Tensor:
    from .evaluate.features import extract_features

    return torch.from_numpy(extract_features(model.backbone, ds, device=device, mean=mean,
                                             std=std))


def calibrate_ood(clf_dir: str | Path, train_ds, val_ds, device: str = "cpu",
                  score: str = DEFAULT_SCORE) -> dict:
    """Write ``ood.json`` (+ ``ood_bank.safetensors``) into ``clf_dir``: the feature bank of the
    training labeled images and, when there are enough held-out known-class images, the
    threshold that 95% of them pass, for every score (``score`` is the one predict flags with)."""
    import json

    from safetensors.torch import save_file

    from .semisupervised import load_classifier

    clf_dir = Path(clf_dir)
    model, meta = load_classifier(clf_dir)
    model.to(device)
    mean, std = json.loads(meta["mean"]), json.loads(meta["std"])
    bank = bank_features(model, train_ds, device, mean, std)
    k = knn_k(len(bank))
    with rundir.atomic_path(clf_dir / "ood_bank.safetensors") as tmp:
        save_file({"bank": bank.contiguous()}, str(tmp))
    rec = {"score": score, "k": k, "bank_images": len(bank), "known_pass_rate": KNOWN_PASS_RATE,
           "thresholds": {}}
    if val_ds is None or len(val_ds) < MIN_CALIBRATION:
        rec["why"] = (f"{0 if val_ds is None else len(val_ds)} held-out images: too few to set a "
                      f"threshold (need {MIN_CALIBRATION}); scores are written, nothing flagged")
    else:
        sc = dataset_scores(model, val_ds, bank.to(device), k, device, mean, std)
        rec["thresholds"] = {n: float(np.quantile(v, KNOWN_PASS_RATE)) for n, v in sc.items()}
        rec["calibration_images"] = len(val_ds)
        rec["rule"] = (f"unknown when the {score} score is above the threshold that "
                       f"{100 * KNOWN_PASS_RATE:.0f}% of {len(val_ds)} held-out images of the "
                       f"known classes pass")
    rundir.write_json(clf_dir / "ood.json", rec)
    return rec


def load_ood(model_dir: str | Path):
    """(record, bank) from a classifier folder, or (None, None) when it has none."""
    from safetensors.torch import load_file

    folder = Path(model_dir)
    folder = folder.parent if folder.is_file() else folder
    if not (folder / "ood.json").exists() or not (folder / "ood_bank.safetensors").exists():
        return None, None
    rec = rundir.read_json(folder / "ood.json")
    try:
        bank = load_file(str(folder / "ood_bank.safetensors"))["bank"]
    except Exception:
        rundir.warn(f"{folder / 'ood_bank.safetensors'} is damaged; the knn score is not given "
                    f"(re-run fit to rewrite it)")
        return rec, None
    return rec, bank


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(score of an unknown > score of a known), ties counting half (Mann-Whitney)."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(known)), np.ones(len(unknown))]
    return float(roc_auc_score(y, np.r_[known, unknown]))


def fpr_at_tpr(known: np.ndarray, unknown: np.ndarray, tpr: float = 0.95) -> float:
    """The share of unknowns that pass when the threshold lets ``tpr`` of the knowns pass."""
    t = np.quantile(known, tpr)
    return float((unknown <= t).mean())
