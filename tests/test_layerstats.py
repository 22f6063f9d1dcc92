"""Statistics per layer (``minifpn.tools.layerstats``), against plain loops over known values.

The reference never calls the library: a 1×1 convolution's output is
``b[o] + Σ_c W[o, c] · x[n, c, i, j]``, written as loops over every position,
and mean / std / min / max / zero and positive counts are loops over the
values (the std is the population std, Σ(v − mean)² / n).
"""

import math

import numpy as np
import pytest

import minifpn
from minifpn import backend, nn
from minifpn.functional import relu
from minifpn.tools.layerstats import (
    DEAD_FRACTION,
    EXPLODING_ACTIVATION,
    EXPLODING_WEIGHT,
    ActivationStats,
    activation_stats,
    format_table,
    weight_stats,
)
from tests import cupy_standin


def loop_stats(values) -> dict:
    """mean, std, min, max and the zero / positive fractions of a list of floats, by loops."""
    values = [float(v) for v in values]
    n, total, low, high, zeros, positive = len(values), 0.0, math.inf, -math.inf, 0, 0
    for v in values:
        total += v
        low, high = min(low, v), max(high, v)
        zeros += v == 0.0
        positive += v > 0.0
    mean = total / n
    spread = 0.0
    for v in values:
        spread += (v - mean) ** 2
    return dict(mean=mean, std=math.sqrt(spread / n), min=low, max=high, zeros=zeros / n,
                positive=positive / n)


def loop_conv1x1(x, weight, bias) -> list:
    """Every value of a 1×1 convolution of ``x`` (N, C, H, W), by loops."""
    n_images, channels, height, width = x.shape
    out = []
    for n in range(n_images):
        for o in range(weight.shape[0]):
            for i in range(height):
                for j in range(width):
                    value = float(bias[o])
                    for c in range(channels):
                        value += float(weight[o, c, 0, 0]) * float(x[n, c, i, j])
                    out.append(value)
    return out


def assert_row(row, reference):
    for key, value in reference.items():
        assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (row["name"], key)


class Net(nn.Module):
    """A dead functional ReLU, a layer no ReLU follows, a healthy ReLU module, a shared layer."""

    def __init__(self):
        super().__init__()
        self.dying = nn.Conv2d(2, 3, 1)  # then relu(): killed below by its bias
        self.logits = nn.Conv2d(2, 1, 1)  # no ReLU after it, called twice
        self.fc = nn.Linear(2, 4)
        self.act = nn.ReLU()

    def forward(self, x):  # x: (N, 2, H, W)
        hidden = relu(self.dying(x))
        logits = self.logits(x) + self.logits(x * 2.0)
        pooled = x.mean(axis=(2, 3))  # (N, 2)
        return hidden.sum() + logits.sum() + self.act(self.fc(pooled)).sum()


def known_net(rng):
    net = Net()
    net.dying.weight.data[...] = rng.uniform(-1, 1, (3, 2, 1, 1))
    net.dying.bias.data[...] = -100.0  # every pre-activation ≤ −100 + |W x| < 0: a dead ReLU
    net.logits.weight.data[...] = rng.uniform(-1, 1, (1, 2, 1, 1))
    net.logits.bias.data[...] = -50.0  # all negative too, but no ReLU follows: not dead
    net.fc.weight.data[...] = rng.uniform(-1, 1, (4, 2))
    net.fc.bias.data[...] = [0.5, -0.5, 0.25, 0.0]
    return net


def test_activation_rows_match_loops_and_flag_only_the_dead_relu(device, rng):
    net = known_net(rng)
    x = rng.uniform(-1, 1, (2, 2, 3, 4)).astype(np.float32)
    w = {name: p.data.copy() for name, p in net.named_parameters()}
    rows = {row["name"]: row for row in activation_stats(net.to(device),
                                                         minifpn.Tensor(x, device=device))}
    assert list(rows) == ["dying", "logits", "fc", "act"]

    dying = loop_conv1x1(x, w["dying.weight"], w["dying.bias"])
    assert_row(rows["dying"], loop_stats(dying))
    assert rows["dying"]["feeds_relu"] and rows["dying"]["positive"] == 0.0
    assert rows["dying"]["flag"] == "dead"

    logits = (loop_conv1x1(x, w["logits.weight"], w["logits.bias"])
              + loop_conv1x1(2 * x, w["logits.weight"], w["logits.bias"]))
    assert rows["logits"]["calls"] == 2
    assert_row(rows["logits"], loop_stats(logits))
    assert not rows["logits"]["feeds_relu"] and rows["logits"]["flag"] == ""

    pooled = [[float(np.mean(x[n, c])) for c in range(2)] for n in range(2)]
    fc = [float(w["fc.bias"][o]) + sum(float(w["fc.weight"][o, c]) * pooled[n][c] for c in range(2))
          for n in range(2) for o in range(4)]
    assert_row(rows["fc"], loop_stats(fc))
    assert rows["fc"]["feeds_relu"]  # nn.ReLU calls relu() on it: found in the graph too
    assert_row(rows["act"], loop_stats([max(v, 0.0) for v in fc]))
    assert rows["act"]["kind"] == "ReLU" and rows["act"]["flag"] == ""
    assert len(net.dying._forward_hooks) == 0  # the hooks are gone afterwards


def test_dead_threshold_constant_exploding_and_non_finite(rng):
    net = known_net(rng)
    x = minifpn.Tensor(np.full((1, 2, 10, 10), -1.0, np.float32))
    net.dying.weight.data[...] = 0.0
    net.dying.bias.data[...] = -1.0
    rows = {r["name"]: r for r in activation_stats(net, x)}
    assert rows["dying"]["std"] == 0.0 and rows["dying"]["flag"] == "dead"  # constant: dead
    # Channel 0 becomes 10·x − 1: positive where x = +1. Of 300 values (3 channels × 100),
    # 1 positive is 99.7 % zeros after the ReLU (dead); 4 positive is 98.7 % (alive).
    net.dying.weight.data[0, 0, 0, 0] = 10.0
    for positives, dead in [(1, True), (3, True), (4, False)]:
        x.data[...] = -1.0
        x.data[0, 0].reshape(-1)[:positives] = 1.0
        row = {r["name"]: r for r in activation_stats(net, x)}["dying"]
        assert row["positive"] == pytest.approx(positives / 300)
        assert row["flag"] == ("dead" if dead else ""), positives
        assert (1 - positives / 300 >= DEAD_FRACTION) == dead
    # ... exploding beyond EXPLODING_ACTIVATION, non-finite with a NaN.
    net.logits.bias.data[...] = 2 * EXPLODING_ACTIVATION
    assert {r["name"]: r for r in activation_stats(net, x)}["logits"]["flag"] == "exploding"
    net.fc.bias.data[0] = np.nan
    flags = {r["name"]: r["flag"] for r in activation_stats(net, x)}
    assert flags["fc"] == "non-finite" and flags["act"] == "non-finite"


def test_without_gradients_only_relu_modules_are_known():
    net = known_net(np.random.default_rng(0))
    x = minifpn.Tensor(np.ones((1, 2, 2, 2), np.float32))
    with minifpn.no_grad():
        rows = {r["name"]: r for r in activation_stats(net, x)}
    assert not any(r["feeds_relu"] for r in rows.values())
    assert rows["dying"]["flag"] == ""  # all negative, but nothing says a ReLU follows
    fc = net.fc(minifpn.Tensor(np.ones((1, 2), np.float32))).data.ravel()  # the mean of ones
    assert rows["act"]["zeros"] == pytest.approx(loop_stats([max(v, 0) for v in fc])["zeros"])


def test_weight_rows_match_loops_and_flags(device, rng):
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2), nn.Linear(2, 1))
    net[0].weight.data[...] = rng.uniform(-1, 1, (2, 3))
    net[0].bias.data[...] = 0.0  # a zero bias: constant by design, not flagged
    net[1].weight.data[...] = 0.5  # a kernel with one value: dead
    net[2].weight.data[...] = [[1.0, 2 * EXPLODING_WEIGHT]]
    net[2].bias.data[...] = np.nan
    reference = {name: p.data.copy() for name, p in net.named_parameters()}
    rows = weight_stats(net.to(device))
    assert [r["name"] for r in rows] == list(reference)
    for row in rows:
        values = reference[row["name"]].ravel()
        assert row["shape"] == reference[row["name"]].shape
        if row["name"] != "2.bias":
            reference_row = loop_stats(values)
            assert_row(row, {k: reference_row[k] for k in ("mean", "std", "min", "max")})
    flags = {r["name"]: r["flag"] for r in rows}
    assert flags == {"0.weight": "", "0.bias": "", "1.weight": "dead", "1.bias": "",
                     "2.weight": "exploding", "2.bias": "non-finite"}
    assert [r["name"] for r in weight_stats(net, prefix="1.")] == ["1.weight", "1.bias"]


@pytest.fixture
def standin():
    previous = backend.set_cuda_module(cupy_standin, cupy_standin.cupyx)
    yield
    backend.set_cuda_module(*previous)


def test_one_copy_to_the_host_per_table(standin, rng):
    net = known_net(rng).to("cuda")
    x = minifpn.Tensor(rng.uniform(-1, 1, (2, 2, 3, 4)).astype(np.float32), device="cuda")
    with cupy_standin.counting() as traffic:
        weight_stats(net)
    assert traffic.d2h == 1 and traffic.syncs == 1, traffic.log
    with ActivationStats(net) as recorder:
        outputs = net(x)
        net(x)  # a second forward adds to the same rows
    with cupy_standin.counting() as traffic:
        rows = recorder.rows(outputs)
    assert traffic.d2h == 1 and traffic.syncs == 1, traffic.log
    assert rows[1]["calls"] == 4 and rows[0]["calls"] == 2


def test_recorder_prefix_reset_and_the_table(rng):
    net = known_net(rng)
    x = minifpn.Tensor(rng.uniform(-1, 1, (1, 2, 3, 3)).astype(np.float32))
    with ActivationStats(net, prefix="log") as recorder:
        net(x)
        assert [r["name"] for r in recorder.rows()] == ["logits"]
        # The recorder keeps no graph alive: the outputs it saw are gone with the forward's result.
        assert all(ref() is None for _, ref in recorder._outputs.values())
        recorder.reset()
        assert recorder.rows() == []
    rows = activation_stats(net, x)
    table = format_table(rows)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["name", "layer", "mean"] and len(lines) == 2 + len(rows)
    assert "dead" in lines[2] and lines[2].startswith("dying")
    flagged = format_table(rows, only_flagged=True).splitlines()
    assert len(flagged) == 3 and flagged[2].startswith("dying")
    assert format_table(rows, limit=2).splitlines()[-1] == "… 2 more rows"
    assert "shape" in format_table(weight_stats(net)).splitlines()[0]
