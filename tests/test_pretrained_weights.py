"""
Pretrained starts: the ImageNet backbone each shipped config names, URLs fetched through
detectron2's PathManager into the safe loader, what a partial file leaves from scratch, a
checkpoint with another number of classes, frozen layers without weights, and weights files
that are missing, unreadable or cannot be fetched.
"""

import logging
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import PathHandler
from tiny_setup import REPO, tiny_cfg

from atss_d2.checkpoint import (
    CheckpointReadError,
    SafeDetectionCheckpointer,
    UnsafeCheckpointError,
    WeightsNotFoundError,
)
from atss_d2.engine import ATSSTrainer, merge_config_file

# The ImageNet starts of the references: mmdetection's atss_r{50,101}_fpn_1x_coco.py start from
# torchvision's ResNets (init_cfg "torchvision://resnet50"); the authors' configs from the MSRA
# ResNets (catalog://ImageNetPretrained/MSRA/R-50) and Detectron's FAIR X-101-64x4d.
EXPECTED_WEIGHTS = {
    "COCO-Detection/atss_R_50_FPN_1x.yaml": "detectron2://ImageNetPretrained/torchvision/R-50.pkl",
    "COCO-Detection/atss_R_50_FPN_1x_point.yaml": (
        "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
    ),
    "COCO-Detection/atss_R_101_FPN_1x.yaml": "pretrained/R-101-torchvision.pkl",
    "Original/atss_R_50_FPN_1x.yaml": "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
    "Original/atss_dcnv2_R_50_FPN_1x.yaml": "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
    "Original/atss_R_101_FPN_2x_ms.yaml": "detectron2://ImageNetPretrained/MSRA/R-101.pkl",
    "Original/atss_dcnv2_R_101_FPN_2x_ms.yaml": "detectron2://ImageNetPretrained/MSRA/R-101.pkl",
    "Original/atss_dcnv2_X_101_64x4d_FPN_2x_ms.yaml": "pretrained/X-101-64x4d.pkl",
}
TEST_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/atss-d2-test/"


def _cfg(path):
    from detectron2.config import get_cfg

    from atss_d2 import add_atss_config

    cfg = get_cfg()
    add_atss_config(cfg)
    return merge_config_file(cfg, str(path))


def test_every_reference_config_names_its_imagenet_start():
    shipped = {
        str(p.relative_to(REPO / "configs"))
        for family in ("COCO-Detection", "Original")
        for p in (REPO / "configs" / family).glob("atss_*.yaml")
    }
    assert shipped == set(EXPECTED_WEIGHTS)
    for name, weights in EXPECTED_WEIGHTS.items():
        assert _cfg(REPO / "configs" / name).MODEL.WEIGHTS == weights, name
    # Files detectron2 does not host are named in the config and in docs/MODEL_ZOO.md.
    model_zoo = (REPO / "docs" / "MODEL_ZOO.md").read_text()
    for weights in set(EXPECTED_WEIGHTS.values()):
        if not weights.startswith("detectron2://"):
            assert weights in model_zoo


class _LocalServer(PathHandler):
    """Serves files of a local directory under TEST_PREFIX, copying them into a cache directory
    as a download would; counts the fetches."""

    def __init__(self, served: Path, cache: Path):
        super().__init__()
        self.served, self.cache, self.fetches = served, cache, 0

    def _get_supported_prefixes(self):
        return [TEST_PREFIX]

    def _get_local_path(self, path, force=False, **kwargs):
        name = path[len(TEST_PREFIX) :]
        local = self.cache / name
        if not local.is_file():
            source = self.served / name
            if not source.is_file():
                raise OSError(f"HTTP Error 404: Not Found ({path})")
            self.fetches += 1
            shutil.copy(source, local)
        return str(local)

    def _open(self, path, mode="r", **kwargs):
        return open(self._get_local_path(path), mode)


@pytest.fixture
def server(tmp_path):
    (tmp_path / "served").mkdir()
    (tmp_path / "cache").mkdir()
    handler = _LocalServer(tmp_path / "served", tmp_path / "cache")
    PathManager.register_handler(handler)
    try:
        yield handler
    finally:
        PathManager._path_handlers.pop(TEST_PREFIX, None)


def _backbone_pkl(model, path: Path, seed: int = 1) -> dict:
    """A backbone-only file in the layout of detectron2's ImageNet models (names relative to the
    ResNet, numpy arrays, matched by name heuristics), with values unlike the model's."""
    rng = np.random.default_rng(seed)
    blobs = {
        name: rng.standard_normal(tuple(t.shape)).astype(np.float32)
        for name, t in model.backbone.bottom_up.state_dict().items()
        if not name.endswith("num_batches_tracked")
    }
    with open(path, "wb") as f:
        pickle.dump({"model": blobs, "__author__": "torchvision", "matching_heuristics": True}, f)
    return blobs


def test_detectron2_url_goes_through_pathmanager_and_the_safe_loader(server, tmp_path, caplog):
    cfg = tiny_cfg(tmp_path / "out")
    model = build_model(cfg)
    blobs = _backbone_pkl(model, server.served / "R-18.pkl")
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}

    checkpointer = SafeDetectionCheckpointer(model)
    with caplog.at_level(logging.INFO, logger="atss_d2"):
        checkpointer.load("detectron2://ImageNetPretrained/atss-d2-test/R-18.pkl")
    assert server.fetches == 1
    resnet = model.backbone.bottom_up.state_dict()
    for name, value in blobs.items():
        assert torch.equal(resnet[name], torch.from_numpy(value)), name
    for name, value in model.head.state_dict().items():
        assert torch.equal(value, head_before[name]), name  # not in the file: untouched

    report = checkpointer.last_load_report
    loaded, total = report.parts["backbone (ResNet)"]
    assert loaded == total == len(blobs)
    assert report.from_scratch() == ["FPN", "detection head"]
    assert not report.head_loaded
    assert "starting from scratch: FPN, detection head" in caplog.text

    # A second load is served from the cache.
    SafeDetectionCheckpointer(build_model(cfg)).load(TEST_PREFIX + "R-18.pkl")
    assert server.fetches == 1


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


def test_a_fetched_pickle_that_would_run_code_is_refused(server, tmp_path):
    with open(server.served / "evil.pkl", "wb") as f:
        pickle.dump({"model": {"x": _RunsCode()}, "__author__": "x"}, f)
    model = build_model(tiny_cfg(tmp_path))
    with pytest.raises(UnsafeCheckpointError, match="evil.pkl.*posix.system|evil.pkl.*os.system"):
        SafeDetectionCheckpointer(model).load(
            "detectron2://ImageNetPretrained/atss-d2-test/evil.pkl"
        )


def test_a_url_that_cannot_be_fetched_names_the_url(server, tmp_path):
    model = build_model(tiny_cfg(tmp_path))
    url = "detectron2://ImageNetPretrained/atss-d2-test/absent.pkl"
    with pytest.raises(WeightsNotFoundError, match="absent.pkl.*404.*MODEL.WEIGHTS to its local"):
        SafeDetectionCheckpointer(model).load(url)


def test_missing_and_corrupt_files_are_named(tmp_path):
    model = build_model(tiny_cfg(tmp_path))
    missing = tmp_path / "nowhere" / "model.pth"
    with pytest.raises(WeightsNotFoundError, match=f"{missing}.*docs/MODEL_ZOO.md"):
        SafeDetectionCheckpointer(model).load(str(missing))
    good = tmp_path / "good.pth"
    torch.save({"model": model.state_dict()}, good)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # an interrupted copy
    with pytest.raises(CheckpointReadError, match=f"{corrupt}.*truncated"):
        SafeDetectionCheckpointer(model).load(str(corrupt))


def test_another_number_of_classes_reinitialises_the_classification_layer(tmp_path, caplog):
    coco = build_model(tiny_cfg(tmp_path, "MODEL.ATSS.NUM_CLASSES", "7"))
    with torch.no_grad():
        for p in coco.parameters():
            p.add_(0.5)  # unlike any initialisation
    path = tmp_path / "coco_model.pth"
    torch.save({"model": coco.state_dict()}, path)

    mine = build_model(tiny_cfg(tmp_path, "MODEL.ATSS.NUM_CLASSES", "2"))
    checkpointer = SafeDetectionCheckpointer(mine)
    with caplog.at_level(logging.INFO, logger="atss_d2"):
        checkpointer.load(str(path))
    # Re-initialised as a fresh head: bias -log((1 - 0.01) / 0.01) (the paper's prior 0.01).
    prior_bias = -math.log((1 - 0.01) / 0.01)
    assert torch.allclose(mine.head.cls_score.bias, torch.full((2,), prior_bias))
    assert mine.head.cls_score.weight.std() < 0.02  # normal(std 0.01), not the file's + 0.5
    # Everything else comes from the file.
    assert torch.equal(mine.head.bbox_pred.weight, coco.head.bbox_pred.weight)
    assert torch.equal(mine.head.centerness.bias, coco.head.centerness.bias)
    text = caplog.text
    assert "head.cls_score.weight: the checkpoint has 7 classes, this model 2" in text
    assert "re-initialised" in text
    assert checkpointer.last_load_report.head_loaded


def test_frozen_layers_without_weights_warn_once(tmp_path, caplog):
    from tiny_setup import image_dicts, registered

    with registered("pretrained_tiny", image_dicts(tmp_path / "img")):
        cases = {
            ("MODEL.BACKBONE.FREEZE_AT", "2"): [
                "FREEZE_AT=2 freezes the stem, res2",
                "'FrozenStatsBN' freezes the backbone's normalisation statistics",
            ],
            ("MODEL.BACKBONE.FREEZE_AT", "2", "MODEL.RESNETS.NORM", "FrozenBN"): [
                "FREEZE_AT=2 freezes the stem, res2",
                "FrozenBN",
            ],
            ("MODEL.BACKBONE.FREEZE_AT", "0", "MODEL.RESNETS.NORM", "BN"): [],
        }
        for opts, expected in cases.items():
            caplog.clear()
            cfg = tiny_cfg(tmp_path / "out", "DATASETS.TRAIN", "('pretrained_tiny',)", *opts)
            trainer = ATSSTrainer(cfg)
            with caplog.at_level(logging.WARNING, logger="atss_d2"):
                trainer.resume_or_load(resume=False)
            warnings = [r.getMessage() for r in caplog.records if "stay random" in r.getMessage()]
            if expected:
                assert len(warnings) == 1
                for words in expected:
                    assert words in warnings[0]
            else:
                assert warnings == []


def test_a_converted_torchvision_resnet18_starts_the_cpu_config(tmp_path, caplog):
    """configs/Custom/atss_R_18_FPN_cpu.yaml from torchvision's ResNet-18, as its comment says:
    converted with --config-file, loaded with FrozenBN and FREEZE_AT 2."""
    import torchvision

    from atss_d2.checkpoint import convert_state_dict, save_detectron2_checkpoint

    torch.manual_seed(0)
    resnet18 = torchvision.models.resnet18(weights=None).state_dict()  # torchvision's names
    converted, report = convert_state_dict("torchvision", resnet18)
    assert not report.unrecognized
    path = tmp_path / "R-18-torchvision.pkl"
    save_detectron2_checkpoint(str(path), converted, "torchvision")

    cfg = _cfg(REPO / "configs" / "Custom" / "atss_R_18_FPN_cpu.yaml")
    cfg.merge_from_list(
        [
            "MODEL.WEIGHTS",
            str(path),
            "MODEL.RESNETS.NORM",
            "FrozenBN",
            "MODEL.BACKBONE.FREEZE_AT",
            "2",
        ]
    )
    model = build_model(cfg)
    checkpointer = SafeDetectionCheckpointer(model)
    with caplog.at_level(logging.INFO, logger="atss_d2"):
        checkpointer.load(cfg.MODEL.WEIGHTS)
    loaded, total = checkpointer.last_load_report.parts["backbone (ResNet)"]
    assert loaded == total
    state = model.backbone.bottom_up.state_dict()
    # torchvision layer1.0.conv1 is detectron2's res2.0.conv1; bn1 its norm.
    assert torch.equal(state["res2.0.conv1.weight"], resnet18["layer1.0.conv1.weight"])
    assert torch.equal(state["res3.0.shortcut.weight"], resnet18["layer2.0.downsample.0.weight"])
    assert torch.equal(state["stem.conv1.norm.running_var"], resnet18["bn1.running_var"])
