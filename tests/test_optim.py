"""Tests for minires.optim: SGD against hand-computed steps and against
torch.optim.SGD, dtype discipline, param groups, checkpoints, LR schedules."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import minires as mr
from minires.optim import (
    SGD,
    ConstantWarmup,
    CosineAnnealingLR,
    LinearWarmup,
    MultiStepLR,
    StepLR,
)


class Param:
    """The smallest thing SGD accepts: .data and .grad."""

    def __init__(self, data, grad=None):
        self.data = np.asarray(data)
        self.grad = None if grad is None else np.asarray(grad)


def make_params(rng, shapes, dtype=np.float64):
    return [Param(rng.standard_normal(s).astype(dtype)) for s in shapes]


# --------------------------------------------------------------------------- #
# SGD: the update rule, by hand
# --------------------------------------------------------------------------- #


def test_plain_sgd_step():
    p = Param([1.0, 2.0], grad=[0.5, -1.0])
    SGD([p], lr=0.1).step()
    np.testing.assert_allclose(p.data, [1.0 - 0.05, 2.0 + 0.1], rtol=0, atol=1e-15)


def test_momentum_two_steps():
    p = Param([1.0], grad=[2.0])
    opt = SGD([p], lr=0.1, momentum=0.9)
    opt.step()  # b = g = 2      -> p = 1 - 0.2 = 0.8
    assert p.data[0] == pytest.approx(0.8, abs=1e-15)
    p.grad = np.array([1.0])
    opt.step()  # b = 0.9*2 + 1 = 2.8 -> p = 0.8 - 0.28 = 0.52
    assert p.data[0] == pytest.approx(0.52, abs=1e-15)
    assert opt.state[0]["momentum_buffer"][0] == pytest.approx(2.8, abs=1e-15)


def test_nesterov_weight_decay_dampening_by_hand():
    p = Param([1.0], grad=[2.0])
    opt = SGD([p], lr=0.1, momentum=0.5, weight_decay=0.1, nesterov=True)
    opt.step()  # g = 2 + 0.1*1 = 2.1; b = 2.1; g = 2.1 + 0.5*2.1 = 3.15; p = 1 - 0.315
    assert p.data[0] == pytest.approx(0.685, abs=1e-15)
    q = Param([1.0], grad=[2.0])
    opt = SGD([q], lr=1.0, momentum=0.5, dampening=0.5)
    opt.step()  # first step: b = g (no dampening) = 2 -> q = -1
    q.grad = np.array([2.0])
    opt.step()  # b = 0.5*2 + 0.5*2 = 2 -> q = -3
    assert q.data[0] == pytest.approx(-3.0, abs=1e-15)


def test_nesterov_second_step_by_hand():
    # On the first step the buffer equals the gradient, so g + m*buf cannot be
    # told from g + m*g or (1 + m)*buf; the second step can.
    p = Param([1.0], grad=[2.0])
    opt = SGD([p], lr=0.1, momentum=0.5, weight_decay=0.1, nesterov=True)
    opt.step()  # d = 2 + 0.1*1 = 2.1; b = 2.1; p = 1 - 0.1*(2.1 + 0.5*2.1) = 0.685
    p.grad = np.array([1.0])
    opt.step()  # d = 1 + 0.1*0.685 = 1.0685; b = 0.5*2.1 + 1.0685 = 2.1185
    # p = 0.685 - 0.1*(1.0685 + 0.5*2.1185) = 0.685 - 0.212775
    assert p.data[0] == pytest.approx(0.472225, abs=1e-15)
    assert opt.state[0]["momentum_buffer"][0] == pytest.approx(2.1185, abs=1e-15)


def _nesterov_by_hand(p0, grads, lr, m, wd):
    """Every iterate of Nesterov SGD (dampening 0), written out."""
    p, buf, out = p0.copy(), None, []
    for g in grads:
        d = g + wd * p
        buf = d.copy() if buf is None else m * buf + d
        p = p - lr * (d + m * buf)
        out.append(p)
    return out


def test_nesterov_several_steps_match_the_formula_and_torch(rng):
    lr, m, wd = 0.05, 0.9, 1e-2
    p0 = rng.standard_normal(6)
    grads = [rng.standard_normal(6) for _ in range(6)]
    p = Param(p0.copy())
    opt = SGD([p], lr=lr, momentum=m, weight_decay=wd, nesterov=True, dampening=0.0)
    ours = []
    for g in grads:
        p.grad = g.copy()
        opt.step()
        ours.append(p.data.copy())
    for k, (a, b) in enumerate(zip(ours, _nesterov_by_hand(p0, grads, lr, m, wd))):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15, err_msg=f"step {k + 1}")

    torch = pytest.importorskip("torch")
    t = torch.tensor(p0.copy(), requires_grad=True)
    topt = torch.optim.SGD([t], lr=lr, momentum=m, weight_decay=wd, nesterov=True, dampening=0)
    for k, g in enumerate(grads):
        t.grad = torch.tensor(g.copy())
        topt.step()
        np.testing.assert_allclose(
            ours[k], t.detach().numpy(), rtol=1e-13, atol=1e-15, err_msg=f"step {k + 1}"
        )


def test_update_is_in_place_and_grad_untouched():
    p = Param(np.ones(3), grad=np.full(3, 2.0))
    alias = p.data
    grad_before = p.grad.copy()
    SGD([p], lr=0.5, momentum=0.9, weight_decay=0.1).step()
    assert p.data is alias
    np.testing.assert_array_equal(alias, np.full(3, 1.0 - 0.5 * 2.1))
    np.testing.assert_array_equal(p.grad, grad_before)


def test_momentum_buffer_does_not_alias_grad():
    p = Param(np.zeros(2), grad=np.ones(2))
    opt = SGD([p], lr=1.0, momentum=0.9)
    opt.step()
    p.grad[...] = 100.0  # a caller reusing its grad array must not change the buffer
    np.testing.assert_array_equal(opt.state[0]["momentum_buffer"], [1.0, 1.0])


def test_none_grad_is_skipped_and_zero_grad():
    a, b = Param([1.0], grad=[1.0]), Param([5.0])
    opt = SGD([a, b], lr=1.0, momentum=0.9)
    opt.step()
    assert a.data[0] == 0.0 and b.data[0] == 5.0
    assert 1 not in opt.state
    opt.zero_grad()
    assert a.grad is None and b.grad is None
    a.grad = np.array([3.0])
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(a.grad, [0.0])


# --------------------------------------------------------------------------- #
# dtype discipline (NumPy 2, NEP 50)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("lr", [0.1, np.float64(0.1), np.float32(0.1)])
def test_float32_stays_float32(lr):
    rng = np.random.default_rng(0)
    data = rng.standard_normal(1000).astype(np.float32)
    grads = [rng.standard_normal(1000).astype(np.float32) for _ in range(3)]
    p = Param(data.copy())
    opt = SGD([p], lr=lr, momentum=np.float64(0.9), weight_decay=np.float64(1e-4))
    for g in grads:
        p.grad = g
        opt.step()
    assert p.data.dtype == np.float32
    assert opt.state[0]["momentum_buffer"].dtype == np.float32
    # The same three steps in pure float32 arithmetic, bit for bit. Had any step
    # gone through float64 (np.float64(0.1) * float32 array does, in NumPy 2),
    # many of the 1000 entries would round differently.
    f = np.float32
    ref, buf = data.copy(), None
    for g in grads:
        d = g + f(1e-4) * ref
        buf = d.copy() if buf is None else buf * f(0.9) + f(1.0) * d
        ref = ref - f(0.1) * buf
    np.testing.assert_array_equal(p.data, ref)


def test_promotion_would_be_detected():
    """The bit-exact comparison above can fail: a float64 step differs."""
    rng = np.random.default_rng(0)
    data = rng.standard_normal(1000).astype(np.float32)
    g = rng.standard_normal(1000).astype(np.float32)
    via64 = (data - np.float64(0.1) * g).astype(np.float32)
    pure32 = data - np.float32(0.1) * g
    assert (via64 != pure32).any()


def test_grad_dtype_or_shape_mismatch_raises():
    p = Param(np.zeros(3, np.float32), grad=np.zeros(3, np.float64))
    with pytest.raises(ValueError, match="float32.*float64"):
        SGD([p], lr=0.1).step()
    p.grad = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="shape"):
        SGD([p], lr=0.1).step()


# --------------------------------------------------------------------------- #
# Param groups and validation
# --------------------------------------------------------------------------- #


def test_param_groups_override_defaults():
    w = Param([1.0], grad=[0.0])
    bn = Param([1.0], grad=[0.0])
    opt = SGD(
        [{"params": [w]}, {"params": [bn], "weight_decay": 0.0, "lr": 0.5}],
        lr=0.1,
        weight_decay=0.5,
    )
    assert opt.param_groups[0]["weight_decay"] == 0.5
    assert opt.param_groups[1]["weight_decay"] == 0.0
    opt.step()
    assert w.data[0] == pytest.approx(1.0 - 0.1 * 0.5)  # decayed
    assert bn.data[0] == 1.0  # not decayed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -0.1}, r"lr must be a number >= 0, got -0\.1"),
        ({"lr": 0.1, "momentum": -0.5}, r"momentum must be a number >= 0, got -0\.5"),
        ({"lr": 0.1, "weight_decay": -1e-4}, r"weight_decay must be .* got -0\.0001"),
        ({"lr": 0.1, "nesterov": True}, r"nesterov=True needs momentum > 0.*momentum=0\.0"),
        (
            {"lr": 0.1, "nesterov": True, "momentum": 0.9, "dampening": 0.1},
            r"dampening == 0.*dampening=0\.1",
        ),
        ({"lr": "0.1"}, r"lr must be a number"),
    ],
)
def test_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SGD([Param([1.0])], **kwargs)


def test_bad_params():
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match=r"\.data and \.grad.*ndarray"):
        SGD([np.zeros(3)], lr=0.1)
    p = Param([1.0])
    with pytest.raises(ValueError, match="more than once"):
        SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        SGD([p, p], lr=0.1)
    with pytest.raises(TypeError, match="'params' key"):
        SGD([{"weight_decay": 0.0}], lr=0.1)
    with pytest.raises(ValueError, match="lr must be"):
        SGD([{"params": [p], "lr": -1.0}], lr=0.1)


# --------------------------------------------------------------------------- #
# Checkpoints
# --------------------------------------------------------------------------- #


def run_steps(opt, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.copy()
        opt.step()


def test_state_dict_resume_is_bit_identical():
    rng = np.random.default_rng(1)
    shapes = [(3, 4), (5,)]
    start = make_params(rng, shapes, np.float32)
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(6)]
    kw = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3, "nesterov": True}

    straight = [Param(p.data.copy()) for p in start]
    opt = SGD(straight, **kw)
    run_steps(opt, straight, grads)

    first = [Param(p.data.copy()) for p in start]
    opt1 = SGD(first, **kw)
    run_steps(opt1, first, grads[:3])
    saved = opt1.state_dict()
    saved_values = [p.data.copy() for p in first]
    run_steps(opt1, first, grads[3:4])  # later steps must not change `saved`
    # A fresh process: new parameter objects holding the checkpointed values,
    # an optimizer made with other hyperparameters, then load. The keys are
    # strings, as after a round trip through a file format.
    resumed = [Param(v) for v in saved_values]
    opt_r = SGD(resumed, lr=0.5)
    opt_r.load_state_dict(
        {
            "state": {str(k): v for k, v in saved["state"].items()},
            "param_groups": saved["param_groups"],
        }
    )
    assert opt_r.param_groups[0]["lr"] == 0.1 and opt_r.param_groups[0]["nesterov"] is True
    run_steps(opt_r, resumed, grads[3:])
    for a, b in zip(resumed, straight):
        np.testing.assert_array_equal(a.data, b.data)
        assert a.data.dtype == np.float32
    assert opt_r.state[0]["momentum_buffer"].dtype == np.float32


def test_state_dict_layout():
    a, b = Param(np.zeros(2), grad=np.ones(2)), Param(np.zeros(3), grad=np.ones(3))
    opt = SGD([{"params": [a]}, {"params": [b], "weight_decay": 0.0}], lr=0.1, momentum=0.9)
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["params"] == [0]
    assert sd["param_groups"][1]["params"] == [1]
    assert sd["param_groups"][1]["weight_decay"] == 0.0
    assert set(sd["state"]) == {0, 1}
    np.testing.assert_array_equal(sd["state"][1]["momentum_buffer"], np.ones(3))


def test_loaded_buffers_are_new_arrays_of_the_param_dtype():
    p = Param(np.zeros(3, np.float32), grad=np.ones(3, np.float32))
    saved = {"momentum_buffer": np.array([1.0, 2.0, 3.0])}  # float64, e.g. from a file
    groups = SGD([p], lr=0.1, momentum=0.9).state_dict()["param_groups"]
    sd = {"state": {0: saved}, "param_groups": groups}
    opt = SGD([p], lr=0.1, momentum=0.9)
    opt.load_state_dict(sd)
    buf = opt.state[0]["momentum_buffer"]
    assert buf.dtype == np.float32 and buf is not saved["momentum_buffer"]
    opt.step()  # b = 0.9 * [1, 2, 3] + 1
    np.testing.assert_array_equal(saved["momentum_buffer"], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(p.data, -0.1 * np.array([1.9, 2.8, 3.7]), rtol=1e-6)
    assert p.data.dtype == np.float32


def test_load_state_dict_mismatch():
    a, b = Param(np.zeros(2)), Param(np.zeros(3))
    sd = SGD([a, b], lr=0.1).state_dict()
    with pytest.raises(ValueError, match="state has 1 param groups, this optimizer has 2"):
        SGD([{"params": [a]}, {"params": [b]}], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="1 parameters here but 2"):
        SGD([Param(np.zeros(2))], lr=0.1).load_state_dict(sd)
    bad = {"state": {0: {"momentum_buffer": np.zeros(5)}}, "param_groups": sd["param_groups"]}
    with pytest.raises(ValueError, match=r"shape \(5,\).*shape \(2,\)"):
        SGD([a, b], lr=0.1).load_state_dict(bad)


# --------------------------------------------------------------------------- #
# Against PyTorch
# --------------------------------------------------------------------------- #

TORCH_CONFIGS = [
    {"lr": 0.1},
    {"lr": 0.05, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
    {"lr": 0.2, "momentum": 0.5, "dampening": 0.3, "weight_decay": 1e-3},
]


@pytest.mark.parametrize("config", TORCH_CONFIGS)
def test_matches_torch_sgd(config):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    shapes = [(4, 3, 3, 3), (4,), (10, 4)]
    ours = make_params(rng, shapes)
    theirs = [torch.tensor(p.data.copy(), requires_grad=True) for p in ours]
    # Two groups, as a user turning weight decay off for biases would make.
    opt = SGD([{"params": ours[:2]}, {"params": ours[2:], "weight_decay": 0.0}], **config)
    topt = torch.optim.SGD(
        [{"params": theirs[:2]}, {"params": theirs[2:], "weight_decay": 0.0}], **config
    )
    for _ in range(5):
        for p, t in zip(ours, theirs):
            g = rng.standard_normal(p.data.shape)
            p.grad = g
            t.grad = torch.tensor(g.copy())
        opt.step()
        topt.step()
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- #
# LR schedules
# --------------------------------------------------------------------------- #


def lrs(sched, n):
    """The rate of group 0 at counts 0..n-1 (construction sets count 0)."""
    out = [sched.get_last_lr()[0]]
    for _ in range(n - 1):
        sched.step()
        out.append(sched.optimizer.param_groups[0]["lr"])
    return out


def new_opt(lr=0.1):
    return SGD([Param([0.0])], lr=lr, momentum=0.9)


def test_step_lr():
    got = lrs(StepLR(new_opt(), step_size=2, gamma=0.1), 6)
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-15)


def test_multistep_lr_paper_schedule():
    got = lrs(MultiStepLR(new_opt(), milestones=[2, 4], gamma=0.1), 6)
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-15)


def test_cosine_lr():
    got = lrs(CosineAnnealingLR(new_opt(), T_max=4, eta_min=0.001), 5)
    c = 0.5 * (1 + math.sqrt(0.5))  # (1 + cos(pi/4)) / 2
    want = [0.1, 0.001 + 0.099 * c, 0.001 + 0.099 * 0.5, 0.001 + 0.099 * (1 - c), 0.001]
    np.testing.assert_allclose(got, want, rtol=1e-14)


def test_linear_warmup_then_milestones():
    opt = new_opt()
    sched = LinearWarmup(MultiStepLR(opt, milestones=[5]), warmup_epochs=4, start_factor=0.2)
    got = lrs(sched, 7)
    # factor 0.2, 0.4, 0.6, 0.8, then 1; the milestone stays at absolute epoch 5
    np.testing.assert_allclose(got, [0.02, 0.04, 0.06, 0.08, 0.1, 0.01, 0.01], rtol=1e-14)
    assert sched.scheduler.last_epoch == 6


def test_constant_warmup_resnet110():
    sched = ConstantWarmup(new_opt(), warmup_epochs=2, start_factor=0.1)
    np.testing.assert_allclose(lrs(sched, 4), [0.01, 0.01, 0.1, 0.1], rtol=1e-15)


def test_warmups_start_at_a_tenth_by_default():
    np.testing.assert_allclose(lrs(LinearWarmup(new_opt(), 2), 3), [0.01, 0.055, 0.1], rtol=1e-14)
    np.testing.assert_allclose(lrs(ConstantWarmup(new_opt(), 2), 3), [0.01, 0.01, 0.1], rtol=1e-15)


def test_schedule_per_group_base_lr():
    opt = SGD([{"params": [Param([0.0])]}, {"params": [Param([0.0])], "lr": 1.0}], lr=0.1)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.5]
    assert [g["initial_lr"] for g in opt.param_groups] == [0.1, 1.0]


@pytest.mark.parametrize(
    "make",
    [
        lambda o: StepLR(o, 3, gamma=0.5),
        lambda o: MultiStepLR(o, [2, 5]),
        lambda o: CosineAnnealingLR(o, 7),
        lambda o: LinearWarmup(CosineAnnealingLR(o, 7), warmup_epochs=3),
    ],
)
def test_schedule_state_dict_resume(make):
    straight = lrs(make(new_opt()), 9)
    opt = new_opt()
    sched = make(opt)
    lrs(sched, 4)  # counts 0..3
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    opt2 = new_opt(lr=7.0)
    sched2 = make(opt2)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    rest = [opt2.param_groups[0]["lr"]]
    for _ in range(5):
        sched2.step()
        rest.append(opt2.param_groups[0]["lr"])
    assert rest == straight[3:]


def test_schedule_validation():
    with pytest.raises(ValueError, match="step_size must be an int >= 1, got 0"):
        StepLR(new_opt(), 0)
    with pytest.raises(ValueError, match=r"milestones must be increasing ints, got \[5, 2\]"):
        MultiStepLR(new_opt(), [5, 2])
    with pytest.raises(ValueError, match="T_max must be an int >= 1"):
        CosineAnnealingLR(new_opt(), 0)
    with pytest.raises(ValueError, match="start_factor must be <= 1"):
        LinearWarmup(new_opt(), 3, start_factor=2.0)
    with pytest.raises(TypeError, match="LRScheduler or an Optimizer"):
        LinearWarmup("sgd", 3)


def test_schedules_match_torch():
    torch = pytest.importorskip("torch")

    def torch_lrs(make, n):
        t = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([t], lr=0.1, momentum=0.9)
        sched = make(opt)
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    ts = torch.optim.lr_scheduler
    pairs = [
        (lambda o: StepLR(o, 3, 0.5), lambda o: ts.StepLR(o, 3, 0.5)),
        (lambda o: MultiStepLR(o, [3, 7]), lambda o: ts.MultiStepLR(o, [3, 7])),
        (lambda o: CosineAnnealingLR(o, 10, 1e-3), lambda o: ts.CosineAnnealingLR(o, 10, 1e-3)),
        (
            lambda o: LinearWarmup(o, 4, start_factor=0.25),
            lambda o: ts.LinearLR(o, start_factor=0.25, total_iters=4),
        ),
    ]
    for ours, theirs in pairs:
        np.testing.assert_allclose(lrs(ours(new_opt()), 12), torch_lrs(theirs, 12), rtol=1e-12)


# --------------------------------------------------------------------------
# PyTorch's signature, and its update over several steps for every combination
# --------------------------------------------------------------------------


def test_sgd_positional_arguments_follow_torch_order():
    # torch.optim.SGD(params, lr, momentum, dampening, weight_decay, nesterov):
    # the same positional call must mean the same thing here.
    p = Param(np.array([1.0, 2.0]))
    opt = SGD([p], 0.1, 0.9, 0.0, 5e-4)
    group = opt.param_groups[0]
    assert (group["momentum"], group["dampening"], group["weight_decay"]) == (0.9, 0.0, 5e-4)
    assert group["nesterov"] is False
    assert SGD([Param([1.0])]).param_groups[0]["lr"] == 1e-3  # torch's default
    with pytest.raises(TypeError, match="SGD: nesterov must be True or False, got 0.0005"):
        SGD([p], 0.1, 0.9, 0.0, 0.0, 5e-4)  # a weight decay in nesterov's place


# Every combination PyTorch accepts (Nesterov needs momentum > 0 and no dampening).
SGD_COMBINATIONS = [
    (m, d, wd, nesterov, maximize)
    for m, d, wd, nesterov, maximize in itertools.product(
        [0.0, 0.9], [0.0, 0.3], [0.0, 0.01], [False, True], [False, True]
    )
    if not nesterov or (m > 0 and d == 0)
]


@pytest.mark.parametrize("momentum, dampening, weight_decay, nesterov, maximize", SGD_COMBINATIONS)
def test_sgd_matches_torch_over_several_steps(
    momentum, dampening, weight_decay, nesterov, maximize
):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    start = rng.standard_normal(5)
    grads = [rng.standard_normal(5) for _ in range(4)]
    p = Param(start.copy())
    q = torch.tensor(start.copy(), requires_grad=True)
    kw = dict(momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
    ours = SGD([p], 0.1, **kw, maximize=maximize)
    theirs = torch.optim.SGD([q], 0.1, **kw, maximize=maximize)
    for g in grads:
        p.grad = g.copy()
        q.grad = torch.tensor(g.copy())
        ours.step()
        theirs.step()
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_sgd_step_calls_the_closure_and_returns_its_loss():
    p = Param(np.array([3.0]))
    calls = []

    def closure():
        calls.append(mr.is_grad_enabled())
        p.grad = 2 * p.data  # d(p^2)/dp
        return float((p.data**2).sum())

    opt = SGD([p], lr=0.25)
    with mr.no_grad():  # the closure still records its graph, as in PyTorch
        loss = opt.step(closure)
    assert loss == 9.0 and calls == [True]
    np.testing.assert_allclose(p.data, [1.5])
    assert opt.step() is None
