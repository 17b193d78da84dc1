"""tools/plot_metrics.py: a PNG of the curves from a metrics.json; clear errors without one."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from tiny_setup import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "plot_metrics.py"


def _module():
    return load_script(SCRIPT)


def _write_metrics(path: Path):
    lines = [
        {"iteration": it, "total_loss": 3.0 / (1 + it / 20), "loss_cls": 1.0 / (1 + it / 20),
         "loss_box_reg": 1.5 / (1 + it / 40), "lr": 0.002 * min(1, (it + 1) / 50), "time": 0.5}
        for it in range(19, 400, 20)
    ]  # fmt: skip
    lines.append({"iteration": 399, "bbox/AP": 61.5, "bbox/AP50": 85.0, "bbox/AP75": 70.2})
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")


def test_reads_series_per_key(tmp_path):
    _write_metrics(tmp_path / "metrics.json")
    series = _module().read_metrics(str(tmp_path / "metrics.json"))
    assert len(series["total_loss"]) == 20
    assert series["total_loss"][0] == (19, pytest.approx(3.0 / 1.95))
    assert series["bbox/AP"] == [(399, 61.5)]


def test_cli_writes_a_png(tmp_path):
    _write_metrics(tmp_path / "metrics.json")
    out = tmp_path / "plots" / "curves.png"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > 600 and img.size[1] > 200


def test_default_output_in_the_run_directory(tmp_path):
    _write_metrics(tmp_path / "metrics.json")
    path = _module().plot_metrics(str(tmp_path))
    assert Path(path) == tmp_path / "training_curves.png" and Path(path).stat().st_size > 1000


def test_missing_or_empty_metrics(tmp_path):
    plot = _module()
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        plot.plot_metrics(str(tmp_path))
    (tmp_path / "metrics.json").write_text("")
    with pytest.raises(ValueError, match="holds no metrics"):
        plot.plot_metrics(str(tmp_path))
    assert plot.main([str(tmp_path)]) == 1
