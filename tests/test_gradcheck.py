"""minifpn.gradcheck is a public tool: it must pass right gradients, catch wrong ones,
and say clearly where they differ."""

import numpy as np
import pytest

import minifpn
import minifpn.functional as F
from minifpn import Tensor


def square_with_backward(backward_factor):
    """x² whose backward is ``backward_factor · x · g`` (2 is right)."""

    def fn(x):
        return Tensor._make(x.data**2, (x,), lambda g: (backward_factor * x.data * g,), "square")

    return fn


def test_accepts_a_correct_gradient(rng):
    x = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    assert minifpn.gradcheck(square_with_backward(2.0), [x])


def test_reports_which_input_and_element_differ(rng):
    x = Tensor(rng.standard_normal((3, 2)) + 3.0, requires_grad=True)  # away from 0
    with pytest.raises(minifpn.GradcheckError) as info:
        minifpn.gradcheck(square_with_backward(1.0), [x])
    report = str(info.value)
    assert "input 0 (3, 2)" in report and "6 of 6" in report
    assert "analytic" in report and "numeric" in report
    assert "relative error 0.5" in report  # x vs 2x: off by half


def test_checks_tensors_reached_by_closure(rng):
    w = Tensor(rng.standard_normal((4, 3)), requires_grad=True)
    x = Tensor(rng.standard_normal((2, 3)))
    assert minifpn.gradcheck(lambda: F.linear(x, w).sum(), [], wrt=[w])

    def wrong_linear():  # forgets the transpose: gradient lands on the wrong elements
        return Tensor._make(
            x.data @ w.data.T, (w,), lambda g: (np.ones_like(w.data) * g.sum(),), "oops"
        )

    with pytest.raises(minifpn.GradcheckError, match=r"wrt\[0\] \(4, 3\)"):
        minifpn.gradcheck(wrong_linear, [], wrt=[w])


def test_refuses_float32_and_explains_why():
    x = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    with pytest.raises(TypeError, match="float64"):
        minifpn.gradcheck(lambda t: t * 2, [x])


def test_max_elements_checks_a_sample(rng):
    x = Tensor(rng.standard_normal(100) + 3.0, requires_grad=True)
    with pytest.raises(minifpn.GradcheckError, match="10 of 10 checked"):
        minifpn.gradcheck(square_with_backward(1.0), [x], max_elements=10)


def test_can_return_false_instead_of_raising(rng, capsys):
    x = Tensor(rng.standard_normal(3) + 3.0, requires_grad=True)
    assert minifpn.gradcheck(square_with_backward(1.0), [x], raise_exception=False) is False
    assert "gradcheck failed" in capsys.readouterr().out


def test_leaves_grads_and_flags_as_they_were(rng):
    x = Tensor(rng.standard_normal(3), requires_grad=True)
    x.grad = np.full(3, 7.0)
    w = Tensor(rng.standard_normal(3))  # does not require grad
    minifpn.gradcheck(lambda: (x * w).sum(), [], wrt=[x, w])
    np.testing.assert_array_equal(x.grad, np.full(3, 7.0))
    assert w.grad is None and not w.requires_grad


def test_needs_something_to_check():
    with pytest.raises(ValueError, match="nothing to check"):
        minifpn.gradcheck(lambda t: t, [Tensor(np.ones(2))])
