"""1 process vs 2 processes (torchrun, DDP over gloo) on this machine: SimCLR's CIFAR-10 CPU
preset, same global batch (256), same total threads (2), steady-state images/s.

    python benchmarks/ddp_scaling.py --data PATH/cifar10-jpeg.tar.gz [--steps 40]

On a 2-core machine the comparison is between one process using both cores for its matrix
multiplications and two one-thread processes that each do half the batch and then all-reduce the
gradients; it measures the cost of the distributed machinery, not a speed-up (that needs more
devices).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd_prefix: list[str], run_dir: Path, data: str, steps: int, threads: int) -> dict:
    cmd = cmd_prefix + ["-m", "selfsup", "pretrain", "-p", "simclr_cifar10_cpu", "-o", str(run_dir),
                        f"data.path={data}", f"train.steps={steps}", f"train.threads={threads}",
                        "train.log_every=10", "train.progress=false", "eval.monitor=false",
                        f"train.checkpoint_every={steps}", "data.test_split="]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    wall = time.time() - t0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ips = [r["images_per_s"] for r in rows if r.get("kind") == "train"][1:]  # skip warm-up
    return {"images_per_s": sum(ips) / len(ips), "wall_seconds": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--results", default="benchmarks/results/ddp_scaling.json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = run([sys.executable], Path(tmp) / "one", a.data, a.steps, 2)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        two = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                   "--master_port", str(port)], Path(tmp) / "two", a.data, a.steps, 1)
    res = {"one_process_2_threads": one, "two_processes_1_thread": two,
           "ratio": round(two["images_per_s"] / one["images_per_s"], 3),
           "steps": a.steps, "global_batch": 256, "preset": "simclr_cifar10_cpu",
           "date": time.strftime("%Y-%m-%d")}
    Path(a.results).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
