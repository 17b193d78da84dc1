"""The trainer of atss_d2: detectron2's DefaultTrainer with robust data, crash-safe checkpoints,
config checks, the optimizer of ``SOLVER.OPTIMIZER``, the evaluator each dataset asks for and
test-time augmentation."""

import logging
import os
import weakref
from collections import OrderedDict

import torch
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import (
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
    hooks,
)
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data.mapper import ATSSDatasetMapper, SkippingMapDataset
from ..evaluation import ATSSCOCOEvaluator, ATSSPascalVOCEvaluator
from ..modeling import ATSSWithTTA
from ..solver import build_optimizer
from .amp import amp_trainer_class
from .checkpoint import SafeAtomicCheckpointer
from .config import ConfigError, check_num_classes, validate_config
from .predictor import check_weights_for_inference
from .stop import StopOnSignal

__all__ = ["ATSSTrainer", "frozen_random_layers"]

logger = logging.getLogger(__name__)


def _check_loaded_classes(cfg, dataset_names) -> None:
    """NUM_CLASSES against the datasets' classes, now that loading them set the metadata."""
    unchecked = check_num_classes(cfg, dataset_names)
    if unchecked:
        logger.warning(
            f"Datasets {unchecked} declare no thing_classes; only the category ids of their "
            f"annotations are checked (against MODEL.ATSS.NUM_CLASSES)"
        )


def frozen_random_layers(cfg) -> str:
    """
    A sentence naming the backbone layers that ``cfg`` freezes (``MODEL.BACKBONE.FREEZE_AT``,
    ``MODEL.RESNETS.NORM`` "FrozenBN" or "FrozenStatsBN"), or "" when it freezes none. Frozen
    layers only make sense with pretrained ``MODEL.WEIGHTS``: from random weights they stay
    random.
    """
    frozen = []
    freeze_at = cfg.MODEL.BACKBONE.FREEZE_AT
    if freeze_at >= 1:
        stages = "the stem" + ("".join(f", res{i}" for i in range(2, freeze_at + 1)))
        frozen.append(f"MODEL.BACKBONE.FREEZE_AT={freeze_at} freezes {stages}")
    if cfg.MODEL.RESNETS.NORM == "FrozenBN":
        frozen.append("MODEL.RESNETS.NORM='FrozenBN' freezes every backbone normalisation")
    elif cfg.MODEL.RESNETS.NORM == "FrozenStatsBN":
        frozen.append(
            "MODEL.RESNETS.NORM='FrozenStatsBN' freezes the backbone's normalisation statistics"
        )
    return "; ".join(frozen)


class ATSSTrainer(DefaultTrainer):
    """
    ``DefaultTrainer`` with:

    - :func:`validate_config` before anything is built;
    - :class:`ATSSDatasetMapper` for training and testing; unreadable training images are
      skipped (counted in a warning) when ``DATALOADER.SKIP_UNREADABLE_IMAGES``;
    - :class:`SafeAtomicCheckpointer`: periodic checkpoints and ``last_checkpoint`` are written
      atomically and never with NaN weights, so ``--resume`` after a crash or ``kill -9``
      continues from the last complete checkpoint; files are loaded without unpickling code,
      and what a weights file did not provide is logged;
    - the optimizer's state (and the AMP gradient scaler's) saved in every checkpoint and
      restored by ``--resume`` (:meth:`state_dict`), which detectron2 0.6's ``DefaultTrainer``
      leaves out;
    - the optimizer of ``SOLVER.OPTIMIZER`` (:func:`atss_d2.solver.build_optimizer`);
    - the evaluator of each test dataset's ``evaluator_type`` (:meth:`build_evaluator`);
    - with ``TEST.AUG.ENABLED``, an evaluation with test-time augmentation after training
      (results keyed ``"<dataset>_TTA"``), as detectron2's own ``train_net.py`` does;
    - a warning when training starts from random weights with frozen layers;
    - SIGINT / SIGTERM: the run stops after the current iteration with a checkpoint and the
      ``--resume`` command in the log (:class:`~atss_d2.engine.stop.StopOnSignal`).

    A non-finite loss stops training with ``FloatingPointError`` naming the iteration and the
    losses (detectron2's ``SimpleTrainer`` check, done before the optimizer step, so the weights
    and checkpoints stay finite).
    """

    def __init__(self, cfg):
        validate_config(cfg)
        on_cpu = torch.device(cfg.MODEL.DEVICE).type == "cpu"
        if on_cpu and (comm.get_world_size() > 1 or cfg.SOLVER.AMP.ENABLED):
            self._init_cpu(cfg)
        else:
            super().__init__(cfg)
        # The class names go into every checkpoint: inference can then name the classes, and
        # refuses datasets that name them otherwise (the loader has set them by now).
        self.checkpointer.keep_class_names(cfg.DATASETS.TRAIN)

    def _init_cpu(self, cfg):
        """``DefaultTrainer.__init__`` on the CPU for several processes
        (:func:`atss_d2.engine.launch` without CUDA) or mixed precision: the same steps, but
        DistributedDataParallel without ``device_ids``, which detectron2 0.6 always passes and
        torch refuses for CPU modules, and with ``SOLVER.AMP.ENABLED`` the bfloat16
        :class:`~atss_d2.engine.amp.CPUAMPTrainer` in place of the CUDA-only ``AMPTrainer``."""
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False, device_ids=None)
        amp = cfg.SOLVER.AMP.ENABLED
        trainer_class = amp_trainer_class(cfg.MODEL.DEVICE) if amp else SimpleTrainer
        self._trainer = trainer_class(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = self.build_checkpointer(cfg, model, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def state_dict(self):
        """detectron2's ``{"iteration", "hooks"}`` plus, under ``"_trainer"``, the state of the
        inner ``SimpleTrainer``: the optimizer's (SGD momentum, AdamW moments) and, with AMP,
        the gradient scaler's. detectron2 0.6's ``DefaultTrainer`` saves neither, so a resumed
        run would restart them from zero; later detectron2 versions save them under the same
        key."""
        ret = super().state_dict()
        ret.setdefault("_trainer", self._trainer.state_dict())
        return ret

    def load_state_dict(self, state_dict):
        """Restore :meth:`state_dict` (``--resume``). The checkpointer has checked that the
        optimizer state fits the model (:func:`~atss_d2.engine.checkpoint.check_optimizer_state`).
        """
        TrainerBase.load_state_dict(self, state_dict)  # iteration and hooks
        inner = state_dict.get("_trainer")
        if inner is None:
            path = getattr(self.checkpointer.last_load_report, "path", None) or "the checkpoint"
            logger.warning(
                f"{path} holds no optimizer state (a checkpoint of detectron2 0.6's "
                "DefaultTrainer): training resumes at its iteration with the optimizer's "
                "momentum / moments starting from zero"
            )
            return
        self._trainer.load_state_dict(inner)

    @classmethod
    def build_optimizer(cls, cfg, model):
        """``SOLVER.OPTIMIZER``: detectron2's SGD or AdamW (see :mod:`atss_d2.solver`)."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_checkpointer(cls, cfg, model, save_dir=None, **checkpointables):
        """The checkpointer for training and for ``--eval-only``: atomic saves, and
        ``MODEL.WEIGHTS`` / resumed files loaded without unpickling code."""
        return SafeAtomicCheckpointer(
            model, cfg.OUTPUT_DIR if save_dir is None else save_dir, **checkpointables
        )

    def build_hooks(self):
        # DefaultTrainer.__init__ makes a plain DetectionCheckpointer right before calling this;
        # replace it so that the PeriodicCheckpointer hook and resume_or_load use ours.
        plain = self.checkpointer
        self.checkpointer = self.build_checkpointer(
            self.cfg, plain.model, plain.save_dir, **plain.checkpointables
        )
        self.checkpointer.save_to_disk = plain.save_to_disk
        hook_list = super().build_hooks()
        if self.cfg.TEST.AUG.ENABLED and self.cfg.DATASETS.TEST:
            # After the plain evaluation (EvalHook runs after the last iteration), before the
            # writers, so that the TTA results are logged too.
            index = next(i for i, h in enumerate(hook_list) if isinstance(h, hooks.EvalHook))
            hook_list.insert(
                index + 1, hooks.EvalHook(0, lambda: self.test_with_TTA(self.cfg, self.model))
            )
        # Last: the iteration's other hooks (the lr scheduler's step among them) have run when
        # a stop saves the checkpoint, so that a resumed run continues exactly.
        hook_list.append(StopOnSignal())
        return hook_list

    def resume_or_load(self, resume=True):
        if not (resume and self.checkpointer.has_checkpoint()) and not self.cfg.MODEL.WEIGHTS:
            frozen = frozen_random_layers(self.cfg)
            if frozen:
                logger.warning(
                    f"MODEL.WEIGHTS is empty, so training starts from random weights, but "
                    f"{frozen}: those layers stay random for the whole training. Set "
                    "MODEL.WEIGHTS to an ImageNet backbone (docs/MODEL_ZOO.md), or train from "
                    "scratch with MODEL.BACKBONE.FREEZE_AT 0 and MODEL.RESNETS.NORM BN (or GN)."
                )
        super().resume_or_load(resume=resume)

    @classmethod
    def build_train_loader(cls, cfg):
        mapper = ATSSDatasetMapper(cfg, is_train=True)
        # detectron2's own loader arguments (datasets loaded and filtered, sampler), with our
        # map-style dataset in place of its MapDataset.
        kwargs = build_detection_train_loader.from_config(cfg, mapper=mapper)
        _check_loaded_classes(cfg, cfg.DATASETS.TRAIN)
        dataset = SkippingMapDataset(kwargs.pop("dataset"), kwargs.pop("mapper"))
        return build_detection_train_loader(dataset, mapper=None, **kwargs)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        loader = build_detection_test_loader(
            cfg, dataset_name, mapper=ATSSDatasetMapper(cfg, is_train=False)
        )
        _check_loaded_classes(cfg, [dataset_name])
        return loader

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None) -> DatasetEvaluator:
        """
        The evaluator that the dataset's metadata ``evaluator_type`` asks for, as detectron2's
        ``train_net.py`` chooses it: "coco" (also COCO-format json and VOC-folder datasets
        registered by atss_d2, and datasets without an ``evaluator_type``): COCO box AP;
        "pascal_voc": Pascal VOC AP (:class:`ATSSPascalVOCEvaluator`, detectron2's
        ``register_pascal_voc`` datasets); "lvis":
        detectron2's LVIS AP (needs the ``lvis`` package).
        """
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
        if evaluator_type == "coco":
            # COCO's 100 detections per image, or as many as the model keeps when that is more.
            max_dets = cfg.TEST.DETECTIONS_PER_IMAGE
            return ATSSCOCOEvaluator(
                dataset_name,
                output_dir=output_folder,
                plus_one=cfg.MODEL.ATSS.LEGACY_PLUS_ONE,
                max_dets_per_image=max_dets if max_dets > 100 else None,
            )
        if evaluator_type == "pascal_voc":
            return ATSSPascalVOCEvaluator(dataset_name)
        if evaluator_type == "lvis":
            try:
                import lvis  # noqa: F401
            except ImportError:
                raise ConfigError(
                    f"Dataset {dataset_name!r} is evaluated with the LVIS API, which is not "
                    "installed: pip install lvis"
                ) from None
            from detectron2.evaluation import LVISEvaluator

            return LVISEvaluator(dataset_name, tasks=("bbox",), output_dir=output_folder)
        raise ConfigError(
            f"Dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; atss_d2 evaluates "
            "box detection with 'coco', 'pascal_voc' or 'lvis'"
        )

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Evaluate with test-time augmentation (``TEST.AUG``, ``MODEL.ATSS.TTA_MERGE``);
        results keyed ``"<dataset>_TTA"``."""
        logger.info("Running inference with test-time augmentation ...")
        model = ATSSWithTTA(cfg, model)
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
        evaluators = [cls.build_evaluator(cfg, name, output_folder) for name in cfg.DATASETS.TEST]
        # The views are resized from the original images, as in the authors' multi-scale test,
        # not from the INPUT.MIN_SIZE_TEST resize: a loader that does not resize (detectron2's
        # MIN_SIZE_TEST 0).
        loader_cfg = cfg.clone()
        loader_cfg.defrost()
        loader_cfg.INPUT.MIN_SIZE_TEST = 0
        res = cls._by_dataset(cfg, cls.test(loader_cfg, model, evaluators))
        res = OrderedDict((k + "_TTA", v) for k, v in res.items())
        for name, metrics in res.items():
            for task, values in metrics.items():
                shown = ", ".join(f"{k}={v:.4f}" for k, v in values.items() if "-" not in k)
                logger.info(f"Evaluation results for {name} ({task}): {shown}")
        return res

    @staticmethod
    def _by_dataset(cfg, results) -> OrderedDict:
        """``DefaultTrainer.test``'s results keyed by dataset name (it returns a single
        dataset's results without the name)."""
        if len(cfg.DATASETS.TEST) == 1 and cfg.DATASETS.TEST[0] not in results:
            return OrderedDict([(cfg.DATASETS.TEST[0], results)])
        return OrderedDict(results)

    @classmethod
    def evaluate_weights(cls, cfg, resume: bool = False):
        """
        ``--eval-only``: build the model, load ``MODEL.WEIGHTS`` (or, with ``resume``, the last
        checkpoint of ``OUTPUT_DIR``) and evaluate it on ``DATASETS.TEST``, with test-time
        augmentation too when ``TEST.AUG.ENABLED``. Warns when the head is untrained; raises
        :class:`~atss_d2.checkpoint.detection_checkpoint.IncompatibleWeightsError` when the
        weights' head does not fit the config (e.g. another number of classes).

        Returns:
            OrderedDict: dataset name (and ``"<name>_TTA"``) -> task -> metric -> value.
        """
        model = cls.build_model(cfg)
        checkpointer = cls.build_checkpointer(cfg, model)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
        loaded = checkpointer.last_load_report
        weights = loaded.path if loaded else cfg.MODEL.WEIGHTS
        check_weights_for_inference(weights, loaded, cfg.DATASETS.TEST)
        res = cls._by_dataset(cfg, cls.test(cfg, model))
        if cfg.TEST.AUG.ENABLED:
            res.update(cls.test_with_TTA(cfg, model))
        return res
