"""
A dataset mapper that survives the data found in the wild.

:class:`ATSSDatasetMapper` does what detectron2's ``DatasetMapper`` does for box detection (read
the image, apply the augmentations, turn the annotations into ``Instances``), and on top:

- any image mode Pillow reads (grayscale, 16-bit grayscale, palette, RGBA, CMYK) comes out in
  ``INPUT.FORMAT``; alpha is dropped;
- a missing or undecodable file raises :class:`UnreadableImageError` naming the file, or, with
  ``DATALOADER.SKIP_UNREADABLE_IMAGES`` (training only), is skipped with a counted warning;
- boxes with non-finite coordinates, zero or negative width/height, or lying entirely outside
  the image are dropped with a counted warning (one log line at the 1st, 10th, 100th, ...
  drop of each kind, not one per box); boxes partly outside are clipped;
- with ``INPUT.MIN_BOX_SIZE`` (1 px in the mmdetection-style configs), boxes narrower or shorter
  than that in the original image, and annotations whose "area" is <= 0, are dropped the same
  way: mmdetection's ``CocoDataset.parse_data_info`` filter (``w < 1 or h < 1 or area <= 0``),
  applied where it applies it, on the annotations as loaded, before any augmentation;
- a malformed annotation (no bbox / bbox_mode / category_id, a bbox that is not four numbers,
  an unsupported box mode, a category id outside [0, num_classes)) raises
  :class:`DatasetAnnotationError` naming the file and the annotation;
- crowd annotations are left out (an all-crowd image trains as an image without objects);
  thousands of boxes in one image are converted in one vectorized pass.

:class:`SkippingMapDataset` applies the mapper to a list of dataset dicts and, when the mapper
skips an image (returns None), serves the next readable one. detectron2 0.6's ``MapDataset``
retry crashes on Python >= 3.11 (``random.sample`` of a set).
"""

import functools
import logging
import numbers
from collections import Counter
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.common import DatasetFromList
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.file_io import PathManager
from PIL import Image, ImageOps
from torch.utils.data import Dataset

__all__ = [
    "ATSSDatasetMapper",
    "DatasetAnnotationError",
    "SkippingMapDataset",
    "UnreadableImageError",
    "WarningTally",
    "read_image_any_mode",
]

logger = logging.getLogger(__name__)

# Boxes narrower or shorter than this after the augmentations are dropped (detectron2's
# ``filter_empty_instances`` threshold); e.g. boxes cut away by a crop.
_MIN_BOX_SIDE = 1e-5


class UnreadableImageError(OSError):
    """An image file that is missing or cannot be decoded; the message names the file."""


class DatasetAnnotationError(ValueError):
    """A malformed annotation; the message names the image file and the annotation."""


class WarningTally:
    """
    Counts recurring data problems by kind and logs a warning the 1st, 10th, 100th, ... time a
    kind occurs (with the running count and the latest example), so that a dataset with
    thousands of bad boxes gives a handful of log lines, not thousands.
    """

    def __init__(self, what: str):
        self.what = what
        self.counts: Counter = Counter()

    def add(self, kind: str, n: int, example: str) -> None:
        if n <= 0:
            return
        before = self.counts[kind]
        after = before + n
        self.counts[kind] = after
        # Log when the count passes a power of ten (1, 10, 100, ...).
        if len(str(after)) > len(str(before)) or before == 0:
            logger.warning(
                f"{self.what}: {after} so far with {kind} (latest: {example}); "
                "counts are per data-loader worker"
            )


def _stored_bits(image: Image.Image) -> Optional[int]:
    """
    16 when the file stores the grayscale ``image`` as unsigned 16-bit samples, else None.
    Pillow opens a 16-bit PNG as mode "I" (32-bit) and a 16-bit TIFF as "I;16" or "I;16B";
    the raw mode of the file's data (the decoder's arguments in ``image.tile``, e.g. "I;16B",
    "I;16N") tells them from a 32-bit image. Call before ``image.load()``, which clears the tile.
    """
    if image.mode.startswith("I;16"):
        return 16
    if image.mode != "I":
        return None
    for tile in image.tile or ():  # None for some formats (ICO, ICNS)
        args = tile[3] if len(tile) > 3 else None
        raw_mode = args[0] if isinstance(args, (tuple, list)) and args else args
        if isinstance(raw_mode, str) and raw_mode.startswith("I;16") and not raw_mode.endswith("S"):
            return 16  # I;16S / I;16BS are signed: mode "I" as any 32-bit image
    return None


@functools.lru_cache(maxsize=1)
def _warn_8bit_values_in_16bit() -> None:
    # Once per process: such files (8-bit values saved as 16 bits, e.g. by cv2 from a uint16
    # array) read nearly black, as their bit depth says.
    logger.warning(
        "A 16-bit grayscale image holds values of at most 255: it is read by its bit depth "
        "(value / 257), so nearly black. If it holds 8-bit values, save it as an 8-bit image."
    )


def _to_8bit(image: Image.Image, stored_bits: Optional[int] = None) -> Image.Image:
    """
    Grayscale of more than 8 bits (modes I;16*, I, F) -> mode "L", scaled to 0-255:

    - samples stored with 16 bits (modes I;16*, or ``stored_bits`` 16, see
      :func:`_stored_bits`): value v becomes round(v / 257), whatever the image's own range
      (0 -> 0, 65535 -> 255, and an 8-bit value k written as 16 bits, k * 257, reads back as k);
    - mode "I" of another depth (e.g. a 32-bit TIFF): divided by 257 if its maximum is over 255,
      else kept (8-bit content);
    - mode "F": multiplied by 255 if its maximum is at most 1 (a float image in [0, 1]), else
      kept; then clipped to 0-255.
    """
    arr = np.asarray(image, dtype=np.float64)
    top = arr.max(initial=0)
    sixteen = stored_bits == 16 or image.mode.startswith("I;16")
    if sixteen and top <= 255:
        _warn_8bit_values_in_16bit()
    if sixteen or (image.mode == "I" and top > 255):
        arr = arr / 257.0  # 16-bit range 0-65535 -> 0-255
    elif image.mode == "F" and top <= 1.0:
        arr = arr * 255.0  # float image in [0, 1]
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def read_image_any_mode(file_name: str, format: Optional[str]) -> np.ndarray:
    """
    Read an image file into an HWC uint8 array in ``format`` (as detectron2's ``read_image``:
    "RGB", "BGR", "L", or another Pillow mode), whatever mode the file has. EXIF orientation is
    applied. Grayscale of more than 8 bits is scaled to 8 bits by the file's bit depth
    (:func:`_to_8bit`): a 16-bit value v becomes round(v / 257).

    Raises:
        UnreadableImageError: the file is missing, truncated, or not an image Pillow decodes.
    """
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            stored_bits = _stored_bits(image)
            image.load()  # decode now: truncated files fail here, not later
        image = ImageOps.exif_transpose(image)
    except FileNotFoundError as e:
        raise UnreadableImageError(f"Image file not found: {file_name}") from e
    except Exception as e:  # Pillow raises many types for broken files; all mean "unreadable"
        raise UnreadableImageError(
            f"Cannot read image file {file_name}: {type(e).__name__}: {e}"
        ) from e
    if image.width == 0 or image.height == 0:
        raise UnreadableImageError(f"Image file {file_name} has size {image.size}")
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _to_8bit(image, stored_bits)
    return utils.convert_PIL_to_numpy(image, format)


def _describe(file_name: str, index: int, anno: Dict) -> str:
    ident = f" (id {anno['id']})" if isinstance(anno, dict) and "id" in anno else ""
    return f"annotation #{index}{ident} of {file_name}"


class ATSSDatasetMapper(DatasetMapper):
    """
    detectron2's ``DatasetMapper`` for box detection, hardened against bad data (see the
    module docstring). Masks, keypoints and precomputed proposals are not supported (ATSS uses
    none of them).

    Training output: dict with "image" (uint8 Tensor (C, H, W) in ``image_format``),
    "instances" (``Instances`` with gt_boxes (G, 4) XYXY and gt_classes (G,), always present,
    possibly empty) and the dataset dict's other keys ("width"/"height" filled in from the file
    when absent). Inference output: the same without "instances" and "annotations".
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: List,
        image_format: str,
        num_classes: Optional[int] = None,
        skip_unreadable: bool = False,
        min_box_size: float = 0.0,
        plus_one: bool = False,
        **kwargs,
    ):
        """
        Args:
            is_train, augmentations, image_format, kwargs: as for ``DatasetMapper``.
            num_classes: category ids must be in [0, num_classes); None: not checked.
            skip_unreadable: return None (skip the image, counted in a warning) instead of
                raising for a missing or undecodable file. Training only: evaluation must see
                every image.
            min_box_size: drop (counting them) boxes whose width or height, as annotated in the
                original image, is below this many pixels, and annotations whose "area" is
                <= 0; 0 keeps them (``INPUT.MIN_BOX_SIZE``).
            plus_one: the authors' "+1" convention (``MODEL.ATSS.LEGACY_PLUS_ONE``): an
                ``[x, y, w, h]`` box ends at ``x + w - 1``, ``y + h - 1`` (maskrcnn-benchmark's
                ``BoxList.convert``), so a box one pixel wide has no width and is dropped.
        """
        super().__init__(is_train, augmentations=augmentations, image_format=image_format, **kwargs)
        if self.use_instance_mask or self.use_keypoint or self.proposal_topk is not None:
            raise ValueError("ATSSDatasetMapper maps boxes only (no masks, keypoints, proposals)")
        if (
            isinstance(min_box_size, bool)
            or not isinstance(min_box_size, numbers.Real)
            or not (0 <= min_box_size < float("inf"))
        ):
            raise ValueError(
                f"INPUT.MIN_BOX_SIZE is {min_box_size!r}; expected a number of pixels >= 0 "
                "(1.0: mmdetection's filter, 0: off)"
            )
        self.num_classes = num_classes
        self.min_box_size = float(min_box_size)
        self.plus_one = bool(plus_one)
        self.skip_unreadable = bool(skip_unreadable) and is_train
        self.bad_boxes = WarningTally("ATSSDatasetMapper: dropped boxes")
        self.skipped_images = WarningTally("ATSSDatasetMapper: skipped images")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        ret["num_classes"] = cfg.MODEL.ATSS.NUM_CLASSES
        ret["skip_unreadable"] = cfg.DATALOADER.SKIP_UNREADABLE_IMAGES
        ret["min_box_size"] = cfg.INPUT.MIN_BOX_SIZE
        ret["plus_one"] = cfg.MODEL.ATSS.LEGACY_PLUS_ONE
        return ret

    def __call__(self, dataset_dict: Dict) -> Optional[Dict]:
        """
        Returns:
            the mapped dict, or None when the image is unreadable and ``skip_unreadable``.
        """
        # Shallow copy: the annotations are only read, so no deep copy of thousands of dicts.
        record = dict(dataset_dict)
        file_name = record.get("file_name", "<no file_name>")
        try:
            image = read_image_any_mode(file_name, self.image_format)
        except UnreadableImageError as e:
            if not self.skip_unreadable:
                raise
            self.skipped_images.add("an unreadable file", 1, str(e))
            return None
        utils.check_image_size(record, image)
        orig_h, orig_w = image.shape[:2]
        record.setdefault("height", orig_h)
        record.setdefault("width", orig_w)

        aug_input = T.AugInput(image)
        try:
            transforms = self.augmentations(aug_input)
        except ValueError as e:  # e.g. a 1 x 5000 px image resized to zero rows
            raise ValueError(
                f"{file_name}: the augmentations failed on this {orig_w}x{orig_h} image: {e}"
            ) from e
        image = aug_input.image
        h, w = image.shape[:2]
        if h < 1 or w < 1:
            raise ValueError(
                f"{file_name}: the augmentations made this {orig_w}x{orig_h} image {w}x{h}"
            )
        record["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        annotations = record.pop("annotations", None)
        record.pop("sem_seg_file_name", None)
        if not self.is_train:
            return record
        record["instances"] = self.annotations_to_instances(
            annotations or [], transforms, (orig_h, orig_w), (h, w), file_name
        )
        return record

    def annotations_to_instances(
        self,
        annotations: List[Dict],
        transforms: T.TransformList,
        orig_size: Tuple[int, int],
        image_size: Tuple[int, int],
        file_name: str,
    ) -> Instances:
        """
        Validate, clean and transform the annotations of one image.

        Args:
            annotations: detectron2 annotation dicts of the image (not modified).
            transforms: the transforms applied to the image.
            orig_size, image_size: (h, w) before and after the transforms.
            file_name: for messages.

        Returns:
            Instances of ``image_size`` with gt_boxes Boxes (G, 4) XYXY and gt_classes (G,).
        """
        boxes, modes, classes, areas, where = self._parse(annotations, file_name)
        sizes = self._widths_heights(boxes, modes)  # (N, 2) as annotated
        boxes = self._to_xyxy(boxes, modes, self.plus_one)  # (N, 4)
        boxes, classes = self._drop_bad_boxes(
            boxes, classes, where, orig_size, file_name, sizes, areas
        )

        if len(boxes):
            boxes = transforms.apply_box(boxes)
            h, w = image_size
            boxes = np.clip(boxes, 0, [w, h, w, h])
            keep = ((boxes[:, 2] - boxes[:, 0]) > _MIN_BOX_SIDE) & (
                (boxes[:, 3] - boxes[:, 1]) > _MIN_BOX_SIDE
            )
            boxes, classes = boxes[keep], classes[keep]
        instances = Instances(image_size)
        instances.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.gt_classes = torch.as_tensor(classes, dtype=torch.int64)
        return instances

    def _parse(self, annotations, file_name):
        """Check every non-crowd annotation's fields; raise on malformed ones. Returns boxes
        (N, 4), box modes (N,), classes (N,), the annotations' "area" (N,; NaN when absent)
        and (index, annotation) of each."""
        if not isinstance(annotations, (list, tuple)):
            raise DatasetAnnotationError(
                f"{file_name}: 'annotations' must be a list, got {type(annotations).__name__}"
            )
        boxes, modes, classes, areas, where = [], [], [], [], []
        for i, anno in enumerate(annotations):
            if not isinstance(anno, dict):
                raise DatasetAnnotationError(
                    f"{_describe(file_name, i, anno)}: expected a dict, got {anno!r:.80}"
                )
            if anno.get("iscrowd", 0):
                continue
            missing = [k for k in ("bbox", "bbox_mode", "category_id") if k not in anno]
            if missing:
                raise DatasetAnnotationError(f"{_describe(file_name, i, anno)} lacks {missing}")
            bbox = anno["bbox"]
            values = list(bbox) if isinstance(bbox, (list, tuple, np.ndarray)) else []
            if len(values) != 4 or not all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values
            ):
                raise DatasetAnnotationError(
                    f"{_describe(file_name, i, anno)}: bbox {bbox!r:.80} is not four numbers"
                )
            try:
                mode = BoxMode(anno["bbox_mode"])
            except ValueError:
                mode = None
            if mode not in (BoxMode.XYXY_ABS, BoxMode.XYWH_ABS):
                raise DatasetAnnotationError(
                    f"{_describe(file_name, i, anno)}: bbox_mode {anno['bbox_mode']!r} is not "
                    "supported (use BoxMode.XYXY_ABS or BoxMode.XYWH_ABS)"
                )
            category = anno["category_id"]
            if (
                not isinstance(category, numbers.Integral)
                or isinstance(category, bool)
                or category < 0
                or (self.num_classes is not None and category >= self.num_classes)
            ):
                limit = f", {self.num_classes})" if self.num_classes is not None else ", ...)"
                raise DatasetAnnotationError(
                    f"{_describe(file_name, i, anno)}: category_id {category!r} is not a "
                    f"declared class (contiguous ids in [0{limit}; check the dataset's "
                    "categories and MODEL.ATSS.NUM_CLASSES"
                )
            area = anno.get("area")
            boxes.append([float(v) for v in values])
            modes.append(int(mode))
            classes.append(int(category))
            areas.append(float(area) if isinstance(area, numbers.Real) else float("nan"))
            where.append((i, anno))
        return (
            np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            np.asarray(modes, dtype=np.int64),
            np.asarray(classes, dtype=np.int64),
            np.asarray(areas, dtype=np.float64),
            where,
        )

    @staticmethod
    def _widths_heights(boxes: np.ndarray, modes: np.ndarray) -> np.ndarray:
        """(N, 2) width and height as annotated: XYWH's own w, h (no rounding through x1 + w)."""
        xywh = (modes == int(BoxMode.XYWH_ABS))[:, None]
        return np.where(xywh, boxes[:, 2:], boxes[:, 2:] - boxes[:, :2])

    @staticmethod
    def _to_xyxy(boxes: np.ndarray, modes: np.ndarray, plus_one: bool = False) -> np.ndarray:
        """(N, 4) boxes in XYXY_ABS or XYWH_ABS (per row) -> (N, 4) XYXY_ABS; with
        ``plus_one``, XYWH boxes end at ``x + w - 1`` (the authors' convention)."""
        out = boxes.copy()
        xywh = modes == int(BoxMode.XYWH_ABS)
        out[xywh, 2:] = boxes[xywh, :2] + boxes[xywh, 2:] - (1.0 if plus_one else 0.0)
        return out

    def _drop_bad_boxes(self, boxes, classes, where, orig_size, file_name, sizes, areas):
        """Drop (counting them) degenerate boxes, boxes outside the image and, with
        ``min_box_size``, small boxes and annotations of area <= 0; clip the rest. A box is
        counted under the first problem it has."""
        if len(boxes) == 0:
            return boxes, classes
        h, w = orig_size
        finite = np.isfinite(boxes).all(axis=1)
        # Comparisons with NaN are False, so non-finite rows are counted once, as non-finite.
        with np.errstate(invalid="ignore"):
            positive = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            inside = (boxes[:, 2] > 0) & (boxes[:, 3] > 0) & (boxes[:, 0] < w) & (boxes[:, 1] < h)
        keep = finite & positive & inside
        problems = [
            ("non-finite coordinates", ~finite),
            ("zero or negative width/height", finite & ~positive),
            (f"no overlap with the {w}x{h} image", finite & positive & ~inside),
        ]
        if self.min_box_size > 0:
            # mmdetection's CocoDataset: w < 1 or h < 1 or area <= 0 (in original pixels).
            with np.errstate(invalid="ignore"):  # NaN (no "area") compares False
                small = keep & (sizes < self.min_box_size).any(axis=1)
                no_area = keep & ~small & (areas <= 0)
            problems += [
                (f"width or height < {self.min_box_size:g} px (INPUT.MIN_BOX_SIZE)", small),
                ("an 'area' <= 0", no_area),
            ]
            keep &= ~(small | no_area)
        for kind, mask in problems:
            idx = np.flatnonzero(mask)
            if len(idx):
                example = _describe(file_name, *where[idx[-1]])
                self.bad_boxes.add(kind, len(idx), example)
        boxes = np.clip(boxes[keep], 0, [w, h, w, h])
        return boxes, classes[keep]


class SkippingMapDataset(Dataset):
    """
    ``mapper`` applied to a list of dataset dicts (held serialized, as detectron2 does). When the
    mapper returns None for an item (an unreadable image it was told to skip), the next items
    are tried in order; if none of the dataset can be mapped, an UnreadableImageError says so.
    """

    def __init__(self, dataset_dicts: List[Dict], mapper: Callable[[Dict], Optional[Dict]]):
        self._dataset = DatasetFromList(dataset_dicts, copy=False, serialize=True)
        self._mapper = mapper
        # Items known to fail in this process (each data-loader worker has its own copy).
        self._failed = set()

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, idx: int) -> Dict:
        n = len(self._dataset)
        for step in range(n):
            cur = (int(idx) + step) % n
            if cur in self._failed:
                continue
            data = self._mapper(self._dataset[cur])
            if data is not None:
                return data
            self._failed.add(cur)
        raise UnreadableImageError(
            f"None of the {n} images of the training set could be read (all were skipped as "
            "unreadable); check the image paths of the dataset"
        )
