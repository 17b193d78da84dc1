"""
The shipped configs as a model zoo, in the shape of ``detectron2.model_zoo``:

    from atss_d2 import model_zoo
    path = model_zoo.get_config_file("COCO-Detection/atss_R_50_FPN_1x.yaml")
    cfg = model_zoo.get_config("COCO-Detection/atss_R_50_FPN_1x.yaml")   # MODEL.ATSS added
    model = model_zoo.get("Shapes/atss_R_18_FPN_shapes.yaml")             # built, weights loaded
    lazy = model_zoo.get_config("COCO-Detection/atss_R_50_FPN_1x.py")     # a LazyConfig
    model = model_zoo.get("Shapes/atss_R_18_FPN_shapes.py")               # instantiated

The configs live in the repository's ``configs/``; an installed wheel carries a copy inside the
package (``atss_d2/configs``, written by ``setup.py``), so these work from any directory.
atss_d2 hosts no trained weights: ``trained=True`` explains how to get them.
"""

from pathlib import Path
from typing import List, Optional

import torch
from detectron2.config import CfgNode, LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model

from .config import add_atss_config

__all__ = ["get", "get_config", "get_config_file", "list_configs"]

_PACKAGED = Path(__file__).resolve().parent / "configs"  # in an installed wheel
_REPOSITORY = Path(__file__).resolve().parents[1] / "configs"  # in a source checkout


def _config_root() -> Path:
    return _PACKAGED if _PACKAGED.is_dir() else _REPOSITORY


# LazyConfig pieces that the .py configs import (models, data, optimizers...), no configs alone.
_COMMON = "common"


def list_configs() -> List[str]:
    """Every shipped config, as the relative names the functions below take (not the pieces
    under ``common/`` that the ``.py`` configs are made of)."""
    root = _config_root()
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.suffix in (".yaml", ".py") and p.relative_to(root).parts[0] != _COMMON
    )


def get_config_file(config_path: str) -> str:
    """
    The path of a shipped config, e.g. ``"COCO-Detection/atss_R_50_FPN_1x.yaml"``.

    Raises:
        FileNotFoundError: no such config (the message lists the shipped ones).
    """
    path = _config_root() / config_path
    if not path.is_file():
        raise FileNotFoundError(
            f"{config_path!r} is not a shipped atss_d2 config; available: "
            + ", ".join(list_configs())
        )
    return str(path)


def get_config(config_path: str, trained: bool = False):
    """
    A shipped config: a ``CfgNode`` with ``MODEL.ATSS`` added (``.yaml``) or a LazyConfig
    (``.py``). Its ``MODEL.WEIGHTS`` is what the config names (an ImageNet backbone for the
    reference configs).

    Args:
        trained: atss_d2 hosts no trained weights, so True raises, naming how to get them.
    """
    if trained:
        raise ValueError(
            "atss_d2 hosts no trained weights: convert mmdetection's or the authors' published "
            "ATSS checkpoint with tools/convert_checkpoint.py (docs/MODEL_ZOO.md) and set "
            "MODEL.WEIGHTS to the result"
        )
    path = get_config_file(config_path)
    if path.endswith(".py"):
        return LazyConfig.load(path)
    from .engine.config import merge_config_file  # errors naming the key and the file

    cfg = get_cfg()
    add_atss_config(cfg)
    return merge_config_file(cfg, path)


def get(config_path: str, trained: bool = False, device: Optional[str] = None) -> torch.nn.Module:
    """
    The model of a shipped config, built, with the config's ``MODEL.WEIGHTS`` loaded (safely:
    :class:`~atss_d2.checkpoint.SafeDetectionCheckpointer`), in training mode, on ``device``
    (default: the config's, or the CPU where CUDA is missing).
    """
    cfg = get_config(config_path, trained)
    if device is None and not torch.cuda.is_available():
        device = "cpu"
    if isinstance(cfg, CfgNode):
        if device is not None:
            cfg.MODEL.DEVICE = device
        model = build_model(cfg)
        weights = cfg.MODEL.WEIGHTS
    else:
        model = instantiate(cfg.model)
        device = device or cfg.get("train", {}).get("device")
        if device is not None:
            model = model.to(device)
        weights = cfg.get("train", {}).get("init_checkpoint", "")
    if weights:
        from .checkpoint import SafeDetectionCheckpointer

        SafeDetectionCheckpointer(model).load(weights)
    return model
