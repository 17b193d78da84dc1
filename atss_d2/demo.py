"""
The pieces of ``demo/demo.py``, for use from Python: which files an ``--input`` names, where
each result is written, which class names label the boxes, the detections kept by
``--confidence-threshold``, the loops that run a model over images or video frames one at a
time, and the detections in COCO results format.

    from atss_d2.demo import (
        VisualizationDemo, class_metadata, expand_inputs, output_paths, run_demo,
        run_on_image_files,
    )
    from atss_d2.engine import SafePredictor

    demo = VisualizationDemo(SafePredictor(cfg), class_metadata(cfg), confidence_threshold=0.5)
    paths, failures = expand_inputs(["photos/", "more/*.jpg"])
    results = run_on_image_files(demo, paths, output_paths(paths, "vis/"))
    run_demo(results, demo.metadata, json_file="detections.json", failures=failures)

The drawn score of a detection is the model's final score, ``sqrt(p_cls * p_ctr)`` with
``MODEL.ATSS.SCORE_MODE "sqrt"`` (``p_cls * p_ctr`` with ``"product"``), while the model's own
``MODEL.ATSS.SCORE_THRESH_TEST`` is a threshold on ``p_cls`` alone. The confidence threshold is
therefore applied to ``instances.scores`` after the model (:func:`filter_by_score`), and the
model's threshold is lowered only where it would drop a candidate whose final score can still
reach it (:func:`model_score_threshold`).
"""

import glob
import json
import logging
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Instances
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer

from .data import mapper, parse_class_names

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_CODECS",
    "ClassNamesError",
    "DemoFailed",
    "DemoResult",
    "InputError",
    "UnreadableImageError",
    "VisualizationDemo",
    "candidate_threshold",
    "class_metadata",
    "describe",
    "expand_inputs",
    "filter_by_score",
    "instances_to_coco_results",
    "load_image",
    "model_score_threshold",
    "names_source",
    "output_paths",
    "run_demo",
    "run_on_image_files",
    "run_on_video",
    "video_output_path",
]

logger = logging.getLogger(__name__)

# Read from directories, and written (by OpenCV) under the input's own extension.
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
# Output container -> FourCC; both are written by the FFmpeg of opencv-python(-headless).
VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}


class InputError(ValueError):
    """An input (image, video, directory, glob) or output that cannot be used; the message names
    it."""


class UnreadableImageError(InputError):
    """An input image is missing or cannot be decoded."""


class ClassNamesError(ValueError):
    """The class names for the drawn boxes are not as many as the model's classes."""


class DemoFailed(RuntimeError):
    """Raised by :func:`run_demo` after every input was processed, when some failed.

    Attributes:
        failures: one message per failed input, naming it.
        outputs: the files written for the inputs that worked.
    """

    def __init__(self, failures: Sequence[str], outputs: Sequence[str]):
        self.failures = list(failures)
        self.outputs = list(outputs)
        super().__init__(
            f"{len(self.failures)} input(s) failed ({len(self.outputs)} output(s) written):\n  "
            + "\n  ".join(self.failures)
        )


# ----------------------------------------------------------------------------------------------
# Inputs and outputs
# ----------------------------------------------------------------------------------------------
def _has_extension(path: str, extensions: Iterable[str]) -> bool:
    return os.path.splitext(path)[1].lower() in tuple(extensions)


def expand_inputs(patterns: Sequence[str]) -> Tuple[List[str], List[str]]:
    """
    The image files named by ``--input`` values, in the order given.

    - a directory: the files in it with an extension of :data:`IMAGE_EXTENSIONS` (any case),
      sorted by name; other files and sub-directories are skipped, links to missing files are
      failures;
    - a glob pattern (``*``, ``?``, ``[``, ``**``; quoted, so the shell leaves it alone): the
      files it matches, sorted (all of them: a matched file that is not an image fails when
      read);
    - anything else: kept as a file path (a missing or undecodable one fails when read).

    Returns:
        (paths, failures): a failure message for each directory without images, each link to a
        missing file in a directory, and each pattern that matches no file.
    """
    paths, failures = [], []
    for pattern in patterns:
        path = os.path.expanduser(pattern)
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if _has_extension(n, IMAGE_EXTENSIONS))
            found = [os.path.join(path, n) for n in names if os.path.isfile(os.path.join(path, n))]
            broken = [os.path.join(path, n) for n in names if os.path.islink(os.path.join(path, n))]
            failures += [
                f"input image {p} is a link to a missing file" for p in broken if p not in found
            ]
            if not found and not broken:
                failures.append(
                    f"input directory {pattern} holds no image ({', '.join(IMAGE_EXTENSIONS)})"
                )
            paths.extend(found)
        elif not os.path.exists(path) and any(c in path for c in "*?["):
            found = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
            if not found:
                failures.append(f"input pattern {pattern} matches no file")
            paths.extend(found)
        else:
            paths.append(path)
    return paths, failures


def load_image(path: str) -> np.ndarray:
    """
    Read ``path`` as BGR uint8 (H, W, 3) as training and evaluation read their images
    (:func:`atss_d2.data.mapper.read_image_any_mode`: any mode; 16-bit grayscale scaled by the
    file's bit depth, float images in [0, 1] by 255), or raise :class:`UnreadableImageError`
    naming it.
    """
    if not os.path.isfile(path):
        raise UnreadableImageError(f"input image not found: {path}")
    try:
        return mapper.read_image_any_mode(path, "BGR")
    except mapper.UnreadableImageError as e:
        raise UnreadableImageError(f"cannot read input image {path}: {e.__cause__ or e}") from e


def output_paths(inputs: Sequence[str], output: Optional[str]) -> List[Optional[str]]:
    """
    Where the drawn image of each input goes, as detectron2's demo decides: ``output`` with an
    extension of :data:`IMAGE_EXTENSIONS` (and not an existing directory) is the file of the one
    input; anything else is a directory holding a file per input, named after it (repeated
    names get a numeric suffix, an extension OpenCV cannot write becomes ``.png``). None: no
    images are written.

    Raises:
        InputError: ``output`` is a file name, but there is more than one input.
    """
    if output is None:
        return [None] * len(inputs)
    if _has_extension(output, IMAGE_EXTENSIONS) and not os.path.isdir(output):
        if len(inputs) > 1:
            raise InputError(
                f"--output {output} is a file name, but there are {len(inputs)} input images: "
                "give a directory"
            )
        return [output] * len(inputs)
    seen: Dict[str, int] = {}
    outs = []
    for path in inputs:
        stem, ext = os.path.splitext(os.path.basename(path))
        ext = ext if ext.lower() in IMAGE_EXTENSIONS else ".png"
        n = seen.get(stem + ext, 0)
        seen[stem + ext] = n + 1
        outs.append(os.path.join(output, stem + (f"_{n}" if n else "") + ext))
    return outs


def video_output_path(source: str, output: Optional[str]) -> Optional[str]:
    """Where the drawn video of ``source`` goes: ``output`` itself if its extension is one of
    :data:`VIDEO_CODECS`, else ``output/<source's name>`` (``.mp4`` unless the source's extension
    is one of them). None: none is written."""
    if output is None:
        return None
    if _has_extension(output, VIDEO_CODECS) and not os.path.isdir(output):
        return output
    stem, ext = os.path.splitext(os.path.basename(source))
    return os.path.join(output, stem + (ext if ext.lower() in VIDEO_CODECS else ".mp4"))


# ----------------------------------------------------------------------------------------------
# Class names
# ----------------------------------------------------------------------------------------------
def class_metadata(
    cfg,
    registered: Sequence[str] = (),
    classes: Union[None, str, Sequence[str]] = None,
    checkpoint_classes: Optional[Sequence[str]] = None,
) -> Metadata:
    """
    The metadata whose ``thing_classes`` label the drawn boxes: those of the first dataset of
    ``registered`` (``--coco-dataset`` / ``--voc-dataset``), else ``classes`` (``--classes``),
    else ``checkpoint_classes`` (the names saved with the weights,
    ``SafePredictor.checkpoint_classes``), else those of ``cfg.DATASETS.TEST[0]`` when it has
    ``MODEL.ATSS.NUM_CLASSES`` of them (a config's test set of another class count, such as a
    COCO config's ``coco_2017_val`` beside a model fine-tuned to 3 classes, is passed over with
    a warning), else ``"class 0"``, ``"class 1"``, ... (detectron2's Visualizer would write the
    bare id, "0 87%"); that last one is named ``UNNAMED``.

    Raises:
        ClassNamesError: the names given (a dataset, ``classes`` or the checkpoint's) are not
            ``MODEL.ATSS.NUM_CLASSES`` many.
    """
    num_classes = cfg.MODEL.ATSS.NUM_CLASSES
    if registered:
        metadata = MetadataCatalog.get(registered[0])
    elif classes:
        names = parse_class_names(classes) if isinstance(classes, str) else list(classes)
        metadata = Metadata(name="--classes", thing_classes=names)
    elif checkpoint_classes:
        metadata = Metadata(name="MODEL.WEIGHTS", thing_classes=list(checkpoint_classes))
    else:
        metadata = _test_set_metadata(cfg)
    names = metadata.get("thing_classes")
    if names is None and checkpoint_classes:  # a dataset registered without class names
        names = list(checkpoint_classes)
        metadata = Metadata(name="MODEL.WEIGHTS", thing_classes=names)
    if names is None:
        # A new object: the catalog's metadata of a dataset is not altered.
        return Metadata(name=UNNAMED, thing_classes=[f"class {i}" for i in range(num_classes)])
    if len(names) != num_classes:
        source = names_source(metadata)
        raise ClassNamesError(
            f"{source} has {len(names)} class names {names[:8]}, but the model has "
            f"MODEL.ATSS.NUM_CLASSES {num_classes}"
        )
    return metadata


UNNAMED = "__unnamed"


def _test_set_metadata(cfg) -> Metadata:
    """The metadata of ``cfg.DATASETS.TEST[0]`` if registered with ``MODEL.ATSS.NUM_CLASSES``
    class names, else an unnamed one."""
    test = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None
    if test not in MetadataCatalog.list():
        return Metadata(name=UNNAMED)
    metadata = MetadataCatalog.get(test)
    names = metadata.get("thing_classes")
    if names is not None and len(names) != cfg.MODEL.ATSS.NUM_CLASSES:
        logger.warning(
            f"Not naming the classes after DATASETS.TEST[0] {test!r}: it has {len(names)} "
            f"classes, the model MODEL.ATSS.NUM_CLASSES {cfg.MODEL.ATSS.NUM_CLASSES}; give "
            "the names with --classes (or the dataset with --coco-dataset / --voc-dataset)"
        )
        return Metadata(name=UNNAMED)
    return metadata


def names_source(metadata: Metadata) -> str:
    """Where the class names of :func:`class_metadata`'s ``metadata`` come from, for messages:
    "--classes", "MODEL.WEIGHTS" (the checkpoint) or "dataset 'NAME'"."""
    if metadata.name in ("--classes", "MODEL.WEIGHTS"):
        return metadata.name
    return f"dataset {metadata.name!r}"


def describe(instances: Instances, metadata: Metadata) -> str:
    """``" (cat x2, dog)"``: the classes of the detections, most frequent first ("" if none)."""
    if not len(instances):
        return ""
    names = metadata.get("thing_classes") or []
    labels = [names[c] if c < len(names) else f"class {c}" for c in instances.pred_classes.tolist()]
    counts = Counter(labels).most_common()
    return " (" + ", ".join(n if k == 1 else f"{n} x{k}" for n, k in counts) + ")"


# ----------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------
def candidate_threshold(confidence_threshold: float, score_mode: str = "sqrt") -> float:
    """
    The lowest class probability ``p_cls`` of a candidate whose final score can reach
    ``confidence_threshold``. With ``p_ctr <= 1``: ``sqrt(p_cls * p_ctr) >= t`` needs
    ``p_cls >= t ** 2`` ("sqrt"), ``p_cls * p_ctr >= t`` needs ``p_cls >= t`` ("product").
    """
    t = max(confidence_threshold, 0.0)
    if score_mode == "sqrt":
        return t * t
    if score_mode == "product":
        return t
    raise ValueError(f"MODEL.ATSS.SCORE_MODE must be 'sqrt' or 'product', got {score_mode!r}")


def model_score_threshold(cfg, confidence_threshold: float) -> float:
    """The ``MODEL.ATSS.SCORE_THRESH_TEST`` to run the model with for ``confidence_threshold``:
    the config's, or :func:`candidate_threshold` where that is lower, so that no candidate
    that could pass the confidence threshold is dropped before its final score is known."""
    return min(
        cfg.MODEL.ATSS.SCORE_THRESH_TEST,
        candidate_threshold(confidence_threshold, cfg.MODEL.ATSS.SCORE_MODE),
    )


def filter_by_score(instances: Instances, threshold: float) -> Instances:
    """The detections whose (final, drawn) ``scores`` are >= ``threshold``."""
    return instances[instances.scores >= threshold]


# ----------------------------------------------------------------------------------------------
# COCO results
# ----------------------------------------------------------------------------------------------
def instances_to_coco_results(
    instances: Instances, image_id: int, file_name: str, metadata: Optional[Metadata] = None
) -> List[dict]:
    """
    The detections of one image in COCO results format, as detectron2's COCOEvaluator writes
    them: ``image_id``, ``category_id``, ``bbox`` [x, y, width, height] in pixels and ``score``,
    plus ``file_name`` (the image's path, which COCO results lack).

    ``category_id`` is the dataset's category id where ``metadata`` maps them
    (``thing_dataset_id_to_contiguous_id``, set when detectron2 loads a COCO json), else the
    0-based index into ``thing_classes``.

    Args:
        instances: detections on the CPU, with ``pred_boxes`` (XYXY), ``scores``,
            ``pred_classes``.
    """
    results = instances_to_coco_json(instances, image_id)
    id_map = metadata.get("thing_dataset_id_to_contiguous_id") if metadata is not None else None
    dataset_ids = {v: k for k, v in id_map.items()} if id_map else None
    for result in results:
        if dataset_ids is not None:
            result["category_id"] = dataset_ids[result["category_id"]]
        result["file_name"] = file_name
    return results


# ----------------------------------------------------------------------------------------------
# Running the model
# ----------------------------------------------------------------------------------------------
class VisualizationDemo:
    """
    A predictor, the class names and a confidence threshold: detections and their drawing for
    one image, or for the frames of a video (as detectron2's ``demo/predictor.py``).

    Args:
        predictor: a callable taking a BGR uint8 image (H, W, 3) and returning
            ``{"instances": Instances}``, e.g. :class:`atss_d2.engine.SafePredictor`.
        metadata: ``thing_classes`` (see :func:`class_metadata`) and optionally ``thing_colors``.
        confidence_threshold: the lowest score drawn and returned.
        instance_mode: detectron2's ColorMode for images; default: the dataset's class colours
            (``SEGMENTATION``) when the metadata has ``thing_colors``, else random ones.
    """

    def __init__(
        self,
        predictor,
        metadata: Metadata,
        confidence_threshold: float = 0.5,
        instance_mode: Optional[ColorMode] = None,
    ):
        self.predictor = predictor
        self.metadata = metadata
        self.confidence_threshold = confidence_threshold
        if instance_mode is None:
            has_colors = metadata.get("thing_colors")
            instance_mode = ColorMode.SEGMENTATION if has_colors else ColorMode.IMAGE
        self.instance_mode = instance_mode

    def predict(self, image: np.ndarray) -> Instances:
        """The detections of a BGR image with score >= the threshold, on the CPU."""
        instances = self.predictor(image)["instances"].to("cpu")
        return filter_by_score(instances, self.confidence_threshold)

    def run_on_image(self, image: np.ndarray) -> Tuple[Instances, np.ndarray]:
        """
        Args:
            image: BGR uint8 (H, W, 3).

        Returns:
            the detections (:meth:`predict`) and the image with them drawn, BGR (H, W, 3).
        """
        instances = self.predict(image)
        visualizer = Visualizer(image[:, :, ::-1], self.metadata, instance_mode=self.instance_mode)
        drawn = visualizer.draw_instance_predictions(instances).get_image()  # RGB
        return instances, np.ascontiguousarray(drawn[:, :, ::-1])

    def run_on_video_frames(
        self, frames: Iterable[np.ndarray]
    ) -> Iterator[Tuple[Instances, np.ndarray]]:
        """:meth:`run_on_image` for each BGR frame, as it comes; a detected object keeps its
        colour from frame to frame (detectron2's VideoVisualizer)."""
        visualizer = VideoVisualizer(self.metadata, ColorMode.IMAGE)
        for frame in frames:
            instances = self.predict(frame)
            drawn = visualizer.draw_instance_predictions(frame[:, :, ::-1], instances).get_image()
            yield instances, np.ascontiguousarray(drawn[:, :, ::-1])


@dataclass
class DemoResult:
    """The outcome for one image or video frame: detections, or an error message naming the
    input."""

    path: str  # the image or video file ("webcam 0" for a camera)
    image_id: int  # the image's position among the inputs, or the frame's number
    instances: Optional[Instances] = None
    output: Optional[str] = None  # the file written (a video: the whole video's)
    seconds: float = 0.0
    error: Optional[str] = None
    frame: bool = False  # a video frame


def _write_image(path: str, image: np.ndarray) -> Optional[str]:
    """Write the BGR ``image`` to ``path``: None, or why it could not be written."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return None if cv2.imwrite(path, image) else "OpenCV did not write it"
    except (OSError, cv2.error) as e:
        return str(e)


def run_on_image_files(
    demo: VisualizationDemo, paths: Sequence[str], outputs: Optional[Sequence[Optional[str]]] = None
) -> Iterator[DemoResult]:
    """
    Read, run and write the images one at a time: memory holds one image, whatever the number
    of paths (a file is read only when the result before it has been consumed).

    Args:
        paths: image files (see :func:`expand_inputs`).
        outputs: where to write each drawn image (see :func:`output_paths`); None: nowhere.

    Yields:
        a :class:`DemoResult` per path, with ``image_id`` its position in ``paths``; an
        unreadable image, or an output that cannot be written, gives one with ``error`` set and
        the loop goes on.
    """
    for image_id, path in enumerate(paths):
        out = outputs[image_id] if outputs is not None else None
        start = time.perf_counter()
        try:
            image = load_image(path)
        except UnreadableImageError as e:
            yield DemoResult(path, image_id, error=str(e))
            continue
        instances, drawn = demo.run_on_image(image)
        problem = _write_image(out, drawn) if out is not None else None
        if problem is not None:
            yield DemoResult(path, image_id, error=f"could not write {out} (for {path}): {problem}")
            continue
        yield DemoResult(path, image_id, instances, out, time.perf_counter() - start)


def _frames(capture: cv2.VideoCapture, first: np.ndarray) -> Iterator[np.ndarray]:
    yield first
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame


def run_on_video(
    demo: VisualizationDemo,
    source: Union[str, int],
    output: Optional[str] = None,
    show: bool = False,
) -> Iterator[DemoResult]:
    """
    Run the model on each frame of a video file, or of a camera (``source`` an int, as
    ``cv2.VideoCapture`` takes it: 0 is the first webcam), one frame at a time.

    Args:
        output: the video file to write the drawn frames to, at the source's frame rate (30 if
            unknown), with the FourCC of its extension (:data:`VIDEO_CODECS`).
        show: show the drawn frames in a window (needs an OpenCV with a GUI, not
            opencv-python-headless); Esc stops.

    Yields:
        a :class:`DemoResult` per frame (``image_id``: the frame number), or a single one with
        ``error`` set when the source cannot be opened or decoded, or the output not opened.
        A camera stream ends on Ctrl-C, keeping what was written.
    """
    name = source if isinstance(source, str) else f"webcam {source}"
    capture, writer, index = None, None, 0
    try:
        if isinstance(source, str) and not os.path.isfile(source):
            raise InputError(f"input video not found: {source}")
        capture = cv2.VideoCapture(source)
        ok, first = capture.read() if capture.isOpened() else (False, None)
        if not ok:
            why = "not a video, or a codec OpenCV cannot decode" if name == source else "no camera?"
            raise InputError(f"cannot read {name}: {why}")
        if output is not None:
            fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
            writer = _video_writer(output, fps, first.shape[:2], name)
        start = time.perf_counter()
        for index, (instances, drawn) in enumerate(
            demo.run_on_video_frames(_frames(capture, first))
        ):
            if writer is not None:
                writer.write(drawn)
            stop = show and _show(drawn, name)
            now = time.perf_counter()
            yield DemoResult(name, index, instances, output, now - start, frame=True)
            start = now
            if stop:
                return
    except InputError as e:
        yield DemoResult(name, index, error=str(e))
    except KeyboardInterrupt:
        if isinstance(source, str):
            raise
        logger.info(f"{name}: stopped")  # the way to end a camera stream
    finally:
        if capture is not None:
            capture.release()
        if writer is not None:
            writer.release()


def _video_writer(output: str, fps: float, size: Tuple[int, int], name: str) -> cv2.VideoWriter:
    """An open writer of (height, width) = ``size`` frames, or :class:`InputError`."""
    ext = os.path.splitext(output)[1].lower()
    if ext not in VIDEO_CODECS:
        raise InputError(
            f"cannot write {output} (for {name}): unknown video extension {ext!r}, use one of "
            f"{sorted(VIDEO_CODECS)}"
        )
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    height, width = size
    writer = cv2.VideoWriter(
        output, cv2.VideoWriter_fourcc(*VIDEO_CODECS[ext]), fps, (width, height)
    )
    if not writer.isOpened():
        raise InputError(f"cannot write {output} (for {name}): no {VIDEO_CODECS[ext]} encoder")
    return writer


def _show(image: np.ndarray, name: str) -> bool:
    """Show ``image`` in a window; whether Esc was pressed."""
    try:
        cv2.imshow("atss_d2", image)
        return cv2.waitKey(1) == 27
    except cv2.error as e:
        raise InputError(
            f"cannot show {name} in a window (an OpenCV without GUI, such as "
            f"opencv-python-headless? give --output FILE.mp4): {e}"
        ) from e


def dataset_image_ids(dataset_name: str) -> Optional[Dict[str, int]]:
    """The ``image_id`` of every image of the registered dataset ``dataset_name``, by real path;
    None when it is not registered or cannot be loaded (e.g. its files are not on disk).
    Loading a COCO json also gives its metadata the dataset's category ids."""
    if dataset_name not in DatasetCatalog.list():
        return None
    try:
        dicts = DatasetCatalog.get(dataset_name)
    except (OSError, ValueError) as e:
        logger.info(f"--save-json: image ids are the inputs' positions ({dataset_name}: {e})")
        return None
    return {os.path.realpath(d["file_name"]): d["image_id"] for d in dicts}


def _use_dataset_image_ids(coco_results: List[dict], image_ids: Optional[Dict[str, int]]) -> None:
    """Replace the positions in ``coco_results`` by the dataset's ids, if every entry's image is
    in ``image_ids``."""
    if not image_ids or not coco_results:
        return
    paths = {r["file_name"]: os.path.realpath(r["file_name"]) for r in coco_results}
    outside = [p for p, real in paths.items() if real not in image_ids]
    if outside:
        logger.info(
            f"--save-json: {len(outside)} input image(s) are not in the registered dataset "
            f"(e.g. {outside[0]}): image_id is each image's position among the inputs"
        )
        return
    for result in coco_results:
        result["image_id"] = image_ids[paths[result["file_name"]]]


def run_demo(
    results: Iterable[DemoResult],
    metadata: Metadata,
    json_file: Optional[str] = None,
    failures: Sequence[str] = (),
    image_ids: Optional[Dict[str, int]] = None,
) -> List[str]:
    """
    Consume ``results``, logging each image ("img.jpg: 3 detections (cat x2, dog) in 0.21s ->
    out/img.jpg"), each failure, and a line per video; then write the detections of all of them
    to ``json_file`` (:func:`instances_to_coco_results`, a JSON list).

    ``image_ids`` (real path -> id, :func:`dataset_image_ids`): when every input image is one of
    them, the json's ``image_id``s are the dataset's, so that tools reading COCO results for
    that dataset take the file; otherwise (and for videos) they are the inputs' positions.

    Args:
        failures: failures found before (e.g. by :func:`expand_inputs`), reported with the rest.

    Returns:
        the files written, each once, in order (images or videos; not ``json_file``).

    Raises:
        DemoFailed: at the end, when any input failed; its outputs were still written.
    """
    failures = list(failures)
    for failure in failures:
        logger.error(failure)
    outputs: List[str] = []
    coco_results: List[dict] = []
    videos: Dict[str, List] = defaultdict(lambda: [0, 0, 0.0, None])  # frames, dets, s, out
    for result in results:
        if result.error is not None:
            logger.error(result.error)
            failures.append(result.error)
            continue
        if result.output is not None and (not outputs or outputs[-1] != result.output):
            outputs.append(result.output)
        instances = result.instances
        if result.frame:
            video = videos[result.path]
            video[0] += 1
            video[1] += len(instances)
            video[2] += result.seconds
            video[3] = result.output
        else:
            logger.info(
                f"{result.path}: {len(instances)} detections{describe(instances, metadata)} in "
                f"{result.seconds:.2f}s" + (f" -> {result.output}" if result.output else "")
            )
        if json_file is not None:
            coco_results += instances_to_coco_results(
                instances, result.image_id, result.path, metadata
            )
    for path, (frames, detections, seconds, out) in videos.items():
        logger.info(
            f"{path}: {frames} frames, {detections} detections in {seconds:.2f}s"
            + (f" -> {out}" if out else "")
        )
    if json_file is not None:
        _use_dataset_image_ids(coco_results, image_ids)
        os.makedirs(os.path.dirname(json_file) or ".", exist_ok=True)
        with open(json_file, "w") as f:
            json.dump(coco_results, f)
        logger.info(f"{len(coco_results)} detections in COCO results format -> {json_file}")
    if failures:
        raise DemoFailed(failures, outputs)
    return outputs
