"""Matrix multiplication and the fully-connected layer.

For ``Y = A @ B`` the chain rule gives ``dA = dY @ Bᵀ`` and ``dB = Aᵀ @ dY``.
With batched (stacked) matrices the same holds per matrix, and any batch axes
that were broadcast are summed away afterwards.
"""

from __future__ import annotations

from minifpn.autograd import Tensor, as_tensor, check_same_kind
from minifpn.functional.elementwise import unbroadcast


def matmul(a, b) -> Tensor:
    """``a @ b`` for 2-D or batched (…, M, K) @ (…, K, N) operands.

    1-D operands are not supported (reshape them to a row or a column first).
    """
    if isinstance(a, Tensor):
        b = as_tensor(b, like=a)
    else:
        a = as_tensor(a, like=b)
    check_same_kind(a, b, "matmul")
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul needs operands with ≥ 2 dims, got {a.shape} and {b.shape}")

    def backward(g):
        ga = gb = None
        if a.requires_grad:
            ga = unbroadcast(g @ b.data.swapaxes(-1, -2), a.shape)
        if b.requires_grad:
            gb = unbroadcast(a.data.swapaxes(-1, -2) @ g, b.shape)
        return ga, gb

    return Tensor._make(a.data @ b.data, (a, b), backward, "matmul")


def linear(x, weight, bias=None) -> Tensor:
    """``y = x @ weightᵀ + bias`` as ``torch.nn.functional.linear``.

    Shapes: x ``(N, in_features)``, weight ``(out_features, in_features)``,
    bias ``(out_features,)`` → y ``(N, out_features)``.
    """
    x, weight = as_tensor(x), as_tensor(weight)
    check_same_kind(x, weight, "linear")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: input has {x.shape[-1]} features but weight {weight.shape} expects "
            f"{weight.shape[1]}"
        )
    if bias is not None:
        bias = as_tensor(bias, like=x)  # a raw bias adapts; a tensor must match
        check_same_kind(x, bias, "linear")
    parents = (x, weight) if bias is None else (x, weight, bias)
    out = x.data @ weight.data.T
    if bias is not None:
        out += bias.data

    def backward(g):
        gx = g @ weight.data if x.requires_grad else None
        gw = g.reshape(-1, g.shape[-1]).T @ x.data.reshape(-1, x.shape[-1])
        if bias is None:
            return gx, gw
        return gx, gw, g.reshape(-1, g.shape[-1]).sum(axis=0)

    return Tensor._make(out, parents, backward, "linear")
