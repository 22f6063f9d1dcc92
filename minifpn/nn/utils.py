"""Training utilities: gradient clipping by global norm."""

from __future__ import annotations

import math

from minifpn.autograd import Tensor
from minifpn.backend import get_array_module


def clip_grad_norm_(
    parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> float:
    """Rescale gradients in place so that their global norm is at most ``max_norm``.

    All gradients are treated as one long vector ``g`` (PyTorch's
    ``torch.nn.utils.clip_grad_norm_``)::

        total_norm = ‖ (‖g_1‖_p, ‖g_2‖_p, …) ‖_p      (= ‖g‖_p;  max |g| for p = inf)
        coef       = max_norm / (total_norm + 1e-6)
        g_i       ← g_i · coef     only if coef < 1

    so the *direction* of the update is kept and only its length is capped —
    it rescues training from a rare huge gradient without biasing the others.
    Small gradients (``coef ≥ 1``) are left exactly as they were. The 1e-6
    keeps the division finite when every gradient is zero.

    Args:
        parameters: an iterable of Tensors (e.g. ``model.parameters()``) or
            one Tensor; those whose ``.grad`` is None are skipped.
        max_norm: the largest allowed total norm.
        norm_type: p of the p-norm; ``float("inf")`` for the max-norm.
        error_if_nonfinite: raise if the total norm is NaN or infinite
            (otherwise the gradients are scaled by a NaN/0 coefficient, as PyTorch).

    Returns:
        The total norm *before* clipping, as a Python float.

    The per-parameter norms stay on the device; there is one device → host
    transfer in all, for the final number.
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    grads = [p.grad for p in params]
    norm_type = float(norm_type)
    xp = get_array_module(params[0])  # numpy or cupy, from where the parameter lives
    if norm_type == math.inf:
        norms = xp.stack([xp.abs(g).max() for g in grads])
        total = norms.max()
    else:
        norms = xp.stack([xp.linalg.norm(g.ravel(), ord=norm_type) for g in grads])
        total = xp.linalg.norm(norms, ord=norm_type)
    total_norm = float(total)  # the one synchronisation
    if error_if_nonfinite and not math.isfinite(total_norm):
        raise RuntimeError(
            f"the total norm of order {norm_type} of the gradients is non-finite "
            f"({total_norm}), so it cannot be clipped"
        )
    coef = max_norm / (total_norm + 1e-6)
    if coef < 1:
        for g in grads:
            g *= coef
    return total_norm
