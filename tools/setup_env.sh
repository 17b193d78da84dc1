#!/usr/bin/env bash
# Creates (or reuses) the virtual environment and installs everything atss_d2 needs.
# Called by `make setup`; idempotent: a second run with nothing changed takes seconds.
#
# Environment:
#   VENV               venv path (default: .venv at the repository root)
#   PYTHON             interpreter that creates the venv (default: python3)
#   TORCH_REQUIREMENT  torch/torchvision pins used when torch is not importable in the venv
#   TORCH_DISK_GB      free space (GB) below which the torch step warns first (default 7)
#   DETECTRON2_SOURCE  a detectron2 source checkout or archive to install (see README)
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_REQUIREMENT="${TORCH_REQUIREMENT:-torch==2.14.1 torchvision==0.29.1}"
STAMP="$VENV/.atss_d2-setup"
TORCH_DISK_GB="${TORCH_DISK_GB:-7}"

fail() {
    echo "" >&2
    echo "[setup] FAILED at step: $1" >&2
    echo "[setup] $2" >&2
    exit 1
}

step() { echo "[setup] $*"; }

# Whole gigabytes free on the file system that holds $1 (or its nearest existing parent); empty
# when df cannot tell.
free_gb_at() {
    local dir="$1"
    while [ ! -d "$dir" ] && [ "$dir" != "/" ]; do dir="$(dirname "$dir")"; done
    df -Pk "$dir" 2>/dev/null | awk 'NR == 2 { print int($4 / 1048576) }'
}

inputs_hash() {
    cat "$ROOT/setup.py" "$ROOT/tools/setup_env.sh" "$ROOT/tools/install_detectron2.py" \
        | sha256sum | cut -d' ' -f1
}

# Fast path: the venv was set up from these very files and still imports.
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(inputs_hash)" ] \
    && "$VENV/bin/python" -c "import torch, torchvision, detectron2, atss_d2, pytest" 2>/dev/null; then
    step ".venv is up to date ($VENV)"
    exit 0
fi
rm -f "$STAMP"

step "1/5 virtual environment"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import sys" 2>/dev/null; then
    command -v "$PYTHON" >/dev/null || fail "virtual environment" "'$PYTHON' not found; install Python >= 3.9 or set PYTHON=/path/to/python3"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" || fail "virtual environment" "'$PYTHON -m venv $VENV' failed; install the venv module (Debian: apt-get install python3-venv)"
fi
PIP=("$VENV/bin/python" -m pip)
"$VENV/bin/python" -c "import sys; assert sys.version_info >= (3, 9)" \
    || fail "virtual environment" "$VENV uses Python < 3.9; delete it and set PYTHON to a newer python3"

step "2/5 torch and torchvision"
if "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
    step "    keeping the installed $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)')"
else
    # PyPI's x86_64 torch 2.14.1 is a CUDA build: about 5.6 GB in the venv with its nvidia-* wheels.
    free_gb="$(free_gb_at "$VENV")"
    if [ -n "$free_gb" ] && [ "$free_gb" -lt "$TORCH_DISK_GB" ]; then
        step "    warning: ${free_gb} GB free on the file system of $VENV; the default torch build needs about ${TORCH_DISK_GB} GB"
    fi
    # shellcheck disable=SC2086
    if ! "${PIP[@]}" install $TORCH_REQUIREMENT; then
        free_gb="$(free_gb_at "$VENV")"
        if [ -n "$free_gb" ] && [ "$free_gb" -lt "$TORCH_DISK_GB" ]; then
            fail "torch and torchvision" "could not install '$TORCH_REQUIREMENT' with ${free_gb} GB free on the file system of $VENV; free about ${TORCH_DISK_GB} GB there (or set VENV to a larger disk, or TORCH_REQUIREMENT to a CPU build of torch) and run 'make setup' again"
        fi
        fail "torch and torchvision" "could not install '$TORCH_REQUIREMENT'; set TORCH_REQUIREMENT to versions your package index has (https://pytorch.org/get-started/locally/)"
    fi
fi

step "3/5 detectron2"
"$VENV/bin/python" "$ROOT/tools/install_detectron2.py" \
    || fail "detectron2" "see the message above; to use your own build, set DETECTRON2_SOURCE=/path/to/detectron2 and run 'make setup' again"

step "4/5 atss_d2 (editable) and its dependencies"
"${PIP[@]}" install --no-build-isolation -e "$ROOT[dev]" \
    || fail "atss_d2" "'pip install -e .[dev]' failed; see pip's message above"

step "5/5 check"
"$VENV/bin/python" -c "import torch, torchvision, detectron2, atss_d2, pytest" \
    || fail "check" "the venv does not import torch, torchvision, detectron2, atss_d2 and pytest; delete $VENV and run 'make setup' again"
inputs_hash > "$STAMP"
step "done: $VENV"
