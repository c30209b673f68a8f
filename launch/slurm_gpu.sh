#!/usr/bin/env bash
#SBATCH --job-name=cmdp
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
# Runs one experiment on several GPU nodes under SLURM: one process per node, each driving
# all of its node's GPUs; `jax.distributed.initialize()` joins them into one mesh.
#
#   sbatch [--nodes=N] [--gpus-per-node=G] launch/slurm_gpu.sh [options] CONFIG WORKDIR \
#       [--config.x=y ...]
#
# Example:
#   sbatch --nodes=4 launch/slurm_gpu.sh configs/qwen_math.py:task=math /shared/runs/math
#
# Options (before the positional arguments):
#   --install    pip install the package (with CUDA jax) on every node first.
#   --port=P     coordinator port (default: 12000 + SLURM_JOB_ID mod 1000).
#   --logs=DIR   per-process logs (default: WORKDIR/logs).
#   --dry-run    print the commands instead of running them (works outside a job too when
#                SLURM_JOB_ID, SLURM_JOB_NODELIST and SLURM_NNODES are set).
#
# The coordinator is the job's first node. Every process gets
#   JAX_COORDINATOR_ADDRESS=<first node>:<port>   JAX_NUM_PROCESSES=$SLURM_NTASKS
#   JAX_PROCESS_ID=$SLURM_PROCID                  CMDP_MULTIHOST=1
# WORKDIR must be on a filesystem every node sees (checkpoints are written from all nodes).
set -euo pipefail
if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then  # the header above, as usage
  sed -n '/^set -euo/q; /^#[!S]/d; s/^# \{0,1\}//p' "$0"; exit 0
fi

DRY_RUN=0; INSTALL=0; PORT=""; LOGS=""
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --install) INSTALL=1 ;;
    --port=*) PORT=${1#*=} ;;
    --logs=*) LOGS=${1#*=} ;;
    *) echo "slurm_gpu.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
if [[ $# -lt 2 ]]; then
  echo "usage: sbatch $0 [options] CONFIG WORKDIR [--config.x=y ...]" >&2; exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
OVERRIDES=("$@")
for var in SLURM_JOB_ID SLURM_JOB_NODELIST SLURM_NNODES; do
  if [[ -z ${!var:-} ]]; then
    echo "slurm_gpu.sh: ${var} is not set: submit with sbatch (or set it for --dry-run)." >&2
    exit 2
  fi
done
LOGS=${LOGS:-${WORKDIR}/logs}
PORT=${PORT:-$((12000 + SLURM_JOB_ID % 1000))}

# Prints a command (shell-quoted) in --dry-run mode, else runs it.
run() {
  if [[ ${DRY_RUN} == 1 ]]; then
    printf '%q ' "$@"; printf '\n'
  else
    "$@"
  fi
}

# The first host of the job: scontrol expands ranges like gpu-[01-04]; a plain list is cut.
first_host() {
  if command -v scontrol >/dev/null 2>&1; then
    scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1
  elif [[ ${SLURM_JOB_NODELIST} != *"["* ]]; then
    echo "${SLURM_JOB_NODELIST%%,*}"
  else
    echo "slurm_gpu.sh: cannot expand ${SLURM_JOB_NODELIST} without scontrol." >&2; exit 2
  fi
}
COORDINATOR="$(first_host):${PORT}"
SRUN=(srun --nodes="${SLURM_NNODES}" --ntasks-per-node=1 --kill-on-bad-exit=1)

if [[ ${INSTALL} == 1 ]]; then
  run "${SRUN[@]}" python3 -m pip install -q -e . "jax[cuda12]==0.10.2"
fi
run mkdir -p "${LOGS}"

# SLURM_PROCID and SLURM_NTASKS differ per process: single quotes keep them for srun's shell.
QUOTED=""
[[ ${#OVERRIDES[@]} -gt 0 ]] && QUOTED=$(printf '%q ' "${OVERRIDES[@]}")
TASK='export JAX_NUM_PROCESSES=$SLURM_NTASKS JAX_PROCESS_ID=$SLURM_PROCID; '
TASK+="export JAX_COORDINATOR_ADDRESS=${COORDINATOR} CMDP_MULTIHOST=1; "
TASK+="exec python3 -m cmdp.train --config ${CONFIG} --workdir ${WORKDIR} ${QUOTED}"
run "${SRUN[@]}" --output="${LOGS}/process-%t.log" bash -c "${TASK}"
