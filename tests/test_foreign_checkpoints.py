"""
Weights files in other layouts given as ``MODEL.WEIGHTS``: unconverted torchvision, ATSS
authors' (maskrcnn-benchmark) and mmdetection checkpoints are refused with the converter's
command, files that are no checkpoint (an HTML page, random bytes, a directory) are named as
such, the load report counts only tensors the file really has, a RetinaNet-style head is called
another layout, and the formats detectron2 reads still load as detectron2 loads them.
"""

import logging
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from tiny_setup import tiny_cfg

from atss_d2.checkpoint import (
    CheckpointReadError,
    LoadReport,
    SafeDetectionCheckpointer,
    UnsafeCheckpointError,
    WeightsNotFoundError,
    convert_state_dict,
    save_detectron2_checkpoint,
)
from atss_d2.checkpoint.detection_checkpoint import IncompatibleWeightsError
from atss_d2.engine.predictor import check_head_for_inference
from atss_d2.train_net import one_line_error

NUM_CLASSES = 2  # tiny_cfg's
# ResNet-18 (tiny_cfg's backbone): a stem conv, 8 basic blocks of 2 convs, 3 shortcuts (res3-5),
# each conv with a norm of weight, bias, running mean and running variance.
R18_CONVS = 1 + 8 * 2 + 3
R18_TENSORS = R18_CONVS * (1 + 4)


def _model(tmp_path, *opts, seed=0):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(tmp_path / "out", *opts))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _load_error(tmp_path, path):
    """The error loading ``path`` into a tiny model raises; the model is left as it was."""
    model = _model(tmp_path)
    before = _state(model)
    with pytest.raises((CheckpointReadError, WeightsNotFoundError)) as e:
        SafeDetectionCheckpointer(model).load(str(path))
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    line = one_line_error(e.value)
    assert line is not None and "\n" not in line, line  # train_net.py ends with this one line
    return str(e.value)


def _command(source, path, out):
    return f"`python tools/convert_checkpoint.py --source {source} {path} {out}`"


# Unconverted checkpoints of other projects
# ----------------------------------------------------------------------------------------------
def test_an_unconverted_torchvision_resnet_is_refused_with_the_conversion_command(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    for name in ("resnet18-f37072fd.pth", "resnet18-f37072fd.pkl"):  # .pkl: Caffe2 matching
        path = tmp_path / name
        torch.save(state, path)
        message = _load_error(tmp_path, path)
        assert message.startswith(f"{str(path)!r} is an unconverted torchvision ResNet checkpoint")
        assert "layer1.0.conv1.weight" in message
        out = os.path.join("pretrained", "resnet18-f37072fd-d2.pkl")
        assert _command("torchvision", path, out) in message
        assert f"set MODEL.WEIGHTS to {out}" in message


def test_an_unconverted_checkpoint_of_the_authors_code_is_refused(tmp_path):
    # maskrcnn-benchmark's names, saved from DistributedDataParallel, with its training state.
    model = {
        "module.backbone.body.stem.conv1.weight": torch.zeros(64, 3, 7, 7),
        "module.backbone.body.layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1),
        "module.backbone.fpn.fpn_inner2.weight": torch.zeros(256, 512, 1, 1),
        "module.rpn.head.cls_logits.weight": torch.zeros(80, 256, 3, 3),
        "module.rpn.anchor_generator.cell_anchors.0": torch.zeros(1, 4),
    }
    path = tmp_path / "ATSS_R_50_FPN_1x.pth"
    torch.save({"model": model, "optimizer": {}, "scheduler": {}, "iteration": 90000}, path)
    message = _load_error(tmp_path, path)
    assert message.startswith(f"{str(path)!r} is an unconverted ATSS authors' (maskrcnn-benchmark)")
    assert "module.backbone.body.stem.conv1.weight" in message
    out = os.path.join("output", "converted", "ATSS_R_50_FPN_1x-d2.pth")
    assert _command("atss", path, out) in message


def test_an_unconverted_mmdetection_checkpoint_is_refused(tmp_path):
    state = {
        "backbone.conv1.weight": torch.zeros(64, 3, 7, 7),
        "backbone.layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1),
        "neck.lateral_convs.0.conv.weight": torch.zeros(256, 512, 1, 1),
        "bbox_head.atss_cls.weight": torch.zeros(80, 256, 3, 3),
    }
    meta = {"mmdet_version": "2.28.2", "CLASSES": ["a", "b", "c"]}
    path = tmp_path / "atss_r50_fpn_1x_coco.pth"
    torch.save({"state_dict": state, "meta": meta}, path)
    message = _load_error(tmp_path, path)
    assert message.startswith(f"{str(path)!r} is an unconverted mmdetection checkpoint")
    assert "Unsupported type" not in message
    out = os.path.join("output", "converted", "atss_r50_fpn_1x_coco-d2.pth")
    assert _command("mmdet", path, out) in message

    # Its container alone (names of no known layout) is enough to tell it.
    path = tmp_path / "other_mmdet.pth"
    torch.save({"state_dict": {"some.weight": torch.zeros(1)}, "meta": meta}, path)
    assert "--source mmdet" in _load_error(tmp_path, path)


def test_entries_that_are_no_tensors_are_named_in_one_line(tmp_path):
    path = tmp_path / "training_state.pth"
    torch.save({"epoch": 3, "net": {"conv.weight": torch.zeros(1)}}, path)
    message = _load_error(tmp_path, path)
    assert message.startswith(f"{str(path)!r} is not a detectron2 checkpoint")
    assert "int 'epoch'" in message


# Files that are no checkpoint
# ----------------------------------------------------------------------------------------------
def test_an_html_page_and_random_bytes_are_no_checkpoint(tmp_path):
    page = tmp_path / "ATSS_R_50_FPN_1x.pth"
    page.write_text(
        "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>"
        "<body>Download anyway</body></html>\n"
    )
    message = _load_error(tmp_path, page)
    assert message.startswith(f"{str(page)!r} is not a checkpoint: it starts with '<' (an HTML")
    assert "failed download?" in message

    # 0x83 (pickle's EXT2 opcode, which torch's weights-only unpickler does not accept) then
    # random bytes: neither torch's zip nor a pickle of a dict.
    noise = b"\x83" + np.random.default_rng(0).bytes(4999)
    for name in ("garbage.mp4", "garbage.pkl"):
        path = tmp_path / name
        path.write_bytes(noise)
        message = _load_error(tmp_path, path)
        assert message.startswith(f"{str(path)!r} is not a checkpoint: it is neither a zip nor")

    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert "it is empty (0 bytes" in _load_error(tmp_path, empty)

    # safetensors: an 8-byte header length, then its JSON header.
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    tensors = tmp_path / "model.safetensors"
    tensors.write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    message = _load_error(tmp_path, tensors)
    assert message.startswith(f"{str(tensors)!r} is a safetensors file, which detectron2 does not")
    assert "from safetensors.torch import load_file" in message


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


def test_pickles_that_would_run_code_are_still_refused_as_unsafe(tmp_path):
    model = _model(tmp_path)
    for name in ("evil.pth", "evil.pkl"):
        path = tmp_path / name
        if name.endswith(".pth"):
            torch.save({"model": {"x": _RunsCode()}}, path)
        else:
            with open(path, "wb") as f:
                pickle.dump({"model": {"x": _RunsCode()}, "__author__": "x"}, f)
        with pytest.raises(UnsafeCheckpointError, match="Refusing to load.*evil"):
            SafeDetectionCheckpointer(model).load(str(path))


def test_a_directory_is_named_as_one_with_the_file_to_give(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    message = _load_error(tmp_path, run)
    assert message.startswith(f"Weights path {str(run)!r} is a directory, not a checkpoint file")
    assert "holds no model_final.pth or last_checkpoint" in message

    (run / "last_checkpoint").write_text("model_0000099.pth")
    message = _load_error(tmp_path, run)
    assert f"its last_checkpoint names {run / 'model_0000099.pth'}" in message

    torch.save({"model": _model(tmp_path).state_dict()}, run / "model_final.pth")
    message = _load_error(tmp_path, run)
    assert f"set MODEL.WEIGHTS to {run / 'model_final.pth'}" in message
    assert "not found" not in message


def test_the_last_checkpoint_tag_given_as_weights_names_the_checkpoint_it_names(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    tag = run / "last_checkpoint"
    tag.write_text("model_0000099.pth\n")
    message = _load_error(tmp_path, tag)
    assert message.startswith(f"Weights path {str(tag)!r} is detectron2's last_checkpoint tag")
    assert message.endswith(
        f"set MODEL.WEIGHTS to {run / 'model_0000099.pth'}, the checkpoint it names"
    )
    tag.write_text("")
    assert "it is empty" in _load_error(tmp_path, tag)


# What the load report counts
# ----------------------------------------------------------------------------------------------
def test_the_report_counts_only_tensors_in_the_file(tmp_path, caplog):
    source = _model(tmp_path, "MODEL.RESNETS.NORM", "FrozenBN", seed=1)
    resnet = {k: v for k, v in source.state_dict().items() if k.startswith("backbone.bottom_up.")}
    # Conv weights only: FrozenBN fills in the absent statistics itself, which loads nothing.
    convs = {k: v for k, v in resnet.items() if not k.rsplit(".", 2)[-2] == "norm"}
    assert len(convs) == R18_CONVS
    path = tmp_path / "convs.pth"
    torch.save({"model": convs}, path)
    checkpointer = SafeDetectionCheckpointer(_model(tmp_path, "MODEL.RESNETS.NORM", "FrozenBN"))
    checkpointer.load(str(path))
    report = checkpointer.last_load_report
    assert report.parts["backbone (ResNet)"] == (R18_CONVS, R18_TENSORS)
    assert report.from_scratch() == ["FPN", "detection head"]

    # Affine norms without statistics (Caffe2's layout): those count, the statistics do not.
    affine = {k: v for k, v in resnet.items() if not k.endswith(("running_mean", "running_var"))}
    torch.save({"model": affine}, path)
    checkpointer = SafeDetectionCheckpointer(_model(tmp_path, "MODEL.RESNETS.NORM", "FrozenBN"))
    with caplog.at_level(logging.INFO, logger="atss_d2"):
        checkpointer.load(str(path))
    report = checkpointer.last_load_report
    assert report.parts["backbone (ResNet)"] == (R18_CONVS * 3, R18_TENSORS)
    assert report.default_norm_stats == R18_CONVS * 2
    assert f"{R18_CONVS * 2} BatchNorm running means / variances are not in" in caplog.text


def test_a_file_of_unknown_names_loads_nothing_and_says_so(tmp_path, caplog):
    path = tmp_path / "other_model.pth"
    torch.save({"model": {"encoder.conv.weight": torch.zeros(8, 3, 3, 3)}}, path)
    checkpointer = SafeDetectionCheckpointer(_model(tmp_path))
    with caplog.at_level(logging.INFO, logger="atss_d2"):
        checkpointer.load(str(path))
    report = checkpointer.last_load_report
    assert report.loaded_nothing()
    assert report.unmatched == ["encoder.conv.weight"]
    assert "Nothing was loaded from" in caplog.text
    assert "normal for an ImageNet backbone file" not in caplog.text


# A head of another layout
# ----------------------------------------------------------------------------------------------
def test_a_retinanet_style_head_is_another_layout_not_a_class_count():
    # RetinaNet on COCO: 9 anchors x 80 classes = 720 classification outputs, 9 x 4 = 36 box
    # outputs; ATSS: 1 anchor, 80 and 4.
    report = LoadReport("retinanet.pkl", num_classes=80, num_anchors=1)
    report.reinitialised = [
        ("head.cls_score.weight", (720, 256, 3, 3), (80, 256, 3, 3)),
        ("head.bbox_pred.weight", (36, 256, 3, 3), (4, 256, 3, 3)),
    ]
    assert report.checkpoint_num_classes() is None
    assert report.checkpoint_head_layout() == (
        "720 outputs = 9 anchors x 80 classes: a RetinaNet-style head"
    )
    # Another number of classes with the same anchors is a class count, not a layout.
    report.reinitialised = [("head.cls_score.weight", (3, 256, 3, 3), (80, 256, 3, 3))]
    assert report.checkpoint_num_classes() == 3
    assert report.checkpoint_head_layout() is None


def test_inference_with_a_retinanet_style_head_names_no_class_count(tmp_path, caplog):
    state = _model(tmp_path).state_dict()
    channels = state["head.cls_score.weight"].shape[1]
    state["head.cls_score.weight"] = torch.zeros(9 * NUM_CLASSES, channels, 3, 3)
    state["head.cls_score.bias"] = torch.zeros(9 * NUM_CLASSES)
    state["head.bbox_pred.weight"] = torch.zeros(9 * 4, channels, 3, 3)
    state["head.bbox_pred.bias"] = torch.zeros(9 * 4)
    path = tmp_path / "retinanet_style.pth"
    torch.save({"model": state}, path)
    checkpointer = SafeDetectionCheckpointer(_model(tmp_path))
    with caplog.at_level(logging.WARNING, logger="atss_d2"):
        checkpointer.load(str(path))
    layout = f"{9 * NUM_CLASSES} outputs = 9 anchors x {NUM_CLASSES} classes: a RetinaNet-style"
    assert f"the checkpoint's head has another layout ({layout}" in caplog.text
    assert "classes, this model" not in caplog.text
    with pytest.raises(IncompatibleWeightsError) as e:
        check_head_for_inference(str(path), checkpointer.last_load_report)
    assert "classes in the checkpoint" not in str(e.value)
    assert f"the checkpoint's detection head has another layout ({layout} head); this model " in (
        str(e.value)
    )
    assert f"1 anchor(s) x {NUM_CLASSES} classes per location" in str(e.value)


# Formats that load as detectron2 loads them
# ----------------------------------------------------------------------------------------------
def _loads_as_detectron2_does(tmp_path, path, changed=None):
    """Load ``path`` with detectron2's and with the safe checkpointer into two models initialised
    alike: equal results. ``changed``: names whose values must differ from the initialisation."""
    theirs, ours = _model(tmp_path), _model(tmp_path)
    before = _state(ours)
    DetectionCheckpointer(theirs).load(str(path))
    checkpointer = SafeDetectionCheckpointer(ours)
    checkpointer.load(str(path))
    for name, value in ours.state_dict().items():
        assert torch.equal(value, theirs.state_dict()[name]), name
    for name in changed or ():
        assert not torch.equal(ours.state_dict()[name], before[name]), name
    return ours, checkpointer.last_load_report


def _trained(tmp_path):
    model = _model(tmp_path, seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)  # unlike any initialisation
    return model.state_dict()


def test_this_projects_checkpoints_load_whole(tmp_path):
    state = _trained(tmp_path)
    variants = {
        "model_final.pth": {"model": state, "iteration": 9},
        "ddp.pth": {"model": {"module." + k: v for k, v in state.items()}},
        "bare.pth": dict(state),
    }
    for name, data in variants.items():
        torch.save(data, tmp_path / name)
        model, report = _loads_as_detectron2_does(tmp_path, tmp_path / name)
        for key, value in state.items():
            assert torch.equal(model.state_dict()[key], value), (name, key)
        assert all(loaded == total for loaded, total in report.parts.values()), name
        assert report.reinitialised == [] and report.unmatched == []


def test_a_detectron2_model_zoo_pkl_loads(tmp_path):
    state = _trained(tmp_path)
    path = tmp_path / "model_zoo.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "me"}, f)
    model, report = _loads_as_detectron2_does(tmp_path, path)
    assert torch.equal(model.head.cls_score.weight, state["head.cls_score.weight"])
    assert all(loaded == total for loaded, total in report.parts.values())


def _c2_blobs(model, seed=4) -> dict:
    """The ResNet-18 of ``model`` under Detectron / Caffe2 blob names: ``conv1_w``,
    ``res_conv1_bn_{s,b}``, ``res{2-5}_{i}_branch{2a,2b,1}_{w,bn_s,bn_b}`` (no statistics)."""
    rng = np.random.default_rng(seed)
    branch = {"conv1": "branch2a", "conv2": "branch2b", "shortcut": "branch1"}
    blobs = {}
    for name, value in model.backbone.bottom_up.state_dict().items():
        parts = name.split(".")
        if parts[-1] in ("running_mean", "running_var", "num_batches_tracked"):
            continue
        base = "conv1" if parts[0] == "stem" else f"{parts[0]}_{parts[1]}_{branch[parts[2]]}"
        if parts[-2] == "norm":
            base = "res_conv1" if parts[0] == "stem" else base
            suffix = {"weight": "_bn_s", "bias": "_bn_b"}[parts[-1]]
        else:
            suffix = "_w"
        blobs[base + suffix] = rng.standard_normal(tuple(value.shape)).astype(np.float32)
    return blobs


def test_a_caffe2_blob_pkl_is_name_matched(tmp_path):
    model = _model(tmp_path)
    blobs = _c2_blobs(model)
    blobs["pred_w"] = np.zeros((1000, 512), np.float32)  # the ImageNet classifier: unused
    assert len(blobs) == R18_CONVS * 3 + 1
    path = tmp_path / "R-18-c2.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    prefix = "backbone.bottom_up."
    model, report = _loads_as_detectron2_does(
        tmp_path, path, changed=[prefix + "stem.conv1.weight", prefix + "res5.1.conv2.weight"]
    )
    state = model.state_dict()
    assert torch.equal(state[prefix + "stem.conv1.weight"], torch.from_numpy(blobs["conv1_w"]))
    assert torch.equal(
        state[prefix + "res3.0.shortcut.norm.bias"], torch.from_numpy(blobs["res3_0_branch1_bn_b"])
    )
    assert report.parts["backbone (ResNet)"] == (R18_CONVS * 3, R18_TENSORS)
    assert report.from_scratch() == ["FPN", "detection head"]


def _detectron2_torchvision_names(state) -> dict:
    """torchvision names as detectron2's tools/convert-torchvision-to-d2.py writes them: "stem."
    before names outside the stages, layerN -> res(N+1), bnK -> convK.norm, downsample.0 ->
    shortcut, downsample.1 -> shortcut.norm."""
    out = {}
    for name, value in state.items():
        new = name if "layer" in name else "stem." + name
        for n in (1, 2, 3, 4):
            new = new.replace(f"layer{n}", f"res{n + 1}")
        for n in (1, 2, 3):
            new = new.replace(f"bn{n}", f"conv{n}.norm")
        new = new.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        out[new] = value.numpy()
    return out


def test_torchvision_resnets_converted_by_detectron2_or_by_the_converter_load(tmp_path):
    torch.manual_seed(5)
    resnet18 = torchvision.models.resnet18(weights=None).state_dict()
    resnet18 = {k: v + 0.5 if v.is_floating_point() else v for k, v in resnet18.items()}
    by_detectron2 = tmp_path / "R-18-d2.pkl"
    with open(by_detectron2, "wb") as f:
        data = {"model": _detectron2_torchvision_names(resnet18), "__author__": "torchvision"}
        pickle.dump({**data, "matching_heuristics": True}, f)
    converted, _ = convert_state_dict("torchvision", resnet18)
    by_converter = tmp_path / "R-18-converted.pkl"
    save_detectron2_checkpoint(str(by_converter), converted, "torchvision")

    prefix = "backbone.bottom_up."
    for path in (by_detectron2, by_converter):
        model, report = _loads_as_detectron2_does(tmp_path, path)
        state = model.state_dict()
        # torchvision's layer1.0.conv1 is res2.0.conv1, bn1 the stem's norm.
        assert torch.equal(state[prefix + "res2.0.conv1.weight"], resnet18["layer1.0.conv1.weight"])
        assert torch.equal(
            state[prefix + "stem.conv1.norm.running_var"], resnet18["bn1.running_var"]
        )
        assert report.parts["backbone (ResNet)"] == (R18_TENSORS, R18_TENSORS), path


def test_retinanet_towers_without_norm_load_conv_by_conv(tmp_path):
    # detectron2's RetinaNet head (MODEL.RETINANET.NORM ""): each tower is conv, ReLU, conv,
    # ReLU (convs at 0, 2); ATSS's is conv, GroupNorm, ReLU per layer (convs at 0, 3).
    model = _model(tmp_path, "MODEL.ATSS.NUM_CONVS", "2")
    assert [i for i, m in enumerate(model.head.cls_subnet) if isinstance(m, torch.nn.Conv2d)] == [
        0,
        3,
    ]
    torch.manual_seed(1)
    retinanet = {k: v for k, v in _state(model).items() if not k.startswith("head.")}
    convs = {}
    for tower in ("cls_subnet", "bbox_subnet"):
        for index in (0, 2):
            weight = model.head.cls_subnet[0].weight
            convs[(tower, index)] = torch.randn_like(weight), torch.randn(weight.shape[0])
            retinanet[f"head.{tower}.{index}.weight"] = convs[(tower, index)][0]
            retinanet[f"head.{tower}.{index}.bias"] = convs[(tower, index)][1]
    torch.save({"model": retinanet}, tmp_path / "retinanet.pth")

    checkpointer = SafeDetectionCheckpointer(model)
    checkpointer.load(str(tmp_path / "retinanet.pth"))
    for tower in ("cls_subnet", "bbox_subnet"):
        layers = getattr(model.head, tower)
        for index, layer in ((0, 0), (2, 3)):  # the second conv into the second conv
            assert torch.equal(layers[layer].weight, convs[(tower, index)][0]), (tower, index)
    # ATSS's convs before a norm have no bias (MODEL.ATSS.TOWER_CONV_BIAS False): RetinaNet's
    # are left out, under their own names.
    assert model.head.cls_subnet[0].bias is None
    unmatched = sorted(f"head.{t}.{i}.bias" for t in ("cls_subnet", "bbox_subnet") for i in (0, 2))
    assert sorted(checkpointer.last_load_report.unmatched) == unmatched
