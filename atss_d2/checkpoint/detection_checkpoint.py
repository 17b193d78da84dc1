"""A ``DetectionCheckpointer`` that never unpickles arbitrary objects."""

import logging

from detectron2.checkpoint import DetectionCheckpointer

from .safe_load import safe_pickle_load, safe_torch_load

__all__ = ["SafeDetectionCheckpointer"]

logger = logging.getLogger(__name__)


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """
    :class:`DetectionCheckpointer` whose file reading refuses anything but data.

    detectron2 reads ``.pkl`` files (its model zoo, Detectron / Caffe2 models) with plain
    ``pickle.load``, which runs whatever callables the file names. Here ``.pkl`` files go through
    a restricted unpickler (numpy arrays, dtypes, scalars, builtin containers) and every other
    file through ``torch.load(weights_only=True)``; a file that needs more raises
    :class:`~atss_d2.checkpoint.UnsafeCheckpointError` naming it, before anything from it runs.
    The formats understood are detectron2's: model-zoo ``.pkl`` (``{"model", "__author__"}``),
    Detectron / Caffe2 ``.pkl`` (``{"blobs"}`` or a flat dict, loaded with name matching),
    pycls ``.pyth`` and torch ``.pth`` files.
    """

    def _load_file(self, filename: str):
        if filename.endswith(".pkl"):
            data = safe_pickle_load(filename)
            if "model" in data and "__author__" in data:
                # detectron2 model-zoo format (also what tools/convert_checkpoint.py writes).
                logger.info("Reading a file from '%s'", data["__author__"])
                return data
            # Detectron / Caffe2 model zoo: ImageNet models are a flat dict of blobs.
            blobs = data.get("blobs", data)
            blobs = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
            return {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):
            data = safe_torch_load(filename)
            if "model_state" not in data:
                raise ValueError(f"Cannot load .pyth file {filename}: no 'model_state' (pycls)")
            state = {
                k: v
                for k, v in data["model_state"].items()
                if not k.endswith("num_batches_tracked")
            }
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        loaded = safe_torch_load(filename)
        if "model" not in loaded:
            loaded = {"model": loaded}
        return loaded
