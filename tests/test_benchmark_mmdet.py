"""tools/benchmark_mmdet.py: its PyTorch emulation of the mmcv ops (sigmoid focal loss forward
and backward on hand-computed values and against autograd, NMS on hand-built boxes), its
report's met / MISSED marks, its options and exits; with mmdetection importable (e.g.
``PYTHONPATH=/tmp/mmpkgs``), the emulated focal loss against mmdetection's own PyTorch focal
loss and a ``--quick`` run of both models on the CPU."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from tiny_setup import load_script

import atss_d2  # noqa: F401  (its warning filters, before mmdetection imports detectron2's deps)

REPO = Path(__file__).resolve().parents[1]
HAS_MMDET = importlib.util.find_spec("mmdet") is not None
needs_mmdet = pytest.mark.skipif(not HAS_MMDET, reason="mmdet is not importable")


tool = load_script("tools/benchmark_mmdet.py")
LN3 = math.log(3.0)


def _focal(x, target, gamma=2.0, alpha=0.25):
    """The emulated forward and backward (mmcv's kernel calling convention)."""
    empty = x.new_empty(0)
    loss, grad = torch.zeros_like(x), torch.zeros_like(x)
    tool.sigmoid_focal_loss_forward(x, target, empty, loss, gamma=gamma, alpha=alpha)
    tool.sigmoid_focal_loss_backward(x, target, empty, grad, gamma=gamma, alpha=alpha)
    return loss, grad


def test_focal_loss_emulation_on_hand_computed_values():
    # Two classes; gamma 2, alpha 0.25. x = 0 gives p = 0.5, x = ln 3 gives p = 0.75,
    # x = -ln 3 gives p = 0.25. Target class: loss -a (1-p)^2 log p, gradient
    # -a (1-p)^2 ((1-p) - 2 p log p); other class: loss -(1-a) p^2 log(1-p), gradient
    # -(1-a) p^2 (2 (1-p) log(1-p) - p).
    x = torch.tensor([[0.0, 0.0], [LN3, LN3], [LN3, -LN3], [LN3, 0.0]])
    target = torch.tensor([0, 2, 1, 0])  # 2 = background: no class is the target
    loss, grad = _focal(x, target)
    l2, l4, l43 = math.log(2), math.log(4), math.log(4 / 3)
    expected_loss = [
        # p 0.5, target: 0.25 * 0.25 * ln 2 = 0.043322; other: 0.75 * 0.25 * ln 2 = 0.129965
        [0.25 * 0.25 * l2, 0.75 * 0.25 * l2],
        # p 0.75, other: 0.75 * 0.5625 * ln 4 = 0.584843 (both classes)
        [0.75 * 0.5625 * l4, 0.75 * 0.5625 * l4],
        # p 0.75 other: 0.584843; p 0.25 target: 0.25 * 0.5625 * ln 4 = 0.194948
        [0.75 * 0.5625 * l4, 0.25 * 0.5625 * l4],
        # p 0.75 target: 0.25 * 0.0625 * ln(4/3) = 0.004495; p 0.5 other: 0.129965
        [0.25 * 0.0625 * l43, 0.75 * 0.25 * l2],
    ]
    expected_grad = [
        # p 0.5 target: -0.0625 (0.5 + ln 2) = -0.074572; other: 0.1875 (ln 2 + 0.5) = 0.223715
        [-0.0625 * (0.5 + l2), 0.1875 * (l2 + 0.5)],
        # p 0.75 other: -0.421875 (0.5 ln(0.25) - 0.75) = 0.608828
        [0.421875 * (0.5 * l4 + 0.75)] * 2,
        # p 0.75 other: 0.608828; p 0.25 target: -0.140625 (0.75 + 0.5 ln 4) = -0.202943
        [0.421875 * (0.5 * l4 + 0.75), -0.140625 * (0.75 + 0.5 * l4)],
        # p 0.75 target: -0.015625 (0.25 + 1.5 ln(4/3)) = -0.010649; p 0.5 other: 0.223715
        [-0.015625 * (0.25 + 1.5 * l43), 0.1875 * (l2 + 0.5)],
    ]
    torch.testing.assert_close(loss, torch.tensor(expected_loss), rtol=0, atol=1e-6)
    torch.testing.assert_close(grad, torch.tensor(expected_grad), rtol=0, atol=1e-6)
    assert expected_loss[0][0] == pytest.approx(0.043322, abs=1e-6)
    assert expected_grad[2][0] == pytest.approx(0.608828, abs=1e-6)
    # A float16 output (mmcv allocates it like the input) gets the float32 values.
    half = torch.zeros(4, 2, dtype=torch.float16)
    tool.sigmoid_focal_loss_forward(x.half(), target, x.new_empty(0), half, gamma=2.0, alpha=0.25)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), torch.tensor(expected_loss), rtol=0, atol=2e-3)


@pytest.mark.parametrize("gamma,alpha,chunk", [(2.0, 0.25, 1 << 20), (1.5, 0.4, 20)])
def test_focal_loss_backward_is_the_gradient_of_the_forward(gamma, alpha, chunk, monkeypatch):
    # chunk 20: 2 rows of 7 classes at a time, 25 chunks.
    monkeypatch.setattr(tool, "FOCAL_CHUNK", chunk)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(50, 7, generator=g, dtype=torch.float64) * 16 - 8).requires_grad_()
    target = torch.randint(0, 8, (50,), generator=g)  # 7 = background
    out = torch.zeros_like(x)
    tool.sigmoid_focal_loss_forward(x, target, x.new_empty(0), out, gamma=gamma, alpha=alpha)
    # Every element written, as the formula written out here (float64, plain logs).
    p = x.detach().sigmoid()
    positive = torch.nn.functional.one_hot(target, 8)[:, :7].bool()
    expected = torch.where(
        positive, -alpha * (1 - p) ** gamma * p.log(), -(1 - alpha) * p**gamma * (1 - p).log()
    )
    torch.testing.assert_close(out.detach(), expected, rtol=1e-9, atol=1e-12)
    out.sum().backward()
    _, grad = _focal(x.detach(), target, gamma, alpha)
    assert torch.allclose(grad, x.grad, rtol=1e-10, atol=1e-12)


def test_focal_loss_emulation_rejects_class_weights():
    x, target = torch.zeros(2, 3), torch.tensor([0, 3])
    with pytest.raises(NotImplementedError, match="class weights"):
        tool.sigmoid_focal_loss_forward(x, target, torch.ones(3), torch.zeros(2, 3), 2.0, 0.25)


def test_nms_emulation_on_hand_built_boxes():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # 0: score 0.9
            [1.0, 0.0, 11.0, 10.0],  # 1: IoU with 0 = 90 / 110 = 0.82 > 0.6, suppressed
            [20.0, 20.0, 30.0, 30.0],  # 2: disjoint from all, kept
            [0.0, 0.0, 10.0, 5.0],  # 3: highest score; IoU with 0 = 50 / 100 = 0.5, kept
        ]
    )
    scores = torch.tensor([0.9, 0.85, 0.8, 0.95])
    keep = tool.emulated_nms(boxes, scores, iou_threshold=0.6, offset=0)
    assert keep.tolist() == [3, 0, 2]  # by decreasing score
    # At IoU 0.45 box 3 suppresses box 0 (IoU 0.5); box 1 then stays: a suppressed box
    # suppresses nothing, and box 1's IoU with box 3 is 45 / 105 = 0.43 (greedy NMS).
    assert tool.emulated_nms(boxes, scores, iou_threshold=0.45).tolist() == [3, 1, 2]
    with pytest.raises(NotImplementedError, match="offset"):
        tool.emulated_nms(boxes, scores, iou_threshold=0.6, offset=1)


def _result(fps, step_ms, mib, emulated=True):
    """A hand-made result dict: atss_d2's and mmdet's images/s per batch, step ms, MiB."""
    machine = {"cpu": "Test CPU", "torch": "2.x", "torch_threads": 2}
    settings = {
        "device": "cpu",
        "size": [256, 320],
        "train_size": [256, 320],
        "train_batch": 2,
        "num_gt": 50,
        "iters": 2,
        "warmup": 1,
        "scores": "dense",
        "test": dict(tool.TEST_SETTINGS),
    }
    inference = []
    for batch, (ours, theirs) in fps.items():
        models = {
            name: {
                "ms_per_image": 1000 / v,
                "images_per_s": v,
                "detections": [100] * batch,
            }
            for name, v in (("atss_d2", ours), ("mmdet", theirs))
        }
        inference.append(
            {"batch": batch, "models": models, "fps_ratio": ours / theirs, "target": 1.0}
        )
    train = {
        "precision_note": "float32 (no autocast)",
        "models": {
            "atss_d2": {"median_ms": step_ms[0], "memory": {"extra_mib": mib[0]}},
            "mmdet": {"median_ms": step_ms[1], "memory": {"extra_mib": mib[1]}},
        },
        "step_time_ratio": step_ms[0] / step_ms[1],
        "memory_ratio": mib[0] / mib[1],
        "target": 1.0,
        "memory_method": "peak RSS",
    }
    ops = {
        "emulated": list(tool.EMULATED_OPS) if emulated else [],
        "note": tool.EMULATED_NOTE if emulated else tool.COMPILED_NOTE,
        "calls": {"nms": 3} if emulated else {},
    }
    return {
        "machine": machine,
        "settings": settings,
        "versions": {"mmdet": "3.3.0"},
        "mmcv_ops": ops,
        "inference": inference,
        "train": train,
    }


def test_report_marks_targets_met_and_missed():
    # Batch 1: 12 vs 10 images/s (1.2, met); batch 8: 9 vs 10 (0.9, MISSED). Training: step
    # 1100 vs 1000 ms (1.1, no target), memory 900 vs 1000 MiB (0.9, met).
    lines = tool.format_report(
        _result({1: (12.0, 10.0), 8: (9.0, 10.0)}, (1100, 1000), (900, 1000))
    )
    text = "\n".join(lines)
    assert "mmcv ops nms/sigmoid_focal_loss emulated in PyTorch (mmcv-lite)" in text
    assert "calls in this run: nms 3" in text
    assert "atss_d2 fps / mmdet fps: 1.200  target >= 1.00: met" in lines
    assert "atss_d2 fps / mmdet fps: 0.900  target >= 1.00: MISSED" in lines
    assert "atss_d2 / mmdet step time: 1.100" in lines  # no target
    assert "atss_d2 / mmdet peak memory: 0.900  target <= 1.00: met" in lines
    assert "Inference, batch 8 of 256x320, median of 2 after 1 warm-up" in lines
    row = next(line for line in lines if line.startswith("atss_d2") and "83.3" in line)
    assert row.split() == ["atss_d2", "83.3", "12.00", "100"]
    # Equal is met for both kinds of target; compiled mmcv ops are named as such.
    lines = tool.format_report(_result({1: (10.0, 10.0)}, (1000, 1000), (5, 5), emulated=False))
    assert "atss_d2 fps / mmdet fps: 1.000  target >= 1.00: met" in lines
    assert "atss_d2 / mmdet peak memory: 1.000  target <= 1.00: met" in lines
    assert lines[1] == tool.COMPILED_NOTE


def test_pretrained_initialisation_is_removed_everywhere():
    cfg = {
        "backbone": {"init_cfg": {"type": "Pretrained", "checkpoint": "torchvision://resnet50"}},
        "neck": {"init_cfg": [{"type": "Xavier"}, {"type": "Pretrained", "checkpoint": "x"}]},
        "bbox_head": {"init_cfg": {"type": "Normal", "std": 0.01}},
        "extra": [{"pretrained": "y.pth"}],
    }
    removed = tool.drop_pretrained(cfg)
    assert removed == [
        "model.backbone.init_cfg",
        "model.neck.init_cfg",
        "model.extra[0].pretrained",
    ]
    assert cfg["backbone"]["init_cfg"] is None and cfg["neck"]["init_cfg"] is None
    assert cfg["bbox_head"]["init_cfg"] == {"type": "Normal", "std": 0.01}  # not a download
    assert cfg["extra"][0]["pretrained"] is None


def test_quick_sets_defaults_that_explicit_options_override():
    args = tool.parse_args([])
    assert (args.size, args.infer_batch, args.train_batch) == ("800x1333", [1, 8], 2)
    assert (args.train_size, args.num_gt, args.iters, args.warmup) == ("800x1333", 50, 5, 2)
    args = tool.parse_args(["--quick"])
    assert (args.size, args.infer_batch, args.iters, args.warmup) == ("256x320", [1, 2], 2, 1)
    args = tool.parse_args(["--quick", "--size", "128x160", "--iters", "3"])
    assert (args.size, args.train_size, args.iters) == ("128x160", "256x320", 3)


def test_settings_must_match():
    tool.check_test_settings(dict(tool.TEST_SETTINGS), dict(tool.TEST_SETTINGS))
    with pytest.raises(SystemExit, match="mmdet test settings"):
        tool.check_test_settings(dict(tool.TEST_SETTINGS), dict(tool.TEST_SETTINGS, nms_iou=0.5))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")
def test_cuda_without_cuda_exits_clearly():
    with pytest.raises(SystemExit, match="--device cuda: CUDA is not available"):
        tool.main(["--device", "cuda"])


@pytest.mark.skipif(HAS_MMDET, reason="mmdet is installed")
def test_without_mmdet_it_names_the_install_commands():
    with pytest.raises(SystemExit) as info:
        tool.main(["--quick"])
    message = str(info.value)
    assert "mmdet is not importable" in message
    assert "pip install --target /tmp/mmpkgs --no-deps mmengine==0.10.7 mmdet==3.3.0" in message
    assert "PYTHONPATH=/tmp/mmpkgs python tools/benchmark_mmdet.py" in message


@needs_mmdet
def test_emulated_ops_match_mmdetection_through_mmcv():
    emulated = tool.install_emulated_ops()
    if not emulated:
        pytest.skip("mmcv's compiled ops are installed: nothing is emulated")
    from mmcv.ops import nms, sigmoid_focal_loss
    from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss

    g = torch.Generator().manual_seed(1)
    pred = torch.randn(64, 5, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, 6, (64,), generator=g)  # 5 = background
    grad_out = torch.rand(64, 5, generator=g, dtype=torch.float64)
    one_hot = torch.nn.functional.one_hot(target, 6)[:, :5]
    for reduction in ("none", "mean"):
        ours = pred.clone().requires_grad_()
        theirs = pred.clone().requires_grad_()
        a = sigmoid_focal_loss(ours, target, 2.0, 0.25, None, reduction)
        b = py_sigmoid_focal_loss(theirs, one_hot, gamma=2.0, alpha=0.25, reduction=reduction)
        if reduction == "mean":
            b = b * 5  # mmcv's mean divides by the rows, mmdetection's by the elements
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)
        weight = grad_out if reduction == "none" else torch.tensor(0.7, dtype=torch.float64)
        (a * weight).sum().backward()
        (b * weight).sum().backward()
        assert torch.allclose(ours.grad, theirs.grad, rtol=1e-6, atol=1e-9)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [20, 20, 30, 30.0]])
    _, keep = nms(boxes, torch.tensor([0.9, 0.95, 0.5]), iou_threshold=0.6)
    assert keep.tolist() == [1, 2]


@needs_mmdet
def test_quick_cpu_run_compares_both_models(tmp_path, capsys):
    # One thread: on a shared 2-core machine two OpenMP threads can run many times slower.
    argv = ["--quick", "--size", "128x160", "--train-size", "128x160", "--num-gt", "10"]
    threads = torch.get_num_threads()
    try:
        assert tool.main(argv + ["--threads", "1", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "mmdet_compare.json").read_text())
    for key in ("machine", "command", "settings", "versions", "mmcv_ops", "inference", "train"):
        assert key in result
    assert result["machine"]["device"] == "cpu" and result["machine"]["cpu_count"] >= 1
    assert set(result["versions"]) >= {"mmdet", "mmengine", "mmcv", "torch", "detectron2"}
    s = result["settings"]
    assert s["test_atss_d2"] == s["test_mmdet"] == tool.TEST_SETTINGS
    assert s["mmdet_config"]["removed"] == ["model.backbone.init_cfg"]
    assert s["mmdet_config"]["path"].endswith("configs/atss/atss_r50_fpn_1x_coco.py")
    ops = result["mmcv_ops"]
    if ops["emulated"]:
        assert ops["note"] in out and ops["note"] == tool.EMULATED_NOTE
        assert ops["calls"]["nms"] == 3 * (1 + 2)  # one NMS per image, 3 calls per batch
    assert [e["batch"] for e in result["inference"]] == [1, 2]
    for entry in result["inference"]:
        for name in ("atss_d2", "mmdet"):
            r = entry["models"][name]
            # Dense scores: both keep their full 100 detections per image.
            assert r["detections"] == [100] * entry["batch"]
            assert len(r["times_ms"]) == 2 and r["images_per_s"] > 0
            assert r["padded_input"] == [entry["batch"], 3, 128, 160]
        assert entry["fps_ratio"] == pytest.approx(
            entry["models"]["atss_d2"]["images_per_s"] / entry["models"]["mmdet"]["images_per_s"]
        )
        assert ("met" if entry["met"] else "MISSED") in out
    train = result["train"]
    assert train["precision"] in ("bfloat16", "float32")
    assert (train["precision_fallback"] is None) == (train["precision"] == "bfloat16")
    for name in ("atss_d2", "mmdet"):
        assert len(train["models"][name]["times_ms"]) == 2
        assert train["models"][name]["memory"]["extra_mib"] > 0
    assert "atss_d2 / mmdet peak memory" in out and result["report"][0] in out
