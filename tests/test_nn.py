"""minifpn.nn: registration, names, state dicts, modes, devices, init, layers.

References are independent of the code under test: PyTorch's documented key
names and reprs written out by hand, NumPy re-implementations of each layer,
hand-computed running statistics, finite differences (gradcheck), and the
closed-form statistics of PyTorch's initialisers.
"""

import copy
import math

import numpy as np
import pytest

import minifpn
from minifpn import backend, nn
from minifpn.nn import init
from tests.conftest import randn


def host(array):
    """A Tensor's or raw array's values as a NumPy array.

    (Not ``getattr(array, "data", array)``: a raw array's ``.data`` is a buffer.)
    """
    return backend.to_numpy(array.data if isinstance(array, minifpn.Tensor) else array)


class Block(nn.Module):
    """A torchvision-style residual-block skeleton (names as in ResNet's BasicBlock)."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)

    def forward(self, x):
        return nn.ReLU()(self.bn1(self.conv1(x)))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(Block(4), Block(4))
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.layer1(self.bn1(self.conv1(x)))
        return self.fc(x.mean(axis=(2, 3)))


def _bn_keys(prefix):
    names = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    return [f"{prefix}.{n}" for n in names]


TINY_RESNET_KEYS = (
    ["conv1.weight"]
    + _bn_keys("bn1")
    + ["layer1.0.conv1.weight"]
    + _bn_keys("layer1.0.bn1")
    + ["layer1.1.conv1.weight"]
    + _bn_keys("layer1.1.bn1")
    + ["fc.weight", "fc.bias"]
)


# ---------------------------------------------------------------------------
# Parameter and registration
# ---------------------------------------------------------------------------
def test_parameter_defaults():
    p = nn.Parameter(np.zeros(3))
    assert isinstance(p, minifpn.Tensor)
    assert p.requires_grad and p.dtype == np.float64
    assert nn.Parameter([1.0, 2.0]).dtype == np.float32
    assert not nn.Parameter(np.zeros(2), requires_grad=False).requires_grad
    with pytest.raises(TypeError):
        nn.Parameter(np.arange(3))
    assert repr(nn.Parameter([1.0])).startswith("Parameter containing:")


def test_attribute_registration():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(np.ones(2))
            self.child = nn.Linear(2, 3)
            self.register_buffer("stat", np.zeros(2))
            self.register_buffer("scratch", np.zeros(1), persistent=False)
            self.plain = np.ones(5)  # a plain attribute: not registered
            self.absent = None

    m = M()
    assert [n for n, _ in m.named_parameters()] == ["w", "child.weight", "child.bias"]
    assert [n for n, _ in m.named_buffers()] == ["stat", "scratch"]
    assert list(m.state_dict()) == ["w", "stat", "child.weight", "child.bias"]
    assert [n for n, _ in m.named_children()] == ["child"]
    assert [type(x).__name__ for x in m.modules()] == ["M", "Linear"]
    assert m.plain.shape == (5,) and m.absent is None
    assert isinstance(m.stat, np.ndarray)

    m.w = None  # a declared but absent parameter
    assert [n for n, _ in m.named_parameters()] == ["child.weight", "child.bias"]
    with pytest.raises(TypeError):
        m.child = np.ones(2)  # a sub-module slot takes Modules only
    with pytest.raises(TypeError):
        m.register_parameter("q", minifpn.Tensor(np.ones(2)))  # not a Parameter
    with pytest.raises(KeyError):
        m.register_buffer("a.b", np.zeros(1))
    m.stat = np.ones(2)  # replacing a buffer keeps it a buffer
    assert np.array_equal(m.state_dict()["stat"], np.ones(2))
    del m.child
    assert list(m.named_parameters()) == []


def test_assignment_before_init_is_an_error():
    class Forgetful(nn.Module):
        def __init__(self):
            self.conv = nn.Conv2d(1, 1, 1)

    with pytest.raises(AttributeError, match="super"):
        Forgetful()


def test_forward_is_called_and_required():
    lin = nn.Linear(3, 2)
    x = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    expected = x @ host(lin.weight).T + host(lin.bias)
    np.testing.assert_allclose(lin(minifpn.Tensor(x)).numpy(), expected, rtol=1e-6)
    with pytest.raises(NotImplementedError):
        nn.Module()(x)


# ---------------------------------------------------------------------------
# Names, order and state dicts
# ---------------------------------------------------------------------------
def test_named_parameters_order_like_torch():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1, bias=False)
    )
    assert [n for n, _ in model.named_parameters()] == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "3.weight",
    ]
    assert [n for n, _ in model.named_buffers()] == [
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    assert len(list(model.parameters())) == 5


def test_nested_state_dict_keys_are_torchvisions():
    model = TinyResNet()
    sd = model.state_dict()
    assert list(sd) == TINY_RESNET_KEYS
    nbt = sd["layer1.1.bn1.num_batches_tracked"]
    assert nbt.dtype == np.int64 and nbt.shape == ()
    assert sd["conv1.weight"].dtype == np.float32
    assert [n for n, _ in model.named_modules()][:5] == ["", "conv1", "bn1", "layer1", "layer1.0"]
    assert model.get_submodule("layer1.1.bn1") is model.layer1[1].bn1


def test_shared_parameters_are_named_once_but_saved_under_every_name():
    shared = nn.Conv2d(2, 2, 1)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias"]
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_load_state_dict_round_trip_keeps_parameter_identity():
    minifpn.manual_seed(1)
    src = TinyResNet()
    minifpn.manual_seed(2)
    dst = TinyResNet()
    src.bn1.running_mean[:] = [1.0, 2.0, 3.0, 4.0]
    src.bn1.num_batches_tracked[...] = 7
    before = {n: (p, p.data) for n, p in dst.named_parameters()}

    result = dst.load_state_dict(src.state_dict())

    assert result == ([], []) and result.missing_keys == [] and result.unexpected_keys == []
    for name, p in dst.named_parameters():
        assert p is before[name][0] and p.data is before[name][1]  # same objects, new values
    for key, value in src.state_dict().items():
        np.testing.assert_array_equal(dst.state_dict()[key], value)
    assert dst.state_dict()[key] is not value  # copied, not aliased
    assert int(dst.bn1.num_batches_tracked) == 7
    x = minifpn.Tensor(np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32))
    src.eval(), dst.eval()
    np.testing.assert_array_equal(src(x).numpy(), dst(x).numpy())


def test_load_state_dict_accepts_tensors_and_casts_to_model_dtype():
    lin = nn.Linear(2, 2)
    weights = np.array([[1.0, 2.0], [3.0, 4.0]])  # float64 on purpose
    lin.load_state_dict({"weight": minifpn.Tensor(weights), "bias": np.array([0.5, -0.5])})
    assert lin.weight.dtype == np.float32
    np.testing.assert_array_equal(host(lin.weight), weights.astype(np.float32))
    np.testing.assert_array_equal(host(lin.bias), [0.5, -0.5])


def test_strict_load_lists_every_problem_and_changes_nothing():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2))
    sd = {k: v.copy() + 1 for k, v in model.state_dict().items()}
    del sd["0.bias"]
    sd["extra.weight"] = np.zeros(3)
    sd["1.weight"] = np.zeros((2, 5))
    before = {k: v.copy() for k, v in model.state_dict().items()}

    with pytest.raises(RuntimeError) as info:
        model.load_state_dict(sd)
    message = str(info.value)
    assert '"0.bias"' in message and "Missing" in message
    assert '"extra.weight"' in message and "Unexpected" in message
    assert "1.weight" in message and "(2, 5)" in message and "(2, 4)" in message
    assert info.value.missing_keys == ["0.bias"]
    assert info.value.unexpected_keys == ["extra.weight"]
    assert info.value.mismatched_keys == [("1.weight", (2, 5), (2, 4))]
    for key, value in model.state_dict().items():  # all-or-nothing
        np.testing.assert_array_equal(value, before[key])


def test_non_strict_load_reports_and_loads_the_rest():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2))
    sd = {"0.weight": np.full((4, 3, 3, 3), 0.25), "bogus": np.zeros(1)}
    result = model.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["0.bias", "1.weight", "1.bias"]
    assert result.unexpected_keys == ["bogus"]
    assert np.all(host(model[0].weight) == 0.25)

    with pytest.raises(RuntimeError, match="size mismatch for 0.weight"):
        model.load_state_dict({"0.weight": np.zeros((4, 3, 1, 1))}, strict=False)


def test_non_persistent_buffers_stay_out_of_the_state_dict():
    m = nn.Module()
    m.register_buffer("cache", np.zeros(2), persistent=False)
    assert list(m.state_dict()) == []
    with pytest.raises(RuntimeError, match="cache"):
        m.load_state_dict({"cache": np.ones(2)})


# ---------------------------------------------------------------------------
# Normalisation layers
# ---------------------------------------------------------------------------
def test_frozen_batch_norm_has_buffers_only_and_ignores_num_batches_tracked():
    frozen = nn.FrozenBatchNorm2d(3)
    assert list(frozen.parameters()) == []
    assert list(frozen.state_dict()) == ["weight", "bias", "running_mean", "running_var"]

    rng = np.random.default_rng(0)
    bn = nn.BatchNorm2d(3)
    bn.weight.data[:] = [1.5, -2.0, 0.5]
    bn.bias.data[:] = [0.1, 0.2, 0.3]
    bn.running_mean[:] = [1.0, -1.0, 0.0]
    bn.running_var[:] = [4.0, 0.25, 1.0]
    bn.num_batches_tracked[...] = 12
    result = frozen.load_state_dict(bn.state_dict())  # strict, with num_batches_tracked
    assert result == ([], [])

    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    out = frozen(minifpn.Tensor(x)).numpy()
    shape = (1, 3, 1, 1)
    expected = (x - np.array([1.0, -1.0, 0.0]).reshape(shape)) / np.sqrt(
        np.array([4.0, 0.25, 1.0]).reshape(shape) + 1e-5
    ) * np.array([1.5, -2.0, 0.5]).reshape(shape) + np.array([0.1, 0.2, 0.3]).reshape(shape)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # It loads into a model whose frozen layer is nested, too.
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.FrozenBatchNorm2d(3))
    donor = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    assert model.load_state_dict(donor.state_dict()) == ([], [])


def _numpy_batch_norm(x, mean, var, weight, bias, eps=1e-5):
    shape = (1, -1, 1, 1)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * weight.reshape(
        shape
    ) + bias.reshape(shape)


def test_batch_norm_train_and_eval_with_hand_computed_running_stats():
    rng = np.random.default_rng(3)
    bn = nn.BatchNorm2d(2, momentum=0.1).to(dtype=np.float64)
    bn.weight.data[:] = [2.0, 0.5]
    bn.bias.data[:] = [1.0, -1.0]
    x1 = rng.standard_normal((4, 2, 3, 3)) * 3 + 1
    x2 = rng.standard_normal((4, 2, 3, 3)) - 2
    m = 4 * 3 * 3  # values per channel

    def stats(x):
        mean = x.transpose(1, 0, 2, 3).reshape(2, -1).sum(axis=1) / m
        centred = x - mean.reshape(1, 2, 1, 1)
        sq = (centred**2).transpose(1, 0, 2, 3).reshape(2, -1).sum(axis=1)
        return mean, sq / m, sq / (m - 1)  # mean, biased var, unbiased var

    assert bn.training
    out = bn(minifpn.Tensor(x1)).numpy()
    mean1, var1, unbiased1 = stats(x1)
    np.testing.assert_allclose(
        out, _numpy_batch_norm(x1, mean1, var1, bn.weight.data, bn.bias.data)
    )
    running_mean = 0.9 * 0.0 + 0.1 * mean1
    running_var = 0.9 * 1.0 + 0.1 * unbiased1
    np.testing.assert_allclose(bn.running_mean, running_mean)
    np.testing.assert_allclose(bn.running_var, running_var)
    assert int(bn.num_batches_tracked) == 1

    bn(minifpn.Tensor(x2))
    mean2, _, unbiased2 = stats(x2)
    running_mean = 0.9 * running_mean + 0.1 * mean2
    running_var = 0.9 * running_var + 0.1 * unbiased2
    np.testing.assert_allclose(bn.running_mean, running_mean)
    np.testing.assert_allclose(bn.running_var, running_var)
    assert int(bn.num_batches_tracked) == 2

    bn.eval()
    out = bn(minifpn.Tensor(x1)).numpy()
    np.testing.assert_allclose(
        out, _numpy_batch_norm(x1, running_mean, running_var, bn.weight.data, bn.bias.data)
    )
    np.testing.assert_allclose(bn.running_mean, running_mean)  # unchanged in eval
    assert int(bn.num_batches_tracked) == 2


def test_batch_norm_cumulative_average_and_no_running_stats():
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((3, 2, 2, 2)) + k for k in range(3)]
    bn = nn.BatchNorm2d(2, momentum=None).double()
    for x in xs:
        bn(minifpn.Tensor(x))
    expected = np.mean([x.mean(axis=(0, 2, 3)) for x in xs], axis=0)
    np.testing.assert_allclose(bn.running_mean, expected)

    plain = nn.BatchNorm2d(2, track_running_stats=False).double().eval()
    assert list(plain.state_dict()) == ["weight", "bias"]
    x = xs[0]
    out = plain(minifpn.Tensor(x)).numpy()  # eval still uses batch statistics
    np.testing.assert_allclose(
        out,
        _numpy_batch_norm(
            x, x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3)), np.ones(2), np.zeros(2)
        ),
    )
    with pytest.raises(ValueError, match="more than 1 value"):
        nn.BatchNorm2d(2)(minifpn.Tensor(np.ones((1, 2, 1, 1), dtype=np.float32)))


def test_group_norm_matches_numpy():
    rng = np.random.default_rng(5)
    gn = nn.GroupNorm(2, 4).double()
    gn.weight.data[:] = [1.0, 2.0, 3.0, 4.0]
    gn.bias.data[:] = [0.0, 1.0, 0.0, -1.0]
    x = rng.standard_normal((2, 4, 3, 3))
    grouped = x.reshape(2, 2, -1)
    normed = (grouped - grouped.mean(axis=2, keepdims=True)) / np.sqrt(
        grouped.var(axis=2, keepdims=True) + 1e-5
    )
    expected = normed.reshape(x.shape) * gn.weight.data.reshape(1, 4, 1, 1) + gn.bias.data.reshape(
        1, 4, 1, 1
    )
    np.testing.assert_allclose(gn(minifpn.Tensor(x)).numpy(), expected, rtol=1e-10)
    with pytest.raises(ValueError):
        nn.GroupNorm(3, 4)


# ---------------------------------------------------------------------------
# Modes, dtypes, devices
# ---------------------------------------------------------------------------
def test_train_eval_recursive_and_zero_grad_and_requires_grad():
    model = TinyResNet()
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())

    x = minifpn.Tensor(np.ones((2, 3, 4, 4), dtype=np.float32))
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    model.layer1.requires_grad_(False)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "fc.weight",
        "fc.bias",
    ]


def test_apply_visits_children_first():
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Sequential(nn.ReLU(), nn.Identity()))
    seen = []
    assert model.apply(lambda m: seen.append(type(m).__name__)) is model
    assert seen == ["Conv2d", "ReLU", "Identity", "Sequential", "Sequential"]


def test_to_float64_then_gradcheck_a_whole_model():
    minifpn.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.ConvTranspose2d(4, 3, 2, stride=2),
    )
    params = list(model.parameters())
    assert model.to(dtype=np.float64) is model
    assert list(model.parameters()) == params  # same Parameter objects
    assert all(p.dtype == np.float64 for p in params)
    x = randn(np.random.default_rng(0), 2, 2, 4, 4)
    assert model(x).shape == (2, 3, 8, 8)
    assert minifpn.gradcheck(model, (x,), wrt=[x, *params])


def test_to_casts_floats_only_and_rejects_integer_dtypes():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    model(minifpn.Tensor(np.ones((2, 1, 2, 2), dtype=np.float32))).sum().backward()
    model.to(np.float64)  # positional dtype, as torch
    assert model[0].weight.grad.dtype == np.float64  # grads follow their parameters
    assert model[1].running_var.dtype == np.float64
    assert model[1].num_batches_tracked.dtype == np.int64
    assert model.float()[0].weight.dtype == np.float32
    with pytest.raises(TypeError):
        model.to(dtype=np.int32)


def test_to_device_moves_parameters_and_buffers(device):
    xp = backend.cupy if device == "cuda" else np
    model = TinyResNet()
    params = {n: p for n, p in model.named_parameters()}
    model.to(device)
    for name, p in model.named_parameters():
        assert p is params[name] and isinstance(p.data, xp.ndarray) and p.device == device
    for _, buf in model.named_buffers():
        assert isinstance(buf, xp.ndarray)
    assert model.bn1.num_batches_tracked.dtype == np.int64
    x = minifpn.Tensor(np.ones((2, 3, 4, 4), dtype=np.float32), device=device)
    model(x).sum().backward()
    assert int(model.bn1.num_batches_tracked) == 1
    assert isinstance(model.fc.weight.grad, xp.ndarray)

    # A host state dict loads into the device model, in place.
    host_sd = {k: backend.to_numpy(v) for k, v in model.state_dict().items()}
    host_sd["fc.bias"] = np.array([5.0, 6.0])
    data = model.fc.bias.data
    model.load_state_dict(host_sd)
    assert model.fc.bias.data is data and isinstance(data, xp.ndarray)
    np.testing.assert_array_equal(backend.to_numpy(data), [5.0, 6.0])

    model.to("cpu")
    assert all(isinstance(p.data, np.ndarray) for p in model.parameters())


def test_deepcopy_is_independent():
    model = TinyResNet()
    clone = copy.deepcopy(model)
    assert list(clone.state_dict()) == TINY_RESNET_KEYS
    clone.fc.weight.data[...] = 0
    assert np.abs(model.fc.weight.data).sum() > 0


# ---------------------------------------------------------------------------
# Initialisation: torch's formulas
# ---------------------------------------------------------------------------
def test_fan_in_and_fan_out():
    assert init._calculate_fan_in_and_fan_out(np.empty((64, 32, 3, 5))) == (32 * 15, 64 * 15)
    assert init._calculate_fan_in_and_fan_out(nn.Parameter(np.empty((10, 7)))) == (7, 10)
    with pytest.raises(ValueError):
        init._calculate_fan_in_and_fan_out(np.empty(5))
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / 1.0001))
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)


def test_kaiming_normal_fan_out_std():
    w = nn.Parameter(np.empty((256, 128, 3, 3), dtype=np.float32))
    init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
    std = math.sqrt(2.0) / math.sqrt(256 * 9)  # torchvision's ResNet conv init
    assert np.std(w.data) == pytest.approx(std, rel=0.02)
    assert abs(np.mean(w.data)) < 0.02 * std
    init.kaiming_normal_(w)  # defaults: fan_in, leaky_relu with slope 0
    assert np.std(w.data) == pytest.approx(math.sqrt(2.0 / (128 * 9)), rel=0.02)


def test_kaiming_uniform_bound():
    w = np.empty((200, 100), dtype=np.float64)
    init.kaiming_uniform_(w, a=1)  # FPN's init: gain 1, bound √(3/fan_in)
    bound = math.sqrt(3.0 / 100)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert np.std(w) == pytest.approx(bound / math.sqrt(3), rel=0.02)


@pytest.mark.parametrize(
    "layer, fan_in",
    [
        (lambda: nn.Conv2d(64, 128, 3), 64 * 9),
        (lambda: nn.ConvTranspose2d(16, 32, 3), 32 * 9),  # torch uses weight.size(1) = out
        (lambda: nn.Linear(300, 50), 300),
    ],
)
def test_default_layer_init_bounds(layer, fan_in):
    minifpn.manual_seed(0)
    m = layer()
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform_(a=√5) = U(±1/√fan_in)
    w, b = host(m.weight), host(m.bias)
    assert w.dtype == np.float32 and b.dtype == np.float32
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.98 * bound
    assert np.std(w) == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert np.abs(b).max() <= bound


def test_init_is_seeded_and_device_independent(device):
    minifpn.manual_seed(7)
    a = nn.Conv2d(3, 5, 3)
    minifpn.manual_seed(7)
    b = nn.Conv2d(3, 5, 3).to(device)
    minifpn.manual_seed(7)
    w = backend.to_device(np.zeros((5, 3, 3, 3), dtype=np.float32), device)  # a raw array
    assert init.kaiming_uniform_(w, a=math.sqrt(5)) is w
    np.testing.assert_array_equal(host(a.weight), host(b.weight))
    np.testing.assert_array_equal(host(a.weight), host(w))


def test_simple_fills():
    w = np.empty((4, 4), dtype=np.float32)
    assert init.constant_(w, 3.5) is w and np.all(w == 3.5)
    init.zeros_(w)
    assert np.all(w == 0)
    init.ones_(w)
    assert np.all(w == 1)
    big = np.empty((400, 500))
    init.uniform_(big, -2.0, 3.0)
    assert big.min() >= -2.0 and big.max() < 3.0
    assert big.mean() == pytest.approx(0.5, abs=0.02)
    init.normal_(big, mean=1.0, std=0.01)
    assert big.mean() == pytest.approx(1.0, abs=1e-3)
    assert big.std() == pytest.approx(0.01, rel=0.02)


# ---------------------------------------------------------------------------
# Layers and containers
# ---------------------------------------------------------------------------
def test_repr_matches_torch():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        nn.Sequential(nn.GroupNorm(2, 8), nn.ConvTranspose2d(8, 4, 2, stride=2)),
        nn.Flatten(),
        nn.Linear(4, 2),
        nn.FrozenBatchNorm2d(2),
        nn.Identity(),
    )
    assert repr(model) == (
        "Sequential(\n"
        "  (0): Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)\n"
        "  (1): BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)\n"
        "  (2): ReLU(inplace=True)\n"
        "  (3): MaxPool2d(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False)\n"
        "  (4): Sequential(\n"
        "    (0): GroupNorm(2, 8, eps=1e-05, affine=True)\n"
        "    (1): ConvTranspose2d(8, 4, kernel_size=(2, 2), stride=(2, 2))\n"
        "  )\n"
        "  (5): Flatten(start_dim=1, end_dim=-1)\n"
        "  (6): Linear(in_features=4, out_features=2, bias=True)\n"
        "  (7): FrozenBatchNorm2d(2, eps=1e-05)\n"
        "  (8): Identity()\n"
        ")"
    )


def test_sequential_indexing_and_forward():
    a, b, c = nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)
    seq = nn.Sequential(a, b, c)
    assert len(seq) == 3 and list(seq) == [a, b, c]
    assert seq[0] is a and seq[-1] is c
    tail = seq[1:]
    assert isinstance(tail, nn.Sequential) and list(tail) == [b, c]
    assert [n for n, _ in tail.named_children()] == ["1", "2"]  # names kept, as torch
    with pytest.raises(IndexError):
        seq[3]
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    hidden = np.maximum(x @ host(a.weight).T + host(a.bias), 0)
    expected = hidden @ host(c.weight).T + host(c.bias)
    np.testing.assert_allclose(seq(minifpn.Tensor(x)).numpy(), expected, rtol=1e-5, atol=1e-6)
    seq.append(nn.Identity())
    assert [n for n, _ in seq.named_children()][-1] == "3"


def test_module_list_and_dict_register_their_members():
    layers = nn.ModuleList([nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 1, bias=False)])
    layers.append(nn.Linear(2, 2))
    assert len(layers) == 3 and isinstance(layers[-1], nn.Linear)
    assert [n for n, _ in layers.named_parameters()] == [
        "0.weight",
        "0.bias",
        "1.weight",
        "2.weight",
        "2.bias",
    ]
    heads = nn.ModuleDict({"cls": nn.Linear(2, 3)})
    heads["box"] = nn.Linear(2, 4)
    assert list(heads) == ["cls", "box"] and "box" in heads and len(heads) == 2
    assert list(heads.state_dict()) == ["cls.weight", "cls.bias", "box.weight", "box.bias"]


def test_max_pool_flatten_identity_against_numpy():
    x = np.arange(2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    x[0, 0, 0, 1] = 100.0
    out = nn.MaxPool2d(2)(minifpn.Tensor(x)).numpy()
    expected = x.reshape(2, 1, 2, 2, 2, 2).max(axis=(3, 5))
    np.testing.assert_array_equal(out, expected)
    assert nn.Flatten()(minifpn.Tensor(x)).shape == (2, 16)
    t = minifpn.Tensor(x)
    assert nn.Identity(3, foo=1)(t) is t


def test_conv_layers_match_numpy():
    rng = np.random.default_rng(8)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1).double()
    x = rng.standard_normal((1, 2, 5, 5))
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    w, b = conv.weight.data, conv.bias.data
    expected = np.zeros((1, 3, 3, 3))
    for i in range(3):
        for j in range(3):
            patch = padded[0, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3]
            expected[0, :, i, j] = (w * patch).sum(axis=(1, 2, 3)) + b
    np.testing.assert_allclose(conv(minifpn.Tensor(x)).numpy(), expected, rtol=1e-10)

    deconv = nn.ConvTranspose2d(2, 3, 2, stride=2).double()
    assert deconv.weight.shape == (2, 3, 2, 2)
    y = rng.standard_normal((1, 2, 2, 2))
    # Each input pixel paints weight[c_in] (C_out, 2, 2) scaled by its value.
    expected = np.einsum("nchw,cokl->nohkwl", y, deconv.weight.data).reshape(1, 3, 4, 4)
    expected += deconv.bias.data.reshape(1, 3, 1, 1)
    np.testing.assert_allclose(deconv(minifpn.Tensor(y)).numpy(), expected, rtol=1e-10)


def test_forward_hooks_see_inputs_and_outputs_and_can_be_removed():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    seen = []
    handle = model[0].register_forward_hook(
        lambda module, inputs, output: seen.append((module, inputs[0].shape, output.shape))
    )
    x = minifpn.Tensor(np.ones((4, 3), dtype=np.float32))
    model(x)
    assert seen == [(model[0], (4, 3), (4, 2))]
    handle.remove()
    model(x)
    assert len(seen) == 1


def test_a_forward_hook_may_replace_the_output():
    layer = nn.Linear(2, 2)
    with layer.register_forward_hook(lambda m, i, out: out * 0):
        assert np.all(layer(minifpn.Tensor(np.ones((1, 2), dtype=np.float32))).numpy() == 0)
    assert np.any(layer(minifpn.Tensor(np.ones((1, 2), dtype=np.float32))).numpy() != 0)
