"""
Configs as detectron2 users pass them around: the ``config.yaml`` a run saves in its output
directory is told apart by flavour (a yacs dump from ``cfg.dump()``, a LazyConfig dump from
``LazyConfig.save``); ``SOLVER.IMS_PER_BATCH`` is checked against the processes after
detectron2's ``SOLVER.REFERENCE_WORLD_SIZE`` rescaling, before ``--num-gpus N`` starts them;
``TEST.EXPECTED_RESULTS`` is checked before the run and verified after ``--eval-only``.
"""

import sys

import pytest
import torch
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog, MetadataCatalog
from tiny_setup import REPO, TINY_OPTS, image_dicts, one_torch_thread, tiny_cfg, write_coco_json

from atss_d2 import model_zoo
from atss_d2.engine import ConfigError, lazy
from atss_d2.engine.config import check_expected_results, check_solver_batch


def test_saved_configs_are_told_apart_by_flavour(tmp_path):
    yacs = tmp_path / "yacs" / "config.yaml"
    yacs.parent.mkdir()
    yacs.write_text(tiny_cfg(tmp_path).dump())  # what default_setup writes for a YAML run
    lazy_saved = tmp_path / "lazy" / "config.yaml"
    lazy_saved.parent.mkdir()
    LazyConfig.save(model_zoo.get_config("Shapes/atss_R_18_FPN_shapes.py"), str(lazy_saved))

    assert not lazy.is_lazy_config(str(yacs))
    assert not lazy.is_lazy_config(str(REPO / "configs" / "Base-ATSS.yaml"))
    assert lazy.is_lazy_config(str(REPO / "configs" / "Shapes" / "atss_R_18_FPN_shapes.py"))
    assert lazy.is_lazy_config(str(lazy_saved))
    # The saved LazyConfig loads back with its values and takes key=value overrides.
    cfg = lazy.load_lazy_config(str(lazy_saved), ["train.max_iter=7"])
    assert cfg.train.max_iter == 7 and cfg.model.num_classes == 3
    assert cfg.optimizer.optimizer_class is torch.optim.AdamW  # a python tag in the file


@pytest.mark.parametrize(
    "batch, reference, world, message",
    [
        (4, 0, 2, None),
        (3, 0, 2, "SOLVER.IMS_PER_BATCH 3 is not divisible by the 2 processes"),
        # detectron2 rescales a batch of 16 for 8 processes to 6 for 3 (2 per process).
        (16, 8, 3, None),
        (3, 3, 2, None),  # 1 per process: 2 on 2 processes
        (12, 8, 2, "not divisible by SOLVER.REFERENCE_WORLD_SIZE 8"),
        (3, 2, 2, "SOLVER.IMS_PER_BATCH 3 is not divisible by the 2 processes"),
    ],
)
def test_the_batch_divides_among_the_processes_after_rescaling(
    tmp_path, batch, reference, world, message
):
    cfg = tiny_cfg(
        tmp_path, "SOLVER.IMS_PER_BATCH", str(batch), "SOLVER.REFERENCE_WORLD_SIZE", str(reference)
    )
    if message is None:
        check_solver_batch(cfg, world)
    else:
        with pytest.raises(ConfigError, match=message):
            check_solver_batch(cfg, world)


def test_an_odd_batch_stops_before_the_processes_start(monkeypatch):
    from atss_d2 import train_net

    launched = []
    monkeypatch.setattr(train_net, "launch", lambda *a, **k: launched.append(a))
    monkeypatch.setattr(sys, "argv", ["train_net.py"])
    config = ["--config-file", str(REPO / "configs" / "Base-ATSS.yaml"), "--num-gpus", "2"]
    opts = ["MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "3"]
    with pytest.raises(SystemExit) as e:
        train_net.cli(config + opts)
    assert e.value.code == (
        "train_net.py: config error: SOLVER.IMS_PER_BATCH 3 is not divisible by the 2 processes "
        "(--num-gpus x --num-machines)"
    )
    assert launched == []
    # Evaluation splits no training batch; rescaled for 3 processes, 3 is 2 on 2.
    train_net.cli(config + ["--eval-only"] + opts)
    train_net.cli(config + opts + ["SOLVER.REFERENCE_WORLD_SIZE", "3"])
    assert len(launched) == 2


@pytest.mark.parametrize(
    "expected, tests, message",
    [
        ([["bbox", "AP", 38.5, 0.2]], ("a",), None),
        ([["bbox", "AP", 38.5]], ("a",), "entry ['bbox', 'AP', 38.5] is not [task, metric"),
        ([["bbox", "AP", "38.5", 0.2]], ("a",), "is not [task, metric, expected, tolerance]"),
        ([["bbox", "AP", 38.5, 0.2]], ("a", "b"), "DATASETS.TEST names 2 (['a', 'b'])"),
    ],
)
def test_expected_results_are_checked_before_the_run(tmp_path, expected, tests, message):
    cfg = tiny_cfg(tmp_path)
    cfg.TEST.EXPECTED_RESULTS = expected
    cfg.DATASETS.TEST = tests
    if message is None:
        check_expected_results(cfg)
    else:
        with pytest.raises(ConfigError) as info:
            check_expected_results(cfg)
        assert message in str(info.value)


def test_eval_only_verifies_expected_results_as_detectron2(tmp_path):
    """detectron2's verify_results passes silently on a match and exits with status 1 on a
    miss; --eval-only keys its results by dataset, which verify_results does not read."""
    from atss_d2 import train_net

    root = tmp_path / "data"
    json_file = write_coco_json(root / "val.json", image_dicts(root / "images", num_images=2))
    base = [
        "--config-file", str(REPO / "configs" / "Base-ATSS.yaml"),
        "--coco-dataset", "expected_val", json_file, str(root / "images"), "--eval-only",
        *TINY_OPTS, "DATASETS.TEST", "('expected_val',)", "OUTPUT_DIR", str(tmp_path / "out"),
    ]  # fmt: skip
    try:
        with one_torch_thread():
            # Any finite AP (percent) is within 100 of 50.
            args = train_net.get_parser().parse_args(
                [*base, "TEST.EXPECTED_RESULTS", "[['bbox', 'AP', 50.0, 100.0]]"]
            )
            results = train_net.main(args)
            assert 0.0 <= results["expected_val"]["bbox"]["AP"] <= 100.0
            args = train_net.get_parser().parse_args(
                [*base, "TEST.EXPECTED_RESULTS", "[['bbox', 'AP', 1000.0, 1.0]]"]
            )
            with pytest.raises(SystemExit) as info:
                train_net.main(args)
            assert info.value.code == 1
    finally:
        DatasetCatalog.remove("expected_val")
        MetadataCatalog.remove("expected_val")
