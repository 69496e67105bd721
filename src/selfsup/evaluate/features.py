from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..augment.views import IMAGENET_MEAN, IMAGENET_STD, normalize


@torch.no_grad()
def extract_features(encoder: nn.Module, dataset, batch_size: int = 512, device="cpu",
                     mean=IMAGENET_MEAN, std=IMAGENET_STD, channels_last: bool = True) -> np.ndarray:
    """Frozen features [N, D] (float32) of every image in ``dataset`` (an ImageDataset), with the
    encoder in eval mode (BN uses running statistics). The encoder's mode is restored after."""
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for start in range(0, len(dataset), batch_size):
            idx = np.arange(start, min(start + batch_size, len(dataset)))
            x = dataset.batch(idx).to(device, non_blocking=True).float().div_(255)
            x = normalize(x, mean, std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(encoder(x).float().cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
