"""Tests of training.losses against the papers' formulas and gradients.

Expected values are written out from the equations with ``math``, on 2-D descriptors whose
distances are known (3-4-5 triangles), so they do not depend on the code under test.
Gradients are compared with the closed forms: GCL supplement eq. 5, and SARE appendix
eq. 10-20 for joint and Table 1 for independent.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from training.errors import UserError
from training.losses import (
    KERNELS,
    LOSS_NAMES,
    MODES,
    LossSpec,
    contrastive_loss,
    gcl_loss,
    make_loss,
    pair_distance,
    sare_loss,
    triplet_loss,
)

F64 = torch.float64


def t(*rows: object) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


# q at the origin; |q-p| = 0.5, |q-n1| = 1, |q-n2| = 2.
Q = t([0.0, 0.0])
P = t([0.3, 0.4])
N = t([[1.0, 0.0], [0.0, 2.0]])  # [1, 2, 2]
DP, DN = 0.5, (1.0, 2.0)


def random_tuples(b: int = 3, k: int = 4, d: int = 5, seed: int = 0, dtype: torch.dtype = F64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=g, dtype=dtype)
    p = q + 0.5 * torch.randn(b, d, generator=g, dtype=dtype)
    n = q.unsqueeze(1) + 0.8 * torch.randn(b, k, d, generator=g, dtype=dtype)
    return q.requires_grad_(), p.requires_grad_(), n.requires_grad_()


def grads(loss: torch.Tensor, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, xs)


# ----------------------------------------------------------------------------- distance


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, F64])
def test_pair_distance_exact_and_zero_gradient_at_zero(dtype: torch.dtype) -> None:
    assert pair_distance(Q, P).item() == 0.5
    a = torch.ones(2, 3, dtype=dtype, requires_grad=True)
    b = torch.cat([a.detach()[:1], a.detach()[1:] + 0.5]).requires_grad_()
    d = pair_distance(a, b)
    ga, gb = grads(d.sum(), a, b)
    assert d[0].item() == 0.0 and d[1].item() == pytest.approx(math.sqrt(3) / 2, rel=1e-3)
    assert torch.all(ga[0] == 0) and torch.all(gb[0] == 0)
    assert torch.allclose(ga[1].double(), torch.full((3,), -1 / math.sqrt(3), dtype=F64), atol=1e-3)


# ----------------------------------------------------------------------------- GCL / contrastive


def test_gcl_values_by_hand() -> None:
    a = t([0.0, 0.0], [0.0, 0.0], [0.0, 0.0])
    b = t([0.18, 0.24], [0.18, 0.24], [0.3, 0.4])  # d = 0.3, 0.3, 0.5
    m = 0.5
    psi = t(1.0, 0.0, 0.25)
    expect = [
        0.5 * 0.3**2,  # psi = 1: 1/2 d^2
        0.5 * (m - 0.3) ** 2,  # psi = 0: 1/2 max(m - d, 0)^2
        0.25 * 0.5 * 0.5**2 + 0.75 * 0.0,  # d = m: hinge is 0
    ]
    got = gcl_loss(a, b, psi, margin=m, reduction="none")
    assert got.tolist() == pytest.approx(expect)
    assert gcl_loss(a, b, psi, margin=m).item() == pytest.approx(sum(expect) / 3)
    assert gcl_loss(a, b, psi, margin=m, reduction="sum").item() == pytest.approx(sum(expect))


@settings(max_examples=40, deadline=None)
@given(
    psi=st.floats(0.0, 1.0),
    scale=st.floats(0.0, 2.0),
    margin=st.floats(0.05, 2.0),
)
def test_gcl_is_the_convex_combination_of_its_extremes(psi: float, scale: float, margin: float) -> None:
    a = torch.zeros(1, 4, dtype=F64)
    b = torch.full((1, 4), scale / 2, dtype=F64)  # d = scale
    one = gcl_loss(a, b, t(1.0), margin=margin)
    zero = gcl_loss(a, b, t(0.0), margin=margin)
    assert one.item() == pytest.approx(0.5 * scale**2, abs=1e-12)
    assert zero.item() == pytest.approx(0.5 * max(margin - scale, 0.0) ** 2, abs=1e-12)
    mid = gcl_loss(a, b, t(psi), margin=margin)
    assert mid.item() == pytest.approx(psi * one.item() + (1 - psi) * zero.item(), abs=1e-9)


def test_contrastive_equals_gcl_with_binary_labels() -> None:
    q, p, _ = random_tuples(b=8, seed=1)
    y = torch.tensor([1, 0, 1, 0, 0, 1, 1, 0])
    for reduction in ("mean", "sum", "none"):
        cl = contrastive_loss(q, p, y, margin=0.7, reduction=reduction)
        gcl = gcl_loss(q, p, y.to(F64), margin=0.7, reduction=reduction)
        assert torch.equal(cl, gcl)
    # GCL eq. 1 by hand: d = 0.5 with y = 1 and y = 0, m = 0.7.
    a, b = t([0.0, 0.0], [0.0, 0.0]), t([0.3, 0.4], [0.3, 0.4])
    got = contrastive_loss(a, b, torch.tensor([1, 0]), margin=0.7, reduction="none")
    assert got.tolist() == pytest.approx([0.125, 0.5 * 0.2**2])


def test_gcl_gradient_matches_supplement_eq5() -> None:
    g = torch.Generator().manual_seed(3)
    bsz, m = 64, 0.5
    a = torch.randn(bsz, 6, generator=g, dtype=F64) * 0.15
    b = torch.randn(bsz, 6, generator=g, dtype=F64) * 0.15  # d spans both sides of m
    psi = torch.rand(bsz, generator=g, dtype=F64)
    a.requires_grad_()
    b.requires_grad_()
    ga, gb = grads(gcl_loss(a, b, psi, margin=m), a, b)
    d = (a - b).norm(dim=1).detach()
    assert (d < m).any() and (d >= m).any()
    # GCL supplement eq. 5: dL/dd = d + m (psi - 1) if d < m, else psi d; chain rule (a - b)/d.
    dl_dd = torch.where(d < m, d + m * (psi - 1), psi * d)
    expect_a = (dl_dd / d).unsqueeze(1) * (a - b).detach() / bsz
    assert torch.allclose(ga, expect_a, atol=1e-12)
    assert torch.allclose(gb, -expect_a, atol=1e-12)


@pytest.mark.parametrize("fn", [gcl_loss, contrastive_loss])
def test_pair_losses_finite_gradient_at_zero_distance(fn) -> None:
    a = torch.randn(4, 8).requires_grad_()
    b = a.detach().clone().requires_grad_()
    label = torch.tensor([0.0, 1.0, 0.0, 1.0])
    loss = fn(a, b, label)
    ga, gb = grads(loss, a, b)
    assert torch.isfinite(loss)
    assert torch.all(torch.isfinite(ga)) and torch.all(torch.isfinite(gb))
    # The hinge term is at its maximum 1/2 m^2 for the two negatives.
    assert loss.item() == 2 * 0.5 * 0.5**2 / 4


def test_pair_losses_gradcheck() -> None:
    g = torch.Generator().manual_seed(5)
    a = (torch.randn(5, 4, generator=g, dtype=F64) * 0.2).requires_grad_()
    b = (torch.randn(5, 4, generator=g, dtype=F64) * 0.2).requires_grad_()
    psi = torch.rand(5, generator=g, dtype=F64)
    assert torch.autograd.gradcheck(lambda x, z: gcl_loss(x, z, psi), (a, b))
    y = torch.tensor([1, 0, 0, 1, 0])
    assert torch.autograd.gradcheck(lambda x, z: contrastive_loss(x, z, y), (a, b))


# ----------------------------------------------------------------------------- SARE values


def _log_k(kernel: str, d: float) -> float:
    return {"gaussian": -(d**2), "cauchy": -math.log1p(d**2), "exponential": -d}[kernel]


@pytest.mark.parametrize("kernel", KERNELS)
def test_sare_values_by_hand(kernel: str) -> None:
    if kernel == "gaussian":  # eq. 9 / eq. 3-4
        terms = [math.exp(DP**2 - dn**2) for dn in DN]
    elif kernel == "cauchy":  # eq. 13
        terms = [(1 + DP**2) / (1 + dn**2) for dn in DN]
    else:  # eq. 17: distances not squared
        terms = [math.exp(DP - dn) for dn in DN]
    joint = math.log(1 + sum(terms))
    ind = sum(math.log(1 + x) for x in terms) / len(terms)
    assert sare_loss(Q, P, N, kernel=kernel, mode="joint").item() == pytest.approx(joint, rel=1e-12)
    assert sare_loss(Q, P, N, kernel=kernel, mode="ind").item() == pytest.approx(ind, rel=1e-12)
    # Eq. 3 / 5 as -log of the kernel's probability c_{p|q}, written the other way round.
    kp, kn = math.exp(_log_k(kernel, DP)), [math.exp(_log_k(kernel, dn)) for dn in DN]
    assert joint == pytest.approx(-math.log(kp / (kp + sum(kn))), rel=1e-12)
    assert ind == pytest.approx(sum(-math.log(kp / (kp + x)) for x in kn) / 2, rel=1e-12)


def test_sare_reductions_over_queries() -> None:
    q, p, n = random_tuples(b=3)
    per = sare_loss(q, p, n, reduction="none")
    assert per.shape == (3,)
    assert torch.allclose(sare_loss(q, p, n, reduction="sum"), per.sum())
    assert torch.allclose(sare_loss(q, p, n), per.mean())


@pytest.mark.parametrize("kernel", KERNELS)
def test_sare_joint_equals_ind_for_one_negative(kernel: str) -> None:
    # Eq. 9 / 13 / 17 with N = 1 is eq. 3: the two modes must agree exactly.
    q, p, n = random_tuples(k=1, seed=7)
    joint = sare_loss(q, p, n, kernel=kernel, mode="joint", reduction="none")
    ind = sare_loss(q, p, n, kernel=kernel, mode="ind", reduction="none")
    assert torch.allclose(joint, ind, rtol=1e-14, atol=0)
    q2, p2, n2 = random_tuples(k=3, seed=7)
    assert not torch.allclose(
        sare_loss(q2, p2, n2, kernel=kernel, mode="joint"), sare_loss(q2, p2, n2, kernel=kernel, mode="ind")
    )


def test_sare_gaussian_joint_matches_deepibl_form_on_unit_vectors() -> None:
    # deepIBL computes eq. 9 as log(1 + sum exp(2 q.(n - p))): equal only for unit-norm descriptors.
    q, p, n = (x.detach() for x in random_tuples(seed=11))
    q, p, n = (torch.nn.functional.normalize(x, dim=-1) for x in (q, p, n))
    shortcut = torch.log1p(torch.exp(2 * torch.einsum("bd,bkd->bk", q, n - p.unsqueeze(1))).sum(1))
    assert torch.allclose(sare_loss(q, p, n, reduction="none"), shortcut, atol=1e-12)


# ----------------------------------------------------------------------------- SARE gradients


def _joint_grads(kernel: str, q: torch.Tensor, p: torch.Tensor, n: torch.Tensor):
    """SARE appendix eq. 10-12 (Gaussian), 14-16 (Cauchy), 18-20 (Exponential), per query."""
    qp = q - p  # [B, D]
    qn = q.unsqueeze(1) - n  # [B, K, D]
    a2, b2 = qp.square().sum(-1), qn.square().sum(-1)  # [B], [B, K]
    if kernel == "gaussian":
        e = torch.exp(a2.unsqueeze(1) - b2)  # [B, K]
        eta = 1 + e.sum(1)
        dp = (-2 / eta * e.sum(1)).unsqueeze(1) * qp  # eq. 10
        dn = (2 / eta.unsqueeze(1) * e).unsqueeze(2) * qn  # eq. 11
    elif kernel == "cauchy":
        r = (1 + a2.unsqueeze(1)) / (1 + b2)
        eta = 1 + r.sum(1)
        dp = (-2 / eta * (1 / (1 + b2)).sum(1)).unsqueeze(1) * qp  # eq. 14
        dn = (2 * (1 + a2.unsqueeze(1)) / (eta.unsqueeze(1) * (1 + b2) ** 2)).unsqueeze(2) * qn  # eq. 15
    else:
        a, b = a2.sqrt(), b2.sqrt()
        e = torch.exp(a.unsqueeze(1) - b)
        eta = 1 + e.sum(1)
        dp = -(e.sum(1) / (eta * a)).unsqueeze(1) * qp  # eq. 18
        dn = (e / (eta.unsqueeze(1) * b)).unsqueeze(2) * qn  # eq. 19
    dq = -dp - dn.sum(1)  # eq. 12 / 16 / 20
    return dq, dp, dn


def _ind_grads(kernel: str, q: torch.Tensor, p: torch.Tensor, n: torch.Tensor):
    """SARE Table 1 per triplet, averaged over the K negatives (Sec. 6), per query."""
    qp = (q - p).unsqueeze(1)  # [B, 1, D]
    qn = q.unsqueeze(1) - n  # [B, K, D]
    a2, b2 = qp.square().sum(-1, keepdim=True), qn.square().sum(-1, keepdim=True)
    if kernel == "gaussian":
        c = 1 / (1 + torch.exp(a2 - b2))  # eq. 4
        dp, dn = 2 * (1 - c) * -qp, 2 * (1 - c) * qn
    elif kernel == "cauchy":
        c = (1 / (1 + a2)) / (1 / (1 + a2) + 1 / (1 + b2))
        dp, dn = 2 * (1 - c) * -qp / (1 + a2), 2 * (1 - c) * qn / (1 + b2)
    else:
        a, b = a2.sqrt(), b2.sqrt()
        c = torch.exp(-a) / (torch.exp(-a) + torch.exp(-b))
        # Table 1's Exponential dL/dp cell is unreadable in the seed; eq. 18 with N = 1 gives it.
        dp, dn = (1 - c) * -qp / a, (1 - c) * qn / b
    k = n.shape[1]
    dp, dn = dp.sum(1) / k, dn / k
    return -dp - dn.sum(1), dp, dn


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_sare_gradients_match_the_paper(kernel: str, mode: str) -> None:
    q, p, n = random_tuples(b=3, k=4, seed=13)
    got = grads(sare_loss(q, p, n, kernel=kernel, mode=mode), q, p, n)
    closed = _joint_grads if mode == "joint" else _ind_grads
    expect = closed(kernel, q.detach(), p.detach(), n.detach())
    for name, g, e in zip(("q", "p", "n"), got, expect):
        assert torch.allclose(g, e / q.shape[0], atol=1e-12), f"dL/d{name} ({kernel}, {mode})"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_sare_gradcheck(kernel: str, mode: str) -> None:
    q, p, n = random_tuples(b=2, k=3, d=4, seed=17)
    assert torch.autograd.gradcheck(lambda *x: sare_loss(*x, kernel=kernel, mode=mode), (q, p, n))


# ----------------------------------------------------------------------------- triplet


def test_triplet_values_by_hand() -> None:
    # d^2: pos 0.25, negs 1 and 4; margin 0.8 keeps the first negative active only.
    got = triplet_loss(Q, P, N, margin=0.8)
    assert got.item() == pytest.approx(max(0.0, 0.25 + 0.8 - 1.0) + max(0.0, 0.25 + 0.8 - 4.0))
    assert triplet_loss(Q, P, N, margin=0.1).item() == 0.0
    q2 = torch.cat([Q, Q])
    p2 = torch.cat([P, t([2.0, 0.0])])  # second query: d^2 pos = 4
    n2 = torch.cat([N, N])
    per = triplet_loss(q2, p2, n2, margin=0.1, reduction="none")
    assert per.tolist() == pytest.approx([0.0, (4 + 0.1 - 1) + (4 + 0.1 - 4)])
    assert triplet_loss(q2, p2, n2, margin=0.1).item() == pytest.approx(per.mean().item())


def test_triplet_gradient_matches_table1_and_gradcheck() -> None:
    q, p, n = random_tuples(b=3, k=4, seed=19)
    gq, gp, gn = grads(triplet_loss(q, p, n, margin=0.5), q, p, n)
    qd, pd, nd = q.detach(), p.detach(), n.detach()
    active = ((qd - pd).square().sum(-1, keepdim=True) + 0.5 - (qd.unsqueeze(1) - nd).square().sum(-1)) > 0
    assert active.any() and not active.all()
    # SARE Table 1: dL/dp = 2 (p - q), dL/dn = 2 (q - n) for each active triplet; dq = -dp - sum dn.
    ep = 2 * (pd - qd) * active.sum(1, keepdim=True)
    en = 2 * (qd.unsqueeze(1) - nd) * active.unsqueeze(2)
    assert torch.allclose(gp, ep / 3, atol=1e-12)
    assert torch.allclose(gn, en / 3, atol=1e-12)
    assert torch.allclose(gq, (-ep - en.sum(1)) / 3, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *x: triplet_loss(*x, margin=0.5), (q, p, n))


# ----------------------------------------------------------------------------- stability


def _far_tuples(pos_far: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 tuples with distances around 1e3; the positive farther than the negatives or not."""
    g = torch.Generator().manual_seed(23)
    q = torch.randn(4, 16, generator=g)
    u = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=1)
    v = torch.nn.functional.normalize(torch.randn(4, 5, 16, generator=g), dim=2)
    dp, dn = (1000.0, 900.0) if pos_far else (900.0, 1000.0)
    p = q + dp * u
    n = q.unsqueeze(1) + dn * v
    return q.requires_grad_(), p.requires_grad_(), n.requires_grad_()


@pytest.mark.parametrize("pos_far", [True, False])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_sare_finite_at_distance_1e3_float32(kernel: str, mode: str, pos_far: bool) -> None:
    q, p, n = _far_tuples(pos_far)
    loss = sare_loss(q, p, n, kernel=kernel, mode=mode)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    for g in grads(loss, q, p, n):
        assert torch.all(torch.isfinite(g))
    if kernel == "gaussian" and pos_far:  # x = 1e6 - 8.1e5: the loss is ~1.9e5, not inf
        assert loss.item() == pytest.approx(1000.0**2 - 900.0**2, rel=1e-3)


@pytest.mark.parametrize("pos_far", [True, False])
def test_triplet_finite_at_distance_1e3_float32(pos_far: bool) -> None:
    q, p, n = _far_tuples(pos_far)
    loss = triplet_loss(q, p, n)
    assert torch.isfinite(loss)
    for g in grads(loss, q, p, n):
        assert torch.all(torch.isfinite(g))


@pytest.mark.parametrize("mode", MODES)
def test_sare_exponential_finite_gradient_at_zero_distance(mode: str) -> None:
    q, _, n = random_tuples(seed=29, dtype=torch.float32)
    p = q.detach().clone().requires_grad_()
    for g in grads(sare_loss(q, p, n, kernel="exponential", mode=mode), q, p, n):
        assert torch.all(torch.isfinite(g))


# ----------------------------------------------------------------------------- registry


def test_make_loss_dispatch_and_options() -> None:
    assert set(LOSS_NAMES) == {"contrastive", "gcl", "sare_joint", "sare_ind", "triplet"}
    kinds = {name: make_loss(name).kind for name in LOSS_NAMES}
    assert kinds == {
        "contrastive": "pairs",
        "gcl": "pairs",
        "sare_joint": "tuples",
        "sare_ind": "tuples",
        "triplet": "tuples",
    }
    q, p, n = random_tuples()
    spec = make_loss("sare_ind", kernel="cauchy")
    assert isinstance(spec, LossSpec)
    assert torch.equal(spec(q, p, n), sare_loss(q, p, n, kernel="cauchy", mode="ind"))
    assert torch.equal(make_loss("sare_joint")(q, p, n), sare_loss(q, p, n))
    assert torch.equal(make_loss("triplet", margin=0.3)(q, p, n), triplet_loss(q, p, n, margin=0.3))
    psi = torch.tensor([0.2, 0.9, 0.0], dtype=F64)
    gcl = make_loss("gcl", margin=0.7, reduction="none")
    assert torch.equal(gcl(q, p, psi), gcl_loss(q, p, psi, margin=0.7, reduction="none"))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: make_loss("arcface"), "unknown loss 'arcface'"),
        (lambda: make_loss("sare_joint", kernel="laplace"), "unknown SARE kernel 'laplace'"),
        (lambda: make_loss("gcl", kernel="gaussian"), "has no option kernel"),
        (lambda: make_loss("triplet", reduction="max"), "unknown reduction 'max'"),
        (lambda: make_loss("gcl", margin=0.0), "margin must be"),
        (lambda: make_loss("triplet", margin=float("nan")), "margin must be"),
        (lambda: sare_loss(Q, P, N, kernel="student"), "unknown SARE kernel"),
        (lambda: sare_loss(Q, P, N, mode="both"), "unknown SARE mode 'both'"),
        (lambda: gcl_loss(Q, P, t(0.5), reduction="avg"), "unknown reduction"),
    ],
)
def test_bad_options_raise_user_error(call, match: str) -> None:
    with pytest.raises(UserError, match=match):
        call()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: gcl_loss(Q, P, t(1.5)), r"psi must lie in \[0, 1\]"),
        (lambda: gcl_loss(Q, P, t(-0.1)), r"psi must lie in \[0, 1\]"),
        (lambda: gcl_loss(Q, P, t(float("nan"))), r"psi must lie in \[0, 1\]"),
        (lambda: gcl_loss(Q, P, t(0.5, 0.5)), r"labels must have shape \[1\]"),
        (lambda: gcl_loss(Q, t([0.0, 0.0, 0.0]), t(0.5)), "same shape"),
        (lambda: gcl_loss(Q[0], P[0], t(0.5)), r"\[B, D\]"),
        (lambda: contrastive_loss(Q, P, t(0.5)), "must be 0 or 1"),
        (lambda: contrastive_loss(Q.long(), P.long(), torch.tensor([1])), "floating point"),
        (lambda: sare_loss(Q, P, N[0]), r"n must be \[B, K, D\]"),
        (lambda: sare_loss(Q, P, N[:, :0]), r"K >= 1"),
        (lambda: sare_loss(Q, P, torch.zeros(1, 2, 3, dtype=F64)), r"n must be \[B, K, D\]"),
        (lambda: triplet_loss(Q, P.repeat(2, 1), N), "same shape"),
        (lambda: triplet_loss(Q[:0], P[:0], N[:0]), "non-empty"),
    ],
)
def test_bad_tensors_raise_value_error(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
