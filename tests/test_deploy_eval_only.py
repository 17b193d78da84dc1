"""
tools/export_model.py --run-eval reports the AP that ``train_net.py --eval-only`` prints for the
same weights and dataset (PyTorch, and the exported ONNX model within 0.1).

The dataset is labelled with the model's own best detections on its 90x120 images (resized to
48x64 for the model), so that the AP is high and any difference in reading, resizing or scaling
the boxes back would show.
"""

import contextlib
import io
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from tiny_setup import REPO, SMALL_MODEL_OPTS, draw_image, load_script, small_cfg, write_png

from atss_d2.data.mapper import ATSSDatasetMapper

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

CLASSES = ["a", "b", "c"]
DATASET = "deploy_eval_tiny"
OPTS = [
    *SMALL_MODEL_OPTS,
    "MODEL.DEVICE", "cpu",
    "MODEL.ATSS.NUM_CLASSES", "3",
    "MODEL.ATSS.PRIOR_PROB", "0.3",
    "INPUT.MIN_SIZE_TEST", "48",
    "INPUT.MAX_SIZE_TEST", "80",
    "DATALOADER.NUM_WORKERS", "0",
    "DATASETS.TRAIN", f"('{DATASET}',)",
    "DATASETS.TEST", f"('{DATASET}',)",
]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(weights, the --coco-dataset arguments, work dir)."""
    work = tmp_path_factory.mktemp("deploy_eval")
    cfg = small_cfg(*OPTS[len(SMALL_MODEL_OPTS) :])
    torch.manual_seed(1)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    DetectionCheckpointer(model, save_dir=str(work)).save("weights", thing_classes=CLASSES)
    mapper = ATSSDatasetMapper(cfg, is_train=False)
    images, annotations = [], []
    for i in range(3):
        file_name = write_png(work / "images" / f"{i}.png", draw_image(90, 120, [], seed=i))
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 90, "width": 120})
        with torch.no_grad():
            found = model([mapper({"file_name": file_name, "image_id": i + 1})])[0]["instances"]
        for box, cls in zip(found.pred_boxes.tensor[:3].tolist(), found.pred_classes.tolist()):
            x1, y1, x2, y2 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cls + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    json_file = work / "instances.json"
    json_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    dataset = ["--coco-dataset", DATASET, str(json_file), str(work / "images")]
    return str(work / "weights.pth"), dataset, work


def test_run_eval_ap_is_the_eval_only_ap(setup):
    weights, dataset, work = setup
    config = ["--config-file", str(REPO / "configs" / "Base-ATSS.yaml")]
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    eval_only = subprocess.run(
        [sys.executable, str(REPO / "train_net.py"), *config, *dataset, "--eval-only",
         *OPTS, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(work / "eval_only")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert eval_only.returncode == 0, eval_only.stderr[-3000:]
    # detectron2's print_csv_format: "copypaste: AP,AP50,..." then the values.
    header, values = re.findall(r"copypaste: (.*)", eval_only.stdout + eval_only.stderr)[1:3]
    assert header.startswith("AP,")
    eval_only_ap = float(values.split(",")[0])

    tool = load_script("tools/export_model.py")
    argv = [*config, "--output", str(work / "exported"), *dataset, "--run-eval", DATASET]
    with contextlib.redirect_stdout(io.StringIO()):
        code = tool.main(tool.get_parser().parse_args([*argv, *OPTS, "MODEL.WEIGHTS", weights]))
    assert code == 0
    results = json.loads((work / "exported" / "eval.json").read_text())["results"]
    assert eval_only_ap > 50  # the labels are the model's own detections
    assert abs(results["pytorch"]["bbox"]["AP"] - eval_only_ap) <= 0.1
    assert abs(results["onnx"]["bbox"]["AP"] - eval_only_ap) <= 0.1
