"""
Two CPU workers (gloo): the loss normalisers N_pos and the sum of centerness targets are
averaged over workers (all-reduce / world size) before the floor/clamp at 1, as in mmdetection's
mmdet/models/dense_heads/atss_head.py (reduce_mean) and the authors'
atss_core/modeling/rpn/atss/loss.py.
"""

import json
import math
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_setup import bare_atss, gloo_process_group

# Every worker's anchors are copies of this box, decoded with deltas (1, 0, 5 ln 2, 0) to
# [-4, 0, 16, 10]: against the GT (the anchor itself) GIoU loss 0.5, centerness target 1.
ANCHOR = [0.0, 0.0, 10.0, 10.0]
DELTA = [1.0, 0.0, 5 * math.log(2.0), 0.0]
GIOU = 0.5
NUM_CLASSES = 2
# Per scenario, per rank: labels of 4 anchors (NUM_CLASSES = background).
SCENARIOS = {
    "3_vs_1": [[0, 1, 0, 2], [2, 2, 1, 2]],
    "2_vs_1": [[0, 1, 2, 2], [2, 2, 1, 2]],
    "1_vs_0": [[1, 2, 2, 2], [2, 2, 2, 2]],
}
# Two images per worker: rank 0 has 1 and 0 positives, rank 1 has 2 and 1. The normaliser of the
# classification and centerness losses, mmdetection's (sum of max(num_pos_i, 1) per worker, then
# the mean over workers): ((1 + 1) + (2 + 1)) / 2 = 2.5; the authors' (positives averaged over
# workers, floored at 1): (1 + 3) / 2 = 2.
TWO_IMAGES = [[[0, 2, 2, 2], [2, 2, 2, 2]], [[0, 1, 2, 2], [2, 2, 1, 2]]]
TWO_IMAGES_NORMALISER = {"per_image": 2.5, "total": 2.0}
LOGITS = [
    [[0.5, -1.0], [1.0, -2.0], [-0.5, 2.0], [0.1, 0.2]],
    [[2.0, 0.0], [-1.0, -1.0], [0.3, -0.7], [1.5, -0.5]],
]
CTR = [[0.3, -0.4, 1.2, 0.0], [0.5, 0.6, -0.8, 0.2]]


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def _focal(x, t, alpha=0.25, gamma=2.0):
    p = _sigmoid(x)
    p_t = p if t else 1 - p
    return -(alpha if t else 1 - alpha) * (1 - p_t) ** gamma * math.log(p_t)


def _bce(x, t):
    p = _sigmoid(x)
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def _worker(rank, world_size, rendezvous_file, out_dir):
    with gloo_process_group(rank, world_size, rendezvous_file, timeout_s=60):
        from detectron2.structures import Boxes

        model = bare_atss(NUM_CLASSES)
        results = {}
        for name, labels in SCENARIOS.items():
            n = len(labels[rank])
            deltas = torch.tensor([DELTA] * n)[None].requires_grad_()
            ctr = torch.tensor(CTR[rank])[None, :, None].requires_grad_()
            out = model.losses(
                [Boxes(torch.tensor([ANCHOR] * n))],
                [torch.tensor(LOGITS[rank])[None]],
                [torch.tensor(labels[rank])],
                [deltas],
                [torch.tensor([ANCHOR] * n)],
                [ctr],
            )
            sum(out.values()).backward()
            results[name] = {k: v.item() for k, v in out.items()}
            results[name]["grads_finite"] = bool(
                torch.isfinite(deltas.grad).all() and torch.isfinite(ctr.grad).all()
            )
        for norm in TWO_IMAGES_NORMALISER:
            model.num_pos_norm = norm
            labels = TWO_IMAGES[rank]
            out = model.losses(
                [Boxes(torch.tensor([ANCHOR] * 4))],
                [torch.tensor([LOGITS[rank], LOGITS[1 - rank]])],
                [torch.tensor(lab) for lab in labels],
                [torch.tensor([[DELTA] * 4] * 2)],
                [torch.tensor([ANCHOR] * 4)] * 2,
                [torch.tensor([CTR[rank], CTR[1 - rank]])[..., None]],
            )
            results[f"two_images_{norm}"] = {k: v.item() for k, v in out.items()}
        with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
            json.dump(results, f)


def _expected(name, rank):
    labels = SCENARIOS[name]
    num_pos = [sum(1 for x in lab if x != NUM_CLASSES) for lab in labels]
    n_pos = max(sum(num_pos) / len(labels), 1.0)  # average over workers, floor 1
    ctr_sum = max(sum(num_pos) * 1.0 / len(labels), 1.0)  # every centerness target is 1
    mine = labels[rank]
    cls = sum(
        _focal(x, int(c == lab)) for row, lab in zip(LOGITS[rank], mine) for c, x in enumerate(row)
    )
    pos = [i for i, lab in enumerate(mine) if lab != NUM_CLASSES]
    return {
        "loss_cls": cls / n_pos,
        "loss_box_reg": 2.0 * GIOU * len(pos) / ctr_sum,
        "loss_centerness": sum(_bce(CTR[rank][i], 1.0) for i in pos) / n_pos,
    }


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_normalisers_are_averaged_over_workers(tmp_path):
    rendezvous = str(tmp_path / "rendezvous")
    ctx = mp.start_processes(
        _worker, args=(2, rendezvous, str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.time() + 120
    while not ctx.join(timeout=5):
        if time.time() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail("distributed workers did not finish (hang in all-reduce?)")
    results = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    # 3 vs 1 positives: N_pos = 2 on both workers; sum of centerness (3 + 1) / 2 = 2.
    for name in SCENARIOS:
        for rank in range(2):
            got = results[rank][name]
            assert got.pop("grads_finite"), (name, rank)
            expected = _expected(name, rank)
            for key, value in expected.items():
                assert got[key] == pytest.approx(value, rel=1e-5), (name, rank, key)
    # spelled out for the main case
    r0, r1 = results[0]["3_vs_1"], results[1]["3_vs_1"]
    assert r0["loss_box_reg"] == pytest.approx(2.0 * 0.5 * 3 / 2)
    assert r1["loss_box_reg"] == pytest.approx(2.0 * 0.5 * 1 / 2)
    # 1 vs 0: the worker without positives has zero box/centerness loss and did not hang
    assert results[1]["1_vs_0"]["loss_box_reg"] == 0.0
    assert results[1]["1_vs_0"]["loss_centerness"] == 0.0
    # Two images per worker, one of them without positives.
    for norm, normaliser in TWO_IMAGES_NORMALISER.items():
        for rank in range(2):
            got = results[rank][f"two_images_{norm}"]
            images = list(zip(TWO_IMAGES[rank], (LOGITS[rank], LOGITS[1 - rank])))
            images_ctr = (CTR[rank], CTR[1 - rank])
            cls = sum(
                _focal(x, int(c == lab))
                for labels, logits in images
                for row, lab in zip(logits, labels)
                for c, x in enumerate(row)
            )
            assert got["loss_cls"] == pytest.approx(cls / normaliser, rel=1e-5), (norm, rank)
            ctr = sum(
                _bce(images_ctr[i][j], 1.0)
                for i, labels in enumerate(TWO_IMAGES[rank])
                for j, lab in enumerate(labels)
                if lab != NUM_CLASSES
            )
            assert got["loss_centerness"] == pytest.approx(ctr / normaliser, rel=1e-5)
            # box loss: / the sum of centerness targets averaged over workers, (1 + 3) / 2
            num_pos = sum(lab != NUM_CLASSES for labels in TWO_IMAGES[rank] for lab in labels)
            assert got["loss_box_reg"] == pytest.approx(2.0 * GIOU * num_pos / 2.0, rel=1e-5)
