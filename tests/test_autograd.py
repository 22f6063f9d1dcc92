"""The engine: graph building, topological order, accumulation, modes, dtypes."""

import numpy as np
import pytest

import minifpn
import minifpn.functional as F
from minifpn import Tensor, nn


def scalar(v):
    return Tensor(np.array(v, dtype=np.float64), requires_grad=True)


def test_chain_rule_on_a_small_expression_matches_hand_computation():
    # L = (a·b + c)²  at a=2, b=-3, c=10: u = 4, L = 16
    # dL/da = 2u·b = -24, dL/db = 2u·a = 16, dL/dc = 2u = 8
    a, b, c = scalar(2.0), scalar(-3.0), scalar(10.0)
    loss = (a * b + c) ** 2
    loss.backward()
    assert loss.item() == 16.0
    assert (a.grad, b.grad, c.grad) == (-24.0, 16.0, 8.0)


def test_node_used_twice_accumulates():
    a = scalar(3.0)
    (a + a).backward()
    assert a.grad == 2.0
    b = scalar(3.0)
    (b * b).backward()  # d(b²)/db = 2b
    assert b.grad == 6.0


def test_diamond_graph():
    # a → (2a, 3a) → product = 6a²;  d/da = 12a
    a = scalar(1.5)
    left, right = a * 2, a * 3
    (left * right).backward()
    assert a.grad == pytest.approx(18.0)


def test_shared_subexpression_backward_runs_once():
    calls = []
    a = scalar(2.0)

    def spy(g):
        calls.append(1)
        return (g * 3.0,)

    shared = Tensor._make(a.data * 3.0, (a,), spy, "spy")
    (shared * shared + shared).backward()  # d/da of 9a² + 3a = 18a + 3 = 39
    assert a.grad == pytest.approx(39.0)
    assert len(calls) == 1  # gradients summed before the node's backward ran


def test_long_chain_does_not_hit_the_recursion_limit():
    x = Tensor(np.ones(3, dtype=np.float64), requires_grad=True)
    y = x
    for _ in range(20_000):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad, np.full(3, 1.0001**20_000), rtol=1e-9)


def test_gradients_accumulate_across_backward_calls_until_zeroed():
    x = scalar(2.0)
    (x * x).backward()
    (x * 5.0).backward()
    assert x.grad == 4.0 + 5.0
    x.zero_grad()
    (x * 5.0).backward()
    assert x.grad == 5.0


def test_leaf_grads_never_alias_each_other():
    # add's backward returns the same array for both inputs; in-place edits of
    # one .grad (e.g. clipping) must not change the other.
    a, b = scalar(1.0), scalar(2.0)
    (a + b).backward()
    a.grad *= 10
    assert b.grad == 1.0


@pytest.mark.parametrize(
    "shape_a, shape_b",
    [((3, 1), (1, 4)), ((4,), (2, 3, 4)), ((2, 3, 4, 5), (3, 1, 1)), ((), (2, 2)), ((1,), (5, 1))],
)
def test_broadcasting_reduces_gradients_to_each_input_shape(shape_a, shape_b, rng):
    a = Tensor(rng.standard_normal(shape_a), requires_grad=True)
    b = Tensor(rng.standard_normal(shape_b), requires_grad=True)
    (a * b).sum().backward()
    assert a.grad.shape == shape_a and b.grad.shape == shape_b
    # d/da Σ(a·b) = Σ of b over the positions a was repeated to
    full = np.broadcast_shapes(shape_a, shape_b)
    expected_a = np.broadcast_to(b.data, full).sum(axis=tuple(range(len(full) - len(shape_a))))
    expected_a = expected_a.sum(
        axis=tuple(i for i, n in enumerate(shape_a) if n == 1), keepdims=True
    ).reshape(shape_a)
    np.testing.assert_allclose(a.grad, expected_a)


def test_indexing_with_repeated_indices_scatter_adds():
    x = Tensor(np.arange(4.0), requires_grad=True)
    (x[np.array([0, 0, 2, 0])] * Tensor(np.array([1.0, 2.0, 3.0, 4.0]))).sum().backward()
    np.testing.assert_array_equal(x.grad, [7.0, 0.0, 3.0, 0.0])


def test_no_grad_records_nothing_and_restores_the_mode():
    x = scalar(1.0)
    with minifpn.no_grad():
        y = x * 2
        assert not minifpn.is_grad_enabled()
        with minifpn.enable_grad():
            z = x * 2
    assert minifpn.is_grad_enabled()
    assert not y.requires_grad and y._parents == ()
    assert z.requires_grad

    @minifpn.no_grad()
    def infer(t):
        return t * 3

    assert not infer(x).requires_grad


def test_backward_needs_a_scalar_or_an_explicit_gradient():
    x = Tensor(np.ones((2, 2)), requires_grad=True)
    with pytest.raises(RuntimeError, match="explicit grad"):
        (x * 2).backward()
    (x * 2).backward(np.full((2, 2), 0.5))
    np.testing.assert_array_equal(x.grad, np.ones((2, 2)))
    with pytest.raises(ValueError, match="shape"):
        (x * 2).backward(np.ones(3))


def test_backward_on_a_constant_explains_itself():
    with pytest.raises(RuntimeError, match="requires_grad"):
        Tensor([1.0]).sum().backward()


def test_retain_grad_keeps_an_intermediate_gradient():
    x = scalar(3.0)
    h = (x * 2).retain_grad()
    (h * h).backward()  # d/dh h² = 2h = 12
    assert h.grad == 12.0 and x.grad == 24.0


def test_detach_cuts_the_graph_and_shares_memory():
    x = scalar(3.0)
    d = (x * 2).detach()
    assert not d.requires_grad and d.is_leaf
    y = x * 1
    assert y.detach().data is y.data


def test_float32_stays_float32_and_mixing_precisions_is_refused():
    x = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    out = x * np.float64(2.0) + np.ones(3) - 0.5  # float64 *constants* adapt to x
    assert out.dtype == np.float32
    (2.0 / (out * x)).sum().backward()
    assert x.grad.dtype == np.float32
    assert Tensor([1.0, 2.0]).dtype == np.float32  # Python floats → float32
    with pytest.raises(TypeError, match="promote"):
        x + Tensor(np.ones(3, dtype=np.float64))


def test_dtype_conversion_is_differentiable():
    x = Tensor(np.array([1.0, 2.0], dtype=np.float32), requires_grad=True)
    (x.double() ** 2).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])


def test_raw_arrays_and_scalars_work_on_either_side():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = 2 - x + np.array([1.0, 1.0]) * x / 4 - x**2 + 1 / x
    np.testing.assert_allclose(y.data, [2 - 1 + 0.25 - 1 + 1, 2 - 2 + 0.5 - 4 + 0.5])
    y.sum().backward()
    # d/dx = -1 + 1/4 - 2x - 1/x²
    np.testing.assert_allclose(x.grad, [-1 + 0.25 - 2 - 1, -1 + 0.25 - 4 - 0.25])


def test_a_broken_backward_is_caught_at_the_op_that_broke():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    bad = Tensor._make(x.data.sum(0), (x,), lambda g: (g,), "bad_sum")
    with pytest.raises(RuntimeError, match="bad_sum"):
        bad.sum().backward()


def test_detect_anomaly_names_the_first_bad_forward_op():
    x = Tensor(np.array([1.0, -1.0]), requires_grad=True)
    with minifpn.detect_anomaly(), np.errstate(invalid="ignore"):
        y = x * 2
        with pytest.raises(minifpn.AnomalyError, match=r"forward of 'log'.*\(2,\) float64"):
            F.log(y)


def test_detect_anomaly_names_the_bad_backward_op_and_where_it_was_made():
    x = Tensor(np.array([0.0, 4.0]), requires_grad=True)
    with minifpn.detect_anomaly(), np.errstate(divide="ignore"):
        y = F.sqrt(x) * 3  # d sqrt/dx at 0 is infinite
        with pytest.raises(minifpn.AnomalyError, match="backward of 'sqrt'") as info:
            y.sum().backward()
    assert "test_autograd.py" in str(info.value)  # the line that created the op


def test_without_anomaly_mode_nan_passes_silently():
    x = Tensor(np.array([-1.0]), requires_grad=True)
    with np.errstate(invalid="ignore"):
        assert np.isnan(F.log(x).data).all()


def test_comparisons_give_boolean_tensors_outside_the_graph():
    x = Tensor(np.array([1.0, 3.0]), requires_grad=True)
    mask = x > 2
    assert mask.dtype == bool and not mask.requires_grad
    np.testing.assert_array_equal(x[mask].data, [3.0])


def test_only_float_tensors_can_require_grad():
    with pytest.raises(TypeError, match="floating-point"):
        Tensor(np.arange(3), requires_grad=True)


def test_tensor_methods_follow_pytorch_names():
    x = Tensor(np.arange(24.0).reshape(2, 3, 4))
    assert x.transpose(0, 2).shape == (4, 3, 2)  # swaps two dims, like torch
    assert x.permute(2, 0, 1).shape == (4, 2, 3)
    assert x.flatten(1).shape == (2, 12)
    assert x.unsqueeze(0).shape == (1, 2, 3, 4) and x[:1].squeeze(0).shape == (3, 4)
    assert x.sum(dim=1, keepdim=True).shape == (2, 1, 4)
    assert x.size() == (2, 3, 4) and x.size(1) == 3 and x.numel() == 24
    assert x.max().item() == 23.0 and x.argmax().item() == 23


def test_device_errors_are_clear_without_a_gpu(device):
    x = Tensor(np.ones(2), device=device)
    assert x.device == device
    if device == "cpu" and not minifpn.cuda_available():
        with pytest.raises(RuntimeError, match="CuPy|GPU"):
            x.to("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        x.to("tpu")


def test_moving_between_devices_is_differentiable(device):
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x.to(device) * 3
    (y.to("cpu") ** 2).sum().backward()
    assert isinstance(x.grad, np.ndarray)
    np.testing.assert_allclose(x.grad, 18 * x.data)


def test_a_tensor_from_a_list_of_device_scalars_stays_on_the_device(device):
    x = Tensor(np.array([1.0, 4.0, 2.0]), device=device)
    stacked = Tensor([x.sum(), x.max(), x[0]])  # e.g. losses gathered for logging
    assert stacked.device == device and stacked.dtype == np.float64
    np.testing.assert_array_equal(stacked.numpy(), [7.0, 4.0, 1.0])
    nested = Tensor([[x[0], x[1]], [x[2], x[0]]])
    assert nested.shape == (2, 2) and nested.device == device
    np.testing.assert_array_equal(nested.numpy(), [[1.0, 4.0], [2.0, 1.0]])
    parameter = nn.Parameter([x[1], x[2]])
    assert parameter.device == device and parameter.dtype == np.float32  # the default dtype
    np.testing.assert_array_equal(parameter.numpy(), [4.0, 2.0])


def test_numpy_scalars_are_numbers_on_any_device(device):
    x = Tensor(np.array([1.0, 2.0], dtype=np.float32), device=device, requires_grad=True)
    for scalar in (np.float64(2), np.float32(2), np.int64(2), 2, 2.0):
        y = x * scalar
        assert y.device == device and y.dtype == np.float32, type(scalar)
        np.testing.assert_array_equal(y.numpy(), [2.0, 4.0])
    if device != "cpu":  # but a host *array* is refused, with the devices named
        with pytest.raises(RuntimeError, match="same device"):
            x * np.array([2.0, 2.0], dtype=np.float32)
