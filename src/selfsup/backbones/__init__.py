"""Backbones: ``forward(x[B,C,H,W]) -> [B, embed_dim]`` pooled features.

Build by name: ``create("resnet18", width=0.25, cifar_stem=True)``.
"""

from __future__ import annotations

from torch import nn

from ..registry import Registry

BACKBONES: Registry = Registry("backbone")


def create(name: str, **kwargs) -> nn.Module:
    return BACKBONES.get(name)(**kwargs)


def names() -> list[str]:
    return BACKBONES.names()


from . import convnet, resnet, wideresnet  # noqa: E402,F401  (registers the backbones)
