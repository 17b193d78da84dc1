#!/usr/bin/env python
"""
Speed and memory of ATSS sample selection: atss_d2's ``ATSSMatcher`` against mmdetection 3.x's
``ATSSAssigner`` on the same anchors (one image, P3-P7 anchors as ATSS builds them) and the same
random GT boxes, and a check that both give the assignments of an exhaustive computation (full
anchors x GTs IoU and distance matrices).

    python tools/benchmark_matcher.py                    # 100 and 1000 GTs, 5000 for memory
    python tools/benchmark_matcher.py --device cuda --out output/bench
    python tools/benchmark_matcher.py --mmdet-python /tmp/mmvenv/bin/python

mmdetection is not a dependency of atss_d2. If ``mmdet`` is importable here it is used in this
process; ``--mmdet-python PY`` runs it in another interpreter (e.g. a throwaway venv) on the
same inputs, passed through a file. Without either, the reference timings come from an
exhaustive reimplementation of mmdetection's algorithm written for this tool (labelled
"exhaustive reimplementation" in the output). mmcv-lite (no compiled ops) is enough: the
assigner needs none, and a placeholder ``mmcv._ext`` lets ``mmdet.models`` import.
"""

import argparse
import importlib.util
import json
import math
import os
import sys
from typing import Dict, List, Optional, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/, for bench_common
from bench_common import (  # noqa: E402
    PeakMemory,
    count_ops,
    machine_info,
    median,
    mmcv_ext_placeholder,
    random_gt,
    run_mmdet_worker,
    sync,
    time_call,
)

INSTALL_HINT = (
    "to compare against mmdetection itself, install it in a separate venv:\n"
    "  python3 -m venv /tmp/mmvenv && /tmp/mmvenv/bin/pip install torch==2.14.1 "
    "torchvision==0.29.1 && /tmp/mmvenv/bin/pip install mmengine==0.10.7 mmdet==3.3.0 "
    "mmcv-lite==2.1.0\n"
    "and pass --mmdet-python /tmp/mmvenv/bin/python"
)
MIB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def atss_anchors(height: int, width: int, device: str) -> List[torch.Tensor]:
    """P3-P7 anchors of one ``height`` x ``width`` image exactly as the ATSS model builds them
    (configs/COCO-Detection/atss_R_50_FPN_1x.yaml: one 8*stride square anchor per location,
    offset 0, image padded to a multiple of 32)."""
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.anchor_generator import build_anchor_generator

    from atss_d2 import add_atss_config

    cfg = get_cfg()
    add_atss_config(cfg)
    cfg.merge_from_file(os.path.join(_repo_root(), "configs/COCO-Detection/atss_R_50_FPN_1x.yaml"))
    strides = [8, 16, 32, 64, 128]
    generator = build_anchor_generator(cfg, [ShapeSpec(channels=256, stride=s) for s in strides])
    div = cfg.MODEL.ATSS.SIZE_DIVISIBILITY
    h, w = math.ceil(height / div) * div, math.ceil(width / div) * div
    sizes = [(h // s, w // s) for s in strides[:3]]
    for _ in strides[3:]:  # P6, P7: stride-2 3x3 convs with padding 1
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    features = [torch.empty(1, 1, fh, fw, device=device) for fh, fw in sizes]
    return [b.tensor.to(device) for b in generator(features)]  # generator buffers stay on CPU


# --------------------------------------------------------------------------------------------
# Exhaustive reimplementation of mmdetection's ATSSAssigner (full matrices)
# --------------------------------------------------------------------------------------------
def _pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(A, 4) x (G, 4) -> (A, G); union clamped at 1e-6 like mmdetection's bbox_overlaps."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = (area_a[:, None] + area_b[None, :] - overlap).clamp(min=1e-6)
    return overlap / union


def _pairwise_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Centre distances (A, G) with the references' formula."""
    ca = torch.stack([(a[:, 0] + a[:, 2]) / 2.0, (a[:, 1] + a[:, 3]) / 2.0], dim=1)
    cb = torch.stack([(b[:, 0] + b[:, 2]) / 2.0, (b[:, 1] + b[:, 3]) / 2.0], dim=1)
    return (ca[:, None, :] - cb[None, :, :]).pow(2).sum(-1).sqrt()


def _full(fn, a: torch.Tensor, b: torch.Tensor, row_chunk: Optional[int]) -> torch.Tensor:
    if row_chunk is None:
        return fn(a, b)
    out = a.new_empty(len(a), len(b))
    for s in range(0, len(a), row_chunk):
        out[s : s + row_chunk] = fn(a[s : s + row_chunk], b)
    return out


@torch.no_grad()
def exhaustive_assign(
    anchors: torch.Tensor,
    num_per_level: List[int],
    gt: torch.Tensor,
    topk: int = 9,
    row_chunk: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    ATSS by full matrices, step for step as mmdetection 3.3's ``ATSSAssigner.assign``: the
    (A, G) IoU and centre-distance matrices, per-level topk over whole columns, mean + std of
    the candidates' IoUs, centre-inside test (> 0.01), highest IoU wins (first GT on a tie).
    ``row_chunk`` only bounds the temporaries while filling the (A, G) matrices.

    Returns:
        matches: LongTensor (A,), GT index or -1; thresholds: (G,).
    """
    num_anchors, num_gt = len(anchors), len(gt)
    matches = torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    if num_gt == 0 or num_anchors == 0:
        return matches, anchors.new_zeros(num_gt)
    ious = _full(_pairwise_iou, anchors, gt, row_chunk)  # (A, G)
    dist = _full(_pairwise_distance, anchors, gt, row_chunk)  # (A, G)
    candidates, start = [], 0
    for n in num_per_level:
        _, idx = dist[start : start + n].topk(min(topk, n), dim=0, largest=False)
        candidates.append(idx + start)
        start += n
    del dist
    cand = torch.cat(candidates, dim=0)  # (C, G)
    cand_iou = ious.gather(0, cand)  # (C, G)
    thr = cand_iou.mean(0) + cand_iou.std(0)
    positive = cand_iou >= thr[None, :]
    cx = ((anchors[:, 0] + anchors[:, 2]) / 2.0)[cand]
    cy = ((anchors[:, 1] + anchors[:, 3]) / 2.0)[cand]
    inside = (
        torch.stack([cx - gt[:, 0], cy - gt[:, 1], gt[:, 2] - cx, gt[:, 3] - cy], dim=1)
        .min(dim=1)
        .values
        > 0.01
    )
    positive &= inside
    masked = torch.full_like(ious, -100000000.0)
    cols = torch.arange(num_gt, device=gt.device).expand_as(cand)
    masked[cand[positive], cols[positive]] = ious[cand[positive], cols[positive]]
    best, arg = masked.max(dim=1)
    matches[best != -100000000.0] = arg[best != -100000000.0]
    return matches, thr


# --------------------------------------------------------------------------------------------
# mmdetection
# --------------------------------------------------------------------------------------------
def import_mmdet_assigner():
    """mmdetection's ATSSAssigner class and version, or (None, reason)."""
    if importlib.util.find_spec("mmdet") is None:
        return None, "mmdet is not installed"
    # mmcv-lite has no compiled ops; the assigner uses none.
    mmcv_ext_placeholder()
    import mmdet
    from mmdet.models.task_modules.assigners import ATSSAssigner

    return ATSSAssigner, mmdet.__version__


def mmdet_worker(in_path: str, out_path: str) -> None:
    """Run mmdetection's ATSSAssigner on the saved inputs (used through --mmdet-python)."""
    job = torch.load(in_path)
    torch.set_num_threads(job["threads"])
    assigner_cls, version = import_mmdet_assigner()
    if assigner_cls is None:
        raise SystemExit(f"mmdet worker: {version}")
    torch.save({"version": version, "results": _run_mmdet(assigner_cls, job)}, out_path)


def _run_mmdet(assigner_cls, job) -> Dict[str, dict]:
    from mmengine.structures import InstanceData

    device = job["device"]
    assigner = assigner_cls(topk=9)
    priors = InstanceData(priors=job["anchors"].to(device))
    results = {}
    for case in job["cases"]:
        gt = case["gt"].to(device)
        gts = InstanceData(bboxes=gt, labels=torch.zeros(len(gt), dtype=torch.long, device=device))

        def run():
            return assigner.assign(priors, job["num_per_level"], gts)

        entry = {}
        if case["memory"]:
            with PeakMemory(device) as mem:
                out = run()
            entry["extra_bytes"] = mem.extra
            entry["memory_method"] = mem.method
            entry["times"] = time_call(run, device, 1, 0)
        else:
            out = run()
            entry["times"] = time_call(run, device, job["iters"], job["warmup"])
        entry["matches"] = (out.gt_inds - 1).cpu()
        results[case["name"]] = entry
    return results


def run_mmdet(job, mmdet_python: Optional[str]):
    """(version, results) from mmdetection in this process or in ``mmdet_python``, or
    (None, reason)."""
    if mmdet_python:
        out, error = run_mmdet_worker(
            mmdet_python, __file__, {**job, "anchors": job["anchors"].cpu()}
        )
        if out is None:
            return None, error
        return out["version"], out["results"]
    assigner_cls, version = import_mmdet_assigner()
    if assigner_cls is None:
        return None, version
    return version, _run_mmdet(assigner_cls, job)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def batch_rows(matcher, level_boxes, args, device) -> List[dict]:
    """``match_batch`` on N images of 50 GTs each against one ``match`` per image: time, ATen
    ops dispatched, and whether the results are identical."""
    from detectron2.structures import Boxes

    rows = []
    for num_images in args.batches:
        gts = [
            Boxes(random_gt(50, args.height, args.width, args.seed + 100 + i, device))
            for i in range(num_images)
        ]

        def batched():
            return matcher.match_batch(level_boxes, gts)

        def one_at_a_time():
            return [matcher.match(level_boxes, g) for g in gts]

        matches, thresholds = batched()
        singles = one_at_a_time()
        identical = all(
            torch.equal(matches[i], r.matches) and torch.equal(thresholds[i], r.thresholds)
            for i, r in enumerate(singles)
        )
        rows.append(
            {
                "images": num_images,
                "gt_per_image": 50,
                "one_at_a_time_ms": 1000
                * median(time_call(one_at_a_time, device, args.iters, args.warmup)),
                "batched_ms": 1000 * median(time_call(batched, device, args.iters, args.warmup)),
                "one_at_a_time_ops": count_ops(one_at_a_time),
                "batched_ops": count_ops(batched),
                "identical": identical,
            }
        )
        if device == "cpu":
            # The ops the CUDA path would dispatch: the matcher picks the windowed search by
            # device type; counted here on the CPU with the CUDA choice (this tool's own
            # setting, restored after).
            from atss_d2.modeling import matcher as matcher_module

            saved = dict(matcher_module._MIN_PAIRS_FOR_WINDOW)
            matcher_module._MIN_PAIRS_FOR_WINDOW["cpu"] = saved["cuda"]
            try:
                rows[-1]["one_at_a_time_ops_cuda_path"] = count_ops(one_at_a_time)
                rows[-1]["batched_ops_cuda_path"] = count_ops(batched)
            finally:
                matcher_module._MIN_PAIRS_FOR_WINDOW.update(saved)
    return rows


def chunk_rows(cases, level_boxes, args, device) -> List[dict]:
    """atss_d2's selection with each ``--gt-chunks`` size: time per GT count (peak memory and
    one timed run for the memory case), and whether the result is the default chunk's."""
    from detectron2.structures import Boxes

    from atss_d2.modeling.matcher import ATSSMatcher

    rows = []
    for size in args.gt_chunks:
        matcher = ATSSMatcher(9, gt_chunk_size=size)
        for case in cases:
            gt = Boxes(case["gt"])
            row = {"gt_chunk": size, "num_gt": case["num_gt"], "memory": case["memory"]}
            if case["memory"]:
                with PeakMemory(device) as mem:
                    out = matcher(level_boxes, gt)
                row["extra_mb"] = mem.extra / MIB
                times = time_call(lambda: matcher(level_boxes, gt), device, 1, 0)
            else:
                times = time_call(lambda: matcher(level_boxes, gt), device, args.iters, args.warmup)
                out = matcher(level_boxes, gt)
            row["ms"] = 1000 * median(times)
            row["identical"] = bool(torch.equal(out.cpu(), case["ours"]))
            rows.append(row)
    return rows


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--width", type=int, default=1333)
    p.add_argument("--gts", type=int, nargs="+", default=[100, 1000], help="GT counts timed")
    p.add_argument("--big", type=int, default=5000, help="GT count of the memory check (0: skip)")
    p.add_argument("--memory-limit-mb", type=float, default=512.0)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mmdet-python", default=None, help="interpreter with mmdet installed")
    p.add_argument("--no-mmdet-big", action="store_true", help="skip mmdet at --big GTs")
    p.add_argument("--out", default="output/benchmark", help="folder for matcher.json")
    p.add_argument(
        "--batches",
        type=int,
        nargs="*",
        default=[2, 8],
        help="images per batch for the batched-selection comparison (50 GTs each)",
    )
    p.add_argument(
        "--gt-chunks",
        type=int,
        nargs="*",
        default=[],
        help="also time atss_d2 with these MODEL.ATSS.MATCHER_GT_CHUNK values (default 256)",
    )
    p.add_argument("--quick", action="store_true", help="fewer iterations, 2000 GT memory case")
    p.add_argument("--mmdet-worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.mmdet_worker:
        mmdet_worker(*args.mmdet_worker)
        return 0
    from detectron2.structures import Boxes
    from tqdm import tqdm

    from atss_d2.modeling.matcher import ATSSMatcher

    if args.quick:
        args.iters, args.warmup = min(args.iters, 3), 1
        args.big = min(args.big, 2000)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    levels = atss_anchors(args.height, args.width, device)
    anchors = torch.cat(levels)
    num_per_level = [len(x) for x in levels]
    level_boxes = [Boxes(x) for x in levels]
    matcher = ATSSMatcher(9)

    cases = [
        {
            "name": f"{n}",
            "num_gt": n,
            "gt": random_gt(n, args.height, args.width, args.seed + n, device),
            "memory": False,
        }
        for n in args.gts
    ]
    if args.big:
        cases.append(
            {
                "name": f"{args.big}-memory",
                "num_gt": args.big,
                "memory": True,
                "gt": random_gt(args.big, args.height, args.width, args.seed + 7, device),
            }
        )

    rows = []
    for case in tqdm(cases, desc="atss_d2 ATSSMatcher + exhaustive check"):
        gt = case["gt"]
        row = {"case": case["name"], "num_gt": case["num_gt"]}
        if case["memory"]:
            with PeakMemory(device) as mem:
                ours = matcher(level_boxes, Boxes(gt))
            row["atss_d2_extra_mb"] = mem.extra / MIB
            row["memory_method"] = mem.method
            row["atss_d2_ms"] = 1000 * median(
                time_call(lambda: matcher(level_boxes, Boxes(gt)), device, 1, 0)
            )
        else:
            times = time_call(
                lambda: matcher(level_boxes, Boxes(gt)), device, args.iters, args.warmup
            )
            row["atss_d2_ms"] = 1000 * median(times)
            ours = matcher(level_boxes, Boxes(gt))
        ref, _ = exhaustive_assign(anchors, num_per_level, gt, 9, row_chunk=2048)
        row["identical_to_exhaustive"] = bool(torch.equal(ours.cpu(), ref.cpu()))
        row["num_positive"] = int((ours >= 0).sum())
        case["ours"] = ours.cpu()
        rows.append(row)

    chunks = chunk_rows(cases, level_boxes, args, device)

    # Reference: mmdetection, or the exhaustive reimplementation when it is missing.
    job = {
        "anchors": anchors,
        "num_per_level": num_per_level,
        "iters": args.iters,
        "warmup": args.warmup,
        "device": device,
        "threads": torch.get_num_threads(),
        "cases": [
            {"name": c["name"], "gt": c["gt"].cpu(), "memory": c["memory"]}
            for c in cases
            if not (c["memory"] and args.no_mmdet_big)
        ],
    }
    print("running mmdetection's ATSSAssigner ...", flush=True)
    version, mm = run_mmdet(job, args.mmdet_python)
    if version is None:
        print(f"mmdetection unavailable ({mm}); {INSTALL_HINT}", flush=True)
        reference = "exhaustive reimplementation of mmdetection's ATSSAssigner (not mmdet)"
        mm = {}
        for c in tqdm(job["cases"], desc="exhaustive reimplementation"):
            gt = c["gt"].to(device)
            entry = {}

            def run():
                return exhaustive_assign(anchors, num_per_level, gt, 9)

            if c["memory"]:
                with PeakMemory(device) as mem:
                    run()
                entry["extra_bytes"] = mem.extra
                entry["times"] = time_call(run, device, 1, 0)
            else:
                entry["times"] = time_call(run, device, args.iters, args.warmup)
            entry["matches"] = run()[0].cpu()
            mm[c["name"]] = entry
    else:
        reference = f"mmdetection {version} ATSSAssigner"
    for row, case in zip(rows, cases):
        entry = mm.get(case["name"])
        if entry is None:
            continue
        row["reference_ms"] = 1000 * median(entry["times"])
        row["speedup"] = row["reference_ms"] / row["atss_d2_ms"]
        row["identical_to_reference"] = bool(torch.equal(case["ours"], entry["matches"]))
        if entry.get("extra_bytes") is not None:
            row["reference_extra_mb"] = entry["extra_bytes"] / MIB

    # Again, to see how much the timings moved on a shared machine.
    for row, case in zip(rows, cases):
        if not case["memory"]:
            gt = case["gt"]
            again = time_call(lambda: matcher(level_boxes, Boxes(gt)), device, args.iters, 1)
            row["atss_d2_ms_rerun"] = 1000 * median(again)

    targets = {"100": 2.0, "1000": 10.0}
    print(
        f"\nATSS sample selection, one {args.height}x{args.width} image, {len(anchors)} anchors "
        f"(P3-P7), device {device}, {torch.get_num_threads()} threads"
    )
    print(f"reference: {reference}\n")
    header = (
        f"{'GTs':>6} | {'atss_d2 ms':>10} | {'rerun ms':>9} | {'reference ms':>12} | "
        f"{'speedup':>7} | {'target':>6} | {'= exhaustive':>12} | {'= reference':>11}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        if row["case"].endswith("memory"):
            continue
        target = targets.get(row["case"])
        print(
            f"{row['num_gt']:>6} | {row['atss_d2_ms']:>10.2f} | "
            f"{row.get('atss_d2_ms_rerun', float('nan')):>9.2f} | "
            f"{row.get('reference_ms', float('nan')):>12.2f} | "
            f"{row.get('speedup', float('nan')):>6.2f}x | "
            f"{(f'>={target:g}x' if target else ''):>6} | "
            f"{str(row['identical_to_exhaustive']):>12} | "
            f"{str(row.get('identical_to_reference', 'n/a')):>11}"
        )
    for row in rows:
        if row["case"].endswith("memory"):
            ok = row["atss_d2_extra_mb"] <= args.memory_limit_mb
            ref_mem = row.get("reference_extra_mb")
            print(
                f"\n{row['num_gt']} GTs in one image: atss_d2 extra memory "
                f"{row['atss_d2_extra_mb']:.1f} MiB ({row['memory_method']}), limit "
                f"{args.memory_limit_mb:g} MiB: {'OK' if ok else 'OVER'}; time "
                f"{row['atss_d2_ms']:.0f} ms; identical to exhaustive: "
                f"{row['identical_to_exhaustive']}"
            )
            if ref_mem is not None:
                print(
                    f"  reference: extra memory {ref_mem:.1f} MiB, time "
                    f"{row['reference_ms']:.0f} ms, identical: "
                    f"{row.get('identical_to_reference')}"
                )

    if chunks:
        print(
            f"\natss_d2 with other GT chunk sizes (MODEL.ATSS.MATCHER_GT_CHUNK; default "
            f"{matcher.gt_chunk_size})"
        )
        header = f"{'chunk':>6} | {'GTs':>6} | {'ms':>8} | {'extra MiB':>9} | {'identical':>9}"
        print(header)
        print("-" * len(header))
        for c in chunks:
            print(
                f"{c['gt_chunk']:>6} | {c['num_gt']:>6} | {c['ms']:>8.2f} | "
                f"{c.get('extra_mb', float('nan')):>9.1f} | {str(c['identical']):>9}"
            )

    batches = batch_rows(matcher, level_boxes, args, device) if args.batches else []
    if batches:
        print(
            "\nA batch of images, 50 GTs each: match_batch against one match() per image "
            "(ATen ops dispatched: on a GPU, about the kernel launches)"
        )
        header = (
            f"{'images':>6} | {'per image ms':>12} | {'batched ms':>10} | "
            f"{'per image ops':>13} | {'batched ops':>11} | {'identical':>9}"
        )
        print(header)
        print("-" * len(header))
        for b in batches:
            print(
                f"{b['images']:>6} | {b['one_at_a_time_ms']:>12.2f} | {b['batched_ms']:>10.2f} | "
                f"{b['one_at_a_time_ops']:>13} | {b['batched_ops']:>11} | {str(b['identical']):>9}"
            )
        if "batched_ops_cuda_path" in batches[0]:
            print("ATen ops with the CUDA path's choice of search (full distance matrices):")
            for b in batches:
                print(
                    f"  {b['images']} images: one at a time {b['one_at_a_time_ops_cuda_path']}, "
                    f"batched {b['batched_ops_cuda_path']}"
                )

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "matcher.json")
    with open(path, "w") as f:
        json.dump(
            {
                "machine": machine_info(device),
                "reference": reference,
                "image": [args.height, args.width],
                "num_anchors": len(anchors),
                "num_per_level": num_per_level,
                "iters": args.iters,
                "warmup": args.warmup,
                "command": " ".join(sys.argv),
                "rows": rows,
                "chunks": chunks,
                "batches": batches,
            },
            f,
            indent=2,
        )
    print(f"\nwrote {path}")
    sync(device)
    identical = all(r["identical_to_exhaustive"] for r in rows)
    identical = identical and all(c["identical"] for c in chunks)
    return 0 if identical and all(b["identical"] for b in batches) else 1


if __name__ == "__main__":
    sys.exit(main())
