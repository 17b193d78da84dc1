#!/usr/bin/env python
"""
Plot the training curves of a detectron2 run from its ``metrics.json`` (one JSON object per
line, written by detectron2's JSONWriter): the losses, the learning rate and, when the run
evaluated, the box AP.

    python tools/plot_metrics.py output/demo   # writes output/demo/training_curves.png
    python tools/plot_metrics.py output/demo --out curves.png
"""

import argparse
import json
import os
import sys
from typing import Dict, List, Tuple

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["read_metrics", "plot_metrics"]

Series = Dict[str, List[Tuple[int, float]]]


def read_metrics(path: str) -> Series:
    """
    Read a detectron2 ``metrics.json`` into ``{key: [(iteration, value), ...]}``.

    Lines that are not JSON objects (e.g. a line cut short by an interrupted run) are skipped;
    an error names the file when nothing is left.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` holds no metrics.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"metrics file not found: {path} (did the training run write it?)")
    series: Series = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict) or "iteration" not in record:
                continue
            it = int(record["iteration"])
            for key, value in record.items():
                if key != "iteration" and isinstance(value, (int, float)):
                    series.setdefault(key, []).append((it, float(value)))
    if not series:
        raise ValueError(f"{path} holds no metrics (empty, or no line with an 'iteration')")
    return series


def plot_metrics(output_dir: str, out: str = None) -> str:
    """
    Plot ``output_dir/metrics.json`` into ``out`` (default ``output_dir/training_curves.png``).

    Panels: every ``*loss*`` series; the learning rate; box AP, AP50 and AP75 over iterations
    when the run evaluated ("bbox/AP" ...).

    Returns:
        the path of the PNG.
    """
    series = read_metrics(os.path.join(output_dir, "metrics.json"))
    out = out or os.path.join(output_dir, "training_curves.png")
    losses = sorted(k for k in series if "loss" in k)
    ap_keys = [k for k in ("bbox/AP", "bbox/AP50", "bbox/AP75") if k in series]
    panels = [("losses", losses, True), ("learning rate", ["lr"] if "lr" in series else [], False)]
    if ap_keys:
        panels.append(("box AP (COCO, %)", ap_keys, False))
    panels = [p for p in panels if p[1]]

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (title, keys, log_scale) in zip(axes[0], panels):
        for key in keys:
            its, values = zip(*series[key])
            marker = "o" if len(its) < 3 else None
            ax.plot(its, values, label=key, marker=marker)
            if ap_keys and key in ap_keys:
                ax.annotate(
                    f"{values[-1]:.1f}",
                    (its[-1], values[-1]),
                    textcoords="offset points",
                    xytext=(-10, 6),
                    fontsize=8,
                )
        if log_scale and all(v > 0 for k in keys for _, v in series[k]):
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(os.path.abspath(output_dir), fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="a detectron2 OUTPUT_DIR holding metrics.json")
    parser.add_argument("--out", help="PNG to write (default: OUTPUT_DIR/training_curves.png)")
    args = parser.parse_args(argv)
    try:
        path = plot_metrics(args.output_dir, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"plot_metrics: error: {e}", file=sys.stderr)
        return 1
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
