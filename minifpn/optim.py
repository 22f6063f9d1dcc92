"""Optimisation: ``SGD`` with momentum, and the detection warm-up schedule.

Detectors in the FPN / Mask R-CNN papers are trained with plain SGD with
momentum 0.9 and weight decay 1e-4, a learning rate that warms up linearly
over the first iterations and then drops ×0.1 at fixed milestones. Both
pieces are here, with PyTorch's exact formulas and state-dict layout, so a
training run can be stopped and resumed bit for bit.

``clip_grad_norm_`` (defined in :mod:`minifpn.nn.utils`) is re-exported here
because it belongs to the same step of the training loop::

    optimizer.zero_grad()
    loss.backward()
    optim.clip_grad_norm_(model.parameters(), max_norm=10.0)
    optimizer.step()
    scheduler.step()
"""

from __future__ import annotations

import bisect

from minifpn import backend
from minifpn.autograd import Tensor, enable_grad, no_grad
from minifpn.nn.utils import clip_grad_norm_


class Optimizer:
    """What every optimiser shares: parameter groups, per-parameter state, saving.

    Args:
        params: an iterable of Tensors (e.g. ``model.parameters()``), or of
            dicts ``{"params": [...], "lr": ..., ...}`` — *parameter groups*,
            each of which may override the default hyper-parameters (e.g. no
            weight decay on biases).
        defaults: the hyper-parameters of groups that do not set their own.

    Attributes:
        param_groups: list of dicts, each with ``"params"`` (a list of
            Tensors) and every hyper-parameter; schedulers change ``"lr"`` here.
        state: ``{parameter: {name: raw array}}``, e.g. momentum buffers.
    """

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self.state: dict = {}
        groups = [params] if isinstance(params, Tensor) else list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group: dict) -> None:
        """Add a group of parameters; missing hyper-parameters come from the defaults."""
        group = dict(group)
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimise Tensors, got {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError("can't optimise a non-leaf Tensor (the result of an op)")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in params}) != len(params) or seen & {id(p) for p in params}:
            raise ValueError("some parameters appear in more than one parameter group")
        for name, value in self.defaults.items():
            group.setdefault(name, value)
        group["params"] = params
        self.param_groups.append(group)

    def zero_grad(self) -> None:
        """Forget all gradients (``.grad = None``), before the next backward pass."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self, closure=None):
        raise NotImplementedError

    # -- saving and resuming ------------------------------------------------------
    def state_dict(self) -> dict:
        """The optimiser's state as nested dicts/lists of arrays and numbers.

        Parameters are referred to by their position across all groups, as
        in PyTorch (Tensors themselves cannot be saved)::

            {"state": {"0": {"momentum_buffer": array}, ...},
             "param_groups": [{"lr": 0.02, "momentum": 0.9, ..., "params": [0, 1, ...]}]}

        The state keys are strings (PyTorch uses ints) so that
        :func:`minifpn.save` can store the dict as it is. The arrays are the
        optimiser's own, not copies.
        """
        index = {}
        groups = []
        for group in self.param_groups:
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            saved = {k: v for k, v in group.items() if k != "params"}
            saved["params"] = [index[id(p)] for p in group["params"]]
            groups.append(saved)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state:
                    state[str(index[id(p)])] = dict(self.state[p])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyper-parameters and state saved by :meth:`state_dict`.

        The optimiser must have been built over the same parameters in the
        same order (the saved dict names them only by position). Each state
        array is copied onto its parameter's device and dtype.
        """
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has {len(saved_groups)} parameter groups, "
                f"the optimizer has {len(self.param_groups)}"
            )
        by_index = {}
        for saved, group in zip(saved_groups, self.param_groups):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"a loaded parameter group has {len(saved['params'])} parameters, "
                    f"the optimizer's has {len(group['params'])}"
                )
            by_index.update(zip((int(i) for i in saved["params"]), group["params"]))
        for saved, group in zip(saved_groups, self.param_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.state = {}
        for key, entries in state_dict["state"].items():
            p = by_index[int(key)]
            xp = backend.get_array_module(p)
            self.state[p] = {
                name: xp.array(backend.to_device(value, p.device), dtype=p.dtype)  # a copy
                for name, value in entries.items()
            }


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, exactly as ``torch.optim.SGD``.

    For each parameter ``p`` with gradient ``g``, at every step::

        g ← g + weight_decay · p                         (L2 penalty ½·wd·‖p‖²)
        if momentum ≠ 0:
            b ← g                                         (first step)
            b ← momentum · b + (1 − dampening) · g        (later steps)
            g ← g + momentum · b    if nesterov  else  b
        p ← p − lr · g

    Note the momentum buffer starts at the first gradient itself (not at
    zero, and without dampening), and ``lr`` multiplies the whole update —
    so changing ``lr`` mid-training rescales the accumulated velocity too.
    Parameters whose ``.grad`` is None are left alone.

    Args:
        params: parameters or parameter groups (see :class:`Optimizer`).
        lr: learning rate.
        momentum: momentum factor (0.9 in the detection recipes).
        weight_decay: L2 penalty coefficient (1e-4 in the detection recipes).
        nesterov: Nesterov momentum (needs momentum > 0 and dampening = 0).
        dampening: scales down the newest gradient in the momentum buffer.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        dampening: float = 0.0,
    ):
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}")
        if momentum < 0:
            raise ValueError(f"invalid momentum {momentum}")
        if weight_decay < 0:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            nesterov=nesterov,
            dampening=dampening,
        )
        super().__init__(params, defaults)

    def step(self, closure=None):
        """Update every parameter in place from its ``.grad`` (the formula above).

        Args:
            closure: optional function that re-computes the loss (runs with
                gradients enabled); its result is returned.
        """
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        with no_grad():  # the update itself is not part of any graph
            for group in self.param_groups:
                self._update_group(group)
        return loss

    def _update_group(self, group: dict) -> None:
        """Apply the update rule to every parameter of one group, on raw arrays in place."""
        lr, momentum = group["lr"], group["momentum"]
        weight_decay, dampening = group["weight_decay"], group["dampening"]
        for p in group["params"]:
            if p.grad is None:
                continue
            d_p = p.grad
            if weight_decay != 0:
                d_p = d_p + weight_decay * p.data  # a new array: .grad is untouched
            if momentum != 0:
                state = self.state.setdefault(p, {})
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d_p.copy()
                else:
                    buf *= momentum
                    buf += (1 - dampening) * d_p
                d_p = d_p + momentum * buf if group["nesterov"] else buf
            p.data -= lr * d_p


class WarmupMultiStepLR:
    """Linear (or constant) warm-up, then ×gamma at each milestone — per *iteration*.

    The schedule of Detectron and torchvision's detection references. At
    iteration ``t`` (``last_epoch``, the number of :meth:`step` calls so
    far; PyTorch's name is kept though it counts iterations)::

        lr(t) = base_lr · warmup(t) · gamma ** (number of milestones ≤ t)

        warmup(t) = warmup_factor · (1 − α) + α,  α = t / warmup_iters   (linear)
                  = warmup_factor                                      (constant)
        for t < warmup_iters, and 1 afterwards.

    So with the defaults the rate climbs from base_lr/1000 to base_lr over
    500 iterations. Starting from a tiny rate keeps the first, randomly
    initialised heads from producing huge gradients that would wreck the
    pretrained backbone.

    Construction sets every group's ``lr`` to ``lr(0)``; call :meth:`step`
    once after each optimiser step.

    Args:
        optimizer: whose groups' ``"lr"`` is set; each group's ``base_lr`` is
            its ``"initial_lr"``, recorded the first time (PyTorch's rule, so
            that a resumed optimiser keeps its original base rate).
        milestones: increasing iteration numbers where the rate drops.
        gamma: factor applied at each milestone.
        warmup_iters: length of the warm-up (0 for none).
        warmup_factor: the warm-up's starting fraction of ``base_lr``.
        warmup_method: ``"linear"`` or ``"constant"``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        milestones,
        gamma: float = 0.1,
        warmup_iters: int = 500,
        warmup_factor: float = 1.0 / 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ):
        milestones = [int(m) for m in milestones]
        if milestones != sorted(milestones):
            raise ValueError(f"milestones should be increasing integers, got {milestones}")
        if warmup_method not in ("constant", "linear"):
            raise ValueError(f"warmup_method must be 'constant' or 'linear', got {warmup_method!r}")
        self.optimizer = optimizer
        self.milestones = milestones
        self.gamma = gamma
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor
        self.warmup_method = warmup_method
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        elif any("initial_lr" not in group for group in optimizer.param_groups):
            raise KeyError(
                "resuming a schedule (last_epoch ≠ -1) needs 'initial_lr' in every group"
            )
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()  # moves to iteration last_epoch + 1 (0 for a new schedule)

    def _warmup(self, t: int) -> float:
        if t >= self.warmup_iters:
            return 1.0
        if self.warmup_method == "constant":
            return self.warmup_factor
        alpha = t / self.warmup_iters
        return self.warmup_factor * (1 - alpha) + alpha

    def get_lr(self) -> list[float]:
        """The learning rate of each group at iteration ``last_epoch`` (the formula above)."""
        t = self.last_epoch
        decay = self.gamma ** bisect.bisect_right(self.milestones, t)
        return [base * self._warmup(t) * decay for base in self.base_lrs]

    def step(self) -> None:
        """Advance one iteration and write the new rates into the optimiser."""
        self.last_epoch += 1
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    def get_last_lr(self) -> list[float]:
        """The rates set by the latest :meth:`step` (one per group)."""
        return list(self._last_lr)

    def state_dict(self) -> dict:
        """Everything but the optimiser (which saves its own ``lr`` values), as PyTorch."""
        return {k: v for k, v in vars(self).items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the position in the schedule.

        As in PyTorch, the optimiser's current ``lr`` is not touched: restore
        the optimiser's own state dict too (it carries the rates), or call
        :meth:`step` to move on.
        """
        self.__dict__.update(state_dict)
        self.milestones = [int(m) for m in self.milestones]
        self.last_epoch = int(self.last_epoch)


__all__ = ["SGD", "Optimizer", "WarmupMultiStepLR", "clip_grad_norm_"]
