#!/usr/bin/env bash
# Runs one experiment on every host of a Cloud TPU VM slice: create (or reuse) the slice,
# install cmdp on every worker, run, and copy each worker's log back.
#
#   launch/tpu_pod.sh [options] TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]
#
# Example:
#   launch/tpu_pod.sh --accelerator-type=v5litepod-32 cmdp-v5e europe-west4-b \
#       configs/qwen_math.py:task=gsm8k gs://bucket/runs/qwen_gsm8k
#
# Options (before the positional arguments):
#   --accelerator-type=TYPE  create the slice if TPU_NAME does not exist (e.g. v5litepod-32,
#                            v4-64, v5p-128, v6e-64); without it the slice must exist.
#   --version=RUNTIME        TPU VM software version for a new slice (default: the one for
#                            the accelerator: v2-alpha-tpuv5-lite, tpu-ubuntu2204-base, ...).
#   --spot                   create the slice as Spot capacity.
#   --project=PROJECT        gcloud project (default: gcloud's configured one).
#   --repo=URL               git URL cloned on the workers (default: CMDP_REPO or this
#                            checkout's origin).
#   --ref=REF                what the workers check out (default origin/HEAD; e.g.
#                            origin/my-branch or a commit).
#   --logs=DIR               local directory for the workers' logs (default: logs/TPU_NAME).
#   --plan                   first run `python -m cmdp.plan` here for the accelerator type and
#                            stop if the config does not fit.
#   --dry-run                print the commands instead of running them.
#
# Each host runs the same command; `jax.distributed.initialize()` (called by `cmdp.train`
# when CMDP_MULTIHOST=1) discovers the slice. Only process 0 writes metrics; orbax writes
# checkpoints from all hosts to the shared WORKDIR (use a GCS bucket). On preemption the TPU
# runtime sends SIGTERM: the run saves and exits, and re-running the same command resumes.
set -euo pipefail
if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then  # the header above, as usage
  sed -n '/^set -euo/q; /^#[!S]/d; s/^# \{0,1\}//p' "$0"; exit 0
fi

DRY_RUN=0; ACCEL=""; VERSION=""; SPOT=0; PROJECT=""; REF=""; LOGS=""; PLAN=0
REPO=${CMDP_REPO:-}
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --accelerator-type=*) ACCEL=${1#*=} ;;
    --version=*) VERSION=${1#*=} ;;
    --spot) SPOT=1 ;;
    --project=*) PROJECT=${1#*=} ;;
    --repo=*) REPO=${1#*=} ;;
    --ref=*) REF=${1#*=} ;;
    --logs=*) LOGS=${1#*=} ;;
    --plan) PLAN=1 ;;
    *) echo "tpu_pod.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
if [[ $# -lt 4 ]]; then
  echo "usage: $0 [options] TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]" >&2; exit 2
fi
TPU_NAME=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
OVERRIDES=("$@")
LOGS=${LOGS:-logs/${TPU_NAME}}
if [[ -z ${REPO} ]]; then
  REPO=$(git -C "$(dirname "$0")/.." config --get remote.origin.url || true)
fi
if [[ -z ${REPO} ]]; then
  echo "tpu_pod.sh: no git URL for the workers; pass --repo=URL or set CMDP_REPO." >&2; exit 2
fi

# Prints a command (shell-quoted) in --dry-run mode, else runs it.
run() {
  if [[ ${DRY_RUN} == 1 ]]; then
    printf '%q ' "$@"; printf '\n'
  else
    "$@"
  fi
}

default_version() {
  case $1 in
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone "${ZONE}")
[[ -n ${PROJECT} ]] && WHERE+=(--project "${PROJECT}")

run mkdir -p "${LOGS}"

# 0. Optionally check that the config fits the slice (compiles here, no TPU needed).
if [[ ${PLAN} == 1 ]]; then
  [[ -n ${ACCEL} ]] || { echo "tpu_pod.sh: --plan needs --accelerator-type" >&2; exit 2; }
  run python -m cmdp.plan --config "${CONFIG}" --topology "${ACCEL}" \
      --json "${LOGS}/plan.json" "${OVERRIDES[@]}"
  if [[ ${DRY_RUN} == 0 ]] && ! python -c \
      "import json,sys; sys.exit(0 if json.load(open('${LOGS}/plan.json'))['fits'] else 1)"; then
    echo "tpu_pod.sh: the planner says ${CONFIG} does not fit ${ACCEL}; see ${LOGS}/plan.json" >&2
    exit 1
  fi
fi

# 1. Reuse the slice, or create it.
if [[ ${DRY_RUN} == 1 ]] || ! "${GCLOUD[@]}" describe "${TPU_NAME}" "${WHERE[@]}" >/dev/null 2>&1; then
  if [[ -n ${ACCEL} ]]; then
    CREATE=("${GCLOUD[@]}" create "${TPU_NAME}" "${WHERE[@]}" --accelerator-type "${ACCEL}"
            --version "${VERSION:-$(default_version "${ACCEL}")}")
    [[ ${SPOT} == 1 ]] && CREATE+=(--spot)
    [[ ${DRY_RUN} == 1 ]] && echo "# if '${GCLOUD[*]} describe ${TPU_NAME}' fails:"
    run "${CREATE[@]}"
  elif [[ ${DRY_RUN} == 0 ]]; then
    echo "tpu_pod.sh: slice ${TPU_NAME} not found in ${ZONE}; pass --accelerator-type to create it." >&2
    exit 1
  fi
fi

# 2. Install on every worker (clone or update, then the package with libtpu).
CHECKOUT="cd cmdp && git fetch -q origin && git checkout -q ${REF:-origin/HEAD}"
INSTALL="set -e; if [ ! -d cmdp ]; then git clone -q ${REPO} cmdp; fi; ${CHECKOUT}; \
python3 -m pip install -q -e '.[tpu]'"
run "${GCLOUD[@]}" ssh "${TPU_NAME}" "${WHERE[@]}" --worker=all --command "${INSTALL}"

# 3. Run on every worker; each keeps its own log in ~/cmdp_run.log.
QUOTED=""
[[ ${#OVERRIDES[@]} -gt 0 ]] && QUOTED=$(printf '%q ' "${OVERRIDES[@]}")
TRAIN="cd cmdp && CMDP_MULTIHOST=1 python3 -m cmdp.train --config ${CONFIG} \
--workdir ${WORKDIR} ${QUOTED} > ~/cmdp_run.log 2>&1; status=\$?; tail -n 5 ~/cmdp_run.log; exit \$status"
STATUS=0
run "${GCLOUD[@]}" ssh "${TPU_NAME}" "${WHERE[@]}" --worker=all --command "${TRAIN}" || STATUS=$?

# 4. Collect every worker's log.
if [[ ${DRY_RUN} == 1 ]]; then
  echo "# for each worker W of the slice:"
  run "${GCLOUD[@]}" scp "${TPU_NAME}:cmdp_run.log" "${LOGS}/worker-W.log" "${WHERE[@]}" --worker=W
else
  WORKERS=$("${GCLOUD[@]}" describe "${TPU_NAME}" "${WHERE[@]}" \
      --format='value(networkEndpoints[].ipAddress)' | tr ';,' '\n\n' | grep -c .)
  for ((w = 0; w < WORKERS; w++)); do
    run "${GCLOUD[@]}" scp "${TPU_NAME}:cmdp_run.log" "${LOGS}/worker-${w}.log" "${WHERE[@]}" \
        --worker="${w}" || echo "tpu_pod.sh: no log from worker ${w}" >&2
  done
  echo "logs of ${WORKERS} workers in ${LOGS}/; run status ${STATUS}"
fi
exit "${STATUS}"
