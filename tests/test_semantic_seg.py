"""Generative semi-supervised segmentation (issue 22, item 3): the scene task's labels, the joint
image-and-label ELBO against hand-written references, mIoU against a naive loop, and the
method's inversion and labels-only control."""

import math

import numpy as np
import pytest
import torch

from selfsup.data.render import SEG_CLASSES, random_scenes, render, segmentation_classes
from selfsup.data.scenes import labeled_scenes, load_scenes, render_segmentation
from selfsup.evaluate.segmentation import confusion_matrix, iou_scores
from selfsup.losses.reconstruction import (bernoulli_nll, gaussian_kl, gaussian_nll, image_nll,
                                           joint_negative_elbo, label_map_nll)


def test_segmentation_classes_follow_the_surface_ids():
    ids = torch.tensor([[[-1, 0, 1, 2, 3, 4, 5, 6]]])       # 3 sphere slots: 2, 3, 4; boxes 5, 6
    assert segmentation_classes(ids, 3).tolist() == [[[-1, 0, 1, 2, 2, 2, 3, 3]]]
    assert SEG_CLASSES == ["ground", "wall", "sphere", "box"]


def test_the_shifted_appearance_keeps_the_geometry_and_changes_the_look():
    a = render(random_scenes(6, generator=torch.Generator().manual_seed(4)), 16)
    b = render(random_scenes(6, generator=torch.Generator().manual_seed(4), appearance="shifted"), 16)
    assert torch.equal(a["ids"], b["ids"]) and torch.equal(a["depth"], b["depth"])
    assert (a["image"] - b["image"]).abs().mean() > 0.1
    with pytest.raises(ValueError, match="appearance"):
        random_scenes(1, appearance="night")


def test_scene_masks_agree_with_the_renderer_and_labeled_scenes_are_not_test_scenes():
    imgs, masks = render_segmentation(5, 16, seed=7, chunk=2)
    assert imgs.shape == (5, 16, 16, 3) and imgs.dtype == np.uint8 and masks.shape == (5, 16, 16)
    assert set(np.unique(masks)) <= {-1, 0, 1, 2, 3} and (masks == 1).any()
    again, masks2 = render_segmentation(5, 16, seed=7, chunk=2)
    assert np.array_equal(imgs, again) and np.array_equal(masks, masks2)
    li, _ = labeled_scenes(3, 16, seed=0)
    ti, _ = render_segmentation(3, 16, seed=1)     # the test split's seed
    assert not any(np.array_equal(x, y) for x in li for y in ti)


def test_the_scenes_dataset_is_unlabeled_images():
    import selfsup.data.scenes as sc

    sc.SPLITS["tiny"] = (4, 9, "default")
    try:
        ds = load_scenes(split="tiny", image_size=16)
    finally:
        del sc.SPLITS["tiny"]
    assert len(ds) == 4 and not ds.has_labels and ds.images.shape == (4, 16, 16, 3)


def test_losses_against_hand_computed_references():
    torch.manual_seed(0)
    logits, x = torch.randn(2, 3, 2, 2), torch.rand(2, 3, 2, 2)
    ref = torch.zeros(2)
    for b in range(2):
        for v, t in zip(logits[b].flatten().tolist(), x[b].flatten().tolist()):
            p = 1 / (1 + math.exp(-v))
            ref[b] -= t * math.log(p) + (1 - t) * math.log(1 - p)
    assert torch.allclose(bernoulli_nll(logits, x), ref, atol=1e-5)

    seg = torch.randn(2, 4, 2, 3)
    mask = torch.tensor([[[0, 1, 2], [3, -1, 0]], [[-1, -1, -1], [1, 1, 1]]])
    ref = torch.zeros(2)
    for b in range(2):
        for i in range(2):
            for j in range(3):
                if mask[b, i, j] >= 0:
                    ref[b] -= torch.log_softmax(seg[b, :, i, j], 0)[mask[b, i, j]]
    assert torch.allclose(label_map_nll(seg, mask), ref, atol=1e-5)

    mean = torch.sigmoid(logits)
    sq = [sum((a - b) ** 2 for a, b in zip(mean[i].flatten().tolist(), x[i].flatten().tolist()))
          for i in range(2)]
    assert torch.allclose(gaussian_nll(mean, x, 0.1), torch.tensor(sq) / 0.02, atol=1e-4)
    assert torch.allclose(image_nll(logits, x, 0.1), gaussian_nll(mean, x, 0.1))
    assert torch.allclose(image_nll(logits, x), bernoulli_nll(logits, x))

    mu, logvar = torch.randn(2, 5), torch.randn(2, 5)
    g = joint_negative_elbo(logits, x, mu, logvar, 1.0, pixel_sigma=0.2)
    assert torch.allclose(g, gaussian_nll(mean, x, 0.2) + gaussian_kl(mu, logvar))
    full = joint_negative_elbo(logits, x, mu, logvar, 0.5, seg, mask, 2.0)
    assert torch.allclose(full, bernoulli_nll(logits, x) + 0.5 * gaussian_kl(mu, logvar)
                          + 2.0 * ref, atol=1e-5)
    # an unlabeled image: the ELBO of x alone; a perfectly fitting posterior has KL 0
    assert torch.allclose(joint_negative_elbo(logits, x, torch.zeros(2, 5), torch.zeros(2, 5)),
                          bernoulli_nll(logits, x))


def test_miou_against_a_naive_loop():
    rng = np.random.default_rng(0)
    target = rng.integers(-1, 4, (3, 8, 8))
    pred = rng.integers(0, 4, (3, 8, 8))
    pred[target == 3] = 3             # class 3 perfect where it occurs
    conf = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 4)
    ious = []
    for c in range(4):
        keep = target >= 0
        tp = np.sum((pred == c) & (target == c) & keep)
        fp = np.sum((pred == c) & (target != c) & keep)
        fn = np.sum((pred != c) & (target == c) & keep)
        ious.append(tp / (tp + fp + fn))
    res = iou_scores(conf)
    assert res["iou"] == pytest.approx(ious) and res["miou"] == pytest.approx(np.mean(ious))
    assert res["pixel_accuracy"] == pytest.approx(np.mean((pred == target)[target >= 0]))
    # a class absent from truth and prediction is left out of the mean
    two = iou_scores(confusion_matrix(torch.zeros(4), torch.zeros(4), 3))
    assert two["miou"] == 1.0 and np.isnan(two["iou"][1])


def _method(**kw):
    from selfsup import backbones
    from selfsup.augment.views import ViewConfig
    from selfsup.methods.semantic_vae import SemanticVAE, SemanticVAEConfig

    torch.manual_seed(0)
    cfg = SemanticVAEConfig(latent_dim=8, label_count=4, labeled_batch=4, generator_channels=32,
                            **kw)
    return SemanticVAE(backbones.create("convnet", width=0.25), cfg, ViewConfig(size=16))


def _images(n=4):
    from selfsup.augment.views import normalize, to_unit_float

    imgs, _ = render_segmentation(n, 16, seed=5)
    return normalize(to_unit_float(torch.from_numpy(imgs).permute(0, 3, 1, 2), 16))


def test_inversion_starts_at_the_encoder_and_lowers_the_objective():
    from selfsup.losses.reconstruction import image_nll
    from selfsup.methods.semantic_vae import invert_lr
    from selfsup.report.pictures import denormalize

    m = _method(invert_encoder_weight=0.0).eval()
    x = _images()
    mu, _ = m.encode(x)
    assert torch.equal(m.invert(x, 0), mu.detach())

    def objective(z):
        with torch.no_grad():
            return (image_nll(m.generator(z)[0], denormalize(x).clamp(0, 1), 0.1)
                    + 0.5 * z.pow(2).sum(1)).sum()

    z = m.invert(x, 30)
    assert objective(z) < objective(mu.detach())
    assert m.segment(x, 3).shape == (4, 16, 16)
    # the official schedule: 0 at the start, full in the middle, back to 0 at the end
    assert invert_lr(0.0, 0.1) == 0.0 and invert_lr(0.5, 0.1) == pytest.approx(0.1)
    assert invert_lr(0.9, 0.1) < 0.1 and invert_lr(1.0, 0.1) == pytest.approx(0.0)


def test_the_labels_only_control_ignores_the_unlabeled_images():
    c = _method(generative=False)
    x = _images()
    noise = torch.randn_like(x)
    torch.manual_seed(1)
    a = c.training_step([x], 0.5).loss
    torch.manual_seed(1)
    b = c.training_step([noise], 0.5).loss
    assert torch.equal(a, b)
    assert torch.equal(c.invert(x, 50), c.encode(x)[0].detach())   # no generative inversion
    g = _method()
    torch.manual_seed(1)
    a = g.training_step([x], 0.5)
    torch.manual_seed(1)
    b = g.training_step([noise], 0.5)
    assert not torch.equal(a.loss, b.loss)        # the generative model learns from them
    assert {"reconstruction", "kl", "label_nll", "labeled_pixel_acc"} <= set(a.logs)


def test_the_labeled_masks_live_in_the_state_and_follow_the_seed():
    a, b = _method(), _method(label_seed=1)
    sd = a.state_dict()
    assert sd["labeled_images"].shape == (4, 3, 16, 16) and sd["labeled_masks"].shape == (4, 16, 16)
    assert not torch.equal(a.labeled_masks, b.labeled_masks)
    pics = a.eval().pictures(_images())
    assert {"generated", "generated_labels", "labeled_truth"} <= set(pics)
    assert all(v.shape[1] == 3 for v in pics.values())


def test_the_benchmark_script_runs_both_rows_end_to_end(tmp_path, monkeypatch):
    """benchmarks/semantic_seg.py on tiny splits: the generative row scored with and without
    inversion, the control once, in and out of domain; pictures of generated pairs and of the
    segmentations in each run folder."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    import selfsup.data.scenes as sc

    monkeypatch.setattr(sc, "SPLITS", {"train": (24, 0, "default"), "test": (8, 1, "default"),
                                       "shifted": (8, 2, "shifted")})
    sc._split.cache_clear()
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "semantic_seg.py"
    spec = importlib.util.spec_from_file_location("semantic_seg_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = tmp_path / "r.jsonl"
    monkeypatch.setattr(sys, "argv", [
        "semantic_seg.py", "--seeds", "0", "--steps", "3", "--labels", "4", "--test-images", "8",
        "--invert-steps", "2", "--out-dir", str(tmp_path / "runs"), "--results", str(res),
        "--set", "model.width=0.25", "method.generator_channels=32", "method.latent_dim=8",
        "train.batch_size=8", "method.labeled_batch=4", "augment.size=16", "data.image_size=16"])
    try:
        mod.main()
    finally:
        sc._split.cache_clear()
    rows = [json.loads(line) for line in res.read_text().splitlines()]
    got = {(r["variant"], r["split"], r["invert_steps"]) for r in rows}
    assert got == {("semantic_vae", s, k) for s in ("test", "shifted") for k in (0, 2)} | {
        ("labels_only", s, 0) for s in ("test", "shifted")}
    assert all(0 <= r["miou"] <= 100 and len(r["iou"]) == 4 for r in rows)
    for run in (tmp_path / "runs").iterdir():
        assert (run / "segmentation_test.png").is_file()
        assert (run / "segmentation_shifted.png").is_file()
        assert (run / "pictures.png").is_file()
