"""
Optimizers, as ``atss_d2.solver.build_optimizer`` builds them from ``SOLVER``: set
``optimizer.params.model`` to the model before instantiating (atss_d2's train_net.py does).
"""

import torch
from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

from atss_d2.solver import build_clipped_optimizer

# The ATSS recipe (mmdetection): SGD, lr 0.01 for batch 16, weight decay on every parameter,
# norms included (SOLVER.WEIGHT_DECAY_NORM 1e-4).
SGD = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(weight_decay_norm=1e-4),
    lr=0.01,
    momentum=0.9,
    nesterov=False,
    weight_decay=1e-4,
)

# SOLVER.OPTIMIZER "ADAMW" with SOLVER.CLIP_GRADIENTS (per-parameter gradient norm <= 1): trains
# from scratch in a few hundred iterations (the CPU shapes config).
AdamW = L(build_clipped_optimizer)(
    optimizer_class=torch.optim.AdamW,
    clip_type="norm",
    clip_value=1.0,
    norm_type=2.0,
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=0.002,
    weight_decay=0.05,
)
