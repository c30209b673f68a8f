#!/usr/bin/env bash
# Runs an experiment on this machine (CPU or a single GPU), then evaluates it.
#
#   launch/local.sh configs/tiny.py /tmp/cmdp_tiny [--config.num_steps=10 ...]
set -euo pipefail
CONFIG=$1; WORKDIR=$2; shift 2
python -m cmdp.train --config "${CONFIG}" --workdir "${WORKDIR}" "$@"
python -m cmdp.evaluate --config "${CONFIG}" --workdir "${WORKDIR}" "$@"
cat "${WORKDIR}/eval.md"
