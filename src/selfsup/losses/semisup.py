"""Semi-supervised losses and schedules as pure functions (shapes in the docstrings).

References: Lee (2013) Pseudo-Label; Oliver et al. (2018) thresholded pseudo-labelling baseline;
Sohn et al. (2020) FixMatch; Hinton et al. (2015) distillation; Xie et al. (2020) UDA;
Pham et al. (2021) Meta Pseudo Labels; Berthelot et al. (2020) ReMixMatch (distribution
alignment); Zhang et al. (2021) FlexMatch; Wang et al. (2023) FreeMatch.
Losses compute in their input's precision (float64 checks run in float64); half-precision inputs
(what bf16/fp16 autocast hands them) are computed in float32, as the joint-embedding losses are:
a softmax, a 0.95 threshold or an EMA with momentum 0.999 is not representable in bfloat16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._precision import at_least_float32 as f32


def lee2013_alpha(epoch: float, alpha_f: float = 3.0, t1: float = 100.0,
                  t2: float = 600.0) -> float:
    """Lee (2013), Eq. 16: the weight of the unlabeled loss at ``epoch``:
    0 before T1, alpha_f * (t - T1) / (T2 - T1) between T1 and T2, alpha_f after T2."""
    if epoch < t1:
        return 0.0
    if epoch < t2:
        return alpha_f * (epoch - t1) / (t2 - t1)
    return alpha_f


def linear_rampup(progress: float, end: float = 0.4) -> float:
    """The frameworks' warm-up (TorchSSL/USB ``unsup_warmup``): progress / end, capped at 1."""
    if end <= 0:
        return 1.0
    return min(1.0, max(0.0, progress / end))


def pseudo_label_loss(logits_target: torch.Tensor, logits_pred: torch.Tensor,
                      threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo-label cross-entropy.

    logits_target: [N, C], the model's predictions that make the labels (detached here);
    logits_pred:   [N, C], the predictions trained on them (the same tensor for Lee 2013, the
                   strong view for FixMatch).
    Returns (loss, mask): mask[i] = 1 when max softmax(logits_target[i]) >= threshold; loss is
    the masked CE averaged over **all** N samples (FixMatch, Sec. 3.2), not over the kept ones.
    """
    logits_target, logits_pred = f32(logits_target), f32(logits_pred)
    with torch.no_grad():
        probs = logits_target.detach().softmax(dim=1)
        conf, target = probs.max(dim=1)
        mask = (conf >= threshold).to(probs.dtype)
    ce = F.cross_entropy(logits_pred, target, reduction="none")
    return (ce * mask).mean(), mask


def fixmatch_loss(logits_weak: torch.Tensor, logits_strong: torch.Tensor,
                  threshold: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's unlabeled loss (Sohn et al., 2020, Eq. 4):
    (1/(mu B)) sum_b 1[max q_b >= tau] H(argmax q_b, p(y | strong(u_b))), q = softmax(weak logits).

    logits_weak, logits_strong: [mu B, C]. Returns (loss, mask [mu B])."""
    return pseudo_label_loss(logits_weak, logits_strong, threshold)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float = 4.0) -> torch.Tensor:
    """Hinton et al. (2015): T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch.
    The T^2 keeps the gradient's scale independent of T. Shapes [N, C]."""
    t = temperature
    student_logits, teacher_logits = f32(student_logits), f32(teacher_logits)
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    p_t = F.softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * t * t


def soft_target_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with soft targets: mean_i -sum_c targets[i,c] log softmax(logits)[i,c].
    Shapes [N, C]; rows of ``targets`` sum to 1 (one-hot rows give ordinary CE)."""
    logits, targets = f32(logits), f32(targets)
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def uda_loss(logits_weak: torch.Tensor, logits_strong: torch.Tensor, temperature: float = 0.7,
             threshold: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
    """UDA's consistency loss (Xie et al., 2020) as used by Meta Pseudo Labels: targets are the
    weak view's softmax sharpened with ``temperature`` (detached), kept where the largest
    *sharpened* probability is >= ``threshold`` (as google-research/meta_pseudo_labels
    ``build_uda_cross_entropy`` does); soft CE against the strong view, averaged over all samples.
    Shapes [N, C]; returns (loss, mask)."""
    logits_weak, logits_strong = f32(logits_weak), f32(logits_strong)
    with torch.no_grad():
        target = (logits_weak.detach() / temperature).softmax(dim=1)
        mask = (target.max(dim=1).values >= threshold).to(target.dtype)
    ce = -(target * F.log_softmax(logits_strong, dim=1)).sum(dim=1)
    return (ce * mask).mean(), mask


def mpl_feedback(loss_labeled_old: torch.Tensor, loss_labeled_new: torch.Tensor) -> torch.Tensor:
    """Meta Pseudo Labels' teacher feedback (Pham et al., 2021, Eq. 12 / App. A.1):
    h = eta_S (grad L_l(theta'_S))^T grad CE(y_hat, S(x_u; theta_S)), whose first-order Taylor
    estimate is the drop in the student's labeled loss caused by its step on the pseudo-labels:
    h = L_l(old student) - L_l(new student). h > 0 (the pseudo-labels helped) makes the teacher
    loss h * CE(y_hat, T(x_u)) *reinforce* y_hat. (kekmodel/MPL-pytorch uses new - old.)"""
    return (loss_labeled_old - loss_labeled_new).detach()


def flexmatch_thresholds(selected: torch.Tensor, num_classes: int, threshold: float = 0.95,
                         warmup: bool = True) -> torch.Tensor:
    """FlexMatch's class-wise thresholds (Zhang et al., 2021, Eq. 6-11).

    selected: [N] long, for every image of the unlabeled pool the last pseudo-label whose
    confidence passed ``threshold`` (-1: none yet). sigma(c) = #{n: selected[n] = c} is class c's
    learning effect; beta(c) = sigma(c) / max(max_c sigma, N - sum_c sigma) with the threshold
    warm-up (``warmup``: the unused images count as a class, so early thresholds stay low) or
    sigma(c) / max_c sigma without; T(c) = M(beta(c)) * threshold with the convex mapping
    M(x) = x / (2 - x). Returns [num_classes]."""
    used = selected[selected >= 0]
    sigma = torch.bincount(used, minlength=num_classes)[:num_classes].to(torch.float64)
    unused = float((selected < 0).sum())
    denom = max(float(sigma.max()) if len(sigma) else 0.0, unused if warmup else 0.0)
    beta = sigma / denom if denom > 0 else torch.zeros_like(sigma)
    return (threshold * beta / (2.0 - beta)).to(torch.get_default_dtype())


def class_threshold_loss(logits_weak: torch.Tensor, logits_strong: torch.Tensor,
                         thresholds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's loss with a threshold per predicted class (FlexMatch, FreeMatch):
    (1/N) sum_n 1[max q_n >= T(argmax q_n)] CE(argmax q_n, strong_n), q = softmax(weak logits).
    Shapes [N, C] and [C]; returns (loss, mask [N])."""
    logits_weak, logits_strong = f32(logits_weak), f32(logits_strong)
    with torch.no_grad():
        probs = logits_weak.detach().softmax(dim=1)
        conf, target = probs.max(dim=1)
        mask = (conf >= thresholds.to(conf.dtype)[target]).to(conf.dtype)
    ce = F.cross_entropy(logits_strong, target, reduction="none")
    return (ce * mask).mean(), mask


def freematch_ema(time_p: torch.Tensor, p_model: torch.Tensor, label_hist: torch.Tensor,
                  probs_weak: torch.Tensor, momentum: float = 0.999
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FreeMatch's self-adaptive threshold state after one batch (Wang et al., 2023, Eq. 5-7):
    tau_t = m tau_{t-1} + (1 - m) mean_b max q_b (global), p~_t = m p~_{t-1} + (1 - m) mean_b q_b
    (local, per class), h_t = m h_{t-1} + (1 - m) hist(argmax q_b) (pseudo-label histogram,
    for the fairness loss). Initial values: tau = 1/C, p~ = h = 1/C. probs_weak [N, C]."""
    m = momentum
    q = f32(probs_weak.detach())
    time_p, p_model, label_hist = f32(time_p), f32(p_model), f32(label_hist)
    hist = torch.bincount(q.argmax(dim=1), minlength=q.shape[1]).to(q.dtype)
    return (m * time_p + (1 - m) * q.max(dim=1).values.mean(),
            m * p_model + (1 - m) * q.mean(dim=0),
            m * label_hist + (1 - m) * hist / hist.sum())


def freematch_thresholds(time_p: torch.Tensor, p_model: torch.Tensor) -> torch.Tensor:
    """tau_t(c) = MaxNorm(p~_t)(c) * tau_t (FreeMatch, Eq. 8). Returns [C]."""
    return p_model / p_model.max() * time_p


def freematch_fairness_loss(logits_strong: torch.Tensor, mask: torch.Tensor,
                            p_model: torch.Tensor, label_hist: torch.Tensor) -> torch.Tensor:
    """FreeMatch's self-adaptive fairness loss (Eq. 11): L_f = -H(SumNorm(p~/h), SumNorm(p_s/h_s))
    = sum_c a_c log b_c, with a = SumNorm(p~_t / h_t) from the EMA state and, over the strong views
    that pass the mask, p_s their mean softmax and h_s the histogram of their argmax
    (b = SumNorm(p_s / h_s); classes with no prediction get weight 0). Zero when no view passes."""
    keep = mask.bool()
    logits_strong = f32(logits_strong)
    if not keep.any():
        return logits_strong.sum() * 0.0
    prob_s = logits_strong[keep].softmax(dim=1)
    c = prob_s.shape[1]
    hist_s = torch.bincount(prob_s.detach().argmax(dim=1), minlength=c).to(prob_s.dtype)
    hist_s = hist_s / hist_s.sum()

    def inv(t):
        return torch.where(t > 0, 1.0 / t.clamp_min(1e-30), torch.zeros_like(t))

    a = p_model.detach().to(prob_s.dtype) * inv(label_hist.detach().to(prob_s.dtype))
    a = a / a.sum()
    b = prob_s.mean(dim=0) * inv(hist_s)
    b = b / b.sum()
    return (a * torch.log(b + 1e-12)).sum()


def class_distribution_ema(running: torch.Tensor, batch_dist: torch.Tensor,
                           momentum: float) -> torch.Tensor:
    """The running class distribution of distribution alignment after one batch:
    m running + (1 - m) batch_dist, or ``batch_dist`` itself while ``running`` is all zeros (no
    batch seen yet; USB's ``DistAlignEMAHook`` starts from the first batch the same way).
    batch_dist [C] (a batch's mean softmax, or its label histogram)."""
    batch_dist = f32(batch_dist.detach())
    running = f32(running).to(batch_dist.dtype)
    if not bool((running > 0).any()):
        return batch_dist.clone()
    return momentum * running + (1 - momentum) * batch_dist


def distribution_alignment(probs: torch.Tensor, p_model: torch.Tensor, p_target: torch.Tensor,
                           eps: float = 1e-6) -> torch.Tensor:
    """ReMixMatch's distribution alignment (Berthelot et al., 2020, Sec. 3.2):
    q~ = Normalize(q * p(y) / p~(y)), with p~ the running mean of the model's predictions on
    unlabeled images and p(y) the class distribution of the labeled ones; ``eps`` as USB's hook.
    probs [N, C] (rows sum to 1), p_model and p_target [C]. Returns [N, C], rows summing to 1."""
    q = f32(probs.detach())
    ratio = (f32(p_target).to(q.dtype) + eps) / (f32(p_model).to(q.dtype) + eps)
    aligned = q * ratio
    return aligned / aligned.sum(dim=1, keepdim=True)


def moving_baseline(baseline: torch.Tensor, value: torch.Tensor, rate: float = 0.01
                    ) -> torch.Tensor:
    """The moving average that Meta Pseudo Labels subtracts from its feedback (official code:
    ``moving_dot_product -= 0.01 * (moving_dot_product - dot_product)``): b + rate (value - b)."""
    return baseline + rate * (value.detach() - baseline)
