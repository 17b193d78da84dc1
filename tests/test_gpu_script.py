"""tools/gpu_benchmarks.sh and tools/make_wheelhouse.py without a GPU or a package index: the
script's steps call the tools with options they accept (each tool's own parser reads them), in
order, and failing steps are reported; the wheelhouse check reads wheel metadata and refuses two
versions of one distribution."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import make_wheelhouse  # noqa: E402

# Stands in for python3: tools' command lines are parsed by the tool's own parser (nothing
# runs), pytest only collects, "-c" code runs, and every call is logged.
FAKE_PYTHON = r"""
import importlib.util, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_PYTHON_LOG"], "a") as log:
    log.write(" ".join(args) + "\n")
if args[:1] == ["-c"]:
    exec(compile(args[1], "<step>", "exec"))
elif args[:2] == ["-m", "pytest"]:
    collect = [sys.executable, "-m", "pytest", "--collect-only", "-q"] + args[2:]
    sys.exit(subprocess.run(collect).returncode)
elif args and args[0].startswith("tools/"):
    name = os.path.basename(args[0])[:-3]
    spec = importlib.util.spec_from_file_location(name, args[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parsed = module.parse_args(args[1:])
    if name == os.environ.get("FAKE_PYTHON_FAIL"):
        sys.exit(3)
    print("parsed", name, parsed.device)
else:
    sys.exit("unexpected call: %r" % args)
"""


def _run_script(tmp_path, quick, fail=""):
    fake = tmp_path / "fake_python"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} {tmp_path / 'fake.py'} \"$@\"\n")
    fake.chmod(0o755)
    (tmp_path / "fake.py").write_text(FAKE_PYTHON)
    log = tmp_path / "calls.log"
    env = dict(
        os.environ,
        PYTHON=str(fake),
        WHEELS=str(tmp_path / "no-wheels"),
        QUICK="1" if quick else "0",
        FAKE_PYTHON_LOG=str(log),
        FAKE_PYTHON_FAIL=fail,
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(REPO / "tools" / "gpu_benchmarks.sh"), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, log.read_text().splitlines(), out


def test_full_run_calls_every_step_with_accepted_options(tmp_path):
    proc, calls, out = _run_script(tmp_path, quick=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tools = [c.split()[0] for c in calls if c.startswith("tools/")]
    assert tools == ["tools/benchmark.py", "tools/benchmark_mmdet.py", "tools/benchmark_matcher.py"]
    assert any(c.startswith("-m pytest") and "tests/test_cuda_graphs.py" in c for c in calls)
    bench = next(c for c in calls if c.startswith("tools/benchmark.py"))
    assert "--cuda-graphs" in bench and "--infer-batch 1 8" in bench and "--device cuda" in bench
    assert "--gt-chunks 1024 4096" in next(c for c in calls if "benchmark_matcher" in c)
    log = (out / "gpu_benchmarks.log").read_text()
    assert "[gpu] all steps passed" in log
    assert [line for line in log.splitlines() if line.startswith("parsed ")] == [
        "parsed benchmark cuda",
        "parsed benchmark_mmdet cuda",
        "parsed benchmark_matcher cuda",
    ]


def test_a_failing_step_is_reported_and_the_others_run(tmp_path):
    proc, calls, out = _run_script(tmp_path, quick=True, fail="benchmark")
    assert proc.returncode == 1
    assert not any(c.startswith("-m pytest") for c in calls)  # QUICK=1 runs no tests
    assert sum(c.startswith("tools/") for c in calls) == 3  # the steps after it ran too
    log = (out / "gpu_benchmarks.log").read_text()
    assert "[gpu] FAILED: benchmark.py (exit 3)" in log
    assert "[gpu] === benchmark_matcher.py: exit 0" in log


def _wheel(folder, name, version, requires):
    path = folder / f"{name}-{version}-py3-none-any.whl"
    meta = "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", f"Name: {name}\n{meta}")
    return path


def test_wheelhouse_check_lists_what_the_target_must_have(tmp_path):
    _wheel(tmp_path, "fvcore", "0.1.5", ["numpy", "iopath>=0.1.7", "yacs (>=0.1.6)"])
    _wheel(tmp_path, "iopath", "0.1.9", ["tqdm", "portalocker", 'pywin32; extra == "win"'])
    wheels, needed = make_wheelhouse.check_wheelhouse(str(tmp_path))
    assert [Path(w).name.split("-")[0] for w in wheels] == ["fvcore", "iopath"]
    # iopath is in the folder; extras are not requirements.
    assert needed == ["numpy", "portalocker", "tqdm", "yacs"]


def test_wheelhouse_refuses_two_versions(tmp_path):
    _wheel(tmp_path, "hydra_core", "1.3.2", [])
    _wheel(tmp_path, "hydra_core", "1.3.8", [])
    with pytest.raises(SystemExit, match="several versions of \\['hydra_core'\\]"):
        make_wheelhouse.check_wheelhouse(str(tmp_path))
