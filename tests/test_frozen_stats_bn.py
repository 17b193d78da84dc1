"""
MODEL.RESNETS.NORM "FrozenStatsBN" (Base-ATSS.yaml): mmdetection's backbone normalisation,
``norm_cfg=dict(type="BN", requires_grad=True), norm_eval=True`` (mmdet/models/backbones/resnet.py
puts every BatchNorm in eval mode in ``train()``): the running statistics are used and never
updated, the affine weight and bias are trained; the stages below FREEZE_AT stay FrozenBN.
"""

import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet
from detectron2.solver.build import get_default_optimizer_params
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from tiny_setup import small_cfg
from torch import nn

from atss_d2.modeling import FrozenStatsBatchNorm2d
from atss_d2.modeling.batch_norm import convert_to_frozen_stats


def random_bn(channels=6, seed=0) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=g))
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) + 0.1)
    return bn


def test_normalises_with_running_statistics_in_training_mode():
    ref = random_bn().eval()  # mmdetection's norm_eval: BatchNorm in eval mode
    ours = convert_to_frozen_stats(random_bn()).train()
    assert isinstance(ours, FrozenStatsBatchNorm2d)
    x = torch.randn(4, 6, 5, 7, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out, out_ref = ours(x), ref(x_ref)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    # by hand: (x - mean) / sqrt(var + eps) * weight + bias, per channel
    c = 2
    by_hand = (x[:, c] - ref.running_mean[c]) / (ref.running_var[c] + 1e-5).sqrt()
    torch.testing.assert_close(out[:, c], by_hand * ref.weight[c] + ref.bias[c])
    # the same gradients as the eval-mode BatchNorm: weight, bias and the input
    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    for a, b in ((ours.weight, ref.weight), (ours.bias, ref.bias)):
        assert a.grad is not None and a.grad.abs().sum() > 0
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    # a BatchNorm in training mode would have used the batch statistics instead
    batch_stats = F.batch_norm(x, None, None, ref.weight, ref.bias, training=True)
    assert not torch.allclose(out, batch_stats, atol=1e-2)
    # without gradients (inference), the fused path gives the same values
    with torch.no_grad():
        torch.testing.assert_close(ours(x), out, rtol=1e-5, atol=1e-5)
        assert ours(x.bfloat16()).dtype == torch.bfloat16


def test_state_dict_names_and_loading():
    ours = FrozenStatsBatchNorm2d(6)
    names = set(ours.state_dict())
    assert names == {"weight", "bias", "running_mean", "running_var"}
    assert names == set(FrozenBatchNorm2d(6).state_dict())
    assert {n for n, _ in ours.named_parameters()} == {"weight", "bias"}
    # a BatchNorm2d state dict (with its step counter) and a FrozenBatchNorm2d one load strictly
    bn = random_bn()
    assert "num_batches_tracked" in bn.state_dict()
    result = ours.load_state_dict(bn.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(ours.running_var, bn.running_var) and torch.equal(ours.weight, bn.weight)
    frozen = FrozenBatchNorm2d(6)
    frozen.running_mean.fill_(3.0)
    ours.load_state_dict(frozen.state_dict(), strict=True)
    assert (ours.running_mean == 3.0).all()
    # a plain dict (no version metadata, as a converted checkpoint) with the step counter
    plain = {k: v.clone() for k, v in bn.state_dict().items()}
    ours.load_state_dict(plain, strict=True)
    # Caffe2-style weights without statistics: identity statistics, as FrozenBatchNorm2d
    ours.load_state_dict({"weight": torch.ones(6), "bias": torch.zeros(6)}, strict=True)
    assert (ours.running_mean == 0).all() and (ours.running_var == 1).all()


def test_backbone_statistics_frozen_affine_trained():
    torch.manual_seed(0)
    model = build_model(small_cfg("MODEL.ATSS.NUM_CONVS", 0))
    model.train()
    bottom_up = model.backbone.bottom_up
    # stem and res2 (FREEZE_AT 2): detectron2's FrozenBatchNorm2d; res3-res5: ours
    assert isinstance(bottom_up.stem.conv1.norm, FrozenBatchNorm2d)
    assert all(
        isinstance(m.norm, FrozenBatchNorm2d)
        for m in bottom_up.res2.modules()
        if hasattr(m, "norm") and m.norm is not None
    )
    ours = {n: m for n, m in bottom_up.named_modules() if isinstance(m, FrozenStatsBatchNorm2d)}
    assert ours and all(n.split(".")[0] in ("res3", "res4", "res5") for n in ours)
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    # statistics away from the identity, as after loading ImageNet weights
    with torch.no_grad():
        for m in ours.values():
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    stats = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in ours.items()}
    affine = {n: m.weight.detach().clone() for n, m in ours.items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for step in range(2):
        inst = Instances((64, 96))
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 50.0, 60.0]]))
        inst.gt_classes = torch.tensor([1])
        batch = [{"image": torch.rand(3, 64, 96) * 255, "instances": inst}]
        optimizer.zero_grad()
        with EventStorage():
            losses = model(batch)
        sum(losses.values()).backward()
        for n, m in ours.items():
            assert m.weight.grad is not None and m.bias.grad is not None, n
        assert any(m.weight.grad.abs().sum() > 0 for m in ours.values())
        optimizer.step()
    for n, m in ours.items():
        assert torch.equal(m.running_mean, stats[n][0]) and torch.equal(m.running_var, stats[n][1])
    assert any(not torch.equal(m.weight, affine[n]) for n, m in ours.items())


def test_norm_layer_hyperparameters_and_freezing():
    cfg = small_cfg("SOLVER.WEIGHT_DECAY_NORM", 0.0)
    model = build_model(cfg)
    norm = model.backbone.bottom_up.res3[0].conv1.norm
    assert isinstance(norm, FrozenStatsBatchNorm2d)
    groups = get_default_optimizer_params(model, weight_decay=1e-4, weight_decay_norm=0.0)
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    # a BatchNorm2d for detectron2's parameter groups: SOLVER.WEIGHT_DECAY_NORM
    assert decay[id(norm.weight)] == 0.0 and decay[id(norm.bias)] == 0.0
    assert decay[id(model.backbone.bottom_up.res3[0].conv1.weight)] == 1e-4
    # FREEZE_AT 3 freezes res3 as well: FrozenBatchNorm2d there, ours from res4
    frozen = build_model(small_cfg("MODEL.BACKBONE.FREEZE_AT", 3)).backbone.bottom_up
    assert isinstance(frozen.res3[0].conv1.norm, FrozenBatchNorm2d)
    assert isinstance(frozen.res4[0].conv1.norm, FrozenStatsBatchNorm2d)
    # As a callable norm of detectron2's ResNet (LazyConfig style), ResNet.freeze converts the
    # frozen stages' to FrozenBatchNorm2d itself (it is a BatchNorm2d), values kept.
    stem = BasicStem(in_channels=3, out_channels=8, norm=FrozenStatsBatchNorm2d)
    with torch.no_grad():
        stem.conv1.norm.running_var.fill_(2.0)
    stages = [
        ResNet.make_stage(
            block_class=BasicBlock,
            num_blocks=1,
            in_channels=8,
            out_channels=out,
            stride_per_block=[stride],
            norm=FrozenStatsBatchNorm2d,
        )
        for out, stride in ((8, 1), (16, 2))
    ]
    net = ResNet(stem, stages, out_features=["res3"], freeze_at=2)
    assert isinstance(net.stem.conv1.norm, FrozenBatchNorm2d)
    assert (net.stem.conv1.norm.running_var == 2.0).all()
    assert isinstance(net.res2[0].conv1.norm, FrozenBatchNorm2d)
    assert isinstance(net.res3[0].conv1.norm, FrozenStatsBatchNorm2d)
    # "BN" (the from-scratch configs) is detectron2's trained BatchNorm, unchanged
    bn = build_model(small_cfg("MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", 0))
    assert type(bn.backbone.bottom_up.res3[0].conv1.norm) is nn.BatchNorm2d
