r"""Runs an experiment: `python -m cmdp.train --config configs/NAME.py --workdir DIR`.

Config fields are overridden on the command line, e.g.
`--config.objective=dual_lagrangian --config.loss.budget=2.0`; a misspelt field is an
error. A workdir that holds checkpoints is resumed from its latest one.

Multi-host (one process per host): `CMDP_MULTIHOST=1` calls `jax.distributed.initialize()`,
with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID when set (SLURM; a TPU VM
slice needs none). Each process then reads its own rows of every batch (of training, budget
calibration and evaluation; their host figures are gathered); process 0 writes the logs and
evaluation results; checkpoints are written by all processes together (orbax).
"""
import os

from absl import app, flags
import jax
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and eval.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the libraries' INFO logs (orbax, absl, "
                             "jax); off by default, so the console shows the run itself.")
flags.mark_flags_as_required(["config", "workdir"])


def distributed_settings(environ) -> dict:
  """`jax.distributed.initialize` arguments from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
  and JAX_PROCESS_ID when set (launch/slurm_gpu.sh sets them); on a TPU VM slice none is
  needed: jax finds the slice itself."""
  out = {}
  if environ.get("JAX_COORDINATOR_ADDRESS"):
    out["coordinator_address"] = environ["JAX_COORDINATOR_ADDRESS"]
  for name, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
    if environ.get(name):
      try:
        out[key] = int(environ[name])
      except ValueError:
        raise SystemExit(f"{name}={environ[name]!r} must be an integer.") from None
  return out


def main(argv):
  del argv
  from cmdp.training import logging as log_lib  # pylint: disable=g-import-not-at-top
  log_lib.set_log_levels(_VERBOSE.value)
  if os.environ.get("CMDP_MULTIHOST") == "1":  # one process per host (TPU pod, SLURM)
    jax.distributed.initialize(**distributed_settings(os.environ))
  from cmdp.training import trainer  # pylint: disable=g-import-not-at-top
  trainer.train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
