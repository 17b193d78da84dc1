"""
atss_d2.model_zoo: the shipped configs by name, from the source tree and from an installed
wheel (built here, installed into a temporary target next to the environment, used from
another directory).
"""

import os
import subprocess
import sys
import textwrap

import pytest
from detectron2.config import CfgNode
from omegaconf import DictConfig
from tiny_setup import REPO

from atss_d2 import model_zoo
from atss_d2.modeling import ATSS


def test_every_shipped_config_by_name():
    names = model_zoo.list_configs()
    shipped = sorted(
        str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml")
    )
    assert [n for n in names if n.endswith(".yaml")] == shipped
    for name in shipped:
        assert os.path.samefile(model_zoo.get_config_file(name), REPO / "configs" / name)


def test_get_config_adds_atss_and_merges_the_file():
    cfg = model_zoo.get_config("COCO-Detection/atss_R_101_FPN_1x.yaml")
    assert isinstance(cfg, CfgNode)
    assert cfg.MODEL.META_ARCHITECTURE == "ATSS"
    assert cfg.MODEL.RESNETS.DEPTH == 101  # from the file
    assert cfg.MODEL.ATSS.TOPK == 9  # added by add_atss_config
    with pytest.raises(ValueError, match="hosts no trained weights.*convert_checkpoint"):
        model_zoo.get_config("COCO-Detection/atss_R_101_FPN_1x.yaml", trained=True)
    with pytest.raises(FileNotFoundError, match="'COCO/atss.yaml' is not a shipped.*Shapes/"):
        model_zoo.get_config_file("COCO/atss.yaml")


def test_adding_the_keys_again_keeps_the_merged_values():
    """As after detectron2's get_cfg(): add_atss_config on a model_zoo config changes nothing
    (the Original configs set the authors' behaviour, against the defaults)."""
    from atss_d2 import add_atss_config

    cfg = model_zoo.get_config("Original/atss_R_50_FPN_1x.yaml")
    assert cfg.MODEL.ATSS.LEGACY_PLUS_ONE and cfg.MODEL.ATSS.FPN.P7_RELU
    before = cfg.dump()
    add_atss_config(cfg)
    assert cfg.dump() == before


def test_get_builds_the_model():
    model = model_zoo.get("Shapes/atss_R_18_FPN_shapes.yaml", device="cpu")
    assert isinstance(model, ATSS) and model.training
    assert model.head.num_classes == 3


def test_lazy_configs_by_name():
    configs = REPO / "configs"
    shipped = sorted(
        str(p.relative_to(configs))
        for p in configs.rglob("*.py")
        if p.relative_to(configs).parts[0] != "common"  # pieces the .py configs import
    )
    names = model_zoo.list_configs()
    assert "COCO-Detection/atss_R_50_FPN_1x.py" in shipped
    assert [n for n in names if n.endswith(".py")] == shipped
    assert not [n for n in names if n.startswith("common/")]
    cfg = model_zoo.get_config("COCO-Detection/atss_R_50_FPN_1x.py")
    assert isinstance(cfg, DictConfig) and cfg.model.backbone.bottom_up.stages.depth == 50
    assert cfg.train.init_checkpoint == "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
    model = model_zoo.get("Shapes/atss_R_18_FPN_shapes.py", device="cpu")
    assert isinstance(model, ATSS) and model.training
    assert model.head.num_classes == 3 and model.pixel_mean.device.type == "cpu"


def test_an_installed_wheel_finds_its_configs_from_anywhere(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("atss_d2-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    script = textwrap.dedent(f"""
        import os, atss_d2
        from atss_d2 import model_zoo
        assert atss_d2.__file__.startswith({str(site)!r}), atss_d2.__file__
        path = model_zoo.get_config_file("COCO-Detection/atss_R_50_FPN_1x.yaml")
        assert path.startswith({str(site)!r}) and os.path.isfile(path), path
        cfg = model_zoo.get_config("Original/atss_dcnv2_X_101_64x4d_FPN_2x_ms.yaml")
        assert cfg.MODEL.RESNETS.NUM_GROUPS == 64 and cfg.MODEL.ATSS.DCN_IN_TOWER  # _BASE_ chain
        model = model_zoo.get("Shapes/atss_R_18_FPN_shapes.yaml", device="cpu")
        lazy = model_zoo.get("Shapes/atss_R_18_FPN_shapes.py", device="cpu")  # ../common
        assert type(lazy) is type(model)
        print("OK", type(model).__name__, len(model_zoo.list_configs()))
        """)
    env = dict(os.environ, PYTHONPATH=str(site), PYTHONWARNINGS="ignore")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK ATSS" in result.stdout

    # The console command: train_net.py's flags, shipped configs by name, its errors.
    train = site / "bin" / "atss-train"
    result = subprocess.run([str(train), "--help"], cwd=elsewhere, env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0 and "--voc-dataset" in result.stdout, result.stderr[-2000:]
    result = subprocess.run(
        [str(train), "--config-file", "COCO-Detection/atss_R_50_FPN_1x.yaml", "--eval-only",
         "MODEL.DEVICE", "cpu", "DATASETS.TEST", "('no_such_set',)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert "atss-train: config error: DATASETS.TEST names dataset 'no_such_set'" in result.stderr
    demo = site / "bin" / "atss-demo"
    result = subprocess.run([str(demo), "--help"], cwd=elsewhere, env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0 and "--video-input" in result.stdout, result.stderr[-2000:]
