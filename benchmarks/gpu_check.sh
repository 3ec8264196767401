#!/usr/bin/env bash
# One prepared run for a machine with a CUDA GPU: the CUDA tests, then the benchmark's
# CUDA sizes, written to benchmarks/results/<card>-<torch threads>t.json ($RESULTS_DIR if set),
# then graph_steps.py's breakdown of a graphed step, to <card>-graph-steps.json, and
# orders_ahead.py's multi-epoch fits with and without orders drawn ahead.
#
# It needs a Python whose torch sees CUDA: $PY if set, else .venv/bin/python when that one
# sees CUDA (see the README's "CUDA" section), else python3 (a machine image with torch
# preinstalled). The checkout's torchlr is imported from here, not installed, so the
# dev extras (notebooks, ruff) need not be there: only the test files that hold CUDA tests
# are collected. With $OUT set, the log and the results file are also copied there.
#
#   GPU_CHECK_REQUIRE_CUDA=0  run without a GPU (every CUDA test skips, no CUDA size runs):
#                             how tests/test_bench.py checks this script's plumbing.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # bench.py imports torchlr from here
export PYTHONUNBUFFERED=1

sees_cuda() { "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  >/dev/null 2>&1; }
if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]] && sees_cuda .venv/bin/python; then PY=.venv/bin/python
  elif command -v python3 >/dev/null && sees_cuda python3; then PY=python3
  elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
  else PY=python3
  fi
fi

log_dir=${OUT:-}
results_dir=${RESULTS_DIR:-benchmarks/results}
stamp=$(mktemp)  # results files newer than this one are this run's
trap 'rm -f "$stamp"' EXIT

run() {  # the whole check, its output also kept in $OUT/gpu_check.log when $OUT is set
  # A Python without torch: said in one line, not as a traceback and then "no CUDA device".
  local why set_py="set PY to a Python whose torch sees CUDA: PY=/path/to/python bash"
  set_py+=" benchmarks/gpu_check.sh"
  if ! command -v "$PY" >/dev/null; then
    echo "gpu_check: no Python at $PY; $set_py" >&2
    return 3
  fi
  if ! why=$("$PY" -c "import torch" 2>&1); then
    why=$(printf '%s\n' "$why" | tail -n 1)  # the exception's line, not its traceback
    echo "gpu_check: torch is not importable by $PY ($why); $set_py" >&2
    return 3
  fi
  "$PY" -c "import torch, sys; ok = torch.cuda.is_available(); \
print('torch', torch.__version__, 'on', torch.cuda.get_device_name() if ok else 'no CUDA device'); \
sys.exit(0 if ok else 3)"
  local cuda=$?
  if [[ $cuda -ne 0 && ${GPU_CHECK_REQUIRE_CUDA:-1} != 0 ]]; then
    echo "gpu_check: $PY sees no CUDA device; set PY to a Python whose torch does" >&2
    return 3
  fi
  mapfile -t files < <(grep -l "mark\.cuda" tests/test_*.py)
  local tests=4  # pytest's code for a usage error: no file holds a CUDA test
  if (( ${#files[@]} )); then
    "$PY" -m pytest -q -p no:cacheprovider -m cuda "${files[@]}"
    tests=$?
  else
    echo "gpu_check: no test file marks a test with pytest.mark.cuda" >&2
  fi
  # The benchmark runs even when a test failed: its figures say where a failure costs time.
  # shellcheck disable=SC2086
  "$PY" benchmarks/bench.py --sizes cuda-chapter,cuda-1Mx100,cuda-10Mx100 \
    --out-dir "$results_dir" ${BENCH_ARGS:-}
  local bench=$?
  if (( cuda == 0 )); then  # where a graphed step's time goes: GPU or host (no targets)
    "$PY" benchmarks/graph_steps.py --out-dir "$results_dir" || bench=1
    # What drawing each epoch's order ahead saves a multi-epoch fit (no targets either).
    "$PY" benchmarks/orders_ahead.py --out-dir "$results_dir" || bench=1
  fi
  if [[ -n $log_dir ]]; then
    find "$results_dir" -name '*.json' -newer "$stamp" -exec cp {} "$log_dir"/ \;
  fi
  echo "gpu_check: tests exit $tests, bench exit $bench"
  (( tests == 0 && bench == 0 ))
}

if [[ -n $log_dir ]]; then
  mkdir -p "$log_dir"
  run 2>&1 | tee "$log_dir/gpu_check.log"
else
  run
fi
