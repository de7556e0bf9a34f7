"""Metric-learning losses for place recognition: (generalized) contrastive, SARE and triplet.

Every formula is taken from its paper and carries the equation number next to the code:

- GCL: Leyva-Vallina, Strisciuglio, Petkov, "Data-efficient Large Scale Place Recognition with
  Graded Similarity Supervision" (CVPR 2023): eq. 1 (contrastive), eq. 2 (generalized
  contrastive), supplement eq. 5 (its gradient).
- SARE: Liu, Li, Dai, "Stochastic Attraction-Repulsion Embedding for Large Scale Image
  Localization" (ICCV 2019): eq. 1 (triplet), eq. 3-4 (one negative), eq. 5-6 and appendix
  eq. 7-20 (several negatives, three kernels, gradients).
- Triplet over several negatives: NetVLAD (Arandjelovic et al., CVPR 2016), which sums the
  SARE eq. 1 hinge over the mined negatives. That paper is not among the project's seeds.

The losses act on descriptors as given. The networks L2-normalise them, but nothing here
relies on unit norm, so the formulas stay right if a model skips normalisation. (deepIBL's
Gaussian-joint code uses ``2 q.(n - p)`` in place of ``|q-p|^2 - |q-n|^2``, which holds only
for unit vectors.) SARE is computed in log space, so distances of 1e3 in float32 give a finite
loss and finite gradients.

Errors: option values that come from a configuration (loss name, kernel, mode, reduction,
margin) raise :class:`~training.errors.UserError`. Tensors of the wrong shape or labels out
of range raise a plain ``ValueError``, because they point to a bug in the caller. Both are
ValueErrors.

The training engine picks a loss with :func:`make_loss`. The spec's ``kind`` tells the engine
whether to call it with pairs ``(a, b, label)`` or tuples ``(q, p, n)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from training.errors import UserError

Reduction = Literal["mean", "sum", "none"]
Kernel = Literal["gaussian", "cauchy", "exponential"]
Mode = Literal["joint", "ind"]
Kind = Literal["pairs", "tuples"]

REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")
KERNELS: tuple[str, ...] = ("gaussian", "cauchy", "exponential")
MODES: tuple[str, ...] = ("joint", "ind")

# ----------------------------------------------------------------------------- distances


def squared_distance(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distance over the last axis, broadcasting the leading ones.

    Computed as ``sum((a - b)^2)``, not ``|a|^2 + |b|^2 - 2 a.b``. The expanded form loses all
    precision to cancellation when the descriptors are close, and it can come out negative.
    """
    return (a - b).square().sum(dim=-1)


def pair_distance(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distance of rows (last axis): exact, with a finite gradient at distance 0.

    ``sqrt`` has an infinite derivative at 0. Without care, ``a == b`` (a duplicated image or
    a collapsed pair) would put NaN into every weight. Where the squared distance is exactly
    0, the root is taken of 1 instead and the result is replaced by 0 (the double
    ``torch.where``). The distance is then exactly 0 and its gradient is exactly 0, and no
    other distance changes, in any dtype. A ``sqrt(clamp(sq, eps))`` floor would turn d = 0
    into sqrt(eps) and, in float16, underflow. The gradient direction ``(a - b) / d`` is
    undefined at 0 anyway. For ``max(m - d, 0)^2`` the zero vector is the minimum-norm element
    of the generalised (Clarke) gradient there, and ``d^2`` terms never pass through this
    function (see :func:`gcl_loss`).

    The GCL reference code uses ``torch.nn.PairwiseDistance``, which adds 1e-6 to every
    component of ``a - b``. That biases every distance, not only the zero ones.
    """
    sq = squared_distance(a, b)
    positive = sq > 0
    return torch.where(positive, torch.where(positive, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))


# ----------------------------------------------------------------------------- validation


def _choice(what: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")
    return value


def _margin(value: float, *, allow_zero: bool) -> float:
    margin = float(value)
    ok = math.isfinite(margin) and (margin >= 0 if allow_zero else margin > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise UserError(f"margin must be a finite number {bound}, got {value!r}")
    return margin


def _check_pairs(name: str, a: Tensor, b: Tensor, label: Tensor) -> None:
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] == 0:
        raise ValueError(
            f"{name}: a and b must be non-empty [B, D] tensors of the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if not a.is_floating_point():
        raise ValueError(f"{name}: descriptors must be floating point, got {a.dtype}")
    if label.shape != a.shape[:1]:
        raise ValueError(f"{name}: labels must have shape [{a.shape[0]}], got {tuple(label.shape)}")


def _check_tuples(name: str, q: Tensor, p: Tensor, n: Tensor) -> None:
    if q.ndim != 2 or p.shape != q.shape or q.shape[0] == 0:
        raise ValueError(
            f"{name}: q and p must be non-empty [B, D] tensors of the same shape, "
            f"got {tuple(q.shape)} and {tuple(p.shape)}"
        )
    if n.ndim != 3 or n.shape[0] != q.shape[0] or n.shape[2] != q.shape[1] or n.shape[1] == 0:
        raise ValueError(
            f"{name}: n must be [B, K, D] = [{q.shape[0]}, K >= 1, {q.shape[1]}], got {tuple(n.shape)}"
        )
    if not q.is_floating_point():
        raise ValueError(f"{name}: descriptors must be floating point, got {q.dtype}")


def _reduce(per_item: Tensor, reduction: str) -> Tensor:
    _choice("reduction", reduction, REDUCTIONS)
    if reduction == "mean":
        return per_item.mean()
    if reduction == "sum":
        return per_item.sum()
    return per_item


# ----------------------------------------------------------------------------- pair losses


def gcl_loss(a: Tensor, b: Tensor, psi: Tensor, margin: float = 0.5, reduction: Reduction = "mean") -> Tensor:
    """Generalized Contrastive Loss of pairs with graded similarity ``psi`` in [0, 1].

    ``a``, ``b``: [B, D] descriptors. ``psi``: [B] graded similarity (FoV overlap). Returns the
    mean over the pairs by default. The reference code returns per-pair values and its
    train.py averages them per micro-batch, which is what ``"mean"`` does. Margin 0.5 is the
    reference default (``--margin``).

    The attracting term uses the exact squared distance, so it is smooth everywhere. Only
    the hinge goes through :func:`pair_distance`. Gradient with respect to d (GCL
    supplement eq. 5): ``d + m (psi - 1)`` for d < m, and ``psi d`` for d >= m.
    """
    _check_pairs("gcl_loss", a, b, psi)
    m = _margin(margin, allow_zero=False)
    psi = psi.to(a.dtype)
    if not bool(torch.all((psi >= 0) & (psi <= 1))):
        lo, hi = psi.min().item(), psi.max().item()
        raise ValueError(f"gcl_loss: psi must lie in [0, 1], got values in [{lo:g}, {hi:g}]")
    d = pair_distance(a, b)
    # GCL eq. 2: psi * 1/2 d^2 + (1 - psi) * 1/2 max(m - d, 0)^2
    per_pair = psi * 0.5 * squared_distance(a, b) + (1 - psi) * 0.5 * (m - d).clamp(min=0).square()
    return _reduce(per_pair, reduction)


def contrastive_loss(
    a: Tensor, b: Tensor, y: Tensor, margin: float = 0.5, reduction: Reduction = "mean"
) -> Tensor:
    """Contrastive loss (Hadsell et al.) with binary labels ``y`` in {0, 1}, 1 = same place.

    GCL eq. 1 (also SARE eq. 2 with eta = y): ``1/2 d^2`` if y = 1, ``1/2 max(m - d, 0)^2`` if
    y = 0. This is GCL eq. 2 with a binary psi, so it delegates to :func:`gcl_loss` and the
    two cannot drift apart. The default margin is 0.5, the one the GCL code uses for its CL
    baseline. SARE's comparison used 0.7.
    """
    _check_pairs("contrastive_loss", a, b, y)
    if not bool(torch.all((y == 0) | (y == 1))):
        raise ValueError("contrastive_loss: labels y must be 0 or 1; use gcl_loss for graded labels")
    return gcl_loss(a, b, y.to(a.dtype), margin=margin, reduction=reduction)


# ----------------------------------------------------------------------------- tuple losses


def _log_kernel(kernel: str, q: Tensor, x: Tensor) -> Tensor:
    """log k(q, x) for SARE's kernels. ``softmax`` of these gives c_{.|q} (SARE eq. 4, 8)."""
    if kernel == "gaussian":
        return -squared_distance(q, x)  # SARE eq. 4 / 8: exp(-|q - x|^2)
    if kernel == "cauchy":
        return -torch.log1p(squared_distance(q, x))  # SARE eq. 13: 1 / (1 + |q - x|^2)
    return -pair_distance(q, x)  # SARE eq. 17: exp(-|q - x|), the distance NOT squared


def sare_loss(
    q: Tensor,
    p: Tensor,
    n: Tensor,
    kernel: Kernel = "gaussian",
    mode: Mode = "joint",
    reduction: Reduction = "mean",
) -> Tensor:
    """Stochastic Attraction-Repulsion Embedding loss: a KL divergence between match-ability
    priors (h_{p|q} = 1, h_{n|q} = 0) and a kernel fitted on descriptor distances.

    ``q``, ``p``: [B, D] query and positive. ``n``: [B, K, D] negatives. With x_j =
    log k(q, n_j) - log k(q, p) (= |q-p|^2 - |q-n_j|^2 for the Gaussian kernel):

    - ``mode="joint"``: one distribution over the positive and all K negatives, L = -log c*_{p|q}
      = log(1 + sum_j exp(x_j)) (SARE eq. 5-6 / 7-8; per kernel eq. 9 Gaussian, 13 Cauchy,
      17 Exponential). It is evaluated as ``logsumexp([0, x_1..x_K])``, so it never overflows.
    - ``mode="ind"``: each negative makes its own triplet, L_j = -log c_{p|q} = log(1 + exp(x_j))
      (SARE eq. 3-4), and the per-query loss is the **mean** over the K negatives. The paper
      says the forces of the triplets "are averaged" (Sec. 6), and OpenIBL takes the mean over
      B * K. deepIBL's printed loss sums over negatives, but its update divides the summed
      gradient by the number of triplets, so it also averages. Multiply by K to get the sum.
      The paper refers to its appendix for the Cauchy and Exponential single-negative losses,
      but the appendix gives only the multi-negative forms. Their K = 1 case is used here.
      That is exactly eq. 3 with the kernel swapped.

    With K = 1 the two modes coincide: eq. 9/13/17 with N = 1 is eq. 3.
    ``reduction`` acts over the B queries.
    """
    _check_tuples("sare_loss", q, p, n)
    _choice("SARE kernel", kernel, KERNELS)
    _choice("SARE mode", mode, MODES)
    log_k_pos = _log_kernel(kernel, q, p)  # [B]
    log_k_neg = _log_kernel(kernel, q.unsqueeze(1), n)  # [B, K]
    x = log_k_neg - log_k_pos.unsqueeze(1)
    if mode == "joint":
        # SARE eq. 9 / 13 / 17: log(1 + sum_j exp(x_j)), as a log-sum-exp with a zero entry.
        per_query = torch.logsumexp(torch.cat([torch.zeros_like(x[:, :1]), x], dim=1), dim=1)
    else:
        # SARE eq. 3 with eq. 4 (or its Cauchy / Exponential kernel) per negative: log(1 + exp(x_j)).
        per_query = torch.logaddexp(torch.zeros_like(x), x).mean(dim=1)
    return _reduce(per_query, reduction)


def triplet_loss(
    q: Tensor, p: Tensor, n: Tensor, margin: float = 0.1, reduction: Reduction = "mean"
) -> Tensor:
    """NetVLAD's weakly supervised triplet ranking loss, with the margin on squared distances.

    Per query: sum_j max(0, |q-p|^2 + m - |q-n_j|^2). This is SARE eq. 1 summed over the K
    negatives, as NetVLAD does (m = 0.1 in both papers). NetVLAD also takes the min over
    several positives, and that is the miner's job: ``p`` is the one chosen positive.
    ``reduction`` acts over the B queries.

    Not the PyTorch ``triplet_margin_loss`` that OpenIBL uses. That one works on unsquared
    distances and averages over the B * K triplets, so a margin does not carry over between
    the two.
    """
    _check_tuples("triplet_loss", q, p, n)
    m = _margin(margin, allow_zero=True)
    d2_pos = squared_distance(q, p)  # [B]
    d2_neg = squared_distance(q.unsqueeze(1), n)  # [B, K]
    # SARE eq. 1 per negative, summed over negatives as in NetVLAD.
    per_query = (d2_pos.unsqueeze(1) + m - d2_neg).clamp(min=0).sum(dim=1)
    return _reduce(per_query, reduction)


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class LossSpec:
    """A loss with its options bound, and the batch layout it consumes.

    ``kind == "pairs"``: call ``spec(a, b, label)`` with a, b [B, D] and label [B].
    ``kind == "tuples"``: call ``spec(q, p, n)`` with q, p [B, D] and n [B, K, D].
    """

    name: str
    kind: Kind
    fn: Callable[..., Tensor]
    options: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, *tensors: Tensor) -> Tensor:
        return self.fn(*tensors, **self.options)


# name -> (kind, function, options fixed by the name, options a caller may set)
_REGISTRY: dict[str, tuple[Kind, Callable[..., Tensor], dict[str, Any], tuple[str, ...]]] = {
    "contrastive": ("pairs", contrastive_loss, {}, ("margin", "reduction")),
    "gcl": ("pairs", gcl_loss, {}, ("margin", "reduction")),
    "sare_joint": ("tuples", sare_loss, {"mode": "joint"}, ("kernel", "reduction")),
    "sare_ind": ("tuples", sare_loss, {"mode": "ind"}, ("kernel", "reduction")),
    "triplet": ("tuples", triplet_loss, {}, ("margin", "reduction")),
}

LOSS_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def make_loss(name: str, **options: Any) -> LossSpec:
    """Build the loss named in a configuration, checking its options now, before training.

    ``name`` is one of :data:`LOSS_NAMES`. Options: ``margin`` (contrastive, gcl, triplet),
    ``kernel`` (sare_joint, sare_ind: gaussian, cauchy, exponential) and ``reduction`` (all).
    Options left out keep the function defaults.
    """
    _choice("loss", name, LOSS_NAMES)
    kind, fn, fixed, allowed = _REGISTRY[name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(f"loss {name!r} has no option {', '.join(unknown)}; it takes {', '.join(allowed)}")
    if "reduction" in options:
        _choice("reduction", options["reduction"], REDUCTIONS)
    if "kernel" in options:
        _choice("SARE kernel", options["kernel"], KERNELS)
    if "margin" in options:
        options["margin"] = _margin(options["margin"], allow_zero=name == "triplet")
    return LossSpec(name=name, kind=kind, fn=fn, options={**fixed, **options})
