""""Not a fish we know": out-of-distribution scores for a trained classifier.

Three scores, each larger for a more unusual image:

- ``msp``: 1 - the top softmax probability (Hendrycks & Gimpel, ICLR 2017), the baseline;
- ``energy``: -logsumexp of the logits (Liu et al., NeurIPS 2020): the free energy, which unlike
  the softmax keeps the logits' scale (an image far from everything has small logits everywhere);
- ``knn``: the distance from the image's L2-normalised penultimate features to its k-th nearest
  neighbour among the training labeled images' features (Sun et al., ICML 2022, "deep nearest
  neighbours"): no assumption on the shape of the feature distribution;
- ``knn_ssl``: the same in the *self-supervised* encoder's features (``fit``'s pretraining
  stage). A semi-supervised classifier is trained to give the unlabeled photos - unknown ones
  included - confident known-class labels, which blinds its own softmax and features to them;
  the self-supervised features were never asked to (BENCHMARKS.md section 11).

The threshold is set on held-out images of the known classes (``fit``'s validation split) so that
95% of them pass (the usual "TPR 95%" operating point); ``calibrate_ood`` writes it with the
feature banks next to the model (``ood.json``, ``ood_bank.safetensors``, ``ood_encoder.safetensors``)
and ``predict`` flags every
image whose score is above it as ``unknown``. Which score is the default comes from the open-set
benchmark (BENCHMARKS.md, ``benchmarks/open_set.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import rundir

SCORES = ("msp", "energy", "knn", "knn_ssl")
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
    """Sun et al. use k = 50 for 50,000 CIFAR-10 training images; with a few hundred labeled
    images a larger share of the bank works better (BENCHMARKS.md section 11: AUROC rises from
    k = 1 to k = 50 with a 400-image bank), so k = n / 8, between 1 and 50."""
    return int(max(1, min(50, n_bank // 8)))


def all_scores(model, x: torch.Tensor, banks: dict, k: int, encoder=None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, {score name: [B]}) for a normalised batch ``x`` through a ``Classifier``;
    ``knn`` on the classifier's features, ``knn_ssl`` on the self-supervised ``encoder``'s."""
    feats = model.backbone(x).float()
    logits = model.fc(feats).float()
    out = {"msp": msp_score(logits), "energy": energy_score(logits)}
    if banks.get("bank") is not None:
        out["knn"] = knn_score(feats, banks["bank"], k)
    if encoder is not None and banks.get("bank_ssl") is not None:
        out["knn_ssl"] = knn_score(encoder(x).float(), banks["bank_ssl"], k)
    return logits, out


@torch.no_grad()
def dataset_scores(model, ds, banks, k, device="cpu", mean=None, std=None, batch_size=512,
                   encoder=None):
    """{score: [N] numpy} over an ImageDataset (eval mode, the model's normalisation)."""
    from .augment.views import normalize

    model.eval()
    if encoder is not None:
        encoder.eval()
    banks = {n: b.to(device) for n, b in banks.items() if b is not None}
    res: dict[str, list] = {}
    for s in range(0, len(ds), batch_size):
        x = ds.batch(np.arange(s, min(len(ds), s + batch_size))).to(device).float().div_(255)
        _, sc = all_scores(model, normalize(x, mean, std), banks, k, encoder)
        for name, v in sc.items():
            res.setdefault(name, []).append(v.cpu().numpy())
    return {n: np.concatenate(v) for n, v in res.items()}


@torch.no_grad()
def bank_features(net, ds, device="cpu", mean=None, std=None) -> torch.Tensor:
    from .evaluate.features import extract_features

    return torch.from_numpy(extract_features(net, ds, device=device, mean=mean, std=std))


def _encoder_record(cfg) -> dict:
    m = cfg.model
    return {"backbone": m.backbone, "width": m.width, "cifar_stem": m.cifar_stem,
            "image_size": cfg.augment.size, "patch_size": m.patch_size, "depth": m.depth,
            "pool": m.pool}


def calibrate_ood(clf_dir: str | Path, train_ds, val_ds, device: str = "cpu",
                  encoder_dir: str | Path | None = None) -> dict:
    """Write ``ood.json`` and ``ood_bank.safetensors`` (+ ``ood_encoder.safetensors``) into
    ``clf_dir``: the features of the training labeled images (the classifier's, and the
    self-supervised encoder's of ``encoder_dir`` when given, copied beside the model so the
    folder stays self-contained) and, when there are enough held-out known-class images, the
    threshold that 95% of them pass for every score. predict flags with ``knn_ssl`` when there
    is an encoder (the best score of the open-set benchmark), else ``knn``."""
    import json

    from safetensors.torch import save_file

    from .semisupervised import load_classifier

    clf_dir = Path(clf_dir)
    model, meta = load_classifier(clf_dir)
    model.to(device)
    mean, std = json.loads(meta["mean"]), json.loads(meta["std"])
    banks = {"bank": bank_features(model.backbone, train_ds, device, mean, std)}
    encoder, rec = None, {}
    if encoder_dir is not None:
        from .pretrain import load_encoder

        encoder, ecfg = load_encoder(encoder_dir)
        if getattr(encoder, "embed_dim", None) and ecfg.augment.size == int(
                meta.get("input_size", meta["image_size"])):
            encoder.to(device).eval()
            banks["bank_ssl"] = bank_features(encoder, train_ds, device, mean, std)
            with rundir.atomic_path(clf_dir / "ood_encoder.safetensors") as tmp:
                save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp))
            rec["encoder"] = _encoder_record(ecfg)
        else:
            encoder = None
    k = knn_k(len(banks["bank"]))
    with rundir.atomic_path(clf_dir / "ood_bank.safetensors") as tmp:
        save_file({n: b.contiguous() for n, b in banks.items()}, str(tmp))
    score = "knn_ssl" if "bank_ssl" in banks else "knn"
    rec = {"score": score, "k": k, "bank_images": len(banks["bank"]),
           "known_pass_rate": KNOWN_PASS_RATE, "thresholds": {}, **rec}
    if val_ds is None or len(val_ds) < MIN_CALIBRATION:
        rec["why"] = (f"{0 if val_ds is None else len(val_ds)} held-out images: too few to set a "
                      f"threshold (need {MIN_CALIBRATION}); scores are written, nothing flagged")
    else:
        sc = dataset_scores(model, val_ds, banks, k, device, mean, std, encoder=encoder)
        rec["thresholds"] = {n: float(np.quantile(v, KNOWN_PASS_RATE)) for n, v in sc.items()}
        rec["calibration_images"] = len(val_ds)
        rec["rule"] = (f"unknown when the {score} score is above the threshold that "
                       f"{100 * KNOWN_PASS_RATE:.0f}% of {len(val_ds)} held-out images of the "
                       f"known classes pass")
    rundir.write_json(clf_dir / "ood.json", rec)
    return rec


def load_ood(model_dir: str | Path):
    """(record, banks, encoder or None) from a classifier folder; (None, {}, None) without one.
    A damaged file drops the scores that need it, with a warning."""
    from safetensors.torch import load_file

    from . import backbones

    folder = Path(model_dir)
    folder = folder.parent if folder.is_file() else folder
    if not (folder / "ood.json").exists() or not (folder / "ood_bank.safetensors").exists():
        return None, {}, None
    rec = rundir.read_json(folder / "ood.json")
    try:
        banks = load_file(str(folder / "ood_bank.safetensors"))
    except Exception:
        rundir.warn(f"{folder / 'ood_bank.safetensors'} is damaged; no out-of-distribution "
                    f"score is given (re-run fit to rewrite it)")
        return None, {}, None
    encoder = None
    e = rec.get("encoder")
    if e and (folder / "ood_encoder.safetensors").exists():
        try:
            encoder = backbones.build(e["backbone"], float(e["width"]), bool(e["cifar_stem"]),
                                      int(e["image_size"]), int(e["patch_size"]), int(e["depth"]),
                                      e.get("pool", "cls"))
            encoder.load_state_dict(load_file(str(folder / "ood_encoder.safetensors")))
            encoder.eval()
        except Exception:
            rundir.warn(f"{folder / 'ood_encoder.safetensors'} is damaged or does not match "
                        f"ood.json; the knn_ssl score is not given")
            encoder = None
    return rec, banks, encoder


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(score of an unknown > score of a known), ties counting half (Mann-Whitney)."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(known)), np.ones(len(unknown))]
    return float(roc_auc_score(y, np.r_[known, unknown]))


def fpr_at_tpr(known: np.ndarray, unknown: np.ndarray, tpr: float = 0.95) -> float:
    """The share of unknowns that pass when the threshold lets ``tpr`` of the knowns pass."""
    t = np.quantile(known, tpr)
    return float((unknown <= t).mean())
