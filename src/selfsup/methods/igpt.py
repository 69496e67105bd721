"""iGPT-style masked pixel prediction (Chen et al., Generative Pretraining from Pixels, ICML 2020),
BERT objective.

Defining idea: treat a small image as a sequence of colour tokens and learn a transformer that
predicts hidden pixels from the visible ones; its intermediate activations are image features.

Algorithm (paper Sec. 2-3; openai/image-gpt ``color_quantize``): images are downsampled (32, 48,
64 px; 16 px at CPU scale) and each pixel is replaced by the nearest of K colours, a palette
fitted by k-means on training pixels (K = 512, a 9-bit palette); the BERT variant masks 15% of the
tokens per image and predicts them (cross-entropy on masked positions only) with a transformer
(learned position embeddings). Linear probes read the average-pooled activations of a middle
layer (they peak there, not at the last one): ``encoder`` returns those. The network is the
method's own transformer over colour tokens: ``model.backbone`` is not used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment.views import ViewConfig
from ..backbones.vit import Block
from ..report.pictures import denormalize
from . import METHODS
from .base import BatchInfo, Method, StepOutput


def fit_palette(pixels: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """k-means (scikit-learn, k-means++ init) on RGB pixels [N, 3] in [0, 1] -> centres [k, 3]."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=1, random_state=seed, max_iter=100)
    km.fit(pixels.double().numpy())
    return torch.from_numpy(km.cluster_centers_).float()


def quantize(x01: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """[B, 3, r, r] in [0, 1] -> [B, r*r] palette indices (nearest colour, raster order)."""
    px = x01.permute(0, 2, 3, 1).reshape(x01.shape[0], -1, 3)
    d = ((px[:, :, None] - palette.to(px)[None, None]) ** 2).sum(-1)
    return d.argmin(dim=2)


class PixelTransformer(nn.Module):
    def __init__(self, n_colors: int, n_tokens: int, dim: int, depth: int, heads: int):
        super().__init__()
        self.tok = nn.Embedding(n_colors + 1, dim)          # the last id is the mask token
        self.pos = nn.Parameter(torch.randn(1, n_tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, n_colors)
        self.mask_id = n_colors

    def forward(self, ids: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """ids [B, n] -> activations [B, n, dim] after ``upto`` blocks (all by default)."""
        t = self.tok(ids) + self.pos
        for blk in self.blocks[:upto]:
            t = blk(t)
        return t


class IGPTEncoder(nn.Module):
    """Normalised RGB images -> colour tokens -> the transformer's activations after
    ``probe_layer`` blocks, layer-normalised and average-pooled [B, dim]. Owns the palette, so the
    saved encoder is complete."""

    def __init__(self, net: PixelTransformer, n_colors: int, resolution: int, probe_layer: int):
        super().__init__()
        self.net = net
        # placeholder palette (a grey ramp) until IGPT.prepare fits it to the data
        self.register_buffer("palette", torch.linspace(0, 1, n_colors)[:, None].repeat(1, 3))
        self.resolution, self.probe_layer = resolution, probe_layer
        self.embed_dim = net.pos.shape[-1]

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised RGB [B, 3, H, W] -> colour tokens [B, r*r]."""
        r = self.resolution
        x01 = denormalize(x).clamp(0, 1)
        if x01.shape[-1] != r:
            x01 = F.interpolate(x01, size=(r, r), mode="area")
        return quantize(x01, self.palette)

    def forward(self, x):
        h = self.net(self.tokens(x), self.probe_layer)
        return F.layer_norm(h, h.shape[-1:]).mean(dim=1)


@dataclass
class IGPTConfig:
    resolution: int = 32
    n_colors: int = 512
    dim: int = 512
    depth: int = 24
    heads: int = 8
    mask_ratio: float = 0.15
    probe_layer: int = 0           # blocks before the probed activations; 0 = the middle


@METHODS.register("igpt")
class IGPT(Method):
    Config = IGPTConfig
    encoder_is_backbone = False   # the encoder is the colour-token transformer with its palette

    def __init__(self, backbone: nn.Module | None = None, cfg: IGPTConfig | None = None,
                 view_cfg: ViewConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or IGPTConfig()
        n = cfg.resolution ** 2
        net = PixelTransformer(cfg.n_colors, n, cfg.dim, cfg.depth, cfg.heads)
        self.enc = IGPTEncoder(net, cfg.n_colors, cfg.resolution,
                               cfg.probe_layer or max(1, cfg.depth // 2))
        self.net = net
        self.flip_p = view_cfg.flip_p if view_cfg is not None else 0.5

    def prepare(self, images: torch.Tensor) -> None:
        r = self.cfg.resolution
        x = F.interpolate(images.float().div(255), size=(r, r), mode="area")
        px = x.permute(0, 2, 3, 1).reshape(-1, 3)
        g = torch.Generator().manual_seed(0)
        px = px[torch.randperm(len(px), generator=g)[:100_000]]
        if len(torch.unique(px, dim=0)) < self.cfg.n_colors:
            raise ValueError(f"igpt: the data has fewer distinct colours than method.n_colors="
                             f"{self.cfg.n_colors}; lower it")
        self.enc.palette.copy_(fit_palette(px, self.cfg.n_colors))

    @property
    def palette(self) -> torch.Tensor:
        return self.enc.palette

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc.tokens(x)

    @torch.no_grad()
    def views(self, images):
        from ..augment.views import IMAGENET_MEAN, IMAGENET_STD, normalize

        x = images.float().div(255) if images.dtype == torch.uint8 else images
        flip = torch.rand(x.shape[0], device=x.device) < self.flip_p
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        return [normalize(x, IMAGENET_MEAN, IMAGENET_STD)]

    def training_step(self, views, progress, batch: BatchInfo | None = None) -> StepOutput:
        ids = self.tokens(views[0])                                     # [B, n]
        b, n = ids.shape
        k = max(1, int(round(self.cfg.mask_ratio * n)))
        masked = torch.zeros(b, n, dtype=torch.bool, device=ids.device)
        pick = torch.rand(b, n, device=ids.device).argsort(dim=1)[:, :k]
        masked.scatter_(1, pick, True)                                  # k masked per image
        inp = torch.where(masked, torch.full_like(ids, self.net.mask_id), ids)
        logits = self.net.head(self.net.norm(self.net(inp)))            # [B, n, K]
        loss = F.cross_entropy(logits[masked], ids[masked])
        acc = (logits[masked].argmax(-1) == ids[masked]).float().mean().item()
        return StepOutput(loss, {"loss": loss.item(), "masked_acc": acc})

    @torch.no_grad()
    def pictures(self, x):
        """Input, its palette quantisation, and a reconstruction with 15% of tokens masked."""
        r = self.cfg.resolution
        ids = self.tokens(x)
        b, n = ids.shape
        masked = torch.rand(b, n, device=ids.device) < self.cfg.mask_ratio
        inp = torch.where(masked, torch.full_like(ids, self.net.mask_id), ids)
        pred = self.net.head(self.net.norm(self.net(inp))).argmax(-1)
        filled = torch.where(masked, pred, ids)

        def img(t):
            return self.palette[t].view(b, r, r, 3).permute(0, 3, 1, 2)

        shown = img(ids).clone()
        shown[masked.view(b, 1, r, r).expand(-1, 3, -1, -1)] = 0.5
        up = lambda t: F.interpolate(t, size=x.shape[-2:], mode="nearest")  # noqa: E731
        return {"input": denormalize(x).clamp(0, 1), "quantised": up(img(ids)),
                "masked": up(shown), "predicted": up(img(filled))}

    @property
    def encoder(self) -> nn.Module:
        return self.enc
