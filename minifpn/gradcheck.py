"""Check analytic gradients against finite differences.

For a function ``f`` and a random weighting ``v`` of its output, the scalar
``s = Σ v · f(x)`` has the gradient ``ds/dx = vᵀ J`` — exactly what one
backward pass computes. The same number can be estimated without any
calculus by nudging one input element at a time (central differences)::

    ds/dx_i ≈ (s(x + ε·e_i) − s(x − ε·e_i)) / 2ε        error O(ε²)

If the two agree for every element, the backward pass is right. In float64
with ε = 1e-6 the estimate is good to ~1e-9 relative; in float32 it is
useless (rounding error ~1e-7/ε swamps it), hence float64 is required.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minifpn import backend
from minifpn.autograd import Tensor, no_grad


class GradcheckError(AssertionError):
    """The analytic and numerical gradients disagree; the message has the report."""


@dataclass
class _Mismatch:
    name: str
    shape: tuple
    index: tuple
    analytic: float
    numeric: float
    count: int
    checked: int

    def __str__(self) -> str:
        rel = abs(self.analytic - self.numeric) / max(abs(self.numeric), 1e-12)
        return (
            f"  {self.name} {self.shape}: {self.count} of {self.checked} checked elements differ; "
            f"worst at index {self.index}: analytic {self.analytic:.8g} vs numeric "
            f"{self.numeric:.8g} (relative error {rel:.3g})"
        )


def gradcheck(
    fn,
    inputs,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    *,
    wrt=None,
    max_elements: int | None = None,
    seed: int = 0,
    raise_exception: bool = True,
) -> bool:
    """Compare ``fn``'s backward pass with central differences, in float64.

    Args:
        fn: called as ``fn(*inputs)``; returns a Tensor (any shape).
        inputs: a Tensor or a sequence of them (raw arrays pass through).
        eps: finite-difference step.
        atol, rtol: element passes when ``|analytic − numeric| ≤ atol + rtol·|numeric|``.
        wrt: the tensors to check (default: the inputs that require grad).
            May include tensors ``fn`` reaches by closure, e.g. a module's
            parameters.
        max_elements: check at most this many randomly chosen elements of
            each tensor (default: all) — for large parameters.
        seed: seeds the output weighting and the element sampling.
        raise_exception: raise :class:`GradcheckError` on mismatch (default),
            otherwise print the report and return False.

    Returns:
        True when every checked element agrees.
    """
    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    if wrt is None:
        wrt = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad]
    names = {id(t): f"input {i}" for i, t in enumerate(inputs)}
    names = [names.get(id(t), f"wrt[{i}]") for i, t in enumerate(wrt)]
    if not wrt:
        raise ValueError("gradcheck: nothing to check — no input requires grad and wrt is empty")
    for name, t in zip(names, wrt):
        if t.dtype != np.float64:
            raise TypeError(
                f"gradcheck: {name} is {t.dtype}; finite differences need float64 "
                f"(use .double() on tensors, or module.to(dtype=np.float64))"
            )
    rng = np.random.default_rng(seed)

    out = fn(*inputs)
    xp = backend.get_array_module(out.data)
    weights = xp.asarray(rng.standard_normal(out.shape))

    def scalar() -> float:
        with no_grad():
            return float((fn(*inputs).data * weights).sum())

    # Analytic: one backward pass of Σ v·f, with the tensors' own grads put aside.
    saved = [(t.grad, t.requires_grad) for t in wrt]
    for t in wrt:
        t.grad = None
        t.requires_grad = True
    out = fn(*inputs)
    (out * Tensor(weights)).sum().backward()
    analytic = [backend.to_numpy(t.grad) if t.grad is not None else np.zeros(t.shape) for t in wrt]
    for t, (grad, flag) in zip(wrt, saved):
        t.grad, t.requires_grad = grad, flag

    failures = []
    for name, t, ana in zip(names, wrt, analytic):
        flat = np.arange(t.numel())
        if max_elements is not None and t.numel() > max_elements:
            flat = np.sort(rng.choice(flat, max_elements, replace=False))
        bad, worst = 0, None
        for f in flat:
            index = np.unravel_index(f, t.shape)
            original = t.data[index].item()
            t.data[index] = original + eps
            plus = scalar()
            t.data[index] = original - eps
            minus = scalar()
            t.data[index] = original
            numeric = (plus - minus) / (2 * eps)
            a = float(ana[index])
            excess = abs(a - numeric) - (atol + rtol * abs(numeric))
            if excess > 0:
                bad += 1
                if worst is None or excess > worst[0]:
                    worst = (excess, tuple(int(i) for i in index), a, numeric)
        if bad:
            failures.append(_Mismatch(name, t.shape, worst[1], worst[2], worst[3], bad, len(flat)))

    if not failures:
        return True
    report = "gradcheck failed: analytic and numerical gradients differ\n" + "\n".join(
        str(f) for f in failures
    )
    if raise_exception:
        raise GradcheckError(report)
    print(report)
    return False
