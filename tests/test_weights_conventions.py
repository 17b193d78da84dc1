"""
Pretrained weights meet the input they were trained on: a converted torchvision ResNet run
through a config that reads BGR caffe-style input (configs/Original) is caught by the converter
(warning plus the overrides in its ``use:`` command) and by the loader, and with those overrides
the detectron2 backbone computes what torchvision's own ResNet computes on the same RGB image.
Also: mmdetection 3.x checkpoints with mmengine's loss history, class names carried over, fp16
checkpoints, files of another model, wide ResNets.

The references are torchvision's own modules and its documented normalisation (RGB in [0, 1],
mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)); the fake mmdetection checkpoints follow
mmengine's ``Runner.save_checkpoint`` (``meta``, ``state_dict``, ``message_hub`` whose
``log_scalars`` hold ``mmengine.logging.history_buffer.HistoryBuffer`` objects, ``optimizer``,
``param_schedulers``).
"""

import logging
import os
import shlex
import sys
import types

import numpy as np
import pytest
import torch
import torchvision
from test_checkpoint_conversion import TINY, TINY_ARCH, Fake, load_tool, make_cfg, mmdet_source
from torchvision.models.resnet import Bottleneck, ResNet

from atss_d2.checkpoint import (
    SafeDetectionCheckpointer,
    convert_state_dict,
    default_config,
    infer_model_arch,
    load_checkpoint_file,
    save_detectron2_checkpoint,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORIGINAL = "configs/Original/atss_R_50_FPN_1x.yaml"
# torchvision's ResNet-50 block layout with 8-channel bottlenecks (its width_per_group), so
# that the test is fast; the names are those of resnet50-*.pth.
NARROW = ["MODEL.RESNETS.WIDTH_PER_GROUP", "8", "MODEL.FPN.OUT_CHANNELS", "64"]
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _narrow_torchvision_resnet50(seed: int = 0) -> ResNet:
    torch.manual_seed(seed)
    net = ResNet(Bottleneck, [3, 4, 6, 3], width_per_group=8).eval()
    for m in net.modules():  # BatchNorm away from its identity initialisation
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    return net


def _torchvision_features(net: ResNet, rgb_uint8: torch.Tensor) -> dict:
    """res3-res5 as torchvision computes them from an RGB uint8 image (its documented input)."""
    x = (rgb_uint8[None].float() / 255 - IMAGENET_MEAN) / IMAGENET_STD
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    out = {}
    x = net.layer2(net.layer1(x))
    out["res3"] = x
    out["res4"] = x = net.layer3(x)
    out["res5"] = net.layer4(x)
    return out


def _d2_features(cfg, weights: str, rgb_uint8: torch.Tensor, caplog) -> dict:
    from detectron2.modeling import build_model

    model = build_model(cfg).eval()
    with caplog.at_level(logging.WARNING, logger="atss_d2"):
        SafeDetectionCheckpointer(model).load(weights)
    # detectron2 models receive the image in cfg.INPUT.FORMAT's channel order.
    image = rgb_uint8 if cfg.INPUT.FORMAT == "RGB" else rgb_uint8.flip(0)
    with torch.no_grad():
        x = model.preprocess_image([{"image": image.float()}]).tensor
        return model.backbone.bottom_up(x)


def _use_opts(out: str, weights: str) -> list:
    """The KEY VALUE overrides of the converter's printed ``use:`` command, after the weights."""
    line = next(line for line in out.splitlines() if line.startswith("use: "))
    words = shlex.split(line[len("use: ") :])
    return words[words.index(weights) + 1 :]


def test_torchvision_weights_in_a_caffe_style_config_get_the_input_they_need(
    tmp_path, capsys, caplog
):
    net = _narrow_torchvision_resnet50()
    src = tmp_path / "resnet50-0676ba61.pth"
    torch.save(net.state_dict(), src)
    out = str(tmp_path / "R-50-torchvision.pkl")
    tool = load_tool()
    code = tool.main(["--source", "torchvision", str(src), out, "--config-file", ORIGINAL] + NARROW)
    printed = capsys.readouterr().out
    assert code == 0
    assert "WARNING: the torchvision weights were trained on RGB input" in printed
    opts = _use_opts(printed, out)
    fix = opts[len(NARROW) :]
    assert opts[: len(NARROW)] == NARROW
    assert dict(zip(fix[::2], fix[1::2])) == {
        "INPUT.FORMAT": "RGB",
        "MODEL.PIXEL_MEAN": "[123.675, 116.28, 103.53]",  # 255 x torchvision's mean
        "MODEL.PIXEL_STD": "[58.395, 57.12, 57.375]",  # 255 x torchvision's std
        "MODEL.RESNETS.STRIDE_IN_1X1": "False",  # torchvision strides in the 3x3 conv
    }
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8, generator=torch.Generator())
    with torch.no_grad():
        ref = _torchvision_features(net, image)

    # As the converter says to run it: torchvision's features.
    fixed = make_cfg(ORIGINAL, opts)
    ours = _d2_features(fixed, out, image, caplog)
    assert not [r for r in caplog.records if "trained on" in r.getMessage()]
    for name in ("res3", "res4", "res5"):
        torch.testing.assert_close(
            ours[name], ref[name], rtol=1e-4, atol=1e-4 * ref[name].abs().max()
        )

    # As the config stands (BGR, caffe mean, std 1, stride in the 1x1): other features, and
    # the loader says so with the same overrides.
    caplog.clear()
    plain = _d2_features(make_cfg(ORIGINAL, NARROW), out, image, caplog)
    assert not torch.allclose(plain["res5"], ref["res5"], atol=1e-2 * ref["res5"].abs().max())
    warned = [r.getMessage() for r in caplog.records if "trained on" in r.getMessage()]
    assert len(warned) == 1 and out in warned[0]
    assert "RGB input" in warned[0] and "this model reads BGR input" in warned[0]
    assert shlex.join(fix) in warned[0]


def test_a_converted_torchvision_resnet_in_its_own_config_needs_no_override(tmp_path, capsys):
    net = _narrow_torchvision_resnet50(seed=1)
    src = tmp_path / "resnet50.pth"
    torch.save(net.state_dict(), src)
    out = str(tmp_path / "r50.pkl")
    config = "configs/COCO-Detection/atss_R_50_FPN_1x.yaml"
    assert (
        load_tool().main(
            ["--source", "torchvision", str(src), out, "--config-file", config] + NARROW
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "WARNING" not in printed and _use_opts(printed, out) == NARROW
    saved = load_checkpoint_file(out)
    assert saved["input_convention"]["INPUT.FORMAT"] == "RGB"
    assert saved["input_convention"]["MODEL.RESNETS.STRIDE_IN_1X1"] is False


def test_detectron2s_torchvision_pkl_in_a_bgr_model_is_named(tmp_path, caplog):
    """detectron2's tools/convert-torchvision-to-d2.py writes ``__author__: "torchvision"`` and
    tells to set RGB, ImageNet mean/std and STRIDE_IN_1X1 False; the loader holds it to that."""
    from detectron2.modeling import build_model

    model = build_model(make_cfg(ORIGINAL, TINY)).eval()
    names = {
        k[len("backbone.bottom_up.") :]: v.numpy()
        for k, v in model.state_dict().items()
        if k.startswith("backbone.bottom_up.")
    }
    path = tmp_path / "R-50.pkl"
    import pickle

    with open(path, "wb") as f:
        pickle.dump({"model": names, "__author__": "torchvision", "matching_heuristics": True}, f)
    with caplog.at_level(logging.WARNING, logger="atss_d2"):
        checkpointer = SafeDetectionCheckpointer(model)
        checkpointer.load(str(path))
    report = checkpointer.last_load_report
    opts = dict(zip(report.input_overrides[::2], report.input_overrides[1::2]))
    assert opts["INPUT.FORMAT"] == "RGB" and opts["MODEL.RESNETS.STRIDE_IN_1X1"] == "False"
    assert any("INPUT.FORMAT RGB" in r.getMessage() for r in caplog.records)


def _save_with_mmengine_history(path, checkpoint):
    """torch.save as mmengine does: HistoryBuffer objects pickled under mmengine's class name."""
    names = ["mmengine", "mmengine.logging", "mmengine.logging.history_buffer"]
    saved = {n: sys.modules.get(n) for n in names}
    module = types.ModuleType(names[-1])

    class HistoryBuffer:  # the attributes mmengine's HistoryBuffer pickles
        def __init__(self, values):
            self._log_history = np.array(values)
            self._count_history = np.ones(len(values), dtype=np.int64)
            self.max_length = 1000000

    HistoryBuffer.__module__ = names[-1]
    HistoryBuffer.__qualname__ = "HistoryBuffer"
    module.HistoryBuffer = HistoryBuffer
    try:
        for n in names:
            sys.modules[n] = module if n == names[-1] else types.ModuleType(n)
        checkpoint["message_hub"]["log_scalars"] = {
            "train/loss": HistoryBuffer([1.5, 1.2]),
            "train/lr": HistoryBuffer([0.01]),
        }
        torch.save(checkpoint, path)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def test_an_mmdetection3_training_checkpoint_converts_with_its_class_names(tmp_path, capsys):
    state = mmdet_source(Fake(0), TINY_ARCH)["state_dict"]
    classes = ("cat", "dog", "bird")  # TINY_ARCH has 3 classes
    checkpoint = {
        "meta": {
            "epoch": 12,
            "iter": 3000,
            "cfg": "model = dict(type='ATSS', bbox_head=dict(num_classes=3))",
            "mmengine_version": "0.10.7",
            "dataset_meta": {"classes": classes, "palette": [(220, 20, 60)] * 3},
        },
        "state_dict": state,
        "message_hub": {"runtime_info": {"epoch": 12, "iter": 3000}, "resumed_keys": {}},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]},
        "param_schedulers": [{"base_lrs": [0.01], "last_step": 12}],
    }
    src = tmp_path / "epoch_12.pth"
    _save_with_mmengine_history(src, checkpoint)
    assert "mmengine" not in sys.modules
    out = str(tmp_path / "atss_mmdet.pth")
    config = "configs/COCO-Detection/atss_R_50_FPN_1x.yaml"
    code = load_tool().main(["--source", "mmdet", str(src), out, "--config-file", config] + TINY)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "mmengine" not in sys.modules  # nothing of mmengine was imported to read it
    assert "3 classes in the checkpoint meta" in printed
    saved = load_checkpoint_file(out)
    assert saved["thing_classes"] == list(classes)

    from detectron2.modeling import build_model

    model = build_model(make_cfg(config, TINY)).eval()
    checkpointer = SafeDetectionCheckpointer(model)
    checkpointer.load(out)
    assert checkpointer.last_load_report.thing_classes == list(classes)
    assert checkpointer.last_load_report.input_overrides == []
    torch.testing.assert_close(model.head.cls_score.weight, state["bbox_head.atss_cls.weight"])


def test_an_fp16_checkpoint_is_widened_before_the_frozen_bn_correction(tmp_path):
    # The authors' FrozenBatchNorm has no eps: var - 1e-5 is stored. In float16, 1.0 - 1e-5
    # rounds back to 1.0 (float16's spacing at 1 is 2^-10), so the subtraction is done in float32.
    var = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float16)
    converted, report = convert_state_dict(
        "atss", {"module.backbone.body.stem.bn1.running_var": var}
    )
    got = converted["backbone.bottom_up.stem.conv1.norm.running_var"]
    assert got.dtype == torch.float32
    expected = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float32) - 1e-5
    assert torch.equal(got, expected)
    weight = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float16)
    path = str(tmp_path / "out.pth")
    save_detectron2_checkpoint(path, {"a": weight, "n": torch.tensor(3)}, "test")
    saved = load_checkpoint_file(path)["model"]
    assert saved["a"].dtype == torch.float32 and torch.equal(saved["a"], weight.float())
    assert saved["n"].dtype == torch.int64


def test_a_file_of_another_model_is_named_as_such(tmp_path, capsys):
    src = tmp_path / "yolov5s_state_dict.pth"
    torch.save(
        {"model.0.conv.weight": torch.zeros(32, 3, 6, 6), "model.0.bn.weight": torch.ones(32)}, src
    )
    out = tmp_path / "out.pkl"
    assert load_tool().main(["--source", "torchvision", str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert "none of its 2 tensors has a name of the torchvision layout" in err
    assert "model.0.conv.weight" in err and "nothing written" in err
    assert not out.exists()


def test_a_wide_resnet_gets_its_width_override():
    with torch.device("meta"):
        state = torchvision.models.wide_resnet50_2().state_dict()
    converted, report = convert_state_dict("torchvision", state)
    assert report.ok
    arch = infer_model_arch(converted)
    assert (arch.depth, arch.num_groups, arch.width_per_group) == (50, 1, 128)
    config, opts = default_config("torchvision", arch, os.path.join(ROOT, "configs"))
    assert dict(zip(opts[::2], opts[1::2]))["MODEL.RESNETS.WIDTH_PER_GROUP"] == "128"
    cfg = make_cfg(os.path.relpath(config, ROOT), opts, device="meta")
    from detectron2.modeling import build_model

    with torch.device("meta"):
        model = build_model(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert all(shapes[k] == tuple(v.shape) for k, v in converted.items())


@pytest.mark.parametrize("source", ["mmdet", "atss"])
def test_detector_checkpoints_record_their_input(source):
    from atss_d2.checkpoint import input_convention

    c = input_convention(source)
    if source == "mmdet":  # mmdetection's data_preprocessor of atss_r50_fpn_1x_coco.py
        assert c["INPUT.FORMAT"] == "RGB" and c["MODEL.PIXEL_STD"] == [58.395, 57.12, 57.375]
    else:  # maskrcnn-benchmark defaults: TO_BGR255, caffe mean, std 1
        assert c["INPUT.FORMAT"] == "BGR" and c["MODEL.PIXEL_STD"] == [1.0, 1.0, 1.0]
        assert "MODEL.RESNETS.STRIDE_IN_1X1" not in c  # MSRA ResNet or FAIR ResNeXt: not known
