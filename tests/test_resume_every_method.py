"""Every registered method keeps all its state in its checkpoint: a run interrupted at a random
step and resumed ends bitwise equal to the uninterrupted one (issue 18). The presets are shrunk
to a few steps on 64 digits at 16 px; the loop, checkpoint and RNG handling are the real ones."""

import zlib

import numpy as np
import pytest
import torch
from test_contract import MEAN_POOL, SMALL_HEADS, TILE_METHODS, VIT_METHODS

from selfsup.config import load_config
from selfsup.data import load_dataset
from selfsup.methods import METHODS
from selfsup.pretrain import build_method
from selfsup.train.loop import train

STEPS = 8
# unlabeled batch = uratio x batch: small, so every method's step stays cheap
SEMI_KEYS = {"fixmatch": {"uratio": 2}, "flexmatch": {"uratio": 2}, "freematch": {"uratio": 2},
             "mpl": {"uratio": 2, "student_wait_steps": 2, "uda_steps": 4},
             "noisy_student": {"uratio": 2}, "pseudo_label": {"uratio": 1},
             "distill": {"uratio": 1}}


def _config(name: str, run_dir):
    semi = getattr(METHODS.get(name), "semi_supervised", False)
    method = {**SMALL_HEADS.get(name, {}), **SEMI_KEYS.get(name, {})}
    if semi:
        method["num_classes"] = 10
    size = 16
    model = (["model.backbone=vit_tiny", "model.width=0.25", "model.patch_size=4", "model.depth=2"]
             if name in VIT_METHODS else ["model.backbone=convnet", "model.width=0.25"])
    if name in MEAN_POOL:
        model.append("model.pool=mean")
    if name in TILE_METHODS:
        size = 24
    return load_config(None, [f"method.name={name}", *[f"method.{k}={v}" for k, v in method.items()],
                              *model, f"augment.size={size}", f"data.image_size={size}",
                              "train.batch_size=8", f"train.steps={STEPS}",
                              "train.checkpoint_every=2", "train.checkpoint_seconds=0",
                              "train.log_every=1", "train.progress=false", "train.device=cpu",
                              "eval.monitor=false", f"train.out_dir={run_dir}"])


def _data(size: int, semi: bool):
    ds = load_dataset("digits", image_size=size)
    ds = ds.subset(np.arange(64))
    if semi:   # 2 labels per class; the rest unlabeled (the loop's two streams)
        labels = np.full(len(ds), -1, np.int64)
        for c in range(10):
            labels[np.flatnonzero(ds.labels == c)[:2]] = c
        ds.labels = labels
    return ds


def _run(name: str, run_dir, stop_after=None):
    cfg = _config(name, run_dir)
    torch.manual_seed(0)
    method = build_method(cfg)
    semi = getattr(method, "semi_supervised", False)
    ds = _data(cfg.data.image_size, semi)
    if name == "distill":       # the teacher is an input of the run, the same every time
        from selfsup import backbones
        from selfsup.semisup import Classifier

        g = torch.random.get_rng_state()
        torch.manual_seed(1)
        method.set_teacher(Classifier(backbones.create("convnet", width=0.25), 10))
        torch.random.set_rng_state(g)
    if name == "distillation":  # a frozen teacher network, the same every time
        from selfsup import backbones

        g = torch.random.get_rng_state()
        torch.manual_seed(1)
        method.set_teacher(backbones.create("convnet", width=0.5))
        torch.random.set_rng_state(g)
    if name == "noisy_student":
        unl = np.flatnonzero(ds.labels < 0)
        probs = np.random.default_rng(0).dirichlet(np.ones(10), len(unl)).astype(np.float32)
        method.set_pseudo_labels(len(ds), unl, probs)
    out = train(method, ds, cfg, run_dir, stop_after=stop_after)
    return method, out


@pytest.mark.parametrize("name", METHODS.names())
def test_kill_at_a_random_step_and_resume_equals_the_uninterrupted_run(name, tmp_path):
    whole, out = _run(name, tmp_path / "whole")
    assert out["steps"] == STEPS
    # killed at step 3 .. STEPS-1 (fixed per method), so the resume starts from a checkpoint
    # after training began (checkpoints every 2 steps), never from scratch
    kill = 3 + zlib.crc32(name.encode()) % (STEPS - 3)
    _, part = _run(name, tmp_path / "killed", stop_after=kill)
    assert part == {"stopped_at": kill}
    resumed, out = _run(name, tmp_path / "killed")
    assert out["steps"] == STEPS
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    diff = {k: float((a[k].double() - b[k].double()).abs().max()) for k in a
            if not torch.equal(a[k], b[k])}
    assert not diff, f"{name}: killed at step {kill}, resumed: differs in {diff}"
