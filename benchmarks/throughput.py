"""SimCLR training throughput and the data path's share of step time, through the real loop.

Configuration of the foundation issue: ResNet-18 width 0.25, CIFAR stem, batch 256, 2 threads,
32 px CIFAR-10 images, kornia views on the training device (CPU here).

    python benchmarks/throughput.py --data PATH/cifar10-jpeg.tar.gz [--steps 25] [--no-channels-last]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from selfsup.config import load_config
from selfsup.pretrain import build_method, load_data
from selfsup.train.loop import train


def plain_step_seconds(method, ds, cfg, steps: int, warmup: int = 2) -> float:
    """Median seconds of a plain forward + backward (backbone + projection head, summed output,
    no loss, no optimizer) of the same views the training step sees: the floor the step's
    compute is held against (issue 20: within 15%)."""
    from selfsup.train.loop import autocast_for

    idx = np.arange(cfg.train.batch_size)
    views = method.views(ds.batch(idx))
    x = torch.cat(views).contiguous(memory_format=torch.channels_last)
    amp = autocast_for(torch.device("cpu"), cfg.train.precision)
    method.train()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with amp:
            out = method.head(method.backbone(x))
        out.float().sum().backward()
        method.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True, help="CIFAR-10 folder or .tar.gz")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--warmup-steps", type=int, default=5, help="steps excluded from the timing")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="train.precision (bf16: autocast; fast on CPUs with AMX)")
    ap.add_argument("--compile", action="store_true", help="train.compile=true (torch.compile)")
    ap.add_argument("--plain-steps", type=int, default=8,
                    help="then time this many plain forward+backward passes (backbone + head, no "
                    "loss, no optimizer) of same-shaped views, for the step's overhead (0 = skip)")
    ap.add_argument("--out", default=None, help="write the result JSON here")
    a = ap.parse_args()
    cfg = load_config(None, [
        "data.dataset=cifar10", f"data.path={a.data}", "data.split=train",
        f"model.backbone={a.backbone}", f"model.width={a.width}", "model.cifar_stem=true",
        f"model.channels_last={str(not a.no_channels_last).lower()}",
        f"train.steps={a.steps}", f"train.batch_size={a.batch_size}", f"train.threads={a.threads}",
        "train.log_every=1", f"train.checkpoint_every={10 ** 9}", "train.progress=false",
        "method.temperature=0.5", "eval.monitor=false", f"train.precision={a.precision}",
        f"train.compile={str(a.compile).lower()}"])
    torch.set_num_threads(a.threads)
    ds = load_data(cfg, "train", progress=False)
    method = build_method(cfg)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        train(method, ds, cfg, Path(d))
        rows = [json.loads(x) for x in (Path(d) / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["kind"] == "train" and r["step"] > a.warmup_steps]
    sec = sum(a.batch_size / r["images_per_s"] for r in timed)
    data_sec = sum(a.batch_size / r["images_per_s"] * r["data_fraction"] for r in timed)
    plain = plain_step_seconds(method, ds, cfg, a.plain_steps) if a.plain_steps else None
    step_s = (sec - data_sec) / len(timed)   # forward + loss + backward + optimizer, per step
    res = {"images_per_s": len(timed) * a.batch_size / sec, "data_fraction": data_sec / sec,
           "step_compute_s": step_s, "plain_fwd_bwd_s": plain,
           "step_overhead": step_s / plain - 1 if plain else None, "precision": a.precision,
           "compile": a.compile,
           "timed_steps": len(timed), "wall_s": time.time() - t0, "backbone": a.backbone,
           "width": a.width, "batch_size": a.batch_size, "threads": a.threads,
           "channels_last": not a.no_channels_last, "torch": torch.__version__,
           "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
           "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
