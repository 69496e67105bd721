import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from selfsup import backbones
from selfsup.augment.randaugment import (GREY, RA_OPS, cutout, equalize, posterize, rand_augment,
                                         solarize, weak_augment)
from selfsup.config import load_config
from selfsup.data import ImageDataset
from selfsup.methods import METHODS, BatchInfo
from selfsup.semisup import Classifier
from selfsup.semisup.noisy_student import select_pseudo_labels
from selfsup.semisupervised import split_labeled, summarize_history
from selfsup.train.loop import stream_indices


def _img(seed=0, size=16):
    rng = np.random.default_rng(seed)
    return (rng.beta(2, 5, (size, size, 3)) * 255).astype(np.uint8)


def _t(img):
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255


def _np(x):
    return (x[0].permute(1, 2, 0) * 255).round().byte().numpy().astype(int)


def test_equalize_matches_pil():
    for seed in range(3):
        img = _img(seed)
        ref = np.asarray(ImageOps.equalize(Image.fromarray(img))).astype(int)
        assert np.abs(_np(equalize(_t(img), None)) - ref).max() == 0


@pytest.mark.parametrize("v,bits", [(0.0, 4), (0.5, 6), (1.0, 8)])
def test_posterize_matches_pil(v, bits):
    img = _img(1)
    ref = np.asarray(ImageOps.posterize(Image.fromarray(img), bits)).astype(int)
    assert np.abs(_np(posterize(_t(img), torch.tensor([v]))) - ref).max() == 0


def test_solarize_matches_pil():
    img = _img(2)
    ref = np.asarray(ImageOps.solarize(Image.fromarray(img), 128)).astype(int)
    assert np.abs(_np(solarize(_t(img), torch.tensor([128 / 255]))) - ref).max() <= 1


def test_every_ra_op_keeps_range_and_identity_is_exact():
    x = torch.rand(6, 3, 16, 16)
    for name, op in RA_OPS.items():
        y = op(x, torch.rand(6))
        assert y.shape == x.shape and torch.isfinite(y).all(), name
        assert y.min() >= -1e-5 and y.max() <= 1 + 1e-5, name
    assert torch.equal(RA_OPS["identity"](x, None), x)


def test_rand_augment_draws_ops_per_image():
    x = torch.rand(64, 3, 8, 8)
    _, ops, mags = rand_augment(x, 2, torch.Generator().manual_seed(0), return_ops=True)
    assert ops.shape == (64, 2) and len(torch.unique(ops[:, 0])) > 5
    assert 0 <= mags.min() and mags.max() <= 1


def test_weak_augment_translation_is_recoverable():
    # the weak view is the reflect-padded image cropped at the returned offset, maybe mirrored
    x = torch.rand(8, 3, 16, 16)
    out, p = weak_augment(x, 0.125, 0.5, torch.Generator().manual_seed(3), return_params=True)
    pad = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(8):
        src = x[i].flip(2) if p["flip"][i] else x[i]
        padded = torch.nn.functional.pad(src[None], (2, 2, 2, 2), mode="reflect")[0]
        dy, dx = int(p["dy"][i]) + 2, int(p["dx"][i]) + 2
        assert torch.equal(out[i], padded[:, dy:dy + 16, dx:dx + 16])
    assert pad.shape[-1] == 20 and p["dy"].abs().max() <= 2


def test_cutout_greys_exactly_its_box():
    x = torch.zeros(4, 3, 32, 32)
    out, boxes = cutout(x, 0.5, torch.Generator().manual_seed(0), return_boxes=True)
    for i, (y0, x0, y1, x1) in enumerate(boxes.tolist()):
        grey = out[i, 0] == GREY
        ys, xs = torch.nonzero(grey, as_tuple=True)
        if len(ys):
            assert ys.min() >= int(y0) and ys.max() <= int(y1)
            assert xs.min() >= int(x0) and xs.max() <= int(x1)
            assert max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 <= 16 + 1


def test_stream_indices_cover_the_pool_and_repeat_deterministically():
    pool = np.array([3, 5, 7, 11, 13])
    a = np.concatenate([stream_indices(pool, 4, seed=0, step=s) for s in range(5)])
    # 20 draws over a pool of 5: each element exactly 4 times (4 full passes)
    assert sorted(np.unique(a, return_counts=True)[1]) == [4] * 5
    assert np.array_equal(stream_indices(pool, 4, 0, 3), stream_indices(pool, 4, 0, 3))
    assert not np.array_equal(stream_indices(pool, 4, 0, 0, stream=0),
                              stream_indices(pool, 4, 0, 0, stream=1))


def _toy_dataset(n_per_class=10, classes=3):
    labels = np.repeat(np.arange(classes), n_per_class)
    imgs = np.zeros((len(labels), 8, 8, 3), np.uint8)
    return ImageDataset(imgs, labels, [f"c{i}" for i in range(classes)],
                        [f"img{i}" for i in range(len(labels))], "toy")


def test_split_labeled_hides_labels_and_holds_out_validation():
    ds = _toy_dataset()
    train, val, rec = split_labeled(ds, labels_per_class=2, val_per_class=3, seed=0)
    assert len(val) == 9 and sorted(np.bincount(val.labels)) == [3, 3, 3]
    assert len(train) == 21 and not set(train.names) & set(val.names)
    visible = train.labels[train.labels >= 0]
    assert sorted(np.bincount(visible)) == [2, 2, 2]
    assert sorted(rec["labeled_names"]) == sorted(np.array(train.names)[train.labels >= 0])
    # visible labels are the true ones
    truth = dict(zip(ds.names, ds.labels))
    assert all(truth[n] == y for n, y in zip(train.names, train.labels) if y >= 0)
    # another seed, another labeled set
    _, _, rec2 = split_labeled(ds, 2, 3, seed=1)
    assert rec2["labeled_names"] != rec["labeled_names"]


def test_select_pseudo_labels_threshold_and_balance():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45]], np.float32)
    idx, t = select_pseudo_labels(probs, threshold=0.59, per_class=None, soft=True)
    assert idx.tolist() == [0, 1, 2, 3] and np.allclose(t, probs[:4])
    idx, t = select_pseudo_labels(probs, threshold=0.0, per_class=2, soft=False, seed=0)
    assert sorted(idx[:2].tolist()) == [0, 1]               # the two most confident class-0
    assert idx[2:].tolist() == [3, 3]                        # class 1 has one image: repeated
    assert t.tolist() == [[1, 0], [1, 0], [0, 1], [0, 1]]


def test_summarize_history_median_and_best_val():
    h = [{"val_acc": 0.5, "test_acc": 0.4}, {"val_acc": 0.7, "test_acc": 0.6},
         {"val_acc": 0.6, "test_acc": 0.65}, {"val_acc": 0.65, "test_acc": 0.5}]
    s = summarize_history(h, median_last=3)
    assert s["test_acc_final"] == 0.5 and s["test_acc_median_last"] == 0.6
    assert s["val_acc_best"] == 0.7 and s["test_acc_at_best_val"] == 0.6


def test_loop_hides_labels_of_the_unlabeled_stream(tmp_path):
    """The unlabeled stream draws from every training image, labeled ones included, and the
    method never sees a label there."""
    from selfsup.train.loop import train

    seen = []

    cls = METHODS.get("fixmatch")

    class Spy(cls):
        def training_step(self, views, progress, batch=None):
            seen.append(batch.label.clone())
            return super().training_step(views, progress, batch)

    ds = _toy_dataset(8, 2)
    ds.labels[[1, 2, 3, 9, 10, 11, 12, 13, 14, 15]] = -1  # 6 labeled of 16
    cfg = load_config("fixmatch_digits", ["train.steps=3", "train.batch_size=4",
                                          "method.uratio=2", "train.progress=false",
                                          "method.num_classes=2"])
    m = Spy(backbones.create("convnet", width=0.25), cfg.method_config())
    train(m, ds, cfg, tmp_path / "run")
    for y in seen:
        assert len(y) == 12 and (y[:4] >= 0).all() and (y[4:] == -1).all()


def test_mpl_teacher_receives_gradients_and_student_lookahead_leaves_weights():
    torch.manual_seed(0)
    cls = METHODS.get("mpl")
    m = cls(backbones.create("convnet", width=0.25), cls.Config(num_classes=3))
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    batch = BatchInfo(torch.arange(8), torch.tensor([0, 1, 2, 0, -1, -1, -1, -1]))
    out = m.training_step(m.views(images, batch), 0.5, batch)
    out.loss.backward()
    assert all(p.grad is not None for p in m.teacher.parameters())
    assert "h" in out.logs and np.isfinite(out.logs["h"])


def test_noisy_student_refuses_a_smaller_student(tmp_path):
    from selfsup.pretrain import RunDirError
    from selfsup.semisupervised import noisy_student

    narrow = load_config("fixmatch_digits", ["method.name=noisy_student", "train.steps=2",
                                             "train.progress=false", "model.width=0.25"])
    with pytest.raises(RunDirError, match="smaller than its teacher"):
        noisy_student(narrow, rounds=1, run_dir=tmp_path / "ns",
                      teacher_overrides=["model.width=1.0"])
    assert (tmp_path / "ns" / "round0" / "model.safetensors").exists()


def test_noisy_student_two_rounds_on_digits(tmp_path):
    from selfsup.semisupervised import noisy_student

    cfg = load_config("fixmatch_digits", ["method.name=noisy_student", "train.steps=6",
                                          "train.eval_every=3", "train.progress=false",
                                          "method.per_class=20", "method.threshold=0.0"])
    run, out = noisy_student(cfg, rounds=2, run_dir=tmp_path / "ns")
    assert [r["round"] for r in out["rounds"]] == [0, 1, 2]
    r1 = out["rounds"][1]
    # every class the teacher predicts gets exactly 20 (balanced by repeats or by confidence)
    assert r1["pseudo_labeled"] % 20 == 0 and 20 <= r1["pseudo_labeled"] <= 200
    assert r1["student_params"] >= r1["teacher_params"]
    assert json.loads((run / "summary.json").read_text())["final_run"].endswith("round2")
    # re-running the driver skips the finished rounds
    _, again = noisy_student(cfg, rounds=2, run_dir=tmp_path / "ns")
    assert again["rounds"][2]["test_acc_final"] == out["rounds"][2]["test_acc_final"]


@pytest.mark.parametrize("teacher", ["online", "ema"])
def test_fixmatch_digits_end_to_end_and_resume(tmp_path, teacher):
    """A short FixMatch run on real images (digits) writes its outputs; killed and resumed it
    ends with the same weights as an uninterrupted run (with the EMA teacher too: its averaged
    BatchNorm statistics are part of the checkpoint)."""
    from selfsup.semisupervised import load_classifier, train_semisup

    over = ["train.steps=20", "train.eval_every=10", "train.checkpoint_every=10",
            "train.progress=false", f"method.ema_teacher={teacher == 'ema'}"]
    cfg = load_config("fixmatch_digits", over)
    a, summary = train_semisup(cfg, tmp_path / "a")
    for f in ("model.safetensors", "encoder.safetensors", "summary.json", "splits.json",
              "metrics.jsonl", "eval_history.json", "config.yaml"):
        assert (a / f).exists(), f
    assert summary["n_labeled"] == 50 and summary["n_val"] == 50 and summary["evaluations"] == 2
    assert 0.0 <= summary["test_acc_final"] <= 1.0 and "test_acc_at_best_val" in summary
    b, partial = train_semisup(cfg, tmp_path / "b", stop_after=10)
    assert partial == {"stopped_at": 10}
    b, summary_b = train_semisup(cfg, tmp_path / "b")
    ma, _ = load_classifier(a)
    mb, meta = load_classifier(b)
    assert json.loads(meta["classes"]) == [str(i) for i in range(10)]
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6), k
    assert summary_b["test_acc_final"] == summary["test_acc_final"]
    assert isinstance(ma, Classifier)


def test_test_curve_off_evaluates_the_test_set_once_at_the_end(tmp_path):
    """eval.test_curve=false (what `fit` uses): validation at every evaluation, the test set
    only after training, with the accuracy a curve-on run of the same seed reports at its end;
    killed and resumed, the same."""
    from selfsup.semisupervised import train_semisup

    over = ["train.steps=20", "train.eval_every=10", "train.checkpoint_every=10",
            "train.progress=false"]
    _, on = train_semisup(load_config("fixmatch_digits", over), tmp_path / "on")
    cfg = load_config("fixmatch_digits", over + ["eval.test_curve=false"])
    off_dir, off = train_semisup(cfg, tmp_path / "off")
    hist = json.loads((off_dir / "eval_history.json").read_text())
    assert [("val_acc" in h, "test_acc" in h) for h in hist] == [(True, False), (True, True)]
    assert off["test_acc_final"] == on["test_acc_final"]
    assert off["val_acc_final"] == on["val_acc_final"]
    _, partial = train_semisup(cfg, tmp_path / "killed", stop_after=10)
    assert partial == {"stopped_at": 10}
    _, resumed = train_semisup(cfg, tmp_path / "killed")
    assert resumed["test_acc_final"] == on["test_acc_final"]


def test_ema_teacher_labels_the_weak_views_with_the_ema_model_in_eval_mode():
    """method.ema_teacher=true (EMAN): the pseudo-labels and the mask come from the EMA model in
    evaluation mode on the weak views; the trained network sees only labeled + strong views."""
    from selfsup.losses.semisup import fixmatch_loss

    torch.manual_seed(0)
    cls = METHODS.get("fixmatch")
    m = cls(backbones.create("convnet", width=0.25),
            cls.Config(num_classes=3, threshold=0.0, ema_teacher=True))
    with torch.no_grad():   # make the two networks disagree: the teacher always says class 2
        m.ema.fc.weight.zero_()
        m.ema.fc.bias.copy_(torch.tensor([0.0, 0.0, 9.0]))
    batch = BatchInfo(torch.arange(8), torch.tensor([0, 1, 2, 0, -1, -1, -1, -1]))
    weak, strong = torch.rand(8, 3, 16, 16), torch.rand(4, 3, 16, 16)
    seen = []
    hook = m.model.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    out = m.training_step([weak, strong], 0.5, batch)
    hook.remove()
    assert seen == [8]                       # 4 labeled weak + 4 strong: no weak unlabeled views
    logits_s = m.model(torch.cat([weak[:4], strong]))[4:]
    want, mask = fixmatch_loss(m.ema.eval()(weak[4:]), logits_s, 0.0)
    assert torch.allclose(torch.tensor(out.logs["loss_u"]), want, atol=1e-5)
    assert torch.equal(m.ema(weak[4:]).argmax(1), torch.full((4,), 2))   # the teacher's labels


def test_ema_update_averages_float_buffers_only_when_asked():
    from selfsup.nn.ema import ema_update

    a, b = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    b.running_mean.fill_(1.0)
    b.num_batches_tracked.fill_(7)
    ema_update(a, b, 0.75, average_buffers=True)
    assert torch.allclose(a.running_mean, torch.full((2,), 0.25))
    assert int(a.num_batches_tracked) == 7
    ema_update(a, b, 0.75)                   # the default copies them
    assert torch.equal(a.running_mean, b.running_mean)
