"""
docs/CUSTOM_DATASET.md's commands, run as written (on a small generated dataset in the layout
the page shows, at a reduced input size and number of iterations): VOC folders and a COCO json
to training, ``--eval-only`` and the demo drawing the dataset's class names.
"""

import re
import shlex
import subprocess
import sys

import pytest
from PIL import Image
from tiny_setup import REPO, draw_image, write_coco_json

DOC = REPO / "docs" / "CUSTOM_DATASET.md"
CLASSES = ("cat", "dog")
# Test size: 64-96 px images, a few iterations; everything else as the config ships.
TRAIN_OVERRIDES = [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
    "SOLVER.MAX_ITER", "6", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


def _commands():
    """The commands of the page's blocks marked ``<!-- test: run -->``, continuation lines
    joined."""
    blocks = re.findall(r"<!-- test: run -->\n```bash\n(.*?)```", DOC.read_text(), re.S)
    return [block.replace("\\\n", " ").strip() for block in blocks]


def _boxes(i):
    """One or two boxes (xmin, ymin, xmax, ymax, class) per 80x64 image, 1-based VOC pixels."""
    boxes = [(5 + 3 * i, 7, 30 + 3 * i, 34, CLASSES[i % 2])]
    return boxes + ([(41, 31, 70, 60, CLASSES[(i + 1) % 2])] if i % 2 else [])


def _write_voc(root, first, count):
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir(parents=True)
    for i in range(first, first + count):
        boxes = _boxes(i)
        image = draw_image(64, 80, [(x1 - 1, y1 - 1, x2, y2) for x1, y1, x2, y2, _ in boxes], i)
        Image.fromarray(image).save(root / "JPEGImages" / f"img_{i:03d}.jpg", quality=95)
        objects = "".join(
            f"<object><name>{c}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for x1, y1, x2, y2, c in boxes
        )
        (root / "Annotations" / f"img_{i:03d}.xml").write_text(
            f"<annotation><filename>img_{i:03d}.jpg</filename><size><width>80</width>"
            f"<height>64</height><depth>3</depth></size>{objects}</annotation>"
        )


def _write_coco(root, first, count, name):
    dicts = []
    for i in range(first, first + count):
        boxes = [(x1 - 1, y1 - 1, x2, y2, c) for x1, y1, x2, y2, c in _boxes(i)]
        path = root / "images" / f"img_{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(draw_image(64, 80, [b[:4] for b in boxes], i)).save(path)
        annotations = [
            {"bbox": list(b[:4]), "category_id": CLASSES.index(b[4]), "iscrowd": 0} for b in boxes
        ]
        dicts.append(
            {"file_name": str(path), "image_id": i, "height": 64, "width": 80,
             "annotations": annotations}
        )  # fmt: skip
    write_coco_json(root / f"{name}.json", dicts, classes=CLASSES)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("custom")
    _write_voc(root / "data" / "my_dataset" / "train", 0, 8)
    _write_voc(root / "data" / "my_dataset" / "val", 8, 4)
    _write_coco(root / "data" / "my_coco", 0, 6, "train")
    _write_coco(root / "data" / "my_coco", 6, 3, "val")
    return root


def _run(command: str, root):
    """Run one command of the page with the repository as the working directory and the
    page's data/ and output/ paths moved under ``root``."""
    args = shlex.split(command)
    assert args[0] == "python"
    args = [sys.executable, *args[1:]]
    if args[1] == "train_net.py":
        args += TRAIN_OVERRIDES
    elif args[1] == "demo/demo.py":
        args += TRAIN_OVERRIDES[:8]  # the same input size (after --opts)
        args[args.index("--confidence-threshold") + 1] = "0.0"  # every detection, to name them
    args = [re.sub(r"^(data|output)/", f"{root}/\\1/", a) for a in args]
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def test_the_page_has_the_four_commands():
    kinds = [shlex.split(c)[1] for c in _commands()]
    assert kinds == ["train_net.py", "train_net.py", "demo/demo.py", "train_net.py"]


def test_every_command_of_the_page_runs(workspace):
    train, evaluate, demo, coco = _commands()
    log = _run(train, workspace)
    trained = re.findall(r"copypaste: (.*)", log)
    assert trained[:2] == ["Task: bbox", "AP,AP50,AP75,APs,APm,APl"]
    assert (workspace / "output" / "my_dataset" / "model_final.pth").is_file()

    log = _run(evaluate, workspace)
    assert re.findall(r"copypaste: (.*)", log)[:3] == trained[:3]

    log = _run(demo, workspace)
    drawn = sorted(p.name for p in (workspace / "output" / "my_dataset" / "vis").iterdir())
    assert drawn == [f"img_{i:03d}.jpg" for i in range(8, 12)]  # the quoted glob, expanded
    named = re.search(r"img_008\.jpg: \d+ detections \((.*?)\) in", log)
    assert named, log[-2000:]
    labels = {re.sub(r" x\d+$", "", part) for part in named.group(1).split(", ")}
    assert labels and labels <= set(CLASSES)

    _run(coco, workspace)
    assert (workspace / "output" / "my_coco" / "model_final.pth").is_file()
