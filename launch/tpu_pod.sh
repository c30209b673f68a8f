#!/usr/bin/env bash
# Launches one experiment on every host of a Cloud TPU pod slice.
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/qwen_math.py:objective=cmdp gs://bucket/runs/exp1 \
#       [--config.loss.budget=2.0 ...]
#
# Each host runs the same command; `jax.distributed.initialize()` (called by
# `cmdp.train` when CMDP_MULTIHOST=1) discovers the slice. Only process 0 writes logs;
# orbax writes checkpoints from all hosts to the shared WORKDIR (a GCS bucket). On
# preemption the TPU runtime sends SIGTERM: the run saves and exits, and re-running the same
# command resumes from the latest checkpoint.
set -euo pipefail
TPU_NAME=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
REPO=${CMDP_REPO:-$(git config --get remote.origin.url)}
CMD="set -e; if [ ! -d cmdp ]; then git clone ${REPO} cmdp; fi; cd cmdp && git pull -q; \
pip install -q -e . 'jax[tpu]==0.10.2'; \
CMDP_MULTIHOST=1 python -m cmdp.train --config ${CONFIG} --workdir ${WORKDIR} $*"
gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone "${ZONE}" --worker=all --command "${CMD}"
