"""
``train_net.py --eval-only`` as a user runs it: train a small model with train_net.py, then
evaluate its model_final.pth in a new process; the same AP to the printed precision, the
test-time-augmentation results too, and weights files that are missing or unreadable named.
"""

import os
import re
import subprocess
import sys

import pytest
from tiny_setup import REPO, TINY_OPTS, image_dicts, load_script, write_coco_json

from atss_d2.checkpoint import CheckpointReadError

train_net = load_script("train_net.py")

DATASET_OPTS = ["DATASETS.TRAIN", "('evo_tiny',)", "DATASETS.TEST", "('evo_tiny',)"]
# A score threshold of 0 keeps the detections of a barely trained model, so that the AP
# compared below is that of real, ranked detections (nonzero), not 0 = 0.
RUN_OPTS = [
    *TINY_OPTS,
    *DATASET_OPTS,
    "SOLVER.MAX_ITER",
    "10",
    "MODEL.ATSS.SCORE_THRESH_TEST",
    "0.0",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("evo")
    dicts = image_dicts(root / "images", num_images=6)
    return [
        "--coco-dataset",
        "evo_tiny",
        write_coco_json(root / "train.json", dicts),
        str(root / "images"),
    ]


def _run(args, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, str(REPO / "train_net.py"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, **kwargs,
    )  # fmt: skip


def _copypaste(log: str):
    """detectron2's `copypaste:` result lines (print_csv_format), in order."""
    return re.findall(r"copypaste: (.*)", log)


def test_eval_only_gives_the_ap_of_the_end_of_training_evaluation(dataset, tmp_path):
    base = ["--config-file", str(REPO / "configs" / "Base-ATSS.yaml"), *dataset]
    train = _run([*base, *RUN_OPTS, "OUTPUT_DIR", str(tmp_path / "train")])
    assert train.returncode == 0, train.stderr[-3000:]
    trained = _copypaste(train.stdout + train.stderr)
    assert trained[:2] == ["Task: bbox", "AP,AP50,AP75,APs,APm,APl"]
    ap = float(trained[2].split(",")[0])
    assert ap > 0  # ranked detections of a (barely) trained model

    weights = tmp_path / "train" / "model_final.pth"
    evaluated = _run(
        [*base, "--eval-only", *RUN_OPTS, "MODEL.WEIGHTS", str(weights),
         "TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(64, 80)", "TEST.AUG.MAX_SIZE", "120",
         "OUTPUT_DIR", str(tmp_path / "eval")]
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    log = evaluated.stdout + evaluated.stderr
    lines = _copypaste(log)
    assert lines[:3] == trained[:3]  # the same numbers, to the printed 4 decimals
    assert "Tensors loaded from" in log and "detection head 17/17" in log
    # Then the TTA evaluation, reported under "<dataset>_TTA".
    assert len(lines) == 6 and lines[3:5] == trained[:2]
    tta_ap = float(lines[5].split(",")[0])
    assert re.search(rf"Evaluation results for evo_tiny_TTA \(bbox\): AP={tta_ap:.4f}", log)
    assert (tmp_path / "eval" / "inference_TTA" / "coco_instances_results.json").is_file()


def test_missing_weights_stop_with_one_line_naming_the_file(dataset, tmp_path):
    missing = tmp_path / "no_such_model.pth"
    result = _run(
        ["--config-file", str(REPO / "configs" / "Base-ATSS.yaml"), *dataset, "--eval-only",
         *RUN_OPTS, "MODEL.WEIGHTS", str(missing), "OUTPUT_DIR", str(tmp_path / "eval")]
    )  # fmt: skip
    assert result.returncode != 0
    assert f"train_net.py: error: Weights file not found: '{missing}'" in result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_weights_are_named(dataset, tmp_path):
    corrupt = tmp_path / "model_final.pth"
    corrupt.write_bytes(b"PK\x03\x04 not really a checkpoint")
    args = train_net.get_parser().parse_args(
        ["--config-file", str(REPO / "configs" / "Base-ATSS.yaml"), *dataset, "--eval-only",
         *RUN_OPTS, "MODEL.WEIGHTS", str(corrupt), "OUTPUT_DIR", str(tmp_path / "eval")]
    )  # fmt: skip
    with pytest.raises(CheckpointReadError, match=re.escape(str(corrupt))):
        train_net.main(args)
