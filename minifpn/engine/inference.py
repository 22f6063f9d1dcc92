"""Running a model for its outputs: on the device asked for, in eval mode, left as it was found.

Evaluation (:mod:`~minifpn.engine.evaluate`) and prediction
(:mod:`~minifpn.engine.predict`) both run a model that may be in the middle
of training. They check first that it is on the device the images will be
sent to, and run it inside :func:`inference_mode`, which restores its
training mode and any switch they set (``return_proposals``,
``paste_masks``) however the block ends.
"""

from __future__ import annotations

import contextlib

from minifpn import backend


def check_model_device(model, device: str) -> None:
    """Refuse a model whose parameters are not on ``device`` (a model without any passes)."""
    for param in getattr(model, "parameters", lambda: iter(()))():
        where = backend.device_of(getattr(param, "data", param))
        if where != device:
            raise ValueError(f"the model's parameters are on {where!r} but device={device!r}: "
                             f"call model.to({device!r}) first")
        return


@contextlib.contextmanager
def inference_mode(model, **switches):
    """``model`` in eval mode, with ``switches`` set (those it has), for the block only.

    ``with inference_mode(model, return_proposals=True): outputs = model(images)``;
    afterwards its training mode and the switches are what they were.
    """
    was_training = getattr(model, "training", False)
    previous = {name: getattr(model, name) for name in switches
                if getattr(model, name, None) is not None}
    model.eval()
    for name in previous:
        setattr(model, name, switches[name])
    try:
        yield model
    finally:
        model.train(was_training)
        for name, value in previous.items():
            setattr(model, name, value)
