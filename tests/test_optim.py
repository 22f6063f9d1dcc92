"""minifpn.optim: SGD against a NumPy re-implementation of PyTorch's rule,
parameter groups, resuming through minifpn.save/load, the warm-up schedule
at hand-computed iterations, and gradient clipping against numpy norms."""

import math

import numpy as np
import pytest

import minifpn
from minifpn import backend, nn, optim


def make_params(rng, shapes=((3, 4), (5,)), dtype=np.float64):
    return [nn.Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]


def reference_sgd(
    params, grads_per_step, lr, momentum=0.0, weight_decay=0.0, nesterov=False, dampening=0.0
):
    """torch.optim.SGD's documented algorithm, written out in NumPy."""
    params = [p.copy() for p in params]
    bufs = [None] * len(params)
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            d = g + weight_decay * params[i] if weight_decay else g
            if momentum:
                if bufs[i] is None:
                    bufs[i] = d.copy()
                else:
                    bufs[i] = momentum * bufs[i] + (1 - dampening) * d
                d = d + momentum * bufs[i] if nesterov else bufs[i]
            params[i] = params[i] - lr * d
    return params


def run_sgd(opt, params, grads_per_step):
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.copy()
        opt.step()


@pytest.mark.parametrize(
    "hyper",
    [
        dict(),
        dict(momentum=0.9),
        dict(momentum=0.9, weight_decay=1e-2),
        dict(momentum=0.8, dampening=0.3, weight_decay=0.1),
        dict(momentum=0.9, nesterov=True, weight_decay=1e-3),
    ],
    ids=["plain", "momentum", "momentum+wd", "dampening", "nesterov"],
)
def test_sgd_matches_torch_formula(hyper):
    rng = np.random.default_rng(0)
    params = make_params(rng)
    start = [p.data.copy() for p in params]
    grads = [[rng.standard_normal(p.shape) for p in params] for _ in range(5)]
    opt = optim.SGD(params, lr=0.05, **hyper)
    run_sgd(opt, params, grads)
    for p, expected in zip(params, reference_sgd(start, grads, 0.05, **hyper)):
        np.testing.assert_allclose(p.data, expected, rtol=1e-12, atol=1e-14)


def test_sgd_hand_computed_first_steps():
    p = nn.Parameter(np.array([1.0]))
    opt = optim.SGD([p], lr=0.1, momentum=0.5, weight_decay=0.2)
    p.grad = np.array([2.0])
    opt.step()  # d = 2 + 0.2·1 = 2.2; buf = 2.2; p = 1 − 0.22 = 0.78
    assert p.data[0] == pytest.approx(0.78)
    p.grad = np.array([1.0])
    opt.step()  # d = 1 + 0.156 = 1.156; buf = 1.1 + 1.156 = 2.256; p = 0.78 − 0.2256
    assert p.data[0] == pytest.approx(0.5544)
    assert opt.state[p]["momentum_buffer"][0] == pytest.approx(2.256)


def test_sgd_updates_in_place_skips_missing_grads_and_keeps_grads():
    rng = np.random.default_rng(1)
    a, b = make_params(rng)
    a_data, b_before = a.data, b.data.copy()
    opt = optim.SGD([a, b], lr=0.1, momentum=0.9, weight_decay=0.5)
    grad = rng.standard_normal(a.shape)
    a.grad = grad.copy()
    opt.step()
    assert a.data is a_data  # updated in place
    np.testing.assert_array_equal(a.grad, grad)  # weight decay did not touch .grad
    np.testing.assert_array_equal(b.data, b_before)  # no grad: unchanged, no state
    assert b not in opt.state
    opt.zero_grad()
    assert a.grad is None


def test_sgd_float32_stays_float32():
    p = nn.Parameter(np.ones(3, dtype=np.float32))
    opt = optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=1e-4)
    p.grad = np.ones(3, dtype=np.float32)
    opt.step()
    assert p.dtype == np.float32 and opt.state[p]["momentum_buffer"].dtype == np.float32


def test_param_groups_have_their_own_hyper_parameters():
    rng = np.random.default_rng(2)
    weights, bias = make_params(rng)
    start_w, start_b = weights.data.copy(), bias.data.copy()
    opt = optim.SGD(
        [{"params": [weights]}, {"params": [bias], "lr": 0.5, "weight_decay": 0.0}],
        lr=0.1,
        momentum=0.9,
        weight_decay=0.01,
    )
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["weight_decay"] == 0.01
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[1]["momentum"] == 0.9
    grads = [
        [rng.standard_normal(weights.shape), rng.standard_normal(bias.shape)] for _ in range(3)
    ]
    run_sgd(opt, [weights, bias], grads)
    (expected_w,) = reference_sgd([start_w], [[g[0]] for g in grads], 0.1, 0.9, 0.01)
    (expected_b,) = reference_sgd([start_b], [[g[1]] for g in grads], 0.5, 0.9, 0.0)
    np.testing.assert_allclose(weights.data, expected_w, rtol=1e-12)
    np.testing.assert_allclose(bias.data, expected_b, rtol=1e-12)


def test_invalid_arguments():
    p = nn.Parameter(np.ones(2))
    with pytest.raises(ValueError):
        optim.SGD([p], lr=-1.0)
    with pytest.raises(ValueError):
        optim.SGD([p], lr=0.1, nesterov=True)  # needs momentum
    with pytest.raises(ValueError):
        optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1)  # p in two groups
    with pytest.raises(ValueError):
        optim.SGD([], lr=0.1)


def test_sgd_on_a_module_accepts_a_generator():
    model = nn.Linear(3, 2)
    opt = optim.SGD(model.parameters(), lr=0.1)
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in model.parameters()]


def test_state_dict_round_trip_through_save_load_continues_identically(tmp_path):
    rng = np.random.default_rng(3)
    params = make_params(rng)
    opt = optim.SGD(
        [{"params": params[:1]}, {"params": params[1:], "lr": 0.3}],
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-3,
        nesterov=True,
    )
    sched = optim.WarmupMultiStepLR(opt, milestones=[4], warmup_iters=3)
    grads = [[rng.standard_normal(p.shape) for p in params] for _ in range(6)]

    def train(opt, sched, params, steps):
        for step_grads in steps:
            run_sgd(opt, params, [step_grads])
            sched.step()

    train(opt, sched, params, grads[:3])
    path = tmp_path / "ckpt.npz"
    minifpn.save(
        {
            "params": [p.data for p in params],
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
        },
        path,
    )
    ckpt = minifpn.load(path)

    resumed = [nn.Parameter(np.array(a)) for a in ckpt["params"]]
    opt2 = optim.SGD(
        [{"params": resumed[:1]}, {"params": resumed[1:]}], lr=123.0, momentum=0.0
    )  # wrong hyper-parameters on purpose: the state dict restores them
    opt2.load_state_dict(ckpt["optimizer"])
    sched2 = optim.WarmupMultiStepLR(opt2, milestones=[99], warmup_iters=0)
    sched2.load_state_dict(ckpt["scheduler"])
    assert opt2.param_groups[1]["lr"] == opt.param_groups[1]["lr"]
    assert opt2.param_groups[0]["nesterov"] is True

    train(opt, sched, params, grads[3:])
    train(opt2, sched2, resumed, grads[3:])
    for p, q in zip(params, resumed):
        np.testing.assert_array_equal(p.data, q.data)
    assert sched.get_last_lr() == sched2.get_last_lr()
    for p, q in zip(params, resumed):  # loaded buffers are copies, not the checkpoint's arrays
        assert opt2.state[q]["momentum_buffer"] is not opt.state[p]["momentum_buffer"]


def test_load_state_dict_rejects_a_different_layout():
    rng = np.random.default_rng(4)
    params = make_params(rng)
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError):
        optim.SGD(params[:1], lr=0.1).load_state_dict(opt.state_dict())
    with pytest.raises(ValueError):
        optim.SGD([{"params": params[:1]}, {"params": params[1:]}], lr=0.1).load_state_dict(
            opt.state_dict()
        )


# ---------------------------------------------------------------------------
# WarmupMultiStepLR
# ---------------------------------------------------------------------------
def lrs_over(sched, iterations):
    """The rate in effect at each iteration 0..iterations-1 (one step() per iteration)."""
    out = []
    for _ in range(iterations):
        out.append(sched.optimizer.param_groups[0]["lr"])
        sched.step()
    return out


def test_warmup_multistep_linear_hand_computed():
    opt = optim.SGD([nn.Parameter(np.ones(1))], lr=0.02)
    sched = optim.WarmupMultiStepLR(opt, milestones=[1000, 1500])  # warmup 500, factor 1/1000
    lrs = lrs_over(sched, 1600)
    assert lrs[0] == pytest.approx(0.02 * 0.001)
    assert lrs[250] == pytest.approx(0.02 * (0.001 * 0.5 + 0.5))  # 0.01001
    assert lrs[499] == pytest.approx(0.02 * (0.001 * (1 / 500) + 499 / 500))
    assert lrs[500] == pytest.approx(0.02)
    assert lrs[999] == pytest.approx(0.02)
    assert lrs[1000] == pytest.approx(0.002)
    assert lrs[1499] == pytest.approx(0.002)
    assert lrs[1500] == pytest.approx(0.0002)
    assert sched.last_epoch == 1600
    assert opt.param_groups[0]["initial_lr"] == 0.02


def test_warmup_constant_and_several_groups():
    a, b = nn.Parameter(np.ones(1)), nn.Parameter(np.ones(1))
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 1.0}], lr=0.1)
    sched = optim.WarmupMultiStepLR(
        opt, milestones=[5], gamma=0.5, warmup_iters=3, warmup_factor=0.25, warmup_method="constant"
    )
    expected = {0: [0.025, 0.25], 2: [0.025, 0.25], 3: [0.1, 1.0], 5: [0.05, 0.5]}
    for t in range(6):
        if t in expected:
            assert sched.get_last_lr() == pytest.approx(expected[t])
            assert [g["lr"] for g in opt.param_groups] == pytest.approx(expected[t])
        sched.step()


def test_warmup_schedule_validates_arguments():
    opt = optim.SGD([nn.Parameter(np.ones(1))], lr=0.1)
    with pytest.raises(ValueError):
        optim.WarmupMultiStepLR(opt, milestones=[10, 5])
    with pytest.raises(ValueError):
        optim.WarmupMultiStepLR(opt, milestones=[10], warmup_method="cosine")


# ---------------------------------------------------------------------------
# clip_grad_norm_
# ---------------------------------------------------------------------------
def _params_with_grads(grads):
    params = []
    for g in grads:
        p = nn.Parameter(np.zeros(g.shape, dtype=g.dtype))
        p.grad = g.copy()
        params.append(p)
    return params


def test_clip_grad_norm_scales_to_max_norm():
    rng = np.random.default_rng(5)
    grads = [rng.standard_normal(s) * 10 for s in [(4, 3), (7,), (2, 2, 2)]]
    params = _params_with_grads(grads)
    params.append(nn.Parameter(np.ones(3)))  # no grad: ignored
    total = np.linalg.norm(np.concatenate([g.ravel() for g in grads]))

    returned = optim.clip_grad_norm_(params, max_norm=1.0)

    assert isinstance(returned, float) and returned == pytest.approx(total, rel=1e-12)
    coef = 1.0 / (total + 1e-6)
    for p, g in zip(params, grads):
        np.testing.assert_allclose(p.grad, g * coef, rtol=1e-12)
    clipped = np.linalg.norm(np.concatenate([p.grad.ravel() for p in params[:3]]))
    assert clipped == pytest.approx(1.0, rel=1e-5)


def test_clip_grad_norm_leaves_small_grads_untouched():
    rng = np.random.default_rng(6)
    grads = [rng.standard_normal((3, 3)).astype(np.float32) * 0.01 for _ in range(2)]
    params = _params_with_grads(grads)
    arrays = [p.grad for p in params]
    total = np.linalg.norm(np.concatenate([g.ravel() for g in grads]).astype(np.float64))
    assert nn.clip_grad_norm_(params, max_norm=5.0) == pytest.approx(total, rel=1e-5)
    for p, g, array in zip(params, grads, arrays):
        assert p.grad is array
        np.testing.assert_array_equal(p.grad, g)  # bit for bit


def test_clip_grad_norm_inf_and_p1_norms():
    grads = [np.array([3.0, -4.0]), np.array([[1.0], [-6.0]])]
    params = _params_with_grads(grads)
    assert optim.clip_grad_norm_(params, max_norm=3.0, norm_type=math.inf) == 6.0
    np.testing.assert_allclose(params[1].grad, grads[1] * 3.0 / (6.0 + 1e-6))
    params = _params_with_grads(grads)
    assert optim.clip_grad_norm_(params, max_norm=100.0, norm_type=1) == pytest.approx(14.0)
    assert optim.clip_grad_norm_(nn.Parameter(np.ones(2)), 1.0) == 0.0  # single tensor, no grad


def test_clip_grad_norm_nonfinite():
    params = _params_with_grads([np.array([np.inf, 1.0])])
    with pytest.raises(RuntimeError, match="non-finite"):
        optim.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)


def test_clip_grad_norm_on_device(device):
    rng = np.random.default_rng(7)
    grads = [rng.standard_normal((5, 5)) * 3 for _ in range(3)]
    params = _params_with_grads(grads)
    for p in params:
        p.data = backend.to_device(p.data, device)
        p.grad = backend.to_device(p.grad, device)
    total = np.linalg.norm(np.concatenate([g.ravel() for g in grads]))
    assert optim.clip_grad_norm_(params, 2.0) == pytest.approx(total, rel=1e-12)
    for p, g in zip(params, grads):
        np.testing.assert_allclose(backend.to_numpy(p.grad), g * 2.0 / (total + 1e-6), rtol=1e-12)
