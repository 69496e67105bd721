"""The GPU suite (issue 20): one command, at most ~10 minutes on one CUDA GPU.

1. Throughput of every joint-embedding method: ResNet-18 (CIFAR stem), batch 512, 32 px, bf16
   autocast, the method's real views + training step + optimizer step, timed after warm-up
   (images per second; torch.cuda.synchronize around the timed steps).
2. SimCLR, ResNet-18, CIFAR-10 (the paper-scale preset ``simclr_cifar10``), for as many steps as
   fit in ``--simclr-seconds`` (default 240, ``train.time_limit``), then the kNN monitor (k=200) on
   the test images.
3. FixMatch, WRN-28-2, CIFAR-10@250 (preset ``fixmatch_cifar10`` with 25 labels per class) for
   ``--fixmatch-seconds`` (default 240), EMA model on the test images.

Results: ``benchmarks/results/gpu_suite.json`` (with the GPU's name, torch/CUDA versions, date).
``--smoke`` runs everything for a few steps on the CPU at tiny widths, to check the script itself.

    python benchmarks/gpu_suite.py --data ../shared/datasets/cifar10-jpeg.tar.gz
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

METHODS = ["simclr", "mocov2", "byol", "simsiam", "barlow_twins", "vicreg", "swav", "dino",
           "deepcluster_v2", "supcon"]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def throughput(data: str, device: str, batch: int, steps: int, warmup: int, smoke: bool) -> list:
    from selfsup.config import load_config
    from selfsup.methods import BatchInfo
    from selfsup.pretrain import build_method, load_data
    from selfsup.train.loop import autocast_for

    rows = []
    cfg0 = load_config("simclr_cifar10", [f"data.path={data}"])
    ds = load_data(cfg0, "train", progress=False)
    x_all = ds.batch(torch.arange(min(len(ds), batch)).numpy())
    for name in METHODS:
        over = [f"method.name={name}", f"data.path={data}", "model.backbone=resnet18",
                f"model.width={0.25 if smoke else 1.0}", "model.cifar_stem=true",
                f"train.batch_size={batch}", f"train.device={device}"]
        if name == "mocov2":
            over.append(f"method.queue_size={4 * batch}")
        if smoke and name in ("barlow_twins", "vicreg"):   # 8192-wide projectors: 5 s a CPU step
            over.append("method.proj_dim=256")
        if smoke and name == "dino":
            over += ["method.out_dim=1024", "method.hidden_dim=256"]
        cfg = load_config(None, over)
        try:
            m = build_method(cfg).to(device)
            if device.startswith("cuda"):
                m = m.to(memory_format=torch.channels_last)
            m.setup(len(ds))
            m.prepare(x_all)
            opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-3)
            x = x_all.to(device)
            info = BatchInfo(torch.arange(len(x), device=device), ds_labels(ds, len(x), device))
            amp = autocast_for(torch.device(device), "auto")   # bf16 on CUDA, float32 on CPU
            for i in range(warmup + steps):
                if i == warmup:
                    _sync(device)
                    t0 = time.perf_counter()
                with amp:
                    out = m.training_step(m.views(x), 0.5, info)
                out.loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                m.after_optimizer_step(0.5)
            _sync(device)
            dt = time.perf_counter() - t0
            rows.append({"method": name, "images_per_s": round(steps * len(x) / dt, 1),
                         "step_ms": round(1000 * dt / steps, 1)})
        except Exception as e:       # one method's failure is reported, not fatal
            rows.append({"method": name, "error": f"{type(e).__name__}: {str(e)[:200]}"})
        print(json.dumps(rows[-1]), flush=True)
        del m
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def ds_labels(ds, n: int, device: str) -> torch.Tensor:
    return torch.as_tensor(ds.labels[:n], device=device)


def simclr_run(data: str, device: str, seconds: float, smoke: bool) -> dict:
    from selfsup.config import load_config
    from selfsup.pretrain import pretrain

    over = [f"data.path={data}", f"train.device={device}", f"train.time_limit={seconds}",
            "train.progress=false", "eval.monitor=true", "eval.knn_k=200"]
    if smoke:
        over += ["model.width=0.25", "train.batch_size=64", "train.steps=4",
                 "eval.monitor_size=256"]
    with tempfile.TemporaryDirectory() as tmp:
        _, s = pretrain(load_config("simclr_cifar10", over), Path(tmp) / "simclr")
    return {k: s.get(k) for k in ("steps", "train_seconds", "images_per_s", "eval",
                                  "stopped_by_time")}


def fixmatch_run(data: str, device: str, seconds: float, smoke: bool) -> dict:
    from selfsup.config import load_config
    from selfsup.semisupervised import train_semisup

    over = [f"data.path={data}", f"train.device={device}", f"train.time_limit={seconds}",
            "data.labels_per_class=25", "train.eval_every=2000", "train.progress=false"]
    if smoke:
        over += ["train.steps=4", "train.batch_size=8", "method.uratio=2", "train.eval_every=4",
                 "data.val_per_class=2"]
    with tempfile.TemporaryDirectory() as tmp:
        _, s = train_semisup(load_config("fixmatch_cifar10", over), Path(tmp) / "fixmatch")
    return {k: s.get(k) for k in ("steps", "train_seconds", "test_acc_final",
                                  "test_acc_median_last", "stopped_by_time")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--simclr-seconds", type=float, default=240)
    ap.add_argument("--fixmatch-seconds", type=float, default=240)
    ap.add_argument("--only", nargs="+", default=["throughput", "simclr", "fixmatch"])
    ap.add_argument("--smoke", action="store_true", help="a few CPU steps: checks the script")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu_suite.json"))
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not a.smoke:
        raise SystemExit("no CUDA device: this suite is for a GPU (use --smoke to check it on CPU)")
    if a.smoke:
        a.batch_size, a.steps, a.warmup = 16, 2, 1
        a.simclr_seconds = a.fixmatch_seconds = 60
    torch.backends.cudnn.benchmark = True
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": device,
           "gpu": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor(),
           "torch": torch.__version__, "cuda": torch.version.cuda, "smoke": a.smoke}
    t0 = time.time()
    if "throughput" in a.only:
        res["throughput"] = throughput(a.data, device, a.batch_size, a.steps, a.warmup, a.smoke)
    if "simclr" in a.only:
        res["simclr_resnet18"] = simclr_run(a.data, device, a.simclr_seconds, a.smoke)
        print(json.dumps(res["simclr_resnet18"]), flush=True)
    if "fixmatch" in a.only:
        res["fixmatch_wrn28_2_250"] = fixmatch_run(a.data, device, a.fixmatch_seconds, a.smoke)
        print(json.dumps(res["fixmatch_wrn28_2_250"]), flush=True)
    res["seconds"] = round(time.time() - t0, 1)
    if not a.smoke:
        Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k not in ("throughput",)}, indent=1))


if __name__ == "__main__":
    main()
