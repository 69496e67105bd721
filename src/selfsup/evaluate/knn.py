"""Weighted kNN classification on cosine similarity (Wu et al., 2018, InstDisc; as in lightly):
each of the k nearest training features votes for its class with weight exp(sim / t)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def knn_predict(train_feats, train_labels, test_feats, num_classes: int, k: int = 200,
                temperature: float = 0.1, chunk: int = 1024) -> np.ndarray:
    """Class scores [N_test, num_classes] (numpy)."""
    bank = F.normalize(torch.as_tensor(train_feats, dtype=torch.float32), dim=1)
    labels = torch.as_tensor(train_labels, dtype=torch.long)
    q_all = F.normalize(torch.as_tensor(test_feats, dtype=torch.float32), dim=1)
    k = min(k, bank.shape[0])
    scores = []
    for s in range(0, q_all.shape[0], chunk):
        sim = q_all[s:s + chunk] @ bank.t()                  # [n, N_train]
        top_sim, top_idx = sim.topk(k, dim=1)                # [n, k]
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes)
        votes.scatter_add_(1, labels[top_idx], weights)      # sum weights per class
        scores.append(votes)
    return torch.cat(scores).numpy() if scores else np.zeros((0, num_classes), np.float32)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, num_classes: int,
                 k: int = 200, temperature: float = 0.1) -> dict:
    scores = knn_predict(train_feats, train_labels, test_feats, num_classes, k, temperature)
    acc = float((scores.argmax(1) == np.asarray(test_labels)).mean()) if len(scores) else float("nan")
    return {f"knn{k}_acc": acc}
