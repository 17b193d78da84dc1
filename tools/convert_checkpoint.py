#!/usr/bin/env python
"""
Convert an ATSS checkpoint of mmdetection or of the authors' code, or a torchvision ImageNet
ResNet, into a detectron2 checkpoint for atss_d2.

    python tools/convert_checkpoint.py --source mmdet \\
        atss_r50_fpn_1x_coco_20200209-985f7bd0.pth output/atss_R_50_FPN_1x_mmdet.pth
    python tools/convert_checkpoint.py --source atss \\
        ATSS_R_50_FPN_1x.pth output/atss_R_50_FPN_1x_original.pth
    python tools/convert_checkpoint.py --source torchvision \\
        resnet50-0676ba61.pth output/R-50-torchvision.pkl

The input is read with torch.load(weights_only=True) (or, for .pkl, a numpy-only unpickler): a
file that would need arbitrary unpickling is refused and nothing in it runs. The result is checked
against a model built from the target config (chosen from the checkpoint's architecture unless
--config-file is given): every source tensor must be mapped or knowingly ignored, every model
tensor filled, shapes equal. Nothing is written otherwise. The output records the input the
weights were trained on (channel order, pixel mean and std, ResNet stride placement) and, for
mmdetection, the class names of its meta; when the target config reads input otherwise, the
summary warns and the printed train_net.py command carries the overrides that fix it.
"""

import argparse
import os
import shlex
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTHORS = {
    "mmdet": "mmdetection (converted by atss_d2)",
    "atss": "ATSS authors, maskrcnn-benchmark (converted by atss_d2)",
    "torchvision": "torchvision (converted by atss_d2)",
}


DESCRIPTIONS = {
    "mmdet": "mmdetection ATSS",
    "atss": "ATSS authors' (maskrcnn-benchmark)",
    "torchvision": "torchvision ResNet",
}
HALF_DTYPES = (torch.float16, torch.bfloat16)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source", required=True, choices=("mmdet", "atss", "torchvision"), help="input layout"
    )
    parser.add_argument("input", help="checkpoint to convert (.pth / .pt / .pkl)")
    parser.add_argument(
        "output",
        help="detectron2 checkpoint to write: .pkl (numpy, model-zoo format) or .pth (torch)",
    )
    parser.add_argument(
        "--config-file",
        default="",
        help="config of the model the checkpoint is for (default: the shipped config matching "
        "the checkpoint's architecture)",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="do not build the target model to check names and shapes",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="list every tensor")
    parser.add_argument("opts", nargs="*", help="config overrides for the check: KEY VALUE ...")
    return parser


def build_target(source: str, converted, config_file: str, opts):
    """The config file and overrides used, a CPU model built from them and the config."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from atss_d2 import add_atss_config
    from atss_d2.checkpoint import default_config, infer_model_arch

    extra = []
    if not config_file:
        config_file, extra = default_config(
            source, infer_model_arch(converted), os.path.join(ROOT, "configs")
        )
    cfg = get_cfg()
    add_atss_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(extra + list(opts))
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return config_file, extra + list(opts), build_model(cfg), cfg


def main(argv=None) -> int:
    args = get_parser().parse_intermixed_args(argv)

    from atss_d2.checkpoint import (
        ConversionError,
        UnsafeCheckpointError,
        compare_cell_anchors,
        config_convention,
        config_convention_overrides,
        convert_state_dict,
        describe_convention,
        extract_state_dict,
        infer_model_arch,
        input_convention,
        load_checkpoint_file,
        mmdet_class_names,
        save_detectron2_checkpoint,
        verify_against,
    )
    from atss_d2.checkpoint.convert import source_mismatch

    try:
        checkpoint = load_checkpoint_file(args.input)
        state, notes = extract_state_dict(args.source, checkpoint)
        converted, report = convert_state_dict(args.source, state)
    except (UnsafeCheckpointError, ConversionError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    mismatch = None if report.mapped else source_mismatch(args.source, state)
    if mismatch:
        print(f"error: {args.input}: {mismatch}; nothing written", file=sys.stderr)
        return 2
    if not report.mapped:
        names = ", ".join(list(state)[:3]) or "none"
        print(
            f"error: {args.input}: none of its {len(state)} tensors has a name of the "
            f"{args.source} layout (its names: {names}, ...): it is no "
            f"{DESCRIPTIONS[args.source]} checkpoint; nothing written",
            file=sys.stderr,
        )
        return 2
    report.notes += notes
    halves = sorted({str(v.dtype) for v in state.values() if v.dtype in HALF_DTYPES})
    if halves:
        report.notes.append(
            f"{' and '.join(halves).replace('torch.', '')} tensors in the checkpoint: written "
            "as float32 (exactly)"
        )
    classes = mmdet_class_names(checkpoint) if args.source == "mmdet" else None
    try:
        arch = infer_model_arch(converted)
    except ConversionError:
        arch = None  # reported below when a model is built; with --no-verify, not needed
    convention = input_convention(args.source, arch)

    config_file, opts = args.config_file, args.opts
    if not args.no_verify:
        try:
            config_file, opts, model, cfg = build_target(args.source, converted, config_file, opts)
        except ConversionError as e:
            # No model to check against: the summary's verdict would be premature.
            print(f"error: {e}", file=sys.stderr)
            print(f"error: {args.input} was not converted; nothing written", file=sys.stderr)
            return 1
        target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if args.source == "torchvision":  # ImageNet weights initialise the ResNet only
            target = {k: s for k, s in target.items() if k.startswith("backbone.bottom_up.")}
        verify_against(converted, report, target)
        overrides = " ".join(shlex.quote(o) for o in opts)
        report.notes.append(f"checked against {os.path.relpath(config_file)} {overrides}")
        fix = config_convention_overrides(cfg, convention)
        if fix:
            report.warnings.append(
                f"the {args.source} weights were trained on {describe_convention(convention)}; "
                f"the config reads {describe_convention(config_convention(cfg, convention))}, so "
                f"the features would be wrong: the command below adds {shlex.join(fix)}"
            )
            opts = list(opts) + fix
        anchor_gen = getattr(model, "anchor_generator", None)
        if args.source == "atss" and anchor_gen is not None:
            anchor_notes, anchor_warnings = compare_cell_anchors(state, anchor_gen)
            report.notes += anchor_notes
            report.warnings += anchor_warnings

    print(report.summary(args.verbose))
    if not report.ok:
        print(f"error: {args.input} was not converted; nothing written", file=sys.stderr)
        return 1
    save_detectron2_checkpoint(
        args.output, converted, AUTHORS[args.source], convention, thing_classes=classes
    )
    print(f"wrote {args.output}")
    if not args.no_verify:
        usage = "MODEL.WEIGHTS" if args.source == "torchvision" else "--eval-only MODEL.WEIGHTS"
        cfg_arg = os.path.relpath(config_file)
        extra = " ".join(shlex.quote(o) for o in opts)
        print(f"use: python train_net.py --config-file {cfg_arg} {usage} {args.output} {extra}")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
