"""The training data loader of LazyConfig files: detectron2's, over :class:`SkippingMapDataset`."""

from typing import Callable, Dict, List, Optional, Union

from detectron2.data import build_detection_train_loader
from torch.utils.data import Dataset

from .mapper import SkippingMapDataset

__all__ = ["build_atss_train_loader"]


def build_atss_train_loader(
    dataset: Union[List[Dict], Dataset],
    *,
    mapper: Optional[Callable[[Dict], Optional[Dict]]],
    **kwargs,
):
    """
    detectron2's ``build_detection_train_loader`` (same arguments: ``sampler``,
    ``total_batch_size``, ``aspect_ratio_grouping``, ``num_workers``), with the dataset dicts
    mapped by :class:`SkippingMapDataset` instead of detectron2's ``MapDataset``, as
    :class:`~atss_d2.engine.ATSSTrainer` builds its loader: an image the mapper skips
    (``skip_unreadable``) is replaced by the next readable one.

    Args:
        dataset: a list of dataset dicts (e.g. from ``get_detection_dataset_dicts``), or a
            torch ``Dataset`` of them.
        mapper: e.g. :class:`~atss_d2.data.mapper.ATSSDatasetMapper`; None: ``dataset`` is
            already mapped.
    """
    if mapper is not None:
        dataset = SkippingMapDataset(list(dataset), mapper)
    return build_detection_train_loader(dataset, mapper=None, **kwargs)
