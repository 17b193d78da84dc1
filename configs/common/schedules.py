"""
Learning-rate multipliers, as ``SOLVER.LR_SCHEDULER_NAME`` / ``STEPS`` / ``WARMUP_*`` define them.

detectron2's schedulers run on the fraction of training done, so the steps and the warmup stay
at the same fraction of ``train.max_iter`` when it is overridden.
"""

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler, MultiStepParamScheduler


def multistep(max_iter, steps, warmup_iters=500, warmup_factor=0.001, gamma=0.1):
    """WarmupMultiStepLR: linear warmup over ``warmup_iters``, then x ``gamma`` at each step."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[gamma**k for k in range(len(steps) + 1)],
            milestones=[*steps, max_iter],
        ),
        warmup_length=warmup_iters / max_iter,
        warmup_method="linear",
        warmup_factor=warmup_factor,
    )


def cosine(max_iter, warmup_iters, warmup_factor):
    """WarmupCosineLR: linear warmup over ``warmup_iters``, then a cosine from 1 to 0."""
    return L(WarmupParamScheduler)(
        scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
        warmup_length=warmup_iters / max_iter,
        warmup_method="linear",
        warmup_factor=warmup_factor,
    )


# 12 COCO epochs at batch 16, x 0.1 after 8 and 11 (mmdetection's 1x).
lr_multiplier_1x = multistep(90000, [60000, 80000])
lr_multiplier_2x = multistep(180000, [120000, 160000])
