"""Global pooling of a conv feature map [N, C, H, W] into one descriptor per image.

* ``GeM``: generalised mean (Radenović et al., TPAMI 2019), GCL's pooling. Its parameter is named
  ``p`` with shape [1] so GCL checkpoints load as ``pool.p``.
* ``AvgPool``: plain average, GeM with p = 1.
* ``NetVLAD``: Arandjelović et al. (CVPR 2016) as in Nanne's pytorch-NetVlad, with soft assignment,
  residual aggregation, intra-normalisation and a final L2; ``init_from_descriptors`` starts it from
  k-means centroids of local features (an unclustered NetVLAD trains poorly).

All modules return [N, D] and export to ONNX (only elementwise ops, reductions, matmul, softmax).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training.errors import UserError


class GeM(nn.Module):
    """Generalised-mean pooling (mean over positions of x^p)^(1/p), x clamped at ``eps``.

    p = 1 is average pooling and p -> inf max pooling; learning p lets training pick how much the
    strongest activations dominate. ``learnable=False`` keeps p in a buffer of the same name, so the
    state-dict layout is identical either way.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True) -> None:
        super().__init__()
        value = torch.full((1,), float(p))
        if learnable:
            self.p = nn.Parameter(value)
        else:
            self.register_buffer("p", value)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4f}, eps={self.eps}, learnable={isinstance(self.p, nn.Parameter)}"


class AvgPool(nn.Module):
    """Global average pooling: the baseline GCL reports as "avg"."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


class NetVLAD(nn.Module):
    """NetVLAD layer: soft-assign local features to K centroids and sum their residuals.

    ``normalize_input`` L2-normalises each local feature first (NetVLAD's ``vlad_preL2``).
    ``vladv2=False`` is the original NetVLAD: the assignment conv has no bias and its weights are
    ``alpha`` times the unit centroids. ``vladv2=True`` decouples them, with weight 2·alpha·c and
    bias -alpha·||c||², the exact expansion of exp(-alpha·||x - c||²) up to a per-position constant.
    Output: K·C values, each centroid's residual sum L2-normalised (intra-normalisation, Arandjelović
    & Zisserman 2013) and the whole vector L2-normalised.
    """

    def __init__(
        self,
        num_clusters: int = 64,
        dim: int = 512,
        alpha: float = 100.0,
        normalize_input: bool = True,
        vladv2: bool = False,
    ) -> None:
        super().__init__()
        if num_clusters < 1 or dim < 1:
            raise UserError(f"NetVLAD needs num_clusters >= 1 and dim >= 1, got {num_clusters} and {dim}")
        self.num_clusters = num_clusters
        self.dim = dim
        self.normalize_input = normalize_input
        self.vladv2 = vladv2
        self.conv = nn.Conv2d(dim, num_clusters, kernel_size=1, bias=vladv2)
        self.centroids = nn.Parameter(F.normalize(torch.randn(num_clusters, dim), dim=1))
        self._tie_assignment(alpha)

    @property
    def output_dim(self) -> int:
        return self.num_clusters * self.dim

    def _tie_assignment(self, alpha: float) -> None:
        """Set the soft-assignment conv from the current centroids (see the class docstring)."""
        with torch.no_grad():
            centroids = self.centroids.detach()
            if self.vladv2:
                self.conv.weight.copy_((2.0 * alpha * centroids)[:, :, None, None])
                self.conv.bias.copy_(-alpha * centroids.pow(2).sum(dim=1))
            else:
                self.conv.weight.copy_((alpha * F.normalize(centroids, dim=1))[:, :, None, None])

    def init_from_descriptors(self, descriptors: torch.Tensor, iters: int = 100, seed: int = 0) -> float:
        """Start from k-means centroids of sampled local features [M, C]; returns the chosen alpha.

        alpha is set, as in NetVLAD, so that on average the nearest centroid gets 100 times the
        assignment weight of the second nearest (-log(0.01) over the mean gap).
        """
        if descriptors.ndim != 2 or descriptors.shape[1] != self.dim:
            raise UserError(
                f"NetVLAD init needs local descriptors of shape [M, {self.dim}], "
                f"got {list(descriptors.shape)}"
            )
        x = descriptors.detach().to(self.centroids.device, torch.float32)
        if self.normalize_input:
            x = F.normalize(x, dim=1)  # cluster in the space forward() assigns in
        centroids = kmeans(x, self.num_clusters, iters=iters, seed=seed)
        if self.vladv2:
            gap = torch.cdist(x, centroids).pow(2).topk(2, dim=1, largest=False).values.diff(dim=1)
        else:
            gap = -(x @ F.normalize(centroids, dim=1).T).topk(2, dim=1).values.diff(dim=1)
        alpha = -math.log(0.01) / gap.mean().clamp(min=1e-12).item()
        with torch.no_grad():
            self.centroids.copy_(centroids.to(self.centroids.dtype))
        self._tie_assignment(alpha)
        return alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        if self.normalize_input:
            x = F.normalize(x, dim=1)
        assign = self.conv(x).flatten(2).softmax(dim=1)  # [N, K, HW]
        features = x.flatten(2)  # [N, C, HW]
        # sum_i a_ki (x_i - c_k) = sum_i a_ki x_i - c_k sum_i a_ki
        vlad = assign @ features.transpose(1, 2) - assign.sum(dim=2, keepdim=True) * self.centroids
        vlad = F.normalize(vlad, dim=2)  # intra-normalisation
        return F.normalize(vlad.reshape(n, -1), dim=1)


def kmeans(x: torch.Tensor, k: int, iters: int = 100, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding on [M, C] points; returns [k, C] centroids.

    Pure torch, so it runs wherever the features are (CPU or GPU) without faiss. Deterministic for a
    given seed. A cluster that loses all its points keeps its previous centroid.
    """
    m = x.shape[0]
    if m < k:
        raise UserError(f"k-means needs at least k={k} points, got {m}")
    generator = torch.Generator().manual_seed(seed)
    first = int(torch.randint(m, (1,), generator=generator))
    chosen = [first]
    nearest = (x - x[first]).pow(2).sum(dim=1)
    for _ in range(1, k):
        weights = nearest.cpu().double()
        if weights.sum() <= 0:  # fewer distinct points than k: pick uniformly among the rest
            weights = torch.ones_like(weights)
            weights[chosen] = 0
        index = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(index)
        nearest = torch.minimum(nearest, (x - x[index]).pow(2).sum(dim=1))
    centroids = x[chosen].clone()
    labels = None
    for _ in range(iters):
        new_labels = torch.cdist(x, centroids).argmin(dim=1)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).unsqueeze(1)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids


def sample_local_descriptors(
    feature_maps: torch.Tensor, per_image: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw ``per_image`` random positions (no repeats) from each map [N, C, H, W] -> [N·per_image, C].

    Sampling a few positions from many images covers more scenes than all positions of a few
    images, which is what the NetVLAD clustering wants.
    """
    n, c, h, w = feature_maps.shape
    if not 0 < per_image <= h * w:
        raise UserError(f"per_image={per_image} must be in 1..{h * w} (feature map is {h}x{w})")
    flat = feature_maps.flatten(2).transpose(1, 2)  # [N, HW, C]
    picks = torch.stack([torch.randperm(h * w, generator=generator)[:per_image] for _ in range(n)])
    return torch.gather(flat, 1, picks.to(flat.device).unsqueeze(2).expand(-1, -1, c)).reshape(-1, c)
