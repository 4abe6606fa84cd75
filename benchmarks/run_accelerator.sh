#!/usr/bin/env bash
# Every benchmark at accelerator sizes, one after another; JSON results go to $1
# (default benchmarks/results). Each has its own time limit so one slow case cannot
# take the others with it.
#
#   bash benchmarks/run_accelerator.sh [OUT_DIR]
#   SMOKE=1 bash benchmarks/run_accelerator.sh /tmp/x   # tiny sizes: checks the commands
set -u
out="${1:-benchmarks/results}"
mkdir -p "$out"
dev="$(python -c 'import jax; print(jax.devices()[0].device_kind.replace(" ", "_").lower())')"
run() {  # run LIMIT_S NAME ARGS...
  local limit="$1" name="$2"; shift 2
  echo "=== $name ($(date +%T))"
  timeout "$limit" python -m "$@" ${SMOKE:+--smoke} --out "$out/${name}_${dev}.json" || echo "=== $name: exit $?"
}
run 100 optimiser_throughput_fido benchmarks.optimiser_throughput --method fido --images 256 --loop-images 16
run 130 optimiser_throughput_disc benchmarks.optimiser_throughput --method disc --images 256 --loop-images 16
run 120 step_time benchmarks.step_time --sizes 32x3 64x3 --batches 64 256 --dtypes float32 bfloat16 --steps-per-dispatch 1 4
run 60 step_time_128 benchmarks.step_time --sizes 128x3 --batches 64 256 --dtypes float32 bfloat16
run 90 explain_throughput benchmarks.explain_throughput --sizes 32x3 64x3 --images 4096 --optimiser-images 256
echo "=== done ($(date +%T))"
