"""
What atss_d2's train_net.py reads besides the model, data and optimizer (detectron2's
``configs/common/train.py`` keys, and ``seed``).
"""

train = dict(
    output_dir="./output",
    # Weights to start from (MODEL.WEIGHTS); --eval-only evaluates them.
    init_checkpoint="",
    max_iter=90000,
    amp=dict(enabled=False),  # SOLVER.AMP.ENABLED
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=5000, max_to_keep=100),  # SOLVER.CHECKPOINT_PERIOD
    eval_period=0,  # TEST.EVAL_PERIOD: 0 evaluates after training only
    log_period=20,
    device="cuda",
    seed=-1,  # SEED: < 0 picks one at random
)
