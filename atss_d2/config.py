from detectron2.config import CfgNode as CN


def add_atss_config(cfg):
    """
    Add the config keys of ATSS to a detectron2 config (in place).

    Only the given ``cfg`` is changed, never detectron2's global defaults. Keys named like
    ``MODEL.RETINANET``'s mean the same thing. Defaults follow mmdetection's
    ``configs/atss/atss_r50_fpn_1x_coco.py``; ``configs/Original`` switches to the behaviour of
    the authors' code (sfzhang15/ATSS) where the two differ.

    A config that has the keys already (e.g. from :func:`atss_d2.model_zoo.get_config`) is
    returned as it is: adding them again would reset the values merged into it.
    """
    if "ATSS" in cfg.MODEL:
        return cfg
    _C = cfg
    _C.MODEL.ATSS = CN()
    # Number of foreground classes.
    _C.MODEL.ATSS.NUM_CLASSES = 80
    # Backbone features the head runs on, finest first.
    _C.MODEL.ATSS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Convs in each of the classification and regression towers.
    _C.MODEL.ATSS.NUM_CONVS = 4
    # Normalization in the towers: "GN" (GroupNorm with 32 groups), "" for none, or any
    # norm name detectron2's get_norm accepts ("BN" is shared across levels: avoid).
    _C.MODEL.ATSS.NORM = "GN"
    # Whether tower convs have a bias. mmdetection: no bias before a norm; the authors' code
    # keeps it (needed to load their checkpoints exactly).
    _C.MODEL.ATSS.TOWER_CONV_BIAS = False
    # Make the last conv of each tower a modulated deformable conv (DCNv2, on torchvision's
    # deform_conv2d), as the authors' dcnv2 models do.
    _C.MODEL.ATSS.DCN_IN_TOWER = False
    # Prior probability of foreground used to initialize the classification bias.
    _C.MODEL.ATSS.PRIOR_PROB = 0.01
    # Candidates per level and per GT in the adaptive sample selection.
    _C.MODEL.ATSS.TOPK = 9
    # Opt-in: give every GT that ends up with no positive its highest-IoU candidate
    # (guards against the odd-shaped-GT failure reported on the original repository).
    _C.MODEL.ATSS.FORCE_ONE_POSITIVE = False
    # Max GTs whose candidate IoUs are computed at once; bounds memory with crowded images.
    # Assignments do not depend on it.
    _C.MODEL.ATSS.MATCHER_GT_CHUNK = 256
    # Focal loss parameters.
    _C.MODEL.ATSS.FOCAL_LOSS_ALPHA = 0.25
    _C.MODEL.ATSS.FOCAL_LOSS_GAMMA = 2.0
    # Weight of the GIoU box loss.
    _C.MODEL.ATSS.REG_LOSS_WEIGHT = 2.0
    # The box loss is divided by the (all-reduced) sum of centerness targets. mmdetection
    # clamps that sum at >= 1 (True); the authors' code does not (False).
    _C.MODEL.ATSS.REG_NORM_CLAMP = True
    # Normaliser of the classification and centerness losses, averaged over workers in both:
    # "per_image": the sum over images of max(positives, 1), so an image without positives
    # counts 1 (mmdetection: SamplingResult.avg_factor per image); "total": the batch's
    # positives, floored at 1 once (the authors' code).
    _C.MODEL.ATSS.NUM_POS_NORM = "per_image"
    # Padded batches: train each image only on the anchors inside its own padded extent (its
    # size rounded up to SIZE_DIVISIBILITY), as mmdetection's valid flags: the others are never
    # candidates and in no loss of that image (True). False: every anchor of the padded batch
    # (the authors' code).
    _C.MODEL.ATSS.VALID_ANCHORS_PER_IMAGE = True
    # Weights (dx, dy, dw, dh) of the anchor box coding, used when REGRESSION_TYPE is "BOX".
    _C.MODEL.ATSS.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
    # "BOX": deltas against the anchor box; "POINT": anchor-free l, t, r, b distances from the
    # anchor centre in units of the level's stride.
    _C.MODEL.ATSS.REGRESSION_TYPE = "BOX"
    # Box coding of the authors' maskrcnn-benchmark code: widths are x2 - x1 + 1 and decoded
    # x2/y2 get -1, boxes are clipped to [0, W - 1]. Only for their checkpoints.
    _C.MODEL.ATSS.LEGACY_PLUS_ONE = False
    # Inference: keep (anchor, class) pairs whose class probability exceeds this.
    _C.MODEL.ATSS.SCORE_THRESH_TEST = 0.05
    # Inference: candidates kept per level before NMS.
    _C.MODEL.ATSS.TOPK_CANDIDATES_TEST = 1000
    # Inference: how the per-level candidates are ranked: "cls" (class probability,
    # mmdetection) or "cls_ctr" (class probability x centerness, the authors' code).
    _C.MODEL.ATSS.CANDIDATE_RANKING_TEST = "cls"
    # Inference: class-aware NMS IoU threshold.
    _C.MODEL.ATSS.NMS_THRESH_TEST = 0.6
    # Final score: "sqrt" = sqrt(p_cls * p_ctr) (authors' code, detectron2's FCOS) or
    # "product" = p_cls * p_ctr (mmdetection). Same ranking, so the same COCO AP.
    _C.MODEL.ATSS.SCORE_MODE = "sqrt"
    # Images are padded to a multiple of this (32 in both references; detectron2 would pad to
    # the coarsest stride, 128).
    _C.MODEL.ATSS.SIZE_DIVISIBILITY = 32
    # Weights and activations in the channels-last memory format (NHWC): the same results,
    # faster convolutions on CPUs with oneDNN, above all in bfloat16 (SOLVER.AMP.ENABLED).
    _C.MODEL.ATSS.CHANNELS_LAST = False
    # Inference on CUDA: replay the backbone and head from a CUDA graph captured once per padded
    # input shape (the decoding, top-k and NMS stay eager). Same detections, far fewer kernel
    # launches; pays off where the input shapes repeat (a camera, a fixed-size deployment, a
    # benchmark), not where nearly every image has its own shape. Ignored on the CPU.
    _C.MODEL.ATSS.CUDA_GRAPHS = False
    # Graphs kept, least recently used dropped first; each holds one forward pass's activations.
    _C.MODEL.ATSS.CUDA_GRAPHS_MAX_SHAPES = 8
    # Test-time augmentation (on with detectron2's TEST.AUG.ENABLED; views from TEST.AUG.MIN_SIZES,
    # MAX_SIZE and FLIP): how the detections of all views are merged, in the frame of the first
    # view. "nms": class-aware NMS at NMS_THRESH_TEST. "vote" (the authors' multi-scale test,
    # sfzhang15/ATSS atss_core/engine/bbox_aug_vote.py): per class, the best remaining box and
    # the remaining boxes with IoU >= TTA_VOTE_THRESH with it become their score-weighted mean
    # box, with the best score, in place of NMS. "soft_vote": "vote", plus each member of a
    # cluster kept with its score times (1 - IoU) when that is >= TTA_SOFT_VOTE_SCORE_THRESH
    # (the authors' MERGE_TYPE "soft-vote"). IoUs with +1 widths when LEGACY_PLUS_ONE.
    _C.MODEL.ATSS.TTA_MERGE = "nms"
    # IoU with a cluster's best box at which a box joins the cluster ("vote", "soft_vote").
    _C.MODEL.ATSS.TTA_VOTE_THRESH = 0.66
    # "soft_vote": lowest decayed score kept (the authors' MODEL.RETINANET.INFERENCE_TH).
    _C.MODEL.ATSS.TTA_SOFT_VOTE_SCORE_THRESH = 0.05
    # Longest image side of each TEST.AUG.MIN_SIZES entry, one per entry; empty: TEST.AUG.MAX_SIZE
    # for all (the authors: INPUT.MAX_SIZE_TEST below 800 px, TEST.BBOX_AUG.MAX_SIZE from 800).
    _C.MODEL.ATSS.TTA_MAX_SIZES = []
    # Object sizes [low, high] each TEST.AUG.MIN_SIZES entry keeps, one per entry: a view keeps
    # the boxes with low^2 < w * h < high^2 in its own pixels (+1 widths when LEGACY_PLUS_ONE),
    # the authors' TEST.BBOX_AUG.SCALE_RANGES. Empty: every view keeps every box.
    _C.MODEL.ATSS.TTA_SCALE_RANGES = []
    # Detections kept after the merge, over all classes; 0: TEST.DETECTIONS_PER_IMAGE (which each
    # view keeps). The authors keep 1000 after voting (their MODEL.ATSS.PRE_NMS_TOP_N).
    _C.MODEL.ATSS.TTA_DETECTIONS_PER_IMAGE = 0

    # Extra FPN levels of the "build_atss_resnet_fpn_backbone" backbone.
    _C.MODEL.ATSS.FPN = CN()
    # Feature P6 is computed from ("p5": FPN output, both references; "res5": RetinaNet's way).
    _C.MODEL.ATSS.FPN.TOP_BLOCK_IN_FEATURE = "p5"
    # ReLU between P6 and the conv that makes P7: the authors' code has it; mmdetection's
    # FPN(add_extra_convs="on_output") does not.
    _C.MODEL.ATSS.FPN.P7_RELU = False

    # Optimizer extras of the authors' recipe (maskrcnn-benchmark): biases get
    # BASE_LR * BIAS_LR_FACTOR and WEIGHT_DECAY_BIAS; detectron2's own keys hold those values.
    # Warmup: detectron2's SOLVER.WARMUP_METHOD "constant" with WARMUP_FACTOR 1/3.
    # Optimizer (atss_d2.solver.build_optimizer): "SGD" (detectron2's, the ATSS recipe) or
    # "ADAMW" (same parameter groups and clipping; trains from scratch in far fewer iterations,
    # used by the CPU shapes demo).
    _C.SOLVER.OPTIMIZER = "SGD"

    # Data: annotations whose box is narrower or shorter than this many pixels in the original
    # image (before any augmentation), or whose "area" field (when the dataset keeps it) is
    # <= 0, are dropped with a counted warning: mmdetection's CocoDataset filter (w < 1 or
    # h < 1 or area <= 0) with 1.0; 0 keeps them (the authors' configs).
    _C.INPUT.MIN_BOX_SIZE = 1.0

    # Data: skip images whose file is missing or unreadable (with a counted warning) instead
    # of stopping training with an error naming the file.
    _C.DATALOADER.SKIP_UNREADABLE_IMAGES = False
    return cfg
