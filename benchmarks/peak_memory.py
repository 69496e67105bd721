"""Peak memory (max resident set size) of building the CIFAR-10 cache from the JPEG archive and
of training on it, each in a fresh process.

    python benchmarks/peak_memory.py --data PATH/cifar10-jpeg.tar.gz [--steps 20]

The cache is built into a new temporary folder (streamed: decoded images are written to a
memory-mapped file as they come, never held as a list), so this measures a cold build.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUILD = """
import resource, sys, time
from selfsup.data import load_dataset
t = time.time()
ds = load_dataset("cifar10", path=sys.argv[1], split="train", image_size=32, cache_dir=sys.argv[2],
                  progress=False)
print(len(ds), time.time() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

TRAIN = """
import resource, sys, time
from selfsup.config import load_config
from selfsup.pretrain import pretrain
cfg = load_config("simclr_cifar10_cpu", [f"data.path={sys.argv[1]}", f"data.cache_dir={sys.argv[2]}",
                                         f"train.steps={sys.argv[3]}", "eval.monitor=false",
                                         "train.progress=false", "data.test_split="])
t = time.time()
pretrain(cfg, sys.argv[4])
print(sys.argv[3], time.time() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--results", default="benchmarks/results/peak_memory.json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        out = subprocess.run([sys.executable, "-c", BUILD, a.data, str(cache)], check=True,
                             capture_output=True, text=True).stdout.split()
        n, build_s, build_kb = int(out[0]), float(out[1]), int(out[2])
        cache_mb = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 2**20
        out = subprocess.run([sys.executable, "-c", TRAIN, a.data, str(cache), str(a.steps),
                              str(Path(tmp) / "run")], check=True, capture_output=True,
                             text=True).stdout.split()
        train_s, train_kb = float(out[1]), int(out[2])
    res = {"images": n, "cache_build_seconds": round(build_s, 1),
           "cache_build_peak_rss_mib": round(build_kb / 1024), "cache_size_mib": round(cache_mb),
           "train_steps": a.steps, "train_seconds": round(train_s, 1),
           "train_peak_rss_mib": round(train_kb / 1024), "preset": "simclr_cifar10_cpu",
           "date": time.strftime("%Y-%m-%d")}
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
