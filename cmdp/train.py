r"""Runs an experiment: `python -m cmdp.train --config configs/NAME.py --workdir DIR`.

Config fields are overridden on the command line, e.g.
`--config.objective=dual_lagrangian --config.loss.budget=2.0`; a misspelt field is an
error. A workdir that holds checkpoints is resumed from its latest one.
"""
import logging as py_logging
import os

from absl import app, flags
import jax
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and eval.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  py_logging.getLogger().setLevel(py_logging.INFO)
  if os.environ.get("CMDP_MULTIHOST") == "1":  # one process per host of a TPU pod slice
    jax.distributed.initialize()
  from cmdp.training import trainer  # pylint: disable=g-import-not-at-top
  trainer.train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
