"""Export a trained classifier for deployment: safetensors weights and an ONNX graph that takes
RGB images in [0, 1] and returns logits and probabilities, with the preprocessing written into
the ONNX metadata and ``preprocess.json``. The ONNX output is checked against PyTorch with
onnxruntime on real images; the maximum absolute difference is reported (and must be <= 1e-4).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import rundir
from .data.sources import DataError

PARITY_TOLERANCE = 1e-4


class Deployable(nn.Module):
    """[B, 3, S, S] float RGB in [0, 1] -> (logits, probabilities): normalisation inside."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor):
        logits = self.model((x - self.mean) / self.std)
        return logits, logits.softmax(dim=1)


def _onnx_export(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(module, (example,), dynamo=True, input_names=["image"],
                                 output_names=["logits", "probabilities"],
                                 dynamic_shapes={"x": {0: batch}}, verbose=False)
    prog.save(str(path))


def _add_metadata(path: Path, meta: dict) -> None:
    import onnx

    m = onnx.load(str(path))
    for k, v in meta.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(m, str(path))


def preprocessing(decode_size: int, input_size: int) -> dict:
    """How ``predict`` turns a file into the model's input, step by step, exactly (a deployment
    that follows these steps with Pillow gets the same pixels; tests/test_fit.py checks it)."""
    steps = [
        "Image.open(file); img.draft('RGB', (S, S)) with S = decode_size: for JPEG files Pillow "
        "then decodes at the largest 1/2, 1/4 or 1/8 scale that keeps both sides >= S (no effect "
        "on other formats)",
        "ImageOps.exif_transpose(img) (apply the EXIF orientation)",
        "convert to RGB; transparent pixels are composited on white (255, 255, 255)",
        "unless already S x S: ImageOps.fit(img, (S, S), Image.Resampling.BICUBIC) (centre crop "
        "to a square, then bicubic resize to S x S)",
        "float32 RGB in [0, 1] (divide by 255), layout [batch, 3, H, W]",
    ]
    if input_size != decode_size:
        steps.append(f"bilinear resize with antialiasing to {input_size} x {input_size} "
                     f"(torch.nn.functional.interpolate(..., mode='bilinear', antialias=True, "
                     f"align_corners=False))")
    return {"decode_size": decode_size, "jpeg_draft": True, "exif_transpose": True,
            "background": [255, 255, 255], "fit": {"size": decode_size, "resample": "bicubic",
                                                    "centering": [0.5, 0.5]},
            "scale": "1/255", "steps": steps}


def _parity_batch(run_dir: Path, check_images, n_check: int, decode_size: int) -> torch.Tensor:
    """Real images for the ONNX-vs-PyTorch check: ``check_images``, else the run's training data
    (``data.path``), else the labeled folder of the ``selfsup fit`` run the model belongs to."""
    from .inference import batches

    if check_images is None:
        from .pretrain import load_data, load_run_config

        cfg = load_run_config(run_dir) if (run_dir / "config.yaml").exists() else None
        if cfg is not None and (cfg.data.path or cfg.data.dataset == "digits"):
            ds = load_data(cfg, cfg.data.split, progress=False)
            return ds.batch(np.arange(min(n_check, len(ds))))
        fit_json = run_dir.parent / "fit.json"
        if not fit_json.exists():
            raise DataError(f"{run_dir}: the run does not say where its images are; pass "
                            f"--check PATH with a few images to check the export on")
        check_images = [rundir.read_json(fit_json)["labeled"]]
    got = []
    for _, x, _ in batches(check_images, decode_size, n_check):
        got.append(x)
        if sum(len(g) for g in got) >= n_check:
            break
    return torch.cat(got)[:n_check] if got else torch.zeros(0, 3, decode_size, decode_size)


def _replace_folder(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` folder to ``out_dir``; an existing ``out_dir`` (only with
    --overwrite, and only an export folder) is removed after the new one is complete."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


EXPORT_FILES = {"model.onnx", "model.safetensors", "preprocess.json", "export.json",
                "calibration.json", "ood.json", "ood_bank.safetensors",
                "ood_encoder.safetensors", ".selfsup-run"}


def export_model(run_dir: str | Path, out_dir: str | Path, check_images: list[str] | None = None,
                 n_check: int = 64, overwrite: bool = False) -> dict:
    """Write ``out_dir``/model.safetensors, model.onnx, preprocess.json and export.json (with the
    ONNX-vs-PyTorch parity on ``n_check`` real images: ``check_images`` paths, the run's training
    data, or the labeled folder of its ``selfsup fit``). Everything is written to a hidden
    sibling folder first and moved into place only when complete, so a failed or killed export
    leaves ``out_dir`` as it was."""
    import onnxruntime as ort

    from .inference import _prepare
    from .semisupervised import load_classifier

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not overwrite:
            raise DataError(f"{out_dir} is not empty; choose another --out or pass --overwrite")
        stray = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else [out_dir.name]
        stray = [n for n in stray if n not in EXPORT_FILES] if out_dir.is_dir() else stray
        if stray or out_dir.is_symlink() or not rundir.is_run(out_dir):
            raise DataError(f"{out_dir} holds files an export does not write ({', '.join(stray[:5])}"
                            f"); --overwrite only replaces an earlier export: choose another --out")
    model, meta = load_classifier(run_dir)
    model.eval()
    mean, std = json.loads(meta["mean"]), json.loads(meta["std"])
    size = int(meta.get("input_size", meta["image_size"]))
    decode_size = int(meta["image_size"])
    x8 = _parity_batch(run_dir if run_dir.is_dir() else run_dir.parent, check_images, n_check,
                       decode_size)
    if len(x8) == 0:
        raise DataError("no readable images to check the ONNX export against; pass --check PATH")
    dep = Deployable(model, mean, std).eval()
    import sys

    print(f"selfsup export: writing the ONNX graph and checking it against PyTorch on "
          f"{len(x8)} real images ...", file=sys.stderr)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        rundir.create(tmp, "export")       # the marker: --overwrite may replace this folder
        onnx_path = tmp / "model.onnx"
        _onnx_export(dep, torch.rand(2, 3, size, size), onnx_path)
        pre = {"input": "image: float32 [batch, 3, H, W], RGB in [0, 1] (NCHW)",
               "preprocessing": preprocessing(decode_size, size),
               "normalisation": "inside the graph: (x - mean) / std", "mean": mean, "std": std,
               "image_size": size, "classes": json.loads(meta["classes"]),
               "outputs": ["logits [batch, classes]", "probabilities [batch, classes]"],
               "backbone": meta["backbone"], "method": meta.get("method", ""),
               "test_time_augmentation": ("inside the graph: logits = mean of the image's and "
                                          "its mirror image's" if getattr(model, "flip_tta", False)
                                          else "none")}
        calib = (run_dir / "calibration.json") if run_dir.is_dir() else None
        if calib is not None and calib.exists():
            pre["uncertainty"] = rundir.read_json(calib)
            rundir.write_json(tmp / "calibration.json", pre["uncertainty"])
        for name in ("ood.json", "ood_bank.safetensors", "ood_encoder.safetensors"):  # "unknown"
            if run_dir.is_dir() and (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, tmp / name)
        _add_metadata(onnx_path, {k: json.dumps(v) if not isinstance(v, str) else v
                                  for k, v in pre.items()})
        shutil.copyfile(run_dir / "model.safetensors" if run_dir.is_dir() else run_dir,
                        tmp / "model.safetensors")
        rundir.write_json(tmp / "preprocess.json", pre)
        x = _prepare(x8, size, [0, 0, 0], [1, 1, 1], "cpu")         # [0, 1], resized
        with torch.no_grad():
            t_logits, t_probs = dep(x)
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        o_logits, o_probs = sess.run(None, {"image": x.numpy()})
        diff = float(max(np.abs(o_logits - t_logits.numpy()).max(),
                         np.abs(o_probs - t_probs.numpy()).max()))
        report = {"onnx": str(out_dir / "model.onnx"),
                  "safetensors": str(out_dir / "model.safetensors"),
                  "parity_images": int(len(x)), "max_abs_diff": diff,
                  "tolerance": PARITY_TOLERANCE, "ok": diff <= PARITY_TOLERANCE,
                  "same_predictions": bool((o_probs.argmax(1) == t_probs.numpy().argmax(1)).all()),
                  "onnxruntime": ort.__version__, "torch": torch.__version__}
        if not report["ok"]:
            raise RuntimeError(f"ONNX export differs from PyTorch by {diff:.2e} "
                               f"(> {PARITY_TOLERANCE}) on {len(x)} images; nothing was written")
        rundir.write_json(tmp / "export.json", report)
        _replace_folder(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report
