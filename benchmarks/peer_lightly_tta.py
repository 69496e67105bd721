"""Peer side of the time-to-accuracy race (issue 20): lightly's own CIFAR-10 SimCLR recipe, with
snapshots of the backbone's features taken on the clock's pause.

Runs inside the peer venv made by ``../shared/bench/peers_setup.sh`` (it imports lightly and
torchvision, which selfsup never needs); ``benchmarks/peer_compare.py tta`` starts it. The recipe is
the one in ``../shared/bench/peer_lightly_simclr.py`` (lightly's benchmarks/cifar10): ResNetGenerator
resnet-18 at ``--width``, SimCLRTransform(input_size=32, cj_strength 0.5, no blur, min_scale 0.08),
SimCLRProjectionHead, NTXentLoss(0.5), SGD lr 6e-2 x batch/256, momentum 0.9, wd 5e-4, cosine over
the whole run, DataLoader with ``--workers`` processes.

Every ``--snap-every`` steps the training clock stops, the backbone embeds the images listed in
``--eval-list`` (JSON: {"bank": [...], "test": [...]}, paths relative to ``--data``; the peer's own
normalisation, as its kNN benchmark does), and ``OUT/snap_NNNNN.npz`` is written with the features
and the training seconds so far (wall and this process's CPU). The kNN itself is computed by
peer_compare.py with selfsup's evaluator, so both libraries are scored by one function.
"""
import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torchvision
import torchvision.transforms as T
from lightly.loss import NTXentLoss
from lightly.models import ResNetGenerator
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from PIL import Image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="image folder with train/ (and the eval files)")
    p.add_argument("--eval-list", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--snap-every", type=int, default=49, help="steps between snapshots")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    t = SimCLRTransform(input_size=32, cj_prob=0.8, cj_strength=0.5, gaussian_blur=0.0, min_scale=0.08)
    ds = torchvision.datasets.ImageFolder(f"{a.data}/train", transform=t)
    dl = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True, drop_last=True,
                                     num_workers=a.workers, persistent_workers=a.workers > 0)
    resnet = ResNetGenerator("resnet-18", width=a.width)
    backbone = nn.Sequential(*list(resnet.children())[:-1], nn.AdaptiveAvgPool2d(1), nn.Flatten())
    feat = int(512 * a.width)
    model = nn.Sequential(backbone, SimCLRProjectionHead(feat, feat, 128))
    crit = NTXentLoss(temperature=0.5)
    lr0 = 6e-2 * a.batch / 256
    opt = torch.optim.SGD(model.parameters(), lr=lr0, momentum=0.9, weight_decay=5e-4)

    lists = json.loads(Path(a.eval_list).read_text())
    norm = T.Compose([T.ToTensor(), T.Normalize(mean=[0.4914, 0.4822, 0.4465],
                                                std=[0.2470, 0.2435, 0.2616])])
    eval_x = {k: torch.stack([norm(Image.open(Path(a.data) / f).convert("RGB")) for f in v])
              for k, v in lists.items()}

    def embed(x: torch.Tensor) -> np.ndarray:
        backbone.eval()
        with torch.no_grad():
            f = torch.cat([backbone(x[i:i + 512]) for i in range(0, len(x), 512)])
        backbone.train()
        return f.numpy()

    total = int(round(a.epochs * len(dl)))
    step, wall, cpu = 0, 0.0, 0.0
    # the clock runs from the first batch request to the end of training (waits for the
    # DataLoader's workers included) and stops only while a snapshot is taken
    w0, c0 = time.perf_counter(), time.process_time()
    while step < total:
        for (views, _), _ in zip(dl, range(total - step)):
            for g in opt.param_groups:
                g["lr"] = lr0 * 0.5 * (1 + math.cos(math.pi * step / total))
            z0, z1 = model(views[0]), model(views[1])
            loss = crit(z0, z1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % a.snap_every == 0 or step == total:
                wall += time.perf_counter() - w0
                cpu += time.process_time() - c0
                np.savez(out / f"snap_{step:05d}.npz", step=step, wall_s=wall, cpu_s=cpu,
                         loss=loss.item(), **{k: embed(v) for k, v in eval_x.items()})
                print(json.dumps({"step": step, "wall_s": round(wall, 1), "loss": loss.item()}),
                      flush=True)
                w0, c0 = time.perf_counter(), time.process_time()
    print(json.dumps({"done": step}))


if __name__ == "__main__":
    main()
