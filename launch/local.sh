#!/usr/bin/env bash
# Runs an experiment on this machine (CPU, one GPU or one TPU VM host), then evaluates it.
#
#   launch/local.sh [options] CONFIG WORKDIR [--config.x=y ...]
#
# Example:
#   launch/local.sh configs/tiny.py /tmp/cmdp_tiny --config.num_steps=10
#
# Options (before the positional arguments):
#   --plan=TOPOLOGY  first print the planner's report (`python -m cmdp.plan`), e.g. cpu:8.
#   --cpu-devices=N  simulate N CPU devices (XLA_FLAGS) to exercise the sharded paths.
#   --no-eval        train only.
#   --dry-run        print the commands instead of running them.
set -euo pipefail
if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then  # the header above, as usage
  sed -n '/^set -euo/q; /^#[!S]/d; s/^# \{0,1\}//p' "$0"; exit 0
fi

DRY_RUN=0; PLAN=""; CPU_DEVICES=""; EVAL=1
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --plan=*) PLAN=${1#*=} ;;
    --cpu-devices=*) CPU_DEVICES=${1#*=} ;;
    --no-eval) EVAL=0 ;;
    *) echo "local.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
if [[ $# -lt 2 ]]; then
  echo "usage: $0 [options] CONFIG WORKDIR [--config.x=y ...]" >&2; exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2

# Prints a command (shell-quoted) in --dry-run mode, else runs it.
run() {
  if [[ ${DRY_RUN} == 1 ]]; then
    printf '%q ' "$@"; printf '\n'
  else
    "$@"
  fi
}

ENV=()
if [[ -n ${CPU_DEVICES} ]]; then
  ENV=(env JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=${CPU_DEVICES}")
fi
if [[ -n ${PLAN} ]]; then
  run python -m cmdp.plan --config "${CONFIG}" --topology "${PLAN}" "$@"
fi
run "${ENV[@]}" python -m cmdp.train --config "${CONFIG}" --workdir "${WORKDIR}" "$@"
if [[ ${EVAL} == 1 ]]; then
  run "${ENV[@]}" python -m cmdp.evaluate --config "${CONFIG}" --workdir "${WORKDIR}" "$@"
  run cat "${WORKDIR}/eval.md"
fi
