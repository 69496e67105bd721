"""Schedules as pure functions of training progress (step / total_steps in [0, 1])."""

from __future__ import annotations

import math


def warmup_cosine(progress: float, warmup: float, final_ratio: float = 0.0) -> float:
    """Multiplier in [final_ratio, 1]: linear warm-up over the first ``warmup`` fraction of training,
    then a half cosine down to ``final_ratio`` (SimCLR, Chen et al., 2020, App. B.1)."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return progress / warmup
    t = (progress - warmup) / max(1e-12, 1.0 - warmup)
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def fixmatch_cosine(progress: float, warmup: float = 0.0) -> float:
    """FixMatch's decay (Sohn et al., 2020, Sec. 4; google-research/fixmatch): lr * cos(7 pi k / 16K),
    a cosine that stops at 7 pi / 16 (multiplier 0.195 at the end), after an optional warm-up."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return progress / warmup
    t = (progress - warmup) / max(1e-12, 1.0 - warmup)
    return math.cos(7 * math.pi * t / 16)


def lr_multiplier(name: str, progress: float, warmup: float, final_ratio: float = 0.0) -> float:
    if name == "cosine":
        return warmup_cosine(progress, warmup, final_ratio)
    if name == "fixmatch":
        return fixmatch_cosine(progress, warmup)
    if name == "constant":
        return min(1.0, progress / warmup) if warmup > 0 else 1.0
    raise ValueError(f"unknown optim.schedule '{name}'; choose one of: constant, cosine, fixmatch")


# ``train.fit_to_time``: the loop re-plans its step count from its own speed at this step and at
# every evaluation after it, so that the schedule (learning rate, progress-dependent weights)
# ends when ``train.time_limit`` does instead of being cut by the clock or ending early
REPLAN_FIRST_STEP = 50
REPLAN_SAFETY = 0.98   # of the time left: the last steps' speed is an estimate


def steps_to_fill(step: int, steps_run: int, elapsed: float, time_limit: float) -> int:
    """The total step count that ends a run at ``time_limit`` seconds, given that ``steps_run``
    steps (evaluations and checkpoints between them included) took ``elapsed`` seconds and
    ``step`` steps are done in all (a resumed run counts only what it ran itself). Never less
    than ``step + 1``: a re-plan does not end a run by itself, the clock does."""
    if steps_run <= 0 or elapsed <= 0:
        raise ValueError("steps_to_fill needs at least one timed step")
    per_step = elapsed / steps_run
    return step + max(1, int(REPLAN_SAFETY * (time_limit - elapsed) / per_step))
