r"""`python -m cmdp.study --config configs/study_arith.py --workdir DIR` (see cmdp.study.main)."""
import logging
import os
import sys
import warnings

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Study config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for models, runs and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  # A quiet console: the study's progress bar and errors only.
  logging.getLogger().setLevel(logging.ERROR)
  absl_logging.set_verbosity(absl_logging.ERROR)
  warnings.filterwarnings("ignore")
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  from cmdp.study.main import run_study  # pylint: disable=g-import-not-at-top
  command = "python -m cmdp.study " + " ".join(sys.argv[1:])
  run_study(_CONFIG.value, _WORKDIR.value, command)


if __name__ == "__main__":
  app.run(main)
