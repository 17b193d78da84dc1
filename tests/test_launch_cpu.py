"""
``--num-gpus N`` on a machine without CUDA runs N CPU processes over gloo (train, then resume,
through train_net.py itself); with some but too few GPUs it stops with the count found.
"""

import importlib
import os
import subprocess
import sys

import pytest
import torch
from tiny_setup import REPO, TINY_OPTS, image_dicts, write_coco_json

from atss_d2.engine import ConfigError, launch


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    dicts = image_dicts(root / "images", num_images=4)
    return ["--coco-dataset", "launch_tiny", write_coco_json(root / "train.json", dicts),
            str(root / "images")]  # fmt: skip


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="the CPU-process path is for machines without CUDA"
)
def test_two_cpu_processes_train_and_resume(dataset, tmp_path):
    out = tmp_path / "run"

    def run(*flags, max_iter):
        cmd = [sys.executable, str(REPO / "train_net.py"), "--num-gpus", "2",
               "--dist-url", f"file://{tmp_path / ('rdzv_' + str(max_iter))}", *flags,
               "--config-file", str(REPO / "configs" / "Base-ATSS.yaml"), *dataset, *TINY_OPTS,
               "DATASETS.TRAIN", "('launch_tiny',)", "SOLVER.MAX_ITER", str(max_iter),
               "OUTPUT_DIR", str(out)]  # fmt: skip
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout + result.stderr

    log = run(max_iter=3)
    assert "World size: 2" in log
    assert (out / "model_final.pth").is_file()
    log = run("--resume", max_iter=5)
    assert "Starting training from iteration 3" in log


def test_more_processes_than_gpus_names_the_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="--num-gpus 2, but this machine has 1 CUDA device;"):
        launch(lambda: None, 2)


def test_one_process_runs_in_place():
    assert launch(lambda x: x + 1, 1, args=(41,)) == 42


def test_several_machines_on_a_loopback_address_are_warned_about(monkeypatch, caplog):
    launch_module = importlib.import_module("atss_d2.engine.launch")  # the module, not launch()
    spawned = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(launch_module.mp, "spawn", lambda *a, **k: spawned.append(k["nprocs"]))
    # detectron2's parser's default URL: a port on 127.0.0.1, which no other machine reaches.
    with caplog.at_level("WARNING", logger="atss_d2.engine.launch"):
        launch(lambda: None, 1, num_machines=2, dist_url="tcp://127.0.0.1:50152")
    assert spawned == [1]
    assert "--num-machines 2 with --dist-url tcp://127.0.0.1:50152" in caplog.text
    assert "tcp://<machine 0's address>:<port>" in caplog.text
    caplog.clear()
    for url in ("tcp://10.0.0.5:50152", "file:///shared/rdzv"):
        launch(lambda: None, 1, num_machines=2, dist_url=url)
    assert "cannot join" not in caplog.text
    assert [launch_module._is_loopback(u) for u in ("tcp://localhost:1", "tcp://[::1]:1")] == [
        True,
        True,
    ]


def test_config_errors_stop_before_any_process_starts(monkeypatch):
    from atss_d2 import train_net

    launched = []
    monkeypatch.setattr(train_net, "launch", lambda *a, **k: launched.append(a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["train_net.py"])
    config = ["--config-file", str(REPO / "configs" / "Base-ATSS.yaml"), "--num-gpus", "4"]
    for opts, message in (
        (["MODEL.DEVICE", "cuda"], "MODEL.DEVICE is 'cuda', but this machine has no CUDA device"),
        (["MODEL.DEVICE", "cpu", "MODEL.ATSS.TOPK", "0"], "MODEL.ATSS.TOPK is 0"),
    ):
        with pytest.raises(SystemExit) as e:
            train_net.cli(config + opts)
        assert e.value.code.startswith("train_net.py: config error: ") and message in e.value.code
    assert launched == []
    train_net.cli(config + ["MODEL.DEVICE", "cpu"])  # a valid config goes on to launch
    assert len(launched) == 1
