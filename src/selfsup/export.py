"""Export a trained classifier for deployment: safetensors weights and an ONNX graph that takes
RGB images in [0, 1] and returns logits and probabilities, with the preprocessing written into
the ONNX metadata and ``preprocess.json``. The ONNX output is checked against PyTorch with
onnxruntime on real images; the maximum absolute difference is reported (and must be <= 1e-4).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

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


def export_model(run_dir: str | Path, out_dir: str | Path, check_images: list[str] | None = None,
                 n_check: int = 64, overwrite: bool = False) -> dict:
    """Write ``out_dir``/model.safetensors, model.onnx, preprocess.json and export.json (with the
    ONNX-vs-PyTorch parity on ``n_check`` real images: ``check_images`` paths, or the run's own
    training data)."""
    import onnxruntime as ort

    from .inference import _prepare, batches
    from .semisupervised import load_classifier

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise DataError(f"{out_dir} is not empty; choose another --out or pass --overwrite")
    model, meta = load_classifier(run_dir)
    model.eval()
    mean, std = json.loads(meta["mean"]), json.loads(meta["std"])
    size = int(meta.get("input_size", meta["image_size"]))
    decode_size = int(meta["image_size"])
    dep = Deployable(model, mean, std).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    _onnx_export(dep, torch.rand(2, 3, size, size), onnx_path)
    pre = {"input": "image: float32 [batch, 3, H, W], RGB in [0, 1] (NCHW)",
           "resize": f"shorter side to {decode_size} px (bicubic), centre crop {decode_size}x"
                     f"{decode_size}" + (f", then bilinear to {size}x{size}"
                                         if size != decode_size else ""),
           "normalisation": "inside the graph: (x - mean) / std", "mean": mean, "std": std,
           "image_size": size, "classes": json.loads(meta["classes"]),
           "outputs": ["logits [batch, classes]", "probabilities [batch, classes]"],
           "backbone": meta["backbone"], "method": meta.get("method", "")}
    _add_metadata(onnx_path, {k: json.dumps(v) if not isinstance(v, str) else v
                              for k, v in pre.items()})
    shutil.copyfile(run_dir / "model.safetensors" if run_dir.is_dir() else run_dir,
                    out_dir / "model.safetensors")
    (out_dir / "preprocess.json").write_text(json.dumps(pre, indent=1))
    # parity on real images
    if check_images is None:
        from .pretrain import load_data
        from .pretrain import load_run_config

        cfg = load_run_config(run_dir)
        ds = load_data(cfg, cfg.data.split, progress=False)
        x8 = ds.batch(np.arange(min(n_check, len(ds))))
    else:
        got = [x for _, x, _ in batches(check_images, decode_size, n_check)]
        x8 = torch.cat(got)[:n_check] if got else torch.zeros(0, 3, decode_size, decode_size)
    if len(x8) == 0:
        raise DataError("no readable images to check the ONNX export against")
    x = _prepare(x8, size, [0, 0, 0], [1, 1, 1], "cpu")         # [0, 1], resized
    with torch.no_grad():
        t_logits, t_probs = dep(x)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    o_logits, o_probs = sess.run(None, {"image": x.numpy()})
    diff = float(max(np.abs(o_logits - t_logits.numpy()).max(),
                     np.abs(o_probs - t_probs.numpy()).max()))
    report = {"onnx": str(onnx_path), "safetensors": str(out_dir / "model.safetensors"),
              "parity_images": int(len(x)), "max_abs_diff": diff,
              "tolerance": PARITY_TOLERANCE, "ok": diff <= PARITY_TOLERANCE,
              "same_predictions": bool((o_probs.argmax(1) == t_probs.numpy().argmax(1)).all()),
              "onnxruntime": ort.__version__, "torch": torch.__version__}
    (out_dir / "export.json").write_text(json.dumps(report, indent=1))
    if not report["ok"]:
        raise RuntimeError(f"ONNX export differs from PyTorch by {diff:.2e} (> {PARITY_TOLERANCE})"
                           f" on {len(x)} images; see {out_dir / 'export.json'}")
    return report
