"""softmax, log_softmax, sigmoid, relu, matmul and linear."""

import numpy as np
import pytest

import minifpn
import minifpn.functional as F
from minifpn import Tensor
from tests.conftest import randn


def np_softmax(v, axis):
    e = np.exp(v - v.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ---------------------------------------------------------------------------
# softmax / log_softmax / sigmoid / relu.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_softmax_and_log_softmax_match_numpy(device, rng, dim):
    x = randn(rng, 3, 4, 2, device=device)
    v = x.numpy()
    np.testing.assert_allclose(F.softmax(x, dim).numpy(), np_softmax(v, dim), rtol=1e-12)
    np.testing.assert_allclose(
        F.log_softmax(x, dim).numpy(), np.log(np_softmax(v, dim)), rtol=1e-12, atol=1e-14
    )
    np.testing.assert_allclose(x.softmax(dim).sum(dim=dim).numpy(), 1.0, rtol=1e-12)


def test_softmax_hand_computed():
    out = F.softmax(Tensor(np.array([[0.0, np.log(3.0)]])), dim=1)
    np.testing.assert_allclose(out.numpy(), [[0.25, 0.75]], rtol=1e-12)


@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_softmax_gradchecks(device, rng, dim):
    x = randn(rng, 3, 4, 2, device=device)
    assert minifpn.gradcheck(lambda t: F.softmax(t, dim), (x,))
    assert minifpn.gradcheck(lambda t: F.log_softmax(t, dim), (x,))


def test_softmax_large_logits_are_stable():
    x = Tensor(np.array([[1000.0, 1000.0], [1000.0, 0.0], [-1000.0, 0.0]]), requires_grad=True)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = F.softmax(x, dim=1)
        ls = F.log_softmax(x, dim=1)
        (s[:, 0] + ls[:, 1]).sum().backward()
    np.testing.assert_allclose(s.numpy(), [[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]], atol=1e-300)
    np.testing.assert_allclose(
        ls.numpy(), [[-np.log(2), -np.log(2)], [0.0, -1000.0], [-1000.0, 0.0]], rtol=1e-12
    )
    assert np.isfinite(x.grad).all()
    # Row 0: d s0/dx = s0(1−s0)·[1, −1] = [¼, −¼]; d ls1/dx = [−½, ½].
    np.testing.assert_allclose(x.grad[0], [-0.25, 0.25], rtol=1e-12)


def test_sigmoid_forward_grad_and_stability(device, rng):
    x = randn(rng, 3, 4, device=device)
    np.testing.assert_allclose(F.sigmoid(x).numpy(), 1 / (1 + np.exp(-x.numpy())), rtol=1e-12)
    assert minifpn.gradcheck(F.sigmoid, (x,))

    big = Tensor(np.array([100.0, -100.0, 0.0, 800.0, -800.0]), requires_grad=True)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        out = big.sigmoid()
        out.sum().backward()
    np.testing.assert_allclose(out.numpy(), [1.0, np.exp(-100.0), 0.5, 1.0, 0.0], rtol=1e-12)
    assert out.numpy()[1] > 0  # not rounded to zero: 3.7e-44 is a normal float64
    assert np.isfinite(big.grad).all()
    np.testing.assert_allclose(big.grad[2], 0.25)


def test_relu_forward_and_gradcheck(device, rng):
    data = rng.standard_normal((4, 5))
    data[np.abs(data) < 0.05] = 0.5  # away from the kink at 0
    x = Tensor(data, requires_grad=True, device=device)
    np.testing.assert_array_equal(F.relu(x).numpy(), np.maximum(data, 0))
    assert minifpn.gradcheck(F.relu, (x,))


@pytest.mark.parametrize("op", [F.softmax, F.log_softmax, F.sigmoid, F.relu])
def test_activations_keep_float32(rng, op):
    x = randn(rng, 2, 3, dtype=np.float32)
    out = op(x)
    assert out.dtype == np.float32
    out.backward(np.ones((2, 3), np.float32))
    assert x.grad.dtype == np.float32


# ---------------------------------------------------------------------------
# matmul and linear.
# ---------------------------------------------------------------------------
MATMUL_SHAPES = [
    ((3, 4), (4, 5)),
    ((2, 3, 4), (4, 5)),  # batched @ shared matrix
    ((3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (3, 4, 2)),  # broadcast batch axes on both sides
    ((2, 3, 4), (2, 4, 1)),
]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul_forward_and_gradcheck(device, rng, shapes):
    a, b = randn(rng, *shapes[0], device=device), randn(rng, *shapes[1], device=device)
    out = a @ b
    np.testing.assert_allclose(out.numpy(), np.matmul(a.numpy(), b.numpy()), rtol=1e-12)
    assert minifpn.gradcheck(F.matmul, (a, b))


def test_matmul_hand_computed_gradients():
    a = Tensor(np.array([[1.0, 2.0]]), requires_grad=True)  # (1, 2)
    b = Tensor(np.array([[3.0], [4.0]]), requires_grad=True)  # (2, 1)
    out = a @ b
    assert out.item() == 11.0
    out.backward(np.array([[2.0]]))
    np.testing.assert_array_equal(a.grad, [[6.0, 8.0]])  # g · bᵀ
    np.testing.assert_array_equal(b.grad, [[2.0], [4.0]])  # aᵀ · g


def test_matmul_with_raw_array_and_errors(rng):
    a = randn(rng, 3, 4)
    m = rng.standard_normal((4, 2))
    np.testing.assert_allclose((a @ m).numpy(), a.numpy() @ m, rtol=1e-12)
    np.testing.assert_allclose((m.T @ a.T).numpy(), m.T @ a.numpy().T, rtol=1e-12)
    with pytest.raises(ValueError):
        F.matmul(a, randn(rng, 4))
    with pytest.raises(TypeError):
        F.matmul(a, randn(rng, 4, 2, dtype=np.float32))


@pytest.mark.parametrize("x_shape", [(5, 3), (2, 4, 3)], ids=str)
@pytest.mark.parametrize("use_bias", [True, False])
def test_linear_forward_and_gradcheck(device, rng, x_shape, use_bias):
    x = randn(rng, *x_shape, device=device)
    weight = randn(rng, 4, 3, device=device)
    bias = randn(rng, 4, device=device) if use_bias else None
    out = F.linear(x, weight, bias)
    expected = x.numpy() @ weight.numpy().T + (bias.numpy() if use_bias else 0.0)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)
    inputs = (x, weight) + ((bias,) if use_bias else ())
    assert minifpn.gradcheck(lambda *ts: F.linear(*ts), inputs)


def test_linear_dtypes(rng):
    x, weight = randn(rng, 2, 3, dtype=np.float32), randn(rng, 4, 3, dtype=np.float32)
    bias = randn(rng, 4, dtype=np.float32)
    out = F.linear(x, weight, bias)
    assert out.dtype == np.float32
    out.sum().backward()
    assert x.grad.dtype == weight.grad.dtype == bias.grad.dtype == np.float32
    with pytest.raises(TypeError):
        F.linear(x, randn(rng, 4, 3))
    with pytest.raises(TypeError):  # a float64 bias tensor must not slip through either
        F.linear(x, weight, randn(rng, 4))
    with pytest.raises(ValueError, match="features"):
        F.linear(x, randn(rng, 4, 5, dtype=np.float32))


def test_relu_split_over_threads_matches_numpy(rng, split_work):
    data = rng.standard_normal((3, 4, 5, 6))
    data[0, 0, 0, :3] = 0.0  # exactly 0: gradient 0
    x = Tensor(data, requires_grad=True)
    g = rng.standard_normal(data.shape)
    y = F.relu(x)
    y.backward(g)
    np.testing.assert_array_equal(y.numpy(), np.maximum(data, 0))
    np.testing.assert_array_equal(x.grad, g * (data > 0))


def test_relu_inplace_shares_memory_and_matches_out_of_place(device, rng):
    data = rng.standard_normal((2, 3, 4))
    g = Tensor(rng.standard_normal(data.shape), device=device)
    grads = []
    for inplace in (False, True):
        x = Tensor(data, requires_grad=True, device=device)
        h = x * 2.0  # an intermediate: its data may be overwritten
        y = F.relu(h, inplace=inplace)
        assert (y.data is h.data) == inplace
        (y * y).backward(g)
        np.testing.assert_array_equal(y.numpy(), np.maximum(2 * data, 0))
        grads.append(x.grad)
    np.testing.assert_array_equal(*(Tensor(gr).numpy() for gr in grads))


def test_relu_inplace_after_another_op_read_its_input_is_refused(rng):
    x = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    h = x * 2.0
    square = h * h  # reads h: needs its values in the backward pass
    y = F.relu(h, inplace=True)  # … which this overwrites
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        (square + y).sum().backward()
    with pytest.raises(RuntimeError, match="leaf"):
        F.relu(x, inplace=True)


def test_relu_inplace_on_a_view_makes_a_new_array(rng):
    x = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    h = (x * 2.0).reshape(4, 3)  # a view of the product's array
    y = F.relu(h, inplace=True)
    assert y.data is not h.data
    np.testing.assert_array_equal(h.numpy(), (2 * x.numpy()).reshape(4, 3))
