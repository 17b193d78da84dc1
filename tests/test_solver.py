"""SOLVER.OPTIMIZER: AdamW with detectron2's parameter groups (WEIGHT_DECAY_NORM for norm layers,
BIAS_LR_FACTOR for biases) and gradient clipping; an unknown name is an error naming the key."""

import pytest
import torch
from detectron2.config import CfgNode, get_cfg
from torch import nn

from atss_d2 import add_atss_config
from atss_d2.solver import build_optimizer


def solver_cfg(**solver):
    cfg = get_cfg()
    add_atss_config(cfg)
    cfg.SOLVER.BASE_LR = 0.002
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def small_model():
    # conv (weight, bias), GroupNorm (weight, bias), linear (weight, bias)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4, 2))


def hyperparameters(optimizer, model):
    """{parameter name: (lr, weight_decay)} from the optimizer's parameter groups."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            out[names[id(p)]] = (group["lr"], group["weight_decay"])
    return out


def test_adamw_groups_decay_norms_per_weight_decay_norm():
    model = small_model()
    optimizer = build_optimizer(solver_cfg(OPTIMIZER="AdamW"), model)  # any case
    assert type(optimizer) is torch.optim.AdamW  # no clipping asked: the plain class
    assert optimizer.defaults["lr"] == 0.002 and optimizer.defaults["weight_decay"] == 0.05
    # Every parameter once; the norm's weight and bias get WEIGHT_DECAY_NORM (0), all the
    # others WEIGHT_DECAY (0.05); every lr is BASE_LR.
    assert hyperparameters(optimizer, model) == {
        "0.weight": (0.002, 0.05),
        "0.bias": (0.002, 0.05),
        "1.weight": (0.002, 0.0),
        "1.bias": (0.002, 0.0),
        "3.weight": (0.002, 0.05),
        "3.bias": (0.002, 0.05),
    }
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 6


def test_adamw_bias_lr_factor_and_clipping():
    model = small_model()
    cfg = solver_cfg(OPTIMIZER="ADAMW", BIAS_LR_FACTOR=2.0, WEIGHT_DECAY_NORM=0.01)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    # Biases (the norm's too) at 2 x BASE_LR; the norm's weight decay stays WEIGHT_DECAY_NORM.
    assert hyperparameters(optimizer, model) == {
        "0.weight": (0.002, 0.05),
        "0.bias": (0.004, 0.05),
        "1.weight": (0.002, 0.01),
        "1.bias": (0.004, 0.01),
        "3.weight": (0.002, 0.05),
        "3.bias": (0.004, 0.05),
    }
    # Per-parameter norm clipping at 1.0 before the step: a gradient of norm 100 leaves it
    # at norm 1 (clipping rescales p.grad in place).
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0 / p.numel() ** 0.5)
    optimizer.step()
    for name, p in model.named_parameters():
        assert p.grad.norm().item() == pytest.approx(1.0, rel=1e-4), name


def test_unknown_optimizer_names_the_key_and_the_value():
    with pytest.raises(ValueError) as info:
        build_optimizer(solver_cfg(OPTIMIZER="LAMB"), small_model())
    message = str(info.value)
    assert "SOLVER.OPTIMIZER" in message and "'LAMB'" in message
    assert "'SGD'" in message and "'ADAMW'" in message  # and the names it accepts


@pytest.mark.parametrize("clip", [False, True])
def test_adamw_on_the_cpu_is_fused_and_makes_adamws_first_step(clip):
    torch.manual_seed(0)
    model = small_model()
    cfg = solver_cfg(OPTIMIZER="ADAMW")
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = clip
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1e6  # never reached
    optimizer = build_optimizer(cfg, model)
    assert optimizer.defaults["fused"] is True
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()
    optimizer.step()
    # AdamW's first step, by hand: m = (1 - b1) g, v = (1 - b2) g^2, bias-corrected to g and
    # g^2, so p <- p (1 - lr wd) - lr g / (|g| + eps).
    lr, eps = 0.002, 1e-8
    for name, p in model.named_parameters():
        wd = 0.0 if name.startswith("1.") else 0.05  # the GroupNorm: WEIGHT_DECAY_NORM
        g = grads[name]
        expected = before[name] * (1 - lr * wd) - lr * g / (g.abs() + eps)
        assert torch.allclose(p.detach(), expected, rtol=0, atol=1e-6), name


def test_fused_only_for_adam_on_the_cpu():
    from atss_d2.solver import cpu_fused_kwargs

    params = list(small_model().parameters())
    assert cpu_fused_kwargs(torch.optim.AdamW, [{"params": params}]) == {"fused": True}
    assert cpu_fused_kwargs(torch.optim.AdamW, params) == {"fused": True}
    assert cpu_fused_kwargs(torch.optim.SGD, params) == {}
    assert cpu_fused_kwargs(torch.optim.AdamW, iter(params)) == {}  # not consumed
    assert cpu_fused_kwargs(torch.optim.AdamW, [torch.zeros(1, device="meta")]) == {}


def _detectron2_clipped(optimizer_class, clip_type, clip_value, norm_type):
    from detectron2.solver.build import maybe_add_gradient_clipping

    clip = {"ENABLED": True, "CLIP_TYPE": clip_type, "CLIP_VALUE": clip_value}
    cfg = CfgNode({"SOLVER": {"CLIP_GRADIENTS": dict(clip, NORM_TYPE=norm_type)}})
    return maybe_add_gradient_clipping(cfg, optimizer_class)


@pytest.mark.parametrize(
    "clip_type, clip_value, norm_type",
    [("norm", 1.0, 2.0), ("norm", 0.5, 1.0), ("norm", 2.0, float("inf")), ("value", 0.3, 2.0)],
)
def test_clipping_gives_detectron2s_gradients_bit_for_bit(clip_type, clip_value, norm_type):
    from atss_d2.solver import with_gradient_clipping

    torch.manual_seed(0)
    shapes = [(64, 3, 3, 3), (64,), (10, 64), (10,), (1,), (5, 5)]
    # Gradient norms from 1e-3 to 1e2: some below the clip value, some above.
    grads = [torch.randn(s) * 10.0 ** torch.empty(1).uniform_(-3, 2) for s in shapes]
    results = []
    for optimizer_class in (
        with_gradient_clipping(torch.optim.SGD, clip_type, clip_value, norm_type),
        _detectron2_clipped(torch.optim.SGD, clip_type, clip_value, norm_type),
    ):
        params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        # A parameter without a gradient is left alone (only in ours: with torch 2.14,
        # detectron2 0.6's clip by value fails on one).
        extra = [torch.nn.Parameter(torch.zeros(3))] if not results else []
        groups = [{"params": params[:3]}, {"params": params[3:] + extra}]
        optimizer = optimizer_class(groups, lr=1e-3, momentum=0.9)
        assert type(optimizer).__name__ == "SGDWithGradientClip"
        optimizer.step()
        results.append([p.grad for p in params] + [p.detach() for p in params])
    ours, theirs = results
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    clipped = [g.norm(norm_type) > clip_value for g in grads] if clip_type == "norm" else None
    if clipped is not None:
        assert any(clipped) and not all(clipped)  # both cases were exercised


def test_clip_each_gradient_by_hand():
    from atss_d2.solver import clip_each_gradient

    a, b = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    a.grad = torch.tensor([3.0, 4.0])  # L2 norm 5: scaled by 1 / (5 + 1e-6)
    b.grad = torch.tensor([0.1, 0.0, 0.0])  # norm 0.1 < 1: unchanged
    clip_each_gradient([a, b], "norm", 1.0)
    assert torch.allclose(a.grad, torch.tensor([0.6, 0.8]), rtol=0, atol=1e-6)
    assert torch.equal(b.grad, torch.tensor([0.1, 0.0, 0.0]))
    a.grad = torch.tensor([-2.0, 0.5])
    clip_each_gradient([a], "value", 1.0)
    assert torch.equal(a.grad, torch.tensor([-1.0, 0.5]))


def test_unknown_clip_type_is_an_error():
    from atss_d2.solver import with_gradient_clipping

    with pytest.raises(ValueError, match="'full_model'"):
        with_gradient_clipping(torch.optim.SGD, "full_model", 1.0)
