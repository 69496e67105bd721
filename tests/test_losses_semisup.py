import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses.semisup import (fixmatch_loss, kd_loss, lee2013_alpha, linear_rampup,
                                    mpl_feedback, pseudo_label_loss, soft_target_loss, uda_loss)


@pytest.mark.parametrize("epoch,expected", [(0, 0.0), (99.9, 0.0), (100, 0.0), (350, 1.5),
                                            (599, 3.0 * 499 / 500), (600, 3.0), (1000, 3.0)])
def test_lee2013_alpha_breakpoints(epoch, expected):
    assert lee2013_alpha(epoch, alpha_f=3.0, t1=100, t2=600) == pytest.approx(expected)


def test_linear_rampup():
    assert [linear_rampup(p, 0.4) for p in (0, 0.2, 0.4, 0.9)] == pytest.approx([0, 0.5, 1, 1])
    assert linear_rampup(0.0, 0.0) == 1.0


def test_fixmatch_mask_and_loss_on_hand_built_batch():
    # 4 unlabeled samples, 3 classes; weak logits give confidences 0.98, 0.6, 0.96, 0.34
    weak_probs = torch.tensor([[0.98, 0.01, 0.01], [0.2, 0.6, 0.2],
                               [0.02, 0.02, 0.96], [0.33, 0.34, 0.33]])
    logits_weak = weak_probs.log()
    logits_strong = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0],
                                  [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    loss, mask = fixmatch_loss(logits_weak, logits_strong, threshold=0.95)
    assert mask.tolist() == [1.0, 0.0, 1.0, 0.0]
    # CE(class 0 | [2,0,0]) and CE(class 2 | [0,1,0]), divided by all 4 samples
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 2))
    ce2 = -math.log(1 / (2 + math.e))
    assert loss.item() == pytest.approx((ce0 + ce2) / 4, rel=1e-6)


def test_fixmatch_gradient_flows_only_through_strong_view():
    lw = torch.randn(8, 5, requires_grad=True)
    ls = torch.randn(8, 5, requires_grad=True)
    loss, _ = fixmatch_loss(lw * 10, ls, threshold=0.0)
    loss.backward()
    assert lw.grad is None or torch.all(lw.grad == 0)
    assert ls.grad.abs().sum() > 0


def test_lee2013_pseudo_label_no_threshold_is_entropy_like_ce():
    logits = torch.randn(6, 4)
    loss, mask = pseudo_label_loss(logits, logits, threshold=0.0)
    assert mask.sum() == 6
    assert loss.item() == pytest.approx(F.cross_entropy(logits, logits.argmax(1)).item(), rel=1e-6)


def test_kd_loss_equals_closed_form():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    for temp in (1.0, 2.0, 4.0):
        ps, pt = F.softmax(s / temp, 1), F.softmax(t / temp, 1)
        kl = sum(float((pt[i] * (pt[i].log() - ps[i].log())).sum()) for i in range(5)) / 5
        assert kd_loss(s, t, temp).item() == pytest.approx(temp ** 2 * kl, rel=1e-5)
    assert kd_loss(t, t, 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_gradient_scale_is_invariant_to_temperature():
    g = torch.Generator().manual_seed(1)
    t_logits = torch.randn(16, 10, generator=g)
    s0 = torch.randn(16, 10, generator=g)

    def grad_norm(temp, scale=True):
        s = s0.clone().requires_grad_(True)
        loss = kd_loss(s, t_logits, temp)
        if not scale:
            loss = loss / temp ** 2
        loss.backward()
        return s.grad.norm().item()

    # with T^2 the gradient tends to a constant as T grows; without it it falls as 1/T^2
    assert grad_norm(20.0) == pytest.approx(grad_norm(40.0), rel=0.02)
    assert grad_norm(20.0, scale=False) / grad_norm(40.0, scale=False) == pytest.approx(4.0, rel=0.02)


def test_soft_target_loss_with_one_hot_is_ce():
    logits, y = torch.randn(7, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    assert soft_target_loss(logits, F.one_hot(y, 3).float()).item() == pytest.approx(
        F.cross_entropy(logits, y).item(), rel=1e-6)


def test_uda_loss_mask_and_sharpening():
    lw = torch.tensor([[3.0, 0.0], [0.1, 0.0]])
    ls = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss, mask = uda_loss(lw, ls, temperature=0.5, threshold=0.6)
    assert mask.tolist() == [1.0, 0.0]
    q = F.softmax(lw[0] / 0.5, 0)
    expected = -(q * F.log_softmax(ls[0], 0)).sum().item() / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("pseudo_correct", [True, False])
def test_mpl_teacher_update_has_the_papers_sign(pseudo_correct):
    """A student step on pseudo-labels that agree with the labeled data lowers the labeled loss,
    h > 0, and the teacher's step on h * CE(y_hat, T(x_u)) raises the teacher's probability of
    y_hat; wrong pseudo-labels give h < 0 and the teacher moves away from them."""
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[3.0, 0.0], [-3.0, 0.0]])
    y_l = torch.tensor([0, 1] * 8)
    x_l = centers[y_l] + 0.3 * torch.randn(16, 2, generator=g)
    x_u = centers[y_l] + 0.3 * torch.randn(16, 2, generator=g)
    y_hat = y_l if pseudo_correct else 1 - y_l
    student = torch.nn.Linear(2, 2)
    teacher = torch.nn.Linear(2, 2)
    with torch.no_grad():
        student.weight.zero_(), student.bias.zero_(), teacher.weight.zero_(), teacher.bias.zero_()
    old = F.cross_entropy(student(x_l), y_l)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    F.cross_entropy(student(x_u), y_hat).backward()
    opt.step()
    new = F.cross_entropy(student(x_l), y_l)
    h = mpl_feedback(old, new)
    assert (h > 0) == pseudo_correct
    p_before = F.softmax(teacher(x_u), 1).gather(1, y_hat[:, None]).mean()
    t_opt = torch.optim.SGD(teacher.parameters(), lr=0.5)
    (h * F.cross_entropy(teacher(x_u), y_hat)).backward()
    t_opt.step()
    p_after = F.softmax(teacher(x_u), 1).gather(1, y_hat[:, None]).mean()
    assert (p_after > p_before) == pseudo_correct
