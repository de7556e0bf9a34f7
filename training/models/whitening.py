"""PCA-whitening of global descriptors, fitted on data and folded into a Linear layer.

Whitening decorrelates descriptor dimensions and equalises their variance, so that frequent visual
patterns (bursty, correlated dimensions) stop dominating the L2 distance; it gives GCL its largest
gains (ML_NOTES §0.2). The fit follows Radenović's ``pcawhitenlearn`` as used by GCL's apply_pca.py:
centre, eigen-decompose the covariance, keep the top ``dim`` components scaled by 1/sqrt(eigenvalue).
Folding mean and projection into ``nn.Linear`` puts the whitening inside the network, and hence
inside the exported ONNX graph, instead of in every consumer.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training.errors import UserError


def fit_pca_whitening(descriptors: np.ndarray, dim: int, eps: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """Learn PCA-whitening from descriptors [N, D]: returns mean [D] and projection [dim, D] (float32).

    ``(x - mean) @ projection.T`` has identity covariance on the fitting data. ``eps`` is added to
    each eigenvalue before the square root to bound the gain on near-degenerate directions (GCL
    uses none). Eigenvector signs are fixed (largest component positive) so refits are reproducible.
    ``dim`` must not exceed the rank that N samples can support (N - 1) nor D.
    """
    x = np.asarray(descriptors, dtype=np.float64)
    if x.ndim != 2:
        raise UserError(f"whitening needs descriptors of shape [N, D], got shape {x.shape}")
    n, d = x.shape
    if not 0 < dim <= min(d, n - 1):
        raise UserError(f"whitening dim {dim} must be in 1..{min(d, n - 1)} for {n} descriptors of dim {d}")
    mean = x.mean(axis=0)
    centred = x - mean
    covariance = centred.T @ centred / n
    eigval, eigvec = np.linalg.eigh((covariance + covariance.T) / 2)
    order = np.argsort(eigval)[::-1][:dim]
    eigval, eigvec = np.clip(eigval[order], 0.0, None), eigvec[:, order]
    signs = np.sign(eigvec[np.abs(eigvec).argmax(axis=0), np.arange(dim)])
    projection = (eigvec * signs).T / np.sqrt(eigval + eps)[:, None]
    return mean.astype(np.float32), projection.astype(np.float32)


def fold_whitening(mean: np.ndarray | torch.Tensor, projection: np.ndarray | torch.Tensor) -> nn.Linear:
    """A frozen Linear computing (x - mean) @ projection.T: weight = P, bias = -P @ mean."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).detach().cpu()
    proj_t = torch.as_tensor(projection, dtype=torch.float32).detach().cpu()
    if proj_t.ndim != 2 or mean_t.shape != (proj_t.shape[1],):
        raise UserError(
            f"whitening mean {tuple(mean_t.shape)} and projection {tuple(proj_t.shape)} "
            "do not fit: need mean [D] and projection [dim, D]"
        )
    layer = nn.Linear(proj_t.shape[1], proj_t.shape[0])
    with torch.no_grad():
        layer.weight.copy_(proj_t)
        layer.bias.copy_(-(proj_t.double() @ mean_t.double()).float())
    return layer.requires_grad_(False)
