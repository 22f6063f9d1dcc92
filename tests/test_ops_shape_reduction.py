"""Reductions (sum, mean, max) and shape ops (indexing, cat, stack, permute, pad, ...).

Forward results are compared with NumPy; gradients with central differences
and, where the rule is the point (max ties, repeated indices), with values
worked out by hand.
"""

import numpy as np
import pytest

import minifpn
import minifpn.functional as F
from minifpn import Tensor
from tests.conftest import randn

AXES = [None, 0, 1, -1, (0, 2), (1, -1), (0, 1, 2)]


def distinct(rng, *shape, device="cpu"):
    """Values 0.1 apart in random order: no ties, even after a ±1e-6 nudge."""
    data = rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 0.5
    return Tensor(data.astype(np.float64), requires_grad=True, device=device)


# ---------------------------------------------------------------------------
# Reductions.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sum", "mean", "max"])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_reduction_forward_matches_numpy(device, rng, name, axis, keepdims):
    x = distinct(rng, 2, 3, 4, device=device)
    out = getattr(F, name)(x, axis=axis, keepdims=keepdims)
    expected = getattr(np, name if name != "max" else "amax")(
        x.numpy(), axis=axis, keepdims=keepdims
    )
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("name", ["sum", "mean", "max"])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_reduction_gradcheck(device, rng, name, axis, keepdims):
    x = distinct(rng, 2, 3, 4, device=device)
    assert minifpn.gradcheck(lambda t: getattr(F, name)(t, axis=axis, keepdims=keepdims), (x,))


@pytest.mark.parametrize("name", ["sum", "mean", "max"])
def test_dim_keepdim_aliases_and_methods(rng, name):
    x = distinct(rng, 2, 3, 4)
    np_fn = getattr(np, name if name != "max" else "amax")
    for dim, keepdim in [(1, True), (-1, False), ((0, 2), True)]:
        expected = np_fn(x.numpy(), axis=dim, keepdims=keepdim)
        by_alias = getattr(F, name)(x, dim=dim, keepdim=keepdim)
        by_method = getattr(x, name)(dim=dim, keepdim=keepdim)
        by_position = getattr(x, name)(dim, keepdim)
        for out in (by_alias, by_method, by_position):
            assert out.shape == expected.shape
            np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)


def test_sum_and_mean_gradients_hand_computed():
    x = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    x.sum(dim=1).backward(np.array([1.0, 2.0]))
    np.testing.assert_array_equal(x.grad, [[1, 1, 1], [2, 2, 2]])
    x.grad = None
    x.mean(axis=0, keepdims=True).backward(np.array([[3.0, 6.0, 9.0]]))
    np.testing.assert_allclose(x.grad, [[1.5, 3, 4.5], [1.5, 3, 4.5]], rtol=1e-12)
    x.grad = None
    x.mean().backward()
    np.testing.assert_allclose(x.grad, np.full((2, 3), 1 / 6), rtol=1e-12)


def test_max_shares_gradient_among_ties(device):
    x = Tensor(
        np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [5.0, 0.0, 4.0]]),
        requires_grad=True,
        device=device,
    )
    out = x.max(dim=1)
    np.testing.assert_array_equal(out.numpy(), [3.0, 2.0, 5.0])
    out.backward(Tensor(np.array([1.0, 6.0, 2.0]), device=device))
    expected = [[0.0, 0.5, 0.5], [2.0, 2.0, 2.0], [2.0, 0.0, 0.0]]
    np.testing.assert_allclose(Tensor(x.grad).numpy(), expected, rtol=1e-12)


def test_global_max_tie_split_keepdims():
    x = Tensor(np.array([[4.0, 1.0], [4.0, 4.0]]), requires_grad=True)
    out = F.max(x, keepdims=True)
    assert out.shape == (1, 1)
    out.backward(np.array([[3.0]]))
    np.testing.assert_allclose(x.grad, [[1.0, 0.0], [1.0, 1.0]], rtol=1e-12)


def test_max_float32_gradient_stays_float32():
    x = Tensor(np.array([[1.0, 3.0, 3.0]], dtype=np.float32), requires_grad=True)
    x.max(dim=1).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, [[0.0, 0.5, 0.5]])


# ---------------------------------------------------------------------------
# Indexing.
# ---------------------------------------------------------------------------
BASIC_INDICES = [
    (slice(1, None), slice(None, None, 2)),
    (Ellipsis, -1),
    (None, 0),
    (slice(None, None, -1), 1, slice(1, 3)),
    1,
    (slice(0, 1), slice(None), slice(3, 0, -2)),
]


@pytest.mark.parametrize("index", BASIC_INDICES, ids=str)
def test_getitem_slices_forward_grad(device, rng, index):
    x = randn(rng, 2, 3, 4, device=device)
    out = x[index]
    np.testing.assert_array_equal(out.numpy(), x.numpy()[index])
    assert minifpn.gradcheck(lambda t: t[index], (x,))
    # Hand rule: gradient 1 where an element was selected, 0 elsewhere.
    x.grad = None
    out.sum().backward()
    selected = np.zeros(x.shape)
    selected[index] = 1.0
    np.testing.assert_array_equal(Tensor(x.grad).numpy(), selected)


def test_getitem_duplicate_integer_indices_accumulate(device):
    x = Tensor(np.arange(5.0), requires_grad=True, device=device)
    out = (
        x[np.array([0, 0, 3, 0, 1])]
        if device == "cpu"
        else x[Tensor(np.array([0, 0, 3, 0, 1]), device=device)]
    )
    np.testing.assert_array_equal(out.numpy(), [0, 0, 3, 0, 1])
    out.backward(Tensor(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), device=device))
    # x[0] was read three times (upstream 1, 2, 4), x[1] once (5), x[3] once (3).
    np.testing.assert_array_equal(Tensor(x.grad).numpy(), [7.0, 5.0, 0.0, 3.0, 0.0])


def test_getitem_duplicate_pairs_and_mixed_slice():
    x = Tensor(np.arange(12.0).reshape(3, 4), requires_grad=True)
    out = x[[0, 0, 2], [1, 1, 3]]
    np.testing.assert_array_equal(out.numpy(), [1.0, 1.0, 11.0])
    out.backward(np.array([10.0, 20.0, 30.0]))
    expected = np.zeros((3, 4))
    expected[0, 1], expected[2, 3] = 30.0, 30.0
    np.testing.assert_array_equal(x.grad, expected)

    x.grad = None
    out = x[:, [2, 0, 2]]  # a slice and a repeated column index
    np.testing.assert_array_equal(out.numpy(), x.numpy()[:, [2, 0, 2]])
    out.backward(np.ones((3, 3)))
    np.testing.assert_array_equal(x.grad, [[1, 0, 2, 0]] * 3)


def test_getitem_tensor_index_and_gradcheck(rng):
    x = randn(rng, 4, 3)
    idx = Tensor(np.array([3, 1, 3, 3]))
    np.testing.assert_array_equal(x[idx].numpy(), x.numpy()[[3, 1, 3, 3]])
    assert minifpn.gradcheck(lambda t: t[idx], (x,))
    assert minifpn.gradcheck(lambda t: t[[0, 0, 2], [1, 1, 0]], (x,))


def test_getitem_boolean_mask(device, rng):
    x = randn(rng, 3, 4, device=device)
    mask = x > 0.2  # a boolean Tensor, outside the graph
    raw_mask = x.numpy() > 0.2
    out = x[mask]
    np.testing.assert_array_equal(out.numpy(), x.numpy()[raw_mask])
    out.backward(Tensor(np.arange(1.0, raw_mask.sum() + 1), device=device))
    expected = np.zeros((3, 4))
    expected[raw_mask] = np.arange(1.0, raw_mask.sum() + 1)
    np.testing.assert_array_equal(Tensor(x.grad).numpy(), expected)
    assert minifpn.gradcheck(lambda t: t[mask], (x,))
    # A row mask on the first axis.
    rows = np.array([True, False, True])
    if device == "cpu":
        np.testing.assert_array_equal(x[rows].numpy(), x.numpy()[rows])
        assert minifpn.gradcheck(lambda t: t[rows], (x,))


# ---------------------------------------------------------------------------
# cat, stack, permute, transpose, flatten, (un)squeeze, reshape, pad.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cat_forward_grad(device, rng, dim):
    shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]]
    for s, extra in zip(shapes, (1, 2, 3)):
        s[dim] = extra  # different sizes along the joined axis
    parts = [randn(rng, *s, device=device) for s in shapes]
    out = F.cat(parts, dim=dim)
    np.testing.assert_array_equal(out.numpy(), np.concatenate([p.numpy() for p in parts], dim))
    assert minifpn.gradcheck(lambda *ts: F.cat(ts, dim=dim), parts)
    assert F.concat is F.cat


def test_cat_gradient_split_hand_checked():
    a = Tensor(np.zeros((2, 1)), requires_grad=True)
    b = Tensor(np.zeros((2, 2)), requires_grad=True)
    F.cat([a, b], dim=1).backward(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    np.testing.assert_array_equal(a.grad, [[1.0], [4.0]])
    np.testing.assert_array_equal(b.grad, [[2.0, 3.0], [5.0, 6.0]])


def test_cat_refuses_mixed_dtypes():
    with pytest.raises(TypeError):
        F.cat([Tensor(np.zeros(2, np.float32)), Tensor(np.zeros(2))])


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_stack_forward_grad(device, rng, dim):
    parts = [randn(rng, 2, 3, device=device) for _ in range(3)]
    out = F.stack(parts, dim=dim)
    np.testing.assert_array_equal(out.numpy(), np.stack([p.numpy() for p in parts], axis=dim))
    assert minifpn.gradcheck(lambda *ts: F.stack(ts, dim=dim), parts)


SHAPE_OPS = [
    ("permute", lambda t: t.permute(2, 0, 3, 1), lambda v: v.transpose(2, 0, 3, 1)),
    ("permute_tuple", lambda t: F.permute(t, (-1, 0, 1, 2)), lambda v: v.transpose(3, 0, 1, 2)),
    ("transpose", lambda t: t.transpose(1, 3), lambda v: v.swapaxes(1, 3)),
    ("transpose_neg", lambda t: F.transpose(t, -1, 0), lambda v: v.swapaxes(-1, 0)),
    ("T", lambda t: t.T, lambda v: v.T),
    ("flatten", lambda t: t.flatten(), lambda v: v.reshape(-1)),
    ("flatten_1", lambda t: F.flatten(t, 1), lambda v: v.reshape(2, -1)),
    ("flatten_1_2", lambda t: F.flatten(t, 1, 2), lambda v: v.reshape(2, 3, 5)),
    ("reshape", lambda t: t.reshape(5, -1), lambda v: v.reshape(5, -1)),
    ("view", lambda t: t.view(3, 2, 5), lambda v: v.reshape(3, 2, 5)),
    ("unsqueeze", lambda t: t.unsqueeze(1), lambda v: v[:, None]),
    ("unsqueeze_neg", lambda t: F.unsqueeze(t, -1), lambda v: v[..., None]),
    ("pad_w", lambda t: F.pad(t, (1, 2)), lambda v: np.pad(v, [(0, 0)] * 3 + [(1, 2)])),
    (
        "pad_wh_value",
        lambda t: F.pad(t, (0, 1, 2, 1), value=3.5),
        lambda v: np.pad(v, [(0, 0), (0, 0), (2, 1), (0, 1)], constant_values=3.5),
    ),
]


@pytest.mark.parametrize("name, op, np_op", SHAPE_OPS, ids=[c[0] for c in SHAPE_OPS])
def test_shape_op_forward_grad(device, rng, name, op, np_op):
    x = randn(rng, 2, 3, 1, 5, device=device)
    out = op(x)
    expected = np_op(x.numpy())
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out.numpy(), expected)
    assert minifpn.gradcheck(op, (x,))


def test_squeeze_forms(device, rng):
    x = randn(rng, 1, 3, 1, 2, device=device)
    assert x.squeeze().shape == (3, 2)
    assert F.squeeze(x, 0).shape == (3, 1, 2)
    assert F.squeeze(x, -2).shape == (1, 3, 2)
    assert F.squeeze(x, 1).shape == (1, 3, 1, 2)  # not size 1: unchanged, as in PyTorch
    np.testing.assert_array_equal(x.squeeze().numpy(), x.numpy().squeeze())
    assert minifpn.gradcheck(lambda t: t.squeeze(), (x,))
    assert minifpn.gradcheck(lambda t: F.squeeze(t, 2), (x,))


def test_pad_gradient_is_the_crop():
    x = Tensor(np.zeros((1, 1, 2, 2)), requires_grad=True)
    out = F.pad(x, (1, 0, 0, 2))  # left 1, right 0, top 0, bottom 2
    assert out.shape == (1, 1, 4, 3)
    g = np.arange(12.0).reshape(1, 1, 4, 3)
    out.backward(g)
    np.testing.assert_array_equal(x.grad, [[[[1.0, 2.0], [4.0, 5.0]]]])


def test_permute_gradient_hand_checked():
    x = Tensor(np.zeros((2, 3)), requires_grad=True)
    g = np.arange(6.0).reshape(3, 2)
    x.permute(1, 0).backward(g)
    np.testing.assert_array_equal(x.grad, g.T)
