#!/usr/bin/env bash
# On a machine with a CUDA GPU: the CUDA tests of the fused inner net, then the GPU benchmark, whose JSON lands in
# benchmarks/results/neurons_cuda.json (and in $OUT when that is set, as on the project's device machines).
#
#   bash benchmarks/gpu_check.sh              full benchmark (rounds of 7)
#   QUICK=1 bash benchmarks/gpu_check.sh      rounds of 3: for a tight time limit
#
# Python: $PYTHON if it imports torch and triton, else .venv/bin/python, made with `pip install -e '.[dev]'` when it
# does not exist yet (that step needs the network). Each step has its own time limit (TEST_TIMEOUT, BENCH_TIMEOUT
# seconds) so that a hung kernel cannot eat the whole allocation; the exit status is that of the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, triton" 2>/dev/null; then
    if [ ! -x .venv/bin/python ]; then
        "$PY" -m venv .venv
        .venv/bin/python -m pip install --quiet -e '.[dev]'
    fi
    PY=.venv/bin/python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'EOF'
import torch, triton
assert torch.cuda.is_available(), "no CUDA device visible: this script is for a GPU machine"
print(f"torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}", flush=True)
EOF

# CUDA tests: the Triton backend on CUDA tensors (and once more under the interpreter), lean on CUDA, the op's
# registration. Slow tests included (-m "").
timeout "${TEST_TIMEOUT:-300}" "$PY" -m pytest -m "" -q -p no:cacheprovider -rs \
    tests/test_inner_triton.py tests/test_inner_op.py tests/test_inner_kernels.py::test_lean_matches_plain_on_cuda

timeout "${BENCH_TIMEOUT:-420}" "$PY" benchmarks/neurons.py --gpu ${QUICK:+--quick}

if [ -n "${OUT:-}" ]; then
    cp benchmarks/results/neurons_cuda.json "$OUT/"
fi
