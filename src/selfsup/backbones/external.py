"""Starting from a model that already sees: weights from a local file (``model.init=PATH``) and the
architectures of timm / torchvision (``model.backbone=timm:NAME`` / ``torchvision:NAME``) when those
optional libraries are installed. Nothing is ever downloaded: pretrained weights come from a file
the user gives.

``load_init`` accepts a safetensors file, a PyTorch state dict (``.pt``/``.pth``/``.bin``, read with
``weights_only=True``: no code runs), a checkpoint wrapping one under ``state_dict``/``model``, or a
selfsup run folder (its ``encoder.safetensors``; a ``fit`` folder's ``pretrain/``). Key prefixes that
trainers add (``module.``, ``backbone.``, ``encoder.``, ``model.``) are stripped when that makes
the keys match. Every tensor must then match in name and shape; anything else is one error line
naming the file and the first mismatched keys.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

PREFIXES = ("module.", "model.", "backbone.", "encoder.", "base.")


class InitError(ValueError):
    """model.init cannot be used (printed as one line by the CLI)."""


class _Wrapped(nn.Module):
    """A timm/torchvision network as a selfsup backbone: pooled features [B, embed_dim]."""

    def __init__(self, net: nn.Module, embed_dim: int):
        super().__init__()
        self.net = net
        self.embed_dim = embed_dim

    def forward(self, x):
        return torch.flatten(self.net(x), 1)


def external_backbone(name: str, image_size: int = 32) -> nn.Module:
    """``timm:NAME`` or ``torchvision:NAME`` without its classifier, randomly initialised."""
    lib, _, arch = name.partition(":")
    if lib == "timm":
        try:
            import timm
        except ImportError:
            raise InitError(f"model.backbone={name} needs the optional library timm, which is not "
                            f"installed (pip install timm); selfsup's own backbones need "
                            f"nothing extra: selfsup list backbones") from None
        net = timm.create_model(arch, pretrained=False, num_classes=0)
        return _Wrapped(net, int(net.num_features))
    if lib == "torchvision":
        try:
            import torchvision
        except ImportError:
            raise InitError(f"model.backbone={name} needs the optional library torchvision, which "
                            f"is not installed (pip install torchvision); selfsup's own backbones "
                            f"need nothing extra: selfsup list backbones") from None
        net = torchvision.models.get_model(arch, weights=None)
        for attr in ("fc", "classifier", "head", "heads"):
            if hasattr(net, attr):
                setattr(net, attr, nn.Identity())
                break
        with torch.no_grad():
            dim = net.eval()(torch.zeros(1, 3, image_size, image_size)).flatten(1).shape[1]
        return _Wrapped(net.train(), int(dim))
    raise InitError(f"model.backbone={name}: external backbones are written timm:NAME or "
                    f"torchvision:NAME")


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():
        for cand in (path / "encoder.safetensors", path / "pretrain" / "encoder.safetensors"):
            if cand.is_file():
                path = cand
                break
        else:
            raise InitError(f"model.init={path}: a folder without encoder.safetensors (give a "
                            f"weights file, or a finished selfsup pretrain/fit folder)")
    if not path.is_file():
        raise InitError(f"model.init={path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InitError(f"model.init={path}: not a readable safetensors file or PyTorch state "
                        f"dict ({type(e).__name__}: {str(e).splitlines()[0][:100]})") from None
    for key in ("state_dict", "model", "encoder"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InitError(f"model.init={path}: expected a dict of tensors (a state dict)")
    return state


def _match(state: dict, own: dict) -> dict:
    """``state`` with the prefixes stripped (up to two, e.g. ``model.backbone.``) that make the
    most of its keys name ``own``'s; ``state`` itself on a tie."""
    cands = [state]
    for _ in range(2):
        cands += [{k[len(p):]: v for k, v in c.items() if k.startswith(p)}
                  for c in list(cands) for p in PREFIXES]
    return max((c for c in cands if c), key=lambda c: len(set(c) & set(own)))


def load_init(backbone: nn.Module, path: str | Path) -> dict:
    """Load the weights of ``path`` into ``backbone`` (every tensor, shapes checked)."""
    path = Path(path).expanduser()
    state = _match(_read_state(path), backbone.state_dict())
    own = backbone.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {'; '.join(shapes[:2])})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})")
        raise InitError(f"model.init={path}: the weights do not fit model.backbone: "
                        f"{', '.join(parts)}; check model.backbone/model.width")
    backbone.load_state_dict({k: state[k] for k in own})
    return {"init": str(path), "tensors": len(own), "ignored": len(extra)}
