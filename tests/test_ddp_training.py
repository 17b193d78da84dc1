"""
Two CPU processes (gloo) train the whole ATSS model under DistributedDataParallel: every
parameter gets a gradient (no unused parameters, so DDP's default find_unused_parameters=False
works), the loss normalisers are all-reduced, so the averaged gradients equal one process's on
the combined batch, and a few SGD steps keep the replicas identical.

detectron2 0.6's ``launch`` starts several processes only with CUDA, so the test starts the
process group itself (what ``launch`` does per GPU, with gloo instead of NCCL).
"""

import math

import torch
import torch.multiprocessing as mp
from detectron2.config import get_cfg
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from tiny_setup import REPO, gloo_process_group, one_torch_thread, tiny_cfg
from torch.nn.parallel import DistributedDataParallel

from atss_d2 import add_atss_config

STEPS = 3


def sample(rank: int):
    """Rank 0's image has three objects, rank 1's none: the per-worker positives differ."""
    g = torch.Generator().manual_seed(100 + rank)
    inst = Instances((64, 80))
    boxes = [[4.0, 6.0, 30.0, 34.0], [40.0, 30.0, 70.0, 60.0], [10.0, 40.0, 22.0, 60.0]]
    inst.gt_boxes = Boxes(torch.tensor(boxes if rank == 0 else []).reshape(-1, 4))
    inst.gt_classes = torch.tensor([0, 1, 1] if rank == 0 else [], dtype=torch.long)
    return {"image": torch.rand(3, 64, 80, generator=g) * 255, "instances": inst}


def new_model(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    return model


def gradients(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank, world_size, rendezvous_file, cfg, out_dir):
    with gloo_process_group(rank, world_size, rendezvous_file, timeout_s=120):
        model = new_model(cfg)
        # As detectron2's create_ddp_model, without device_ids (CPU).
        ddp = DistributedDataParallel(model, broadcast_buffers=False)
        with EventStorage():
            losses = ddp([sample(rank)])
        sum(losses.values()).backward()
        unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        torch.save({"grads": gradients(model), "unused": unused}, f"{out_dir}/grads{rank}.pt")

        # A few SGD steps with detectron2's SimpleTrainer (its loss check gathers over workers).
        def data():
            while True:
                yield [sample(rank)]

        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        trainer = SimpleTrainer(ddp, data(), optimizer)
        trainer.train(0, STEPS)
        history = trainer.storage.history("total_loss").values() if rank == 0 else []
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.save({"params": flat, "total_loss": history}, f"{out_dir}/trained{rank}.pt")


def assert_close(actual, expected, name):
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= 1e-4 * scale + 1e-7, f"{name}: max error {err:.3g} (scale {scale:.3g})"


def test_two_process_gloo_matches_one_process_on_the_combined_batch(tmp_path):
    cfg = tiny_cfg(tmp_path)
    with one_torch_thread():
        reference = new_model(cfg)
        with EventStorage():
            losses = reference([sample(0), sample(1)])
        sum(losses.values()).backward()
    expected = gradients(reference)
    trainable = [n for n, p in reference.named_parameters() if p.requires_grad]
    assert sorted(expected) == sorted(trainable)  # single process: every parameter used

    rendezvous = str(tmp_path / "rendezvous")
    mp.spawn(_worker, args=(2, rendezvous, cfg, str(tmp_path)), nprocs=2, join=True)

    ranks = [torch.load(tmp_path / f"grads{r}.pt", weights_only=False) for r in range(2)]
    for r, result in enumerate(ranks):
        assert result["unused"] == [], f"rank {r}: parameters without gradient"
        assert sorted(result["grads"]) == sorted(expected)
        for name, grad in expected.items():
            assert_close(result["grads"][name], grad, f"rank {r} {name}")

    trained = [torch.load(tmp_path / f"trained{r}.pt", weights_only=False) for r in range(2)]
    assert torch.equal(trained[0]["params"], trained[1]["params"])  # replicas stay in sync
    initial = torch.cat([p.detach().flatten() for p in reference.parameters()])
    assert not torch.equal(trained[0]["params"], initial)  # and they did train
    history = trained[0]["total_loss"]
    assert len(history) == STEPS and all(math.isfinite(v) for v, _ in history)


def test_shapes_config_has_no_unused_parameters():
    # The backbone builds only the extra levels the head uses; a conv without gradient would be
    # rejected by DDP (find_unused_parameters=False).
    cfg = get_cfg()
    add_atss_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / "Shapes" / "atss_R_18_FPN_shapes.yaml"))
    with one_torch_thread():
        model = new_model(cfg)
        with EventStorage():
            losses = model([sample(0)])
        sum(losses.values()).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
