"""One MLP builder for projection/prediction heads."""

from __future__ import annotations

from torch import nn

HEAD_KINDS = ("mlp", "linear", "none")


def projection_head(in_dim: int, hidden_dim: int, out_dim: int, kind: str = "mlp",
                    num_layers: int = 2, batch_norm: bool = True, last_bn: bool = False
                    ) -> nn.Module:
    """Build a head: ``mlp`` = (Linear-BN-ReLU) x (num_layers-1) then Linear (+ a BN without
    affine parameters when ``last_bn``, as SimSiam's projector); ``linear`` = one Linear;
    ``none`` = identity (the loss then sees the backbone features directly).

    SimCLR (Chen et al., 2020, Sec. 4.2) shows the nonlinear head beats linear and none; the kind is
    selectable so that claim can be measured.
    """
    if kind == "none":
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind != "mlp":
        raise ValueError(f"unknown head kind '{kind}'; choose one of: {', '.join(HEAD_KINDS)}")
    if num_layers < 2:
        raise ValueError("an mlp head needs num_layers >= 2 (use kind='linear' for one layer)")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


def head_out_dim(kind: str, in_dim: int, out_dim: int) -> int:
    return in_dim if kind == "none" else out_dim
