r"""`python -m cmdp.study --config configs/study_smollm2.py --workdir DIR` (cmdp.study.compare).

The report goes to `DIR/results` unless `--output_dir` (or the config's `output_dir`) names
another directory; the committed one is `--output_dir docs/results`.
"""
import logging
import os
import sys
import warnings

from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from cmdp import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Study config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for models, runs and results.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where the report (<name>.md, .png, .json) goes (default: the "
    "config's output_dir, and if that is empty DIR/results).")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the libraries' logs and a user "
                             "error's traceback.")
flags.mark_flags_as_required(["config", "workdir"])
USAGE = """python -m cmdp.study --config CONFIG[:ARG] --workdir DIR [--output_dir OUT]

Runs a pre-registered comparison: the models (a heal, or a cached supervised stage), one
budget calibration, every method x seed, then the report (<name>.md, <name>.png,
<name>.json) in DIR/results or OUT. Re-running skips what is finished.

Examples:
  python -m cmdp.study --config configs/study_smollm2.py:small --workdir /tmp/study_small
  python -m cmdp.study --config configs/study_smollm2.py --workdir /tmp/study_smollm2 \\
      --output_dir docs/results
  python -m cmdp.study --config configs/study_arith.py --workdir /tmp/study_arith"""


def main(argv):
  del argv
  # A quiet console: the study's progress bar and errors only.
  if not _VERBOSE.value:
    logging.getLogger().setLevel(logging.ERROR)
    absl_logging.set_verbosity(absl_logging.ERROR)
    warnings.filterwarnings("ignore")
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  from cmdp.study.compare import report_dir, run_study  # pylint: disable=g-import-not-at-top
  command = "python -m cmdp.study " + " ".join(sys.argv[1:])
  study = _CONFIG.value
  if _OUTPUT_DIR.value is not None:
    study.output_dir = _OUTPUT_DIR.value
  from cmdp.study.runner import RunInterrupted  # pylint: disable=g-import-not-at-top
  try:
    payload = run_study(study, _WORKDIR.value, command)
  except RunInterrupted as err:  # SIGTERM: the run saved its state; one line, no traceback
    if _VERBOSE.value:
      raise
    raise SystemExit(f"python -m cmdp.study: {err}") from None
  # The report at the end: where it is, and the verdict per budget by the declared rules.
  from cmdp.study import quote  # pylint: disable=g-import-not-at-top
  from cmdp.training import logging as log_lib  # pylint: disable=g-import-not-at-top
  out = os.path.join(report_dir(study, _WORKDIR.value), study.name)
  log_lib.stage("report", f"{out}.md (.png, .json)")
  print(quote.summary(payload, short=True))


if __name__ == "__main__":
  cli.run(main, "python -m cmdp.study", USAGE)
