"""``Module`` and ``Parameter``: the bookkeeping behind every layer, as ``torch.nn``.

A network is a tree of modules. Each :class:`Module` owns three kinds of state:

* **parameters** — :class:`Parameter` tensors that the optimiser updates
  (a convolution's ``weight`` and ``bias``);
* **buffers** — raw arrays that are part of the model but are not trained
  (batch norm's ``running_mean``), registered with :meth:`Module.register_buffer`;
* **sub-modules** — the children in the tree.

They are registered simply by assigning attributes: ``self.conv1 = Conv2d(...)``
goes through :meth:`Module.__setattr__`, which sees a Module and files it
under ``_modules["conv1"]``. Walking the tree then gives every parameter a
*dotted name* — ``layer1.0.conv1.weight`` — which is exactly the key PyTorch
and torchvision use in their ``state_dict``, so a converted torchvision
checkpoint loads by name (see :meth:`Module.load_state_dict`).

Everything below mirrors ``torch/nn/modules/module.py`` in miniature: the
same method names, the same traversal order (a module's own members first,
then its children, depth first, in registration order), the same rules for
which keys appear in a state dict.
"""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from collections.abc import Iterator, Mapping

import numpy as np

from minifpn import backend
from minifpn.autograd import Tensor, as_array


class Parameter(Tensor):
    """A Tensor that is a trainable part of a module (``torch.nn.Parameter``).

    Assigning a Parameter to a Module attribute registers it, so it shows up
    in :meth:`Module.parameters` and the state dict. It requires grad by
    default and must hold floating-point data (Python floats become float32;
    NumPy/CuPy arrays keep their dtype).

    Args:
        data: array-like, e.g. ``np.zeros((out, in), dtype=np.float32)``.
        requires_grad: default True.
    """

    def __init__(self, data, requires_grad: bool = True):
        if isinstance(data, Tensor):
            data = data.data
        if not hasattr(data, "dtype"):  # a list or scalar: use the default dtype
            data = as_array(data, dtype=backend.DEFAULT_DTYPE)
        if not backend.is_float(data):
            raise TypeError(f"Parameter needs floating-point data, got {data.dtype}")
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class RemovableHandle:
    """Returned by :meth:`Module.register_forward_hook`; ``remove()`` undoes it.

    Also a context manager: ``with model.register_forward_hook(f): ...``.
    """

    _next_id = 0

    def __init__(self, hooks: OrderedDict):
        self._hooks = hooks
        self.id = RemovableHandle._next_id
        RemovableHandle._next_id += 1

    def remove(self) -> None:
        self._hooks.pop(self.id, None)

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


#: What ``load_state_dict(strict=False)`` returns, as ``torch``'s ``_IncompatibleKeys``.
IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class StateDictError(RuntimeError):
    """A state dict does not fit the model; the message lists every problem.

    Attributes ``missing_keys``, ``unexpected_keys`` and ``mismatched_keys``
    (``(key, checkpoint_shape, model_shape)`` triples) hold the same facts.
    """

    def __init__(self, message, missing_keys, unexpected_keys, mismatched_keys):
        super().__init__(message)
        self.missing_keys = missing_keys
        self.unexpected_keys = unexpected_keys
        self.mismatched_keys = mismatched_keys


def _is_array(value) -> bool:
    """A raw NumPy/CuPy array (not a Tensor, not a Python number)."""
    return hasattr(value, "dtype") and hasattr(value, "shape") and not isinstance(value, Tensor)


def _check_name(name, kind: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{kind} name must be a string, got {type(name).__name__}")
    if name == "" or "." in name:
        raise KeyError(f"{kind} name can't be empty or contain '.', got {name!r}")


def _addindent(text: str, spaces: int) -> str:
    """Indent every line of ``text`` but the first (for nested reprs)."""
    lines = text.split("\n")
    return "\n".join(lines[:1] + [" " * spaces + line for line in lines[1:]])


class Module:
    """Base class of every layer and model (``torch.nn.Module``).

    Subclasses call ``super().__init__()`` first, assign their parameters,
    buffers and sub-modules as attributes, and define :meth:`forward`::

        class Block(Module):
            def __init__(self, channels):
                super().__init__()
                self.conv = Conv2d(channels, channels, 3, padding=1, bias=False)
                self.bn = BatchNorm2d(channels)

            def forward(self, x):                    # x: (N, C, H, W)
                return F.relu(self.bn(self.conv(x)))

    ``block(x)`` calls ``block.forward(x)``. ``block.training`` says whether
    the module is in training mode (see :meth:`train` / :meth:`eval`).
    """

    training: bool

    def __init__(self):
        # object.__setattr__ bypasses our own __setattr__, which needs these dicts.
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent_buffers", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward() method")

    def __call__(self, *args, **kwargs):
        output = self.forward(*args, **kwargs)
        for hook in list(self._forward_hooks.values()):
            replaced = hook(self, args, output)
            if replaced is not None:
                output = replaced
        return output

    def register_forward_hook(self, hook) -> RemovableHandle:
        """Call ``hook(module, inputs, output)`` after every forward, as in PyTorch.

        The hook sees the module, its positional inputs (a tuple) and its
        output; returning something other than None replaces the output.
        Use it to look inside a model without changing its code (pyramid
        levels, RoI features, FLOP counts). Returns a handle whose
        ``remove()`` unregisters the hook.
        """
        handle = RemovableHandle(self._forward_hooks)
        self._forward_hooks[handle.id] = hook
        return handle

    # -- registration ---------------------------------------------------------
    def _registries(self) -> tuple:
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__}: call super().__init__() before assigning "
                "parameters, buffers or sub-modules"
            )
        return self._parameters, self._buffers, self._modules

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Add a parameter (or ``None``: a declared but absent one, like ``bias=False``)."""
        _check_name(name, "parameter")
        params, buffers, modules = self._registries()
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(
                f"cannot assign {type(param).__name__} as parameter '{name}' "
                "(wrap it in minifpn.nn.Parameter, or use register_buffer)"
            )
        if name in buffers or name in modules:
            raise KeyError(f"attribute '{name}' is already a buffer or sub-module")
        self.__dict__.pop(name, None)
        params[name] = param

    def register_buffer(self, name: str, array, persistent: bool = True) -> None:
        """Add a non-trainable raw array to the module's state.

        Args:
            name: attribute name, e.g. ``"running_mean"``.
            array: a NumPy/CuPy array, a Tensor (its ``.data`` is stored), or
                ``None`` (declared but absent; left out of the state dict).
            persistent: whether it belongs in :meth:`state_dict` (default).
        """
        _check_name(name, "buffer")
        params, buffers, modules = self._registries()
        if isinstance(array, Tensor):
            array = array.data
        if array is not None and not _is_array(array):
            raise TypeError(f"buffer '{name}' must be an array or None, got {type(array).__name__}")
        if name in params or name in modules:
            raise KeyError(f"attribute '{name}' is already a parameter or sub-module")
        self.__dict__.pop(name, None)
        buffers[name] = array
        if persistent:
            self._non_persistent_buffers.discard(name)
        else:
            self._non_persistent_buffers.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        """Add a child module; ``self.add_module("conv", m)`` is ``self.conv = m``."""
        _check_name(name, "module")
        params, buffers, modules = self._registries()
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module")
        if name in params or name in buffers:
            raise KeyError(f"attribute '{name}' is already a parameter or buffer")
        self.__dict__.pop(name, None)
        modules[name] = module

    register_module = add_module

    def __setattr__(self, name: str, value) -> None:
        params = self.__dict__.get("_parameters")
        buffers = self.__dict__.get("_buffers")
        modules = self.__dict__.get("_modules")
        if isinstance(value, Parameter):
            if params is not None:
                buffers.pop(name, None)
                modules.pop(name, None)
            self.register_parameter(name, value)
        elif params is not None and name in params:
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} to parameter '{name}' "
                    "(a Parameter or None is expected)"
                )
            params[name] = None
        elif isinstance(value, Module):
            if params is not None:
                params.pop(name, None)
                buffers.pop(name, None)
            self.add_module(name, value)
        elif modules is not None and name in modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to sub-module '{name}'")
            modules[name] = None
        elif buffers is not None and name in buffers:
            if value is not None and not _is_array(value):
                raise TypeError(f"buffer '{name}' must be an array or None")
            buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str):
        # Only called when normal lookup fails, i.e. for registered members.
        for registry in ("_parameters", "_buffers", "_modules"):
            members = self.__dict__.get(registry)
            if members is not None and name in members:
                return members[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        for registry in (self._parameters, self._buffers, self._modules):
            if name in registry:
                del registry[name]
                self._non_persistent_buffers.discard(name)
                return
        object.__delattr__(self, name)

    def __dir__(self):
        return sorted(
            set(super().__dir__()) | set(self._parameters) | set(self._buffers) | set(self._modules)
        )

    # -- walking the tree -------------------------------------------------------
    def named_modules(self, memo: set | None = None, prefix: str = "") -> Iterator:
        """Yield ``(dotted_name, module)`` for this module and all below, depth first.

        The root has the name ``""``; a module reachable twice is yielded once.
        """
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(memo, f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def named_children(self) -> Iterator:
        """Yield ``(name, module)`` for the direct sub-modules, in registration order."""
        seen = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self) -> Iterator[Module]:
        for _, child in self.named_children():
            yield child

    def _named_members(self, registry: str, prefix: str, recurse: bool) -> Iterator:
        """Each module's own members, modules in :meth:`named_modules` order, no repeats."""
        seen = set()
        modules = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for module_prefix, module in modules:
            for name, value in getattr(module, registry).items():
                if value is None or id(value) in seen:
                    continue
                seen.add(id(value))
                yield (f"{module_prefix}.{name}" if module_prefix else name), value

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator:
        """Yield ``(dotted_name, Parameter)``; a shared parameter appears once.

        Order: a module's own parameters, then its children's, depth first —
        ``Sequential(Conv2d, BatchNorm2d)`` gives ``0.weight, 0.bias,
        1.weight, 1.bias``, as in PyTorch.
        """
        yield from self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator:
        """Yield ``(dotted_name, raw_array)`` for every buffer, persistent or not."""
        yield from self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True) -> Iterator:
        for _, buf in self.named_buffers(recurse=recurse):
            yield buf

    def get_submodule(self, target: str) -> Module:
        """The module at a dotted path, e.g. ``model.get_submodule("layer1.0")``."""
        module = self
        for part in target.split(".") if target else []:
            child = module._modules.get(part)
            if child is None:
                raise AttributeError(f"{type(module).__name__} has no sub-module '{part}'")
            module = child
        return module

    # -- state dicts ----------------------------------------------------------
    def state_dict(self, destination: OrderedDict | None = None, prefix: str = "") -> OrderedDict:
        """Everything needed to rebuild the model's numbers: ``{dotted_name: raw_array}``.

        Keys are the same as PyTorch's: for each module (depth first) its
        parameters, then its persistent buffers, then its children's entries —
        e.g. ``conv1.weight, bn1.weight, bn1.bias, bn1.running_mean,
        bn1.running_var, bn1.num_batches_tracked, layer1.0.conv1.weight, …``.
        Unlike :meth:`named_parameters`, a shared parameter appears under
        every name it has (as in PyTorch).

        The values are the module's own arrays, not copies (as in PyTorch):
        save them, or copy them if you need a snapshot that later training
        must not change.
        """
        destination = OrderedDict() if destination is None else destination
        for name, param in self._parameters.items():
            if param is not None:
                destination[prefix + name] = param.data
        for name, buf in self._buffers.items():
            if buf is not None and name not in self._non_persistent_buffers:
                destination[prefix + name] = buf
        for name, child in self._modules.items():
            if child is not None:
                child.state_dict(destination, prefix + name + ".")
        return destination

    def _adapt_state_dict(self, state_dict: dict, prefix: str) -> None:
        """Hook: edit an incoming (copied) state dict before it is matched to the model.

        Called by :meth:`load_state_dict` on every module with the module's
        key ``prefix`` (e.g. ``"layer1.0.bn1."``). The default does nothing;
        a subclass may drop, rename or fill in its own keys, as
        ``FrozenBatchNorm2d`` drops ``num_batches_tracked``. (PyTorch modules
        do the same by overriding ``_load_from_state_dict``.)
        """

    def load_state_dict(self, state_dict: Mapping, strict: bool = True) -> IncompatibleKeys:
        """Copy a state dict's values into this model's parameters and buffers.

        Args:
            state_dict: ``{dotted_name: array}``; values may be NumPy or CuPy
                arrays, Tensors, or numbers. Each is moved to the device and
                cast to the dtype of the array it replaces, then copied *into*
                that array — Parameter objects keep their identity, so an
                optimiser built on them keeps working.
            strict: when True (default) every key of the model must be in
                ``state_dict`` and vice versa.

        Returns:
            ``IncompatibleKeys(missing_keys, unexpected_keys)``.

        Raises:
            StateDictError (a RuntimeError): listing *all* missing, unexpected
            and shape-mismatched keys at once. A shape mismatch raises even
            with ``strict=False`` (as in PyTorch). Unlike PyTorch, nothing is
            copied when an error is raised, so the model is never left
            half-loaded.
        """
        # A copy (hooks may edit it, never the caller's dict) holding raw arrays.
        # Not getattr(v, "data", v): a NumPy array's own .data is a memoryview.
        state_dict = OrderedDict(
            (key, value.data if isinstance(value, Tensor) else value)
            for key, value in state_dict.items()
        )
        for prefix, module in self.named_modules():
            module._adapt_state_dict(state_dict, prefix + "." if prefix else "")

        targets = self.state_dict()
        missing = [key for key in targets if key not in state_dict]
        unexpected = [key for key in state_dict if key not in targets]
        mismatched = []
        for key, current in targets.items():
            if key in state_dict:
                shape = tuple(np.shape(state_dict[key]))
                if shape != tuple(current.shape):
                    mismatched.append((key, shape, tuple(current.shape)))

        if mismatched or (strict and (missing or unexpected)):
            raise StateDictError(
                self._state_dict_report(missing, unexpected, mismatched),
                missing,
                unexpected,
                mismatched,
            )
        for key, current in targets.items():
            if key in state_dict:
                # to_device copies between host and GPU; `current[...] =` writes
                # into the existing array, casting to its dtype.
                current[...] = backend.to_device(state_dict[key], backend.device_of(current))
        return IncompatibleKeys(missing, unexpected)

    def _state_dict_report(self, missing, unexpected, mismatched) -> str:
        lines = [f"Error(s) in loading state_dict for {type(self).__name__}:"]
        if missing:
            lines.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing))
        if unexpected:
            lines.append(
                "Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected)
            )
        for key, shape, expected in mismatched:
            lines.append(
                f"size mismatch for {key}: copying an array with shape {shape} from the "
                f"checkpoint, the shape in the current model is {expected}"
            )
        return "\n\t".join(lines)

    # -- modes, devices, dtypes -------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Set training mode (``True``) or evaluation mode, recursively; returns self.

        Only layers that behave differently care (batch norm: batch statistics
        and running-average updates in training, running statistics in eval).
        """
        if not isinstance(mode, bool):
            raise TypeError(f"train(mode) expects a bool, got {type(mode).__name__}")
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> Module:
        """``train(False)``."""
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Switch gradient recording on or off for every parameter (freezing layers)."""
        for param in self.parameters():
            param.requires_grad_(requires_grad)
        return self

    def zero_grad(self) -> None:
        """Forget every parameter's gradient (``.grad = None``, PyTorch's default)."""
        for param in self.parameters():
            param.grad = None

    def apply(self, fn) -> Module:
        """Call ``fn(module)`` on every sub-module (children first) and self; returns self.

        E.g. a custom initialisation::

            def init(m):
                if isinstance(m, Conv2d):
                    init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            model.apply(init)
        """
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def to(self, device=None, dtype=None) -> Module:
        """Move and/or cast every parameter and buffer **in place**; returns self.

        Accepts ``to("cuda")``, ``to(np.float64)`` or ``to(device=..., dtype=...)``.
        Parameters keep their identity (only their ``.data`` and ``.grad``
        arrays are replaced), so it is safe to call before or after building
        an optimiser — though momentum buffers an optimiser already holds
        stay where they were, so move the model first, as in PyTorch.

        ``dtype`` must be floating point and applies to floating-point arrays
        only: integer buffers such as ``num_batches_tracked`` keep their dtype.
        ``model.to(dtype=np.float64)`` is how a whole model is gradient-checked.
        """
        if device is not None and not isinstance(device, str):
            device, dtype = None, device  # to(np.float64)
        if device is not None:
            device = backend.normalize_device(device)
        if dtype is not None:
            dtype = np.dtype(dtype)
            if dtype.kind != "f":
                raise TypeError(f"Module.to only accepts floating-point dtypes, got {dtype}")

        def convert(array):
            if device is not None:
                array = backend.to_device(array, device)
            if dtype is not None and backend.is_float(array):
                array = array.astype(dtype, copy=False)
            return array

        seen = set()
        for module in self.modules():
            for param in module._parameters.values():
                if param is None or id(param) in seen:
                    continue
                seen.add(id(param))
                param.data = convert(param.data)
                if param.grad is not None:
                    param.grad = convert(param.grad)
            for name, buf in module._buffers.items():
                if buf is not None:
                    module._buffers[name] = convert(buf)
        return self

    def cpu(self) -> Module:
        return self.to("cpu")

    def cuda(self) -> Module:
        return self.to("cuda")

    def float(self) -> Module:
        return self.to(dtype=np.float32)

    def double(self) -> Module:
        return self.to(dtype=np.float64)

    # -- printing -----------------------------------------------------------------
    def extra_repr(self) -> str:
        """The text inside this module's parentheses in ``repr``; layers override it."""
        return ""

    def __repr__(self) -> str:
        """A tree like PyTorch's::

        Sequential(
          (0): Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1))
          (1): ReLU()
        )
        """
        extra = self.extra_repr()
        children = [
            f"({name}): " + _addindent(repr(child), 2)
            for name, child in self._modules.items()
            if child is not None
        ]
        if not children:
            return f"{type(self).__name__}({extra})"
        lines = extra.split("\n") if extra else []
        body = "\n  ".join(lines + children)
        return f"{type(self).__name__}(\n  {body}\n)"
