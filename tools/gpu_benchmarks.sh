#!/usr/bin/env bash
# Every GPU measurement of docs/BENCHMARKS.md in one run, on a machine that has python3 with a
# CUDA torch and torchvision but no package index (an offline GPU server). From the repository
# root:
#
#   python tools/make_wheelhouse.py --python-version 3.12 --mmdet   # where there is an index
#   bash tools/gpu_benchmarks.sh [OUT]                              # on the GPU machine
#
# It installs the wheelhouse into a temporary folder (nothing else on the machine changes), then
# runs tools/benchmark.py (ATSS with and without CUDA graphs against detectron2's RetinaNet and
# FCOS, inference at batch 1 and 8, training at batch 2), tools/benchmark_mmdet.py (inference
# throughput and mixed-precision training memory against mmdetection's ATSS),
# tools/benchmark_matcher.py (sample selection against mmdetection's) and the tests that need
# CUDA. Results and one log go to OUT (default output/gpu); a failing step is
# reported at the end and does not stop the others.
#
# Environment: WHEELS (default .devdeps/wheels), PYTHON (default python3), DEVICE (default
# cuda), QUICK=1 (smoke run: small images, few iterations, no tests).
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$(mkdir -p "${1:-$ROOT/output/gpu}" && cd "${1:-$ROOT/output/gpu}" && pwd)"
WHEELS="${WHEELS:-$ROOT/.devdeps/wheels}"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
QUICK="${QUICK:-0}"
export PYTHONUNBUFFERED=1
exec > >(tee "$OUT/gpu_benchmarks.log") 2>&1

SITE="$(mktemp -d "${TMPDIR:-/tmp}/atss_d2-site.XXXXXX")"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
        "$WHEELS"/*.whl || { echo "[gpu] installing $WHEELS failed"; exit 1; }
else
    echo "[gpu] no wheels in $WHEELS: using what $PY already has"
fi
# detectron2 0.6 names Image.LINEAR, which Pillow 10 removed (it was Image.BILINEAR); Pillow 9
# has no wheel for Python >= 3.12. Only this run's interpreters see the alias.
# A sitecustomize.py of the interpreter's own, if any, still runs (it is loaded from here).
if ! PYTHONPATH="$SITE" "$PY" -c "from PIL import Image; Image.LINEAR" 2>/dev/null; then
    cat >"$SITE/sitecustomize.py" <<'PYEOF'
import importlib.machinery, importlib.util, os, sys
from PIL import Image as _image
_image.LINEAR = getattr(_image, "LINEAR", _image.BILINEAR)
_here = os.path.dirname(os.path.abspath(__file__))
_path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _path)
if _spec is not None and _spec.loader is not None:
    _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
PYEOF
fi
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT" || exit 1

FAILED=()
run() {  # run NAME SECONDS CMD...: one step, its time limit, its exit status kept
    local name="$1" limit="$2"
    shift 2
    echo ""
    echo "[gpu] === $name ($(date -u +%H:%M:%S), limit ${limit}s)"
    timeout "$limit" "$@"
    local rc=$?
    echo "[gpu] === $name: exit $rc"
    [ "$rc" -eq 0 ] || FAILED+=("$name (exit $rc)")
}

run environment 60 "$PY" -c "
import torch, torchvision, detectron2, atss_d2, subprocess
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__)
print('detectron2', detectron2.__version__, 'from', detectron2.__file__)
print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')
print(subprocess.run(['git', 'log', '-1', '--format=commit %H %s'], capture_output=True, text=True).stdout.strip())
"
if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
fi

if [ "$QUICK" = 1 ]; then
    BENCH=(--quick --infer-batch 1 2)
    MATCHER=(--quick)
    MMDET=(--quick)
else
    BENCH=(--infer-batch 1 8 --iters 20 --warmup 5)
    MATCHER=(--iters 15 --warmup 3 --gt-chunks 1024 4096)
    MMDET=(--iters 20 --warmup 5)
fi
# Most wanted first; the limits add up to about 10 minutes, one device call's limit.
run "benchmark.py" 200 "$PY" tools/benchmark.py --device "$DEVICE" --cuda-graphs \
    "${BENCH[@]}" --out "$OUT/bench"
run "benchmark_mmdet.py" 120 "$PY" tools/benchmark_mmdet.py --device "$DEVICE" \
    "${MMDET[@]}" --out "$OUT/mmdet"
run "benchmark_matcher.py" 120 "$PY" tools/benchmark_matcher.py --device "$DEVICE" \
    "${MATCHER[@]}" --out "$OUT/matcher"
if [ "$QUICK" != 1 ]; then
    run "tests that need CUDA" 120 "$PY" -m pytest -q -p no:cacheprovider -rs \
        tests/test_cuda_graphs.py tests/test_amp.py tests/test_matcher_fast.py \
        tests/test_valid_anchors.py tests/test_checkpoint_conversion.py -k "cuda or CUDA"
fi

echo ""
if [ "${#FAILED[@]}" -eq 0 ]; then
    echo "[gpu] all steps passed; results in $OUT"
else
    printf '[gpu] FAILED: %s\n' "${FAILED[@]}"
    exit 1
fi
