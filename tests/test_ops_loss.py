"""Losses against closed forms and hand-computed values; their gradients."""

import numpy as np
import pytest

import minifpn
import minifpn.functional as F
from minifpn import Tensor
from tests.conftest import randn


def as_device(array, device):
    """A raw array (not a Tensor) on ``device``: targets are usually raw."""
    return Tensor(array, device=device).data


# ---------------------------------------------------------------------------
# Cross-entropy.
# ---------------------------------------------------------------------------
def test_cross_entropy_hand_computed(device):
    logits = Tensor(np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]), requires_grad=True, device=device)
    target = as_device(np.array([0, 2]), device)
    loss = F.cross_entropy(logits, target)
    # Row 0: log 3.  Row 1: log(e + e² + e³) − 3 = log(1 + e⁻¹ + e⁻²).
    row0, row1 = np.log(3.0), np.log(1 + np.exp(-1) + np.exp(-2))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-12)
    loss.backward()
    soft1 = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
    expected = np.array([[1 / 3 - 1, 1 / 3, 1 / 3], soft1 - [0, 0, 1]]) / 2
    np.testing.assert_allclose(Tensor(logits.grad).numpy(), expected, rtol=1e-12)


def test_cross_entropy_golden_numbers():
    loss = F.cross_entropy(Tensor(np.array([[1.0, 2.0, 3.0]])), np.array([2]))
    assert loss.item() == pytest.approx(0.40760596444, rel=1e-10)


def np_cross_entropy_rows(logits, target):
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(target)), target]


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_cross_entropy_ignore_index(device, rng, reduction):
    logits = randn(rng, 5, 4, device=device)
    target = np.array([1, -100, 3, -100, 0])
    loss = F.cross_entropy(logits, as_device(target, device), reduction=reduction)
    keep = target != -100
    rows = np.where(keep, np_cross_entropy_rows(logits.numpy(), np.where(keep, target, 0)), 0.0)
    expected = {"none": rows, "sum": rows.sum(), "mean": rows.sum() / keep.sum()}[reduction]
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-12)

    g = np.arange(1.0, 6.0) if reduction == "none" else np.array(1.0)
    loss.backward(Tensor(g, device=device))
    grad = Tensor(logits.grad).numpy()
    np.testing.assert_array_equal(grad[~keep], 0.0)  # ignored rows: no gradient
    soft = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(axis=1, keepdims=True)
    onehot = np.eye(4)[np.where(keep, target, 0)]
    scale = g[:, None] if reduction == "none" else {"sum": 1.0, "mean": 1.0 / keep.sum()}[reduction]
    np.testing.assert_allclose(grad[keep], ((soft - onehot) * scale)[keep], rtol=1e-10)


def test_cross_entropy_custom_ignore_index():
    logits = Tensor(np.array([[0.0, 1.0], [5.0, -5.0], [2.0, 2.0]]))
    loss = F.cross_entropy(logits, np.array([1, 0, 1]), ignore_index=0)
    # Only rows 0 and 2 count (their target 1 is not the ignored class 0).
    expected = (np.log(1 + np.exp(-1.0)) + np.log(2.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_cross_entropy_gradcheck(device, rng, reduction):
    logits = randn(rng, 4, 5, device=device)
    target = as_device(np.array([4, 0, -100, 2]), device)
    assert minifpn.gradcheck(lambda t: F.cross_entropy(t, target, reduction=reduction), (logits,))


def test_cross_entropy_large_logits_are_stable():
    logits = Tensor(np.array([[1000.0, 0.0, -1000.0], [1000.0, 1000.0, 0.0]]), requires_grad=True)
    loss = F.cross_entropy(logits, np.array([1, 0]), reduction="none")
    np.testing.assert_allclose(loss.numpy(), [1000.0, np.log(2.0)], rtol=1e-12)
    loss.backward(np.ones(2))
    assert np.isfinite(logits.grad).all()
    np.testing.assert_allclose(logits.grad, [[1.0, -1.0, 0.0], [-0.5, 0.5, 0.0]], atol=1e-12)


def test_cross_entropy_float32_and_bad_arguments(rng):
    logits = randn(rng, 3, 4, dtype=np.float32)
    loss = F.cross_entropy(logits, np.array([0, 1, 3]))
    assert loss.dtype == np.float32
    loss.backward()
    assert logits.grad.dtype == np.float32
    with pytest.raises(ValueError):
        F.cross_entropy(logits, np.array([0, 1, 3]), reduction="avg")
    with pytest.raises(ValueError):
        F.cross_entropy(logits, np.array([0, 1]))


# ---------------------------------------------------------------------------
# Binary cross-entropy with logits.
# ---------------------------------------------------------------------------
def np_bce(x, y):
    s = 1 / (1 + np.exp(-x))
    return -(y * np.log(s) + (1 - y) * np.log(1 - s))


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_bce_with_logits_matches_definition(device, rng, reduction):
    x = randn(rng, 3, 4, device=device)
    y = rng.uniform(0, 1, (3, 4))  # soft targets
    y[0] = [0.0, 1.0, 0.0, 1.0]
    loss = F.binary_cross_entropy_with_logits(x, as_device(y, device), reduction=reduction)
    rows = np_bce(x.numpy(), y)
    expected = {"none": rows, "sum": rows.sum(), "mean": rows.mean()}[reduction]
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-12)
    assert minifpn.gradcheck(
        lambda t: F.binary_cross_entropy_with_logits(t, as_device(y, device), reduction=reduction),
        (x,),
    )


def test_bce_with_logits_weight(device, rng):
    x = randn(rng, 2, 3, device=device)
    y = (rng.uniform(size=(2, 3)) > 0.5).astype(np.float64)
    w = rng.uniform(0, 2, (2, 3))
    loss = F.binary_cross_entropy_with_logits(x, as_device(y, device), weight=as_device(w, device))
    assert loss.item() == pytest.approx((w * np_bce(x.numpy(), y)).mean(), rel=1e-12)
    loss.backward()
    s = 1 / (1 + np.exp(-x.numpy()))
    np.testing.assert_allclose(Tensor(x.grad).numpy(), w * (s - y) / 6, rtol=1e-12)
    assert minifpn.gradcheck(
        lambda t: F.binary_cross_entropy_with_logits(
            t, as_device(y, device), weight=as_device(w, device), reduction="sum"
        ),
        (x,),
    )


def test_bce_with_logits_is_stable_at_100():
    x = Tensor(np.array([100.0, -100.0, 100.0, -100.0]), requires_grad=True)
    y = np.array([1.0, 0.0, 0.0, 1.0])
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        loss = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        loss.backward(np.ones(4))
    tiny = np.log1p(np.exp(-100.0))  # 3.7e-44: correct, not rounded to 0 or inf
    np.testing.assert_allclose(loss.numpy(), [tiny, tiny, 100.0, 100.0], rtol=1e-12)
    np.testing.assert_allclose(x.grad, [0.0, 0.0, 1.0, -1.0], atol=1e-40)
    assert np.isfinite(x.grad).all()


def test_bce_float32_stable_and_typed():
    x = Tensor(np.array([100.0, -100.0], dtype=np.float32), requires_grad=True)
    loss = F.binary_cross_entropy_with_logits(x, np.array([0.0, 1.0]))
    assert loss.dtype == np.float32
    assert loss.item() == pytest.approx(100.0)
    loss.backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, [0.5, -0.5])


# ---------------------------------------------------------------------------
# Smooth L1 and L1.
# ---------------------------------------------------------------------------
def np_smooth_l1(d, beta):
    a = np.abs(d)
    return np.where(a < beta, 0.5 * d * d / beta, a - 0.5 * beta)


# Differences on both sides of β = 1/9 and of β = 1, none within 0.01 of ±β or 0.
DIFFS = np.array([-2.5, -0.6, -0.05, 0.03, 0.08, 0.3, 0.9, 1.4])


@pytest.mark.parametrize("beta", [1 / 9, 1.0])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_smooth_l1_matches_closed_form(device, rng, beta, reduction):
    target = Tensor(rng.standard_normal(8), requires_grad=True, device=device)
    x = Tensor(target.numpy() + DIFFS, requires_grad=True, device=device)
    loss = F.smooth_l1_loss(x, target, beta=beta, reduction=reduction)
    rows = np_smooth_l1(DIFFS, beta)
    expected = {"none": rows, "sum": rows.sum(), "mean": rows.mean()}[reduction]
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-9, atol=1e-12)
    # Both sides of β appear: quadratic and linear pieces are both exercised.
    assert (np.abs(DIFFS) < beta).any() and (np.abs(DIFFS) > beta).any()
    assert minifpn.gradcheck(
        lambda a, b: F.smooth_l1_loss(a, b, beta=beta, reduction=reduction), (x, target)
    )


def test_smooth_l1_hand_computed():
    x = Tensor(np.array([0.5, 2.0, -0.05, 0.3]), requires_grad=True)
    loss = F.smooth_l1_loss(x, np.zeros(4), beta=1.0, reduction="none")
    np.testing.assert_allclose(loss.numpy(), [0.125, 1.5, 0.00125, 0.045], rtol=1e-12)
    loss.backward(np.ones(4))
    np.testing.assert_allclose(x.grad, [0.5, 1.0, -0.05, 0.3], rtol=1e-12)
    x.grad = None
    loss = F.smooth_l1_loss(x, np.zeros(4), beta=1 / 9, reduction="sum")
    # |0.5|, |2|, |0.3| ≥ 1/9: |d| − 1/18;  |−0.05| < 1/9: 0.5·0.0025·9
    assert loss.item() == pytest.approx(0.5 + 2.0 + 0.3 - 3 / 18 + 0.01125, rel=1e-12)
    loss.backward()
    np.testing.assert_allclose(x.grad, [1.0, 1.0, -0.45, 1.0], rtol=1e-12)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_l1_loss(device, rng, reduction):
    target = randn(rng, 2, 4, device=device)
    diffs = DIFFS.reshape(2, 4)
    x = Tensor(target.numpy() + diffs, requires_grad=True, device=device)
    loss = F.l1_loss(x, target, reduction=reduction)
    rows = np.abs(diffs)
    expected = {"none": rows, "sum": rows.sum(), "mean": rows.mean()}[reduction]
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-9)
    assert minifpn.gradcheck(lambda a, b: F.l1_loss(a, b, reduction=reduction), (x, target))
    x.grad = target.grad = None
    F.l1_loss(x, target, reduction="mean").backward()
    np.testing.assert_allclose(Tensor(x.grad).numpy(), np.sign(diffs) / 8, rtol=1e-12)
    np.testing.assert_allclose(Tensor(target.grad).numpy(), -np.sign(diffs) / 8, rtol=1e-12)


def test_regression_losses_dtype_rules(rng):
    x = randn(rng, 5, dtype=np.float32)
    loss = F.smooth_l1_loss(x, np.zeros(5), beta=1 / 9)  # raw float64 target adapts
    assert loss.dtype == np.float32
    loss.backward()
    assert x.grad.dtype == np.float32
    with pytest.raises(TypeError):
        F.smooth_l1_loss(x, randn(rng, 5))  # a float64 *tensor* does not
    with pytest.raises(ValueError):
        F.l1_loss(x, np.zeros(5), reduction="bogus")
