"""batch_norm, frozen_batch_norm and group_norm against NumPy formulas."""

import numpy as np
import pytest

import minifpn
import minifpn.functional as F
from minifpn import Tensor, backend
from tests.conftest import randn

EPS = 1e-5


def np_batch_norm(x, mean, var, weight, bias, eps=EPS):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    return y * weight.reshape(shape) + bias.reshape(shape)


def np_group_norm(x, groups, weight, bias, eps=EPS):
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1)
    y = (g - g.mean(axis=2, keepdims=True)) / np.sqrt(g.var(axis=2, keepdims=True) + eps)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return y.reshape(x.shape) * weight.reshape(shape) + bias.reshape(shape)


# ---------------------------------------------------------------------------
# Batch norm.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 3, 2, 5), (6, 3)], ids=str)
def test_batch_norm_training_forward_and_running_stats(device, rng, shape):
    x = Tensor(rng.standard_normal(shape) * 2 + 1, device=device)
    weight, bias = randn(rng, 3, device=device), randn(rng, 3, device=device)
    rm0, rv0 = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    xp = minifpn.get_array_module(x.data)
    running_mean, running_var = xp.asarray(rm0.copy()), xp.asarray(rv0.copy())
    out = F.batch_norm(x, running_mean, running_var, weight, bias, training=True, momentum=0.2)

    v = x.numpy()
    axes = (0,) + tuple(range(2, v.ndim))
    mean, var = v.mean(axis=axes), v.var(axis=axes)  # biased variance normalises
    expected = np_batch_norm(v, mean, var, weight.numpy(), bias.numpy())
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)
    # Running statistics: momentum 0.2, and the *unbiased* variance.
    unbiased = v.var(axis=axes, ddof=1)
    np.testing.assert_allclose(Tensor(running_mean).numpy(), 0.8 * rm0 + 0.2 * mean, rtol=1e-12)
    np.testing.assert_allclose(Tensor(running_var).numpy(), 0.8 * rv0 + 0.2 * unbiased, rtol=1e-12)


def test_batch_norm_running_stats_hand_computed():
    """Channel values 1, 2, 3, 6: mean 3, unbiased var (4+1+0+9)/3 = 14/3."""
    x = Tensor(np.array([[1.0], [2.0], [3.0], [6.0]]))
    running_mean, running_var = np.zeros(1), np.ones(1)
    out = F.batch_norm(x, running_mean, running_var, training=True, momentum=0.1)
    np.testing.assert_allclose(running_mean, [0.3], rtol=1e-12)
    np.testing.assert_allclose(running_var, [0.9 + 0.1 * 14 / 3], rtol=1e-12)
    # biased var 3.5: y = (x − 3)/sqrt(3.5 + eps)
    np.testing.assert_allclose(out.numpy()[:, 0], (np.array([1, 2, 3, 6]) - 3) / np.sqrt(3.5 + EPS))


def test_batch_norm_updates_running_stats_passed_as_tensors():
    """torch-style calls pass the running buffers as tensors: they must update too."""
    x = Tensor(np.array([[1.0], [2.0], [3.0], [6.0]]))
    running_mean, running_var = Tensor(np.zeros(1)), Tensor(np.ones(1))
    F.batch_norm(x, running_mean, running_var, training=True, momentum=0.1)
    np.testing.assert_allclose(running_mean.numpy(), [0.3], rtol=1e-12)
    np.testing.assert_allclose(running_var.numpy(), [0.9 + 0.1 * 14 / 3], rtol=1e-12)
    out = F.batch_norm(x, running_mean, running_var, training=False)
    np.testing.assert_allclose(
        out.numpy()[:, 0],
        (np.array([1, 2, 3, 6]) - 0.3) / np.sqrt(0.9 + 0.1 * 14 / 3 + EPS),
        rtol=1e-12,
    )


@pytest.mark.parametrize("shape", [(2, 3, 4, 2), (5, 3)], ids=str)
def test_batch_norm_eval_uses_running_stats(device, rng, shape):
    x = randn(rng, *shape, device=device)
    weight, bias = randn(rng, 3, device=device), randn(rng, 3, device=device)
    xp = minifpn.get_array_module(x.data)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    running_mean, running_var = xp.asarray(rm.copy()), xp.asarray(rv.copy())
    out = F.batch_norm(x, running_mean, running_var, weight, bias, training=False)
    expected = np_batch_norm(x.numpy(), rm, rv, weight.numpy(), bias.numpy())
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(Tensor(running_mean).numpy(), rm)  # untouched in eval
    np.testing.assert_array_equal(Tensor(running_var).numpy(), rv)


def test_batch_norm_eval_float32_input_with_float64_running_stats(rng):
    x = randn(rng, 2, 3, 2, 2, dtype=np.float32)
    out = F.batch_norm(x, np.zeros(3), np.full(3, 4.0), training=False)
    assert out.dtype == np.float32
    out.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, np.full(x.shape, 1 / np.sqrt(4 + EPS)), rtol=1e-6)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(3, 2, 3, 2), (5, 3)], ids=str)
def test_batch_norm_gradcheck(device, rng, training, affine, shape):
    c = shape[1]
    x = randn(rng, *shape, device=device)
    xp = minifpn.get_array_module(x.data)
    rm, rv = xp.asarray(rng.standard_normal(c)), xp.asarray(rng.uniform(0.5, 2, c))
    params = (randn(rng, c, device=device), randn(rng, c, device=device)) if affine else ()

    def fn(a, *wb):
        # Running stats are left out in training so repeated calls change nothing.
        stats = (None, None) if training else (rm, rv)
        return F.batch_norm(a, *stats, *wb, training=training)

    assert minifpn.gradcheck(fn, (x,) + params)


# ---------------------------------------------------------------------------
# Frozen batch norm.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("as_tensors", [False, True])
def test_frozen_batch_norm_matches_formula(device, rng, as_tensors):
    x = randn(rng, 2, 3, 4, 4, device=device)
    xp = minifpn.get_array_module(x.data)
    w, b, rm, rv = (
        rng.standard_normal(3),
        rng.standard_normal(3),
        rng.standard_normal(3),
        rng.uniform(0.5, 2, 3),
    )
    args = [xp.asarray(a) for a in (w, b, rm, rv)]
    if as_tensors:
        args = [Tensor(a) for a in args]
    out = F.frozen_batch_norm(x, *args)
    expected = np_batch_norm(x.numpy(), rm, rv, w, b)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert minifpn.gradcheck(lambda t: F.frozen_batch_norm(t, *args), (x,))


def test_frozen_batch_norm_float32_with_float64_buffers(rng):
    """Fixed statistics are constants: they adapt to the input's dtype."""
    x = randn(rng, 1, 3, 2, 2, dtype=np.float32)
    ones = np.ones(3)
    out = F.frozen_batch_norm(x, ones, ones * 0.5, ones * 0.25, ones)
    assert out.dtype == np.float32
    out.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, np.full(x.shape, 1 / np.sqrt(1 + EPS)), rtol=1e-6)


# ---------------------------------------------------------------------------
# Group norm.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_group_norm_matches_numpy(device, rng, groups):
    x = Tensor(rng.standard_normal((2, 4, 3, 5)) * 3 - 1, device=device)
    weight, bias = randn(rng, 4, device=device), randn(rng, 4, device=device)
    out = F.group_norm(x, groups, weight, bias)
    expected = np_group_norm(x.numpy(), groups, weight.numpy(), bias.numpy())
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_group_norm_statistics_are_per_image_and_group():
    """With groups=C each (image, channel) map is normalised on its own."""
    x = Tensor(np.array([[[[0.0, 2.0]], [[10.0, 30.0]]]]))  # (1, 2, 1, 2)
    out = F.group_norm(x, 2)
    np.testing.assert_allclose(
        out.numpy()[0, :, 0],
        [[-1, 1], [-1, 1]] / np.sqrt(1 + np.array([[EPS], [EPS / 100]])),
        rtol=1e-12,
    )


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_gradcheck(device, rng, groups, affine):
    x = randn(rng, 2, 4, 2, 3, device=device)
    params = (randn(rng, 4, device=device), randn(rng, 4, device=device)) if affine else ()
    assert minifpn.gradcheck(lambda a, *wb: F.group_norm(a, groups, *wb), (x,) + params)


def test_group_norm_errors_and_float32(rng):
    with pytest.raises(ValueError, match="groups"):
        F.group_norm(randn(rng, 1, 4, 2, 2), 3)
    x = randn(rng, 2, 4, 2, 2, dtype=np.float32)
    w, b = randn(rng, 4, dtype=np.float32), randn(rng, 4, dtype=np.float32)
    out = F.group_norm(x, 2, w, b)
    assert out.dtype == np.float32
    out.sum().backward()
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == np.float32
    with pytest.raises(TypeError):
        F.group_norm(x, 2, randn(rng, 4), randn(rng, 4))


# ---------------------------------------------------------------------------
# Group norm's fused path against the plain reference.
# ---------------------------------------------------------------------------
def _group_norm_step(x, groups, weight, bias, grad):
    for t in (x, weight, bias):
        if t is not None:
            t.grad = None
    out = F.group_norm(x, groups, weight, bias)
    out.backward(grad)
    return [out.numpy()] + [None if t is None or t.grad is None else Tensor(t.grad).numpy()
                            for t in (x, weight, bias)]


@pytest.mark.parametrize(
    "shape, groups, params, x_grad",
    [
        ((3, 8, 5, 4), 4, "both", True),
        ((2, 6, 7), 3, "both", True),  # (N, C, L)
        ((5, 4), 2, "both", True),  # (N, C): one value per channel
        ((2, 4, 3, 3), 1, "weight", True),
        ((2, 4, 3, 3), 4, "none", True),
        ((2, 4, 3, 3), 2, "both", False),  # only the parameters need gradients
        ((0, 4, 3, 3), 2, "both", True),  # no images (a head given zero RoIs)
    ],
    ids=str,
)
def test_group_norm_fused_equals_plain_reference(device, rng, split_work, shape, groups, params,
                                                 x_grad):
    x = Tensor(rng.standard_normal(shape) * 3 + 2, requires_grad=x_grad, device=device)
    c = shape[1]
    weight = randn(rng, c, device=device) if params in ("both", "weight") else None
    bias = randn(rng, c, device=device) if params == "both" else None
    grad = randn(rng, *shape, device=device, requires_grad=False)
    fused = _group_norm_step(x, groups, weight, bias, grad)
    with backend.plain_reference():
        plain = _group_norm_step(x, groups, weight, bias, grad)
    for a, b in zip(fused, plain):  # out, dx, dw, db
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)


def test_group_norm_fused_float32_close_to_float64(rng):
    """A large, offset float32 map: the one-pass sums keep float32 precision."""
    data = rng.standard_normal((2, 64, 32, 32)) * 4 + 10
    w, b = rng.standard_normal(64), rng.standard_normal(64)
    g = rng.standard_normal(data.shape)
    results = []
    for dtype in (np.float32, np.float64):
        x = Tensor(data.astype(dtype), requires_grad=True)
        weight, bias = (Tensor(v.astype(dtype), requires_grad=True) for v in (w, b))
        results.append(_group_norm_step(x, 32, weight, bias, g.astype(dtype)))
    for single, double in zip(*results):
        scale = np.abs(double).max()
        np.testing.assert_allclose(single, double, atol=2e-5 * scale)


def test_group_norm_fused_keeps_no_normalised_copy(rng):
    """The graph holds the input and the output: no x̂ of the input's size."""
    x = Tensor(rng.standard_normal((2, 8, 16, 16)), requires_grad=True)
    out = F.group_norm(x, 4)
    kept = [cell.cell_contents for cell in out._backward.__closure__]
    big = [v for v in kept if hasattr(v, "nbytes") and v.nbytes >= x.data.nbytes
           and v.base is not x.data and v is not x.data]
    assert big == []
