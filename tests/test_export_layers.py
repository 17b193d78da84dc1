"""The export-friendly layers: Winograd 3x3 convolutions and batch norms folded into convs give
the direct computation's outputs, in PyTorch and through ONNX Runtime on other image sizes."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn

from atss_d2.export_layers import (
    WinogradConv2d,
    fold_batch_norms,
    prepare_for_export,
    use_winograd,
)
from atss_d2.modeling.batch_norm import FrozenStatsBatchNorm2d


def _conv(c_in=8, c_out=6, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias).eval()


def _reference(conv, x):
    """The direct convolution in float64."""
    bias = conv.bias.double() if conv.bias is not None else None
    return F.conv2d(x.double(), conv.weight.double(), bias, padding=1)


@pytest.mark.parametrize("size", [(1, 1), (4, 4), (5, 7), (13, 17), (16, 9)])
@pytest.mark.parametrize("bias", [True, False])
def test_winograd_equals_direct_convolution(size, bias):
    conv = _conv(bias=bias)
    x = torch.randn(2, 8, *size, generator=torch.Generator().manual_seed(1))
    out = WinogradConv2d(conv, min_pixels=0)(x)
    ref = _reference(conv, x)
    assert out.shape == (2, 6, *size) and out.dtype == torch.float32
    # F(4x4, 3x3) in float32: errors of ~1e-6 of the output's magnitude (all 36 products
    # summed in float32; the direct conv's own error is ~1e-7).
    assert (out.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_winograd_keeps_norm_and_activation_and_small_inputs_go_direct():
    torch.manual_seed(0)
    conv = Conv2d(8, 8, 3, padding=1, bias=True, norm=nn.GroupNorm(2, 8), activation=F.relu)
    conv.eval()
    x = torch.randn(1, 8, 12, 10)
    layer = WinogradConv2d(conv, min_pixels=0)
    expected = F.relu(conv.norm(_reference(conv, x).float()))
    assert torch.allclose(layer(x), expected, atol=1e-5)
    # Below min_pixels: the direct convolution itself, bit for bit.
    direct = WinogradConv2d(conv, min_pixels=12 * 10 + 1)
    with torch.no_grad():
        assert torch.equal(direct(x), conv(x))


def test_winograd_rejects_other_convolutions():
    for conv in (
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2),
        nn.Conv2d(8, 8, 1),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
    ):
        assert not use_winograd(conv, min_channels=1)
        with pytest.raises(ValueError, match="3x3 conv with stride 1"):
            WinogradConv2d(conv)
    assert use_winograd(nn.Conv2d(256, 256, 3, padding=1))
    assert not use_winograd(nn.Conv2d(256, 80, 3, padding=1))  # the classification output


def test_winograd_onnx_generalizes_to_other_sizes(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    conv = _conv(16, 16)
    layer = WinogradConv2d(conv, min_pixels=0).eval()
    path = str(tmp_path / "winograd.onnx")
    with torch.no_grad():
        torch.onnx.export(
            layer,
            (torch.randn(1, 16, 20, 24),),
            path,
            input_names=["x"],
            dynamic_axes={"x": {2: "h", 3: "w"}},
            opset_version=17,
            dynamo=False,
        )
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(2)
    for size in [(20, 24), (9, 13), (33, 6)]:  # tile counts that round up differently
        x = torch.randn(1, 16, *size, generator=g)
        (out,) = session.run(None, {"x": x.numpy()})
        ref = _reference(conv, x)
        assert out.shape == (1, 16, *size)
        assert (torch.from_numpy(out).double() - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize("norm_class", [FrozenBatchNorm2d, FrozenStatsBatchNorm2d])
def test_fold_batch_norms(norm_class):
    torch.manual_seed(0)
    norm = norm_class(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    conv = Conv2d(4, 6, 3, padding=1, bias=False, norm=norm, activation=F.relu).eval()
    model = nn.Sequential(conv).eval()
    x = torch.randn(2, 4, 9, 11)
    with torch.no_grad():
        expected = model(x)
        assert fold_batch_norms(model) == 1
        assert conv.norm is None and conv.bias is not None
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_prepare_for_export_copies():
    torch.manual_seed(0)
    head = nn.Module()
    head.cls_subnet = nn.Sequential(nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())
    head.cls_score = nn.Conv2d(256, 80, 3, padding=1)
    model = nn.Module()
    model.head = head
    model.convs = [head.cls_subnet[0]]  # a plain list, as detectron2's FPN.output_convs
    model.train()
    ready = prepare_for_export(model)
    assert not ready.training and model.training  # the original is untouched
    assert isinstance(ready.head.cls_subnet[0], WinogradConv2d)
    assert ready.convs[0] is ready.head.cls_subnet[0]
    assert isinstance(ready.head.cls_score, nn.Conv2d)  # 80 outputs: direct
    assert isinstance(model.head.cls_subnet[0], nn.Conv2d)
    assert isinstance(prepare_for_export(model, winograd=False).head.cls_subnet[0], nn.Conv2d)


def test_exported_model_with_winograd_matches_pytorch(tmp_path):
    """A whole model with 256-channel FPN and head (Winograd in the head towers, the FPN outputs
    and ResNet-18's res4/res5) exported to ONNX: PyTorch's detections on new image sizes."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from detectron2.modeling import build_model
    from tiny_setup import small_cfg

    from atss_d2.export import export_onnx, instances_from_outputs
    from atss_d2.runtime import compare_detections

    cfg = small_cfg("MODEL.FPN.OUT_CHANNELS", 256, "MODEL.ATSS.PRIOR_PROB", 0.3)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ready = prepare_for_export(model, min_pixels=0)
    replaced = [n for n, m in ready.named_modules() if isinstance(m, WinogradConv2d)]
    assert "head.cls_subnet.0" in replaced and "backbone.fpn_output3" in replaced
    assert any(n.startswith("backbone.bottom_up.res4") for n in replaced)
    g = torch.Generator().manual_seed(5)
    path = str(tmp_path / "model.onnx")
    names = export_onnx(ready, torch.rand(3, 64, 80, generator=g) * 255, path, optimize=False)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for size in [(96, 128), (70, 101)]:
        image = torch.rand(3, *size, generator=g) * 255
        with torch.no_grad():
            expected = model([{"image": image}])[0]["instances"]
        actual = instances_from_outputs(names, session.run(None, {"image": image.numpy()}))
        ok, verdict = compare_detections(expected, actual)
        assert ok and len(expected) > 0, verdict
