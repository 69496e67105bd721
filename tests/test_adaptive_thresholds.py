"""FlexMatch, FreeMatch and the Meta Pseudo Labels fixes: losses against hand-computed values and
naive loops over the papers' equations (float64), the MPL zero-step identity, and the threshold
state surviving kill and resume bit for bit."""

import json

import numpy as np
import pytest
import torch

from selfsup import backbones
from selfsup.config import load_config
from selfsup.losses.semisup import (class_threshold_loss, flexmatch_thresholds, freematch_ema,
                                    freematch_fairness_loss, freematch_thresholds,
                                    moving_baseline, uda_loss)
from selfsup.methods import METHODS, BatchInfo


def test_flexmatch_thresholds_by_hand():
    # 10 images: class 0 confident 3 times, class 1 twice, class 2 once, class 3 never, 4 unused
    sel = torch.tensor([0, 0, 0, 1, 1, 2, -1, -1, -1, -1])
    # warm-up: beta = sigma / max(max sigma = 3, unused = 4) = [.75, .5, .25, 0]; M(x) = x/(2-x)
    want = 0.95 * np.array([0.75 / 1.25, 0.5 / 1.5, 0.25 / 1.75, 0.0])
    assert np.allclose(flexmatch_thresholds(sel, 4, 0.95, warmup=True).numpy(), want)
    # no warm-up: beta = sigma / 3 = [1, 2/3, 1/3, 0]
    want = 0.95 * np.array([1.0, (2 / 3) / (4 / 3), (1 / 3) / (5 / 3), 0.0])
    assert np.allclose(flexmatch_thresholds(sel, 4, 0.95, warmup=False).numpy(), want)
    # nothing confident yet: every threshold is 0 (every prediction counts, as in TorchSSL)
    assert flexmatch_thresholds(torch.full((5,), -1), 3, 0.95).abs().max() == 0
    # every image of every class confident, balanced: the fixed threshold again
    assert np.allclose(flexmatch_thresholds(torch.tensor([0, 1, 2] * 3), 3, 0.9).numpy(), 0.9)


def test_class_threshold_loss_matches_a_per_sample_loop():
    g = torch.Generator().manual_seed(0)
    lw = torch.randn(12, 4, generator=g, dtype=torch.float64) * 2
    ls = torch.randn(12, 4, generator=g, dtype=torch.float64)
    thr = torch.tensor([0.3, 0.9, 0.5, 0.0], dtype=torch.float64)
    loss, mask = class_threshold_loss(lw, ls, thr)
    total, keep = 0.0, []
    for n in range(12):
        q = torch.softmax(lw[n], 0)
        c = int(q.argmax())
        keep.append(float(q[c] >= thr[c]))
        if keep[-1]:
            total += -float(torch.log_softmax(ls[n], 0)[c])
    assert loss.dtype == torch.float64 and loss.item() == pytest.approx(total / 12, rel=1e-12)
    assert mask.tolist() == keep and 0 < sum(keep) < 12


def test_freematch_ema_thresholds_by_hand():
    c = 3
    tp, pm, lh = torch.tensor(1 / c), torch.full((c,), 1 / c), torch.full((c,), 1 / c)
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]])
    tp2, pm2, lh2 = freematch_ema(tp, pm, lh, probs, momentum=0.9)
    assert tp2.item() == pytest.approx(0.9 / 3 + 0.1 * (0.7 + 0.6 + 0.8 + 0.5) / 4)
    assert np.allclose(pm2.numpy(), 0.9 / 3 + 0.1 * np.array([1.6, 1.1, 1.3]) / 4)
    assert np.allclose(lh2.numpy(), 0.9 / 3 + 0.1 * np.array([2, 1, 1]) / 4)
    thr = freematch_thresholds(tp2, pm2)
    assert np.allclose(thr.numpy(), pm2.numpy() / pm2.max().item() * tp2.item())
    # at the start (uniform state) every class's threshold is 1/C
    assert np.allclose(freematch_thresholds(tp, pm).numpy(), 1 / c)


def test_freematch_fairness_loss_matches_the_equation():
    g = torch.Generator().manual_seed(1)
    ls = torch.randn(10, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1, 1, 0], dtype=torch.float64)
    pm = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    lh = torch.tensor([0.5, 0.2, 0.3, 0.0], dtype=torch.float64)
    got = freematch_fairness_loss(ls, mask, pm, lh)
    # by hand: a = SumNorm(p~ / h) (1/0 -> 0), b = SumNorm(mean p_s / hist_s) over kept rows
    a = np.array([0.4 / 0.5, 0.3 / 0.2, 0.2 / 0.3, 0.0])
    a /= a.sum()
    p = torch.softmax(ls[mask.bool()], 1).numpy()
    hist = np.bincount(p.argmax(1), minlength=4) / len(p)
    b = np.where(hist > 0, p.mean(0) / np.where(hist > 0, hist, 1), 0)
    b /= b.sum()
    assert got.item() == pytest.approx(float((a * np.log(b + 1e-12)).sum()), rel=1e-9)
    assert freematch_fairness_loss(ls, torch.zeros(10), pm, lh).item() == 0.0


def test_uda_mask_uses_the_sharpened_confidence():
    # unsharpened confidence 0.574 < 0.6, sharpened (T=0.5) 0.646 >= 0.6: kept (official code)
    loss, mask = uda_loss(torch.tensor([[0.3, 0.0]]), torch.tensor([[0.0, 1.0]]), 0.5, 0.6)
    assert mask.tolist() == [1.0] and loss.item() > 0


def test_moving_baseline_is_the_official_update():
    b = moving_baseline(torch.tensor(0.5), torch.tensor(1.5), 0.01)
    assert b.item() == pytest.approx(0.5 - 0.01 * (0.5 - 1.5))


def _mpl(**kw):
    torch.manual_seed(0)
    cls = METHODS.get("mpl")
    return cls(backbones.create("convnet", width=0.25), cls.Config(num_classes=3, **kw))


def test_mpl_zero_size_lookahead_gives_zero_feedback_exactly():
    m = _mpl(lookahead_lr=0.0, student_wait_steps=0)
    m.train()
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    batch = BatchInfo(torch.arange(8), torch.tensor([0, 1, 2, 0, -1, -1, -1, -1]))
    for _ in range(3):   # dropout draws differ between calls; h must not see them
        out = m.training_step(m.views(images, batch), 0.5, batch)
        assert out.logs["h_raw"] == 0.0 and out.logs["h"] == 0.0
    # a real step gives a non-zero feedback, and the baseline is committed after the step
    m2 = _mpl(lookahead_lr=0.5)
    m2.train()
    out = m2.training_step(m2.views(images, batch), 0.5, batch)
    assert out.logs["h_raw"] != 0.0
    assert out.logs["h"] == pytest.approx(0.99 * out.logs["h_raw"], rel=1e-4, abs=1e-7)
    assert m2.h_baseline.item() == 0.0
    m2.after_optimizer_step(0.5)
    assert m2.h_baseline.item() == pytest.approx(0.01 * out.logs["h_raw"], rel=1e-4)
    assert int(m2.steps_done) == 1


def test_mpl_student_waits_and_uda_ramps_in_steps():
    m = _mpl(student_wait_steps=2, uda_steps=4)
    m.train()
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    batch = BatchInfo(torch.arange(8), torch.tensor([0, 1, 2, 0, -1, -1, -1, -1]))
    weights = []
    for _ in range(3):
        out = m.training_step(m.views(images, batch), 0.1, batch)
        out.loss.backward()
        student_grad = sum(float(p.grad.abs().sum()) for p in m.model.parameters()
                           if p.grad is not None)
        weights.append((out.logs["uda_weight"], student_grad > 0))
        m.zero_grad()
        m.after_optimizer_step(0.1)
    assert weights == [(0.0, False), (2.0, False), (4.0, True)]


def test_distribution_alignment_by_hand():
    from selfsup.losses.semisup import distribution_alignment
    q = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], dtype=torch.float64)
    p_model = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    p_target = torch.full((3,), 1 / 3, dtype=torch.float64)
    # ReMixMatch: q * p(y) / p~(y), rows renormalised (eps 1e-6 moves the 7th digit)
    r0 = [0.5 / 0.5, 0.3 / 0.25, 0.2 / 0.25]        # [1.0, 1.2, 0.8], sum 3.0
    r1 = [0.1 / 0.5, 0.1 / 0.25, 0.8 / 0.25]        # [0.2, 0.4, 3.2], sum 3.8
    want = torch.tensor([[v / 3.0 for v in r0], [v / 3.8 for v in r1]], dtype=torch.float64)
    got = distribution_alignment(q, p_model, p_target)
    assert torch.allclose(got, want, atol=1e-5)
    # a model whose running mean already is the target is left as it is
    assert torch.allclose(distribution_alignment(q, p_target, p_target), q, atol=1e-12)


def test_class_distribution_ema_starts_from_the_first_batch():
    from selfsup.losses.semisup import class_distribution_ema
    b1, b2 = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.1, 0.1, 0.8])
    first = class_distribution_ema(torch.zeros(3), b1, 0.99)
    assert torch.equal(first, b1)
    second = class_distribution_ema(first, b2, 0.99)
    assert torch.allclose(second, 0.99 * b1 + 0.01 * b2, atol=1e-7)


def test_dist_align_trains_on_the_aligned_pseudo_labels_and_updates_after_the_step():
    """FreeMatch with ``dist_align``: the pseudo-labels are argmax of the aligned softmax, and the
    running distributions change only in ``after_optimizer_step`` (to the first batch's mean
    softmax and label histogram)."""
    cls = METHODS.get("freematch")
    torch.manual_seed(0)
    m = cls(backbones.create("convnet", width=0.25), cls.Config(num_classes=3, dist_align=True))
    assert torch.equal(m.da_p_model, torch.zeros(3))
    y = torch.tensor([0, 1, 2, 2])
    batch = BatchInfo(torch.arange(8), torch.tensor([0, 1, 2, 2, -1, -1, -1, -1]))
    logits_w = torch.tensor([[2.0, 0.0, 0.0]] * 3 + [[0.0, 0.0, 1.0]])
    aligned, _ = m.align(logits_w, y)
    probs = logits_w.softmax(1)
    hist = torch.tensor([0.25, 0.25, 0.5])
    # the first batch starts both distributions: q~ = Normalize(q * hist / mean q)
    want = probs * hist / probs.mean(0)
    want = want / want.sum(1, keepdim=True)
    assert torch.allclose(aligned.softmax(1), want, atol=1e-5)
    assert torch.equal(m.da_p_model, torch.zeros(3))          # not yet: the step is not taken
    m.after_optimizer_step(0.1)
    assert torch.allclose(m.da_p_model, probs.mean(0)) and torch.allclose(m.da_p_target, hist)
    assert {"da_p_model", "da_p_target"} <= set(m.state_dict())


@pytest.mark.parametrize("name", ["flexmatch", "freematch", "freematch+dist_align"])
def test_threshold_state_survives_kill_and_resume_bit_for_bit(name, tmp_path):
    from selfsup.semisupervised import train_semisup
    from selfsup.train.checkpoint import load_checkpoint

    name, _, da = name.partition("+")
    over = [f"method.name={name}", "train.steps=12", "train.eval_every=6",
            "train.checkpoint_every=6", "train.progress=false", "method.threshold=0.2"]
    cfg = load_config("fixmatch_digits", over + (["method.dist_align=true"] if da else []))
    a, sa = train_semisup(cfg, tmp_path / "a")
    _, partial = train_semisup(cfg, tmp_path / "b", stop_after=6)
    assert partial == {"stopped_at": 6}
    b, sb = train_semisup(cfg, tmp_path / "b")
    ka = load_checkpoint(a / "checkpoints" / "last.pt")["model"]
    kb = load_checkpoint(b / "checkpoints" / "last.pt")["model"]
    state = ["selected"] if name == "flexmatch" else ["time_p", "p_model", "label_hist"]
    state += ["da_p_model", "da_p_target"] if da else []
    for k in state:
        assert torch.equal(ka[k], kb[k]), k
    for k in ka:
        assert torch.equal(ka[k], kb[k]), k
    if name == "flexmatch":   # the memory was written: some images have a confident label
        assert (ka["selected"] >= 0).any()
    else:                     # the EMAs moved from their uniform start
        assert ka["time_p"].item() != pytest.approx(0.1)
    rows = [json.loads(r) for r in (a / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r.get("kind") == "train"]
    # pseudo-label accuracy against the hidden true labels is logged
    assert train_rows and all("pl_acc" in r and 0 <= r["pl_acc"] <= 1 for r in train_rows)
    assert sa["test_acc_final"] == sb["test_acc_final"]


def test_freematch_threshold_state_moves_under_bfloat16_autocast():
    """Under bf16 autocast the weak logits are bfloat16; the EMAs must still move as in float32
    (they once were cast to bfloat16 and stalled: tau stuck at 0.25, p~ and h at 1/C)."""
    cls = METHODS.get("freematch")
    torch.manual_seed(0)
    runs = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        m = cls(backbones.create("convnet", width=0.25), cls.Config(num_classes=10))
        gen = torch.Generator().manual_seed(3)
        for _ in range(1500):
            w = torch.randn(32, 10, generator=gen) * 4
            w[:, 0] += 2.0                      # an unbalanced model: p~ must leave 1/C
            m.unlabeled_loss(w.to(dtype), torch.randn(32, 10).to(dtype), None, 0)
            m.after_optimizer_step(0.5)
        runs[name] = m
    a, b = runs["fp32"], runs["bf16"]
    assert b.time_p.dtype == torch.float32 and float(a.time_p) > 0.5
    assert abs(float(a.time_p) - float(b.time_p)) < 2e-3
    assert torch.allclose(a.p_model, b.p_model, atol=2e-3)
    assert torch.allclose(a.label_hist, b.label_hist, atol=5e-3)
    assert float(b.p_model[0]) > 0.15          # not stuck at 1/C
