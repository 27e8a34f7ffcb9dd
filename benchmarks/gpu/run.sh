#!/usr/bin/env bash
# The GPU check, one command from the repository root on a CUDA machine; it ends well inside 8 minutes:
#
#   bash benchmarks/gpu/run.sh             # OUT=dir (default runs/gpu): cuda-tests.txt, gpu.json, gpu.txt, ...
#   bash benchmarks/gpu/run.sh --dry-run   # anywhere: the lane (skipped without CUDA) and tiny shapes on the CPU
#   SKIP_LANE=1 BENCH_ARGS="--only kd --profile" bash benchmarks/gpu/run.sh   # the measurements alone, narrowed
#
# What the machine lacks comes from .whl/ (`python benchmarks/gpu/wheels.py` fills it where PyPI is reachable):
# wheels installed into a private site directory, and the saved tokenizer the CUDA lane's tests use. Syllabus itself
# goes on the path without dependencies, its packages linked under the `syllabus` namespace as `pip install -e .`
# maps them (no build backend needed: the machine's setuptools may predate the one pyproject.toml asks for).
set -uo pipefail
DRY=""
[ "${1:-}" = "--dry-run" ] && DRY="--dry-run"
OUT=${OUT:-runs/gpu}
PY=${PYTHON:-python3}
SITE=${SYLLABUS_GPU_SITE:-$(mktemp -d /tmp/syllabus-gpu-site.XXXXXX)}
mkdir -p "$OUT" "$SITE/syllabus"

[ -z "${SKIP_LANE:-}" ] && { nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
  >"$OUT/nvidia-smi.txt" 2>&1 || true; }
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || { echo "run.sh: installing the carried wheels failed (above)"; exit 1; }
fi
for part in core curate train evaluate pipelines; do ln -sfn "$PWD/$part" "$SITE/syllabus/$part"; done
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
[ -d .whl/tokenizer ] && export SYLLABUS_TEST_TOKENIZER="$PWD/.whl/tokenizer"

# 1. The CUDA lane (tests/test_cuda.py): what a GPU changes, against the CPU in fp32.
lane=0
if [ -z "${SKIP_LANE:-}" ]; then
  timeout 180 "$PY" -m pytest -q -m cuda -p no:cacheprovider -rs tests/test_cuda.py 2>&1 | tee "$OUT/cuda-tests.txt"
  lane=${PIPESTATUS[0]}
fi

# 2. The measurements (benchmarks/gpu/bench_gpu.py): CE pass, top-K capture, KD steps; the table comes last.
# shellcheck disable=SC2086  # BENCH_ARGS is a list of options
timeout "${BENCH_TIMEOUT_S:-300}" "$PY" benchmarks/gpu/bench_gpu.py --out "$OUT" $DRY ${BENCH_ARGS:-} 2>&1 \
  | tee "$OUT/bench.log"
bench=${PIPESTATUS[0]}

echo "cuda lane: exit $lane; measurements: exit $bench"
[ -f "$OUT/gpu.txt" ] && cat "$OUT/gpu.txt"
[ "$lane" -eq 0 ] && [ "$bench" -eq 0 ]
