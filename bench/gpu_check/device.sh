#!/usr/bin/env bash
# The GPU check as one command on a lent GPU machine (docs/gpu-check.md): the device tool runs it in the
# repository root with `carry: [".gpu_check"]`; the JSON lands in $OUT (or bench/results/ without $OUT).
set -euo pipefail
cd "$(dirname "$0")/../.."
python=""
for candidate in python3 python; do
    if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then python=$candidate; break; fi
done
if [ -z "$python" ]; then echo "gpu-check: FAILED: no python with torch on PATH" >&2; exit 2; fi
echo "gpu-check: $("$python" -c 'import sys, torch; print(sys.executable, sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
out=()
if [ -n "${OUT:-}" ]; then out=(--out "$OUT/gpu-check.json"); fi
exec "$python" bench/gpu_check/run.py "${out[@]}" "$@"
