"""
Which classes does a detector find, miss and confuse? A confusion matrix and per-class
precision / recall at one IoU and one score threshold, from the ground truth of a dataset and
detections in COCO results format (``coco_instances_results.json``, as detectron2's
``COCOEvaluator`` writes it, or ``atss-demo --save-json``).

    from atss_d2.analysis import analyze_results

    report = analyze_results("output/inference/coco_instances_results.json", "shapes_val",
                             "output/analysis")  # confusion_matrix.png, per_class.json

Category ids: a results file holds the dataset's own category ids where the dataset's metadata
maps them (``thing_dataset_id_to_contiguous_id``, which detectron2's ``load_coco_json`` sets for
COCO-format jsons, atss_d2's ``--coco-dataset`` and the built-in shapes sets), and the 0-based
contiguous ids otherwise (atss_d2's ``--voc-dataset`` folders): ``COCOEvaluator`` maps back
through that table exactly when it exists. :func:`load_coco_results` undoes it the same way.
That table only exists once the dataset has been loaded, so load the dataset dicts first
(:func:`load_dataset_and_results` does both, in that order).

The matching rule is defined in :func:`confusion_matrix`.
"""

import json
import logging
import math
import os
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog
from detectron2.structures import BoxMode

from .engine.config import check_datasets_registered
from .utils import read_json

__all__ = [
    "CONFUSION_MATRIX_PNG",
    "PER_CLASS_JSON",
    "analyze_results",
    "check_results_images",
    "confusion_matrix",
    "load_coco_results",
    "load_dataset_and_results",
    "pairwise_ioa",
    "pairwise_iou",
    "per_class_report",
    "plot_confusion_matrix",
    "precision_recall",
]

logger = logging.getLogger(__name__)

CONFUSION_MATRIX_PNG = "confusion_matrix.png"
PER_CLASS_JSON = "per_class.json"

_MATCHING_RULE = (
    "Per image, detections with score >= score_threshold, highest score first: (1) each takes "
    "the unmatched ground-truth box of its own class with the highest IoU >= iou_threshold "
    "(a true positive, cell [c, c]); (2) each detection left takes the unmatched ground-truth "
    "box of another class with the highest IoU >= iou_threshold (cell [gt class, predicted "
    "class]); (3) each detection still left is dropped if it lies in a crowd / ignore region "
    "(intersection / detection area >= iou_threshold), else it is a background detection (cell "
    "[background, predicted class]); (4) each ground-truth box left unmatched is missed (cell "
    "[gt class, background]). Rows: ground truth; columns: predictions."
)


# ----------------------------------------------------------------------------------------------
# Results files
# ----------------------------------------------------------------------------------------------
def load_coco_results(json_file: str, metadata: Metadata) -> List[Dict]:
    """
    Read a COCO results file and return its detections with contiguous class ids.

    Args:
        json_file: a JSON list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
            (pixels; other keys are kept).
        metadata: the dataset's metadata, after the dataset was loaded (see the module
            docstring): ``thing_classes`` and, if the dataset has one,
            ``thing_dataset_id_to_contiguous_id``.

    Returns:
        copies of the detections, ``category_id`` the 0-based index into ``thing_classes``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a JSON list of such detections, or a category id the dataset does not
            have (the message names it: results of another dataset?).
    """
    results = read_json(json_file, "results file")
    if not isinstance(results, list):
        raise ValueError(
            f"{json_file}: expected a list of detections (COCO results format), got a "
            f"{type(results).__name__}"
        )
    id_map = metadata.get("thing_dataset_id_to_contiguous_id")
    num_classes = len(metadata.get("thing_classes") or [])
    out = []
    for i, r in enumerate(results):
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in r]
        if missing:
            raise ValueError(f"{json_file}: detection #{i} lacks {missing}")
        category = r["category_id"]
        if id_map is not None:
            if category not in id_map:
                raise ValueError(
                    f"{json_file}: detection #{i} has category_id {category!r}, which dataset "
                    f"{metadata.name!r} does not declare (its ids: {sorted(id_map)}); are these "
                    "the results of another dataset?"
                )
            category = id_map[category]
        elif not (isinstance(category, int) and 0 <= category < num_classes):
            raise ValueError(
                f"{json_file}: detection #{i} has category_id {category!r}, but dataset "
                f"{metadata.name!r} has no id mapping, so ids must be contiguous in "
                f"[0, {num_classes}); are these the results of another dataset?"
            )
        out.append({**r, "category_id": int(category)})
    return out


def _same_image(a: str, b: str) -> bool:
    """Whether two paths name the same image: the same file, or the same file name (the
    results may have been written on another machine, or with relative paths)."""
    return os.path.basename(a) == os.path.basename(b) or os.path.realpath(a) == os.path.realpath(b)


def check_results_images(
    dataset_dicts: Sequence[Dict], predictions: Sequence[Dict], json_file: str, dataset_name: str
) -> None:
    """
    Check that the detections are of the images of the dataset: every ``image_id`` is one of
    the dataset's, and, for detections that name their image (``file_name``, as
    ``atss-demo --save-json`` writes), that image is the dataset's image of that id (the same
    file, or a file of the same name).

    Raises:
        ValueError: naming how many image ids are not the dataset's, or how many detections
            name another image than the dataset's, with an example.
    """
    images = {d["image_id"]: d.get("file_name") for d in dataset_dicts}
    result_ids = list(dict.fromkeys(p["image_id"] for p in predictions))
    missing = [i for i in result_ids if i not in images]
    if missing:
        raise ValueError(
            f"{json_file}: {len(missing)} of the {len(result_ids)} image ids of the results are "
            f"not in dataset {dataset_name!r} ({len(images)} images), e.g. {missing[:5]}: are "
            "these the results of another dataset? Give the --dataset they were made on"
        )
    wrong = [
        p
        for p in predictions
        if isinstance(p.get("file_name"), str)
        and images[p["image_id"]]
        and not _same_image(p["file_name"], images[p["image_id"]])
    ]
    if wrong:
        first = wrong[0]
        raise ValueError(
            f"{json_file}: {len(wrong)} of the {len(predictions)} detections name another image "
            f"than dataset {dataset_name!r} has under their image_id, e.g. image_id "
            f"{first['image_id']}: {first['file_name']} in the results, "
            f"{images[first['image_id']]} in the dataset: are these the results of another "
            "dataset (or of images given by position)? Give the --dataset they were made on"
        )


def load_dataset_and_results(json_file: str, dataset_name: str) -> Tuple[List[Dict], List[Dict]]:
    """The dataset dicts of ``dataset_name`` and the detections of ``json_file`` with
    contiguous class ids (:func:`load_coco_results`), loaded in that order, after checking that
    the detections are of the dataset's images (:func:`check_results_images`)."""
    check_datasets_registered([dataset_name], "--dataset")
    dicts = DatasetCatalog.get(dataset_name)  # sets thing_dataset_id_to_contiguous_id
    predictions = load_coco_results(json_file, MetadataCatalog.get(dataset_name))
    check_results_images(dicts, predictions, json_file, dataset_name)
    return dicts, predictions


# ----------------------------------------------------------------------------------------------
# Matching
# ----------------------------------------------------------------------------------------------
def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    wh = np.clip(rb - lt, 0, None)
    return wh[..., 0] * wh[..., 1]


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every pair of XYXY boxes: (N, 4), (M, 4) -> (N, M); 0 where the union is 0."""
    inter = _intersection(a, b)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def pairwise_ioa(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over the area of ``a`` (COCO's overlap of a detection ``a`` with a crowd
    region ``b``): (N, 4), (M, 4) -> (N, M); 0 where ``a`` has no area."""
    inter = _intersection(a, b)
    area = _area(a)[:, None]
    return np.divide(inter, area, out=np.zeros_like(inter), where=area > 0)


def _gt_of(record: Dict, num_classes: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (G, 4) XYXY, classes (G,)) of the countable objects and (R, 4) ignore regions."""
    boxes, classes, ignore = [], [], []
    for anno in record.get("annotations", []):
        box = BoxMode.convert(list(anno["bbox"]), anno["bbox_mode"], BoxMode.XYXY_ABS)
        if anno.get("iscrowd", 0) or anno.get("ignore", 0):
            ignore.append(box)
            continue
        category = anno["category_id"]
        if not 0 <= category < num_classes:
            raise ValueError(
                f"{record.get('file_name', record.get('image_id'))}: ground-truth category_id "
                f"{category} is not in [0, {num_classes})"
            )
        boxes.append(box)
        classes.append(category)
    return (
        np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        np.asarray(classes, dtype=np.int64),
        np.asarray(ignore, dtype=np.float64).reshape(-1, 4),
    )


def _match_image(
    matrix: np.ndarray,
    gt_boxes: np.ndarray,
    gt_classes: np.ndarray,
    ignore_boxes: np.ndarray,
    det_boxes: np.ndarray,
    det_classes: np.ndarray,
    iou_threshold: float,
) -> None:
    """Add one image's counts to ``matrix`` (K+1, K+1); the detections are in decreasing score
    order. See :func:`confusion_matrix` for the rule."""
    background = matrix.shape[0] - 1
    iou = pairwise_iou(det_boxes, gt_boxes)  # (D, G)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    left = []
    for d, c in enumerate(det_classes):  # (1) own class
        candidates = np.where(~taken & (gt_classes == c) & (iou[d] >= iou_threshold), iou[d], -1)
        if len(candidates) and candidates.max() >= 0:
            taken[candidates.argmax()] = True
            matrix[c, c] += 1
        else:
            left.append(d)
    unmatched = []
    for d in left:  # (2) another class
        c = det_classes[d]
        candidates = np.where(~taken & (gt_classes != c) & (iou[d] >= iou_threshold), iou[d], -1)
        if len(candidates) and candidates.max() >= 0:
            g = candidates.argmax()
            taken[g] = True
            matrix[gt_classes[g], c] += 1
        else:
            unmatched.append(d)
    if unmatched:  # (3) ignore regions, else background
        ioa = pairwise_ioa(det_boxes[unmatched], ignore_boxes)  # (U, R)
        for d, overlap in zip(unmatched, ioa):
            if not (len(overlap) and overlap.max() >= iou_threshold):
                matrix[background, det_classes[d]] += 1
    for c in gt_classes[~taken]:  # (4) missed
        matrix[c, background] += 1


def confusion_matrix(
    dataset_dicts: Sequence[Dict],
    predictions: Iterable[Dict],
    num_classes: int,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.5,
) -> np.ndarray:
    """
    The detection confusion matrix of a dataset at one IoU and one score threshold.

    Matching, per image (each ground-truth box is matched at most once):

    0. Detections with ``score >= score_threshold`` take part, highest score first (ties in
       the order given). Crowd annotations (``iscrowd`` 1, which atss_d2's VOC folders give
       their "difficult" objects; also ``ignore`` 1) are ignore regions, not objects.
    1. Each detection of class c takes the not yet matched ground-truth box of class c with
       the highest IoU, if that IoU is >= ``iou_threshold``: a true positive, ``[c, c]``.
    2. Each detection left (in the same order) takes the not yet matched ground-truth box of
       another class g with the highest IoU >= ``iou_threshold``: a confusion, ``[g, c]``.
       Step 1 runs over all detections first, so a wrong-class detection never takes an
       object from a lower-scored detection of the right class.
    3. Each detection still left is dropped when it lies in an ignore region (intersection /
       detection area >= ``iou_threshold``, COCO's rule for crowd regions); otherwise it is a
       background detection, ``[K, c]`` (nothing there, a duplicate of a matched object, or a
       box too loose for the threshold).
    4. Each ground-truth box left unmatched is missed: ``[g, K]``.

    Args:
        dataset_dicts: detectron2 dataset dicts (``image_id``, ``annotations`` with ``bbox``,
            ``bbox_mode``, ``category_id`` in [0, K), optional ``iscrowd``).
        predictions: detections in COCO results format with contiguous class ids
            (:func:`load_coco_results`): ``image_id``, ``category_id``, ``bbox`` [x, y, w, h],
            ``score``.
        num_classes: K.
        iou_threshold, score_threshold: see above.

    Returns:
        int64 array (K+1, K+1): rows the ground-truth class, columns the predicted class,
        index K the background. Row c sums to the number of class-c objects; column c to the
        number of class-c detections kept (those in ignore regions are not counted).

    Raises:
        ValueError: a detection of an image the dataset does not have, or a class outside
            [0, K).
    """
    by_image: Dict = defaultdict(list)
    for p in predictions:
        if p["score"] >= score_threshold:
            by_image[p["image_id"]].append(p)
    image_ids = {d["image_id"] for d in dataset_dicts}
    unknown = [i for i in by_image if i not in image_ids]
    if unknown:
        raise ValueError(
            f"detections of {len(unknown)} image id(s) the dataset does not have, e.g. "
            f"{unknown[:5]}: are these the results of another dataset?"
        )
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for record in dataset_dicts:
        gt_boxes, gt_classes, ignore = _gt_of(record, num_classes)
        dets = sorted(by_image.get(record["image_id"], []), key=lambda p: -p["score"])  # stable
        det_classes = np.asarray([p["category_id"] for p in dets], dtype=np.int64)
        if ((det_classes < 0) | (det_classes >= num_classes)).any():
            raise ValueError(f"a detection's category_id is not in [0, {num_classes})")
        det_boxes = BoxMode.convert(
            np.asarray([p["bbox"] for p in dets], dtype=np.float64).reshape(-1, 4),
            BoxMode.XYWH_ABS,
            BoxMode.XYXY_ABS,
        )
        _match_image(matrix, gt_boxes, gt_classes, ignore, det_boxes, det_classes, iou_threshold)
    return matrix


def precision_recall(matrix: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """
    Per-class precision and recall from a :func:`confusion_matrix` (K+1, K+1).

    Returns:
        precision (K,): ``[c, c]`` / detections of class c (column sum), NaN without any;
        recall (K,): ``[c, c]`` / objects of class c (row sum), NaN without any.
    """
    k = matrix.shape[0] - 1
    tp = np.diag(matrix)[:k].astype(np.float64)
    detections = matrix[:, :k].sum(axis=0).astype(np.float64)
    objects = matrix[:k, :].sum(axis=1).astype(np.float64)
    precision = np.divide(tp, detections, out=np.full(k, np.nan), where=detections > 0)
    recall = np.divide(tp, objects, out=np.full(k, np.nan), where=objects > 0)
    return precision, recall


def _number(x: float) -> Optional[float]:
    """A float for JSON: None for NaN (JSON has no NaN)."""
    return None if math.isnan(x) else float(x)


def per_class_report(
    matrix: np.ndarray,
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
    score_threshold: float = 0.5,
) -> Dict:
    """
    A JSON-ready summary of a :func:`confusion_matrix`: the thresholds and matching rule; per
    class its objects, detections, true positives, precision, recall (None where undefined),
    missed objects, background detections and what its objects were detected as; the
    confusions between classes, most frequent first; and the matrix with its labels.
    """
    k = matrix.shape[0] - 1
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for a {k}-class confusion matrix")
    precision, recall = precision_recall(matrix)
    classes = []
    for c, name in enumerate(class_names):
        classes.append(
            {
                "id": c,
                "name": name,
                "objects": int(matrix[c, :].sum()),
                "detections": int(matrix[:, c].sum()),
                "true_positives": int(matrix[c, c]),
                "precision": _number(precision[c]),
                "recall": _number(recall[c]),
                "missed": int(matrix[c, k]),
                "background_detections": int(matrix[k, c]),
                "detected_as": {
                    class_names[j]: int(matrix[c, j]) for j in range(k) if j != c and matrix[c, j]
                },
            }
        )
    confusions = [
        {"ground_truth": class_names[g], "predicted": class_names[p], "count": int(matrix[g, p])}
        for g in range(k)
        for p in range(k)
        if g != p and matrix[g, p]
    ]
    confusions.sort(key=lambda x: -x["count"])  # stable: ties in class order
    return {
        "iou_threshold": iou_threshold,
        "score_threshold": score_threshold,
        "matching": _MATCHING_RULE,
        "classes": classes,
        "confusions": confusions,
        "confusion_matrix": {
            "labels": list(class_names) + ["background"],
            "rows": "ground truth",
            "columns": "prediction",
            "counts": matrix.tolist(),
        },
    }


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: Sequence[str], path: str, title: Optional[str] = None
) -> str:
    """
    Draw ``matrix`` (K+1, K+1) into the PNG ``path``: rows the ground truth, columns the
    predictions, the class names and "background" on the axes, the count in each cell (only
    the non-zero ones beyond 25 labels), the colour the count's share of its row.

    Renders with matplotlib's Agg canvas directly (no pyplot, no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = list(class_names) + ["background"]
    n = len(labels)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    side = min(max(4.0, 0.45 * n + 2.5), 40.0)
    fig = Figure(figsize=(side + 1.0, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    font = max(4.0, min(10.0, 160.0 / n))
    for g in range(n):
        for p in range(n):
            if matrix[g, p] or n <= 25:
                color = "white" if share[g, p] > 0.5 else "black"
                ax.text(
                    p, g, str(matrix[g, p]), ha="center", va="center", fontsize=font, color=color
                )
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=font)
    ax.set_yticklabels(labels, fontsize=font)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def analyze_results(
    json_file: str,
    dataset_name: str,
    output_dir: str,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.5,
) -> Dict:
    """
    The confusion matrix and per-class precision / recall of the detections in ``json_file``
    on dataset ``dataset_name``; writes ``output_dir/confusion_matrix.png``
    (:func:`plot_confusion_matrix`) and ``output_dir/per_class.json`` (:func:`per_class_report`).

    Returns:
        the report written to ``per_class.json``.
    """
    dicts, predictions = load_dataset_and_results(json_file, dataset_name)
    names = MetadataCatalog.get(dataset_name).get("thing_classes")
    if not names:
        raise ValueError(f"dataset {dataset_name!r} declares no thing_classes")
    matrix = confusion_matrix(dicts, predictions, len(names), iou_threshold, score_threshold)
    report = per_class_report(matrix, names, iou_threshold, score_threshold)
    report["dataset"], report["results"] = dataset_name, os.path.abspath(json_file)
    os.makedirs(output_dir, exist_ok=True)
    title = (
        f"{dataset_name}: IoU >= {iou_threshold:g}, score >= {score_threshold:g}\n"
        f"{os.path.basename(json_file)}"
    )
    plot_confusion_matrix(matrix, names, os.path.join(output_dir, CONFUSION_MATRIX_PNG), title)
    with open(os.path.join(output_dir, PER_CLASS_JSON), "w") as f:
        json.dump(report, f, indent=2)
    return report
