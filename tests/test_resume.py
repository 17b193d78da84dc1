"""
train_net.py killed with SIGKILL mid-training resumes with --resume from its last checkpoint, at
the next iteration and with the learning rate the schedule has there.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.solver import build_lr_scheduler
from tiny_setup import REPO, TINY_OPTS, image_dicts, tiny_cfg, write_coco_json

MAX_ITER = 30
SCHEDULE = ["SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR", "SOLVER.MAX_ITER", str(MAX_ITER)]


def train_net_command(tmp_path, out_dir, *extra):
    images = tmp_path / "images"
    json_file = write_coco_json(tmp_path / "train.json", image_dicts(images, num_images=4))
    return [
        sys.executable, str(REPO / "train_net.py"),
        "--config-file", str(REPO / "configs" / "Base-ATSS.yaml"),
        "--coco-dataset", "resume_train", json_file, str(images),
        *TINY_OPTS, *SCHEDULE,
        "DATASETS.TRAIN", "('resume_train',)",
        "OUTPUT_DIR", str(out_dir),
        *extra,
    ]  # fmt: skip


def expected_lr(iteration: int) -> float:
    """The learning rate of ``iteration`` by detectron2's scheduler, stepped from scratch."""
    cfg = tiny_cfg("unused", *SCHEDULE)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    for _ in range(iteration):
        optimizer.step()
        scheduler.step()
    return optimizer.param_groups[0]["lr"]


def metrics(out_dir):
    with open(out_dir / "metrics.json") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_sigkill_then_resume(tmp_path):
    out_dir = tmp_path / "output"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = train_net_command(tmp_path, out_dir, "SOLVER.CHECKPOINT_PERIOD", "5")
    log = open(tmp_path / "first_run.txt", "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    tag = out_dir / "last_checkpoint"
    deadline = time.time() + 240
    try:
        while not tag.exists():
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(
                    "train_net.py ended or stalled before its first checkpoint:\n"
                    + (tmp_path / "first_run.txt").read_text()[-3000:]
                )
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out_dir / "model_final.pth").exists(), "the run finished before the kill"

    last = tag.read_text()
    assert last.startswith("model_") and last.endswith(".pth")
    k = int(last[len("model_") : -len(".pth")])
    state = torch.load(out_dir / last, map_location="cpu", weights_only=True)
    assert state["iteration"] == k and (k + 1) % 5 == 0
    lines_before = len(metrics(out_dir)) if (out_dir / "metrics.json").exists() else 0

    resumed = subprocess.run(
        cmd[:2] + ["--resume"] + cmd[2:-2] + ["SOLVER.CHECKPOINT_PERIOD", "1000"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=400,
    )
    output = resumed.stdout.decode(errors="replace")
    assert resumed.returncode == 0, output[-3000:]
    assert f"Starting training from iteration {k + 1}" in output
    final = torch.load(out_dir / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == MAX_ITER - 1

    new = [m for m in metrics(out_dir)[lines_before:] if "lr" in m]
    assert new, "the resumed run wrote no metrics"
    assert new[-1]["iteration"] == MAX_ITER - 1
    for m in new:
        assert m["iteration"] > k
        assert m["lr"] == pytest.approx(expected_lr(m["iteration"]), rel=1e-6), m
    # The schedule is not flat: restarting it at the resume point would have shown.
    assert expected_lr(MAX_ITER - 1) != pytest.approx(expected_lr(MAX_ITER - 2 - k), rel=1e-3)
