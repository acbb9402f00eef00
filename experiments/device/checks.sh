#!/usr/bin/env bash
# The GPU checks of issues 3, 6 and 5 (and the cSwiGLU gate kernels) in one pass on the lent machine, most important first,
# each under its own time limit inside BUDGET seconds. Prepare here with
# experiments/device/wheels.sh, then with the device tool:
#
#     run(command="bash experiments/device/checks.sh", carry=[".whl"], timeout_s=590)
#
# Each script appends a dated section to experiments/results/*.md there (bench_attention.py
# after every section, bench_train.py with the batch sizes measured before its limit's SIGINT,
# so a step stopped at its limit keeps what it measured); the files are
# copied to $OUT after every step. Copy them back over experiments/results/ and commit.
set -u
cd "$(dirname "$0")/../.."
BUDGET=${BUDGET:-540}
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" >&2; exit 1; }
  export PYTHONPATH="$PWD:/tmp/site"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
start=$(date +%s)

step() {  # step LIMIT_S SCRIPT ARGS...: run within the limit and what is left of BUDGET
  local limit=$1; shift
  local left=$((BUDGET - ($(date +%s) - start)))
  if [ "$left" -lt 45 ]; then echo "=== SKIPPED (budget spent): $*"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== [${limit}s] $*"
  timeout --signal=INT --kill-after=15 "$limit" "$PY" "$@"
  echo "=== exit $? at $(($(date +%s) - start)) s"
  if [ -n "${OUT:-}" ]; then cp experiments/results/*.md "$OUT"/; fi
}

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv
"$PY" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
step 240 experiments/bench_attention.py --skip-scaling --iters 10
step 100 experiments/bench_forecast.py --preset paper-era5 --members 24 --steps 10
step 240 experiments/bench_train.py throughput --preset paper-era5 --batch-sizes 6 10 --steps 3
step 150 experiments/bench_train.py throughput --preset paper-era5 --batch-sizes 6 --steps 3 --attention-impl pallas-fused
step 90 experiments/bench_gated_mlp.py --iters 10
step 60 experiments/bench_interpolation.py --iters 10
step 100 experiments/bench_forecast.py --preset paper-era5 --members 24 --steps 10 --attention-impl pallas-fused
step 120 experiments/bench_forecast.py --preset paper-hres --members 24 --steps 40 --repeats 1
echo "=== done at $(($(date +%s) - start)) s"
