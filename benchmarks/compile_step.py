"""torch.compile vs eager on the network part of `fit`'s FreeMatch step (BENCHMARKS.md 1.2).

The convnet classifier in channels-last under bfloat16 autocast (as `fit` trains it on a CPU with
AMX), one step = the EMA teacher's forward over 4 x 64 weak views (eval mode, no gradient), the
student's forward and backward over 64 labeled + 4 x 64 strong views, an SGD step. Random
tensors stand in for the views (the data path is not what is compared). The two programs
alternate in one process, ``--rounds`` rounds of ``--steps`` steps each, after the compiled one's
compilation and a warm-up of both; prints ms per step per round and the ratio.

    python benchmarks/compile_step.py --rounds 4 --steps 20
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    a = ap.parse_args()
    from selfsup.backbones.convnet import ConvNet
    from selfsup.semisup.base import Classifier

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(320, 3, 32, 32).contiguous(memory_format=cl)   # 64 labeled + 256 strong
    w = torch.randn(256, 3, 32, 32).contiguous(memory_format=cl)   # 256 weak
    y = torch.randint(0, 10, (64,))
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if a.precision == "bf16" else \
        (lambda: torch.autocast("cpu", enabled=False))

    def make(compiled: bool):
        m = Classifier(ConvNet(1.0), 10).to(memory_format=cl)
        t = copy.deepcopy(m).eval()
        opt = torch.optim.SGD(m.parameters(), lr=0.03, momentum=0.9, nesterov=True)
        return (torch.compile(m) if compiled else m), (torch.compile(t) if compiled else t), opt

    def step(fm, ft, opt):
        with ctx():
            with torch.no_grad():
                pl = ft(w).float().argmax(1)
            out = fm(x).float()
            loss = F.cross_entropy(out[:64], y) + F.cross_entropy(out[64:], pl)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    progs = {"eager": make(False), "compiled": make(True)}
    t0 = time.time()
    for _ in range(3):
        step(*progs["compiled"])
    compile_s = time.time() - t0
    for _ in range(3):
        step(*progs["eager"])
    times = {k: [] for k in progs}
    for _ in range(a.rounds):
        for name, p in progs.items():
            t0 = time.time()
            for _ in range(a.steps):
                step(*p)
            times[name].append(1000 * (time.time() - t0) / a.steps)
    row = {"precision": a.precision, "threads": a.threads, "compile_and_3_steps_s":
           round(compile_s, 1), "ms_per_step": {k: [round(v, 1) for v in t] for k, t in times.items()},
           "compiled_over_eager": round(sum(times["compiled"]) / sum(times["eager"]), 3),
           "load_after": round(os.getloadavg()[0], 2), "date": time.strftime("%Y-%m-%d %H:%M")}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
