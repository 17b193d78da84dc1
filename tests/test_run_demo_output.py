"""tools/run_demo.py clears its own earlier outputs and never deletes files it did not write."""

import importlib.util

import pytest
from tiny_setup import REPO

_spec = importlib.util.spec_from_file_location("run_demo", REPO / "tools" / "run_demo.py")
run_demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_demo)


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    return path


def test_an_earlier_demo_run_is_cleared(tmp_path):
    for name in ("metrics.json", "last_checkpoint", "model_final.pth", "events.out.tfevents.1.x",
                 "training_curves.png", "vis/val_1.png", "inference/results.json"):  # fmt: skip
        _touch(tmp_path / name)
    kept = [_touch(tmp_path / "config.yaml"), _touch(tmp_path / "log.txt")]
    run_demo.clear_previous_run(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "log.txt"]
    assert all(p.is_file() for p in kept)


def test_a_directory_with_other_files_is_refused_and_left_as_it_is(tmp_path):
    mine = [_touch(tmp_path / "metrics.json"), _touch(tmp_path / "model_final.pth")]
    theirs = _touch(tmp_path / "thesis_figures" / "fig1.png")
    notes = _touch(tmp_path / "notes.txt")
    with pytest.raises(run_demo.ForeignOutputDirError, match=r"\['notes.txt', 'thesis_figures'\]"):
        run_demo.clear_previous_run(str(tmp_path))
    assert all(p.is_file() for p in [*mine, theirs, notes])


def test_a_new_directory_is_fine(tmp_path):
    run_demo.clear_previous_run(str(tmp_path / "not_yet"))
    assert not (tmp_path / "not_yet").exists()
