"""How big and how expensive is a model? Parameters and multiply-adds.

FLOP counts in the vision literature are usually *multiply-adds* (MACs): the
ResNet paper's "3.8 × 10⁹ FLOPs" for ResNet-50 at 224×224 counts one
multiply-add as one operation. We follow that convention and say so: one
output element of a k×k convolution over C_in channels costs C_in·k·k MACs.
Only convolutions and linear layers are counted — they are ~99 % of the
arithmetic; norms, ReLUs, pooling and additions are left out, as usual.

    params = count_parameters(backbone.fpn)
    macs = count_macs(backbone, images)      # {"body.conv1": …, "fpn.layer_blocks.0.0": …}
    sum(v for k, v in macs.items() if k.startswith("fpn."))
"""

from __future__ import annotations

import math

from minifpn import nn
from minifpn.autograd import no_grad


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (each shared parameter counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _macs(module, inputs, output) -> int:
    if isinstance(module, nn.Conv2d):  # each output element: C_in·kh·kw MACs
        return output.numel() * math.prod(module.weight.shape[1:])
    if isinstance(module, nn.ConvTranspose2d):  # each input element: C_out·kh·kw MACs
        return inputs[0].numel() * math.prod(module.weight.shape[1:])
    return output.numel() * module.weight.shape[1]  # Linear


def count_macs(model: nn.Module, *inputs) -> dict:
    """Run ``model(*inputs)`` once (no gradients) and count each layer's multiply-adds.

    Returns:
        ``{module name: MACs}`` for every Conv2d, ConvTranspose2d and Linear
        that ran, in execution order (a layer run twice is counted twice).
    """
    counts: dict = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):

            def record(module, module_inputs, output, name=name):
                counts[name] = counts.get(name, 0) + _macs(module, module_inputs, output)

            handles.append(module.register_forward_hook(record))
    try:
        with no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return counts
