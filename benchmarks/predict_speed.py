"""`selfsup predict` throughput (decode + resize + forward + CSV), and the ONNX export's parity,
on real images: the CIFAR-10 test split read straight from the JPEG archive.

    python benchmarks/predict_speed.py --data PATH/cifar10-jpeg.tar.gz --model RUN_DIR

RUN_DIR: a classifier run (e.g. one of benchmarks/cifar10_semisup.py's FixMatch runs). The
archive's test/ folder (10,000 JPEGs) is extracted to a temporary folder first, so the number is
for files on disk, as a user has them.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", default="benchmarks/results/predict_speed.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from selfsup.export import export_model
    from selfsup.inference import predict

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with tarfile.open(a.data) as t:
            members = [m for m in t.getmembers() if "/test/" in f"/{m.name}" and m.isfile()]
            t.extractall(tmp, members=members, filter="data")
        folder = next(p for p in tmp.rglob("test") if p.is_dir())
        res = predict(a.model, [folder], tmp / "pred.csv", progress=False)
        exp = export_model(a.model, tmp / "export", check_images=[folder], n_check=256)
    out = {"images": res["images"], "seconds": round(res["seconds"], 1),
           "images_per_s": round(res["images_per_s"], 1), "threads": a.threads,
           "onnx_max_abs_diff": exp["max_abs_diff"], "onnx_parity_images": exp["parity_images"],
           "model": a.model, "date": time.strftime("%Y-%m-%d")}
    Path(a.results).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
