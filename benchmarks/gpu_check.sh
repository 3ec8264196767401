#!/usr/bin/env bash
# One prepared run for a machine with a CUDA GPU: the CUDA tests, then the benchmark's
# CUDA sizes, written to benchmarks/results/<card>-<threads>t.json (or --out in BENCH_ARGS).
# Needs a CUDA build of torch in .venv (see the README's "CUDA" section).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c "import torch, sys; ok = torch.cuda.is_available(); \
print(torch.__version__, torch.cuda.get_device_name() if ok else 'no CUDA device'); \
sys.exit(0 if ok else 3)"
"$PY" -m pytest -q -m cuda tests
# shellcheck disable=SC2086
"$PY" benchmarks/bench.py --sizes cuda-chapter,cuda-1Mx100,cuda-10Mx100 ${BENCH_ARGS:-}
