r"""`python -m cmdp.study --config configs/study_smollm2.py --workdir DIR` (cmdp.study.compare),
and with `--pilot` the config's grpo-only pilot (cmdp.study.pilot) in its own workdir.

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
_PILOT = flags.DEFINE_bool(
    "pilot", False, "Run the config's grpo-only pilot (its `pilot` section) in place of the "
    "comparison: the report <name>_pilot.md (.json) and the choice its rule makes. Give it "
    "a workdir of its own.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the libraries' logs and a user "
                             "error's traceback.")
flags.mark_flags_as_required(["config", "workdir"])
USAGE = """python -m cmdp.study --config CONFIG[:ARG] --workdir DIR [--output_dir OUT] [--pilot]

Runs a pre-registered comparison: the models (a heal, or a cached supervised stage), one
budget calibration, every method x seed, then the report (<name>.md, <name>.png,
<name>.json) in DIR/results or OUT. Re-running skips what is finished. A config with a
`pilot` section runs once its pilot's choice is recorded: `--pilot` runs that pilot (grpo
at every setting x pilot seed, read at the candidate budgets; <name>_pilot.md, .json).

Examples:
  python -m cmdp.study --config configs/study_smollm2.py:small --workdir /tmp/study_small
  python -m cmdp.study --config configs/study_smollm2.py --workdir /tmp/study_smollm2 \\
      --output_dir docs/results
  python -m cmdp.study --config configs/study_arith.py --workdir /tmp/study_arith
  python -m cmdp.study --config configs/study_arith.py --workdir /tmp/arith_pilot --pilot"""


def main(argv):
  del argv
  # A quiet console: the study's progress bar and errors only.
  if not _VERBOSE.value:
    logging.getLogger().setLevel(logging.ERROR)
    absl_logging.set_verbosity(absl_logging.ERROR)
    warnings.filterwarnings("ignore")
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  from cmdp.study.compare import report_dir, run_study  # pylint: disable=g-import-not-at-top
  from cmdp.study.pilot import report as pilot_report  # pylint: disable=g-import-not-at-top
  from cmdp.study.pilot.run import run_pilot  # pylint: disable=g-import-not-at-top
  command = "python -m cmdp.study " + " ".join(sys.argv[1:])
  study = _CONFIG.value
  if _OUTPUT_DIR.value is not None:
    study.output_dir = _OUTPUT_DIR.value
  if _PILOT.value and "pilot" not in study:
    raise ValueError("--pilot: config.pilot is missing: this study declares no pilot.")
  from cmdp.study.runner import RunInterrupted  # pylint: disable=g-import-not-at-top
  try:
    payload = (run_pilot if _PILOT.value else run_study)(study, _WORKDIR.value, command)
  except RunInterrupted as err:  # SIGTERM: the run saved its state; one line, no traceback
    if _VERBOSE.value:
      raise
    raise SystemExit(f"python -m cmdp.study: {err}") from None
  # The report at the end: where it is, and the verdict per budget by the declared rules
  # (the pilot: the choice by its rule).
  from cmdp.study import quote  # pylint: disable=g-import-not-at-top
  from cmdp.training import logging as log_lib  # pylint: disable=g-import-not-at-top
  out = os.path.join(report_dir(study, _WORKDIR.value), study.name)
  if _PILOT.value:
    log_lib.stage("report", f"{out}_pilot.md (.json)")
    found = payload["analysis"]
    print(pilot_report.choice_text(payload["pilot"], found["choice"], payload["budgets"],
                                   found["missing"]))
    return
  log_lib.stage("report", f"{out}.md (.png, .json)")
  print(quote.summary(payload, short=True))


if __name__ == "__main__":
  cli.run(main, "python -m cmdp.study", USAGE)
