"""
The LazyConfig (.py) configs against their YAML twins, and the LazyConfig flow of train_net.py.

The R-50 COCO config and the Shapes config are each built both ways on the CPU: same modules
(types, plain attributes), same parameters (names, shapes, dtypes, requires_grad), and, with
the YAML model's weights loaded into the lazy one, the same detections on a random image and
the same training losses on a padded batch of two. The other sections (data, optimizer, LR
schedule, train) are compared with the YAML keys they stand for, the schedules also with values
worked out by hand. Then overrides, and one tiny training run, evaluation and ``--eval-only``
through train_net.py in subprocesses.
"""

import copy
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from omegaconf import DictConfig, ListConfig, OmegaConf
from tiny_setup import CLASSES, REPO, image_dicts, one_torch_thread, write_coco_json
from torch import nn

from atss_d2 import ATSS, ATSSHead, add_atss_config, train_net
from atss_d2.data.mapper import ATSSDatasetMapper
from atss_d2.engine.config import ConfigError
from atss_d2.engine.lazy import apply_overrides, is_lazy_config, load_lazy_config
from atss_d2.solver import build_optimizer

PAIRS = ["COCO-Detection/atss_R_50_FPN_1x", "Shapes/atss_R_18_FPN_shapes"]
# A threshold of 0 keeps every (anchor, class) pair of the randomly initialised head (whose
# class probabilities start at the 0.01 prior), so that detections can be compared.
SCORE_THRESH = 0.0
# Attributes every nn.Module has: what remains are a module's own settings.
_MODULE_INTERNALS = set(vars(nn.Module()))


def _yaml_cfg(name):
    cfg = get_cfg()
    add_atss_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / f"{name}.yaml"))
    return cfg


def _lazy_cfg(name):
    return LazyConfig.load(str(REPO / "configs" / f"{name}.py"))


# The outputs are compared on a ResNet-18 with a 64-channel FPN and one conv per tower in place
# of the R-50 (the same change made in both flavours, as their users would make it): a few
# times faster on the CPU, with the builders' code paths unchanged. The full R-50 is compared
# module by module and parameter by parameter.
_SMALL_YAML = [
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.FPN.OUT_CHANNELS", "64",
    "MODEL.ATSS.NUM_CONVS", "1",
]  # fmt: skip
_SMALL_LAZY = [
    "model.backbone.bottom_up.stages.depth=18",
    "model.backbone.out_channels=64",
    "model.head.conv_dims=[64]",
]


def _built_yaml(name, small=False):
    cfg = _yaml_cfg(name)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.ATSS.SCORE_THRESH_TEST", str(SCORE_THRESH)])
    if small:
        cfg.merge_from_list(_SMALL_YAML)
    return cfg, build_model(cfg)


def _built_lazy(name, small=False):
    cfg = apply_overrides(_lazy_cfg(name), [f"model.test_score_thresh={SCORE_THRESH}"])
    if small:
        apply_overrides(cfg, _SMALL_LAZY)
        del cfg.model.backbone.bottom_up.stages.stride_in_1x1  # BasicBlock takes none
        cfg.model.head.input_shape = [ShapeSpec(channels=64)] * len(cfg.model.head_in_features)
    return cfg, instantiate(cfg.model).to("cpu")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small models on a shared CPU: one thread is faster (tiny_setup.one_torch_thread)."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module", params=PAIRS)
def pair(request):
    """(name, (YAML cfg, YAML model), (lazy cfg, lazy model)), both with SCORE_THRESH."""
    return request.param, _built_yaml(request.param), _built_lazy(request.param)


@pytest.fixture(scope="module", params=PAIRS)
def small_pair(request):
    """As ``pair``, the COCO config with the small backbone and head of ``_SMALL_YAML``."""
    small = request.param.startswith("COCO")
    return (
        request.param,
        _built_yaml(request.param, small=small),
        _built_lazy(request.param, small=small),
    )


def _plain(value):
    """Lists, tuples and OmegaConf lists as lists, recursively, for comparisons."""
    if isinstance(value, (list, tuple, ListConfig)):
        return [_plain(v) for v in value]
    if isinstance(value, (dict, DictConfig)):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _is_plain(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_is_plain(v) for v in value.values())
    return value is None or isinstance(value, (bool, int, float, str))


def _settings(module):
    """A module's type and its own attributes of plain types (sizes, flags, names)."""
    own = {k: _plain(v) for k, v in vars(module).items() if k not in _MODULE_INTERNALS}
    return type(module), {k: v for k, v in own.items() if _is_plain(v)}


def test_configs_are_lazy_configs():
    assert is_lazy_config("configs/COCO-Detection/atss_R_50_FPN_1x.py")
    assert not is_lazy_config("configs/COCO-Detection/atss_R_50_FPN_1x.yaml")
    for name in PAIRS:
        cfg = _lazy_cfg(name)
        assert set(cfg) == {"model", "dataloader", "optimizer", "lr_multiplier", "train"}
        assert set(cfg.dataloader) == {"train", "test", "evaluator"}


def test_same_modules_and_parameters(pair):
    name, (_, yaml_model), (_, lazy_model) = pair
    assert isinstance(lazy_model, ATSS)
    yaml_modules, lazy_modules = dict(yaml_model.named_modules()), dict(lazy_model.named_modules())
    assert list(yaml_modules) == list(lazy_modules)
    for key in yaml_modules:
        assert _settings(lazy_modules[key]) == _settings(yaml_modules[key]), key
    yaml_state, lazy_state = yaml_model.state_dict(), lazy_model.state_dict()
    assert list(yaml_state) == list(lazy_state)
    for key, value in yaml_state.items():
        assert (lazy_state[key].shape, lazy_state[key].dtype) == (value.shape, value.dtype), key
    grads = {k: p.requires_grad for k, p in yaml_model.named_parameters()}
    assert grads == {k: p.requires_grad for k, p in lazy_model.named_parameters()}
    if name.startswith("COCO"):
        # FREEZE_AT 2: stem and res2 frozen (their norms FrozenBN: buffers, no parameters);
        # after them, BatchNorm statistics frozen but weight and bias trained.
        assert not grads["backbone.bottom_up.stem.conv1.weight"]
        assert not grads["backbone.bottom_up.res2.0.conv1.weight"]
        assert "backbone.bottom_up.res2.0.conv1.norm.weight" not in grads
        assert grads["backbone.bottom_up.res3.0.conv1.norm.weight"]
        assert grads["backbone.bottom_up.res5.2.conv3.weight"]
        assert sum(v.numel() for v in lazy_state.values()) > 30_000_000  # a full ResNet-50
    else:
        assert all(grads.values())  # from scratch: nothing frozen


def test_parts_built_without_from_config_match(pair):
    _, (_, yaml_model), (_, lazy_model) = pair
    for part in ("box_coder", "matcher"):
        assert type(getattr(lazy_model, part)) is type(getattr(yaml_model, part))
        assert vars(getattr(lazy_model, part)) == vars(getattr(yaml_model, part)), part
    yaml_anchors, lazy_anchors = yaml_model.anchor_generator, lazy_model.anchor_generator
    assert (lazy_anchors.strides, lazy_anchors.offset) == (
        yaml_anchors.strides,
        yaml_anchors.offset,
    )
    for a, b in zip(yaml_anchors.cell_anchors, lazy_anchors.cell_anchors, strict=True):
        assert torch.equal(a, b)


def test_the_lazy_model_spells_out_every_argument_of_from_config(pair):
    """Every argument that ATSS.from_config and ATSSHead.from_config derive from the YAML is
    written in the .py config with the same value (so new constructor arguments must be
    added to the .py configs too)."""
    _, (yaml_cfg, yaml_model), (lazy_cfg, _) = pair
    kwargs = ATSS.from_config(yaml_cfg)
    lazy = lazy_cfg.model
    assert set(kwargs) == set(lazy) - {"_target_"}
    for key in set(kwargs) - {"backbone", "head", "anchor_generator", "box_coder", "matcher"}:
        assert _plain(lazy[key]) == _plain(kwargs[key]), f"model.{key}"
    shapes = [yaml_model.backbone.output_shape()[f] for f in yaml_cfg.MODEL.ATSS.IN_FEATURES]
    head_kwargs = ATSSHead.from_config(yaml_cfg, shapes)
    assert set(head_kwargs) == set(lazy.head) - {"_target_"}
    for key in set(head_kwargs) - {"input_shape"}:
        assert _plain(lazy.head[key]) == _plain(head_kwargs[key]), f"model.head.{key}"
    assert [s.channels for s in lazy.head.input_shape] == [s.channels for s in shapes]


def _image(seed, height, width):
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed)) * 255


def test_same_detections_with_the_same_weights(small_pair):
    name, (yaml_cfg, yaml_model), (_, lazy_model) = small_pair
    if name.startswith("COCO"):
        assert lazy_model.backbone.bottom_up.res5[0].conv1.in_channels == 256  # ResNet-18
    lazy_model.load_state_dict(yaml_model.state_dict())
    inputs = [{"image": _image(1, 200, 250)}]
    with torch.no_grad():
        expected = yaml_model.eval()(inputs)[0]["instances"]
        got = lazy_model.eval()(inputs)[0]["instances"]
    # Threshold 0 keeps far more than DETECTIONS_PER_IMAGE pairs, so NMS leaves the maximum.
    assert len(expected) == yaml_cfg.TEST.DETECTIONS_PER_IMAGE
    assert torch.equal(got.pred_classes, expected.pred_classes)
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.scores, expected.scores, rtol=0, atol=1e-5)


def test_same_training_losses_with_the_same_weights(small_pair):
    _, (_, yaml_model), (_, lazy_model) = small_pair
    lazy_model.load_state_dict(yaml_model.state_dict())
    # Two sizes: the padded batch has anchors that are valid for one image only.
    batch = []
    for seed, (h, w), boxes, classes in [
        (2, (200, 250), [[20.0, 30.0, 120.0, 150.0], [150.0, 40.0, 240.0, 100.0]], [0, 2]),
        (3, (160, 224), [[10.0, 10.0, 90.0, 70.0]], [1]),
    ]:
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.tensor(boxes))
        instances.gt_classes = torch.tensor(classes)
        batch.append({"image": _image(seed, h, w), "instances": instances})
    losses = []
    for model in (yaml_model, lazy_model):
        with EventStorage(), torch.no_grad():
            losses.append(model.train()(batch))
    expected, got = losses
    assert set(got) == {"loss_cls", "loss_box_reg", "loss_centerness"}
    for key in expected:
        assert torch.isfinite(expected[key]) and expected[key] > 0, key
        torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-6)


# (YAML key, lazy key, how the lazy value reads in YAML)
_SAME_SETTINGS = [
    ("DATASETS.TRAIN", "dataloader.train.dataset.names", lambda v: (v,)),
    ("DATASETS.TEST", "dataloader.test.dataset.names", lambda v: (v,)),
    ("DATALOADER.FILTER_EMPTY_ANNOTATIONS", "dataloader.train.dataset.filter_empty", None),
    ("DATALOADER.ASPECT_RATIO_GROUPING", "dataloader.train.aspect_ratio_grouping", None),
    ("DATALOADER.NUM_WORKERS", "dataloader.train.num_workers", None),
    ("DATALOADER.NUM_WORKERS", "dataloader.test.num_workers", None),
    ("SOLVER.IMS_PER_BATCH", "dataloader.train.total_batch_size", None),
    ("SOLVER.MAX_ITER", "train.max_iter", None),
    ("SOLVER.CHECKPOINT_PERIOD", "train.checkpointer.period", None),
    ("SOLVER.AMP.ENABLED", "train.amp.enabled", None),
    ("TEST.EVAL_PERIOD", "train.eval_period", None),
    ("MODEL.WEIGHTS", "train.init_checkpoint", None),
    ("MODEL.DEVICE", "train.device", None),
    ("OUTPUT_DIR", "train.output_dir", None),
    ("SEED", "train.seed", None),
]


@pytest.mark.parametrize("name", PAIRS)
def test_data_and_train_sections_match_the_yaml(name):
    yaml_cfg, lazy_cfg = _yaml_cfg(name), _lazy_cfg(name)
    for yaml_key, lazy_key, convert in _SAME_SETTINGS:
        value = OmegaConf.select(lazy_cfg, lazy_key)
        expected = yaml_cfg
        for part in yaml_key.split("."):
            expected = expected[part]
        assert _plain((convert or (lambda v: v))(value)) == _plain(expected), lazy_key
    for is_train, key in ((True, "train"), (False, "test")):
        expected = ATSSDatasetMapper(yaml_cfg, is_train=is_train)
        got = instantiate(lazy_cfg.dataloader[key].mapper)
        assert _settings(got) == _settings(expected), key
        assert [_settings(a) for a in got.augmentations.augs] == [
            _settings(a) for a in expected.augmentations.augs
        ], key
        assert got.num_classes == yaml_cfg.MODEL.ATSS.NUM_CLASSES  # ${model.num_classes}
    assert lazy_cfg.dataloader.evaluator.dataset_name == yaml_cfg.DATASETS.TEST[0]
    assert lazy_cfg.dataloader.evaluator.output_dir == f"{yaml_cfg.OUTPUT_DIR}/inference"


def _groups_by_name(optimizer, model):
    """parameter name -> its group's settings (all but the parameter list)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        names[id(p)]: {k: v for k, v in group.items() if k != "params"}
        for group in optimizer.param_groups
        for p in group["params"]
    }


def test_optimizers_match_the_yaml(pair):
    name, (yaml_cfg, yaml_model), (lazy_cfg, _) = pair
    yaml_model, lazy_model = copy.deepcopy(yaml_model), copy.deepcopy(yaml_model)
    expected = build_optimizer(yaml_cfg, yaml_model)
    lazy_cfg.optimizer.params.model = lazy_model
    got = instantiate(lazy_cfg.optimizer)
    assert type(got).__mro__[1:] == type(expected).__mro__[1:]  # SGD, or AdamW + clipping
    groups = _groups_by_name(got, lazy_model)
    assert groups == _groups_by_name(expected, yaml_model)
    assert len(groups) == sum(p.requires_grad for p in lazy_model.parameters())
    norm = "backbone.bottom_up.res3.0.conv1.norm.weight"
    if name.startswith("COCO"):
        assert type(got) is torch.optim.SGD
        # mmdetection decays every parameter, norms included.
        assert groups[norm]["weight_decay"] == groups["head.cls_score.weight"]["weight_decay"]
        assert groups[norm]["lr"] == 0.01 and groups[norm]["weight_decay"] == 1e-4
    else:
        assert isinstance(got, torch.optim.AdamW) and type(got) is not torch.optim.AdamW
        assert groups[norm]["weight_decay"] == 0.0 and groups["head.cls_score.weight"][
            "weight_decay"
        ] == pytest.approx(0.05)
        # CLIP_GRADIENTS norm 1.0 per parameter: step() leaves every gradient's norm <= 1.
        for optimizer, model in ((expected, yaml_model), (got, lazy_model)):
            for p in model.parameters():
                p.grad = torch.full_like(p, 1000.0)
            optimizer.step()
            # (float32 rounding of the norms of the largest tensors, ~1e-3, aside: unclipped,
            # the smallest would be 1000.)
            assert max(p.grad.norm() for p in model.parameters()) <= 1.01


def _shapes_warmup_at(iteration):
    """Shapes: linear warmup over 50 of 840 iterations from 0.01 x the cosine's start (1) to
    the cosine's value at iteration 50, the cosine going from 1 to 0 over the run."""
    cosine = 0.5 * (1 + math.cos(math.pi * 50 / 840))
    return 0.01 + (cosine - 0.01) * iteration / 50


# name -> (iteration, multiplier worked out from the YAML's SOLVER keys)
_SCHEDULE = {
    # WARMUP 500 iterations linear from 0.001, x0.1 at 60000 and at 80000, 90000 in all.
    "COCO-Detection/atss_R_50_FPN_1x": [
        (0, 0.001),
        (250, 0.001 + 0.999 * 0.5),
        (500, 1.0),
        (59999, 1.0),
        (60000, 0.1),
        (80000, 0.01),
        (89999, 0.01),
    ],
    "Shapes/atss_R_18_FPN_shapes": [
        (0, 0.01),
        (25, _shapes_warmup_at(25)),
        (50, 0.5 * (1 + math.cos(math.pi * 50 / 840))),
        (420, 0.5),
        (630, 0.5 * (1 + math.cos(math.pi * 0.75))),
    ],
}


@pytest.mark.parametrize("name", PAIRS)
def test_lr_schedules_match_the_yaml(name):
    yaml_cfg, lazy_cfg = _yaml_cfg(name), _lazy_cfg(name)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    expected = build_lr_scheduler(yaml_cfg, optimizer)._multiplier
    got = instantiate(lazy_cfg.lr_multiplier)
    max_iter = yaml_cfg.SOLVER.MAX_ITER
    for iteration, value in _SCHEDULE[name]:
        where = iteration / max_iter
        assert got(where) == pytest.approx(value, rel=1e-9, abs=1e-12), iteration
        assert got(where) == pytest.approx(expected(where), rel=1e-12, abs=1e-15), iteration


def test_overrides_apply_and_interpolations_follow():
    cfg = _lazy_cfg("Shapes/atss_R_18_FPN_shapes")
    apply_overrides(
        cfg,
        [
            "train.max_iter=7",
            "model.num_classes=5",
            "model.pixel_std=[1.0,2.0,3.0]",
            "dataloader.train.total_batch_size=4",
            "train.output_dir=/tmp/somewhere",
        ],
    )
    assert cfg.train.max_iter == 7 and cfg.dataloader.train.total_batch_size == 4
    assert list(cfg.model.pixel_std) == [1.0, 2.0, 3.0]
    # "${..num_classes}" and "${model.num_classes}" follow the overridden value.
    assert cfg.model.head.num_classes == 5
    assert instantiate(cfg.dataloader.train.mapper).num_classes == 5
    assert cfg.dataloader.evaluator.output_dir == "/tmp/somewhere/inference"
    head = instantiate(cfg.model.head)
    assert head.cls_score.out_channels == 5  # one anchor x 5 classes


def test_overrides_that_cannot_apply_are_config_errors(tmp_path):
    path = str(REPO / "configs" / "Shapes" / "atss_R_18_FPN_shapes.py")
    with pytest.raises(ConfigError, match=r"no key train\.max_iters; did you mean train\.max_iter"):
        load_lazy_config(path, ["train.max_iters=3"])
    with pytest.raises(ConfigError, match="key=value overrides.*KEY VALUE pairs are for .yaml"):
        load_lazy_config(path, ["SOLVER.MAX_ITER", "3"])
    with pytest.raises(ConfigError, match="Config file not found"):
        load_lazy_config(str(tmp_path / "missing.py"))
    # A new argument of a call is fine: the call takes it (detectron2's loader: a sampler).
    cfg = load_lazy_config(path, ["dataloader.train.sampler=null"])
    assert "sampler" in cfg.dataloader.train and cfg.dataloader.train.sampler is None
    # One the call does not take is refused before anything is built, with the close names.
    with pytest.raises(
        ConfigError,
        match=r"model\.head\.num_convs is neither in the config nor an argument of ATSSHead "
        r"\(its arguments: input_shape, num_classes, .*\); did you mean model\.head\.num_classes",
    ):
        load_lazy_config(path, ["model.head.num_convs=3"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.test_score_thresh=2.0", "test_score_thresh (MODEL.ATSS.SCORE_THRESH_TEST) must "
         "be in [0, 1], got 2.0"),
        ("model.test_nms_thresh=-0.1", "test_nms_thresh (MODEL.ATSS.NMS_THRESH_TEST) must be in "
         "[0, 1], got -0.1"),
        ("model.max_detections_per_image=0", "max_detections_per_image "
         "(TEST.DETECTIONS_PER_IMAGE) must be >= 1, got 0"),
        ("model.matcher.topk=0", "ATSSMatcher: topk must be >= 1, got 0"),
        ("model.head.norm=GroupNorm", "norm (MODEL.ATSS.NORM) must be one of ['', 'GN', "),
    ],
)  # fmt: skip
def test_model_values_out_of_range_are_config_errors(override, message):
    """The values validate_config checks for YAML, here checked when the model is built."""
    from atss_d2.engine.lazy import _build_model

    path = str(REPO / "configs" / "Shapes" / "atss_R_18_FPN_shapes.py")
    cfg = load_lazy_config(path, [override, "train.device=cpu"])
    with pytest.raises(ConfigError) as info:
        _build_model(cfg)
    assert str(info.value).startswith("model: " + message)


# ---------------------------------------------------------------------------------------------
# train_net.py with a .py config, in subprocesses
# ---------------------------------------------------------------------------------------------


def _run(args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, str(REPO / "train_net.py"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def _copypaste(log):
    return re.findall(r"copypaste: (.*)", log)


def test_train_evaluate_and_eval_only_through_train_net(tmp_path):
    root = tmp_path / "data"
    dicts = image_dicts(root / "images", num_images=4)  # 64x80, two classes
    name = "lazy_tiny_train_net"
    dataset = ["--coco-dataset", name, write_coco_json(root / "train.json", dicts)]
    dataset.append(str(root / "images"))
    config = ["--config-file", "Shapes/atss_R_18_FPN_shapes.py"]  # a shipped name
    opts = [
        f"dataloader.train.dataset.names={name}",
        f"dataloader.test.dataset.names={name}",
        "model.num_classes=2",
        "model.test_score_thresh=0.0",
        "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        # The images at their own size (list items by index).
        "dataloader.train.mapper.augmentations.0.short_edge_length=[64]",
        "dataloader.train.mapper.augmentations.0.max_size=80",
        "dataloader.test.mapper.augmentations.0.short_edge_length=64",
        "dataloader.test.mapper.augmentations.0.max_size=80",
        "train.max_iter=3",
    ]
    out = tmp_path / "train"
    trained = _run([*config, *dataset, *opts, f"train.output_dir={out}"])
    assert trained.returncode == 0, trained.stderr[-3000:]
    lines = _copypaste(trained.stdout + trained.stderr)
    assert lines[:2] == ["Task: bbox", "AP,AP50,AP75,APs,APm,APl"] and len(lines) == 3
    # train.max_iter=3: iterations 0, 1, 2, then model_final.pth, tagged as the last.
    metrics = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    assert [m["iteration"] for m in metrics if "total_loss" in m][-1] == 2
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    checkpoint = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["iteration"] == 2 and {"model", "optimizer", "trainer"} <= set(checkpoint)
    assert checkpoint["model"]["head.cls_score.weight"].shape[0] == 2  # model.num_classes=2
    assert checkpoint["thing_classes"] == list(CLASSES)  # the json's categories, as YAML runs
    assert not list(out.glob("*.tmp"))  # written atomically
    saved = LazyConfig.load(str(out / "config.yaml"))
    assert saved.train.max_iter == 3 and saved.model.num_classes == 2
    assert saved.dataloader.test.mapper.augmentations[0].max_size == 80
    assert (out / "inference" / "coco_instances_results.json").is_file()

    # --eval-only of model_final.pth (in this process: no second start-up): the same AP.
    args = train_net.get_parser().parse_args(
        [*config, *dataset, "--eval-only", *opts, f"train.init_checkpoint={out}/model_final.pth",
         f"train.output_dir={tmp_path / 'eval'}"]
    )  # fmt: skip
    # The config.yaml the run saved, reused as detectron2 users do (--config-file
    # OUTPUT_DIR/config.yaml): the LazyConfig flow again, not a yacs config.
    saved_args = train_net.get_parser().parse_args(
        ["--config-file", str(out / "config.yaml"), *dataset, "--eval-only",
         f"train.init_checkpoint={out}/model_final.pth",
         f"train.output_dir={tmp_path / 'eval_saved'}"]
    )  # fmt: skip
    try:
        results = train_net.main(args)
        results_saved = train_net.main(saved_args)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    printed = dict(zip(lines[1].split(","), lines[2].split(",")))
    assert f"{results['bbox']['AP']:.4f}" == printed["AP"]
    assert f"{results['bbox']['AP50']:.4f}" == printed["AP50"]
    assert f"{results_saved['bbox']['AP']:.4f}" == printed["AP"]
    log = (tmp_path / "eval" / "log.txt").read_text()
    assert f"Tensors loaded from {out}/model_final.pth" in log
    # 2 towers x 2 convs x (weight, GN weight, GN bias), 3 predictors x (weight, bias), 3 scales
    assert "detection head 21/21" in log
