#!/usr/bin/env bash
# Start this host's process of a multi-host train job. Run the same line on every host.
#
#   train/launch.sh CONFIG WORKDIR [--config.field=value ...]
#
# On TPU pods (and SLURM, Open MPI) JAX finds the coordinator and this process's id
# itself. Elsewhere set, on every host:
#   CFX_COORDINATOR=host0:1234  CFX_NUM_PROCESSES=N  CFX_PROCESS_ID=0..N-1
# WORKDIR must be a directory every host sees (a bucket or a shared file system).
# Exit status 75: stopped by SIGTERM after a checkpoint; run the same line to resume.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,11p' "$0"; exit 2
fi
config=$1; workdir=$2; shift 2
args=(--config.runtime.distributed=True)
[ -n "${CFX_COORDINATOR:-}" ] && args+=("--config.runtime.coordinator_address=$CFX_COORDINATOR")
[ -n "${CFX_NUM_PROCESSES:-}" ] && args+=("--config.runtime.num_processes=$CFX_NUM_PROCESSES")
[ -n "${CFX_PROCESS_ID:-}" ] && args+=("--config.runtime.process_id=$CFX_PROCESS_ID")
cd "$(dirname "$0")/.."
exec python -m train --config "$config" --workdir "$workdir" "${args[@]}" "$@"
