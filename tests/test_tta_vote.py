"""The authors' multi-scale test (sfzhang15/ATSS atss_core/engine/bbox_aug_vote.py): box voting
and soft voting in place of NMS, per-scale object-size ranges, "+1" IoUs and flips, the views of
the multi-scale Original configs. Expected values are worked out by hand in the comments."""

import pytest
import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from tiny_setup import REPO, image_dicts, registered, small_cfg

from atss_d2 import add_atss_config
from atss_d2.config_checks import ConfigError, check_atss_config
from atss_d2.engine import ATSSTrainer
from atss_d2.modeling import (
    ATSSDatasetMapperTTA,
    ATSSWithTTA,
    box_vote,
    in_size_range,
    merge_detections,
)


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Voting of one class
# ---------------------------------------------------------------------------------------------
def test_vote_clusters_around_the_best_box_not_transitively():
    # A [0,0,10,10] 0.9 (area 100); B [0,0,10,13] 0.8: IoU(A, B) = 100 / 130 = 0.769 >= 0.66;
    # D [0,0,10,16] 0.7: IoU(A, D) = 100 / 160 = 0.625 < 0.66, although IoU(B, D) = 130 / 160
    # = 0.81: clusters are taken around the best remaining box, so D is a cluster of its own.
    # Given out of score order: voting sorts first.
    boxes = _t([[0, 0, 10, 16], [0, 0, 10, 10], [0, 0, 10, 13]])
    scores = torch.tensor([0.7, 0.9, 0.8])
    b, s = box_vote(boxes, scores, 0.66)
    # {A, B}: y2 = (0.9 * 10 + 0.8 * 13) / 1.7 = 19.4 / 1.7 = 11.41176, score max = 0.9.
    assert torch.allclose(b, _t([[0, 0, 10, 19.4 / 1.7], [0, 0, 10, 16]]))
    assert s.tolist() == pytest.approx([0.9, 0.7])


def test_vote_threshold_is_inclusive():
    # IoU([0,0,10,10], [0,0,10,5]) = 50 / 100 = 0.5 exactly: joins at 0.5 (>=), not above.
    # y2 = (0.9 * 10 + 0.3 * 5) / 1.2 = 10.5 / 1.2 = 8.75.
    boxes = _t([[0, 0, 10, 10], [0, 0, 10, 5]])
    scores = torch.tensor([0.9, 0.3])
    b, s = box_vote(boxes, scores, 0.5)
    assert torch.allclose(b, _t([[0, 0, 10, 8.75]])) and s.tolist() == pytest.approx([0.9])
    b, s = box_vote(boxes, scores, 0.51)
    assert torch.equal(b, boxes)


def test_vote_weighted_mean_of_three():
    # A [0,0,10,10] 0.9; B [0,0,10,12] 0.6: IoU 100 / 120 = 0.833; C [1,0,11,10] 0.3: overlap
    # 9 x 10 = 90, IoU 90 / (100 + 100 - 90) = 0.818. All three vote, weights sum 1.8:
    # x1 = (0.3 * 1) / 1.8 = 0.16667, x2 = (9 + 6 + 3.3) / 1.8 = 10.16667,
    # y2 = (9 + 7.2 + 3) / 1.8 = 10.66667.
    boxes = _t([[0, 0, 10, 10], [0, 0, 10, 12], [1, 0, 11, 10]])
    b, s = box_vote(boxes, torch.tensor([0.9, 0.6, 0.3]), 0.66)
    assert torch.allclose(b, _t([[0.3 / 1.8, 0, 18.3 / 1.8, 19.2 / 1.8]]))
    assert s.tolist() == pytest.approx([0.9])


def test_soft_vote_keeps_decayed_members():
    # The cluster of the previous test; each member is also kept with score * (1 - IoU):
    # A: 0.9 * (1 - 1) = 0 (dropped); B: 0.6 * (1 - 100/120) = 0.6 * 20/120 = 0.1;
    # C: 0.3 * (1 - 90/110) = 0.3 * 20/110 = 0.054545. Both >= 0.05; at 0.06 only B.
    boxes = _t([[0, 0, 10, 10], [0, 0, 10, 12], [1, 0, 11, 10]])
    scores = torch.tensor([0.9, 0.6, 0.3])
    voted = [0.3 / 1.8, 0, 18.3 / 1.8, 19.2 / 1.8]
    b, s = box_vote(boxes, scores, 0.66, soft_score_thresh=0.05)
    assert torch.allclose(b, _t([voted, [0, 0, 10, 12], [1, 0, 11, 10]]))
    assert s.tolist() == pytest.approx([0.9, 0.1, 0.3 * 20 / 110])
    b, s = box_vote(boxes, scores, 0.66, soft_score_thresh=0.06)
    assert torch.allclose(b, _t([voted, [0, 0, 10, 12]]))
    assert s.tolist() == pytest.approx([0.9, 0.1])


def test_soft_vote_leaves_single_boxes_alone():
    # IoU([0,0,10,10], [20,0,29.9,10]) = 0: two clusters of one, kept bit for bit (in float32,
    # 0.7 * 29.9 / 0.7 is not 29.9), no decayed copies.
    boxes = _t([[0, 0, 10, 10], [20, 0, 29.9, 10]])
    b, s = box_vote(boxes, torch.tensor([0.9, 0.7]), 0.66, soft_score_thresh=0.0)
    assert torch.equal(b, boxes) and s.tolist() == pytest.approx([0.9, 0.7])
    b, s = box_vote(boxes[:0], torch.zeros(0), 0.66)
    assert b.shape == (0, 4) and s.shape == (0,)


def test_plus_one_iou_joins_a_cluster():
    # A [0,0,10,5] 0.8, B [0,0,10,8] 0.4, nested. Plain: IoU = 50 / 80 = 0.625 < 0.66, two
    # clusters. +1 widths: A 11 x 6 = 66, B 11 x 9 = 99, overlap 66: IoU 66 / 99 = 0.667 >= 0.66,
    # one cluster: y2 = (0.8 * 5 + 0.4 * 8) / 1.2 = 7.2 / 1.2 = 6.
    boxes = _t([[0, 0, 10, 5], [0, 0, 10, 8]])
    scores = torch.tensor([0.8, 0.4])
    b, s = box_vote(boxes, scores, 0.66)
    assert torch.equal(b, boxes) and s.tolist() == pytest.approx([0.8, 0.4])
    b, s = box_vote(boxes, scores, 0.66, plus_one=True)
    assert torch.allclose(b, _t([[0, 0, 10, 6]])) and s.tolist() == pytest.approx([0.8])
    # Soft voting decays with the same +1 IoU: B keeps 0.4 * (1 - 66/99) = 0.4 / 3 = 0.1333
    # (0.4 * (1 - 0.625) = 0.15 with the plain IoU).
    b, s = box_vote(boxes, scores, 0.66, plus_one=True, soft_score_thresh=0.05)
    assert torch.allclose(b, _t([[0, 0, 10, 6], [0, 0, 10, 8]]))
    assert s.tolist() == pytest.approx([0.8, 0.4 / 3])
    # Through merge_detections, and NMS at 0.64 sees the same difference.
    classes = torch.tensor([2, 2])
    b, s, c = merge_detections(boxes, scores, classes, method="vote", plus_one=True)
    assert torch.allclose(b, _t([[0, 0, 10, 6]])) and c.tolist() == [2]
    b, s, c = merge_detections(boxes, scores, classes, method="nms", nms_thresh=0.64)
    assert len(b) == 2
    b, s, c = merge_detections(boxes, scores, classes, method="nms", nms_thresh=0.64, plus_one=True)
    assert b.tolist() == [[0, 0, 10, 5]]


# ---------------------------------------------------------------------------------------------
# Merging over classes, the final cap
# ---------------------------------------------------------------------------------------------
def test_vote_merges_each_class_apart_and_keeps_ties_at_the_cap():
    # Two identical boxes of different classes never vote together; four boxes far apart.
    boxes = _t([[0, 0, 10, 10], [0, 0, 10, 10], [50, 0, 60, 10], [100, 0, 110, 10]])
    scores = torch.tensor([0.9, 0.5, 0.5, 0.3])
    classes = torch.tensor([0, 1, 0, 0])
    b, s, c = merge_detections(boxes, scores, classes, method="vote")
    assert s.tolist() == pytest.approx([0.9, 0.5, 0.5, 0.3]) and len(b) == 4
    # Cap 2: the 2nd highest score is 0.5, and all scores >= 0.5 stay (3 detections).
    b, s, c = merge_detections(boxes, scores, classes, method="vote", max_detections=2)
    assert s.tolist() == pytest.approx([0.9, 0.5, 0.5])
    assert sorted(c.tolist()) == [0, 0, 1]
    b, s, c = merge_detections(boxes, scores, classes, method="soft_vote", max_detections=1)
    assert s.tolist() == pytest.approx([0.9]) and b.tolist() == [[0, 0, 10, 10]]


# ---------------------------------------------------------------------------------------------
# Size ranges
# ---------------------------------------------------------------------------------------------
def test_size_range_bounds_are_excluded():
    # (4, 10): 16 < area < 100.
    boxes = _t([[0, 0, 4, 4], [0, 0, 4, 4.5], [0, 0, 10, 10], [0, 0, 9, 11]])
    # areas 16 (out), 18 (in), 100 (out), 99 (in)
    assert in_size_range(boxes, 4, 10).tolist() == [False, True, False, True]
    # +1 widths: [0,0,3,3] 4 x 4 = 16 (out), [0,0,4,4] 25 (in), [0,0,9,9] 100 (out),
    # [0,0,8,9] 9 x 10 = 90 (in).
    boxes = _t([[0, 0, 3, 3], [0, 0, 4, 4], [0, 0, 9, 9], [0, 0, 8, 9]])
    assert in_size_range(boxes, 4, 10, plus_one=True).tolist() == [False, True, False, True]
    # Plain widths: areas 9, 16 (out), 81, 72 (in).
    assert in_size_range(boxes, 4, 10).tolist() == [False, False, True, True]


# ---------------------------------------------------------------------------------------------
# Views
# ---------------------------------------------------------------------------------------------
def test_views_sizes_ranges_and_plus_one_flip():
    mapper = ATSSDatasetMapperTTA(
        min_sizes=[32, 64],
        max_size=1000,
        flip=True,
        max_sizes=[1000, 40],
        size_ranges=[[0, 10000], [10, 20]],
        plus_one=True,
    )
    image = torch.zeros(3, 64, 96, dtype=torch.uint8)
    image[:, :, :10] = 255  # a bright left edge shows the flip
    views = mapper({"image": image, "height": 64, "width": 96})
    # 32 px short side: 32 x 48. 64 px short side but long side <= 40: 40 / 96 * 64 = 26.7 -> 27.
    assert [tuple(v["image"].shape) for v in views] == [(3, 32, 48)] * 2 + [(3, 27, 40)] * 2
    assert [v["size_range"] for v in views] == [(0, 10000)] * 2 + [(10, 20)] * 2
    assert views[0]["image"][0, 0, 0] == 255 and views[1]["image"][0, 0, -1] == 255
    box = _t([[10, 5, 20, 15]]).numpy()
    # Flipped 48-px view: x -> 48 - 1 - x gives [27, 37], then x2 back to the 96-px image.
    assert views[1]["transforms"].inverse().apply_box(box).tolist() == [[54, 10, 74, 30]]
    assert views[0]["transforms"].inverse().apply_box(box).tolist() == [[20, 10, 40, 30]]
    with pytest.raises(ValueError, match="size_ranges has 1 entries"):
        ATSSDatasetMapperTTA(min_sizes=[32, 64], max_size=100, flip=False, size_ranges=[[0, 1]])


class _FixedDetections(torch.nn.Module):
    """Stands in for the model: fixed detections (view coordinates) per view size, and per
    flip (the input image is bright on its left edge only)."""

    def __init__(self, by_view):
        super().__init__()
        self.by_view = by_view

    def forward(self, batched_inputs):
        outputs = []
        for x in batched_inputs:
            image = x["image"]
            flipped = bool(image[0, 0, -1] > image[0, 0, 0])
            boxes, scores = self.by_view[(tuple(image.shape[-2:]), flipped)]
            inst = Instances(tuple(image.shape[-2:]))
            inst.pred_boxes = Boxes(_t(boxes))
            inst.scores = torch.tensor(scores)
            inst.pred_classes = torch.zeros(len(scores), dtype=torch.long)
            outputs.append({"instances": inst})
        return outputs


@pytest.fixture(scope="module")
def atss_model():
    return build_model(small_cfg()).eval()


def _image(h, w):
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    image[:, :, :3] = 255
    return image


def test_tta_ranges_in_view_pixels_then_vote_in_the_first_view(atss_model):
    # Input 40 x 60 of an 80 x 120 original; views of short side 40 (the merge frame), 20, 80.
    tta = ATSSWithTTA(
        model=atss_model,
        tta_mapper=ATSSDatasetMapperTTA(
            min_sizes=[40, 20, 80],
            max_size=1000,
            flip=False,
            size_ranges=[[0, 10000], [10, 10000], [0, 20]],
        ),
        merge="vote",
    )
    tta.model = _FixedDetections(
        {
            ((40, 60), False): ([[10, 10, 30, 30]], [0.9]),
            # area 100 = 10^2: out; area 10 x 11 = 110: in, x2 -> [10, 10, 30, 32]
            ((20, 30), False): ([[5, 5, 15, 15], [5, 5, 15, 16]], [0.6, 0.6]),
            # area 1600 > 20^2: out; 18 x 18 = 324: in, x0.5 -> [10, 10, 19, 19]
            ((80, 120), False): ([[20, 20, 60, 60], [20, 20, 38, 38]], [0.3, 0.3]),
        }
    )
    out = tta([{"image": _image(40, 60), "height": 80, "width": 120}])[0]["instances"]
    # In the 40 x 60 frame: [10,10,30,32] has IoU 400 / 440 = 0.91 with [10,10,30,30]:
    # y2 = (0.9 * 30 + 0.6 * 32) / 1.5 = 46.2 / 1.5 = 30.8. [10,10,19,19]: IoU 81 / 400, alone.
    # Then x2 to the 80 x 120 output.
    assert out.image_size == (80, 120)
    assert torch.allclose(out.pred_boxes.tensor, _t([[20, 20, 60, 61.6], [20, 20, 38, 38]]))
    assert out.scores.tolist() == pytest.approx([0.9, 0.3])


def test_tta_plus_one_vote_is_in_the_first_views_pixels(atss_model):
    # +1 IoUs depend on the scale. In the first (40 x 60) view: [0,0,10,5] and [0,0,10,8]
    # (the 80 x 120 view's [0,0,20,16] halved): 66 / 99 = 0.667 >= 0.66, one cluster with
    # y2 = (0.8 * 5 + 0.4 * 8) / 1.2 = 6. In the 80 x 120 view's pixels it would be
    # 21 * 11 / (21 * 17) = 0.647: two boxes.
    tta = ATSSWithTTA(
        model=atss_model,
        tta_mapper=ATSSDatasetMapperTTA(min_sizes=[40, 80], max_size=1000, flip=False),
        merge="vote",
        plus_one=True,
    )
    tta.model = _FixedDetections(
        {
            ((40, 60), False): ([[0, 0, 10, 5]], [0.8]),
            ((80, 120), False): ([[0, 0, 20, 16]], [0.4]),
        }
    )
    out = tta([{"image": _image(40, 60)}])[0]["instances"]
    assert torch.allclose(out.pred_boxes.tensor, _t([[0, 0, 10, 6]]))
    assert out.scores.tolist() == pytest.approx([0.8])


@pytest.mark.parametrize("plus_one", [False, True])
def test_tta_flip_back_with_and_without_plus_one(atss_model, plus_one):
    tta = ATSSWithTTA(
        model=atss_model,
        tta_mapper=ATSSDatasetMapperTTA(
            min_sizes=[40], max_size=1000, flip=True, plus_one=plus_one
        ),
        merge="vote",
        plus_one=plus_one,
    )
    tta.model = _FixedDetections(
        {
            ((40, 60), False): ([[10, 10, 29, 29]], [0.8]),
            ((40, 60), True): ([[30, 10, 49, 29]], [0.4]),
        }
    )
    out = tta([{"image": _image(40, 60)}])[0]["instances"]
    if plus_one:
        # x -> 60 - 1 - x: [10, 10, 29, 29], the same box: the vote leaves it unchanged.
        expected = [[10, 10, 29, 29]]
    else:
        # x -> 60 - x: [11, 10, 30, 29]; IoU 18 * 19 / (2 * 19 * 19 - 18 * 19) = 0.9:
        # x1 = (0.8 * 10 + 0.4 * 11) / 1.2 = 10.3333, x2 = (0.8 * 29 + 0.4 * 30) / 1.2 = 29.3333.
        expected = [[12.4 / 1.2, 10, 35.2 / 1.2, 29]]
    assert torch.allclose(out.pred_boxes.tensor, _t(expected))
    assert out.scores.tolist() == pytest.approx([0.8])


def test_tta_views_come_from_the_original_images(tmp_path, atss_model, monkeypatch):
    # The plain test loader resizes to INPUT.MIN_SIZE_TEST (32 here); the TTA one must not.
    seen = []

    class Record(DatasetEvaluator):
        def process(self, inputs, outputs):
            seen.extend(
                (tuple(x["image"].shape), o["instances"].image_size)
                for x, o in zip(inputs, outputs)
            )

        def evaluate(self):
            return {}

    monkeypatch.setattr(ATSSTrainer, "build_evaluator", classmethod(lambda *a, **k: Record()))
    with registered("tta_originals", image_dicts(tmp_path, num_images=2, size=(64, 80))) as name:
        cfg = small_cfg(
            "INPUT.MIN_SIZE_TEST", 32, "INPUT.MAX_SIZE_TEST", 1000,
            "TEST.AUG.MIN_SIZES", "(48,)", "TEST.AUG.FLIP", False,
            "DATASETS.TEST", f"('{name}',)", "DATALOADER.NUM_WORKERS", 0,
            "OUTPUT_DIR", str(tmp_path), num_classes=2,
        )  # fmt: skip
        ATSSTrainer.test_with_TTA(cfg, atss_model)
    assert seen == [((3, 64, 80), (64, 80))] * 2
    assert cfg.INPUT.MIN_SIZE_TEST == 32  # the caller's config is left as it was


# ---------------------------------------------------------------------------------------------
# The multi-scale Original configs
# ---------------------------------------------------------------------------------------------
def _load(name):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_atss_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / "Original" / name))
    return cfg


# TEST.BBOX_AUG of sfzhang15/ATSS configs/atss/atss_dcnv2_X_101_64x4d_FPN_2x.yaml (the 50.7 AP
# test-dev model), typed from that file.
AUTHORS_SCALES = (400, 500, 600, 640, 700, 900, 1000, 1100, 1200, 1300, 1400, 1800)
AUTHORS_RANGES = [[96, 10000], [96, 10000], [64, 10000], [64, 10000], [64, 10000], [0, 10000],
                  [0, 10000], [0, 256], [0, 256], [0, 192], [0, 192], [0, 96]]  # fmt: skip


@pytest.mark.parametrize(
    "name",
    [
        "atss_R_101_FPN_2x_ms.yaml",
        "atss_dcnv2_R_101_FPN_2x_ms.yaml",
        "atss_dcnv2_X_101_64x4d_FPN_2x_ms.yaml",
    ],
)
def test_ms_original_configs_hold_the_authors_test(name):
    cfg = _load(name)
    a, aug = cfg.MODEL.ATSS, cfg.TEST.AUG
    assert aug.ENABLED is False  # on with TEST.AUG.ENABLED True, as their BBOX_AUG.ENABLED
    # First the identity view (INPUT.MIN_SIZE_TEST 800, INPUT.MAX_SIZE_TEST 1333, every box
    # kept), then their SCALES; H_FLIP and SCALE_H_FLIP both True.
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (800, 1333)
    assert tuple(aug.MIN_SIZES) == (800, *AUTHORS_SCALES) and aug.FLIP is True
    # Their long side: INPUT.MAX_SIZE_TEST (1333) for scales < 800, else MAX_SIZE 3000.
    assert list(a.TTA_MAX_SIZES) == [1333] * 6 + [3000] * 7
    assert [list(r) for r in a.TTA_SCALE_RANGES] == [[0, 10000], *AUTHORS_RANGES]
    # VOTE True, VOTE_TH 0.66, MERGE_TYPE "soft-vote"; soft threshold RETINANET.INFERENCE_TH;
    # at most ATSS.PRE_NMS_TOP_N (1000) after the merge, TEST.DETECTIONS_PER_IMG (100) per view.
    assert a.TTA_MERGE == "soft_vote" and a.TTA_VOTE_THRESH == 0.66
    assert a.TTA_SOFT_VOTE_SCORE_THRESH == 0.05
    assert a.TTA_DETECTIONS_PER_IMAGE == 1000 and cfg.TEST.DETECTIONS_PER_IMAGE == 100
    assert a.NMS_THRESH_TEST == 0.6 and a.LEGACY_PLUS_ONE is True
    check_atss_config(cfg)


def test_identity_range_keeps_every_box_of_the_first_view():
    # [0, 10000]: 0 < area < 1e8, true of every non-empty box of an image of <= 3000 px.
    boxes = _t([[0, 0, 0.01, 0.01], [0, 0, 3000, 3000]])
    assert in_size_range(boxes, 0, 10000).tolist() == [True, True]


# ---------------------------------------------------------------------------------------------
# Config checks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "opts,words",
    [
        (["MODEL.ATSS.TTA_MERGE", "'soft-vote'"], "expected one of 'nms', 'vote', 'soft_vote'"),
        (["MODEL.ATSS.TTA_SOFT_VOTE_SCORE_THRESH", "1.5"], "expected a number in [0.0, 1.0]"),
        (["MODEL.ATSS.TTA_DETECTIONS_PER_IMAGE", "-1"], "expected an integer >= 0"),
        (
            ["TEST.AUG.MIN_SIZES", "(400, 800)", "MODEL.ATSS.TTA_MAX_SIZES", "[1333]"],
            "expected one entry per TEST.AUG.MIN_SIZES entry (2), or [] for none",
        ),
        (
            ["TEST.AUG.MIN_SIZES", "(400, 800)", "MODEL.ATSS.TTA_MAX_SIZES", "[1333, 0]"],
            "expected integers >= 1",
        ),
        (
            ["TEST.AUG.MIN_SIZES", "(400,)", "MODEL.ATSS.TTA_SCALE_RANGES", "[[0, 96], [96, 1]]"],
            "expected one entry per TEST.AUG.MIN_SIZES entry (1)",
        ),
        (
            ["TEST.AUG.MIN_SIZES", "(400,)", "MODEL.ATSS.TTA_SCALE_RANGES", "[[96]]"],
            "expected one [low, high] pair per scale",
        ),
        (
            ["TEST.AUG.MIN_SIZES", "(400,)", "MODEL.ATSS.TTA_SCALE_RANGES", "[[96, 64]]"],
            "expected 0 <= low < high in each [low, high], got [96, 64]",
        ),
    ],
)
def test_tta_config_errors(opts, words):
    key = opts[-2]
    with pytest.raises(ConfigError) as info:
        check_atss_config(small_cfg(*opts))
    assert str(info.value).startswith(f"{key} is ")
    assert words in str(info.value)


def test_changing_the_scales_of_an_ms_config_asks_for_its_ranges():
    cfg = _load("atss_dcnv2_X_101_64x4d_FPN_2x_ms.yaml")
    cfg.merge_from_list(["TEST.AUG.MIN_SIZES", "(800, 1200)"])
    with pytest.raises(ConfigError, match=r"MODEL.ATSS.TTA_MAX_SIZES is .* \(2\), or \[\]"):
        check_atss_config(cfg)
