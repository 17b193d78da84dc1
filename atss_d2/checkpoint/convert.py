"""
Conversion of ATSS checkpoints from mmdetection and from the authors' code, and of torchvision
ImageNet ResNets, to the parameter names of atss_d2's detectron2 models.

Every source tensor is either mapped to exactly one target name or listed as ignored with a
reason; anything else is an error. :func:`verify_against` then checks the result against the
state dict of a model built from a config: every target tensor filled, no extra tensor, equal
shapes.

Source layouts (read from those projects' model definitions):

``mmdet`` (mmdetection 2.x / 3.x ``ATSS``; ``{"state_dict": ..., "meta": ...}``)
    ``backbone.conv1`` / ``backbone.bn1`` (stem), ``backbone.layer{1-4}.{i}.conv{1,2,3}`` /
    ``bn{1,2,3}`` / ``downsample.{0,1}`` (torchvision-style ResNet, BatchNorm with eps 1e-5 and a
    ``num_batches_tracked`` counter), ``neck.lateral_convs.{0-2}.conv`` and
    ``neck.fpn_convs.{0-4}.conv`` (``FPN(start_level=1, add_extra_convs="on_output")``: 3 and 4
    are P6 on P5's output and P7 on P6, without ReLU), ``bbox_head.{cls,reg}_convs.{0-3}.conv``
    (no bias) and ``.gn``, ``bbox_head.atss_{cls,reg,centerness}``,
    ``bbox_head.scales.{0-4}.scale``.

``atss`` (the authors' maskrcnn-benchmark code, sfzhang15/ATSS; ``{"model": ...}``, keys under
``module.`` when saved from DistributedDataParallel)
    ``backbone.body.stem.conv1`` / ``stem.bn1``, ``backbone.body.layer{1-4}.{i}.conv{1,2,3}`` /
    ``bn{1,2,3}`` / ``downsample.{0,1}`` (FrozenBatchNorm2d *without* eps: see below); dcnv2
    models have ``conv2.offset`` + ``conv2.conv`` (``DFConv2d``) in the deformable stages;
    ``backbone.fpn.fpn_inner{2,3,4}`` / ``fpn_layer{2,3,4}`` (C3..C5) and
    ``backbone.fpn.top_blocks.p6`` / ``p7``; ``rpn.head.{cls,bbox}_tower.{0..11}`` (conv with bias,
    GroupNorm, ReLU triples; ``DFConv2d`` ``offset`` + ``conv`` as the last conv of dcnv2 models),
    ``rpn.head.cls_logits`` (NUM_CLASSES 81 includes the background, so 80 channels),
    ``rpn.head.bbox_pred``, ``rpn.head.centerness``, ``rpn.head.scales.{0-4}.scale`` (shape (1,)),
    and the ``rpn.anchor_generator.cell_anchors.{0-4}`` buffers (recomputed from the config).

``torchvision`` (ImageNet ``resnet*`` / ``resnext*`` state dicts)
    ``conv1``, ``bn1``, ``layer{1-4}.{i}.*`` as above, ``fc`` (the classifier, unused).

Value changes (everything else is copied as is):

- The authors' ``FrozenBatchNorm2d`` computes ``x * w / sqrt(var) + ...`` while detectron2's
  adds eps (1e-5) to the variance, so ``running_var`` is stored as ``var - 1e-5``.
- Their ``Scale`` parameter has shape (1,); ours is a 0-d tensor.
"""

import os
import pickle
import re
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

__all__ = [
    "SOURCES",
    "ConversionError",
    "ConversionReport",
    "ModelArch",
    "compare_cell_anchors",
    "config_convention",
    "config_convention_overrides",
    "convention_overrides",
    "convert_state_dict",
    "describe_convention",
    "default_config",
    "extract_state_dict",
    "foreign_layout",
    "infer_model_arch",
    "input_convention",
    "mmdet_class_names",
    "save_detectron2_checkpoint",
    "source_mismatch",
    "verify_against",
]

SOURCES = ("mmdet", "atss", "torchvision")
# detectron2's FrozenBatchNorm2d default eps.
FROZEN_BN_EPS = 1e-5

_WB = r"(?P<p>weight|bias)"


# Why ``num_batches_tracked`` is ignored, whichever norm the target model uses.
_BN_COUNTER_NOTE = (
    "BatchNorm step counter, not a weight: not carried over "
    "(FrozenBN and FrozenStatsBN have none; BN counts from 0)"
)


class ConversionError(ValueError):
    """A checkpoint that cannot be converted without losing or inventing weights."""


@dataclass(frozen=True)
class _Rule:
    pattern: "re.Pattern"
    # Target name from the match; None: the source tensor is ignored (``note`` says why).
    target: Optional[Callable[["re.Match"], str]]
    note: str = ""
    transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None


def _rule(pattern: str, target, note: str = "", transform=None) -> _Rule:
    if isinstance(target, str):
        template = target
        target = lambda m: template.format(**_fields(m))  # noqa: E731
    return _Rule(re.compile(pattern), target, note, transform)


def _fields(m: "re.Match") -> Dict[str, object]:
    d: Dict[str, object] = dict(m.groupdict())
    if d.get("layer") is not None:
        d["res"] = int(d["layer"]) + 1  # torchvision layer1..4 == detectron2 res2..5
    return d


def _ignore(pattern: str, reason: str) -> _Rule:
    return _Rule(re.compile(pattern), None, reason)


def _frozen_bn_var(t: torch.Tensor) -> torch.Tensor:
    # In float32 at least: in float16, var - 1e-5 rounds back to var for var >= 2^-6.
    return t.to(torch.promote_types(t.dtype, torch.float32)) - FROZEN_BN_EPS


def _to_scalar(t: torch.Tensor) -> torch.Tensor:
    if t.numel() != 1:
        raise ConversionError(
            f"expected a single-element per-level scale, got shape {tuple(t.shape)}"
        )
    return t.reshape(())


def _resnet_rules(src: str, dst: str, stem: str, frozen_bn_without_eps: bool = False):
    """ResNet rules for sources with torchvision's block names (all three)."""
    blk = rf"{src}layer(?P<layer>[1-4])\.(?P<i>\d+)\."
    res = dst + "res{res}.{i}."
    var_note = "var - 1e-5: source FrozenBN has no eps" if frozen_bn_without_eps else ""
    var_fn = _frozen_bn_var if frozen_bn_without_eps else None

    def bn(pattern_prefix: str, target_prefix: str):
        # running_var may need the eps correction; the other BN tensors are copied.
        return [
            _rule(pattern_prefix + r"(?P<p>weight|bias|running_mean)", target_prefix + "{p}"),
            _rule(pattern_prefix + r"(?P<p>running_var)", target_prefix + "{p}", var_note, var_fn),
        ]

    return [
        _rule(rf"{src}{stem}conv1\.weight", dst + "stem.conv1.weight"),
        *bn(rf"{src}{stem}bn1\.", dst + "stem.conv1.norm."),
        _rule(blk + r"conv(?P<j>[123])\.weight", res + "conv{j}.weight"),
        *bn(blk + r"bn(?P<j>[123])\.", res + "conv{j}.norm."),
        _rule(blk + r"downsample\.0\.weight", res + "shortcut.weight"),
        *bn(blk + r"downsample\.1\.", res + "shortcut.norm."),
        # maskrcnn-benchmark DFConv2d in the 3x3 of deformable stages.
        _rule(blk + r"conv2\.offset\." + _WB, res + "conv2_offset.{p}"),
        _rule(blk + r"conv2\.conv\.weight", res + "conv2.weight"),
        _ignore(r".*\.num_batches_tracked", _BN_COUNTER_NOTE),
    ]


def _mmdet_rules():
    tower = {"cls": "cls_subnet", "reg": "bbox_subnet"}
    fpn_out = {
        "0": "fpn_output3",
        "1": "fpn_output4",
        "2": "fpn_output5",
        "3": "top_block.p6",
        "4": "top_block.p7",
    }

    def tower_conv(m):
        return f"head.{tower[m['t']]}.{3 * int(m['i'])}.{m['p']}"

    def tower_gn(m):
        return f"head.{tower[m['t']]}.{3 * int(m['i']) + 1}.{m['p']}"

    return [
        *_resnet_rules(r"backbone\.", "backbone.bottom_up.", stem=""),
        _rule(
            r"neck\.lateral_convs\.(?P<i>[0-2])\.conv\." + _WB,
            lambda m: f"backbone.fpn_lateral{int(m['i']) + 3}.{m['p']}",
        ),
        _rule(
            r"neck\.fpn_convs\.(?P<i>[0-4])\.conv\." + _WB,
            lambda m: f"backbone.{fpn_out[m['i']]}.{m['p']}",
        ),
        _rule(r"bbox_head\.(?P<t>cls|reg)_convs\.(?P<i>\d+)\.conv\." + _WB, tower_conv),
        _rule(r"bbox_head\.(?P<t>cls|reg)_convs\.(?P<i>\d+)\.gn\." + _WB, tower_gn),
        _rule(r"bbox_head\.atss_cls\." + _WB, "head.cls_score.{p}"),
        _rule(r"bbox_head\.atss_reg\." + _WB, "head.bbox_pred.{p}"),
        _rule(r"bbox_head\.atss_centerness\." + _WB, "head.centerness.{p}"),
        _rule(r"bbox_head\.scales\.(?P<l>\d+)\.scale", "head.scales.{l}.scale", "", _to_scalar),
    ]


def _atss_rules():
    tower = {"cls": "cls_subnet", "bbox": "bbox_subnet"}
    head = r"rpn\.head\."
    return [
        *_resnet_rules(
            r"backbone\.body\.", "backbone.bottom_up.", stem=r"stem\.", frozen_bn_without_eps=True
        ),
        # FPN(in_channels_list=[0, C3, C4, C5]) numbers its blocks 1..4 and skips C2.
        _rule(
            r"backbone\.fpn\.fpn_inner(?P<k>[2-4])\." + _WB,
            lambda m: f"backbone.fpn_lateral{int(m['k']) + 1}.{m['p']}",
        ),
        _rule(
            r"backbone\.fpn\.fpn_layer(?P<k>[2-4])\." + _WB,
            lambda m: f"backbone.fpn_output{int(m['k']) + 1}.{m['p']}",
        ),
        _rule(r"backbone\.fpn\.top_blocks\.(?P<l>p6|p7)\." + _WB, "backbone.top_block.{l}.{p}"),
        # Same Sequential indices (conv, GN, ReLU triples); DFConv2d keeps offset/conv names.
        _rule(
            head + r"(?P<t>cls|bbox)_tower\.(?P<i>\d+)\.(?P<m>offset|conv)\." + _WB,
            lambda m: f"head.{tower[m['t']]}.{m['i']}.{m['m']}.{m['p']}",
        ),
        _rule(
            head + r"(?P<t>cls|bbox)_tower\.(?P<i>\d+)\." + _WB,
            lambda m: f"head.{tower[m['t']]}.{m['i']}.{m['p']}",
        ),
        _rule(head + r"cls_logits\." + _WB, "head.cls_score.{p}"),
        _rule(head + r"bbox_pred\." + _WB, "head.bbox_pred.{p}"),
        _rule(head + r"centerness\." + _WB, "head.centerness.{p}"),
        _rule(
            head + r"scales\.(?P<l>\d+)\.scale", "head.scales.{l}.scale", "(1,) -> ()", _to_scalar
        ),
        _ignore(
            r"rpn\.anchor_generator\.cell_anchors\.\d+",
            "anchors are recomputed (MODEL.ANCHOR_GENERATOR, ATSSLegacyAnchorGenerator)",
        ),
    ]


def _torchvision_rules():
    return [
        *_resnet_rules("", "backbone.bottom_up.", stem=""),
        _ignore(r"fc\.(weight|bias)", "ImageNet classifier, not part of the detector"),
    ]


_RULES = {"mmdet": _mmdet_rules, "atss": _atss_rules, "torchvision": _torchvision_rules}


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------
@dataclass
class ConversionReport:
    """What happened to every source tensor and (after :func:`verify_against`) every target."""

    source: str
    # (source key, target key, shape, note)
    mapped: List[Tuple[str, str, Tuple[int, ...], str]] = field(default_factory=list)
    # (source key, reason)
    ignored: List[Tuple[str, str]] = field(default_factory=list)
    unrecognized: List[str] = field(default_factory=list)
    # (target key, source keys): several sources for one target
    duplicates: List[Tuple[str, List[str]]] = field(default_factory=list)
    # Filled by verify_against: target tensors left empty / converted tensors the target lacks.
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    # (target key, source key, converted shape, target shape)
    shape_mismatches: List[Tuple[str, str, Tuple[int, ...], Tuple[int, ...]]] = field(
        default_factory=list
    )
    num_target: Optional[int] = None  # target tensors to fill (BN step counters not counted)
    counters_at_zero: int = 0  # target BN step counters the checkpoint leaves at 0
    notes: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.unrecognized
            or self.duplicates
            or self.missing
            or self.unexpected
            or self.shape_mismatches
        )

    def problems(self) -> List[str]:
        out = []
        for key in self.unrecognized:
            out.append(f"source key {key!r} matches no {self.source} layout rule")
        for target, sources in self.duplicates:
            out.append(f"target {target!r} would be filled by several source keys {sources}")
        for target, source, shape, want in self.shape_mismatches:
            out.append(
                f"shape mismatch for {target!r} (from {source!r}): checkpoint {list(shape)}, "
                f"model {list(want)}"
            )
        for key in self.missing:
            out.append(f"model tensor {key!r} is not filled by the checkpoint")
        for key in self.unexpected:
            out.append(f"converted tensor {key!r} does not exist in the model")
        return out

    def raise_if_failed(self) -> None:
        problems = self.problems()
        if problems:
            shown = problems[:30] + (
                [f"... and {len(problems) - 30} more"] if len(problems) > 30 else []
            )
            raise ConversionError(
                f"{self.source} checkpoint conversion failed ({len(problems)} problems):\n  "
                + "\n  ".join(shown)
            )

    def summary(self, verbose: bool = False) -> str:
        """A table of the mapping (grouped by name pattern unless ``verbose``) and the totals."""
        rows: List[Tuple[str, str, str, str]] = []
        if verbose:
            for src, dst, shape, note in self.mapped:
                rows.append((src, dst, "x".join(map(str, shape)) or "scalar", note))
            for src, reason in self.ignored:
                rows.append((src, "(ignored)", "", reason))
        else:
            grouped = Counter((_pattern(s), _pattern(d), n) for s, d, _, n in self.mapped)
            for (src, dst, note), n in grouped.items():
                rows.append((src, dst, str(n), note))
            for (src, reason), n in Counter((_pattern(s), r) for s, r in self.ignored).items():
                rows.append((src, "(ignored)", str(n), reason))
        for key in self.unrecognized:
            rows.append((key, "(UNRECOGNIZED)", "", "error"))
        header = ("source", "target", "shape" if verbose else "tensors", "note")
        lines = _table([header] + rows)
        lines.append("")
        total = len(self.mapped) + len(self.ignored) + len(self.unrecognized)
        lines.append(
            f"{self.source}: {total} source tensors: {len(self.mapped)} mapped, "
            f"{len(self.ignored)} ignored, {len(self.unrecognized)} unrecognized"
        )
        if self.num_target is not None:
            filled = self.num_target - len(self.missing)
            lines.append(
                f"model: {filled}/{self.num_target} tensors filled, {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected, {len(self.shape_mismatches)} shape mismatches"
            )
            if self.counters_at_zero:
                lines.append(
                    f"model: {self.counters_at_zero} BatchNorm step counters (num_batches_tracked) "
                    "start at 0"
                )
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"WARNING: {w}" for w in self.warnings]
        problems = self.problems()
        lines += [f"ERROR: {p}" for p in problems]
        lines.append(
            "conversion OK" if not problems else f"conversion FAILED ({len(problems)} problems)"
        )
        return "\n".join(lines)


_GROUPED_INDICES = [
    (re.compile(r"(layer|res)\d\.\d+\."), r"\1*.*."),
    (re.compile(r"(fpn_inner|fpn_layer|fpn_lateral|fpn_output)\d"), r"\1*"),
    (re.compile(r"(convs|tower|subnet|scales|cell_anchors)\.\d+"), r"\1.*"),
]


def _pattern(key: str) -> str:
    """Name pattern for the summary table: block, level and tower indices become ``*``."""
    for regex, replacement in _GROUPED_INDICES:
        key = regex.sub(replacement, key)
    return key


def _table(rows: Sequence[Sequence[str]]) -> List[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


# ------------------------------------------------------------------------------------------
# Layouts
# ------------------------------------------------------------------------------------------
# Layouts of other projects' checkpoints, which ``tools/convert_checkpoint.py --source`` converts:
# (source, description, pattern of their parameter names, without a "module." prefix).
_FOREIGN_LAYOUTS = (
    (
        "atss",
        "ATSS authors' (maskrcnn-benchmark)",
        re.compile(r"(backbone\.body|backbone\.fpn\.fpn_(inner|layer)\d|rpn\.head)\."),
    ),
    (
        "mmdet",
        "mmdetection",
        re.compile(r"(bbox_head|neck)\.|backbone\.(conv1|bn1|layer[1-4])\."),
    ),
    ("torchvision", "torchvision ResNet", re.compile(r"layer[1-4]\.\d+\.|fc\.(weight|bias)$")),
)


def foreign_layout(names) -> Optional[Tuple[str, str, List[str]]]:
    """
    (``tools/convert_checkpoint.py`` source, description, the names in that layout) when
    parameter names of a state dict are those of the ATSS authors' code (maskrcnn-benchmark),
    of mmdetection or of a torchvision ResNet, else None.
    """
    names = list(names)
    for source, description, pattern in _FOREIGN_LAYOUTS:
        found = [
            n for n in names if pattern.match(n[len("module.") :] if n.startswith("module.") else n)
        ]
        if found:
            return source, description, found
    return None


def source_mismatch(source: str, state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Why ``--source source`` cannot be right for ``state`` when none of its names matches
    that source's layout: the layout they have instead, else None."""
    names = list(state)
    found = foreign_layout(names)
    if found is not None and found[0] != source:
        return (
            f"none of its tensors has a name of the {source} layout; its names are those of "
            f"{found[1]} checkpoints (e.g. {found[2][0]}): use --source {found[0]}"
        )
    plain = [n[len("module.") :] if n.startswith("module.") else n for n in names]
    if any(n.startswith(("backbone.bottom_up.", "head.cls_score")) for n in plain):
        return (
            "none of its tensors has a name of the "
            f"{source} layout; it is already a detectron2 / atss_d2 checkpoint: give it to "
            "MODEL.WEIGHTS as it is"
        )
    return None


# ------------------------------------------------------------------------------------------
# Conversion
# ------------------------------------------------------------------------------------------
def extract_state_dict(source: str, checkpoint) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """
    The model state dict inside a loaded checkpoint of ``source``, and notes about the rest
    (optimizer state, meta data) that the conversion leaves out.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(f"expected a dict checkpoint, got {type(checkpoint).__name__}")
    notes = []
    container = {"mmdet": "state_dict", "atss": "model"}.get(source)
    if container is None:  # torchvision: a bare state dict, or wrapped by a training script
        container = next((k for k in ("state_dict", "model") if k in checkpoint), None)
    if container is not None and container in checkpoint:
        state = checkpoint[container]
        others = sorted(k for k in checkpoint if k != container)
        if others:
            notes.append(f"left out of the conversion (not model weights): {others}")
        meta = checkpoint.get("meta")
        if source == "mmdet" and isinstance(meta, Mapping):
            notes += _mmdet_meta_notes(meta)
    elif all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        state = checkpoint
    else:
        raise ConversionError(
            f"no {container!r} entry in this {source} checkpoint (top-level keys: "
            f"{sorted(map(str, checkpoint))[:10]}); is --source right?"
        )
    if not isinstance(state, Mapping):
        raise ConversionError(f"the model weights are a {type(state).__name__}, not a dict")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"non-tensor entries in the state dict: {bad[:10]}")
    return dict(state), notes


def _mmdet_meta_notes(meta: Mapping) -> List[str]:
    notes = []
    version = meta.get("mmdet_version")
    if version:
        notes.append(f"written by mmdetection {version}")
    classes = meta.get("CLASSES") or (meta.get("dataset_meta") or {}).get("classes")
    if classes is not None:
        notes.append(f"{len(classes)} classes in the checkpoint meta (channel order kept)")
    return notes


def without_module_prefix(names) -> List[str]:
    """``names`` without DistributedDataParallel's "module." when every (non-empty) one has it,
    as fvcore's checkpointer removes it."""
    names = list(names)
    if names and all(not n or n.startswith("module.") for n in names):
        return [n[len("module.") :] for n in names]
    return names


def _strip_module_prefix(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return dict(zip(without_module_prefix(state), state.values()))


def convert_state_dict(
    source: str, state: Mapping[str, torch.Tensor]
) -> Tuple["OrderedDict[str, torch.Tensor]", ConversionReport]:
    """
    Rename (and where documented, adjust) the tensors of a ``source`` state dict.

    Returns:
        The converted state dict in detectron2 names, and a report. Unrecognized keys are
        listed in the report (``report.ok`` is False), not raised: call
        ``report.raise_if_failed()``.
    """
    if source not in _RULES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    rules = _RULES[source]()
    report = ConversionReport(source=source)
    converted: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    origin: Dict[str, List[str]] = {}
    for key, value in _strip_module_prefix(state).items():
        for rule in rules:
            m = rule.pattern.fullmatch(key)
            if m is None:
                continue
            if rule.target is None:
                report.ignored.append((key, rule.note))
                break
            target = rule.target(m)
            try:
                tensor = rule.transform(value) if rule.transform else value
            except ConversionError as e:
                raise ConversionError(f"{key!r}: {e}") from None
            origin.setdefault(target, []).append(key)
            converted[target] = tensor
            report.mapped.append((key, target, tuple(tensor.shape), rule.note))
            break
        else:
            report.unrecognized.append(key)
    report.duplicates = [(t, s) for t, s in origin.items() if len(s) > 1]
    return converted, report


def verify_against(
    converted: Mapping[str, torch.Tensor],
    report: ConversionReport,
    target_shapes: Mapping[str, Sequence[int]],
) -> ConversionReport:
    """
    Compare converted tensors with a model's state dict (``{name: shape}``, e.g. the parameters
    and persistent buffers of a model built from the target config; restrict it to a prefix
    such as ``backbone.bottom_up.`` to check a backbone-only conversion). Fills the report's
    ``missing``, ``unexpected`` and ``shape_mismatches`` in place and returns it.
    """
    source_of = {dst: src for src, dst, _, _ in report.mapped}
    # BatchNorm step counters (models with trainable BN) start at 0; no weights live there.
    counters = [
        k for k in target_shapes if k.endswith("num_batches_tracked") and k not in converted
    ]
    report.num_target = len(target_shapes) - len(counters)
    report.counters_at_zero = len(counters)
    report.missing = [k for k in target_shapes if k not in converted and k not in counters]
    report.unexpected = [k for k in converted if k not in target_shapes]
    report.shape_mismatches = [
        (k, source_of.get(k, "?"), tuple(v.shape), tuple(target_shapes[k]))
        for k, v in converted.items()
        if k in target_shapes and tuple(v.shape) != tuple(target_shapes[k])
    ]
    return report


# ------------------------------------------------------------------------------------------
# Architecture of a converted state dict (to choose the config)
# ------------------------------------------------------------------------------------------
# Depth from the number of res4 blocks: bottleneck blocks (conv1-conv3), basic blocks (conv1-conv2,
# ResNet-18/34; detectron2's ResNet builds them for depths 18 and 34).
_DEPTH_FROM_RES4 = {6: 50, 23: 101, 36: 152}
_BASIC_DEPTH_FROM_RES4 = {2: 18, 6: 34}


@dataclass(frozen=True)
class ModelArch:
    """The model variant implied by converted tensor names and shapes."""

    depth: int
    num_groups: int
    width_per_group: int
    deform_on_per_stage: Tuple[bool, bool, bool, bool]
    deform_modulated: bool
    dcn_in_tower: bool
    num_classes: Optional[int]

    @property
    def name(self) -> str:
        """Config-name fragment: ``R_50``, ``dcnv2_X_101_64x4d``, ..."""
        if self.num_groups == 1:
            body = f"R_{self.depth}"
            if self.width_per_group != 64:  # wide ResNet (torchvision's wide_resnet50_2: 128)
                body += f"_w{self.width_per_group}"
        else:
            body = f"X_{self.depth}_{self.num_groups}x{self.width_per_group}d"
        return ("dcnv2_" if any(self.deform_on_per_stage) else "") + body

    def config_opts(self) -> List[str]:
        """detectron2 config overrides that build this variant."""
        opts = ["MODEL.RESNETS.DEPTH", str(self.depth)]
        opts += ["MODEL.RESNETS.NUM_GROUPS", str(self.num_groups)]
        opts += ["MODEL.RESNETS.WIDTH_PER_GROUP", str(self.width_per_group)]
        if self.depth in _BASIC_DEPTH_FROM_RES4.values():
            # detectron2 builds basic blocks only with 64 res2 channels (Base-ATSS says 256).
            opts += ["MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
        if self.num_groups > 1:
            # ResNeXt weights (torchvision's, FAIR's used by the ATSS authors) stride in the 3x3.
            opts += ["MODEL.RESNETS.STRIDE_IN_1X1", "False"]
        opts += ["MODEL.RESNETS.DEFORM_ON_PER_STAGE", str(list(self.deform_on_per_stage))]
        opts += ["MODEL.RESNETS.DEFORM_MODULATED", str(self.deform_modulated)]
        opts += ["MODEL.ATSS.DCN_IN_TOWER", str(self.dcn_in_tower)]
        if self.num_classes is not None:
            opts += ["MODEL.ATSS.NUM_CLASSES", str(self.num_classes)]
        return opts


def infer_model_arch(converted: Mapping[str, torch.Tensor]) -> ModelArch:
    """Depth, groups, width, deformable stages and classes from converted tensors."""
    prefix = "backbone.bottom_up."
    res4_blocks = set()
    for key in converted:
        m = re.match(re.escape(prefix) + r"res4\.(\d+)\.", key)
        if m:
            res4_blocks.add(int(m.group(1)))
    conv2 = converted.get(prefix + "res2.0.conv2.weight")
    basic = conv2 is not None and prefix + "res2.0.conv3.weight" not in converted
    depth = (_BASIC_DEPTH_FROM_RES4 if basic else _DEPTH_FROM_RES4).get(len(res4_blocks))
    if depth is None or conv2 is None:
        kind, known = ("basic", "2 or 6") if basic else ("bottleneck", "6, 23 or 36")
        raise ConversionError(
            f"cannot tell the ResNet variant (res4 has {len(res4_blocks)} {kind} blocks, "
            f"expected {known}); pass --config-file"
        )
    bottleneck = conv2.shape[0]
    groups = bottleneck // conv2.shape[1]
    offsets = {
        stage: converted.get(f"{prefix}res{stage}.0.conv2_offset.weight") for stage in (2, 3, 4, 5)
    }
    deform = tuple(offsets[s] is not None for s in (2, 3, 4, 5))
    # 3 x 9 channels (offsets and mask) per deformable group for DCNv2, 2 x 9 for DCNv1.
    modulated = any(o is not None and o.shape[0] % 27 == 0 for o in offsets.values())
    tower_dcn = any(k.startswith("head.") and ".offset." in k for k in converted)
    cls_score = converted.get("head.cls_score.weight")
    num_classes = None if cls_score is None else int(cls_score.shape[0])
    return ModelArch(depth, groups, bottleneck // groups, deform, modulated, tower_dcn, num_classes)


def default_config(source: str, arch: ModelArch, config_root: str) -> Tuple[str, List[str]]:
    """
    The shipped config for a converted checkpoint (``configs/COCO-Detection`` for mmdetection
    and torchvision weights, ``configs/Original`` for the authors'), plus the overrides that make
    it build ``arch`` when no config of that exact name ships.

    Returns:
        (config path, list of KEY VALUE overrides).
    """
    if source == "atss":
        names = [
            f"Original/atss_{arch.name}_FPN_1x.yaml",
            f"Original/atss_{arch.name}_FPN_2x_ms.yaml",
        ]
        # Same depth, plain ResNet, else R-50: the overrides below make up the difference.
        fallbacks = [
            f"Original/atss_R_{arch.depth}_FPN_2x_ms.yaml",
            "Original/atss_R_50_FPN_1x.yaml",
        ]
    else:
        names = [f"COCO-Detection/atss_{arch.name}_FPN_1x.yaml"]
        fallbacks = [f"COCO-Detection/atss_R_{arch.depth}_FPN_1x.yaml"]
        fallbacks.append("COCO-Detection/atss_R_50_FPN_1x.yaml")
    for name in names:
        path = os.path.join(config_root, name)
        if os.path.isfile(path):
            return path, [] if source == "torchvision" else _class_opts(arch)
    opts = arch.config_opts()
    if source == "torchvision":  # backbone only: the head is trained from scratch
        opts = opts[: opts.index("MODEL.ATSS.DCN_IN_TOWER")]
    fallback = next(f for f in fallbacks if os.path.isfile(os.path.join(config_root, f)))
    return os.path.join(config_root, fallback), opts


def _class_opts(arch: ModelArch) -> List[str]:
    return [] if arch.num_classes is None else ["MODEL.ATSS.NUM_CLASSES", str(arch.num_classes)]


# ------------------------------------------------------------------------------------------
# Input the weights were trained on
# ------------------------------------------------------------------------------------------
# torchvision's ImageNet models take RGB in [0, 1] normalised with mean (0.485, 0.456, 0.406)
# and std (0.229, 0.224, 0.225), i.e. these values on 0-255 pixels; mmdetection's pytorch-style
# ResNets keep them (``data_preprocessor`` of configs/atss/atss_r50_fpn_1x_coco.py, to_rgb).
_IMAGENET_RGB = {
    "INPUT.FORMAT": "RGB",
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
}
# The authors' configs keep maskrcnn-benchmark's defaults (INPUT.TO_BGR255, PIXEL_MEAN
# [102.9801, 115.9465, 122.7717], PIXEL_STD [1, 1, 1]): caffe-style BGR on 0-255 pixels.
_CAFFE_BGR = {
    "INPUT.FORMAT": "BGR",
    "MODEL.PIXEL_MEAN": [102.9801, 115.9465, 122.7717],
    "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
}


def input_convention(source: str, arch: Optional[ModelArch] = None) -> Dict[str, object]:
    """
    The input a ``source`` model was trained on and where its ResNet strides, as the detectron2
    config values that reproduce them: ``{"INPUT.FORMAT": ..., "MODEL.PIXEL_MEAN": [...],
    "MODEL.PIXEL_STD": [...], "MODEL.RESNETS.STRIDE_IN_1X1": ...}``. The stride key is left out
    for basic-block ResNets (18, 34), which have no 1x1 conv to stride in, and when ``arch`` is
    not known for the authors' models (MSRA ResNets stride in the 1x1, FAIR ResNeXts in the 3x3).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    convention: Dict[str, object] = dict(_CAFFE_BGR if source == "atss" else _IMAGENET_RGB)
    if arch is not None and arch.depth in _BASIC_DEPTH_FROM_RES4.values():
        return convention
    if source != "atss":
        convention["MODEL.RESNETS.STRIDE_IN_1X1"] = False
    elif arch is not None:
        convention["MODEL.RESNETS.STRIDE_IN_1X1"] = arch.num_groups == 1
    return convention


def _config_value(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _same_value(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str):
        return a == b
    return abs(float(a) - float(b)) <= 1e-3 * max(1.0, abs(float(b)))


def convention_overrides(convention: Mapping[str, object], get) -> List[str]:
    """
    ``KEY VALUE`` overrides that make a config read input as ``convention`` says (see
    :func:`input_convention`); empty when it already does. ``get(key)`` gives the config's
    value of a key (None: not known, not compared).
    """
    opts: List[str] = []
    for key, want in convention.items():
        have = get(key)
        if have is None or _same_value(have, want):
            continue
        opts += [key, str(list(want)) if isinstance(want, (list, tuple)) else str(want)]
    return opts


def config_convention(cfg, keys) -> Dict[str, object]:
    """The config's values of ``keys`` (those of an :func:`input_convention`)."""
    return {key: _config_value(cfg, key) for key in keys}


def config_convention_overrides(cfg, convention: Mapping[str, object]) -> List[str]:
    """:func:`convention_overrides` for a detectron2 config."""
    return convention_overrides(convention, lambda key: _config_value(cfg, key))


def describe_convention(convention: Mapping[str, object]) -> str:
    """E.g. "RGB input, mean [123.675, 116.28, 103.53], std [58.395, 57.12, 57.375], stride in
    the 3x3 conv"."""
    parts = []
    if convention.get("INPUT.FORMAT") is not None:
        parts.append(f"{convention['INPUT.FORMAT']} input")
    for key, name in (("MODEL.PIXEL_MEAN", "mean"), ("MODEL.PIXEL_STD", "std")):
        if convention.get(key) is not None:  # float32 buffers shown as the config wrote them
            parts.append(f"{name} {[round(float(v), 4) for v in convention[key]]}")
    if convention.get("MODEL.RESNETS.STRIDE_IN_1X1") is not None:
        where = "1x1" if convention["MODEL.RESNETS.STRIDE_IN_1X1"] else "3x3"
        parts.append(f"stride in the {where} conv")
    return ", ".join(parts)


def mmdet_class_names(checkpoint) -> Optional[List[str]]:
    """The class names in an mmdetection checkpoint's ``meta`` (2.x ``CLASSES``, 3.x
    ``dataset_meta["classes"]``), in the order of its classification channels; else None."""
    meta = checkpoint.get("meta") if isinstance(checkpoint, Mapping) else None
    if not isinstance(meta, Mapping):
        return None
    dataset_meta = meta.get("dataset_meta")
    classes = meta.get("CLASSES")
    if classes is None and isinstance(dataset_meta, Mapping):
        classes = dataset_meta.get("classes")
    if isinstance(classes, str):
        classes = [classes]
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        return None
    return list(classes)


# ------------------------------------------------------------------------------------------
# Anchors and output
# ------------------------------------------------------------------------------------------
def compare_cell_anchors(
    state: Mapping[str, torch.Tensor], anchor_generator
) -> Tuple[List[str], List[str]]:
    """
    Compare the ``rpn.anchor_generator.cell_anchors.*`` buffers of an authors' checkpoint with
    the anchors a detectron2 anchor generator puts in the first grid cell of each level.

    Returns:
        (notes, warnings).
    """
    saved = {}
    for key, value in _strip_module_prefix(state).items():
        m = re.fullmatch(r"rpn\.anchor_generator\.cell_anchors\.(\d+)", key)
        if m:
            saved[int(m.group(1))] = value.float()
    if not saved:
        return [], []
    ours = [
        cell.float() + anchor_generator.offset * stride
        for cell, stride in zip(anchor_generator.cell_anchors, anchor_generator.strides)
    ]
    same = len(saved) == len(ours) and all(
        saved.get(i) is not None
        and saved[i].shape == a.shape
        and torch.allclose(saved[i], a, atol=1e-4)
        for i, a in enumerate(ours)
    )
    name = type(anchor_generator).__name__
    if same:
        return [f"the checkpoint's anchors equal the config's ({name})"], []
    first = saved.get(0)
    return [], [
        f"the checkpoint's anchors ({None if first is None else first[0].tolist()} at level 0) "
        f"differ from the config's ({name}: {ours[0][0].tolist()}); boxes would be decoded from "
        "the wrong anchors. The authors' anchors are MODEL.ANCHOR_GENERATOR.NAME "
        "ATSSLegacyAnchorGenerator with OFFSET 0.5 (configs/Original)."
    ]


def save_detectron2_checkpoint(
    path: str,
    state: Mapping[str, torch.Tensor],
    author: str,
    input_convention: Optional[Mapping[str, object]] = None,
    thing_classes: Optional[Sequence[str]] = None,
) -> None:
    """
    Write ``{"model": state, "__author__": author, "matching_heuristics": False}`` as detectron2's
    ``DetectionCheckpointer`` (and :class:`SafeDetectionCheckpointer`) read it: numpy arrays in a
    pickle for ``.pkl`` (detectron2's model-zoo format), ``torch.save`` otherwise. Names are
    exact, so no name-matching heuristics are applied when loading. Floating-point tensors are
    stored as float32 (the model's dtype; an fp16 checkpoint is widened exactly).

    ``input_convention`` (:func:`input_convention`) and ``thing_classes`` (the class names of
    the classification channels) are stored beside the weights when given:
    :class:`SafeDetectionCheckpointer` warns when the model reads its input otherwise and
    reports the class names; other loaders ignore the extra entries.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    model = {
        k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in state.items()
    }
    data = {"model": model, "__author__": author, "matching_heuristics": False}
    if input_convention is not None:
        data["input_convention"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in input_convention.items()
        }
    if thing_classes is not None:
        data["thing_classes"] = list(thing_classes)
    if path.endswith(".pkl"):
        data["model"] = {k: v.numpy() for k, v in model.items()}
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=4)
    else:
        torch.save(data, path)
