"""Semi-supervised losses and schedules as pure functions (shapes in the docstrings).

References: Lee (2013) Pseudo-Label; Oliver et al. (2018) thresholded pseudo-labelling baseline;
Sohn et al. (2020) FixMatch; Hinton et al. (2015) distillation; Xie et al. (2020) UDA;
Pham et al. (2021) Meta Pseudo Labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    with torch.no_grad():
        probs = logits_target.detach().float().softmax(dim=1)
        conf, target = probs.max(dim=1)
        mask = (conf >= threshold).float()
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
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    p_t = F.softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * t * t


def soft_target_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with soft targets: mean_i -sum_c targets[i,c] log softmax(logits)[i,c].
    Shapes [N, C]; rows of ``targets`` sum to 1 (one-hot rows give ordinary CE)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def uda_loss(logits_weak: torch.Tensor, logits_strong: torch.Tensor, temperature: float = 0.7,
             threshold: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
    """UDA's consistency loss (Xie et al., 2020) as used by Meta Pseudo Labels: targets are the
    weak view's softmax sharpened with ``temperature`` (detached), kept where the (unsharpened)
    confidence is >= ``threshold``; soft CE against the strong view, averaged over all samples.
    Shapes [N, C]; returns (loss, mask)."""
    with torch.no_grad():
        conf = logits_weak.detach().float().softmax(dim=1).max(dim=1).values
        target = (logits_weak.detach().float() / temperature).softmax(dim=1)
        mask = (conf >= threshold).float()
    ce = -(target * F.log_softmax(logits_strong, dim=1)).sum(dim=1)
    return (ce * mask).mean(), mask


def mpl_feedback(loss_labeled_old: torch.Tensor, loss_labeled_new: torch.Tensor) -> torch.Tensor:
    """Meta Pseudo Labels' teacher feedback (Pham et al., 2021, Eq. 12 / App. A.1):
    h = eta_S (grad L_l(theta'_S))^T grad CE(y_hat, S(x_u; theta_S)), whose first-order Taylor
    estimate is the drop in the student's labeled loss caused by its step on the pseudo-labels:
    h = L_l(old student) - L_l(new student). h > 0 (the pseudo-labels helped) makes the teacher
    loss h * CE(y_hat, T(x_u)) *reinforce* y_hat. (kekmodel/MPL-pytorch uses new - old.)"""
    return (loss_labeled_old - loss_labeled_new).detach()
