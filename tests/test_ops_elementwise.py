"""Elementwise ops: forward against NumPy, broadcasting, gradients, dtypes.

Every binary op is checked on several broadcast shape pairs, including the
``(N, C, H, W) + (C, 1, 1)`` bias pattern, scalar operands and raw NumPy
operands on either side. Kinks (|x| at 0, relu at 0, clamp at its bounds)
are kept at least 0.05 away from every input so that central differences
with ε = 1e-6 never straddle them.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minifpn
import minifpn.functional as F
from minifpn import Tensor
from minifpn.functional.elementwise import unbroadcast
from tests.conftest import randn

# (shape of a, shape of b): every way broadcasting can stretch an operand.
SHAPE_PAIRS = [
    ((2, 3, 4, 5), (3, 1, 1)),  # NCHW map + per-channel bias
    ((2, 3), (2, 3)),  # no broadcasting
    ((3, 1), (1, 4)),  # both operands stretched
    ((4,), (2, 3, 4)),  # missing leading axes on the left operand
    ((2, 1, 3), (2, 4, 1)),
    ((), (2, 3)),  # 0-d tensor
    ((2, 3), (1,)),
]

# name -> (minifpn op, numpy op, positive second operand?)
BINARY = {
    "add": (F.add, np.add, False),
    "sub": (F.sub, np.subtract, False),
    "mul": (F.mul, np.multiply, False),
    "div": (F.div, np.divide, True),
}


def away_from(values, kinks, margin=0.05):
    """Move every value at least ``margin`` from each kink (kinks ≥ 4·margin apart)."""
    values = np.array(values, dtype=np.float64)
    for k in kinks:
        near = np.abs(values - k) < margin
        values[near] = k + np.where(values[near] >= k, 1, -1) * 2 * margin
    return values


def positive(rng, *shape, device="cpu", requires_grad=True, dtype=np.float64):
    """Values in [0.5, 2): safe for division, log, sqrt and pow bases."""
    data = rng.uniform(0.5, 2.0, size=shape).astype(dtype)
    return Tensor(data, requires_grad=requires_grad, device=device)


def tensor_pair(rng, shape_a, shape_b, positive_b, device="cpu"):
    a = randn(rng, *shape_a, device=device)
    b = (
        positive(rng, *shape_b, device=device)
        if positive_b
        else randn(rng, *shape_b, device=device)
    )
    return a, b


# ---------------------------------------------------------------------------
# unbroadcast, the helper every binary backward relies on.
# ---------------------------------------------------------------------------
def test_unbroadcast_sums_over_stretched_and_leading_axes(rng):
    g = rng.standard_normal((2, 3, 4, 5))
    np.testing.assert_allclose(
        unbroadcast(g, (3, 1, 1)), g.sum(axis=(0, 2, 3)).reshape(3, 1, 1), rtol=1e-12
    )
    np.testing.assert_allclose(unbroadcast(g, (4, 1)), g.sum(axis=(0, 1, 3))[:, None], rtol=1e-12)
    np.testing.assert_allclose(unbroadcast(g, ()), g.sum(), rtol=1e-12)
    np.testing.assert_allclose(unbroadcast(g, (1, 3, 1, 5)), g.sum(axis=(0, 2), keepdims=True))
    assert unbroadcast(g, g.shape) is g


# ---------------------------------------------------------------------------
# Forward values and gradient checks for +, -, *, /.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BINARY))
@pytest.mark.parametrize("shapes", SHAPE_PAIRS, ids=str)
def test_binary_forward_matches_numpy(device, rng, name, shapes):
    op, np_op, pos = BINARY[name]
    a, b = tensor_pair(rng, *shapes, pos, device=device)
    out = op(a, b)
    expected = np_op(a.numpy(), b.numpy())
    assert out.shape == expected.shape
    assert out.device == device
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(BINARY))
@pytest.mark.parametrize("shapes", SHAPE_PAIRS, ids=str)
def test_binary_gradcheck(device, rng, name, shapes):
    op, _, pos = BINARY[name]
    a, b = tensor_pair(rng, *shapes, pos, device=device)
    assert minifpn.gradcheck(op, (a, b))


def test_bias_broadcast_gradient_is_hand_summed(rng):
    """d/d(bias) of Σ g·(x + bias) with a (C,1,1) bias is Σ_{n,h,w} g."""
    x = randn(rng, 2, 3, 4, 5)
    bias = randn(rng, 3, 1, 1)
    g = rng.standard_normal((2, 3, 4, 5))
    (x + bias).backward(g)
    expected = np.array([g[:, c].sum() for c in range(3)]).reshape(3, 1, 1)
    np.testing.assert_allclose(bias.grad, expected, rtol=1e-12)
    np.testing.assert_allclose(x.grad, g, rtol=1e-12)


@settings(max_examples=15, deadline=None)
@given(
    shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
    name=st.sampled_from(sorted(BINARY)),
    seed=st.integers(0, 2**16),
)
def test_binary_gradcheck_random_broadcast_shapes(shapes, name, seed):
    op, np_op, pos = BINARY[name]
    rng = np.random.default_rng(seed)
    a, b = tensor_pair(rng, *shapes.input_shapes, pos)
    out = op(a, b)
    assert out.shape == shapes.result_shape
    np.testing.assert_allclose(out.numpy(), np_op(a.numpy(), b.numpy()), rtol=1e-12)
    assert minifpn.gradcheck(op, (a, b))


# ---------------------------------------------------------------------------
# Operators with Python scalars and raw NumPy arrays on either side.
# ---------------------------------------------------------------------------
SCALAR_CASES = [
    (lambda x: x + 2.0, lambda v: v + 2.0, lambda v: np.ones_like(v)),
    (lambda x: 2.0 + x, lambda v: 2.0 + v, lambda v: np.ones_like(v)),
    (lambda x: x - 3, lambda v: v - 3, lambda v: np.ones_like(v)),
    (lambda x: 3 - x, lambda v: 3 - v, lambda v: -np.ones_like(v)),
    (lambda x: x * 4, lambda v: v * 4, lambda v: np.full_like(v, 4.0)),
    (lambda x: 4 * x, lambda v: 4 * v, lambda v: np.full_like(v, 4.0)),
    (lambda x: x / 2, lambda v: v / 2, lambda v: np.full_like(v, 0.5)),
    (lambda x: 2 / x, lambda v: 2 / v, lambda v: -2 / v**2),
    (lambda x: x**3, lambda v: v**3, lambda v: 3 * v**2),
    (lambda x: 2**x, lambda v: 2**v, lambda v: np.log(2) * 2**v),
    (lambda x: -x, lambda v: -v, lambda v: -np.ones_like(v)),
]


@pytest.mark.parametrize("case", range(len(SCALAR_CASES)))
def test_scalar_operands(device, rng, case):
    fn, np_fn, np_grad = SCALAR_CASES[case]
    x = positive(rng, 2, 3, device=device)
    out = fn(x)
    v = x.numpy()
    np.testing.assert_allclose(out.numpy(), np_fn(v), rtol=1e-12)
    out.sum().backward()
    np.testing.assert_allclose(minifpn.Tensor(x.grad).numpy(), np_grad(v), rtol=1e-10)
    assert minifpn.gradcheck(fn, (positive(rng, 2, 3, device=device),))


@pytest.mark.parametrize(
    "fn, np_fn",
    [
        (lambda x, a: x + a, np.add),
        (lambda x, a: a + x, lambda v, a: a + v),
        (lambda x, a: x - a, np.subtract),
        (lambda x, a: a - x, lambda v, a: a - v),
        (lambda x, a: x * a, np.multiply),
        (lambda x, a: a * x, lambda v, a: a * v),
        (lambda x, a: x / a, np.divide),
        (lambda x, a: a / x, lambda v, a: a / v),
        (lambda x, a: x**a, np.power),
        (lambda x, a: a**x, lambda v, a: a**v),
    ],
)
def test_raw_numpy_operand_on_either_side(rng, fn, np_fn):
    """``ndarray op Tensor`` must reach the Tensor's reflected operator."""
    x = positive(rng, 2, 3, 4)
    arr = rng.uniform(0.5, 2.0, size=(3, 1))  # broadcasts against x
    out = fn(x, arr)
    assert isinstance(out, Tensor)
    assert out.shape == (2, 3, 4)
    np.testing.assert_allclose(out.numpy(), np_fn(x.numpy(), arr), rtol=1e-12)
    assert minifpn.gradcheck(lambda t: fn(t, arr), (x,))


# ---------------------------------------------------------------------------
# pow with a tensor exponent, and the unary ops.
# ---------------------------------------------------------------------------
def test_pow_tensor_exponent_forward_and_grad(device, rng):
    base = positive(rng, 2, 3, 4, device=device)
    exponent = randn(rng, 3, 1, device=device)  # broadcast exponent
    out = F.pow(base, exponent)
    np.testing.assert_allclose(out.numpy(), base.numpy() ** exponent.numpy(), rtol=1e-12)
    assert minifpn.gradcheck(F.pow, (base, exponent))


def test_pow_exponent_gradient_hand_computed():
    """d(b^e)/de = b^e · ln b; d(b^e)/db = e · b^(e−1)."""
    base = Tensor(np.array([2.0, 3.0]), requires_grad=True)
    exponent = Tensor(np.array([3.0, 0.5]), requires_grad=True)
    (base**exponent).sum().backward()
    np.testing.assert_allclose(exponent.grad, [8 * np.log(2), np.sqrt(3) * np.log(3)], rtol=1e-12)
    np.testing.assert_allclose(base.grad, [12.0, 0.5 / np.sqrt(3)], rtol=1e-12)


UNARY = {
    "exp": (F.exp, np.exp, "any"),
    "log": (F.log, np.log, "positive"),
    "sqrt": (F.sqrt, np.sqrt, "positive"),
    "neg": (F.neg, np.negative, "any"),
    "abs": (F.abs, np.abs, "kinked"),
    "relu": (F.relu, lambda v: np.maximum(v, 0), "kinked"),
    "clamp": (lambda x: F.clamp(x, -0.5, 0.7), lambda v: np.clip(v, -0.5, 0.7), "clamp"),
    "clamp_min": (lambda x: F.clamp(x, min=-0.3), lambda v: np.maximum(v, -0.3), "clamp"),
    "clamp_max": (lambda x: x.clamp(max=0.4), lambda v: np.minimum(v, 0.4), "clamp"),
}


def unary_input(rng, kind, shape, device="cpu", dtype=np.float64):
    if kind == "positive":
        data = rng.uniform(0.5, 2.0, size=shape)
    elif kind == "kinked":
        data = away_from(rng.standard_normal(shape), [0.0])
    elif kind == "clamp":
        data = away_from(rng.standard_normal(shape), [-0.5, -0.3, 0.4, 0.7], margin=0.04)
    else:
        data = rng.standard_normal(shape)
    return Tensor(data.astype(dtype), requires_grad=True, device=device)


@pytest.mark.parametrize("name", list(UNARY))
def test_unary_forward_and_gradcheck(device, rng, name):
    op, np_op, kind = UNARY[name]
    x = unary_input(rng, kind, (3, 4, 5), device=device)
    np.testing.assert_allclose(op(x).numpy(), np_op(x.numpy()), rtol=1e-12)
    assert minifpn.gradcheck(op, (x,))


def test_kink_gradients_follow_pytorch():
    """abs, relu: gradient 0 at exactly 0; clamp: 1 inside, 0 where clipped."""
    x = Tensor(np.array([-2.0, 0.0, 3.0]), requires_grad=True)
    x.abs().sum().backward()
    np.testing.assert_array_equal(x.grad, [-1.0, 0.0, 1.0])
    x = Tensor(np.array([-2.0, 0.0, 3.0]), requires_grad=True)
    F.relu(x).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 1.0])
    x = Tensor(np.array([-2.0, -0.2, 0.1, 3.0]), requires_grad=True)
    F.clamp(x, -1.0, 1.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 1.0, 1.0, 0.0])


def test_where_forward_and_gradients(device, rng):
    a = randn(rng, 2, 3, 4, device=device)
    b = randn(rng, 3, 1, device=device)  # broadcast
    cond = rng.standard_normal((3, 4)) > 0
    cond_dev = Tensor(cond, device=device)
    out = F.where(cond_dev, a, b)
    np.testing.assert_array_equal(out.numpy(), np.where(cond, a.numpy(), b.numpy()))
    assert minifpn.gradcheck(lambda s, t: F.where(cond_dev, s, t), (a, b))
    # Hand-computed: a's gradient is the mask, b's counts the unselected positions.
    a.grad = b.grad = None
    F.where(cond_dev, a, b).sum().backward()
    np.testing.assert_array_equal(Tensor(a.grad).numpy(), np.broadcast_to(cond, (2, 3, 4)))
    expected_b = (~cond).sum(axis=1, keepdims=True) * 2.0
    np.testing.assert_array_equal(Tensor(b.grad).numpy(), expected_b)


def test_where_condition_must_live_with_its_operands(device, rng):
    a = randn(rng, 3, device=device)
    b = randn(rng, 3, device=device)
    # A Python list is a constant, made where the operands are.
    out = F.where([True, False, True], a, b)
    np.testing.assert_array_equal(out.numpy(), np.where([True, False, True], a.numpy(), b.numpy()))
    if device != "cpu":  # a host mask meeting device tensors: PyTorch's error, not a hidden copy
        with pytest.raises(RuntimeError, match="same device.*'cpu' and 'cuda'"):
            F.where(np.array([True, False, True]), a, b)
        with pytest.raises(RuntimeError, match="same device"):
            F.where(Tensor(np.array([True, False, True])), a, b)


# ---------------------------------------------------------------------------
# dtypes: float32 stays float32, and float32 never meets float64 silently.
# ---------------------------------------------------------------------------
FLOAT32_OPS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a**b,
    "where": lambda a, b: F.where(a.data > 1.0, a, b),
    "add_scalar": lambda a, b: a + 1.5 + b,
    "mul_np_scalar": lambda a, b: a * np.float64(2.0) * b,
    "rsub_raw_array": lambda a, b: minifpn.get_array_module(a.data).ones((3, 1)) - a * b,
    "rdiv": lambda a, b: 1.0 / a + b,
    "rpow": lambda a, b: 2.0**a * b,
    "exp": lambda a, b: F.exp(a) * b,
    "log": lambda a, b: F.log(a) * b,
    "sqrt": lambda a, b: F.sqrt(a) * b,
    "neg": lambda a, b: -a * b,
    "abs": lambda a, b: F.abs(a) * b,
    "clamp": lambda a, b: F.clamp(a, 0.8, 1.5) * b,
    "relu": lambda a, b: F.relu(a - 1.0) * b,
}


@pytest.mark.parametrize("name", list(FLOAT32_OPS))
def test_float32_in_float32_out_and_grads(device, rng, name):
    a = positive(rng, 2, 3, 4, device=device, dtype=np.float32)
    b = positive(rng, 3, 1, device=device, dtype=np.float32)
    out = FLOAT32_OPS[name](a, b)
    assert out.dtype == np.float32
    out.sum().backward()
    assert a.grad.dtype == np.float32 and a.grad.shape == a.shape
    assert b.grad.dtype == np.float32 and b.grad.shape == b.shape


@pytest.mark.parametrize(
    "op", [F.add, F.sub, F.mul, F.div, F.pow, lambda a, b: F.where(a.data > 0, a, b)]
)
def test_float32_and_float64_tensors_do_not_mix(rng, op):
    a32 = Tensor(rng.uniform(0.5, 2, (2, 3)).astype(np.float32))
    b64 = Tensor(rng.uniform(0.5, 2, (2, 3)))
    with pytest.raises(TypeError, match="float32"):
        op(a32, b64)
    with pytest.raises(TypeError, match="float32"):
        op(b64, a32)


def test_add_of_equal_shapes_split_over_threads(rng, split_work):
    a, b = rng.standard_normal((4, 3, 5)), rng.standard_normal((4, 3, 5))
    np.testing.assert_array_equal(F.add(Tensor(a), Tensor(b)).numpy(), a + b)
    ints = Tensor(np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(F.add(ints, ints).numpy(), 2 * np.arange(6).reshape(2, 3))
