#!/usr/bin/env bash
# One short allocation on a GPU machine, offline: the CUDA tests of the fused inner net, then the GPU benchmark, whose
# JSON (benchmarks/results/neurons_cuda.json) is rewritten after every case and copied to $OUT (when set) on exit,
# whatever ends the script. Default limits fit about 8 minutes all told. See docs/gpu.md.
#
#   bash benchmarks/gpu_check.sh                      the machine's python3 (must import torch and triton)
#   PYTHON=/opt/py/bin/python WHEELS=wheels bash benchmarks/gpu_check.sh
#                                                     install what that Python lacks from a folder of wheels
#   SIMULATE="NVIDIA H100 PCIe" bash benchmarks/gpu_check.sh
#                                                     the same steps on CPU, tiny, as if on that device (a dry run)
#
# Variables: PYTHON, WHEELS (folder of wheels; nothing is ever fetched from the network), TEST_TIMEOUT (seconds, 120;
# 0 skips the tests), BENCH_TIMEOUT (seconds, 330), QUICK (1: rounds of 3 instead of 7), SIMULATE, OUT, RESULT (the
# JSON's path).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ -n "${SIMULATE:-}" ]; then
    RESULT=${RESULT:-benchmarks/results/neurons_simulated.json}
else
    RESULT=${RESULT:-benchmarks/results/neurons_cuda.json}
fi
LOG=$(mktemp -t gpu_check.XXXXXX.log)
copy_out() {
    if [ -n "${OUT:-}" ]; then
        [ -f "$RESULT" ] && cp "$RESULT" "$OUT/"
        cp "$LOG" "$OUT/gpu_check.log"
    fi
}
trap copy_out EXIT
exec > >(tee -a "$LOG") 2>&1
say() { echo "gpu_check: $*"; }
stop() { say "cannot run: $*"; exit 2; }

PY=${PYTHON:-python3}
command -v "$PY" > /dev/null || stop "no Python '$PY' here; set PYTHON=/path/to/python (one with torch and triton)"
if ! why=$("$PY" -c "import torch, triton" 2>&1); then
    stop "$PY cannot import torch and triton, which come from the machine (this script installs neither): ${why##*$'\n'}"
fi

missing=$("$PY" benchmarks/gpu_requirements.py missing) || stop "could not read the project's requirements"
if [ -n "$missing" ]; then
    if [ -z "${WHEELS:-}" ]; then
        say "$PY lacks $(echo $missing); without WHEELS=<folder of wheels> the steps needing them will fail" \
            "(prepare one with the command in docs/gpu.md)"
    else
        [ -d "$WHEELS" ] || stop "WHEELS=$WHEELS is not a folder"
        # A venv that sees the machine's torch and triton; the missing packages come from the folder, never the network.
        "$PY" -m venv --system-site-packages .venv-gpu-check || stop "$PY cannot make a venv (python3-venv missing?)"
        PY=.venv-gpu-check/bin/python
        # shellcheck disable=SC2086
        "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" $missing \
            || stop "installing $(echo $missing) from $WHEELS failed: that folder lacks a wheel for this Python/platform"
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -z "${SIMULATE:-}" ]; then
    "$PY" -c "import torch; assert torch.cuda.is_available()" 2> /dev/null \
        || stop "torch sees no CUDA device (nvidia-smi, CUDA_VISIBLE_DEVICES?); SIMULATE=<name> tries the steps on CPU"
fi
"$PY" - << 'EOF'
import torch, triton
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"gpu_check: torch {torch.__version__}, triton {triton.__version__}, {name}", flush=True)
EOF

status=0
# CUDA tests: the Triton backend on CUDA tensors, lean on CUDA, the op's registration and self-check (slow ones
# included); not the interpreter's tests, which CI runs on CPU.
if [ "${TEST_TIMEOUT:-120}" != 0 ]; then
    timeout "${TEST_TIMEOUT:-120}" "$PY" -m pytest -m "" -q -p no:cacheprovider -rs \
        -k "not under_the_interpreter and not records_its_paths" \
        tests/test_inner_triton.py tests/test_inner_op.py tests/test_inner_check.py \
        tests/test_inner_kernels.py::test_lean_matches_plain_on_cuda
    code=$?
    [ $code = 124 ] && say "the tests ran past TEST_TIMEOUT=${TEST_TIMEOUT:-120}s"
    [ $code != 0 ] && status=$code
fi

args=(--gpu ${QUICK:+--quick})
[ -n "${SIMULATE:-}" ] && args+=(--simulate "$SIMULATE")
timeout "${BENCH_TIMEOUT:-330}" "$PY" benchmarks/neurons.py "${args[@]}" --out "$RESULT"
code=$?
if [ $code = 124 ]; then
    say "the benchmark ran past BENCH_TIMEOUT=${BENCH_TIMEOUT:-330}s: $RESULT holds the steps it finished"
fi
[ $code != 0 ] && [ $status = 0 ] && status=$code
say "done (exit status $status); results in $RESULT${OUT:+, copied to $OUT}"
exit $status
