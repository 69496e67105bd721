"""A small Vision Transformer (Dosovitskiy et al., 2021) with a token-level, maskable forward.

``forward(x) -> [B, D]`` (the class token after the final norm, the backbone contract);
``forward_tokens(x, keep=None) -> [B, 1 + n, D]``: the class token and the patch tokens, where
``keep`` [B, n_keep] lists the patch indices each image keeps (MAE's encoder sees only those).
``pool`` chooses the pooled feature: ``cls`` (the class token, as MAE and DINO) or ``mean`` (the
average of the final patch tokens; the ViT then has no class token at all, as I-JEPA's, and
``forward_tokens`` returns the patch tokens alone, [B, n, D]).
Fixed 2-D sin-cos position embeddings (as MAE), pre-norm blocks, patch size configurable (4 px
suits 32 px images: 64 tokens). Sizes: ``vit_tiny`` (192-d, 12 blocks, 3 heads) and ``vit_small``
(384-d, 12 blocks, 6 heads); ``width`` scales the embedding dimension, ``depth`` the blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from . import BACKBONES


def sincos_2d(dim: int, grid: int, scale: float = 1.0) -> torch.Tensor:
    """[grid*grid, dim] fixed position embeddings: half the channels encode the row, half the
    column, each as sin/cos at geometrically spaced frequencies (MAE ``get_2d_sincos_pos_embed``)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a dimension divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    pos = torch.arange(grid, dtype=torch.float64) * scale
    ys, xs = torch.meshgrid(pos, pos, indexing="ij")

    def enc(pos):
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([enc(ys), enc(xs)], dim=1).float()


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, image_size: int = 32, patch_size: int = 4, dim: int = 192, depth: int = 12,
                 heads: int = 3, in_channels: int = 3, pool: str = "cls"):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"model.pool is {pool!r}: choose cls (the class token) or mean "
                             f"(the average patch token)")
        self.pool = pool
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size "
                             f"{patch_size}")
        self.patch_size, self.grid = patch_size, image_size // patch_size
        self.num_patches = self.grid ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.register_buffer("pos_embed", sincos_2d(dim, self.grid)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.embed_dim = dim
        self.map_stride = patch_size
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def patchify_embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> patch tokens with position embeddings [B, n, D]. Square images of
        another multiple of the patch size (multi-crop's local crops) get the sin-cos embedding
        of their grid, positions rescaled to span the same range as the training grid (what
        DINO's interpolation of learned embeddings approximates)."""
        side = x.shape[-1]
        if side % self.patch_size or x.shape[-2] != side:
            raise ValueError(f"this ViT takes square images whose side is a multiple of "
                             f"{self.patch_size} px (trained at {self.grid * self.patch_size}), "
                             f"got {tuple(x.shape[-2:])}")
        grid = side // self.patch_size
        pos = self.pos_embed if grid == self.grid else sincos_2d(
            self.embed_dim, grid, scale=(self.grid - 1) / max(grid - 1, 1)).to(x)[None]
        return self.patch_embed(x).flatten(2).transpose(1, 2) + pos

    def forward_tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        t = self.patchify_embed(x)                                   # [B, n, D]
        if keep is not None:                                         # only the visible patches
            t = torch.gather(t, 1, keep[..., None].expand(-1, -1, t.shape[-1]))
        if self.cls_token is not None:
            t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """The patch tokens as a feature map [B, D, H/p, W/p]."""
        t = self.patch_tokens(x)
        return t.transpose(1, 2).reshape(t.shape[0], -1, self.grid, self.grid)

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The final patch tokens [B, n, D]."""
        t = self.forward_tokens(x)
        return t if self.cls_token is None else t[:, 1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.forward_tokens(x)
        return t.mean(1) if self.cls_token is None else t[:, 0]


def _vit(dim, depth, heads, width, image_size, patch_size, in_channels, pool):
    d = int(round(dim * width / (4 * heads))) * 4 * heads  # divisible by heads and by 4
    return ViT(image_size, patch_size, d, depth, heads, in_channels, pool)


@BACKBONES.register("vit_tiny")
def vit_tiny(width: float = 1.0, cifar_stem: bool = True, in_channels: int = 3,
             image_size: int = 32, patch_size: int = 4, depth: int = 12,
             pool: str = "cls") -> ViT:
    return _vit(192, depth, 3, width, image_size, patch_size, in_channels, pool)


@BACKBONES.register("vit_small")
def vit_small(width: float = 1.0, cifar_stem: bool = True, in_channels: int = 3,
              image_size: int = 32, patch_size: int = 4, depth: int = 12,
             pool: str = "cls") -> ViT:
    return _vit(384, depth, 6, width, image_size, patch_size, in_channels, pool)
