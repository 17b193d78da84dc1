"""Small helpers shared by the tools: JSON reading, compiled-ops probing, argument types."""

import argparse
import functools
import json
import os
from typing import Any

__all__ = ["count_arg", "has_compiled_ops", "iou_arg", "read_json", "score_arg"]


def read_json(path: str, what: str) -> Any:
    """
    The parsed JSON file ``path``, ``what`` naming it in errors ("COCO json file").

    Raises:
        FileNotFoundError: no such file.
        ValueError: not UTF-8, or malformed (with line and column).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        if e.pos == 0 and e.doc.startswith("\ufeff"):
            # Windows editors write one; detectron2 and pycocotools read the file again, so
            # it has to go from the file itself.
            raise ValueError(
                f"{path}: starts with a UTF-8 byte order mark, which detectron2 and pycocotools "
                "cannot read; save it as UTF-8 without BOM (e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' "
                f"{path})"
            ) from e
        raise ValueError(
            f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e})") from e


@functools.lru_cache(maxsize=None)
def has_compiled_ops() -> bool:
    """Whether detectron2 was built with its compiled ops (False for the pure-Python install,
    whose ``detectron2._C`` is a placeholder)."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "ATSS_D2_PLACEHOLDER", False)


# Argument types for the command lines (argparse ``type=``): a bad value is argparse's one-line
# usage error naming the option.
def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def score_arg(text: str) -> float:
    """A score threshold: a number in [0, 1], as detection scores are."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:  # False for nan too
        raise argparse.ArgumentTypeError(f"must be in [0, 1] (scores are in [0, 1]), got {text}")
    return value


def iou_arg(text: str) -> float:
    """An IoU threshold: in (0, 1] (at 0 every detection would match every box)."""
    value = _number(text)
    if not 0.0 < value <= 1.0:  # False for nan too
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def count_arg(text: str) -> int:
    """A number of images: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value
