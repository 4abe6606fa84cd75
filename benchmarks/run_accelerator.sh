#!/usr/bin/env bash
# Every benchmark at accelerator sizes, most wanted first; JSON results go to $1 (default
# benchmarks/results). Each has its own time limit, cut to what is left of BUDGET_S
# (default 450 s) so the whole script ends within it; one that runs out of time is stopped
# and the next one starts. step_time and profile_step write their file after every row.
#
#   bash benchmarks/run_accelerator.sh [OUT_DIR]
#   SMOKE=1 bash benchmarks/run_accelerator.sh /tmp/x   # tiny sizes: checks the commands
set -u
out="${1:-benchmarks/results}"
mkdir -p "$out"
dev="$(python -c 'import jax; print(jax.devices()[0].device_kind.replace(" ", "_").lower())')"
end=$((SECONDS + ${BUDGET_S:-450}))
run() {  # run LIMIT_S NAME ARGS...
  local limit="$1" name="$2"; shift 2
  local left=$((end - SECONDS))
  if ((left < 20)); then echo "=== $name: skipped, ${left} s left"; return; fi
  ((limit > left)) && limit=$left
  echo "=== $name ($(date +%T), limit ${limit} s)"
  timeout "$limit" python -m "$@" ${SMOKE:+--smoke} --out "$out/${name}_${dev}.json" || echo "=== $name: exit $?"
}
run 150 step_time_paper benchmarks.step_time --presets paper --sizes 128x3 --batches 128 --dtypes bfloat16 float32 --steps 10
run 60 profile_step_paper benchmarks.profile_step --preset paper --size 128x3 --batch 128 --dtypes bfloat16
run 120 step_time benchmarks.step_time --sizes 32x3 128x3 --batches 256 --dtypes float32 bfloat16
run 60 explain_throughput benchmarks.explain_throughput --sizes 32x3 --images 4096 --optimiser-images 256
run 60 optimiser_throughput_fido benchmarks.optimiser_throughput --method fido --images 256 --loop-images 8
run 70 optimiser_throughput_disc benchmarks.optimiser_throughput --method disc --images 256 --loop-images 8
run 90 layer_forms benchmarks.layer_forms --sizes 32x3 128x3 --batch 256 --rounds 4 --steps 5
echo "=== done ($(date +%T), ${SECONDS} s)"
