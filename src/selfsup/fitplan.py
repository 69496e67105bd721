"""The recipe ``selfsup fit`` follows and the two decisions it makes on the user's behalf:
what to train (input size, backbone, methods, precision, steps planned from the time budget and
the step times measured on this machine) and which of its two candidate models to keep
(``decide``). Pure planning: nothing here reads images or writes files."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import RunConfig, apply_overrides, load_config
from .augment.resize import progressive_side, resize_views
from .train.loop import autocast_for, channels_last_views, cpu_has_fast_bf16


@dataclass
class Choices:
    device: str
    image_size: int
    backbone: str
    width: float
    ssl_method: str
    ssl_steps: int
    ssl_batch: int
    semisup_method: str
    steps: int
    batch: int
    uratio: float
    val_fraction: float
    reasons: dict = field(default_factory=dict)
    precision: str = "auto"    # train.precision of both stages
    labels_only_steps: int = 0   # the labels-only candidate's steps (0: the same as ``steps``)
    ema_teacher: bool = False    # method.ema_teacher of the FixMatch-family stage 2
    flip_tta: bool = False       # eval.flip_tta of stage 2 (off where augment.flip_p is 0)
    eval_reserve_s: float = 0.0  # of the budget kept for the work after training (measured speed)


# Of the training time under --budget, the share of SimCLR pretraining (0.45 until 2026-12-01).
# On CIFAR-10 (500 labels, seed 1) stage 2 from the SimCLR encoder gained little from more time
# (FreeMatch with the EMA teacher: 56.0% after 224 s, 56.9% after 357 s) while FreeMatch from
# scratch given the pretraining's time too reached 58.6% in 496 s (BENCHMARKS.md 6): pretraining
# is worth less than its minutes to the classifier. It stays because its encoder is what
# recognises photos of unknown classes (section 11.2: kNN AUROC 0.72 in its features vs 0.63 in
# the classifier's, with 300 SimCLR steps; 0.2 of 10 minutes gave 335-430 steps here).
SSL_SHARE = 0.2
SSL_SHARE_LABELS_ONLY = 0.45   # no unlabeled photos: the measurements above do not apply

# FreeMatch's momentum for its threshold state (tau_t, p~_t, the label histogram). The paper's
# 0.999 is a time constant of 1,000 steps, 0.1% of its 2^20-step runs but ~45% of fit's
# 2,000-step stage 2, where the threshold then lags the model's confidence and nearly every
# pseudo-label is kept early (mask 100% -> 88%, tau 0.21 -> 0.69). 0.99 (100 steps) lets it
# follow: tau 0.54 -> 0.81, mask 79-86%, kept pseudo-labels right 47% -> 64% (vs 43% -> 63%),
# +1.1 points on CIFAR-10 (57.8 -> 58.9%, seed 1, same encoder and steps; BENCHMARKS.md 6).
FREEMATCH_EMA_P = 0.99

# The labeled images held out for validation (choosing between the two candidates, calibrating
# predict's flag and the unknown-photo threshold): 20% of them up to VAL_IMAGES images, then
# never more than that or 10%, whichever is larger. What gives those uses their precision is the
# held-out count, not the share, and every label held out is one the classifier does not learn
# from: on CIFAR-10 with 500 labels, 450 training labels instead of 400 gave +1.6 points (57.8 ->
# 59.4%, seed 1, same SimCLR encoder and steps; BENCHMARKS.md 6).
VAL_SHARE, VAL_SHARE_LARGE, VAL_IMAGES = 0.2, 0.1, 50


def validation_fraction(n_labeled: int) -> float:
    """The share of ``n_labeled`` labeled images to hold out (see VAL_IMAGES)."""
    if n_labeled <= 0:
        return 0.0
    held = min(VAL_SHARE * n_labeled, max(VAL_IMAGES, VAL_SHARE_LARGE * n_labeled))
    return held / n_labeled


BUDGET_USE = 0.95         # of --budget planned for training; the rest: evaluation and the report
REPORT_RESERVE_S = 8.0
MIN_STEPS_TO_REPLAN = 50   # stage 1 must run this many steps for its speed to re-plan stage 2


def evaluation_reserve(c: "Choices", s_semi: float, n_test: int, n_val: int) -> float:
    """Seconds for the forward passes after training, from the measured stage-2 step: the test
    images twice (the headline, the report) and the validation images about six times (the
    candidates' comparison, calibration, the report), each twice with flip averaging. A
    training pass costs about three forward passes; a FixMatch-family step trains on B + uratio
    B images and passes uratio B more forward only with the EMA teacher (else trains on B + 2
    uratio B). On a 2-core EPYC without bfloat16 (0.78 s per step) the 10,000 CIFAR-10 test
    images made the fixed 38 s reserve 57 s (2026-12-02)."""
    if c.semisup_method == "supervised":
        forwards = 3.0 * c.batch
    elif c.ema_teacher:
        forwards = c.batch * (3.0 * (1 + c.uratio) + c.uratio)
    else:
        forwards = 3.0 * c.batch * (1 + 2 * c.uratio)
    passes = (2 * n_test + 6 * n_val) * (2 if c.flip_tta else 1)
    return passes * s_semi / forwards


def ssl_share(c: "Choices") -> float:
    """The share of the training time that goes to self-supervised pretraining."""
    return SSL_SHARE_LABELS_ONLY if c.semisup_method == "supervised" else SSL_SHARE


def stage2_steps(seconds: float, s_semi: float, c: "Choices",
                 with_labels_only: bool = True) -> int:
    """Semi-supervised steps that fit ``seconds`` (together with the labels-only candidate of the
    same length, whose step costs about 1 / (1 + 2 uratio) of a FixMatch step, 1 / (1 + 4 uratio
    / 3) with the EMA teacher, unless ``with_labels_only`` is false: it has already run)."""
    # a labels-only step trains on the labeled batch B alone; a FixMatch-family step trains on
    # B + 2 uratio B images, or on B + uratio B with the EMA teacher's forward-only pass over
    # uratio B weak views (about a third of a training pass each)
    cost = 1.0 + (c.uratio + c.uratio / 3.0 if c.ema_teacher else 2.0 * c.uratio)
    extra = 1.0 / cost if c.semisup_method != "supervised" and with_labels_only else 0.0
    return max(10, int(seconds / (s_semi * (1.0 + extra))))


def replanned_steps(c: "Choices", ssl_steps_run: int, ssl_seconds: float,
                    remaining: float, with_labels_only: bool = True) -> tuple[int, str]:
    """Stage 2's steps for the ``remaining`` seconds, from the step times measured before stage 1
    (``c.reasons["measured_s_per_step"]``) scaled by how much slower stage 1 really ran (data
    path, evaluations included), and the reason in words. ``with_labels_only=False``: the
    labels-only candidate has run already; the semi-supervised candidate gets all of it."""
    measured = c.reasons.get("measured_s_per_step") or {}
    real = ssl_seconds / max(1, ssl_steps_run)
    ratio = real / measured["ssl"] if measured.get("ssl") else 1.0
    if ssl_steps_run < MIN_STEPS_TO_REPLAN:
        # a few steps' time is mostly start-up and evaluation, not the step (a 10-step stage
        # 1 once planned 713 steps where 900 fitted and left a quarter of the budget unused)
        ratio = 1.0
    # a faster stage 1 does not make stage 2 faster than measured: stage 2 also evaluates on
    # validation (then also on test) and updates an EMA model (bf16, 2026-11-30: stage 1 ran at
    # 0.74x its measurement, stage 2 at 1.03x; scaled down, 1,108 steps were planned where 810
    # fitted, and the clock cut the learning-rate schedule at 73%)
    ratio = max(1.0, ratio)
    steps = stage2_steps(max(5.0, remaining), (measured.get("semi") or real) * ratio, c,
                         with_labels_only)
    return steps, (f"; stage 1 ran at {real:.3f} s per step ({real / measured['ssl']:.2f}x the "
                   f"measurement, scaled by {ratio:.2f}): {steps} steps for the {remaining:.0f} s "
                   f"left" if measured.get("ssl") else f"; {steps} steps for the "
                   f"{remaining:.0f} s left")


def choose(n_labeled: int, n_unlabeled: int, side: int, device: str, budget_s: float | None,
           step_seconds=None, spent=lambda: 0.0, n_test: int = 0, n_val: int = 0) -> Choices:
    """The recipe. ``step_seconds(choices)`` -> (seconds per SSL step, per semi-supervised step)
    measures the two steps on this machine when a budget is given; ``budget_s`` is the training
    time and ``spent()`` what has been used of it so far (decoding, measuring); ``n_test`` and
    ``n_val`` images are evaluated after training (``evaluation_reserve``)."""
    r: dict[str, str] = {}
    gpu = device.startswith("cuda")
    if side <= 48:
        size = 32
        r["image_size"] = f"images are small (median shorter side {side} px): train at 32 px"
    elif gpu:
        size = 96
        r["image_size"] = f"median shorter side {side} px, GPU: 96 px (STL-10 scale)"
    else:
        size = 64
        r["image_size"] = f"median shorter side {side} px, CPU: 64 px keeps training affordable"
    if gpu:
        backbone, width = "resnet18", 1.0
        r["backbone"] = "GPU: ResNet-18"
    else:
        backbone, width = "convnet", 1.0
        r["backbone"] = ("CPU: the small convnet (0.39M parameters; SimCLR on a full-width "
                         "ResNet-18 runs ~18x slower on 2 CPU cores at 32 px, BENCHMARKS.md 1.2)")
    if gpu:
        precision = "auto"
        r["precision"] = "GPU: bfloat16 autocast"
    elif cpu_has_fast_bf16():
        precision = "bf16"
        r["precision"] = ("this CPU multiplies bfloat16 in hardware (AMX / AVX512-BF16): bfloat16 "
                          "autocast, ~1.6x the steps of float32 in the same time on the convnet "
                          "(BENCHMARKS.md sections 1 and 6; train.precision=fp32 to turn it off)")
    else:
        precision = "fp32"
        r["precision"] = "CPU without bfloat16 hardware: float32"
    total = n_labeled + n_unlabeled
    ssl_batch = min(256, max(16, total // 4))
    batch = min(64, max(4, n_labeled // 4))
    semisup = "freematch" if n_unlabeled >= n_labeled else "supervised"
    r["ssl_method"] = ("SimCLR: the best self-supervised method of the CPU protocol "
                       "(BENCHMARKS.md section 3)")
    r["semisup_method"] = (
        f"FreeMatch from the SimCLR encoder ({n_unlabeled} unlabeled images to learn from): on "
        f"the semi-supervised protocol v2 (BENCHMARKS.md section 4.1, 3 seeds) FreeMatch and "
        f"FlexMatch beat FixMatch and labels-only at 250 labels on every seed (FreeMatch +7.2 "
        f"over labels-only on average, FlexMatch +6.3); at 40 labels FreeMatch was ahead of "
        f"FlexMatch on all 3 seeds (+4.0 over labels-only on average, FlexMatch +0.8, FixMatch "
        f"below labels-only); at 4x the steps (section 4.2, 3 seeds) it stays ahead on every "
        f"seed (58.9% vs FixMatch 55.5%, labels-only 45.6%); a labels-only candidate is trained "
        f"beside it and kept only if it leads on validation by more than one standard error"
        if semisup != "supervised" else
        "fine-tuning the SimCLR encoder on the labels (no unlabeled images)")
    if semisup == "freematch":
        r["freematch_ema_p"] = (f"FreeMatch's threshold state follows the model with momentum "
                                f"{FREEMATCH_EMA_P} (the paper's 0.999 lags for ~1,000 steps, half "
                                f"of a short run: +1.1 points on CIFAR-10, BENCHMARKS.md 6)")
    uratio = 4.0 if semisup != "supervised" else 0.0
    c = Choices(device, size, backbone, width, "simclr", 0, ssl_batch, semisup, 0, batch, uratio,
                0.2, r, precision)
    if semisup in ("fixmatch", "flexmatch", "freematch"):
        c.ema_teacher = True
        r["ema_teacher"] = ("the EMA model labels the unlabeled photos (EMAN): a step skips the "
                            "backward pass over their weak views, 1.45x the steps in the same "
                            "time, level or ahead at equal time on CIFAR-10 (BENCHMARKS.md 6)")
    c.flip_tta = True
    r["flip_tta"] = ("the classifier's answer is the mean of its logits for the photo and its "
                     "mirror image (it was trained with random mirroring, so both are the same "
                     "photo to it; measured in BENCHMARKS.md 6); off with augment.flip_p=0 "
                     "or eval.flip_tta=false")
    if budget_s is None or step_seconds is None:
        c.ssl_steps = int(np.clip(30 * total / ssl_batch, 100, 5000))
        c.steps = int(np.clip(50 * n_labeled / batch, 100, 3000))
        r["steps"] = (f"no budget: ~30 epochs of pretraining ({c.ssl_steps} steps) and "
                      f"{c.steps} semi-supervised steps")
    else:
        s_ssl, s_semi = step_seconds(c)
        c.eval_reserve_s = round(evaluation_reserve(c, s_semi, n_test, n_val), 1)
        r["eval_reserve_s"] = (f"{c.eval_reserve_s} s of the budget kept for evaluating "
                               f"{n_test} test and {n_val} validation images after training "
                               f"(from the measured step{', flip-averaged' if c.flip_tta else ''})")
        # what is left after measuring, decoding and the evaluations after training
        usable = max(10.0, budget_s - spent() - c.eval_reserve_s)
        r["measured_s_per_step"] = {"ssl": s_ssl, "semi": s_semi}
        share = ssl_share(c)
        c.ssl_steps = max(10, int(share * usable / s_ssl))
        c.steps = stage2_steps((1 - share) * usable, s_semi, c)
        r["steps"] = (f"budget: {usable:.0f} s of training left after measuring "
                      f"{s_ssl:.3f} s per pretraining step and {s_semi:.3f} s per {semisup} "
                      f"step on this machine; {100 * share:.0f}% to pretraining, the rest to "
                      f"{semisup}" + (" and the labels-only candidate (same steps)"
                                      if semisup != "supervised" else "")
                      + "; re-planned from the measured pretraining speed before stage 2")
    return c


def time_step(cfg: RunConfig, x: torch.Tensor, labels: torch.Tensor, n: int = 3) -> float:
    """Seconds per training step of cfg's method on the batch x (after one warm-up step), in
    the memory layout the training loop uses (channels-last unless model.channels_last=false:
    timed in the default layout, the step measured 1.3-1.4x slower than fit's stages then ran:
    stage 1 at 0.72x, stage 2 at 0.75x its measurement, 2026-11-30). With progressive resizing
    (``train.progressive_side``) the step is timed at every side the schedule visits and the
    times are averaged with the share of steps at each side."""
    from .methods import BatchInfo
    from .pretrain import build_method

    torch.manual_seed(0)
    m = build_method(cfg)
    if cfg.model.channels_last:
        m.to(memory_format=torch.channels_last)
    semi = getattr(m, "semi_supervised", False)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-6)
    info = BatchInfo(torch.arange(len(x)), labels)
    amp = autocast_for(torch.device("cpu"), cfg.train.precision)   # the step is timed on the CPU
    full = int(x.shape[-1])
    tc = cfg.train
    shares = {full: 1.0}
    if tc.progressive_side:
        sides = [progressive_side((i + 0.5) / 200, tc.progressive_side, full,
                                  tc.progressive_until) for i in range(200)]
        shares = {v: sides.count(v) / len(sides) for v in sorted(set(sides))}
    total = 0.0
    for side, share in shares.items():
        times = []
        for i in range(n + 1):
            t0 = time.perf_counter()
            views = m.views(x, info) if semi else m.views(x)
            views = resize_views(views, side, full)
            if cfg.model.channels_last:
                views = channels_last_views(views)
            with amp:
                loss = m.training_step(views, 0.5, info).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            if i:
                times.append(time.perf_counter() - t0)
        total += share * float(np.median(times))
    return total


# How many standard errors labels-only must lead by on validation before the semi-supervised
# model is given up. Paired 0/1 differences on ~100 held-out images have a standard error of
# 3-5 points, so "keep whichever is ahead" discards a semi-supervised model that is 6 points
# better about one time in eight (2026-11-30: 53.9% on test dropped for 47.8% on a one-image
# validation difference), while on protocol v2 FreeMatch beat labels-only on 6 seeds of 6. One
# standard error keeps that loss near 1-2% and still drops a 7-points-worse model about two times
# in three (a normal approximation; tests/test_fit.py simulates both).
LABELS_ONLY_MARGIN_SE = 1.0


def decide(semi_correct: np.ndarray, lo_correct: np.ndarray, semi_name: str = "semi",
           n_boot: int = 2000) -> dict:
    """Keep the semi-supervised model unless labels-only is more accurate on the held-out images
    by more than ``LABELS_ONLY_MARGIN_SE`` standard errors of the paired difference; with that
    difference, its 95% bootstrap interval and the bootstrap probability that the
    semi-supervised model is the more accurate one."""
    a, b = np.asarray(semi_correct, float), np.asarray(lo_correct, float)
    d = a - b
    n = len(d)
    se = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    rng = np.random.default_rng(0)
    boots = d[rng.integers(0, n, (n_boot, n))].mean(1)
    lo, hi = (float(v) for v in np.percentile(boots, [2.5, 97.5]))
    p_semi = float((boots > 0).mean() + 0.5 * (boots == 0).mean())
    margin = LABELS_ONLY_MARGIN_SE * se
    kept = "labels_only" if d.mean() < -margin or (se == 0 and d.mean() < 0) else semi_name
    why = ("labels-only leads by more than " if kept == "labels_only" else
           "labels-only does not lead by more than ")
    return {"kept": kept, "val_images": n, "val_acc": {semi_name: float(a.mean()),
                                                       "labels_only": float(b.mean())},
            "difference": float(d.mean()), "difference_se": se, "difference_95ci": [lo, hi],
            "p_semi_better": p_semi, "margin": margin,
            "reason": (f"validation accuracy {a.mean():.3f} with unlabeled photos vs "
                       f"{b.mean():.3f} labels only on {n} held-out images (difference "
                       f"{d.mean():+.3f}, 95% CI {lo:+.3f} to {hi:+.3f}; semi-supervised better "
                       f"with probability {p_semi:.2f}); {why}{LABELS_ONLY_MARGIN_SE:g} standard "
                       f"error ({margin:.3f})")}



def _stage_configs(c: Choices, overrides, seed: int) -> tuple[RunConfig, RunConfig]:
    common = [f"model.backbone={c.backbone}", f"model.width={c.width}",
              f"data.image_size={c.image_size}", f"augment.size={c.image_size}",
              f"train.seed={seed}", f"train.device={c.device}",
              f"train.precision={c.precision}"]
    ssl = load_config(None, [f"method.name={c.ssl_method}", *common,
                             f"train.steps={c.ssl_steps}", f"train.batch_size={c.ssl_batch}",
                             f"train.checkpoint_every={max(1, c.ssl_steps // 4)}",
                             "optim.name=lars", "optim.lr=1.0", "optim.weight_decay=1e-5",
                             "method.temperature=0.2", "augment.scale_min=0.2",
                             "eval.knn_k=20", "eval.monitor=true", "eval.monitor_size=1000",
                             f"train.eval_every={max(1, c.ssl_steps // 5)}"])
    semi = load_config("fixmatch_cifar10_cpu",
                       [f"method.name={c.semisup_method}", *common, "data.dataset=folder",
                        f"train.steps={c.steps}", f"train.batch_size={c.batch}",
                        f"train.checkpoint_every={max(1, c.steps // 4)}",
                        f"train.eval_every={max(1, c.steps // 10)}", "data.test_split=",
                        "data.split=", "data.labels_per_class=", "data.val_per_class=0",
                        "train.threads=0", "eval.test_curve=false"]
                       # method.name drops the preset's method keys: uratio is given again
                       + ([f"method.uratio={c.uratio or 4.0}"]
                          if c.semisup_method != "supervised" else []))
    if c.semisup_method == "freematch":
        semi = apply_overrides(semi, [f"method.ema_p={FREEMATCH_EMA_P}"])
    if c.ema_teacher and c.semisup_method in ("fixmatch", "flexmatch", "freematch"):
        semi = apply_overrides(semi, ["method.ema_teacher=true"])
    if c.flip_tta and c.semisup_method != "sla":   # SLA keeps its own joint-head inference
        semi = apply_overrides(semi, ["eval.flip_tta=true"])
    if overrides:
        ssl, semi = apply_overrides(ssl, list(overrides)), apply_overrides(semi, list(overrides))
    if semi.eval.flip_tta and semi.augment.flip_p == 0 and "eval.flip_tta=true" not in overrides:
        semi = apply_overrides(semi, ["eval.flip_tta=false"])   # never mirrored in training
    return ssl, semi
