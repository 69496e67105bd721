"""Backbones: ``forward(x[B,C,H,W]) -> [B, embed_dim]`` pooled features.

Build by name: ``create("resnet18", width=0.25, cifar_stem=True)``.
"""

from __future__ import annotations

from torch import nn

from ..registry import Registry

BACKBONES: Registry = Registry("backbone")


def create(name: str, **kwargs) -> nn.Module:
    return BACKBONES.get(name)(**kwargs)


def build(name: str, width: float = 1.0, cifar_stem: bool = True, image_size: int = 32,
          patch_size: int = 4, depth: int = 0, pool: str = "cls") -> nn.Module:
    """Build from the run's settings: ViTs also take the image and patch sizes (their token grid
    and position embeddings depend on them); convnets ignore those. ``timm:NAME`` and
    ``torchvision:NAME`` build those libraries' architectures when they are installed. ``pool``
    (ViTs): the class token or the mean patch token."""
    if ":" in name:
        from .external import external_backbone

        return external_backbone(name, image_size)
    if name.startswith("vit"):
        return create(name, width=width, cifar_stem=cifar_stem, image_size=image_size,
                      patch_size=patch_size, pool=pool, **({"depth": depth} if depth else {}))
    return create(name, width=width, cifar_stem=cifar_stem)


def names() -> list[str]:
    return BACKBONES.names()


from . import convnet, resnet, vit, wideresnet  # noqa: E402,F401  (registers the backbones)
