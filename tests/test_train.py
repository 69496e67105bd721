import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from selfsup.config import apply_overrides, load_config
from selfsup.nn.schedules import warmup_cosine
from selfsup.pretrain import RunDirError, build_method, load_data, pretrain
from selfsup.train import NonFiniteLossError, train
from selfsup.train.loop import batch_indices
from selfsup.train.optim import LARS, param_groups

TINY = ["model.backbone=convnet", "model.width=0.25", "data.image_size=12", "augment.size=12",
        "eval.labels_per_class=5",   # the end-of-run probes on 50 images: ~4 s less per run
        "train.batch_size=64", "train.progress=false", "eval.monitor=false", "train.log_every=1"]


def tiny_cfg(tmp_path, *extra):
    return load_config("simclr_digits", TINY + [f"train.out_dir={tmp_path}/run", *extra])


def encoder_state(run_dir):
    from safetensors.torch import load_file
    return load_file(str(Path(run_dir) / "encoder.safetensors"))


def test_warmup_cosine_schedule():
    assert warmup_cosine(0.0, 0.1) == 0.0
    assert warmup_cosine(0.05, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(0.1, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(0.55, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(1.0, 0.1, final_ratio=0.01) == pytest.approx(0.01)


def test_batch_order_is_a_function_of_seed_and_step():
    a = [batch_indices(100, 32, 7, s) for s in range(6)]
    b = [batch_indices(100, 32, 7, s) for s in range(6)]
    assert all((x == y).all() for x, y in zip(a, b))
    epoch0 = sorted(int(i) for x in a[:3] for i in x)
    assert len(set(epoch0)) == 96  # no repeats within an epoch (last 4 dropped)
    assert not (batch_indices(100, 32, 8, 0) == a[0]).all()


def test_lars_matches_formula_and_skips_norm_params():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    groups = param_groups(model, weight_decay=0.1)
    assert [len(g["params"]) for g in groups] == [1, 3]  # weight vs bias + BN weight/bias
    opt = LARS(groups, lr=0.5, momentum=0.9, eta=0.01)
    w = model[0].weight
    w0 = w.detach().clone()
    model(torch.randn(8, 4)).pow(2).sum().backward()
    g = w.grad.detach().clone() + 0.1 * w0
    expected = w0 - 0.5 * (0.01 * w0.norm() / g.norm()) * g
    b0, bg = model[0].bias.detach().clone(), model[0].bias.grad.detach().clone()
    opt.step()
    assert torch.allclose(w, expected, atol=1e-6)
    assert torch.allclose(model[0].bias, b0 - 0.5 * bg, atol=1e-6)  # plain SGD, no decay


def test_kill_and_resume_gives_identical_weights(tmp_path):
    """Interrupted at step 9 (last checkpoint at 8), resumed: same weights as uninterrupted."""
    steps = ["train.steps=14", "train.checkpoint_every=4"]
    full_dir, _ = pretrain(tiny_cfg(tmp_path / "a", *steps))
    cfg = tiny_cfg(tmp_path / "b", *steps)
    run_dir, res = pretrain(cfg, stop_after=9)
    assert res == {"stopped_at": 9}
    assert not (run_dir / "encoder.safetensors").exists()
    ck = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ck["step"] == 8
    _, summary = pretrain(cfg)  # same command again: resumes from step 8
    assert summary["steps"] == 14
    a, b = encoder_state(full_dir), encoder_state(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 15))
    full_rows = [json.loads(x) for x in (full_dir / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert train_losses == [r["loss"] for r in full_rows if r["kind"] == "train"]
    # the eval rows (collapse metrics) of the resumed run match too
    assert [r for r in rows if r["kind"] == "eval"] == [r for r in full_rows if r["kind"] == "eval"]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_cli(tmp_path):
    """A real SIGKILL of the CLI process, then the same command resumes to identical weights."""
    args = TINY + ["train.steps=30", "train.checkpoint_every=3", "train.threads=1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "selfsup", "pretrain", "-p", "simclr_digits"]
    ref = subprocess.run(cmd + ["-o", str(tmp_path / "ref"), *args], env=env,
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["-o", str(out), *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            try:
                step = torch.load(ckpt, weights_only=True)["step"]
            except Exception:
                step = 0
            if step >= 9:
                proc.send_signal(signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed_at is not None and killed_at < 30, "the run finished before it could be killed"
    assert not (out / "summary.json").exists()
    res = subprocess.run(cmd + ["-o", str(out), *args], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming" in res.stderr
    a, b = encoder_state(tmp_path / "ref"), encoder_state(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_guard_stops_with_step_and_cause(tmp_path):
    cfg = tiny_cfg(tmp_path, "train.steps=5", "train.checkpoint_every=2")
    method = build_method(cfg)
    orig = method.training_step

    def step_with_nan(views, progress, batch=None):
        out = orig(views, progress, batch)
        if progress >= 0.6:  # step 3 of 5
            out.loss = out.loss * float("nan")
        return out

    method.training_step = step_with_nan
    ds = load_data(cfg, None, progress=False)
    with pytest.raises(NonFiniteLossError, match=r"at step 3.*checkpoints/last.pt"):
        train(method, ds, cfg, tmp_path / "nan")
    rows = (tmp_path / "nan" / "metrics.jsonl").read_text()
    assert '"kind": "error"' in rows


def test_run_dir_refuses_changed_config_and_finished_run(tmp_path):
    pretrain(tiny_cfg(tmp_path, "train.steps=2"))
    with pytest.raises(RunDirError, match="finished run"):
        pretrain(tiny_cfg(tmp_path, "train.steps=2"))
    with pytest.raises(RunDirError, match="differs in: optim.lr, train.steps"):
        pretrain(tiny_cfg(tmp_path, "train.steps=3", "optim.lr=0.1"))


def test_run_directory_provenance(tmp_path):
    run_dir, summary = pretrain(tiny_cfg(tmp_path, "train.steps=3", "eval.monitor=true",
                                         "train.eval_every=3"))
    for f in ("config.yaml", "run.json", "metrics.jsonl", "metrics.csv", "summary.json",
              "encoder.safetensors", "checkpoints/last.pt", "data_report.json", "splits.json"):
        assert (run_dir / f).exists(), f
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["seed"] == 0 and meta["selfsup_version"] and "git_sha" in meta
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ev = [r for r in rows if r["kind"] == "eval"]
    assert ev and {"knn20_acc", "embed_std", "effective_rank"} <= set(ev[-1])
    assert 0 <= summary["eval"]["linear_acc"] <= 1 and math.isfinite(summary["final_loss"])
    assert "images_per_s" in (run_dir / "metrics.csv").read_text().splitlines()[0]
    splits = json.loads((run_dir / "splits.json").read_text())
    assert len(splits["train_names"]) == 1797 and splits["test_split"] == "test"
    # the probe never trains on test images, even though pretraining saw all of them
    test_names = set(load_data(tiny_cfg(tmp_path), "test", progress=False).names)
    assert splits["probe_names"] and not test_names & set(splits["probe_names"])


def test_collapse_is_reported_in_metrics_and_summary(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path, "train.steps=4", "train.eval_every=1", "eval.collapse_after=0.5")
    method = build_method(cfg)
    orig = method.training_step

    def collapsing(views, progress, batch=None):
        out = orig(views, progress, batch)
        if progress >= 0.0:  # every embedding is the same vector from the start
            out.embeddings = torch.ones_like(out.embeddings)
        return out

    method.training_step = collapsing
    ds = load_data(cfg, None, progress=False)
    res = train(method, ds, cfg, tmp_path / "c")
    ck = torch.load(tmp_path / "c" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["collapse"]["step"] == 2  # a resumed run remembers the collapse
    # judged from half-way on (step 2 of 4), reported once
    assert res["collapsed"] and res["collapse"]["step"] == 2
    assert capsys.readouterr().err.count("collapsed at step 2") == 1
    rows = [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("collapsed") for r in rows if r["kind"] == "eval"] == [None, True, None, None]


def test_precision_bf16_trains_on_cpu_with_float32_weights(tmp_path):
    """train.precision=bf16 computes the step under bfloat16 autocast (the CPU's AMX fast path);
    the weights, optimizer state and logged loss stay float32 and finite, and the steps differ
    from float32 ones (the autocast really ran)."""
    cfg16 = tiny_cfg(tmp_path / "a", "train.steps=3", "train.precision=bf16")
    cfg32 = tiny_cfg(tmp_path / "b", "train.steps=3", "train.precision=fp32")
    cfg_auto = tiny_cfg(tmp_path / "c", "train.steps=3")   # auto = float32 on the CPU
    for cfg in (cfg16, cfg32, cfg_auto):
        pretrain(cfg, Path(cfg.train.out_dir))
    s16, s32, sauto = (encoder_state(c.train.out_dir) for c in (cfg16, cfg32, cfg_auto))
    floats = [v for v in s16.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in floats)
    assert all(torch.equal(s32[k], sauto[k]) for k in s32)
    assert any(not torch.equal(s16[k], s32[k]) for k in s32)


def test_precision_rejects_unknown_value(tmp_path):
    from selfsup.config import ConfigError
    cfg = tiny_cfg(tmp_path, "train.steps=1", "train.precision=fp16")
    with pytest.raises(ConfigError, match="train.precision"):
        pretrain(cfg, Path(cfg.train.out_dir))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compile_trains_like_eager_and_resumes_eagerly(tmp_path, monkeypatch):
    """train.compile=true compiles the backbone in place: the encoder file keeps the eager names
    and the weights match an eager run's to float32 rounding; a compiled run's checkpoint resumes
    without compiling. Dynamo traces the backbone and AOTAutograd builds its backward as in a
    real compile; the code generation is swapped for "aot_eager" (inductor's C++ build took
    ~50 s of CI's 2 cores and is torch's own, not selfsup's)."""
    calls = []
    compile_ = torch.nn.Module.compile

    def aot_eager(self, *a, **k):
        calls.append(type(self).__name__)
        return compile_(self, *a, **{**k, "backend": "aot_eager"})

    monkeypatch.setattr(torch.nn.Module, "compile", aot_eager)
    steps = ["train.steps=3", "train.checkpoint_every=2"]
    eager_dir, _ = pretrain(tiny_cfg(tmp_path / "a", *steps))
    cfg = tiny_cfg(tmp_path / "b", *steps, "train.compile=true")
    run_dir, res = pretrain(cfg, stop_after=2)
    assert res == {"stopped_at": 2}
    resumed = load_config("simclr_digits", TINY + [f"train.out_dir={run_dir}", *steps])
    _, summary = pretrain(resumed)
    assert summary["steps"] == 3
    assert len(calls) == 1    # compiled once, in the first run; the resumed run is eager
    a, b = encoder_state(eager_dir), encoder_state(run_dir)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-4) for k in a)


def test_progressive_side_grows_linearly_in_multiples_of_four_to_full_size():
    from selfsup.augment.resize import progressive_side

    sides = [progressive_side(i / 100, 20, 32, 0.75) for i in range(101)]
    assert sides[0] == 20 and sides[75:] == [32] * 26
    assert all(a <= b for a, b in zip(sides, sides[1:])) and all(s % 4 == 0 for s in sides)
    assert progressive_side(0.5, 20, 32, 0.75) == (20 + 12 * 0.5 / 0.75) // 4 * 4   # 28
    assert progressive_side(0.1, 0, 32, 0.75) == 32       # off
    assert progressive_side(0.1, 40, 32, 0.75) == 32      # never above full size


def test_resize_views_scales_image_views_only():
    from selfsup.augment.resize import resize_views

    big, small, idx = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 16, 16), torch.arange(2)
    out = resize_views([big, small, idx], 24, 32)
    assert out[0].shape[-2:] == (24, 24) and out[1].shape[-2:] == (12, 12) and out[2] is idx
    flat = torch.full((1, 3, 32, 32), 0.3)
    assert torch.allclose(resize_views([flat], 20, 32)[0], torch.full((1, 3, 20, 20), 0.3))
    assert resize_views([big], 32, 32)[0] is big


def test_progressive_resizing_trains_on_smaller_views_early_and_full_size_at_the_end(tmp_path):
    """train.progressive_side: the training step sees views of the scheduled side; the run
    ends at full size and resumes to the same weights as an uninterrupted run."""
    cfg = tiny_cfg(tmp_path, "train.steps=8", "train.progressive_side=8",
                   "train.progressive_until=0.5", "train.checkpoint_every=4")
    ds = load_data(cfg, None, progress=False)
    method = build_method(cfg)
    seen = []
    step = method.training_step
    method.training_step = lambda views, *a, **k: (seen.append(views[0].shape[-1]),
                                                  step(views, *a, **k))[1]
    train(method, ds, cfg, Path(cfg.train.out_dir))
    assert seen[0] == 8 and seen[-1] == 12 and seen == sorted(seen)
    cfg_b = tiny_cfg(tmp_path / "b", "train.steps=8", "train.progressive_side=8",
                     "train.progressive_until=0.5", "train.checkpoint_every=4")
    pretrain(cfg_b, Path(cfg_b.train.out_dir), stop_after=4)
    pretrain(cfg_b, Path(cfg_b.train.out_dir))
    cfg_c = tiny_cfg(tmp_path / "c", "train.steps=8", "train.progressive_side=8",
                     "train.progressive_until=0.5", "train.checkpoint_every=4")
    pretrain(cfg_c, Path(cfg_c.train.out_dir))
    a, b = encoder_state(cfg_b.train.out_dir), encoder_state(cfg_c.train.out_dir)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_steps_to_fill_plans_the_time_left_at_the_measured_speed():
    from selfsup.nn.schedules import REPLAN_SAFETY, steps_to_fill

    # 50 steps in 10 s (0.2 s each), 90 s left of 100: 0.98 * 90 / 0.2 = 441 more steps
    assert REPLAN_SAFETY == 0.98 and steps_to_fill(50, 50, 10.0, 100.0) == 491
    # a resumed run at step 300 that ran 20 steps in 4 s: its own speed, the total counts on
    assert steps_to_fill(300, 20, 4.0, 10.0) == 300 + int(0.98 * 6 / 0.2)
    assert steps_to_fill(50, 50, 120.0, 100.0) == 51     # past the limit: the clock ends it
    with pytest.raises(ValueError):
        steps_to_fill(0, 0, 0.0, 100.0)


class _Clock:
    """A fake ``time`` for the loop: one second per training step, nothing else takes time."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def _clocked(method, clock):
    step = method.training_step

    def timed(*a, **k):
        clock.now += 1.0
        return step(*a, **k)
    method.training_step = timed
    return method


def test_fit_to_time_ends_the_schedule_at_the_time_limit_and_resumes_on_the_new_plan(
        tmp_path, monkeypatch):
    """train.fit_to_time: a run planned at 200 steps of 1 s with 120 s re-plans itself to end
    its learning-rate schedule inside the limit (not cut by the clock at 60% of it); without
    it the clock cuts the run. A resumed run continues the re-planned schedule."""
    import selfsup.train.loop as loop
    from selfsup.nn.schedules import lr_multiplier

    monkeypatch.setattr(loop, "REPLAN_FIRST_STEP", 5)
    runs = {}
    for fit in (True, False):
        clock = _Clock()
        monkeypatch.setattr(loop, "time", clock)
        cfg = tiny_cfg(tmp_path / str(fit), "train.steps=200", "train.time_limit=120",
                       "train.eval_every=20", f"train.fit_to_time={str(fit).lower()}")
        ds = load_data(cfg, None, progress=False)
        runs[fit] = (cfg, train(_clocked(build_method(cfg), clock), ds, cfg,
                                Path(cfg.train.out_dir)))
    cfg, fitted = runs[True]
    # step 5: 5 + int(0.98 * 115) = 117; then 118 at steps 20-60 and 119 from step 80 on
    assert fitted["steps"] == 119 and not fitted["stopped_by_time"] and fitted["replans"] == 3
    rows = [json.loads(x) for x in open(Path(cfg.train.out_dir) / "metrics.jsonl")]
    assert [(r["step"], r["total"]) for r in rows if r["kind"] == "replan"] == [
        (5, 117), (20, 118), (80, 119)]
    last = [r for r in rows if r["kind"] == "train"][-1]
    oc = cfg.optim
    peak = oc.lr * cfg.train.batch_size / 256 if oc.scale_lr else oc.lr
    assert last["step"] == 119 and last["lr"] == pytest.approx(
        peak * lr_multiplier(oc.schedule, 119 / 119, oc.warmup, oc.final_lr_ratio))
    cut = runs[False][1]
    assert cut["steps"] == 121 and cut["stopped_by_time"] and cut["replans"] == 0
    # killed at step 60 (checkpoint every 30), resumed without re-planning: 118 steps, not 200
    clock = _Clock()
    monkeypatch.setattr(loop, "time", clock)
    cfg = tiny_cfg(tmp_path / "resume", "train.steps=200", "train.time_limit=120",
                   "train.eval_every=20", "train.fit_to_time=true", "train.checkpoint_every=30")
    ds = load_data(cfg, None, progress=False)
    train(_clocked(build_method(cfg), clock), ds, cfg, Path(cfg.train.out_dir), stop_after=60)
    monkeypatch.setattr(loop, "REPLAN_FIRST_STEP", 10_000)
    cfg = apply_overrides(cfg, ["train.eval_every=1000"])
    clock = _Clock()
    monkeypatch.setattr(loop, "time", clock)
    again = train(_clocked(build_method(cfg), clock), ds, cfg, Path(cfg.train.out_dir))
    assert again["steps"] == 118 and again["replans"] == 0
