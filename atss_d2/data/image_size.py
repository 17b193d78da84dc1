"""
The size of an image file as the data loader sees it, and whether an annotation's size agrees.

detectron2's ``read_image`` (and atss_d2's mapper) turn every image upright by its EXIF
orientation (tag 0x0112) before anything else, and ``check_image_size`` then compares the
upright size with the dataset dict's ``width`` and ``height``. Annotation tools differ: CVAT and
Label Studio show photos upright and write the upright size and boxes; labelImg draws on the
pixels as stored, ignoring the tag. A size that matches the stored pixels but not the upright
image therefore means boxes in the wrong frame; checking it when a dataset is registered turns
a late ``SizeMismatchError`` in a data-loader worker (or, for a 180-degree turn, silently
misplaced boxes) into an error that names the file.
"""

from typing import Optional, Sequence, Tuple

from PIL import Image

__all__ = [
    "AMBIGUOUS_ORIENTATIONS",
    "ImageHeader",
    "ambiguous_orientation_warning",
    "read_image_header",
    "size_problem",
    "try_read_image_header",
    "unreadable_images_message",
]

_ORIENTATION_TAG = 0x0112
# EXIF orientations that turn the image by 90 or 270 degrees: width and height swap.
_TRANSPOSING = (5, 6, 7, 8)
# Orientations that keep the size (mirrors, a 180-degree turn): the size cannot tell in which
# frame the boxes were drawn.
AMBIGUOUS_ORIENTATIONS = (2, 3, 4)
_DESCRIPTIONS = {
    2: "mirrored left-right",
    3: "turned 180 degrees",
    4: "mirrored top-bottom",
    5: "mirrored and turned 90 degrees",
    6: "turned 90 degrees",
    7: "mirrored and turned 270 degrees",
    8: "turned 270 degrees",
}
_EXIF_FIX = (
    "If the boxes were drawn on the pixels as stored (as labelImg does), remove the file's EXIF "
    "Orientation tag (e.g. exiftool -Orientation= -overwrite_original FILE): the image then "
    "loads as it was annotated."
)
_RESIZED = (
    "Was the image resized or replaced after it was annotated? Annotate that image again, or "
    "give the annotation the original file."
)


class ImageHeader:
    """What an image file's header says: the stored ``width`` x ``height`` and the EXIF
    ``orientation`` (1 when absent); :attr:`size` is the upright (loaded) size."""

    __slots__ = ("width", "height", "orientation")

    def __init__(self, width: int, height: int, orientation: int):
        self.width, self.height, self.orientation = width, height, orientation

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height) after the EXIF orientation, as the data loader sees the image."""
        if self.orientation in _TRANSPOSING:
            return self.height, self.width
        return self.width, self.height

    def describe_orientation(self) -> str:
        return _DESCRIPTIONS.get(self.orientation, "upright")


def read_image_header(path: str) -> ImageHeader:
    """
    Read ``path``'s size and EXIF orientation from its header (the pixels are not decoded).

    Raises:
        OSError, ValueError or SyntaxError: what Pillow raises for a missing or unreadable file.
    """
    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    if not isinstance(orientation, int) or not 1 <= orientation <= 8:
        orientation = 1  # a malformed tag: Pillow's exif_transpose leaves such images as stored
    return ImageHeader(width, height, orientation)


def try_read_image_header(path: str) -> Optional[ImageHeader]:
    """:func:`read_image_header`, or None when Pillow cannot read the file (the data loader then
    raises on it or, with ``DATALOADER.SKIP_UNREADABLE_IMAGES``, skips it)."""
    try:
        return read_image_header(path)
    except (OSError, ValueError, SyntaxError):  # what Pillow raises for unreadable files
        return None


def size_problem(path: str, header: ImageHeader, width: int, height: int) -> Optional[str]:
    """
    Why an annotation that gives ``width`` x ``height`` for the image at ``path`` (with
    ``header``) does not fit the image as loaded, or None when it does.
    """
    if (width, height) == header.size:
        return None
    loaded = f"{header.size[0]}x{header.size[1]}"
    if header.orientation in _TRANSPOSING and (width, height) == (header.width, header.height):
        return (
            f"the annotation gives {width}x{height} (width x height), the size of {path} as "
            f"stored, but its EXIF orientation {header.orientation} "
            f"({header.describe_orientation()}) makes it {loaded} when loaded, so its boxes "
            f"would land in the wrong place. {_EXIF_FIX}"
        )
    return (
        f"the annotation gives {width}x{height} (width x height), but {path} is {loaded}"
        + (
            f" (after its EXIF orientation {header.orientation}, "
            f"{header.describe_orientation()}; {header.width}x{header.height} as stored)"
            if header.orientation != 1
            else ""
        )
        + f". {_RESIZED}"
        + (f" {_EXIF_FIX}" if header.orientation != 1 else "")
    )


def ambiguous_orientation_warning(dataset: str, paths: Sequence[str]) -> str:
    """The warning for images of ``dataset`` whose EXIF orientation keeps their size (so the
    size check cannot tell in which frame their boxes were drawn)."""
    return (
        f"{len(paths)} image(s) of {dataset} have an EXIF orientation that mirrors or turns "
        f"them by 180 degrees when loaded (e.g. {paths[0]}); their boxes are taken as drawn on "
        "the upright image, as CVAT and Label Studio show it. " + _EXIF_FIX
    )


def unreadable_images_message(dataset: str, paths: Sequence[str], total: int) -> str:
    """What :func:`atss_d2.engine.validate_config` says of images of ``dataset`` whose header
    Pillow cannot read (kept in the metadata as ``unreadable_images``)."""
    return (
        f"{len(paths)} of the {total} images of {dataset} cannot be read as images (empty, "
        f"truncated or not an image file), e.g. {list(paths[:3])}"
    )
