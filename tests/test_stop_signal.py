"""
A training run stopped from outside keeps its work: SIGTERM (a scheduler's or a preemptible
machine's) during train_net.py finishes the iteration, writes a checkpoint and the --resume
command, exits non-zero; --resume then continues from the saved iteration.
"""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from tiny_setup import REPO, TINY_OPTS, image_dicts, write_coco_json


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("stop")
    dicts = image_dicts(root / "images", num_images=4)
    return ["--coco-dataset", "stop_tiny", write_coco_json(root / "train.json", dicts),
            str(root / "images"), "DATASETS.TRAIN", "('stop_tiny',)"]  # fmt: skip


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_then_resume(dataset, tmp_path, signum):
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train_net.py"), "--config-file",
           str(REPO / "configs" / "Base-ATSS.yaml"), *dataset, *TINY_OPTS,
           "SOLVER.MAX_ITER", "100000", "OUTPUT_DIR", str(out)]  # fmt: skip
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(
            cmd + ["TEST.EVAL_PERIOD", "0"], cwd=REPO, env=env, stdout=log, stderr=log
        )
        deadline = time.time() + 300
        while (
            not (out / "log.txt").is_file()
            or "Starting training" not in (out / "log.txt").read_text()
        ):
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "log").read_text()
            time.sleep(0.5)
        time.sleep(3)  # a few iterations
        proc.send_signal(signum)
        rc = proc.wait(timeout=300)
    text = (tmp_path / "log").read_text()
    assert rc == 128 + signum, text[-3000:]
    stopped = re.search(
        r"Training stopped by (SIG\w+) after iteration (\d+); saved (\S+)\.pth", text
    )
    assert stopped, text[-3000:]
    assert stopped.group(1) == signal.Signals(signum).name
    iteration = int(stopped.group(2))
    saved = f"model_{iteration:07d}.pth"
    assert (out / "last_checkpoint").read_text() == saved
    assert (out / saved).is_file()
    assert "Continue with: " in text and "--resume" in text

    resumed = subprocess.run(
        [cmd[0], cmd[1], "--resume", *cmd[2:-4], "SOLVER.MAX_ITER", str(iteration + 3),
         "OUTPUT_DIR", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert f"Starting training from iteration {iteration + 1}" in log
    assert (out / "model_final.pth").is_file()
