"""tools/benchmark_matcher.py on a small image: identical results, and the batched selection
dispatches fewer ops than one match per image (ops are counted, not timed)."""

import json
from pathlib import Path

import pytest
from tiny_setup import load_script

REPO = Path(__file__).resolve().parents[1]


def _load(name):
    return load_script(f"tools/{name}.py")


@pytest.fixture(scope="module")
def matcher_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    tool = _load("benchmark_matcher")
    argv = ["--height", "160", "--width", "224", "--gts", "20", "--big", "300", "--iters", "1"]
    argv += ["--warmup", "0", "--threads", "1", "--batches", "1", "4", "--out", str(out)]
    argv += ["--gt-chunks", "7"]
    code = tool.main(argv)
    return code, json.loads((out / "matcher.json").read_text())


def test_matcher_benchmark_checks_identity(matcher_report):
    code, report = matcher_report
    assert code == 0
    assert [r["num_gt"] for r in report["rows"]] == [20, 300]
    assert all(r["identical_to_exhaustive"] for r in report["rows"])
    assert report["rows"][1]["atss_d2_extra_mb"] < 512
    # Chunks of 7 GTs (3 for 20 GTs, 43 for 300) give the default chunk's assignments.
    assert [(c["gt_chunk"], c["num_gt"]) for c in report["chunks"]] == [(7, 20), (7, 300)]
    assert all(c["identical"] for c in report["chunks"])


def test_batched_selection_dispatches_fewer_ops(matcher_report):
    _, report = matcher_report
    one, four = report["batches"]
    assert one["images"] == 1 and four["images"] == 4
    assert one["identical"] and four["identical"]
    # One image: the batched call is the single-image call.
    assert one["batched_ops"] == one["one_at_a_time_ops"]
    # Four images: the per-image loop repeats every op four times; the batch does not.
    assert four["one_at_a_time_ops"] == pytest.approx(4 * one["one_at_a_time_ops"], rel=0.1)
    assert four["batched_ops"] < 0.5 * four["one_at_a_time_ops"]
    assert four["batched_ops_cuda_path"] < 0.5 * four["one_at_a_time_ops_cuda_path"]


def test_data_benchmark_runs_both_mappers(tmp_path):
    tool = _load("benchmark_data")
    out = tmp_path / "data.json"
    argv = ["--num-images", "4", "--size", "64x48", "--workers", "0", "--repeats", "1"]
    argv += ["--json", str(out), "INPUT.MIN_SIZE_TRAIN", "(48,)", "INPUT.MAX_SIZE_TRAIN", "96"]
    result = tool.main(argv)
    assert [(r["workers"], r["mapper"]) for r in result["rows"]] == [
        (0, "atss_d2"),
        (0, "detectron2"),
    ]
    for row in result["rows"]:
        assert row["images"] == 4 and len(row["rates"]) == 1
        assert row["median_images_per_s"] > 0
    assert result["ratio_atss_d2_over_detectron2"]["0"] > 0
    assert json.loads(out.read_text())["machine"]["cpu_count"] >= 1


def test_model_benchmark_batches_graph_row_and_targets(tmp_path):
    """tools/benchmark.py on tiny images: a table per inference batch with per-image times, the
    CUDA-graph row (eager on the CPU) giving eager ATSS's detections, and the ratios marked
    against the CPU targets."""
    tool = _load("benchmark")
    argv = ["--sizes", "96x128", "--infer-batch", "1", "2", "--train-size", "96x128"]
    argv += ["--batch", "1", "--num-gt", "5", "--iters", "1", "--warmup", "0", "--threads", "1"]
    argv += ["--models", "atss", "fcos", "--cuda-graphs", "--no-memory", "--no-ops"]
    assert tool.main(argv + ["--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "benchmark.json").read_text())
    assert list(result["inference"]) == ["96x128, batch 1", "96x128, batch 2"]
    for batch, table in zip((1, 2), result["inference"].values()):
        assert set(table) == {"atss", "fcos", "atss_graphs"}
        for row in table.values():
            assert len(row["detections"]) == batch
            assert row["ms_per_image"] == pytest.approx(row["median_ms"] / batch)
            assert row["padded_input"] == [batch, 3, 96, 128]  # 96x128: already multiples of 32
        assert table["atss_graphs"]["agreement"]["exact"]
        assert table["atss_graphs"]["agreement"]["graphs_captured"] == 0  # the CPU is eager
        assert table["atss_graphs"]["detections"] == table["atss"]["detections"]
    assert set(result["train"]) == {"atss", "fcos"}  # the graph row does not train
    ratios = {tuple(name): (target, value) for name, target, value in result["ratios"]}
    targets = tool.TARGETS["cpu"]
    for key in result["inference"]:
        for row in (f"inference {key}", f"inference {key} (atss_graphs)"):
            target, value = ratios[(row, "fcos")]
            assert target == targets[("inference", "fcos")] and value > 0
    assert ratios[("train_step", "fcos")][0] == targets[("train_step", "fcos")]
    assert tool.TARGETS["cuda"][("inference", "retinanet")] == 0.90
