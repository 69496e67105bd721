"""Where a SimCLR training step spends its time (issue 20): torch.profiler over the real step
(views -> training_step -> backward -> LARS), ResNet-18 width 0.25, CIFAR stem, batch 256, 2 threads.

Prints the operators with the most self CPU time, grouped into conv / batch-norm / other, for each
``--precision`` given (run them in one invocation, so the comparison shares one time window), and
writes the table as JSON with ``--out``.

    python benchmarks/profile_step.py --data ../shared/datasets/cifar10-jpeg.tar.gz --precision fp32 bf16
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from selfsup.config import load_config
from selfsup.pretrain import build_method, load_data
from selfsup.train.loop import autocast_for
from selfsup.train.optim import build_optimizer


def group_of(name: str) -> str:
    n = name.lower()
    if "conv" in n:
        return "convolution (fwd+bwd)"
    if "batch_norm" in n or "batchnorm" in n:
        return "batch norm (fwd+bwd)"
    if any(k in n for k in ("addmm", "mm", "linear", "matmul")):
        return "matmul (head, loss)"
    if any(k in n for k in ("lars", "optimizer", "_foreach", "add_", "mul_", "div_", "norm")):
        return "optimizer and elementwise"
    return "other"


def profile_precision(a, precision: str, ds) -> dict:
    cfg = load_config(None, [
        "data.dataset=cifar10", f"data.path={a.data}", "model.backbone=resnet18",
        f"model.width={a.width}", "model.cifar_stem=true", f"train.batch_size={a.batch_size}",
        "method.temperature=0.5", f"train.precision={precision}"])
    torch.manual_seed(0)
    method = build_method(cfg).to(memory_format=torch.channels_last)
    method.setup(len(ds))
    opt = build_optimizer(method, "lars", 1.0, 1e-6)
    amp = autocast_for(torch.device("cpu"), precision)
    x = ds.batch(np.arange(a.batch_size))
    method.train()

    def step():
        views = [v.contiguous(memory_format=torch.channels_last) for v in method.views(x)]
        with amp:
            out = method.training_step(views, 0.5)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(a.steps):
            step()
    wall = (time.perf_counter() - t0) / a.steps
    groups: dict = defaultdict(float)
    top = []
    for ev in prof.key_averages():
        if ev.key.startswith("aten::") or "Backward" in ev.key or "lars" in ev.key.lower():
            groups[group_of(ev.key)] += ev.self_cpu_time_total / 1e6 / a.steps
            top.append((ev.self_cpu_time_total / 1e6 / a.steps, ev.key))
    top.sort(reverse=True)
    return {"precision": precision, "step_s_profiled": wall,
            "groups_s": {k: round(v, 4) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top_ops_s": [(k, round(v, 4)) for v, k in top[:10]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ds = load_data(load_config(None, ["data.dataset=cifar10", f"data.path={a.data}"]), "train",
                   progress=False)
    res = [profile_precision(a, p, ds) for p in a.precision]
    for r in res:
        print(f"\n{r['precision']}: {r['step_s_profiled'] * 1000:.0f} ms per step (profiled)")
        for k, v in r["groups_s"].items():
            print(f"  {k:28s} {v * 1000:8.1f} ms")
        for k, v in r["top_ops_s"]:
            print(f"    {k:40s} {v * 1000:8.1f} ms")
    if a.out:
        Path(a.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"),
                                           "rows": res}, indent=1))


if __name__ == "__main__":
    main()
